"""WorkerPool: runs executor calls off the server's I/O thread, FIFO, with real cancellation.

The pool keeps its own queue, so a queued job can always be dropped on cancel, and hands
jobs to its :class:`~zmqruntime.protocols.WorkerBackend` while that has room.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import final

import attrs

from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.lifecycle import close_on_exit
from zmqruntime.errors import ChannelClosed
from zmqruntime.execution.backends.inlet import RemoteWorkers
from zmqruntime.execution.backends.threads import ThreadWorkers, worker_count
from zmqruntime.execution.outcomes import (
    NO_SERVER,
    SAFE,
    Cancelled,
    Failed,
    Job,
    JobSink,
    Outcome,
    PoolListener,
    WorkerStatistics,
)
from zmqruntime.protocols import RemoteEngine, TaskExecutor, TaskSerializer, WorkerBackend

__all__ = ["PoolStatistics", "WorkerPool"]

logger = logging.getLogger(__name__)


@final
@attrs.frozen(kw_only=True)
class PoolStatistics:
    """What a pool is doing now."""

    capacity: int
    """How many hand-overs the backend takes at once (a remote one's may carry batches)."""
    queued: int
    """Jobs waiting in the pool for room in the backend."""
    running: int
    """Jobs handed to the backend that have not ended (some may not have started yet)."""
    running_ids: tuple[str, ...]
    workers: tuple[WorkerStatistics, ...]

    @property
    def engine(self) -> dict[str, tuple[str, ...]]:
        """Each worker running executions, and which (a server's summary carries it)."""
        return {worker.name: worker.running for worker in self.workers if worker.running}


@final
@attrs.define(eq=False)
class WorkerPool:
    """Runs jobs for an :class:`~zmqruntime.execution.ExecutionServer` on ``backend``; the
    server starts and closes it. ``on_close`` is called once by :meth:`close`, after the last
    job: it releases what the pool was built on.
    """

    backend: WorkerBackend
    on_close: Callable[[], object] | None = None
    _listener: PoolListener | None = attrs.field(default=None, init=False)
    _queue: collections.deque[Job] = attrs.field(factory=collections.deque, init=False)
    _running: dict[str, Job] = attrs.field(factory=dict, init=False)
    """Jobs handed to the backend that have not ended."""
    _cancelled: set[str] = attrs.field(factory=set, init=False)
    """Running jobs a cancel was asked for: they must not start."""
    _handed: int = attrs.field(default=0, init=False)
    """Hand-overs the backend holds (it frees each one)."""
    _local: threading.local = attrs.field(factory=threading.local, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    @classmethod
    def threads(cls, max_workers: int = 1) -> WorkerPool:
        """A pool of ``max_workers`` threads (1: strict FIFO, one task at a time); a running
        task sees ``context.cancelled`` and should stop."""
        return cls(ThreadWorkers(max_workers))

    @classmethod
    def processes(cls, max_workers: int = 1, *, start_method: str = "spawn") -> WorkerPool:
        """A pool of worker processes it owns (the executor must be an importable, picklable
        function); cancelling a task ends its worker, with the processes it started, and
        starts a fresh one."""
        # Loaded here: multiprocessing is ~10 ms of the import of every server otherwise.
        from zmqruntime.execution.backends.processes import ProcessWorkers  # noqa: PLC0415

        return cls(ProcessWorkers(max_workers, start_method=start_method))

    @classmethod
    def from_executor(
        cls, executor: concurrent.futures.Executor, max_workers: int | None = None
    ) -> WorkerPool:
        """Run jobs on an existing executor of this process, at most ``max_workers`` at once
        (default: the executor's own worker count where it has one). The pool never shuts the
        executor down: it is yours."""
        return cls(ThreadWorkers.on(executor, max_workers))

    @classmethod
    def remote(
        cls,
        executor: RemoteEngine,
        max_workers: int | None = None,
        *,
        inlet_host: str | None = None,
        advertise_host: str | None = None,
        on_close: Callable[[], object] | None = None,
    ) -> WorkerPool:
        """Run jobs on a :class:`~zmqruntime.protocols.RemoteEngine` (``ProcessPoolExecutor``,
        Dask's ``client.get_executor()`` …) whose workers are other processes or hosts; the
        executor function and tasks must be picklable and importable there. At most
        ``max_workers`` engine tasks (default: the executor's worker count) are handed over at
        once; the rest wait here. ``inlet_host`` and ``advertise_host``: see
        :class:`~zmqruntime.execution.backends.inlet.RemoteWorkers`. The pool never shuts the
        executor down."""
        capacity = worker_count(executor, max_workers)
        return cls(RemoteWorkers(executor, capacity, inlet_host, advertise_host), on_close)

    def start(
        self,
        executor: TaskExecutor,
        listener: PoolListener,
        *,
        endpoint: Endpoint = NO_SERVER,
        serializer: TaskSerializer = SAFE,
    ) -> None:
        """Start the backend; ``executor`` runs every job, ``listener`` hears about them.
        ``endpoint`` and ``serializer`` are the server's (see
        :class:`~zmqruntime.execution.outcomes.JobSink`)."""
        if self._listener is not None:
            raise RuntimeError("this WorkerPool is already started; a pool serves one server")
        self._listener = listener
        sink = JobSink(
            started=self._started,
            progress=listener.progress,
            finished=self._finished,
            freed=self._freed,
            endpoint=endpoint,
            serializer=serializer,
        )
        self.backend.start(executor, sink)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel queued jobs, stop running ones, and close the backend: it waits up to
        ``timeout`` seconds for running jobs to end (owned processes are killed). Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            dropped, self._queue = self._queue, collections.deque()
            self._cancelled.update(self._running)
        for job in dropped:
            self._report(job, Cancelled())
        if self._listener is not None:
            self.backend.close(timeout)
        with self._lock:
            if self._running:
                logger.warning("worker pool closed with %d jobs still running", len(self._running))
        if self.on_close is not None:
            try:
                self.on_close()
            except Exception:
                logger.exception("the worker pool's on_close hook failed")

    def __enter__(self) -> WorkerPool:
        return self

    __exit__ = close_on_exit

    def submit(self, job: Job) -> None:
        """Queue ``job``; it starts when the backend has room (FIFO)."""
        with self._lock:
            if self._closed:
                raise ChannelClosed("the worker pool is closed")
            self._queue.append(job)
        self._dispatch()

    def cancel(self, execution_id: str) -> bool:
        """Cancel a queued job (dropped and reported now) or a running one (the backend stops
        it, and its end is reported then). Returns False if the pool does not hold the job.
        """
        with self._lock:
            queued = next((j for j in self._queue if j.execution_id == execution_id), None)
            if queued is not None:
                self._queue.remove(queued)
            elif execution_id in self._running:
                self._cancelled.add(execution_id)
            else:
                return False
        if queued is not None:
            self._report(queued, Cancelled())
        else:  # not under the lock: a backend may report the end at once
            self.backend.cancel(execution_id)
        return True

    @property
    def max_workers(self) -> int:
        """How many hand-overs the backend takes at once."""
        return self.backend.capacity

    @property
    def queued(self) -> int:
        """How many jobs wait for room in the backend."""
        return len(self._queue)

    @property
    def inlet_address(self) -> str | None:
        """Remote pools: the URL workers connect to for progress and cancellation (open it
        in a firewall between workers and server); None for other pools or before start."""
        return self.backend.address if isinstance(self.backend, RemoteWorkers) else None

    def statistics(self) -> PoolStatistics:
        """The pool's capacity, queue, running jobs and workers."""
        workers = self.backend.statistics()
        with self._lock:
            running = tuple(self._running)
            queued = len(self._queue)
        return PoolStatistics(
            capacity=self.backend.capacity,
            queued=queued,
            running=len(running),
            running_ids=running,
            workers=workers,
        )

    # --- what the backend reports (its threads) --------------------------------------------

    def _dispatch(self) -> None:
        """Hand queued jobs over while the backend has room."""
        if getattr(self._local, "dispatching", False):
            return  # a backend reported at once, from within run(): the loop looks again
        self._local.dispatching = True
        try:
            while batch := self._take():
                try:
                    self.backend.run(batch)
                except Exception as exc:
                    logger.exception("could not hand %d job(s) to the backend", len(batch))
                    for job in batch:
                        self._finished(job, Failed.from_exception(exc))
                    self._freed()
        finally:
            self._local.dispatching = False

    def _take(self) -> list[Job]:
        """The next hand-over (FIFO; a batch if the backend takes them), or nothing."""
        with self._lock:
            free = self.backend.capacity - self._handed
            if self._closed or not self._queue or free <= 0:
                return []
            size = min(self.backend.batch_size(), -(-len(self._queue) // free))
            batch = [self._queue.popleft() for _ in range(size)]
            for job in batch:
                self._running[job.execution_id] = job
            self._handed += 1
            return batch

    def _started(self, job: Job) -> bool:
        with self._lock:
            if job.execution_id in self._cancelled:
                return False
        assert self._listener is not None
        return self._listener.started(job)

    def _finished(self, job: Job, outcome: Outcome) -> None:
        with self._lock:
            self._running.pop(job.execution_id, None)
            self._cancelled.discard(job.execution_id)
        self._report(job, outcome)

    def _freed(self) -> None:
        with self._lock:
            self._handed -= 1
        self._dispatch()

    def _report(self, job: Job, outcome: Outcome) -> None:
        if self._listener is None:
            return
        try:
            self._listener.finished(job, outcome)
        except Exception:
            logger.exception("reporting the end of %s failed", job.execution_id)
