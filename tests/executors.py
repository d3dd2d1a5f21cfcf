"""Executors defined at module level, so process workers and server subprocesses can import them.

``tests`` is a namespace package and pytest puts the repository root on ``sys.path``; children
started by ``multiprocessing`` (spawn) inherit that path and unpickle these functions by name.
A server subprocess runs ``from tests.executors import dispatch`` with the repository root as
its working directory.

Nothing here sleeps: a task that must wait does so in short bounded ``Event.wait`` steps and
checks ``ctx.cancelled`` (or, on purpose, ignores it) between them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from typing import Any

import numpy

from zmqruntime.protocols import TaskContext

WAIT_LIMIT = 60.0
"""Longest a waiting task waits for a cancellation before it gives up (seconds)."""


@dataclasses.dataclass(frozen=True)
class Point:
    """A picklable object the safe serializer refuses (for PickleSerializer round trips)."""

    x: int
    y: float
    tags: frozenset[str] = frozenset()


def answer(task: Any, ctx: TaskContext) -> dict[str, int]:
    """The README's executor: ten progress steps, then ``{"answer": 2 * x}``."""
    for i in range(10):
        ctx.raise_if_cancelled()
        ctx.report_progress((i + 1) / 10, f"step {i}", step=i)
    return {"answer": task["x"] * 2}


def echo(task: Any, _ctx: TaskContext) -> Any:
    """Return the task unchanged."""
    return task


def worker_pid(_task: Any, _ctx: TaskContext) -> int:
    """The process id of whoever runs the task."""
    return os.getpid()


def explode_on_purpose(task: Any, _ctx: TaskContext) -> None:
    """Raise a ValueError naming the task; the name of this function is in the traceback."""
    raise ValueError(f"exploded on purpose: {task!r}")


def wait_for_cancel(task: Any, ctx: TaskContext) -> str:
    """Report this process's pid, then wait (cooperatively) until cancelled.

    Gives up with TimeoutError after ``task["limit"]`` seconds (default :data:`WAIT_LIMIT`), so a
    test that forgets to cancel fails instead of hanging.
    """
    limit = float(task.get("limit", WAIT_LIMIT)) if isinstance(task, dict) else WAIT_LIMIT
    ctx.report_progress(0.0, "waiting for cancel", pid=os.getpid())
    deadline = time.monotonic() + limit
    pause = threading.Event()
    while not ctx.cancelled:
        if time.monotonic() > deadline:
            raise TimeoutError(f"nobody cancelled {ctx.execution_id} within {limit}s")
        pause.wait(0.01)
    ctx.raise_if_cancelled()
    return "unreachable"


def ignore_cancel(_task: Any, ctx: TaskContext) -> None:
    """Report this process's pid, then never return and never look at ``ctx.cancelled``.

    Only for process workers: the only way to stop it is to end its process.
    """
    ctx.report_progress(0.0, "ignoring cancellation", pid=os.getpid())
    pause = threading.Event()
    while True:
        pause.wait(0.05)


BAD_FIELDS: dict[str, Any] = {
    "set": {"tags": {"a", "b"}},
    "int64": {"count": numpy.int64(3)},
    "object": {"thing": object()},
    "bytes": {"raw": b"\x00\x01"},
    "nested-set": {"outer": {"inner": [1, {2, 3}]}},
    "nan-field": {"value": math.nan},
}
"""Progress fields that are not JSON values, by name."""


def bad_progress(task: Any, ctx: TaskContext) -> str:
    """Report progress that is not JSON (``task["kind"]`` picks what); it must raise here."""
    kind = task["kind"]
    if kind == "nan-fraction":
        ctx.report_progress(math.nan, "nan fraction")
    elif kind == "string-fraction":
        ctx.report_progress("half", "a string fraction")  # type: ignore[arg-type]
    elif kind == "bytes-message":
        ctx.report_progress(0.5, b"bytes message")  # type: ignore[arg-type]
    else:
        ctx.report_progress(0.5, "bad fields", **BAD_FIELDS[kind])
    return "reported"


def square_with_steps(task: Any, ctx: TaskContext) -> int:
    """Report ``task["steps"]`` progress events (each with this process's pid), return n²."""
    steps = int(task.get("steps", 0))
    for step in range(steps):
        ctx.report_progress((step + 1) / steps, f"step {step}", step=step, pid=os.getpid())
    return int(task["n"]) ** 2


def dispatch(task: Any, ctx: TaskContext) -> Any:
    """One executor for a server subprocess: ``task["op"]`` names what to do."""
    op = task["op"]
    if op == "echo":
        return task.get("value")
    if op == "pid":
        return os.getpid()
    if op == "wait":
        return wait_for_cancel(task, ctx)
    if op == "fail":
        return explode_on_purpose(task, ctx)
    if op == "ignore":
        return ignore_cancel(task, ctx)
    if op == "bad_progress":
        return bad_progress(task, ctx)
    if op == "thread":
        return threading.current_thread().name
    if op == "square":
        return square_with_steps(task, ctx)
    raise KeyError(f"unknown op {op!r}")
