"""ProcessWorkers: worker processes a pool owns, whose tasks may start processes of their own.

Real worker processes and real grandchildren (``multiprocessing`` children a task starts);
a test waits for them to appear and to be gone, never sleeps. On POSIX a cancel or a close
ends a worker together with what it started, and a killed pool process takes its workers
(and theirs) along.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import process_tree
from tests.recorder import WAIT, Recorder, end_if_running, gone, wait_gone
from zmqruntime.errors import ConfigurationError
from zmqruntime.execution.backends.processes import ProcessWorkers
from zmqruntime.execution.outcomes import Cancelled, Completed, Failed, Job

pytestmark = [pytest.mark.usefixtures("no_thread_leak"), pytest.mark.timeout(300)]

posix_only = pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def started() -> Iterator[tuple[ProcessWorkers, Recorder]]:
    """One started worker process, reporting to a recorder; closed at teardown."""
    recorder = Recorder()
    workers = ProcessWorkers(1)
    workers.start(process_tree.with_child, recorder.sink())
    yield workers, recorder
    workers.close(WAIT)


METHODS = ["spawn", "fork"] if os.name == "posix" else ["spawn"]


@pytest.mark.parametrize("method", METHODS)
def test_a_task_that_starts_a_process_of_its_own_completes(
    started: tuple[ProcessWorkers, Recorder], method: str
) -> None:
    workers, recorder = started
    workers.run([Job("family", {"release": True, "method": method})])
    outcome = recorder.outcome("family")
    assert isinstance(outcome, Completed), outcome  # a daemonic worker could not start one
    result = outcome.result
    assert result["exitcode"] == 0 and result["child"] not in (result["worker"], os.getpid())
    assert recorder.events == [("started", "family"), ("finished", "family"), ("freed", "")]
    (worker,) = workers.statistics()
    assert (worker.pid, worker.running, worker.done, worker.replaced) == (
        result["worker"],
        (),
        1,
        0,
    )


def test_cancelling_a_task_ends_its_worker_and_the_process_it_started(
    started: tuple[ProcessWorkers, Recorder],
) -> None:
    workers, recorder = started
    workers.run([Job("held", {})])
    fields = recorder.fields("held")
    worker, child = int(fields["worker"]), int(fields["child"])  # type: ignore[call-overload]
    assert not gone(worker) and not gone(child)
    assert workers.statistics()[0].running == ("held",)

    try:
        workers.cancel("held")
        assert isinstance(recorder.outcome("held"), Cancelled)
        assert gone(worker), "the worker was reaped before its job was reported"
        wait_gone([child])  # killed with its group; its new parent reaps it when it will
    finally:
        end_if_running(child)
    recorder.wait(lambda: recorder.freed == 1, "the slot to be freed (by a fresh worker)")
    (slot,) = workers.statistics()
    assert slot.pid not in (None, worker) and slot.replaced == 1 and slot.running == ()

    workers.run([Job("after", {"release": True})])  # the fresh worker runs the next job
    outcome = recorder.outcome("after")
    assert isinstance(outcome, Completed) and outcome.result["worker"] == slot.pid


def test_close_ends_a_busy_worker_with_the_process_it_started(
    started: tuple[ProcessWorkers, Recorder],
) -> None:
    workers, recorder = started
    workers.run([Job("held", {})])
    fields = recorder.fields("held")
    worker, child = int(fields["worker"]), int(fields["child"])  # type: ignore[call-overload]
    try:
        workers.close(WAIT)
        assert isinstance(recorder.outcome("held"), Cancelled)
        assert gone(worker)
        wait_gone([child])
    finally:
        end_if_running(child)
    assert recorder.freed == 1
    workers.close(WAIT)  # idempotent


def test_a_job_refused_at_start_never_reaches_a_worker() -> None:
    recorder = Recorder(refuse={"refused"})
    workers = ProcessWorkers(1)
    workers.start(process_tree.with_child, recorder.sink())
    try:
        workers.run([Job("refused", {"release": True})])
        assert recorder.outcomes == {"refused": Cancelled()}  # reported at once
        assert recorder.freed == 1
        assert workers.statistics()[0].done == 0
    finally:
        workers.close(WAIT)


def test_an_executor_that_cannot_be_pickled_is_refused_at_start() -> None:
    workers = ProcessWorkers(1)
    with pytest.raises(ConfigurationError, match="pickled"):
        workers.start(lambda task, ctx: task, Recorder().sink())


def test_a_task_that_cannot_be_pickled_fails_and_the_worker_stays() -> None:
    recorder = Recorder()
    workers = ProcessWorkers(1)
    workers.start(process_tree.with_child, recorder.sink())
    try:
        workers.run([Job("unpicklable", {"lock": threading.Lock()})])
        outcome = recorder.outcome("unpicklable")
        assert isinstance(outcome, Failed) and outcome.error_type == "TypeError", outcome
        assert workers.statistics()[0].replaced == 0
    finally:
        workers.close(WAIT)


def _pool_process(mode: str) -> tuple[subprocess.Popen[str], int, int]:
    """A process running ProcessWorkers (see tests/process_tree.py), and the pids of its
    worker and of the process the worker's task started."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.process_tree", mode],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # bounded: the task gives up after its LIMIT
    assert line, f"the pool process said nothing (exit code {process.poll()})"
    worker, child = (int(pid) for pid in line.split())
    return process, worker, child


@posix_only
def test_a_killed_pool_process_takes_its_workers_and_their_children_along() -> None:
    process, worker, child = _pool_process("hold")
    try:
        assert not gone(worker) and not gone(child)
        process.send_signal(signal.SIGKILL)
        assert process.wait(WAIT) == -signal.SIGKILL
        wait_gone([worker, child])  # the worker's lifeline broke: it ended its group
    finally:
        _end(process, worker, child)


def test_an_interpreter_that_exits_without_close_ends_its_workers() -> None:
    process, worker, child = _pool_process("exit")
    try:
        assert process.wait(WAIT) == 0  # non-daemonic workers did not hold the exit up
        wait_gone([worker, child])
    finally:
        _end(process, worker, child)


def _end(process: subprocess.Popen[str], *pids: int) -> None:
    process.kill()
    process.wait(WAIT)
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            pipe.close()
    for pid in pids:
        end_if_running(pid)
