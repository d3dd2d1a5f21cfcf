"""A remote engine as a worker backend, and the inlet where its workers attach and report.

:class:`RemoteWorkers` hands each job to its engine with a
:class:`~zmqruntime.execution.backends.remote.RemoteContext` that connects back to its inlet
(a :class:`~zmqruntime.core.server.ZMQServer`), which hears the worker's ``Attach``, progress
and ``Completion`` and sends ``Cancel`` to the worker of a cancelled execution. A job ends
exactly once: by its worker's completion (the usual way), or by the engine's future when
the engine cancelled or failed it, or carried the outcome itself. With CURVE, the inlet uses
the server's key pair and admits one key pair made for the pool.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import heapq
import logging
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any, Final, final

import attrs

from zmqruntime.config import TransportMode
from zmqruntime.core.credentials import ClientCredentials, client_credentials
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import (
    Attach,
    Cancel,
    Completion,
    ControlMessageType,
    ErrorReply,
    ExecutionStatus,
    Message,
    ProgressEvent,
    Shutdown,
    StreamMessageType,
)
from zmqruntime.core.security import ClientCurve, ServerCurve, generate_curve_keypair
from zmqruntime.core.server import Peer, ZMQServer
from zmqruntime.core.transport import get_zmq_transport_url
from zmqruntime.errors import ChannelClosed, ErrorCode
from zmqruntime.execution import outcomes
from zmqruntime.execution.backends import remote
from zmqruntime.execution.outcomes import Cancelled, Completed, Failed, Job, Outcome
from zmqruntime.protocols import RemoteEngine, TaskExecutor

__all__ = ["RemoteWorkers"]

logger = logging.getLogger(__name__)

_BATCH_SECONDS: Final = 0.05
"""Work per engine task worth batching up to: an engine's own cost per task (Dask: about a
millisecond) stays a few percent of it, and jobs of 25 ms or more go one by one."""
_MAX_BATCH: Final = 32
_RUN_WEIGHT: Final = 0.2
"""How much each finished job moves the running mean of run times."""


@final
@attrs.define(eq=False)
class _Handed:
    """A job the engine holds, and what the inlet knows of it."""

    job: Job
    batch: tuple[str, ...]
    """The execution ids that share its engine task (itself alone, when not batched)."""
    future: concurrent.futures.Future[Any] | None = None
    route: Peer | None = None
    """Where a cancel reaches it: the link of the worker it or an earlier batch mate attached."""
    attached: tuple[Peer, str] | None = None
    """The link and name of the worker that attached for it (then it runs there)."""
    started: bool = False  # the server counts it as running
    cancelled: bool = False


@final
@attrs.define(eq=False)
class RemoteWorkers:
    """A remote engine as a :class:`~zmqruntime.protocols.WorkerBackend`: each hand-over is one
    engine task (``engine.submit``), at most ``capacity`` at once. Once jobs are seen to take
    under 25 ms, a hand-over carries about 50 ms of them (up to 32); each still attaches,
    reports and ends on its own, and one cancelled while it waits in its batch does not run.
    Workers reach the inlet :meth:`start` binds on ``host`` (default: the server's interface)
    as ``advertise_host`` (default: the bound host, or this machine's name for a wildcard).
    The engine is never shut down here."""

    engine: RemoteEngine
    capacity: int = attrs.field(default=1, validator=outcomes.check_workers)
    host: str | None = None
    advertise_host: str | None = None
    # Set by start():
    _executor: TaskExecutor = attrs.field(init=False)
    _sink: outcomes.JobSink = attrs.field(init=False)
    _server: ZMQServer = attrs.field(init=False)
    _credentials: ClientCredentials | None = attrs.field(init=False)
    """What workers present to the inlet: keys made here when the server has CURVE keys,
    else those of the inlet's connection file."""
    _jobs: dict[str, _Handed] = attrs.field(factory=dict, init=False)
    """Jobs handed to the engine that have not ended; whoever pops one reports its end."""
    _done: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    """Jobs each worker finished."""
    _mean_run: float | None = attrs.field(default=None, init=False)
    _lock: threading.Condition = attrs.field(factory=threading.Condition, init=False)
    """Notified when a job ends or a deadline is set."""
    _deadlines: list[tuple[float, str]] = attrs.field(factory=list, init=False)
    """A heap: when to give up on a completion the engine said was sent (see _watch)."""
    _watcher: threading.Thread = attrs.field(init=False)
    _closed: bool = attrs.field(default=False, init=False)

    def start(self, executor: TaskExecutor, sink: outcomes.JobSink) -> None:
        """Bind the inlet (TCP, a free port pair on ``host``) and start serving it."""
        if hasattr(self, "_server"):
            raise RuntimeError("these RemoteWorkers are already started")
        self._executor, self._sink = executor, sink
        endpoint = sink.endpoint
        bind_host = self.host or endpoint.host
        inlet_curve, self._credentials = None, None
        if (curve := endpoint.server_curve) is not None:
            keys = generate_curve_keypair()
            inlet_curve = ServerCurve(curve.keypair, allowed_client_keys={keys.public_key})
            self._credentials = ClientCurve(keys, curve.keypair.public_key)
        if self.advertise_host is None:
            wildcard = bind_host in ("0.0.0.0", "*", "::")
            self.advertise_host = socket.gethostname() if wildcard else bind_host
        at = Endpoint.tcp(0, host=bind_host, config=endpoint.config, curve=inlet_curve)
        self._server = ZMQServer(
            at,  # its data socket (PUB) stays unused
            handlers={
                ControlMessageType.ATTACH: self._on_attach,
                StreamMessageType.PROGRESS: self._on_progress,
                StreamMessageType.COMPLETION: self._on_completion,
                ControlMessageType.SHUTDOWN: _refuse_shutdown,
            },
            role="inlet",
        )
        self._server.start()
        if inlet_curve is None:
            self._credentials = client_credentials(self._server.sockets.endpoint)
        self._watcher = threading.Thread(
            target=self._watch, name="zmqruntime-inlet-deadlines", daemon=True
        )
        self._watcher.start()

    @property
    def address(self) -> str | None:
        """The URL remote contexts connect to (the inlet's control socket); None before
        :meth:`start`."""
        if not hasattr(self, "_server"):
            return None
        port = self._sink.endpoint.config.control_port(self._server.bound_port)
        return get_zmq_transport_url(port, str(self.advertise_host), TransportMode.TCP)

    def run(self, jobs: Sequence[Job]) -> None:
        """Hand ``jobs`` to the engine as one task (a batch when there are several)."""
        jobs, address, sink = list(jobs), self.address, self._sink
        assert address is not None, "not started"
        link = (address, sink.endpoint.config, self._credentials, sink.serializer)
        contexts = [remote.RemoteContext(job.execution_id, dict(job.labels), *link) for job in jobs]
        ids = tuple(job.execution_id for job in jobs)
        handed = [_Handed(job, ids) for job in jobs]
        with self._lock:  # before the engine has them: a worker may attach at once
            self._jobs.update(zip(ids, handed, strict=True))
        try:
            if len(jobs) == 1:
                future = self.engine.submit(remote.run_remote, self._executor, jobs[0], contexts[0])
            else:
                future = self.engine.submit(remote.run_remote_batch, self._executor, jobs, contexts)
        except BaseException:
            with self._lock:
                for execution_id in ids:
                    self._jobs.pop(execution_id, None)
            raise
        with self._lock:
            for entry in handed:
                entry.future = future
        future.add_done_callback(lambda done: self._engine_done(jobs, done))

    def cancel(self, execution_id: str) -> None:
        """Drop the job from the engine's queue, or tell its worker to stop."""
        with self._lock:
            entry = self._jobs.get(execution_id)
            if entry is None:
                return
            entry.cancelled = True
            # A batch's engine task is cancelled only when all its open jobs are.
            batch = [self._jobs[other] for other in entry.batch if other in self._jobs]
            whole = all(other.cancelled for other in batch)
            future, route = entry.future, entry.route
        if future is not None and whole:
            future.cancel()  # not started: the done callback reports it cancelled
        if route is not None:
            # Also after future.cancel(): Dask "cancels" a running task, which only its context
            # stops (a job further down a batch hears it before it starts: it does not run).
            with contextlib.suppress(ChannelClosed):
                self._server.send(route, Cancel(request_id=0, execution_id=execution_id))

    def batch_size(self) -> int:
        """How many jobs to hand the engine as one task: 1 until tasks are known to be
        short, then enough for about ``_BATCH_SECONDS`` of work (at most ``_MAX_BATCH``)."""
        with self._lock:
            mean = self._mean_run
        if mean is None:
            return 1
        return max(1, min(_MAX_BATCH, int(_BATCH_SECONDS / max(mean, 1e-6))))

    def statistics(self) -> tuple[outcomes.WorkerStatistics, ...]:
        """Each worker that attached: what it runs now, how many it finished."""
        running: dict[str, list[str]] = {}
        with self._lock:
            for execution_id, entry in self._jobs.items():
                if entry.attached is not None:
                    running.setdefault(entry.attached[1], []).append(execution_id)
            done = self._done.copy()
        return tuple(
            outcomes.WorkerStatistics(name=n, running=tuple(running.get(n, ())), done=done[n])
            for n in sorted(set(running) | set(done))
        )

    def __enter__(self) -> RemoteWorkers:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every job, wait up to ``timeout`` for them to end, stop the inlet (the
        engine is not ours to stop). Idempotent."""
        if not hasattr(self, "_server"):
            return
        with self._lock:
            open_jobs = list(self._jobs)
        for execution_id in open_jobs:
            self.cancel(execution_id)
        with self._lock:
            if not self._lock.wait_for(lambda: not self._jobs, timeout):
                logger.warning("%d remote jobs still run after close", len(self._jobs))
            self._closed = True
            self._lock.notify_all()
        self._watcher.join(timeout)
        self._server.close(timeout)

    def _end(self, execution_id: str, outcome: Outcome) -> None:
        """Report ``outcome`` for the job, unless it ended already."""
        with self._lock:
            entry = self._jobs.pop(execution_id, None)
            if entry is None:
                return
            if entry.attached is not None:
                self._done[entry.attached[1]] += 1
        job = entry.job
        if isinstance(outcome, Completed) and not entry.started and not self._sink.started(job):
            outcome = Cancelled()  # never seen running (its attach was lost): cancelled since
        self._sink.finished(job, outcome)
        with self._lock:  # after the report: close() waits for it
            self._lock.notify_all()

    def _engine_done(self, jobs: list[Job], future: concurrent.futures.Future[Any]) -> None:
        try:
            self._settle(jobs, future)
        finally:
            self._sink.freed()

    def _settle(self, jobs: list[Job], future: concurrent.futures.Future[Any]) -> None:
        """End the jobs the engine's task ended without their worker's completion."""
        with self._lock:
            if not any(job.execution_id in self._jobs for job in jobs):
                return  # every worker's completion came first, as it usually does
        if future.cancelled():
            ends: list[Any] = [Cancelled()] * len(jobs)
        elif (error := future.exception()) is not None:  # e.g. a dead worker
            ends = [Failed.from_exception(error)] * len(jobs)
        else:
            result = future.result()
            ends = result if len(jobs) > 1 else [result]
            if not isinstance(ends, list) or len(ends) != len(jobs):
                # None: the completions are on their way (else not ours: wait, then lost)
                ends = [None] * len(jobs)
        for job, outcome in zip(jobs, ends, strict=True):
            if outcome is None:  # the worker sent its completion; it is still on its way
                self._expect_completion(job)
            elif isinstance(outcome, (Completed, Failed, Cancelled)):
                self._end(job.execution_id, outcome)
            else:
                self._end(
                    job.execution_id, Failed("TypeError", f"the engine returned {outcome!r}", "")
                )

    def _expect_completion(self, job: Job) -> None:
        """Give the worker's completion ``config.request_timeout`` to arrive (see _watch)."""
        with self._lock:
            if job.execution_id in self._jobs:
                deadline = time.monotonic() + self._sink.endpoint.config.request_timeout
                heapq.heappush(self._deadlines, (deadline, job.execution_id))
                self._lock.notify_all()

    def _watch(self) -> None:
        """Fail each job whose completion never came: the engine says it ended, so its
        outcome was lost on the way. One thread for all, until close."""
        while True:
            with self._lock:
                now, due = time.monotonic(), []
                while self._deadlines and self._deadlines[0][0] <= now:
                    due.append(heapq.heappop(self._deadlines)[1])
                if not due:
                    if self._closed:
                        return
                    self._lock.wait(self._deadlines[0][0] - now if self._deadlines else 3600.0)
                    continue
            for execution_id in due:  # those that ended meanwhile are no longer known
                msg = f"the engine finished {execution_id} but its outcome never reached the server"
                self._end(execution_id, Failed("OutcomeLost", msg, ""))

    def _on_attach(self, request: Attach, peer: Peer) -> Message | None:
        refusal = Cancel(request_id=request.request_id, execution_id=request.execution_id)
        stop: list[str] = []
        with self._lock:
            entry = self._jobs.get(request.execution_id)
            if entry is None:
                logger.debug("inlet: %s attached to an ended execution", request.worker)
                return refusal
            entry.attached = (peer, request.worker)
            for mate in (self._jobs[later] for later in entry.batch if later in self._jobs):
                mate.route = peer  # the rest of its batch runs there too
                if mate is not entry and mate.cancelled:
                    stop.append(mate.job.execution_id)  # cancelled before the batch had a worker
            started, cancelled = entry.started, entry.cancelled  # started: a retry
        for later in stop:
            self._server.send(peer, Cancel(request_id=0, execution_id=later))
        if cancelled or not (started or self._sink.started(entry.job)):
            return refusal
        with self._lock:
            entry.started = True
        return None  # no answer needed: a Cancel follows if it comes to that

    def _on_progress(self, event: ProgressEvent, _peer: Peer) -> None:
        with self._lock:
            known = event.execution_id in self._jobs
        if known:
            self._sink.progress(event)

    def _on_completion(self, message: Completion, peer: Peer) -> None:
        record = message.record
        with self._lock:
            entry = self._jobs.get(record.execution_id)
            attached = entry.attached if entry is not None else None
        if entry is None or (attached is not None and attached[0] != peer):
            # Ended already (cancelled, or a retried task's second run), or not its worker.
            logger.debug("inlet: dropped a completion of %s", record.execution_id)
            return
        if record.status is ExecutionStatus.COMPLETE and record.started_at is not None:
            # Completed runs show what the work takes (cancelled ones are cut short).
            seconds = max(0.0, (record.finished_at or record.started_at) - record.started_at)
            with self._lock:
                mean = self._mean_run
                self._mean_run = seconds if mean is None else mean + _RUN_WEIGHT * (seconds - mean)
        self._end(record.execution_id, remote.outcome_of(message, self._sink.serializer))


def _refuse_shutdown(request: Shutdown, _peer: Peer) -> ErrorReply:
    # Workers (or anyone who reaches the port) must not stop the pool's inlet.
    return ErrorReply(
        request_id=request.request_id,
        code=ErrorCode.REFUSED,
        message="a pool's inlet is not shut down from outside; shut down its ExecutionServer",
    )
