"""Worker processes owned by a WorkerPool: spawn, run, kill on cancel, replace when dead.

Each worker is a child process connected by a private ``multiprocessing`` pipe. The parent
sends it one job at a time; the child runs the executor and sends back progress events and
the outcome. Pipe traffic is pickled: the pipe is anonymous and both ends are processes this
pool started, so nothing from the network is ever unpickled here (task payloads were decoded
by the server's serializer before they reach the pool).

One reader thread waits on all pipes at once. A worker whose pipe closes — because a
cancellation killed it or because it died — is joined and replaced by a fresh one.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import multiprocessing.connection
import pickle
import threading
from collections.abc import Callable
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, final

import attrs

from zmqruntime.core.messages import ProgressEvent
from zmqruntime.errors import ConfigurationError
from zmqruntime.execution.context import ExecutionContext
from zmqruntime.execution.outcomes import Cancelled, Failed, Job, Outcome, run_job
from zmqruntime.protocols import TaskExecutor

__all__ = ["ProcessWorkers"]

logger = logging.getLogger(__name__)

_MAX_DEATHS_IN_A_ROW = 3


def _child_main(connection: multiprocessing.connection.Connection, executor: TaskExecutor) -> None:
    """The body of a worker process: run jobs until told to stop or the pipe closes."""

    def report(event: ProgressEvent) -> None:
        connection.send(("progress", event))

    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        _kind, execution_id, labels, task = message
        context = ExecutionContext(execution_id, labels, report=report)
        outcome = run_job(executor, Job(execution_id, task, labels), context, lambda: False)
        try:
            connection.send(("done", execution_id, outcome))
        except Exception as exc:  # e.g. an unpicklable result
            connection.send(("done", execution_id, Failed.from_exception(exc)))


@final
@attrs.define(eq=False)
class _Worker:
    process: BaseProcess
    connection: multiprocessing.connection.Connection
    send_lock: threading.Lock = attrs.field(factory=threading.Lock)
    job: Job | None = None
    killed: bool = False


@final
@attrs.define(eq=False)
class ProcessWorkers:
    """A fixed number of worker processes and the thread that listens to them."""

    executor: TaskExecutor
    context: BaseContext
    on_progress: Callable[[ProgressEvent], None]
    on_done: Callable[[Job, Outcome], None]
    kill_timeout: float
    _workers: list[_Worker] = attrs.field(factory=list)
    _backlog: collections.deque[Job] = attrs.field(factory=collections.deque)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _wake_reader: multiprocessing.connection.Connection | None = None
    _wake_writer: multiprocessing.connection.Connection | None = None
    _thread: threading.Thread | None = None
    _closing: bool = False
    _deaths_in_a_row: int = 0
    _broken: str | None = None
    replaced: int = 0

    @classmethod
    def launch(
        cls,
        *,
        executor: TaskExecutor,
        count: int,
        start_method: str,
        on_progress: Callable[[ProgressEvent], None],
        on_done: Callable[[Job, Outcome], None],
        kill_timeout: float,
    ) -> ProcessWorkers:
        """Start ``count`` worker processes and the reader thread."""
        try:
            pickle.dumps(executor)
        except Exception as exc:
            raise ConfigurationError(
                "process workers need an executor that can be pickled: a function defined at "
                f"module level of an importable module ({exc})"
            ) from exc
        pool = cls(
            executor, multiprocessing.get_context(start_method), on_progress, on_done, kill_timeout
        )
        pool._wake_reader, pool._wake_writer = multiprocessing.Pipe(duplex=False)
        for _ in range(count):
            pool._workers.append(pool._spawn())
        pool._thread = threading.Thread(
            target=pool._read, name="zmqruntime-process-reader", daemon=True
        )
        pool._thread.start()
        return pool

    def _spawn(self) -> _Worker:
        parent, child = self.context.Pipe()
        process = self.context.Process(  # type: ignore[attr-defined]
            target=_child_main, args=(child, self.executor), name="zmqruntime-worker", daemon=True
        )
        process.start()
        child.close()
        return _Worker(process, parent)

    def pids(self) -> tuple[int, ...]:
        """The process ids of the current workers."""
        with self._lock:
            return tuple(w.process.pid for w in self._workers if w.process.pid is not None)

    def run(self, job: Job) -> None:
        """Hand ``job`` to an idle worker, or keep it until one is free (a replacement)."""
        with self._lock:
            broken = self._broken
            worker = next((w for w in self._workers if w.job is None and not w.killed), None)
            if worker is None and broken is None:
                self._backlog.append(job)
                return
            if worker is not None:
                worker.job = job
        if worker is None:
            self.on_done(job, Failed("WorkerStartFailed", str(broken), ""))
            return
        self._send(worker, job)

    def _send(self, worker: _Worker, job: Job) -> None:
        try:
            with worker.send_lock:
                worker.connection.send(("run", job.execution_id, dict(job.labels), job.task))
        except Exception as exc:  # the task could not be pickled, or the worker just died
            with self._lock:
                worker.job = None
            self.on_done(job, Failed.from_exception(exc))

    def kill(self, execution_id: str) -> bool:
        """Terminate the worker running ``execution_id``; the reader replaces it."""
        with self._lock:
            worker = next(
                (w for w in self._workers if w.job and w.job.execution_id == execution_id), None
            )
            if worker is None:
                return False
            worker.killed = True
        worker.process.terminate()
        return True

    def close(self, timeout: float) -> None:
        """Stop every worker (terminating busy ones) and the reader thread."""
        with self._lock:
            self._closing = True
            workers = list(self._workers)
        for worker in workers:
            if worker.job is None:
                try:
                    with worker.send_lock:
                        worker.connection.send(("stop",))
                except OSError:
                    pass
            else:
                worker.killed = True
                worker.process.terminate()
        if self._wake_writer is not None:
            self._wake_writer.send(b"")
        if self._thread is not None:
            self._thread.join(timeout)
        for worker in workers:
            _reap(worker, self.kill_timeout)
        if self._wake_writer is not None:
            self._wake_writer.close()
        if self._wake_reader is not None:
            self._wake_reader.close()

    def _read(self) -> None:
        assert self._wake_reader is not None
        while True:
            with self._lock:
                if self._closing and all(w.job is None for w in self._workers):
                    return
                connections: list[Any] = [w.connection for w in self._workers]
            connections.append(self._wake_reader)
            for ready in multiprocessing.connection.wait(connections, timeout=1.0):
                if ready is self._wake_reader:
                    self._wake_reader.recv()
                    continue
                worker = next((w for w in self._workers if w.connection is ready), None)
                if worker is not None:
                    self._receive(worker)

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.connection.recv()
        except (EOFError, OSError):
            self._worker_gone(worker)
            return
        except Exception as exc:  # a result that cannot be unpickled here
            message = (
                "done",
                worker.job.execution_id if worker.job else "",
                Failed.from_exception(exc),
            )
        if message[0] == "progress":
            try:
                self.on_progress(message[1])
            except Exception:
                logger.exception("progress callback failed")
            return
        with self._lock:
            job, worker.job = worker.job, None
            backlog = self._backlog.popleft() if self._backlog else None
            if backlog is not None:
                worker.job = backlog
        if job is not None:
            self._deaths_in_a_row = 0
            self.on_done(job, message[2])
        if backlog is not None:
            self._send(worker, backlog)

    def _worker_gone(self, worker: _Worker) -> None:
        _reap(worker, self.kill_timeout)
        worker.connection.close()
        if self._closing and worker.job is None:
            with self._lock:
                self._workers.remove(worker)  # a worker told to stop has stopped
            return
        job = worker.job
        outcome: Outcome
        if worker.killed:
            outcome = Cancelled()
        else:
            code = worker.process.exitcode
            logger.error("worker process %s died (exit code %s)", worker.process.pid, code)
            outcome = Failed(
                "WorkerDied",
                f"the worker process {worker.process.pid} died (exit code {code}) while "
                "running this task",
                "",
            )
        with self._lock:
            self._workers.remove(worker)
            if not worker.killed:
                self._deaths_in_a_row += 1
            if self._deaths_in_a_row >= _MAX_DEATHS_IN_A_ROW and self._broken is None:
                self._broken = (
                    f"{self._deaths_in_a_row} worker processes in a row died before finishing a "
                    f"task (last exit code {worker.process.exitcode}); check that the executor's "
                    "module imports cleanly in a fresh interpreter (and that the launching "
                    "script has an `if __name__ == '__main__':` guard)"
                )
                logger.error("not replacing worker processes any more: %s", self._broken)
            closing = self._closing or self._broken is not None
            stranded = list(self._backlog) if self._broken is not None else []
            if stranded:
                self._backlog.clear()
        for waiting in stranded:
            self.on_done(waiting, Failed("WorkerStartFailed", str(self._broken), ""))
        replacement = None if closing else self._spawn()  # slow: never under the lock
        backlog = None
        if replacement is not None:
            with self._lock:
                self.replaced += 1
                self._workers.append(replacement)
                if self._backlog:
                    backlog = self._backlog.popleft()
                    replacement.job = backlog
        if job is not None:
            self.on_done(job, outcome)
        if replacement is not None and backlog is not None:
            self._send(replacement, backlog)


def _reap(worker: _Worker, timeout: float) -> None:
    worker.process.join(timeout)
    if worker.process.is_alive():
        worker.process.kill()
        worker.process.join(timeout)
