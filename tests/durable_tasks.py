"""The executor of the durable-history tests' server subprocesses
(``zmqruntime serve --executor tests.durable_tasks:run``, the repository root on the path).

Each run first appends its execution id to the file ``task["log"]`` (one short append per run,
atomic), so a test counts how often each task ran; a task with ``"hold": true`` then keeps its
worker, in bounded waits, until it is cancelled or its server is killed. Nothing sleeps.
"""

from __future__ import annotations

from typing import Any

from tests.executors import wait_for_cancel
from zmqruntime.protocols import TaskContext


def run(task: Any, ctx: TaskContext) -> Any:
    """Log the run, then hold (``task["hold"]``) or return ``task["n"]``."""
    with open(task["log"], "a", encoding="utf-8") as log:
        log.write(ctx.execution_id + "\n")
    if task.get("hold"):
        return wait_for_cancel({"limit": 60}, ctx)
    return task["n"]
