"""Threads of this process as a :class:`~zmqruntime.protocols.WorkerBackend`.

A running job cannot be killed: cancelling it sets its
:class:`~zmqruntime.execution.ExecutionContext`'s ``cancelled``, and the executor should
stop. A job cancelled before its thread picks it up never runs.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections.abc import Sequence
from typing import TypeAlias, final

import attrs

from zmqruntime.errors import ConfigurationError
from zmqruntime.execution import outcomes
from zmqruntime.execution.context import ExecutionContext
from zmqruntime.protocols import TaskExecutor

__all__ = ["ThreadWorkers", "worker_count"]

logger = logging.getLogger(__name__)

_Work: TypeAlias = "tuple[outcomes.Job, ExecutionContext] | None"  # None: the thread ends


def worker_count(executor: object, max_workers: int | None) -> int:
    """``max_workers``, else the executor's own worker count, else 1.

    The standard library's executors keep their count only in ``_max_workers``.
    """
    if max_workers is not None:
        return max_workers
    return int(getattr(executor, "_max_workers", 1) or 1)


@final
@attrs.define(eq=False)
class ThreadWorkers:
    """Up to ``capacity`` jobs at once on threads of this process: an injected ``executor``'s
    (it stays yours), or with None ``capacity`` threads that :meth:`start` starts and
    :meth:`close` ends. Owned threads take jobs from a queue of their own: no future and no
    work item per job."""

    capacity: int = attrs.field(default=1, validator=outcomes.check_workers)
    executor: concurrent.futures.Executor | None = None
    # Set by start():
    _owned: tuple[threading.Thread, ...] = attrs.field(default=(), init=False)
    _queue: queue.SimpleQueue[_Work] = attrs.field(factory=queue.SimpleQueue, init=False)
    _task_executor: TaskExecutor = attrs.field(init=False)
    _sink: outcomes.JobSink = attrs.field(init=False)
    _contexts: dict[str, ExecutionContext] = attrs.field(factory=dict, init=False)
    _workers: dict[str, tuple[str | None, int]] = attrs.field(factory=dict, init=False)
    """Each thread that ran a job: the execution it runs now, and how many it finished."""
    _lock: threading.Condition = attrs.field(factory=threading.Condition, init=False)
    """Notified when a job ends."""

    @classmethod
    def on(
        cls, executor: concurrent.futures.Executor, max_workers: int | None = None
    ) -> ThreadWorkers:
        """Run on ``executor`` (threads of this process), at most ``max_workers`` jobs at once
        (default: the executor's own worker count where it has one)."""
        if isinstance(executor, concurrent.futures.ProcessPoolExecutor):
            raise ConfigurationError(
                "a ProcessPoolExecutor runs tasks in other processes; use WorkerPool.remote()"
            )
        return cls(worker_count(executor, max_workers), executor)

    def start(self, executor: TaskExecutor, sink: outcomes.JobSink) -> None:
        """Run jobs with ``executor``, report to ``sink``; makes the thread pool if owned."""
        if hasattr(self, "_task_executor"):
            raise RuntimeError("these ThreadWorkers are already started")
        self._task_executor, self._sink = executor, sink
        if self.executor is None:
            self._owned = tuple(
                threading.Thread(target=self._serve, name=f"zmqruntime-worker_{i}", daemon=True)
                for i in range(self.capacity)
            )
            for thread in self._owned:
                thread.start()

    def batch_size(self) -> int:
        return 1

    def run(self, jobs: Sequence[outcomes.Job]) -> None:
        """Queue the job for a thread; it runs unless cancelled before it starts."""
        (job,) = jobs
        context = ExecutionContext(job.execution_id, job.labels, report=self._sink.progress)
        with self._lock:
            self._contexts[job.execution_id] = context
        if self.executor is None:
            self._queue.put((job, context))
            return
        try:
            self.executor.submit(self._work, job, context)
        except BaseException:
            with self._lock:
                del self._contexts[job.execution_id]
            raise

    def cancel(self, execution_id: str) -> None:
        """Tell the job it is cancelled (its thread skips it if it has not started)."""
        with self._lock:
            context = self._contexts.get(execution_id)
        if context is not None:
            context.cancel_event.set()

    def statistics(self) -> tuple[outcomes.WorkerStatistics, ...]:
        """Each thread that ran one of the jobs, what it runs now and how many it ran."""
        with self._lock:
            return tuple(
                outcomes.WorkerStatistics(name=name, running=(job,) if job else (), done=done)
                for name, (job, done) in self._workers.items()
            )

    def __enter__(self) -> ThreadWorkers:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every job, wait up to ``timeout`` seconds for them to end, and end the
        owned threads (a thread stuck in a job is left behind, as a daemon). Idempotent."""
        with self._lock:
            for context in self._contexts.values():
                context.cancel_event.set()
            idle = self._lock.wait_for(lambda: not self._contexts, timeout)
            if not idle:
                logger.warning("%d thread jobs still run after close", len(self._contexts))
            owned, self._owned = self._owned, ()
        for _thread in owned:
            self._queue.put(None)
        if idle:
            for thread in owned:
                thread.join(timeout)

    def _serve(self) -> None:
        """An owned thread: run jobs from the queue until told to end."""
        while (work := self._queue.get()) is not None:
            try:
                self._work(*work)
            except Exception:  # the thread must live on: later jobs need it
                logger.exception("reporting on execution %s failed", work[0].execution_id)

    def _work(self, job: outcomes.Job, context: ExecutionContext) -> None:
        name = threading.current_thread().name
        with self._lock:
            done = self._workers.get(name, (None, 0))[1]
            self._workers[name] = (job.execution_id, done)
        outcome: outcomes.Outcome = outcomes.Cancelled()
        try:
            if not context.cancelled and self._sink.started(job):
                cancelled = context.cancel_event.is_set
                outcome = outcomes.run_job(self._task_executor, job, context, cancelled)
        finally:
            try:
                self._sink.finished(job, outcome)
            finally:  # a failed report must not leak the job's slot
                with self._lock:  # after the report: close() waits for it
                    del self._contexts[job.execution_id]
                    self._workers[name] = (None, done + 1)
                    self._lock.notify_all()
                self._sink.freed()
