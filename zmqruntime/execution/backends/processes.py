"""Worker processes a pool owns, as a :class:`~zmqruntime.protocols.WorkerBackend`.

Each worker is a child process on a private pipe, one job at a time. Pipe traffic is
pickled: both ends are processes this backend started, never the network.

Workers are not daemonic, so a task may start processes of its own. Cancelling a running
job kills its worker and, on POSIX, its process group (each worker leads one; a process
that left it, with ``setsid`` say, is not reached); a fresh worker takes its place, as it
does for a worker that died.

Workers never outlive their pool: :meth:`ProcessWorkers.close` stops them (killing busy
ones), so does an interpreter exiting without closing (a ``multiprocessing`` finalizer),
and a worker whose pool's process is gone, even killed, kills its group and itself (the
write end of its lifeline pipe closed; under ``fork``, once workers started later, which
hold copies, are gone too).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.util
import os
import pickle
import signal
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, final

import attrs

from zmqruntime.errors import ConfigurationError
from zmqruntime.execution import outcomes
from zmqruntime.execution.context import ExecutionContext
from zmqruntime.protocols import TaskExecutor

__all__ = ["ProcessWorkers"]

logger = logging.getLogger(__name__)

_MAX_DEATHS_IN_A_ROW = 3


def _worker_main(
    connection: Connection, lifeline: Connection, keep: Connection, executor: TaskExecutor
) -> None:
    """The body of a worker process: run jobs until told to stop or the pipe closes."""
    if os.name == "posix":
        os.setpgid(0, 0)  # a group of its own: a cancel ends it with what it started
    keep.close()  # its copy of the lifeline's write end (forked, or passed to be closed)
    threading.Thread(
        target=_watch, args=(lifeline,), name="zmqruntime-lifeline", daemon=True
    ).start()

    def report(event: object) -> None:
        connection.send(("progress", event))

    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        job = message[1]
        context = ExecutionContext(job.execution_id, job.labels, report=report)
        outcome = outcomes.run_job(executor, job, context, lambda: False)
        try:
            connection.send(("done", outcome))
        except Exception as exc:  # e.g. an unpicklable result
            connection.send(("done", outcomes.Failed.from_exception(exc)))


def _watch(lifeline: Connection) -> None:
    """Once the pool's process is gone, end this worker and its group."""
    while not wait([lifeline], timeout=3600.0):
        pass  # nothing is ever sent: it becomes readable when the write end closes
    logger.warning("the pool's process is gone: ending worker %d", os.getpid())
    if os.name == "posix" and os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(1)


@final
@attrs.define(eq=False)
class _Worker:
    """One slot of the pool: its current process, and what it is doing."""

    name: str
    process: BaseProcess
    connection: Connection
    lifeline: Connection
    """The lifeline's write end: the worker ends itself once it is closed."""
    job: outcomes.Job | None = None
    killed: bool = False
    done: int = 0
    replaced: int = 0


@final
@attrs.define(eq=False)
class ProcessWorkers:
    """``capacity`` worker processes (started with ``start_method``) and the thread that
    listens to them. A worker that does not stop within ``kill_timeout`` seconds is killed."""

    capacity: int = attrs.field(default=1, validator=outcomes.check_workers)
    start_method: str = attrs.field(default="spawn", kw_only=True)
    kill_timeout: float = attrs.field(default=5.0, kw_only=True)
    # Set by start():
    _executor: TaskExecutor = attrs.field(init=False)
    _sink: outcomes.JobSink = attrs.field(init=False)
    _wake: tuple[Connection, Connection] = attrs.field(init=False)
    _thread: threading.Thread = attrs.field(init=False)
    _finalizer: Callable[[], object] = attrs.field(init=False)
    _workers: list[_Worker] = attrs.field(factory=list, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _closing: threading.Event = attrs.field(factory=threading.Event, init=False)
    """Set by close(), or by the exit finalizer: no worker is replaced any more."""
    _deaths_in_a_row: int = attrs.field(default=0, init=False)
    _broken: str | None = attrs.field(default=None, init=False)

    def start(self, executor: TaskExecutor, sink: outcomes.JobSink) -> None:
        """Start the worker processes and the thread that listens to them."""
        if hasattr(self, "_thread"):
            raise RuntimeError("these ProcessWorkers are already started")
        try:
            pickle.dumps(executor)
        except Exception as exc:
            raise ConfigurationError(
                "process workers need an executor that can be pickled: a function defined at "
                f"module level of an importable module ({exc})"
            ) from exc
        self._executor, self._sink = executor, sink
        self._wake = multiprocessing.Pipe(duplex=False)
        self._workers.extend(self._spawn(f"process-{n}") for n in range(self.capacity))
        # Runs at exit, before multiprocessing joins its (non-daemonic) children. A finalizer
        # must not hold its object: it gets the list and the event, not self.
        self._finalizer = multiprocessing.util.Finalize(
            self, _kill_all, args=(self._workers, self._closing), exitpriority=10
        )
        self._thread = threading.Thread(
            target=self._read, name="zmqruntime-process-reader", daemon=True
        )
        self._thread.start()

    def _spawn(self, name: str) -> _Worker:
        context = multiprocessing.get_context(self.start_method)
        parent, child = context.Pipe()
        lifeline, keep = context.Pipe(duplex=False)
        process = context.Process(  # type: ignore[attr-defined]
            target=_worker_main,
            args=(child, lifeline, keep, self._executor),
            name=f"zmqruntime-{name}",
        )
        process.start()
        child.close()
        lifeline.close()
        return _Worker(name, process, parent, keep)

    def batch_size(self) -> int:
        return 1

    def run(self, jobs: Sequence[outcomes.Job]) -> None:
        """Send the job to an idle worker (there is one: a dead worker's slot is refilled
        before it is freed), unless the workers keep dying (then it fails at once)."""
        (job,) = jobs
        with self._lock:
            closing, broken = self._closing.is_set(), self._broken
            idle = (w for w in self._workers if w.job is None and not w.killed)
            worker = None if closing else next(idle, None)
            if worker is not None:
                worker.job = job
        if worker is None:  # the pool closes, or workers keep dying
            failed = outcomes.Failed("WorkerStartFailed", str(broken), "")
            self._report(job, outcomes.Cancelled() if closing else failed)
        elif not self._sink.started(job):
            self._release(worker, job, outcomes.Cancelled())
        else:
            try:
                worker.connection.send(("run", job))
            except Exception as exc:  # the task cannot be pickled, or the worker just died
                self._release(worker, job, outcomes.Failed.from_exception(exc))

    def cancel(self, execution_id: str) -> None:
        """Kill the worker running ``execution_id`` with its group; the reader reports the
        job cancelled and starts a fresh worker."""
        with self._lock:
            busy = (w for w in self._workers if w.job and w.job.execution_id == execution_id)
            worker = next(busy, None)
            if worker is None:
                return
            worker.killed = True
        _kill_tree(worker.process)

    def statistics(self) -> tuple[outcomes.WorkerStatistics, ...]:
        """Each worker slot: its process, its job, how many it ran, how often it was replaced."""
        with self._lock:
            return tuple(
                outcomes.WorkerStatistics(
                    name=w.name,
                    pid=w.process.pid,
                    running=(w.job.execution_id,) if w.job else (),
                    done=w.done,
                    replaced=w.replaced,
                )
                for w in self._workers
            )

    def __enter__(self) -> ProcessWorkers:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        """Stop idle workers, kill busy ones (their jobs end cancelled), stop the reader and
        reap every worker. Idempotent."""
        with self._lock:
            if self._closing.is_set() or not hasattr(self, "_thread"):
                return
            self._closing.set()
            workers = list(self._workers)
            for worker in workers:
                worker.killed = worker.job is not None
        for worker in workers:
            if worker.killed:
                _kill_tree(worker.process)
            else:
                with contextlib.suppress(OSError):
                    worker.connection.send(("stop",))
        self._wake[1].send(b"")
        self._thread.join(timeout)
        for worker in workers:
            _reap(worker, self.kill_timeout)
        self._finalizer()
        for end in self._wake:
            end.close()

    def _read(self) -> None:
        wake = self._wake[0]
        while True:
            with self._lock:
                if self._closing.is_set() and all(w.job is None for w in self._workers):
                    return
                owners: dict[Any, _Worker] = {w.connection: w for w in self._workers}
                owners.update((w.process.sentinel, w) for w in self._workers)
            for ready in wait([*owners, wake], timeout=1.0):
                if ready is wake:
                    wake.recv()
                elif (worker := owners[ready]) in self._workers:
                    self._receive(worker, ready is worker.connection)

    def _receive(self, worker: _Worker, readable: bool) -> None:
        """Take the worker's next message; a worker whose process ended (its pipe closed, or
        its sentinel is ready and nothing is left to read) is gone."""
        try:
            if not readable and not worker.connection.poll():
                raise EOFError
            message = worker.connection.recv()
        except (EOFError, OSError):
            self._worker_gone(worker)
            return
        except Exception as exc:  # a result that cannot be unpickled here
            message = ("done", outcomes.Failed.from_exception(exc))
        if message[0] == "progress":
            try:
                self._sink.progress(message[1])
            except Exception:
                logger.exception("progress callback failed")
            return
        job = worker.job
        # A killed worker's job ends cancelled (see _worker_gone), even if it just finished.
        if job is not None and not worker.killed:
            self._release(worker, job, message[1], ran=True)

    def _worker_gone(self, worker: _Worker) -> None:
        """Report its job, and put a fresh worker in its place (unless closing, or workers
        keep dying) before its slot is freed."""
        _reap(worker, self.kill_timeout)
        pid, code = worker.process.pid, worker.process.exitcode
        outcome: outcomes.Outcome = outcomes.Cancelled()
        with self._lock:
            self._workers.remove(worker)
            job, worker.job = worker.job, None
            if not worker.killed and not self._closing.is_set():
                logger.error("worker process %s died (exit code %s)", pid, code)
                text = f"the worker process {pid} died (exit code {code}) while running this task"
                outcome = outcomes.Failed("WorkerDied", text, "")
                self._deaths_in_a_row += 1
            if self._deaths_in_a_row >= _MAX_DEATHS_IN_A_ROW and self._broken is None:
                self._broken = (
                    f"{self._deaths_in_a_row} worker processes in a row died before finishing a "
                    f"task (last exit code {code}); check that the executor's module imports "
                    "cleanly in a fresh interpreter (and that the launching script has an "
                    "`if __name__ == '__main__':` guard)"
                )
                logger.error("not replacing worker processes any more: %s", self._broken)
            replace = not self._closing.is_set() and self._broken is None
        if job is not None:  # reported before the (slow) replacement: the client hears now
            self._sink.finished(job, outcome)
        if replace:
            fresh = self._spawn(worker.name)
            fresh.done, fresh.replaced = worker.done, worker.replaced + 1
            with self._lock:
                self._workers.append(fresh)
        if job is not None:
            self._sink.freed()

    def _release(
        self, worker: _Worker, job: outcomes.Job, outcome: outcomes.Outcome, *, ran: bool = False
    ) -> None:
        """Take ``job`` off ``worker`` and report ``outcome``, unless another caller did
        (``ran``: the worker finished it)."""
        with self._lock:
            if worker.job is not job:
                return
            worker.job = None
            if ran:
                worker.done += 1
                self._deaths_in_a_row = 0
        self._report(job, outcome)

    def _report(self, job: outcomes.Job, outcome: outcomes.Outcome) -> None:
        self._sink.finished(job, outcome)
        self._sink.freed()


def _kill_tree(process: BaseProcess) -> None:
    """Kill ``process`` and, on POSIX, its process group. The group only while the process
    has not been reaped: until then its pid, the group's id, cannot name anything else."""
    if os.name == "posix" and process.pid is not None and process.exitcode is None:
        with contextlib.suppress(OSError):  # no group yet (it just started), or gone
            os.killpg(process.pid, signal.SIGKILL)
    process.kill()


def _reap(worker: _Worker, timeout: float) -> None:
    """Wait up to ``timeout`` for the worker to exit, kill it (with its group) if it does
    not, and let go of its pipes."""
    worker.process.join(timeout)
    if worker.process.exitcode is None:
        _kill_tree(worker.process)
        worker.process.join(timeout)
    worker.connection.close()
    worker.lifeline.close()


def _kill_all(workers: list[_Worker], closing: threading.Event) -> None:
    closing.set()  # first: the reader must not replace what is killed now
    for worker in list(workers):
        _kill_tree(worker.process)
