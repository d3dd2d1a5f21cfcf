"""Tasks that start processes of their own, for the owned-process backend's tests.

At module level so spawned workers can import them. Nothing sleeps: a released grandchild
waits on its pipe, a held one on an event nobody sets (work that goes on even when its
parent is gone), the task on its grandchild; all bounded.

Run as ``python -m tests.process_tree`` it is a pool's process that the test kills: it starts
a :class:`~zmqruntime.execution.backends.processes.ProcessWorkers`, runs :func:`hold_child`,
prints ``<worker pid> <grandchild pid>`` and then waits on stdin (which the test never
closes) until it is killed; with ``exit`` it instead returns without closing the backend.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from zmqruntime.protocols import TaskContext

LIMIT = 60.0
"""Longest anything here waits (seconds), so a test that goes wrong fails instead of hanging."""
HOLD = 2 * LIMIT
"""How long a held grandchild lives unless killed: longer than a test waits for it to go."""


def grandchild(connection: Connection, hold: bool) -> None:
    """Say who it is, then wait for the word to end (or, held, until killed)."""
    connection.send(os.getpid())
    if hold:
        threading.Event().wait(HOLD)
    elif connection.poll(LIMIT):
        connection.recv()


def with_child(task: Any, ctx: TaskContext) -> dict[str, int]:
    """Start a ``multiprocessing`` child, report both pids as progress, and either let it end
    (``task["release"]``) and return, or wait for it (until the worker is cancelled)."""
    context = multiprocessing.get_context(task.get("method", "spawn"))
    mine, theirs = context.Pipe()
    hold = not task.get("release")
    child = context.Process(target=grandchild, args=(theirs, hold), name="grandchild")
    child.start()
    theirs.close()
    if not mine.poll(LIMIT):
        raise TimeoutError("the grandchild never said who it is")
    child_pid = mine.recv()
    ctx.report_progress(0.5, "child started", worker=os.getpid(), child=child_pid)
    if hold:
        child.join(HOLD)  # until the worker is killed
    else:
        mine.send("end")
        child.join(LIMIT)
    if child.exitcode is None:
        raise TimeoutError("the grandchild did not end")
    return {"worker": os.getpid(), "child": child_pid, "exitcode": child.exitcode}


def hold_child(_task: Any, ctx: TaskContext) -> dict[str, int]:
    """:func:`with_child`, holding the grandchild until the worker ends."""
    return with_child({}, ctx)


def _main(mode: str) -> None:
    from zmqruntime.execution.backends.processes import ProcessWorkers  # noqa: PLC0415
    from zmqruntime.execution.outcomes import Job, JobSink  # noqa: PLC0415

    pids: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    sink = JobSink(
        started=lambda _job: True,
        progress=lambda event: pids.put(dict(event.fields)),
        finished=lambda _job, _outcome: None,
        freed=lambda: None,
    )
    workers = ProcessWorkers(1)
    workers.start(hold_child, sink)
    workers.run([Job("held", None)])
    fields = pids.get(timeout=LIMIT)
    sys.stdout.write(f"{fields['worker']} {fields['child']}\n")
    sys.stdout.flush()
    if mode == "exit":
        return  # without close(): the interpreter's exit must end the workers
    sys.stdin.readline()  # the test kills this process before it ever returns


if __name__ == "__main__":
    _main(sys.argv[1] if len(sys.argv) > 1 else "hold")
