"""The server end of remote contexts: where a remote pool's workers attach and report.

A remote :class:`~zmqruntime.execution.WorkerPool` hands each job to its engine with a
:class:`~zmqruntime.execution.backends.remote.RemoteContext` that connects back here. The
inlet hears each worker's :class:`~zmqruntime.core.messages.Attach`, its progress and its
:class:`~zmqruntime.core.messages.Completion`, and sends
:class:`~zmqruntime.core.messages.Cancel` to
the worker running a cancelled execution. A job ends exactly once: by its worker's
completion (the usual way, with the result already encoded), or by the engine's future when
the engine cancelled or failed it, or carried the outcome itself. When the server has CURVE,
the inlet uses the server's key pair and admits one key pair made for the pool's contexts.
"""

from __future__ import annotations

import concurrent.futures
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any, Final, final

import attrs

from zmqruntime.config import TransportMode, ZMQConfig
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
from zmqruntime.core.router import HandlerKey
from zmqruntime.core.security import ClientCurve, ServerCurve, generate_curve_keypair
from zmqruntime.core.serializers import serializer_name
from zmqruntime.core.server import Peer, ZMQServer
from zmqruntime.errors import ErrorCode
from zmqruntime.execution.backends.remote import RemoteContext, run_remote, run_remote_batch
from zmqruntime.execution.outcomes import Cancelled, Completed, Failed, Job, Outcome
from zmqruntime.protocols import RemoteEngine, TaskExecutor, TaskSerializer

__all__ = ["Inlet"]

logger = logging.getLogger(__name__)

_BATCH_SECONDS: Final = 0.05
"""Work per engine task worth batching up to. An engine's own cost per task (Dask: about a
millisecond of scheduler work, more with our bookkeeping) stays a few percent of 50 ms;
jobs of 25 ms or more go one by one, so the engine still balances them."""
_MAX_BATCH: Final = 32
_RUN_WEIGHT: Final = 0.2
"""How much each finished job moves the running mean of run times."""


@final
@attrs.define(eq=False)
class Inlet:
    """Hears remote workers' attaches, progress and completions, sends them cancels, and
    runs jobs on ``backend`` (the engine, which it never shuts down)."""

    backend: RemoteEngine
    executor: TaskExecutor
    on_started: Callable[[Job], bool]
    """Called when a job's worker attaches; False: it was cancelled, tell the worker."""
    on_progress: Callable[[ProgressEvent], None]
    on_done: Callable[[Job, Outcome], None]
    on_engine_free: Callable[[], None]
    """Called once for every :meth:`run`, when the engine's task for it ended."""
    config: ZMQConfig
    serializer: TaskSerializer
    advertise_host: str
    _server: ZMQServer
    _client_curve: ClientCurve | None
    _jobs: dict[str, Job] = attrs.field(factory=dict)
    """Jobs handed to the engine that have not ended; whoever pops one reports its end."""
    _futures: dict[str, concurrent.futures.Future[Any]] = attrs.field(factory=dict)
    _peers: dict[str, tuple[Peer, str]] = attrs.field(factory=dict)
    """Attached (running) jobs: their worker's link and name."""
    _batches: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    """The execution ids that share one engine task with a job (for batched jobs)."""
    _routes: dict[str, Peer] = attrs.field(factory=dict)
    """Where a cancel reaches a job: its worker's link, known once it or a job before it in
    its batch attached."""
    _mean_run: float | None = attrs.field(default=None)
    _cancelled: set[str] = attrs.field(factory=set)
    _started: set[str] = attrs.field(factory=set)
    """Jobs the server counts as running (their worker attached)."""
    _timers: dict[str, threading.Timer] = attrs.field(factory=dict)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    @classmethod
    def launch(
        cls,
        *,
        backend: RemoteEngine,
        executor: TaskExecutor,
        on_started: Callable[[Job], bool],
        on_progress: Callable[[ProgressEvent], None],
        on_done: Callable[[Job, Outcome], None],
        on_engine_free: Callable[[], None],
        config: ZMQConfig,
        curve: ServerCurve | None,
        serializer: TaskSerializer,
        host: str | None,
        advertise_host: str | None,
    ) -> Inlet:
        """Bind the inlet (TCP, a free port pair on ``host``) and start serving it."""
        bind_host = host or config.bind_host
        inlet_curve, client_curve = None, None
        if curve is not None:
            keys = generate_curve_keypair()
            inlet_curve = ServerCurve(curve.keypair, allowed_client_keys={keys.public_key})
            client_curve = ClientCurve(keys, curve.keypair.public_key)
        handlers: dict[HandlerKey, Any] = {}
        server = ZMQServer(
            Endpoint.of(
                port=0,
                host=bind_host,
                transport_mode=TransportMode.TCP,
                config=config,
                curve=inlet_curve,
            ),
            handlers=handlers,
            role="inlet",
        )
        if advertise_host is None:
            wildcard = bind_host in ("0.0.0.0", "*", "::")
            advertise_host = socket.gethostname() if wildcard else bind_host
        inlet = cls(
            backend,
            executor,
            on_started,
            on_progress,
            on_done,
            on_engine_free,
            config,
            serializer,
            advertise_host,
            server,
            client_curve,
        )
        handlers[ControlMessageType.ATTACH] = inlet._on_attach
        handlers[StreamMessageType.PROGRESS] = inlet._on_progress
        handlers[StreamMessageType.COMPLETION] = inlet._on_completion
        handlers[ControlMessageType.SHUTDOWN] = _refuse_shutdown
        server.start()
        return inlet

    @property
    def address(self) -> str:
        """The URL remote contexts connect to (the inlet's control socket)."""
        port = self.config.control_port(self._server.bound_port)
        host = self.advertise_host
        if ":" in host and not host.startswith("["):  # an IPv6 literal
            host = f"[{host}]"
        return f"tcp://{host}:{port}"

    def run(self, jobs: list[Job]) -> None:
        """Hand ``jobs`` to the engine as one task (a batch when there are several)."""
        address = self.address
        contexts = [
            RemoteContext(
                job.execution_id,
                dict(job.labels),
                address,
                self.config,
                self._client_curve,
                self.serializer,
            )
            for job in jobs
        ]
        ids = tuple(job.execution_id for job in jobs)
        with self._lock:  # before the engine has them: a worker may attach at once
            for job in jobs:
                self._jobs[job.execution_id] = job
                if len(jobs) > 1:
                    self._batches[job.execution_id] = ids
        try:
            if len(jobs) == 1:
                future = self.backend.submit(run_remote, self.executor, jobs[0], contexts[0])
            else:
                future = self.backend.submit(run_remote_batch, self.executor, jobs, contexts)
        except BaseException:
            with self._lock:
                for execution_id in ids:
                    self._jobs.pop(execution_id, None)
                    self._batches.pop(execution_id, None)
            raise
        with self._lock:
            for execution_id in ids:
                if execution_id in self._jobs:  # else it ended already
                    self._futures[execution_id] = future
        future.add_done_callback(lambda done: self._engine_done(jobs, done))

    def cancel(self, execution_id: str) -> None:
        """Drop the job from the engine's queue, or tell its worker to stop."""
        with self._lock:
            future = self._futures.get(execution_id)
            if execution_id in self._jobs:
                self._cancelled.add(execution_id)
            # A batch's engine task is cancelled only when all its open jobs are.
            whole = all(
                other in self._cancelled
                for other in self._batches.get(execution_id, ())
                if other in self._jobs
            )
            route = self._routes.get(execution_id)
        if future is not None and whole:
            future.cancel()  # not started: the done callback reports it cancelled
        if route is not None:
            # Also after a successful future.cancel(): some engines (Dask) "cancel" a task
            # that already runs, and only its context can tell it to stop. A job further
            # down a batch hears it before it starts, and does not run.
            self._server.send(route, Cancel(request_id=0, execution_id=execution_id))

    def batch_size(self) -> int:
        """How many jobs to hand the engine as one task: 1 until tasks are known to be
        short, then enough for about ``_BATCH_SECONDS`` of work (at most ``_MAX_BATCH``)."""
        with self._lock:
            mean = self._mean_run
        if mean is None:
            return 1
        return max(1, min(_MAX_BATCH, int(_BATCH_SECONDS / max(mean, 1e-6))))

    def engine(self) -> dict[str, tuple[str, ...]]:
        """Each worker that runs one of our executions, and which."""
        running: dict[str, list[str]] = {}
        with self._lock:
            for execution_id, (_peer, worker) in self._peers.items():
                running.setdefault(worker, []).append(execution_id)
        return {worker: tuple(ids) for worker, ids in running.items()}

    def close(self, timeout: float | None = None) -> None:
        """Stop the inlet (the engine is not ours to stop)."""
        self._server.close(timeout)
        with self._lock:
            timers = list(self._timers.values())
            self._timers.clear()
        for timer in timers:
            timer.cancel()

    # --- how a job ends ---------------------------------------------------------------------

    def _start(self, job: Job) -> bool:
        if not self.on_started(job):
            return False
        with self._lock:
            if job.execution_id in self._jobs:
                self._started.add(job.execution_id)
        return True

    def _end(self, execution_id: str, outcome: Outcome) -> None:
        """Report ``outcome`` for the job, unless it ended already."""
        with self._lock:
            started = execution_id in self._started
            self._started.discard(execution_id)
            job = self._jobs.pop(execution_id, None)
            self._futures.pop(execution_id, None)
            self._peers.pop(execution_id, None)
            self._batches.pop(execution_id, None)
            self._routes.pop(execution_id, None)
            self._cancelled.discard(execution_id)
            timer = self._timers.pop(execution_id, None)
        if timer is not None:
            timer.cancel()
        if job is None:
            return
        if isinstance(outcome, Completed) and not started and not self.on_started(job):
            outcome = Cancelled()  # never seen running (its attach was lost): cancelled since
        self.on_done(job, outcome)

    def _engine_done(self, jobs: list[Job], future: concurrent.futures.Future[Any]) -> None:
        try:
            self._settle(jobs, future)
        finally:
            self.on_engine_free()

    def _settle(self, jobs: list[Job], future: concurrent.futures.Future[Any]) -> None:
        """End the jobs the engine's task ended without their worker's completion."""
        with self._lock:
            if not any(job.execution_id in self._jobs for job in jobs):
                return  # every worker's completion came first, as it usually does
        if future.cancelled():
            outcomes: list[Any] = [Cancelled()] * len(jobs)
        elif (error := future.exception()) is not None:
            # the engine failed it (a dead worker …)
            outcomes = [Failed.from_exception(error)] * len(jobs)
        else:
            result = future.result()
            outcomes = result if len(jobs) > 1 else [result]
            if not isinstance(outcomes, list) or len(outcomes) != len(jobs):
                # None: every worker's completion is on its way (anything else is not
                # ours; then too, wait for them, then report them lost).
                outcomes = [None] * len(jobs)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if outcome is None:  # the worker sent its completion; it is still on its way
                self._expect_completion(job)
            elif isinstance(outcome, (Completed, Failed, Cancelled)):
                self._end(job.execution_id, outcome)
            else:
                self._end(
                    job.execution_id, Failed("TypeError", f"the engine returned {outcome!r}", "")
                )

    def _expect_completion(self, job: Job) -> None:
        """Give the worker's completion ``config.request_timeout`` to arrive, then fail the
        job: the engine says it ended, so its outcome was lost on the way."""
        lost = Failed(
            "OutcomeLost",
            f"the engine finished {job.execution_id} but its outcome never reached the server",
            "",
        )
        timer = threading.Timer(self.config.request_timeout, self._end, (job.execution_id, lost))
        timer.daemon = True
        with self._lock:
            if job.execution_id not in self._jobs:
                return
            self._timers[job.execution_id] = timer
        timer.start()

    # --- what workers send ----------------------------------------------------------------

    def _on_attach(self, request: Attach, peer: Peer) -> Message | None:
        execution_id = request.execution_id
        stop: list[str] = []
        with self._lock:
            job = self._jobs.get(execution_id)
            if job is not None:
                self._peers[execution_id] = (peer, request.worker)
                for later in self._batches.get(execution_id, (execution_id,)):
                    if later in self._jobs:
                        self._routes[later] = peer  # the rest of its batch runs there too
                        if later != execution_id and later in self._cancelled:
                            stop.append(later)  # cancelled before the batch had a worker
            started = execution_id in self._started  # the engine retries it
            cancelled = execution_id in self._cancelled
        for later in stop:
            self._server.send(peer, Cancel(request_id=0, execution_id=later))
        if job is not None and not cancelled and (started or self._start(job)):
            return None  # no answer needed: a Cancel follows if it comes to that
        if job is None:
            logger.debug("inlet: %s attached to an ended execution", request.worker)
        return Cancel(request_id=request.request_id, execution_id=execution_id)

    def _on_progress(self, event: ProgressEvent, _peer: Peer) -> None:
        with self._lock:
            known = event.execution_id in self._jobs
        if known:
            self.on_progress(event)

    def _on_completion(self, message: Completion, peer: Peer) -> None:
        record = message.record
        with self._lock:
            known = record.execution_id in self._jobs
            attached = self._peers.get(record.execution_id)
        if not known or (attached is not None and attached[0] != peer):
            # Ended already (cancelled, or a retried task's second run), or not its worker.
            logger.debug("inlet: dropped a completion of %s", record.execution_id)
            return
        if record.status is ExecutionStatus.COMPLETE and record.started_at is not None:
            # Completed runs show what the work takes (cancelled ones are cut short).
            self._learn_run_time((record.finished_at or record.started_at) - record.started_at)
        outcome: Outcome
        if record.status is ExecutionStatus.COMPLETE:
            outcome = Completed(None, frames=message.result)
            if message.serializer != serializer_name(self.serializer):
                outcome = Failed(
                    "RemoteProtocolError",
                    f"the worker encoded the result with {message.serializer!r}",
                    "",
                )
        elif record.status is ExecutionStatus.CANCELLED:
            outcome = Cancelled()
        elif record.status is ExecutionStatus.FAILED:
            outcome = Failed(
                record.error_type or "", record.error_message or "", record.traceback or ""
            )
        else:
            outcome = Failed("RemoteProtocolError", f"a worker reported {record.status}", "")
        self._end(record.execution_id, outcome)

    def _learn_run_time(self, seconds: float) -> None:
        with self._lock:
            seconds = max(0.0, seconds)
            mean = self._mean_run
            self._mean_run = seconds if mean is None else mean + _RUN_WEIGHT * (seconds - mean)


def _refuse_shutdown(request: Shutdown, _peer: Peer) -> ErrorReply:
    # Workers (or anyone who reaches the port) must not stop the pool's inlet.
    return ErrorReply(
        request_id=request.request_id,
        code=ErrorCode.REFUSED,
        message="a pool's inlet is not shut down from outside; shut down its ExecutionServer",
    )
