"""WorkerPool: runs executor calls off the server's I/O thread, FIFO, with real cancellation.

The pool keeps its own queue, so a queued job can always be dropped on cancel, and hands at
most ``max_workers`` jobs at a time to one of four backends:

* threads (the default, one worker: strict FIFO, one task at a time) — a running task sees
  ``context.cancelled`` and should stop;
* processes the pool owns — cancelling a running task terminates its worker process, and the
  pool starts a fresh one (the executor must be an importable, picklable function);
* any injected ``concurrent.futures.Executor`` running in this process (threads of your
  own); running tasks see ``context.cancelled`` as with threads;
* an engine whose workers are other processes or hosts (``ProcessPoolExecutor``, Dask,
  loky, ``mpi4py.futures``): the executor function and task are shipped by that engine, and
  a picklable context reports progress, hears cancellation and sends the outcome over zmq
  (see :mod:`zmqruntime.execution.backends.remote` and
  :mod:`zmqruntime.execution.backends.inlet`); there,
  ``max_workers`` counts engine tasks, and short jobs share them in batches.

Everything the pool learns it reports to a :class:`~zmqruntime.execution.outcomes.PoolListener`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import enum
import logging
import threading
from collections.abc import Callable
from typing import final

import attrs

from zmqruntime.config import ZMQConfig
from zmqruntime.core.security import ServerCurve
from zmqruntime.core.serializers import SafeSerializer
from zmqruntime.errors import ChannelClosed, ConfigurationError
from zmqruntime.execution.backends.inlet import Inlet
from zmqruntime.execution.backends.processes import ProcessWorkers
from zmqruntime.execution.context import ExecutionContext
from zmqruntime.execution.outcomes import (
    Cancelled,
    Failed,
    Job,
    Outcome,
    PoolListener,
    run_job,
)
from zmqruntime.protocols import RemoteEngine, TaskExecutor, TaskSerializer

__all__ = ["PoolMode", "PoolStatistics", "WorkerPool"]

logger = logging.getLogger(__name__)


class PoolMode(enum.Enum):
    """Where a pool runs its jobs."""

    THREADS = "threads"
    PROCESSES = "processes"
    EXECUTOR = "executor"
    REMOTE = "remote"


@final
@attrs.frozen(kw_only=True)
class PoolStatistics:
    """What a pool is doing now."""

    mode: PoolMode
    workers: int
    queued: int
    running: int
    running_ids: tuple[str, ...]
    worker_pids: tuple[int, ...] = ()
    replaced_workers: int = 0
    engine: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    """Remote pools: each engine worker running our executions, and which."""


def _positive_workers(_instance: object, _attribute: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"max_workers must be a whole number of 1 or more, got {value!r}")


@final
@attrs.define(eq=False)
class WorkerPool:
    """Runs jobs for an :class:`~zmqruntime.execution.ExecutionServer`.

    Build one with :meth:`threads`, :meth:`processes` or :meth:`from_executor` and pass it to
    the server; the server starts and closes it.
    """

    max_workers: int = attrs.field(default=1, validator=_positive_workers)
    mode: PoolMode = PoolMode.THREADS
    backend: RemoteEngine | None = None
    """The injected executor (``EXECUTOR``) or engine (``REMOTE``)."""
    start_method: str = "spawn"
    kill_timeout: float = 5.0
    inlet_host: str | None = None
    """Remote pools: the interface the progress inlet binds (default: the server's)."""
    advertise_host: str | None = None
    """Remote pools: the host name workers connect to (default: the bound host)."""
    on_close: Callable[[], object] | None = None
    """Called once by :meth:`close`, after the last job: releases what the pool was built on."""

    _executor: TaskExecutor | None = attrs.field(default=None, init=False)
    _listener: PoolListener | None = attrs.field(default=None, init=False)
    _owned_backend: concurrent.futures.ThreadPoolExecutor | None = attrs.field(
        default=None, init=False
    )
    _processes: ProcessWorkers | None = attrs.field(default=None, init=False)
    _inlet: Inlet | None = attrs.field(default=None, init=False)
    _queue: collections.deque[Job] = attrs.field(factory=collections.deque, init=False)
    _running: dict[str, ExecutionContext | None] = attrs.field(factory=dict, init=False)
    _cancel_requested: set[str] = attrs.field(factory=set, init=False)
    _engine_tasks: int = attrs.field(default=0, init=False)
    """Remote pools: tasks (each one job or a batch of short ones) the engine holds."""
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _idle: threading.Condition = attrs.field(init=False)
    _closed: bool = attrs.field(default=False, init=False)

    @_idle.default
    def _make_idle(self) -> threading.Condition:
        return threading.Condition(self._lock)

    @classmethod
    def threads(cls, max_workers: int = 1) -> WorkerPool:
        """A pool of ``max_workers`` threads (1: strict FIFO, one task at a time)."""
        return cls(max_workers=max_workers, mode=PoolMode.THREADS)

    @classmethod
    def processes(cls, max_workers: int = 1, *, start_method: str = "spawn") -> WorkerPool:
        """A pool of worker processes it owns; cancel terminates and replaces a worker."""
        return cls(max_workers=max_workers, mode=PoolMode.PROCESSES, start_method=start_method)

    @classmethod
    def from_executor(
        cls, executor: concurrent.futures.Executor, max_workers: int | None = None
    ) -> WorkerPool:
        """Run jobs on an existing executor, at most ``max_workers`` at once.

        ``max_workers`` defaults to the executor's own worker count where it has one. The
        pool never shuts the executor down: it is yours.
        """
        if isinstance(executor, concurrent.futures.ProcessPoolExecutor):
            raise ConfigurationError(
                "a ProcessPoolExecutor runs tasks in other processes; use WorkerPool.remote()"
            )
        if max_workers is None:
            max_workers = int(getattr(executor, "_max_workers", 1) or 1)
        return cls(max_workers=max_workers, mode=PoolMode.EXECUTOR, backend=executor)

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
        """Run jobs on an engine whose workers are other processes or hosts.

        ``executor`` is the engine (a :class:`~zmqruntime.protocols.RemoteEngine`:
        ``ProcessPoolExecutor``, Dask's ``client.get_executor()``, a
        :class:`~zmqruntime.execution.backends.dask.DaskEngine` …); the executor function and tasks
        must be picklable and importable there. Workers report progress, hear cancellation
        and send outcomes through an inlet this pool binds on ``inlet_host`` (default: the
        server's interface) and advertises as ``advertise_host``.

        At most ``max_workers`` engine tasks (default: the executor's worker count) are
        handed over at once; the rest wait here, where a cancel simply drops them. Once
        finished jobs show that jobs take under 25 ms, each engine task carries a batch of
        about 50 ms of them (up to 32, spread over the free tasks), so the engine's own
        cost is shared; each job still attaches, reports and ends on its own, and a job
        cancelled while it waits in a batch does not run. A job counts as running once its
        worker attached. The pool never shuts the executor down; ``on_close`` is called
        when the pool closes, after its last job (``dask_pool`` closes its engine so).
        """
        if max_workers is None:
            max_workers = int(getattr(executor, "_max_workers", 1) or 1)
        return cls(
            max_workers=max_workers,
            mode=PoolMode.REMOTE,
            backend=executor,
            inlet_host=inlet_host,
            advertise_host=advertise_host,
            on_close=on_close,
        )

    # --- life cycle ------------------------------------------------------------------------

    def start(
        self,
        executor: TaskExecutor,
        listener: PoolListener,
        *,
        config: ZMQConfig | None = None,
        curve: ServerCurve | None = None,
        serializer: TaskSerializer | None = None,
    ) -> None:
        """Start the workers; ``executor`` runs every job, ``listener`` hears about them.

        ``config`` and ``curve`` (the server's) set up a remote pool's inlet; remote workers
        encode results with ``serializer`` (the server's; default ``SafeSerializer``).
        """
        if self._listener is not None:
            raise RuntimeError("this WorkerPool is already started; a pool serves one server")
        if self.mode in (PoolMode.EXECUTOR, PoolMode.REMOTE) and self.backend is None:
            raise ConfigurationError(f"PoolMode.{self.mode.name} needs an executor")
        self._executor, self._listener = executor, listener
        if self.mode is PoolMode.THREADS:
            self._owned_backend = concurrent.futures.ThreadPoolExecutor(
                self.max_workers, thread_name_prefix="zmqruntime-worker"
            )
        elif self.mode is PoolMode.PROCESSES:
            self._processes = ProcessWorkers.launch(
                executor=executor,
                count=self.max_workers,
                start_method=self.start_method,
                on_progress=listener.progress,
                on_done=self._finished,
                kill_timeout=self.kill_timeout,
            )
        elif self.mode is PoolMode.REMOTE:
            assert self.backend is not None
            self._inlet = Inlet.launch(
                backend=self.backend,
                executor=executor,
                on_started=self._remote_started,
                on_progress=listener.progress,
                on_done=self._finished,
                on_engine_free=self._engine_free,
                config=config or ZMQConfig(),
                curve=curve,
                serializer=serializer if serializer is not None else SafeSerializer(),
                host=self.inlet_host,
                advertise_host=self.advertise_host,
            )

    def close(self, timeout: float = 10.0) -> None:
        """Cancel queued jobs, ask running ones to stop, and release the workers.

        Waits up to ``timeout`` seconds for running jobs to end (process workers are
        terminated instead). Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            self._cancel_requested.update(self._running)
            stopping = list(self._running)
            for context in self._running.values():
                if context is not None:
                    context.cancel_event.set()
        for job in dropped:
            self._report(job, Cancelled())
        if self._processes is not None:
            self._processes.close(timeout)
        inlet = self._inlet
        if inlet is not None:
            for execution_id in stopping:
                inlet.cancel(execution_id)
        with self._lock:
            idle = self._idle.wait_for(lambda: not self._running, timeout)
            if not idle:
                logger.warning("worker pool closed with %d tasks still running", len(self._running))
        if inlet is not None:
            inlet.close()
        if self._owned_backend is not None:
            # Idle threads exit at once: join them. A stuck task must not hang close().
            self._owned_backend.shutdown(wait=idle, cancel_futures=True)
        if self.on_close is not None:
            try:
                self.on_close()
            except Exception:
                logger.exception("the worker pool's on_close hook failed")

    # --- jobs ------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job``; it starts when a worker is free (FIFO)."""
        with self._lock:
            if self._closed:
                raise ChannelClosed("the worker pool is closed")
            self._queue.append(job)
            launch = self._take_dispatchable()
        self._launch_all(launch)

    def cancel(self, execution_id: str) -> bool:
        """Cancel a queued job (dropped now) or a running one (asked to stop, or killed).

        Returns False if the pool does not hold the job. The job's outcome is reported to
        the listener as usual: at once for a queued job, when it stops for a running one.
        """
        with self._lock:
            queued = next((j for j in self._queue if j.execution_id == execution_id), None)
            if queued is not None:
                self._queue.remove(queued)
            else:
                if execution_id not in self._running:
                    return False
                # Remembered for a job handed to a worker but not started yet (no context).
                self._cancel_requested.add(execution_id)
                context = self._running[execution_id]
                if context is not None:
                    context.cancel_event.set()
                if self._processes is not None:
                    self._processes.kill(execution_id)
                inlet = self._inlet
        if queued is not None:
            self._report(queued, Cancelled())
        elif inlet is not None:  # not under the lock: an engine may report the end at once
            inlet.cancel(execution_id)
        return True

    @property
    def inlet_address(self) -> str | None:
        """Remote pools: the URL workers connect to for progress and cancellation (open it
        in a firewall between workers and server); None for other pools or before start."""
        return self._inlet.address if self._inlet is not None else None

    @property
    def queued(self) -> int:
        """How many jobs wait for a free worker."""
        return len(self._queue)

    def statistics(self) -> PoolStatistics:
        """The pool's mode, size, queue and running jobs."""
        with self._lock:
            running = tuple(self._running)
            queued = len(self._queue)
        processes = self._processes
        return PoolStatistics(
            mode=self.mode,
            workers=self.max_workers,
            queued=queued,
            running=len(running),
            running_ids=running,
            worker_pids=processes.pids() if processes is not None else (),
            replaced_workers=processes.replaced if processes is not None else 0,
            engine=self._inlet.engine() if self._inlet is not None else {},
        )

    # --- internals -------------------------------------------------------------------------

    def _take_dispatchable(self) -> list[list[Job]]:
        """Move jobs from the queue to running while workers are free (lock held).

        Remote pools hand over up to ``max_workers`` engine tasks; once jobs are known to
        be short, each task carries a batch of them (spread over the free tasks).
        """
        taken: list[list[Job]] = []
        inlet = self._inlet
        while self._queue:
            if inlet is None:
                if len(self._running) >= self.max_workers:
                    break
                size = 1
            else:
                free = self.max_workers - self._engine_tasks
                if free <= 0:
                    break
                size = min(inlet.batch_size(), -(-len(self._queue) // free))
                self._engine_tasks += 1
            batch = [self._queue.popleft() for _ in range(size)]
            for job in batch:
                self._running[job.execution_id] = None
            taken.append(batch)
        return taken

    def _launch_all(self, batches: list[list[Job]]) -> None:
        for batch in batches:
            try:
                self._launch(batch)
            except Exception as exc:
                logger.exception("could not hand %d job(s) to a worker", len(batch))
                for job in batch:
                    self._finished(job, Failed.from_exception(exc))
                if self._inlet is not None:
                    self._engine_free()

    def _launch(self, batch: list[Job]) -> None:
        listener = self._listener
        assert listener is not None
        if self._inlet is not None:
            self._launch_remote(batch)
            return
        (job,) = batch
        if self._processes is not None:
            if self._cancel_was_requested(job) or not listener.started(job):
                self._finished(job, Cancelled())
                return
            self._processes.run(job)
            if self._cancel_was_requested(job):  # it came while the job went to its worker
                self._processes.kill(job.execution_id)
            return
        context = ExecutionContext(job.execution_id, job.labels, report=listener.progress)
        with self._lock:
            self._running[job.execution_id] = context
            if job.execution_id in self._cancel_requested:
                context.cancel_event.set()
        backend = self._owned_backend if self._owned_backend is not None else self.backend
        assert backend is not None
        backend.submit(self._work, job, context)

    def _launch_remote(self, batch: list[Job]) -> None:
        """Hand a batch to the engine; its jobs count as running once their worker attaches."""
        inlet = self._inlet
        assert inlet is not None
        live = [job for job in batch if not self._cancel_was_requested(job)]
        for job in batch:
            if job not in live:
                self._finished(job, Cancelled())
        if not live:
            self._engine_free()
            return
        inlet.run(live)  # if it raises, nothing was handed over (see _launch_all)
        for job in live:
            if self._cancel_was_requested(job):  # it came while the job went to the engine
                try:
                    inlet.cancel(job.execution_id)
                except ChannelClosed:
                    logger.debug("the inlet closed before %s was cancelled", job.execution_id)

    def _remote_started(self, job: Job) -> bool:
        listener = self._listener
        assert listener is not None
        return not self._cancel_was_requested(job) and listener.started(job)

    def _engine_free(self) -> None:
        with self._lock:
            self._engine_tasks -= 1
            launch = [] if self._closed else self._take_dispatchable()
        self._launch_all(launch)

    def _work(self, job: Job, context: ExecutionContext) -> None:
        listener, executor = self._listener, self._executor
        assert listener is not None and executor is not None
        outcome: Outcome = Cancelled()
        try:
            if not context.cancelled and listener.started(job):
                outcome = run_job(executor, job, context, lambda: context.cancelled)
        finally:
            self._finished(job, outcome)

    def _finished(self, job: Job, outcome: Outcome) -> None:
        with self._lock:
            self._running.pop(job.execution_id, None)
            self._cancel_requested.discard(job.execution_id)
            launch = [] if self._closed else self._take_dispatchable()
            self._idle.notify_all()
        self._launch_all(launch)
        self._report(job, outcome)

    def _cancel_was_requested(self, job: Job) -> bool:
        with self._lock:
            return job.execution_id in self._cancel_requested

    def _report(self, job: Job, outcome: Outcome) -> None:
        listener = self._listener
        if listener is None:
            return
        try:
            listener.finished(job, outcome)
        except Exception:
            logger.exception("reporting the end of %s failed", job.execution_id)
