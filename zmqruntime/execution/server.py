"""ExecutionServer: accepts tasks, runs them on a WorkerPool, reports progress and results.

Composed from tier-1 pieces: a :class:`~zmqruntime.ZMQServer` with handlers for execute,
status, cancel and shutdown; an :class:`~zmqruntime.execution.records.ExecutionStore` for the
lifecycle; a :class:`~zmqruntime.execution.WorkerPool` that runs the application's
:class:`~zmqruntime.TaskExecutor`. The I/O thread never runs user code.

Progress is published on the data socket (XPUB, topic = execution id) — only while somebody
subscribes to it, so unobserved progress costs no encoding. When an execution ends, its
:class:`~zmqruntime.core.messages.Completion` — record plus serialized result — answers every
client that submitted it (as the reply to its ``Execute``, or pushed after an ``Accepted``
when the client asked to be confirmed at once), and its final record (a Completion without
the result) is published on its topic, so progress observers see it end.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import uuid
from types import FrameType, TracebackType
from typing import Any, Final, final

import attrs
import zmq

from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.messages import (
    Accepted,
    Cancel,
    Completion,
    ControlMessageType,
    ErrorReply,
    Execute,
    ExecutionRecord,
    ExecutionStatus,
    Message,
    ProgressEvent,
    RecordReply,
    ServerSummary,
    Shutdown,
    ShutdownReply,
    StatusRequest,
    SummaryReply,
)
from zmqruntime.core.security import ServerCurve, check_pickle_exposure
from zmqruntime.core.serializers import SafeSerializer, serializer_name
from zmqruntime.core.server import Peer, ZMQServer
from zmqruntime.core.transport import get_default_transport_mode
from zmqruntime.errors import ChannelClosed, ErrorCode, ProtocolError
from zmqruntime.execution.outcomes import Cancelled, Completed, Failed, Job, Outcome, PoolListener
from zmqruntime.execution.pool import WorkerPool
from zmqruntime.execution.records import ExecutionStore, RetentionPolicy
from zmqruntime.protocols import Buffer, TaskExecutor, TaskSerializer

__all__ = ["ExecutionServer"]

logger = logging.getLogger(__name__)

MAX_EXECUTION_ID_LENGTH: Final = 256
_WAKE_SECONDS: Final = 1.0
CAPABILITIES: Final = ("execute", "status", "cancel", "progress", "shutdown")
_RESULT_ENTRY_OVERHEAD: Final = 256
"""Bytes a cached result costs beyond its frames (id, tuple, list), charged to the budget."""


@final
@attrs.define(eq=False)
class _ResultCache:
    """The serialized results of recently finished executions, within a byte budget.

    Lets a client that resubmits a finished execution (a retry after a timeout) still get
    its result. Each entry is charged its bookkeeping as well as its frames, and at most
    ``max_entries`` are kept (the retention's record count: the result of an execution whose
    record has expired is never asked for), so millions of tiny results cannot pile up.
    """

    budget: int
    max_entries: int = 10_000
    _entries: collections.OrderedDict[str, tuple[list[Buffer], int]] = attrs.field(
        factory=collections.OrderedDict
    )
    _size: int = 0
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def put(self, execution_id: str, frames: list[Buffer]) -> None:
        size = _RESULT_ENTRY_OVERHEAD + sum(memoryview(frame).nbytes for frame in frames)
        if size > self.budget:
            return
        with self._lock:
            replaced = self._entries.pop(execution_id, None)
            if replaced is not None:
                self._size -= replaced[1]
            self._entries[execution_id] = (frames, size)
            self._size += size
            while self._size > self.budget or len(self._entries) > self.max_entries:
                _key, (_frames, dropped) = self._entries.popitem(last=False)
                self._size -= dropped

    def get(self, execution_id: str) -> list[Buffer] | None:
        with self._lock:
            entry = self._entries.get(execution_id)
            return None if entry is None else entry[0]


@final
@attrs.define(eq=False)
class ExecutionServer:
    """Runs tasks submitted by :class:`~zmqruntime.execution.ExecutionClient`\\ s.

    ``executor`` is any :class:`~zmqruntime.TaskExecutor` (a plain ``def run(task, ctx)``).
    ``port=None`` uses ``config.default_port``; ``port=0`` picks a free one (see
    :attr:`port_number`). ``pool`` defaults to one worker thread (strict FIFO). Submissions
    beyond ``queue_limit`` waiting tasks are refused. ``result_cache_bytes`` bounds the
    results kept for clients that resubmit a finished execution.
    """

    executor: TaskExecutor
    port: int | None = None
    host: str | None = None
    transport_mode: TransportMode | None = None
    config: ZMQConfig = attrs.field(factory=ZMQConfig)
    serializer: TaskSerializer = attrs.field(factory=SafeSerializer)
    pool: WorkerPool = attrs.field(factory=WorkerPool.threads)
    retention: RetentionPolicy = attrs.field(factory=RetentionPolicy)
    queue_limit: int = 10_000
    result_cache_bytes: int = 64 << 20
    curve: ServerCurve | None = None
    allow_insecure: bool = False
    """Accept ``PickleSerializer`` on an exposed TCP address without CURVE (not advised)."""

    _server: ZMQServer | None = attrs.field(default=None, init=False)
    _store: ExecutionStore = attrs.field(init=False)
    _results: _ResultCache = attrs.field(init=False)
    # Who hears how an execution ends: (peer, the request id to answer, or None to push).
    _waiters: dict[str, list[tuple[Peer, int | None]]] = attrs.field(factory=dict, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _draining: bool = attrs.field(default=False, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    @_store.default
    def _make_store(self) -> ExecutionStore:
        return ExecutionStore(self.retention)

    @_results.default
    def _make_results(self) -> _ResultCache:
        return _ResultCache(self.result_cache_bytes, int(self.retention.max_records))

    # --- life cycle ------------------------------------------------------------------------

    def _build(self) -> ZMQServer:
        if self._server is not None:
            raise RuntimeError("this ExecutionServer was already started")
        check_pickle_exposure(
            serializer=self.serializer,
            host=self.host or self.config.bind_host,
            mode=self.transport_mode or get_default_transport_mode(),
            curve=self.curve,
            allow_insecure=self.allow_insecure,
            side="ExecutionServer",
        )
        self._server = ZMQServer(
            handlers={
                ControlMessageType.EXECUTE: self._on_execute,
                ControlMessageType.STATUS: self._on_status,
                ControlMessageType.CANCEL: self._on_cancel,
                ControlMessageType.SHUTDOWN: self._on_shutdown,
            },
            port=self.port,
            host=self.host,
            transport_mode=self.transport_mode,
            config=self.config,
            role="execution",
            capabilities=CAPABILITIES,
            data_socket_type=zmq.XPUB,
            curve=self.curve,
        )
        self._server.bind()
        try:
            self.pool.start(
                self.executor,
                PoolListener(started=self._started, progress=self._progress, finished=self._done),
                # a remote pool's inlet binds where this server does, with its keys
                config=attrs.evolve(self.config, bind_host=self.host or self.config.bind_host),
                curve=self.curve,
                serializer=self.serializer,  # remote workers encode results with it
            )
        except BaseException:
            self._server.close()
            raise
        return self._server

    def start(self) -> ExecutionServer:
        """Bind, start the workers, and serve in a background thread. Returns the server."""
        self._build().start()
        return self

    def serve_forever(self) -> None:
        """Serve until a shutdown request or SIGINT/SIGTERM, then close; blocks the caller.

        The first signal works like a forced shutdown request: queued tasks are cancelled,
        running ones are asked to stop, and every client hears how its executions ended
        before the server stops. A second signal stops at once.
        """
        server = self._build().start()
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            while not server.wait_stopped(_WAKE_SECONDS):
                pass  # signal handlers run in this thread between waits
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.close()

    def request_stop(self) -> None:
        """Stop like a forced shutdown request: cancel what is left, tell every client, stop.

        Returns at once (safe from other threads, e.g. a lifeline watcher).
        """
        self._drain(force=True)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._draining:
            logger.warning("signal %d again: stopping now", signum)
            self.server.request_stop()
            return
        logger.info("signal %d: cancelling what is left, then stopping", signum)
        self._drain(force=True)

    def close(self, timeout: float | None = None) -> None:
        """Cancel queued work, stop running work, push the last completions, close. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._draining = True
        limit = self.config.close_timeout if timeout is None else timeout
        self.pool.close(limit)
        if self._server is not None:
            self._server.close(limit)

    def __enter__(self) -> ExecutionServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def server(self) -> ZMQServer:
        """The composed control/data server (ports, statistics)."""
        if self._server is None:
            raise ChannelClosed("the ExecutionServer is not started; call start() first")
        return self._server

    @property
    def port_number(self) -> int:
        """The data port the server is bound to (control port = this + offset)."""
        return self.server.bound_port

    def record(self, execution_id: str) -> ExecutionRecord | None:
        """The current record of an execution (None if unknown or expired)."""
        return self._store.get(execution_id)

    def summary(self) -> ServerSummary:
        """Queue length, running tasks, counts per status, workers and uptime."""
        counts = self._store.counts()
        pool = self.pool.statistics()
        uptime = self._server.statistics().uptime if self._server is not None else 0.0
        return ServerSummary(
            queued=counts[ExecutionStatus.QUEUED],
            running=counts[ExecutionStatus.RUNNING],
            counts={status.value: number for status, number in counts.items()},
            workers=pool.capacity,
            uptime=uptime,
            engine=pool.engine,
        )

    # --- control handlers (I/O thread) -----------------------------------------------------

    def _on_execute(self, request: Execute, peer: Peer) -> Message | None:
        rid = request.request_id
        if self._draining:
            return _error(rid, ErrorCode.REFUSED, "the server is shutting down")
        ours = serializer_name(self.serializer)
        if request.serializer != ours:
            return _error(
                rid,
                ErrorCode.REFUSED,
                f"the task was serialized with {request.serializer!r} but this server uses "
                f"{ours!r}; give client and server the same serializer",
            )
        execution_id = request.execution_id or uuid.uuid4().hex
        if not 0 < len(execution_id) <= MAX_EXECUTION_ID_LENGTH:
            return _error(rid, ErrorCode.MALFORMED, "execution_id must be 1..256 characters")
        answer_to = None if request.confirm else rid
        known = self._store.get(execution_id)
        if known is not None:
            return self._duplicate(rid, known, (peer, answer_to))
        if self.pool.queued >= self.queue_limit:
            return _error(
                rid,
                ErrorCode.REFUSED,
                f"the queue is full ({self.queue_limit} tasks waiting); retry later",
            )
        try:
            task = self.serializer.loads(request.payload)
        except (ProtocolError, ValueError, TypeError) as exc:
            return _error(rid, ErrorCode.MALFORMED, f"the task payload cannot be decoded: {exc}")
        record, _created = self._store.submit(execution_id, request.labels)
        with self._lock:
            self._waiters[execution_id] = [(peer, answer_to)]
        try:
            self.pool.submit(Job(execution_id, task, record.labels))
        except ChannelClosed:  # closing between the checks above and here
            self._store.cancel(execution_id)
            with self._lock:
                self._waiters.pop(execution_id, None)
            return _error(rid, ErrorCode.REFUSED, "the server is shutting down")
        if answer_to is not None:
            return None  # the Completion answers it
        return Accepted(request_id=rid, execution_id=execution_id, status=record.status)

    def _duplicate(
        self, request_id: int, record: ExecutionRecord, waiter: tuple[Peer, int | None]
    ) -> Message | None:
        """A resubmitted id: never run twice; the new submitter hears the outcome too."""
        with self._lock:
            waiting = self._waiters.get(record.execution_id)
            if waiting is not None and waiter not in waiting:
                waiting.append(waiter)  # it hears the outcome with the others
        if waiting is None:
            # Its waiters were already served, so it has ended — even if ``record`` was read
            # just before a worker finished it: read it again, or this peer would never hear.
            current = self._store.get(record.execution_id)
            if current is None:
                return _unknown(request_id, record.execution_id)
            record = current
            completion = self._completion(record, self._results.get(record.execution_id))
            if waiter[1] is not None:
                return attrs.evolve(completion, request_id=waiter[1])
            self._send(waiter[0], completion)
        if waiter[1] is not None:
            return None
        return Accepted(
            request_id=request_id,
            execution_id=record.execution_id,
            status=record.status,
            duplicate=True,
        )

    def _on_status(self, request: StatusRequest, _peer: Peer) -> Message:
        if request.execution_id is None:
            return SummaryReply(request_id=request.request_id, summary=self.summary())
        record = self._store.get(request.execution_id)
        if record is None:
            return _unknown(request.request_id, request.execution_id)
        return RecordReply(request_id=request.request_id, record=record)

    def _on_cancel(self, request: Cancel, _peer: Peer) -> Message:
        record = self._store.get(request.execution_id)
        if record is None:
            return _unknown(request.request_id, request.execution_id)
        if not record.status.is_terminal:
            self.pool.cancel(request.execution_id)
            record = self._store.get(request.execution_id) or record
        return RecordReply(request_id=request.request_id, record=record)

    def _on_shutdown(self, request: Shutdown, _peer: Peer) -> Message:
        logger.info("shutdown requested (%s)", "force" if request.force else "graceful")
        self._drain(force=request.force)
        return ShutdownReply(request_id=request.request_id)

    def _drain(self, *, force: bool) -> None:
        """Refuse new work; with ``force`` cancel what is left; stop once nothing runs."""
        with self._lock:
            self._draining = True
        if force:
            for execution_id in self._store.active_ids():
                self.pool.cancel(execution_id)
        self._stop_if_idle()

    def _stop_if_idle(self) -> None:
        if self._draining and not self._store.active_ids() and self._server is not None:
            self._server.request_stop()

    # --- pool listener (worker threads) ----------------------------------------------------

    def _started(self, job: Job) -> bool:
        return self._store.start(job.execution_id) is not None

    def _progress(self, event: ProgressEvent) -> None:
        if self._store.progress(event) and self._watched(event.execution_id):
            self._publish(event, event.execution_id)

    def _done(self, job: Job, outcome: Outcome) -> None:
        frames: list[Buffer] | None = None
        if isinstance(outcome, Completed) and outcome.frames is not None:
            frames = list(outcome.frames)  # a remote worker encoded it with our serializer
        elif isinstance(outcome, Completed):
            try:
                frames = self.serializer.dumps(outcome.result)
            except Exception as exc:
                outcome = Failed.from_exception(exc)
        record = self._finish(job.execution_id, outcome)
        if record is None:
            return  # already terminal: nothing changes, nothing is sent twice
        if frames is not None:
            self._results.put(job.execution_id, frames)
        completion = self._completion(record, frames)
        with self._lock:
            waiters = self._waiters.pop(job.execution_id, [])
        for peer, request_id in waiters:
            self._send(peer, completion, request_id)
        if self._watched(record.execution_id):
            self._publish(
                Completion(record=record, serializer=completion.serializer), record.execution_id
            )
        self._stop_if_idle()

    def _finish(self, execution_id: str, outcome: Outcome) -> ExecutionRecord | None:
        if isinstance(outcome, Completed):
            return self._store.complete(execution_id)
        if isinstance(outcome, Cancelled):
            return self._store.cancel(execution_id)
        return self._store.fail(
            execution_id, outcome.error_type, outcome.error_message, outcome.traceback
        )

    def _completion(self, record: ExecutionRecord, frames: list[Buffer] | None) -> Completion:
        return Completion(
            record=record,
            serializer=serializer_name(self.serializer),
            result=tuple(frames or ()),
        )

    def _watched(self, execution_id: str) -> bool:
        server = self._server
        return server is not None and server.has_subscribers(execution_id)

    def _send(self, peer: Peer, message: Message, request_id: int | None = None) -> None:
        try:
            self.server.send(peer, message, request_id=request_id)
        except ChannelClosed:
            logger.warning("server closed before a %s could be sent", message.TYPE.value)

    def _publish(self, message: Message, topic: str) -> None:
        try:
            self.server.publish(message, topic)
        except ChannelClosed:
            logger.debug("server closed; dropped a %s event", message.TYPE.value)


def _error(request_id: int, code: ErrorCode, text: str) -> ErrorReply:
    return ErrorReply(request_id=request_id, code=code, message=text)


def _unknown(request_id: int, execution_id: str) -> ErrorReply:
    return _error(
        request_id,
        ErrorCode.NOT_FOUND,
        f"no execution {execution_id!r} on this server (never submitted, or expired)",
    )
