"""The server end of remote contexts: where a remote pool's workers attach and report.

A remote :class:`~zmqruntime.execution.WorkerPool` hands each job to its engine with a
:class:`~zmqruntime.execution.remote.RemoteContext` that connects back here. The inlet hears
each worker's :class:`~zmqruntime.messages.Attach`, its progress and its
:class:`~zmqruntime.messages.Completion`, and sends :class:`~zmqruntime.messages.Cancel` to
the worker running a cancelled execution. A job ends exactly once: by its worker's
completion (the usual way, with the result already encoded), or by the engine's future when
the engine cancelled or failed it, or carried the outcome itself.
"""

from __future__ import annotations

import concurrent.futures
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any, final

import attrs

from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.errors import ErrorCode
from zmqruntime.execution.outcomes import Cancelled, Completed, Failed, Job, Outcome
from zmqruntime.execution.remote import RemoteContext, run_remote
from zmqruntime.messages import (
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
from zmqruntime.protocols import RemoteEngine, TaskExecutor, TaskSerializer
from zmqruntime.security import ClientCurve, ServerCurve, generate_curve_keypair
from zmqruntime.serializers import serializer_name
from zmqruntime.server import HandlerKey, Peer, ZMQServer

__all__ = ["Inlet"]

logger = logging.getLogger(__name__)


@final
@attrs.define(eq=False)
class Inlet:
    """Hears remote workers' attaches, progress and completions, sends them cancels, and
    runs jobs on ``backend`` (the engine, which it never shuts down)."""

    backend: RemoteEngine
    executor: TaskExecutor
    on_progress: Callable[[ProgressEvent], None]
    on_done: Callable[[Job, Outcome], None]
    config: ZMQConfig
    serializer: TaskSerializer
    advertise_host: str
    _server: ZMQServer
    _client_curve: ClientCurve | None
    _jobs: dict[str, Job] = attrs.field(factory=dict)
    """Jobs handed to the engine that have not ended; whoever pops one reports its end."""
    _futures: dict[str, concurrent.futures.Future[Any]] = attrs.field(factory=dict)
    _peers: dict[str, tuple[Peer, str]] = attrs.field(factory=dict)
    _cancelled: set[str] = attrs.field(factory=set)
    _timers: dict[str, threading.Timer] = attrs.field(factory=dict)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    @classmethod
    def launch(
        cls,
        *,
        backend: RemoteEngine,
        executor: TaskExecutor,
        on_progress: Callable[[ProgressEvent], None],
        on_done: Callable[[Job, Outcome], None],
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
            handlers=handlers,
            port=0,
            host=bind_host,
            transport_mode=TransportMode.TCP,
            config=config,
            role="inlet",
            curve=inlet_curve,  # its data socket (PUB) stays unused
        )
        if advertise_host is None:
            wildcard = bind_host in ("0.0.0.0", "*", "::")
            advertise_host = socket.gethostname() if wildcard else bind_host
        inlet = cls(
            backend,
            executor,
            on_progress,
            on_done,
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
        return f"tcp://{self.advertise_host}:{port}"

    def run(self, job: Job) -> None:
        """Hand ``job`` to the engine."""
        context = RemoteContext(
            job.execution_id,
            dict(job.labels),
            self.address,
            self.config,
            self._client_curve,
            self.serializer,
        )
        with self._lock:  # before the engine has it: its worker may attach at once
            self._jobs[job.execution_id] = job
        try:
            future = self.backend.submit(run_remote, self.executor, job, context)
        except BaseException:
            with self._lock:
                self._jobs.pop(job.execution_id, None)
            raise
        with self._lock:
            if job.execution_id in self._jobs:  # else it ended already
                self._futures[job.execution_id] = future
        future.add_done_callback(lambda done: self._engine_done(job, done))

    def cancel(self, execution_id: str) -> None:
        """Drop the job from the engine's queue, or tell its worker to stop."""
        with self._lock:
            future = self._futures.get(execution_id)
            if execution_id in self._jobs:
                self._cancelled.add(execution_id)
            attached = self._peers.get(execution_id)
        if future is not None:
            future.cancel()  # not started: the done callback reports it cancelled
        if attached is not None:
            # Also after a successful future.cancel(): some engines (Dask) "cancel" a task
            # that already runs, and only its context can tell it to stop.
            self._server.send(attached[0], Cancel(request_id=0, execution_id=execution_id))

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

    def _end(self, execution_id: str, outcome: Outcome) -> None:
        """Report ``outcome`` for the job, unless it ended already."""
        with self._lock:
            job = self._jobs.pop(execution_id, None)
            self._futures.pop(execution_id, None)
            self._peers.pop(execution_id, None)
            self._cancelled.discard(execution_id)
            timer = self._timers.pop(execution_id, None)
        if timer is not None:
            timer.cancel()
        if job is not None:
            self.on_done(job, outcome)

    def _engine_done(self, job: Job, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            if job.execution_id not in self._jobs:
                return  # its worker's completion came first, as it usually does
        outcome: Outcome
        if future.cancelled():
            outcome = Cancelled()
        elif (error := future.exception()) is not None:
            outcome = Failed.from_exception(error)  # the engine failed it (a dead worker …)
        else:
            result = future.result()
            if result is None:  # the worker sent its completion; it is still on its way
                self._expect_completion(job)
                return
            if isinstance(result, (Completed, Failed, Cancelled)):
                outcome = result
            else:
                outcome = Failed("TypeError", f"the engine returned {result!r}", "")
        self._end(job.execution_id, outcome)

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
        with self._lock:
            known = request.execution_id in self._jobs
            if known:
                self._peers[request.execution_id] = (peer, request.worker)
            cancelled = request.execution_id in self._cancelled
        if known and not cancelled:
            return None  # no answer needed: a Cancel follows if it comes to that
        if not known:
            logger.debug("inlet: %s attached to an ended execution", request.worker)
        return Cancel(request_id=request.request_id, execution_id=request.execution_id)

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


def _refuse_shutdown(request: Shutdown, _peer: Peer) -> ErrorReply:
    # Workers (or anyone who reaches the port) must not stop the pool's inlet.
    return ErrorReply(
        request_id=request.request_id,
        code=ErrorCode.REFUSED,
        message="a pool's inlet is not shut down from outside; shut down its ExecutionServer",
    )
