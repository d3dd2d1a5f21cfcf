"""ExecutionServer: accepts tasks, runs them on a WorkerPool, reports progress and results.

The I/O thread never runs user code, and decodes only small task payloads (see
:meth:`~zmqruntime.execution.outcomes.EncodedTask.receive`); the worker decodes larger ones as
the job starts. Progress is published on the data socket (topic = execution id) only while
somebody subscribes to it. When an execution ends, its
:class:`~zmqruntime.core.messages.Completion` (record and serialized result) answers every
client that submitted it, as the reply to its ``Execute`` or pushed after an ``Accepted``, and
its final record (a Completion without the result) is published on its topic.

An execution belongs to the identity that submitted it (the ZAP user id of its connection):
joining it by resubmission, reading its record and cancelling it are refused to other
identities unless they are admins (see :class:`~zmqruntime.core.server.Peer`), and so is a
shutdown. Where nothing authenticates (IPC, ``insecure=True``) every peer is an admin.
"""

from __future__ import annotations

import functools
import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Any, Final, final

import attrs
import zmq

from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.lifecycle import (
    already_started,
    close_on_exit,
    start_on_enter,
    stop_on_signals,
)
from zmqruntime.core.messages import (
    Accepted,
    Cancel,
    ControlMessageType,
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
from zmqruntime.core.requests import RequestTable
from zmqruntime.core.serializers import SafeSerializer
from zmqruntime.core.server import Peer, ZMQServer
from zmqruntime.core.socket_options import Context
from zmqruntime.errors import ChannelClosed, ErrorCode
from zmqruntime.execution.admission import decode_task, refusal_of
from zmqruntime.execution.history import requeue
from zmqruntime.execution.listing import list_page, not_owner, progress_snapshot
from zmqruntime.execution.outcomes import (
    Cancelled,
    Completed,
    Failed,
    Job,
    Outcome,
    PoolListener,
)
from zmqruntime.execution.pool import WorkerPool
from zmqruntime.execution.process_stats import ProcessSampler
from zmqruntime.execution.progress import PROGRESS_SNAPSHOT, ProgressRegistry
from zmqruntime.execution.records import (
    ExecutionStore,
    RetentionPolicy,
    task_digest,
)
from zmqruntime.execution.results import ResultCache
from zmqruntime.execution.waiters import Waiters, error_reply, unknown_execution
from zmqruntime.protocols import Buffer, RecordStore, RequestHandler, TaskExecutor, TaskSerializer

__all__ = ["ExecutionServer"]

logger = logging.getLogger(__name__)

_WAKE_SECONDS: Final = 1.0
CAPABILITIES: Final = ("execute", "status", "cancel", "progress", "shutdown", "list")


@final
@attrs.define(eq=False)
class ExecutionServer:
    """Runs tasks submitted by :class:`~zmqruntime.execution.ExecutionClient`\\ s.

    ``executor`` is any :class:`~zmqruntime.TaskExecutor` (a plain ``def run(task, ctx)``);
    ``server`` is the :class:`~zmqruntime.ZMQServer` it answers on (:meth:`bind` builds one for an
    endpoint; read a free port back from :attr:`port_number`). ``pool`` defaults to one worker
    thread (strict FIFO). Submissions beyond ``queue_limit`` waiting tasks are refused.
    ``result_cache_bytes`` bounds the results kept for clients that resubmit a finished execution.
    With the safe serializer, a task's JSON (frame 0) is refused past ``max_task_json_bytes``,
    and fails as it starts past ``max_task_nodes`` values and keys (the depth limit is 100).
    """

    executor: TaskExecutor
    server: ZMQServer
    pool: WorkerPool = attrs.field(factory=WorkerPool.threads)
    retention: RetentionPolicy = attrs.field(factory=RetentionPolicy)
    queue_limit: int = 10_000
    result_cache_bytes: int = 64 << 20
    max_task_json_bytes: int = 8 << 20
    max_task_nodes: int = 250_000
    allow_insecure: bool = False
    """Accept ``PickleSerializer`` on an exposed TCP address without CURVE (not advised)."""
    progress: ProgressRegistry | None = None
    """Keeps the latest progress per key for clients that come late (``progress_snapshot``)."""

    _started: bool = attrs.field(default=False, init=False)
    _store: RecordStore = attrs.Factory(lambda self: ExecutionStore(self.retention), True)
    _waiters: Waiters = attrs.field(init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _draining: bool = attrs.field(default=False, init=False)
    _sampler: ProcessSampler = attrs.field(factory=ProcessSampler, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    @_waiters.default
    def _make_waiters(self) -> Waiters:
        cache = ResultCache(self.result_cache_bytes, int(self.retention.max_records))
        return Waiters(self.server, self._store, cache)

    @classmethod
    def bind(
        cls,
        endpoint: Endpoint,
        executor: TaskExecutor,
        *,
        serializer: TaskSerializer | None = None,
        requests: RequestTable | Mapping[str, RequestHandler] | None = None,
        context: Context | None = None,
        **options: Any,
    ) -> ExecutionServer:
        """An execution server with its own :class:`~zmqruntime.ZMQServer` at ``endpoint``
        (port 0 picks a free one). ``serializer`` (safe by default) carries tasks, results,
        and the payloads of the application's own ``requests`` (name → handler) and events;
        ``options`` are this class's other fields (``pool``, ``store``, ``retention`` …).
        """
        server = ZMQServer(
            endpoint,
            role="execution",
            capabilities=CAPABILITIES,
            data_socket_type=zmq.XPUB,  # it hears subscriptions: unwatched progress is free
            context=context,
            requests=requests or {},
            serializer=serializer or SafeSerializer(),
        )
        return cls(executor, server, **options)

    @property
    def serializer(self) -> TaskSerializer:
        """The server's serializer: tasks, results, request and event payloads."""
        return self.server.serializer

    def publish(self, topic: str, payload: Any) -> bool:
        """Publish an application event to the clients subscribed to ``topic`` (any thread);
        encoded only while someone subscribes, and returns whether anyone did."""
        try:
            return self.server.publish_event(topic, payload)
        except ChannelClosed:
            logger.debug("server closed; dropped an event on %r", topic)
            return False

    def start(self) -> ExecutionServer:
        """Bind, start the workers, and serve in a background thread. Returns the server."""
        if self._started:
            raise already_started("ExecutionServer")
        self._started = True
        endpoint = self.server.endpoint
        endpoint.check_serializer(
            self.serializer, allow_insecure=self.allow_insecure, side="ExecutionServer"
        )
        self.server.route(
            {
                ControlMessageType.EXECUTE: self._on_execute,
                ControlMessageType.STATUS: self._on_status,
                ControlMessageType.CANCEL: self._on_cancel,
                ControlMessageType.SHUTDOWN: self._on_shutdown,
                ControlMessageType.LIST: lambda r, peer: list_page(self._store, r, peer),
            }
        )
        if self.progress is not None:
            snapshot = functools.partial(progress_snapshot, self._store, self.progress)
            table = self.server.requests
            table.handlers = {**table.handlers, PROGRESS_SNAPSHOT: snapshot}
        self.server.bind()
        try:
            self.pool.start(
                self.executor,
                PoolListener(self._started_job, self._progress, self._done),
                endpoint=endpoint,  # a remote pool's inlet binds where this server does
                serializer=self.serializer,  # remote workers encode results with it
            )
            requeue(self._store, self.pool, self.serializer, self.max_task_nodes)
        except BaseException:
            self.server.close()
            self.pool.close(0)
            self._store.close()
            raise
        self.server.start()
        return self

    def serve_forever(self) -> None:
        """Serve until a shutdown request or SIGINT/SIGTERM, then close; blocks the caller.

        The first signal acts like :meth:`request_stop`; a second one stops at once. Starts
        the server first unless :meth:`start` already did.
        """
        if not self._started:
            self.start()
        with stop_on_signals(self._on_signal):
            try:
                while not self.server.wait_stopped(_WAKE_SECONDS):
                    pass  # signal handlers run in this thread between waits
            finally:
                self.close()

    def request_stop(self) -> None:
        """Stop like a forced shutdown request: cancel queued tasks, ask running ones to stop,
        tell every client how its executions ended, then stop. Returns at once (any thread).
        """
        self._drain(force=True)

    def _on_signal(self, signum: int) -> None:
        if self._draining:
            logger.warning("signal %d again: stopping now", signum)
            self.server.request_stop()
        else:
            logger.info("signal %d: cancelling what is left, then stopping", signum)
            self._drain(force=True)

    def close(self, timeout: float | None = None) -> None:
        """Cancel queued work, stop running work, push the last completions, close. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._draining = True
        limit = self.server.config.close_timeout if timeout is None else timeout
        try:
            self.pool.close(limit)
            self.server.close(limit)
        finally:
            self._store.close()  # a durable store's file is free again, whatever happened

    __enter__ = start_on_enter
    __exit__ = close_on_exit

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
        return ServerSummary(
            queued=counts[ExecutionStatus.QUEUED],
            running=counts[ExecutionStatus.RUNNING],
            counts={status.value: number for status, number in counts.items()},
            workers=pool.capacity,
            uptime=self.server.statistics().uptime,
            engine=pool.engine,
            processes=self._sampler.sample(pool.workers),
        )

    # --- control handlers (I/O thread) -----------------------------------------------------

    def _on_execute(self, request: Execute, peer: Peer) -> Message | None:
        rid = request.request_id
        if self._draining:
            return error_reply(rid, ErrorCode.REFUSED, "the server is shutting down")
        if (refusal := refusal_of(request, self.serializer)) is not None:
            return refusal
        execution_id = request.execution_id or uuid.uuid4().hex
        answer_to = None if request.confirm else rid
        digest = task_digest(request.payload)
        known = self._store.get(execution_id)
        if known is not None:
            refusal = not_owner(self._store, rid, execution_id, peer, "join")
            if refusal is not None:
                return refusal
        if known is not None and not self._store.same_task(execution_id, digest):
            why = f"execution {execution_id!r} was submitted with another task"
            return error_reply(rid, ErrorCode.REFUSED, f"{why}; give this task an id of its own")
        if known is not None:
            return self._waiters.join(rid, known, (peer, answer_to))
        if self.pool.queued >= self.queue_limit:
            return error_reply(
                rid,
                ErrorCode.REFUSED,
                f"the queue is full ({self.queue_limit} tasks waiting); retry later",
            )
        limits = self.max_task_json_bytes, self.max_task_nodes
        task, refusal = decode_task(request, self.serializer, *limits)
        if refusal is not None:
            return refusal
        record, _ = self._store.submit(
            execution_id, request.labels, digest, peer.user, request.payload
        )
        # The id may have named an execution whose record expired but whose result is still
        # kept: that result belongs to its submitter, never to this one.
        self._waiters.results.forget(execution_id)
        self._waiters.expect(execution_id, (peer, answer_to))
        try:
            self.pool.submit(Job(execution_id, task, record.labels))
        except ChannelClosed:  # closing between the checks above and here
            self._store.cancel(execution_id)
            self._waiters.forget(execution_id)
            return error_reply(rid, ErrorCode.REFUSED, "the server is shutting down")
        if answer_to is not None:
            return None  # the Completion answers it
        return Accepted(request_id=rid, execution_id=execution_id, status=record.status)

    def _on_status(self, request: StatusRequest, peer: Peer) -> Message:
        rid, execution_id = request.request_id, request.execution_id
        if execution_id is None:
            return SummaryReply(request_id=rid, summary=self.summary())
        record = self._store.get(execution_id)
        if record is None:
            return unknown_execution(rid, execution_id)
        return not_owner(self._store, rid, execution_id, peer, "read") or RecordReply(
            request_id=rid, record=record
        )

    def _on_cancel(self, request: Cancel, peer: Peer) -> Message:
        record = self._store.get(request.execution_id)
        if record is None:
            return unknown_execution(request.request_id, request.execution_id)
        rid = request.request_id
        if refusal := not_owner(self._store, rid, request.execution_id, peer, "cancel"):
            return refusal
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
        self.server.begin_draining()  # pongs say so: a manager must not attach to it now
        if force:
            for execution_id in self._store.active_ids():
                self.pool.cancel(execution_id)
        self._stop_if_idle()

    def _stop_if_idle(self) -> None:
        if self._draining and not self._store.active_ids():
            self.server.request_stop()

    # --- pool listener (worker threads) ----------------------------------------------------

    def _started_job(self, job: Job) -> bool:
        return self._store.start(job.execution_id) is not None

    def _progress(self, event: ProgressEvent) -> None:
        if self.progress is not None:
            self.progress.add(event)
        topic = event.execution_id.encode()
        if self._store.progress(event) and self.server.has_subscribers(topic):
            self._waiters.publish(event, topic)

    def _done(self, job: Job, outcome: Outcome) -> None:
        frames: list[Buffer] | None = None
        if isinstance(outcome, Completed) and outcome.frames is not None:
            frames = list(outcome.frames)  # a remote worker encoded it with our serializer
        elif isinstance(outcome, Completed):
            try:
                frames = self.serializer.dumps(outcome.result)
            except Exception as exc:
                outcome = Failed.from_exception(exc)
        execution_id = job.execution_id
        if isinstance(outcome, Completed):
            record = self._store.complete(execution_id)
        elif isinstance(outcome, Cancelled):
            record = self._store.cancel(execution_id)
        else:
            error = outcome.error_type, outcome.error_message, outcome.traceback
            record = self._store.fail(execution_id, *error)
        if record is None:
            return  # already terminal: nothing changes, nothing is sent twice
        self._waiters.finish(record, frames)
        self._stop_if_idle()
