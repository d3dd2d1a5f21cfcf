"""Tasks on another engine's workers: the context they carry, and the inlet it reports to.

When a :class:`~zmqruntime.execution.WorkerPool` hands jobs to an executor whose workers are
other processes or hosts (``ProcessPoolExecutor``, Dask's ``client.get_executor()``, loky,
``mpi4py.futures``), the executor function, the task and a :class:`RemoteContext` travel to
the worker by that engine's own means, and the outcome comes back the same way. Progress and
cancellation do not ride on the engine: the context opens a zmq connection of its own
(DEALER) to the control socket of an :class:`Inlet` the pool binds, and sends
:class:`~zmqruntime.messages.Attach` and progress events on it; the inlet answers with
:class:`~zmqruntime.messages.Cancel` when the execution is cancelled. Before the task's
outcome goes back through the engine, the context pings the inlet: one connection keeps
order, so every progress event has reached the server before the outcome can. When the
server has CURVE, the inlet uses the server's key pair and admits one key pair made for the
pool's contexts.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, cast, final

import attrs
import zmq

from zmqruntime import codec
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.errors import ErrorCode, ProtocolError
from zmqruntime.execution.context import ExecutionContext
from zmqruntime.execution.outcomes import Cancelled, Completed, Failed, Job, Outcome, run_job
from zmqruntime.messages import (
    Accepted,
    Attach,
    Cancel,
    ControlMessageType,
    ErrorReply,
    ExecutionStatus,
    Message,
    Ping,
    Pong,
    ProgressEvent,
    Shutdown,
    StreamMessageType,
)
from zmqruntime.protocols import Buffer, JSONValue, TaskExecutor
from zmqruntime.security import ClientCurve, ServerCurve, generate_curve_keypair
from zmqruntime.server import HandlerKey, Peer, ZMQServer
from zmqruntime.sockets import Socket, open_connected_socket, receive_ready, send_frames

__all__ = ["Inlet", "RemoteContext", "run_remote"]

logger = logging.getLogger(__name__)

_CONTEXT_LOCK: Final = threading.Lock()
_PROCESS_CONTEXT: dict[int, zmq.Context[zmq.Socket[bytes]]] = {}


def _process_context() -> zmq.Context[zmq.Socket[bytes]]:
    """One zmq context per worker process (a fresh one after a fork). It is never terminated:
    its sockets are the threads' links below, which live as long as the process."""
    with _CONTEXT_LOCK:
        pid = os.getpid()
        context = _PROCESS_CONTEXT.get(pid)
        if context is None:
            _PROCESS_CONTEXT.clear()
            context = _PROCESS_CONTEXT[pid] = zmq.Context()
        return context


_LINKS: Final = threading.local()
_MAX_LINKS: Final = 4
_LINK_RECONNECT_MAX: Final = 5.0


def _thread_link(url: str, config: ZMQConfig, curve: ClientCurve | None) -> Socket:
    """This thread's connection to the inlet at ``url``, opened by its first task and kept
    for the next ones, so a task costs no connection (nor a CURVE handshake) of its own.

    A thread keeps at most a few (one per inlet it served; the oldest is closed first);
    a link to an inlet that went away retries ever more rarely.
    """
    links: dict[tuple[int, str, bytes | None], Socket] | None = getattr(_LINKS, "links", None)
    if links is None:
        links = _LINKS.links = {}
    key = (os.getpid(), url, None if curve is None else curve.keypair.public_key)
    link = links.get(key)
    if link is None:
        context = _process_context()
        link = open_connected_socket(
            context, zmq.DEALER, url, config, curve, reconnect_max=_LINK_RECONNECT_MAX
        )
        links[key] = link
        while len(links) > _MAX_LINKS:
            links.pop(next(iter(links))).close()
    return link


def worker_name() -> str:
    """How this worker process is named in the server's status: the Dask worker's address
    when running under Dask, else ``host:pid``."""
    if "distributed" in sys.modules:
        try:
            from distributed import get_worker  # noqa: PLC0415 - only when Dask is in use

            return str(get_worker().address)
        except (ImportError, ValueError):
            pass
    return f"{socket.gethostname()}:{os.getpid()}"


@final
@attrs.define(eq=False)
class RemoteContext:
    """The :class:`~zmqruntime.TaskContext` a remote worker receives: picklable, it connects
    to the server's inlet when :meth:`open` is called in the worker (``run_remote`` does).

    Use it from the executor's thread (its sockets belong to that thread); a lock keeps a
    stray second thread from corrupting them.
    """

    execution_id: str
    labels: Mapping[str, str]
    control_url: str
    config: ZMQConfig = attrs.field(factory=ZMQConfig)
    curve: ClientCurve | None = None

    _local: ExecutionContext | None = attrs.field(default=None, init=False)
    _control: Socket | None = attrs.field(default=None, init=False)
    _reported: bool = attrs.field(default=False, init=False)
    _cancelled: bool = attrs.field(default=False, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Only the address, keys and the settings a connection needs travel (a few hundred
        # bytes fewer per task than the whole config); sockets are made where the task runs.
        settings = tuple(getattr(self.config, name) for name in _SHIPPED_SETTINGS)
        return (
            _revive,
            (self.execution_id, dict(self.labels), self.control_url, settings, self.curve),
        )

    def open(self) -> RemoteContext:
        """Connect to the inlet (or reuse this thread's link) and say which execution this
        worker runs. Idempotent."""
        with self._lock:
            if self._control is not None:
                return self
            self._control = _thread_link(self.control_url, self.config, self.curve)
            self._take_notices(self._control)  # what earlier tasks left unread
            self._cancelled = False
            self._local = ExecutionContext(
                self.execution_id, self.labels, report=self._send_progress
            )
            attach = Attach(request_id=0, execution_id=self.execution_id, worker=worker_name())
            send_frames(self._control, codec.encode(attach), zmq.NOBLOCK)
        return self

    def close(self) -> None:
        """Make sure reported progress has reached the server, then let go of the link
        (it stays open for the thread's next task).

        Waits up to ``config.request_timeout`` for the inlet's answer to a ping (only if any
        progress was reported); without one, the progress may still arrive after the outcome,
        and the server then drops it.
        """
        with self._lock:
            control, self._control = self._control, None
            if control is None:
                return
            if self._reported and not self._flush(control):
                logger.warning(
                    "%s: the inlet did not answer; late progress may be lost", self.execution_id
                )

    def _flush(self, control: Socket) -> bool:
        ping = Ping(request_id=next(_PINGS))
        send_frames(control, codec.encode(ping), zmq.NOBLOCK)
        deadline = time.monotonic() + self.config.request_timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not control.poll(max(1, round(remaining * 1000)), zmq.POLLIN):
                break
            try:
                reply = codec.decode(control.recv_multipart())
            except ProtocolError:
                continue
            if isinstance(reply, Pong) and reply.request_id == ping.request_id:
                return True
        return False

    @property
    def cancelled(self) -> bool:
        """True once the server asked to cancel this execution."""
        return self.wait_cancelled(0.0)

    def wait_cancelled(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a cancellation; True if one was requested."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._cancelled or self._control is None:
                    return self._cancelled
                control = self._control
                if self._take_notices(control):
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Waiting without the lock: progress from another thread is not held up.
            control.poll(max(1, round(remaining * 1000)), zmq.POLLIN)

    def raise_if_cancelled(self) -> None:
        """Raise :class:`~zmqruntime.TaskCancelled` if a cancellation was requested."""
        if self.cancelled:
            assert self._local is not None
            self._local.cancel_event.set()
            self._local.raise_if_cancelled()

    def report_progress(
        self, fraction: float | None = None, message: str = "", **fields: JSONValue
    ) -> None:
        """Send a progress event to the server (validated here, like on a local worker)."""
        if self._local is None:
            self.open()
        assert self._local is not None
        self._local.report_progress(fraction, message, **fields)

    def _send_progress(self, event: ProgressEvent) -> None:
        with self._lock:
            if self._control is None:
                return
            try:
                send_frames(self._control, codec.encode(event), zmq.NOBLOCK)
                self._reported = True
            except zmq.Again:
                logger.debug("progress %d of %s dropped: queue full", event.sequence, event)

    def _take_notices(self, control: Socket) -> bool:
        """Read what the inlet sent (lock held); True once a cancel is among it."""
        while (frames := receive_ready(control)) is not None:
            try:
                notice = codec.decode(
                    cast("list[Buffer]", frames), max_header_bytes=self.config.max_header_bytes
                )
            except ProtocolError as exc:
                logger.warning("dropped a malformed notice from the inlet: %s", exc)
                continue
            ours = getattr(notice, "execution_id", None) == self.execution_id
            stop = isinstance(notice, Cancel) or (
                isinstance(notice, Accepted) and notice.status is ExecutionStatus.CANCELLED
            )
            if ours and stop:
                self._cancelled = True
        return self._cancelled


_SHIPPED_SETTINGS: Final = (
    "request_timeout",
    "linger",
    "heartbeat_interval",
    "heartbeat_timeout",
    "max_header_bytes",
    "send_high_water_mark",
)
_PINGS: Final = itertools.count(1)


def _revive(
    execution_id: str,
    labels: dict[str, str],
    control_url: str,
    settings: tuple[Any, ...],
    curve: ClientCurve | None,
) -> RemoteContext:
    config = ZMQConfig(**dict(zip(_SHIPPED_SETTINGS, settings, strict=True)))
    return RemoteContext(execution_id, labels, control_url, config, curve)


def run_remote(executor: TaskExecutor, job: Job, context: RemoteContext) -> Outcome:
    """What the engine runs in its worker: the executor, with the context connected."""
    context.open()
    try:
        return run_job(executor, job, context, lambda: context.cancelled)
    finally:
        context.close()


@final
@attrs.define(eq=False)
class Inlet:
    """The server end of remote contexts: hears attaches and progress, sends cancels, and
    runs jobs on ``backend`` (the engine's executor, which it never shuts down)."""

    backend: concurrent.futures.Executor
    executor: TaskExecutor
    on_progress: Callable[[ProgressEvent], None]
    on_done: Callable[[Job, Outcome], None]
    config: ZMQConfig
    advertise_host: str
    _server: ZMQServer
    _client_curve: ClientCurve | None
    _jobs: set[str] = attrs.field(factory=set)
    _futures: dict[str, concurrent.futures.Future[Any]] = attrs.field(factory=dict)
    _peers: dict[str, tuple[Peer, str]] = attrs.field(factory=dict)
    _cancelled: set[str] = attrs.field(factory=set)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    @classmethod
    def launch(
        cls,
        *,
        backend: concurrent.futures.Executor,
        executor: TaskExecutor,
        on_progress: Callable[[ProgressEvent], None],
        on_done: Callable[[Job, Outcome], None],
        config: ZMQConfig,
        curve: ServerCurve | None,
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
            advertise_host,
            server,
            client_curve,
        )
        handlers[ControlMessageType.ATTACH] = inlet._on_attach
        handlers[StreamMessageType.PROGRESS] = inlet._on_progress
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
            job.execution_id, dict(job.labels), self.address, self.config, self._client_curve
        )
        with self._lock:  # before the engine has it: its worker may attach at once
            self._jobs.add(job.execution_id)
        try:
            future = self.backend.submit(run_remote, self.executor, job, context)
        except BaseException:
            with self._lock:
                self._jobs.discard(job.execution_id)
            raise
        with self._lock:
            self._futures[job.execution_id] = future
        future.add_done_callback(lambda done: self._finished(job, done))

    def cancel(self, execution_id: str) -> None:
        """Drop the job from the engine's queue, or tell its worker to stop."""
        with self._lock:
            future = self._futures.get(execution_id)
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

    def _finished(self, job: Job, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._jobs.discard(job.execution_id)
            self._futures.pop(job.execution_id, None)
            self._peers.pop(job.execution_id, None)
            self._cancelled.discard(job.execution_id)
        outcome: Outcome
        if future.cancelled():
            outcome = Cancelled()
        elif (error := future.exception()) is not None:
            outcome = Failed.from_exception(error)  # the engine failed it (a dead worker …)
        else:
            result = future.result()
            if isinstance(result, (Completed, Failed, Cancelled)):
                outcome = result
            else:
                outcome = Failed("TypeError", f"the engine returned {result!r}", "")
        self.on_done(job, outcome)

    def _on_attach(self, request: Attach, peer: Peer) -> Message | None:
        with self._lock:
            known = request.execution_id in self._jobs
            if known:
                self._peers[request.execution_id] = (peer, request.worker)
            cancelled = request.execution_id in self._cancelled
        if known and not cancelled:
            return None  # no answer needed: a Cancel follows if it comes to that
        if not known:
            # Normal for a task that ended before its attach arrived (the outcome travels
            # through the engine, the attach through here); else it ended here already.
            logger.debug("inlet: %s attached to an ended execution", request.worker)
        return Cancel(request_id=request.request_id, execution_id=request.execution_id)

    def _on_progress(self, event: ProgressEvent, _peer: Peer) -> None:
        with self._lock:
            known = event.execution_id in self._jobs
        if known:
            self.on_progress(event)


def _refuse_shutdown(request: Shutdown, _peer: Peer) -> ErrorReply:
    # Workers (or anyone who reaches the port) must not stop the pool's inlet.
    return ErrorReply(
        request_id=request.request_id,
        code=ErrorCode.REFUSED,
        message="a pool's inlet is not shut down from outside; shut down its ExecutionServer",
    )
