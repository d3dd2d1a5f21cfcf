"""WorkerPool over a backend: its statistics, and backends of one's own.

The pool keeps the FIFO queue and hands jobs to whatever ``WorkerBackend`` it was given;
here the built-in thread backend and two small backends written for the test (the
protocol is structural: no base class).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import attrs
import pytest

from tests.recorder import WAIT
from tests.test_backend_threads import Gates
from zmqruntime.execution import PoolStatistics, WorkerPool, WorkerStatistics
from zmqruntime.execution.outcomes import (
    Cancelled,
    Completed,
    Failed,
    Job,
    JobSink,
    Outcome,
    PoolListener,
)

pytestmark = pytest.mark.usefixtures("no_thread_leak")


class Listener:
    """A PoolListener that keeps every outcome and lets the test wait for them."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.outcomes: dict[str, Outcome] = {}
        self.order: list[str] = []

    def listener(self) -> PoolListener:
        return PoolListener(
            started=lambda _job: True, progress=lambda _e: None, finished=self._done
        )

    def _done(self, job: Job, outcome: Outcome) -> None:
        with self.cond:
            self.outcomes[job.execution_id] = outcome
            self.order.append(job.execution_id)
            self.cond.notify_all()

    def wait_for(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.outcomes) >= count, WAIT), self.outcomes


def test_statistics_show_capacity_queue_running_and_each_worker() -> None:
    gates, heard = Gates(), Listener()
    with WorkerPool.threads(2) as pool:
        pool.start(gates, heard.listener())
        for name in ("a", "b", "c"):
            pool.submit(Job(name, name))
        gates.wait_entered("a", "b")
        statistics = pool.statistics()
        assert (statistics.capacity, statistics.running, statistics.queued) == (2, 2, 1)
        assert sorted(statistics.running_ids) == ["a", "b"]
        assert sorted(statistics.engine.values()) == [("a",), ("b",)]
        assert all(w.name.startswith("zmqruntime-worker") for w in statistics.workers)
        assert all(w.pid is None and w.replaced == 0 for w in statistics.workers)

        gates.open("a")
        gates.wait_entered("c")  # the freed thread took the queued job
        assert pool.statistics().queued == 0
        gates.open("b")
        gates.open("c")
        heard.wait_for(3)
        done = pool.statistics()
        assert (done.running, done.queued, done.running_ids, done.engine) == (0, 0, (), {})
        assert sum(w.done for w in done.workers) == 3
    assert all(isinstance(o, Completed) for o in heard.outcomes.values())


@attrs.define
class Inline:
    """A backend that runs each hand-over at once, inside ``run`` (and reports from there),
    except the first ``hold`` ones: those run when the test calls :meth:`release`."""

    capacity: int = 1
    batch: int = 1
    hold: int = 0
    fail_on: str = ""
    handed: list[list[str]] = attrs.field(factory=list)
    held: list[Sequence[Job]] = attrs.field(factory=list)
    _executor: Any = None
    _sink: JobSink | None = None

    def start(self, executor: Any, sink: JobSink) -> None:
        self._executor, self._sink = executor, sink

    def batch_size(self) -> int:
        return self.batch

    def run(self, jobs: Sequence[Job]) -> None:
        if any(job.execution_id == self.fail_on for job in jobs):
            raise OSError("this backend cannot take that job")
        self.handed.append([job.execution_id for job in jobs])
        if len(self.handed) <= self.hold:
            self.held.append(jobs)
        else:
            self._finish(jobs)

    def release(self) -> None:
        self._finish(self.held.pop(0))

    def _finish(self, jobs: Sequence[Job]) -> None:
        assert self._sink is not None
        for job in jobs:
            if self._sink.started(job):
                self._sink.finished(job, Completed(self._executor(job.task, None)))
            else:
                self._sink.finished(job, Cancelled())
        self._sink.freed()

    def cancel(self, execution_id: str) -> None:
        pass

    def statistics(self) -> tuple[WorkerStatistics, ...]:
        return (WorkerStatistics(name="inline", done=sum(map(len, self.handed))),)

    def close(self, timeout: float) -> None:
        while self.held:
            self.release()


def test_a_backend_of_ones_own_that_reports_from_within_run() -> None:
    # The first job is held while 2,999 queue up; once it ends, every other one is reported
    # from inside run(): the pool loops over them, it does not recurse.
    backend, heard = Inline(hold=1), Listener()
    pool = WorkerPool(backend)
    pool.start(lambda task, _ctx: task * 2, heard.listener())
    for n in range(3_000):
        pool.submit(Job(f"job-{n:04d}", n))
    assert pool.statistics().queued == 2_999
    backend.release()
    heard.wait_for(3_000)
    assert heard.order == [f"job-{n:04d}" for n in range(3_000)]  # FIFO
    assert heard.outcomes["job-2999"] == Completed(5_998)
    assert pool.statistics() == PoolStatistics(
        capacity=1,
        queued=0,
        running=0,
        running_ids=(),
        workers=(WorkerStatistics(name="inline", done=3_000),),
    )
    pool.close()


def test_jobs_a_backend_refuses_fail_and_the_next_ones_still_run() -> None:
    backend, heard = Inline(fail_on="refused"), Listener()
    pool = WorkerPool(backend)
    pool.start(lambda task, _ctx: task, heard.listener())
    for name in ("before", "refused", "after"):
        pool.submit(Job(name, name))
    heard.wait_for(3)
    refused = heard.outcomes["refused"]
    assert isinstance(refused, Failed) and refused.error_type == "OSError", refused
    assert heard.outcomes["after"] == Completed("after")
    assert pool.statistics().running == 0
    pool.close()


def test_a_batching_backend_gets_batches_and_a_queued_cancel_never_reaches_it() -> None:
    backend, heard = Inline(capacity=2, batch=4, hold=100), Listener()
    with WorkerPool(backend) as pool:
        pool.start(lambda task, _ctx: task, heard.listener())
        names = [f"j{n}" for n in range(9)]
        for name in names:
            pool.submit(Job(name, name))
        assert backend.handed == [["j0"], ["j1"]]  # each alone, while the queue was empty
        statistics = pool.statistics()
        assert (statistics.capacity, statistics.running, statistics.queued) == (2, 2, 7)
        assert pool.cancel("j3")  # dropped from the pool's queue, reported at once
        assert heard.outcomes == {"j3": Cancelled()}
        backend.release()
        assert backend.handed[2] == ["j2", "j4", "j5", "j6"]  # one free slot: a full batch
        backend.release()
        assert backend.handed[3] == ["j7", "j8"]
        assert pool.statistics().running == 6
    # close() cancelled what the backend still held: those never start.
    heard.wait_for(9)
    assert heard.outcomes == {
        name: Completed(name) if name in ("j0", "j1") else Cancelled() for name in names
    }
