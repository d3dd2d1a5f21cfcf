"""ThreadWorkers: jobs on threads of this process, owned or an injected executor's.

Jobs block on events the test sets; the recorder (the backend's sink) notifies on every
report, so the test waits for effects and never sleeps.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

import pytest

from tests.recorder import WAIT, Recorder
from zmqruntime.errors import ConfigurationError
from zmqruntime.execution.backends.threads import ThreadWorkers
from zmqruntime.execution.outcomes import Cancelled, Completed, Job
from zmqruntime.protocols import TaskContext

pytestmark = pytest.mark.usefixtures("no_thread_leak")


class Gates:
    """An executor whose job ``task`` waits until ``open(task)`` (or a cancel)."""

    def __init__(self) -> None:
        self.gates: dict[str, threading.Event] = {}
        self.entered: list[str] = []
        self.cond = threading.Condition()

    def __call__(self, task: str, ctx: TaskContext) -> str:
        with self.cond:
            self.entered.append(task)
            self.cond.notify_all()
            gate = self.gates.setdefault(task, threading.Event())
        while not gate.wait(0.01):
            ctx.raise_if_cancelled()
        return f"{task} on {threading.current_thread().name}"

    def open(self, task: str) -> None:
        with self.cond:
            self.gates.setdefault(task, threading.Event()).set()

    def wait_entered(self, *tasks: str) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: set(tasks) <= set(self.entered), WAIT), tasks


def test_jobs_run_side_by_side_on_owned_threads_and_report_in_order() -> None:
    gates, recorder = Gates(), Recorder()
    workers = ThreadWorkers(2)
    workers.start(gates, recorder.sink())
    try:
        workers.run([Job("a", "a")])
        workers.run([Job("b", "b")])
        gates.wait_entered("a", "b")  # both at once: two threads
        running = {w.running for w in workers.statistics()}
        assert running == {("a",), ("b",)}
        gates.open("a")
        gates.open("b")
        for name in "ab":
            outcome = recorder.outcome(name)
            assert isinstance(outcome, Completed)
            assert outcome.result.startswith(f"{name} on zmqruntime-worker")
        recorder.wait(lambda: recorder.freed == 2, "both slots freed")
        for name in "ab":  # each: started, then finished, then freed
            mine = [i for i, event in enumerate(recorder.events) if event[1] == name]
            assert [recorder.events[i][0] for i in mine] == ["started", "finished"]
            assert ("freed", "") in recorder.events[mine[-1] :]
        statistics = workers.statistics()
        assert sum(w.done for w in statistics) == 2
        assert all(w.running == () and w.pid is None for w in statistics)
    finally:
        workers.close(WAIT)  # joins its threads (no_thread_leak checks)


def test_a_running_job_hears_the_cancel() -> None:
    gates, recorder = Gates(), Recorder()
    workers = ThreadWorkers(1)
    workers.start(gates, recorder.sink())
    try:
        workers.run([Job("doomed", "doomed")])
        gates.wait_entered("doomed")
        workers.cancel("doomed")
        assert recorder.outcome("doomed") == Cancelled()
        workers.cancel("unknown")  # ignored
    finally:
        workers.close(WAIT)


def test_a_job_cancelled_while_it_waits_in_an_injected_executor_never_runs() -> None:
    gates, recorder = Gates(), Recorder()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mine") as executor:
        workers = ThreadWorkers.on(executor, max_workers=2)  # more than it has threads
        assert workers.capacity == 2
        workers.start(gates, recorder.sink())
        workers.run([Job("first", "first")])
        workers.run([Job("waiting", "waiting")])  # queued in the executor, behind "first"
        gates.wait_entered("first")
        workers.cancel("waiting")
        gates.open("first")
        assert recorder.outcome("waiting") == Cancelled()
        assert isinstance(recorder.outcome("first"), Completed)
        assert gates.entered == ["first"]
        assert ("started", "waiting") not in recorder.events  # not even asked to start
        workers.close(WAIT)
        assert executor.submit(lambda: 42).result(WAIT) == 42  # yours: still open


def test_close_does_not_wait_past_its_timeout_for_a_job_that_ignores_the_cancel() -> None:
    release, recorder = threading.Event(), Recorder()

    def stubborn(_task: Any, _ctx: TaskContext) -> str:
        release.wait(WAIT)  # until the test lets it go
        return "late"

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        workers = ThreadWorkers.on(executor)
        workers.start(stubborn, recorder.sink())
        workers.run([Job("stuck", None)])
        recorder.wait(lambda: ("started", "stuck") in recorder.events, "the job to start")
        workers.close(0.2)
        assert "stuck" not in recorder.outcomes  # close() returned while the job still ran
        release.set()
        assert recorder.outcome("stuck") == Cancelled()  # the cancel won over its result


def test_counts_and_executors_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="max_workers must be a whole number"):
        ThreadWorkers(0)
    with (
        concurrent.futures.ProcessPoolExecutor(1) as processes,
        pytest.raises(ConfigurationError, match="remote"),
    ):
        ThreadWorkers.on(processes)
