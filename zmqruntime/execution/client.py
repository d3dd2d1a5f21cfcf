"""ExecutionClient: submit tasks, follow their progress, cancel them, get their results.

Each submission returns an :class:`Execution` whose ``future`` is resolved by the completion
the server pushes to this client (no polling), or failed with :class:`~zmqruntime.ServerLost`
the moment the connection breaks. Safe to use from several threads.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, final

import attrs

from zmqruntime.core.client import ZMQClient
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.lifecycle import close_on_exit, connect_on_enter
from zmqruntime.core.messages import (
    Accepted,
    Cancel,
    Completion,
    Execute,
    ExecutionRecord,
    ExecutionStatus,
    ListRequest,
    Message,
    Pong,
    ProgressEvent,
    RecordList,
    RecordReply,
    ServerSummary,
    Shutdown,
    StatusRequest,
    SummaryReply,
)
from zmqruntime.core.serializers import SafeSerializer, serializer_name
from zmqruntime.core.socket_options import Context
from zmqruntime.errors import (
    ChannelClosed,
    ProtocolError,
    RemoteProtocolError,
    ServerLost,
    TaskCancelled,
    TaskFailed,
)
from zmqruntime.execution.handles import Execution, ProgressCallback, Subscribers, Subscription
from zmqruntime.execution.progress import PROGRESS_SNAPSHOT
from zmqruntime.protocols import TaskSerializer

__all__ = ["Execution", "ExecutionClient", "ProgressCallback", "Subscription"]

logger = logging.getLogger(__name__)


@final
@attrs.define(eq=False)
class ExecutionClient:
    """Talks to one :class:`~zmqruntime.execution.ExecutionServer` through ``client``
    (:meth:`to` builds one for an endpoint), whose serializer must be the server's. It
    connects on first use, or with ``with`` / :meth:`connect`.
    """

    client: ZMQClient
    allow_insecure: bool = False
    """Accept ``PickleSerializer`` to a non-loopback TCP host without CURVE (not advised)."""

    _waiting: dict[str, Execution] = attrs.field(factory=dict, init=False)
    _subscribers: Subscribers = attrs.field(init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    @_subscribers.default
    def _make_subscribers(self) -> Subscribers:
        return Subscribers(self.client)

    @classmethod
    def to(
        cls,
        endpoint: Endpoint,
        *,
        serializer: TaskSerializer | None = None,
        context: Context | None = None,
        **options: Any,
    ) -> ExecutionClient:
        """A client with its own :class:`~zmqruntime.ZMQClient` for the server at
        ``endpoint``; ``serializer`` (safe by default) must be the server's;
        ``options`` are this class's other fields."""
        serializer = serializer or SafeSerializer()
        client = ZMQClient(
            endpoint, context=context, name="execution-client", serializer=serializer
        )
        return cls(client, **options)

    def __attrs_post_init__(self) -> None:
        self.client.endpoint.check_serializer(
            self.serializer, allow_insecure=self.allow_insecure, side="ExecutionClient"
        )
        # Before anything can connect it: replies, pushes and progress reach this client.
        self.client.listen(
            on_message=self._finish, on_data=self._subscribers.deliver, on_disconnect=self._on_lost
        )

    @property
    def serializer(self) -> TaskSerializer:
        """The client's serializer (the server's must be the same)."""
        return self.client.serializer

    def connect(self) -> ExecutionClient:
        """Open the sockets (idempotent); returns the client."""
        self.client.connect()
        return self

    def close(self) -> None:
        """Close the connection; executions still waiting fail with :class:`ChannelClosed`
        (:class:`ServerLost` says the server went, which it did not)."""
        self.client.close()
        self._fail_all(ChannelClosed("the client was closed before the execution finished"))

    __enter__ = connect_on_enter
    __exit__ = close_on_exit

    def submit(
        self,
        task: Any,
        *,
        labels: Mapping[str, str] | None = None,
        execution_id: str | None = None,
        timeout: float | None = None,
        confirm: bool = False,
    ) -> Execution:
        """Send ``task`` to the server and return its :class:`Execution` at once.

        If the server refuses (queue full, shutting down …) the execution's future fails with
        that :class:`RemoteError`; if it has not ended within ``timeout`` seconds
        (``config.result_timeout``, an hour by default), with :class:`ZMQTimeoutError`. With
        ``confirm=True`` the server also replies once it has queued the task
        (``execution.accepted`` resolves then, and ``timeout`` bounds only that reply). A
        client-chosen ``execution_id`` makes resubmission idempotent: the server never runs an
        id twice, and a retry gets the first run's outcome. Raises ``TypeError`` for a task the
        serializer cannot carry or labels that are not strings.
        """
        labels = dict(labels or {})
        for key, value in labels.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"labels must map str to str, got {key!r}: {value!r}")
        execution_id = os.urandom(16).hex() if execution_id is None else execution_id
        if not isinstance(execution_id, str) or not execution_id:
            raise TypeError("execution_id must be a non-empty str")
        payload = tuple(self.serializer.dumps(task))
        limit = self.client.config.result_timeout
        with self._lock:
            execution = self._waiting.get(execution_id)
            created = execution is None
            if execution is None:
                future: concurrent.futures.Future[Any] = concurrent.futures.Future()
                future.set_running_or_notify_cancel()  # only the server can cancel it
                execution = Execution(execution_id, future, limit, self.cancel, self.record)
                self._waiting[execution_id] = execution
        request = Execute(
            request_id=0,
            execution_id=execution_id,
            labels=labels,
            serializer=serializer_name(self.serializer),
            confirm=confirm,
            payload=payload,
        )
        # The reply (the outcome, or a confirmation a burst of submissions may delay) can take
        # as long as a result: a lost server fails it at once anyway. It is handled on the I/O
        # thread as it comes: no future of its own, nothing else woken.
        on_reply = functools.partial(self._on_reply, execution, created)
        try:
            self.client.request_then(request, on_reply, limit if timeout is None else timeout)
        except BaseException:
            if created:
                with self._lock:
                    self._waiting.pop(execution_id, None)
            raise
        return execution

    def _on_reply(
        self, execution: Execution, created: bool, reply: Message | BaseException
    ) -> None:
        if isinstance(reply, (Accepted, Completion)):
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                execution.accepted.set_result(reply)
            if isinstance(reply, Completion):
                self._finish(reply)
            return
        error = reply
        if not isinstance(error, BaseException):
            error = RemoteProtocolError(f"server answered execute with {type(reply).__name__}")
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            execution.accepted.set_exception(error)
        if not created:
            return  # a retry failed; the first submission may still finish
        with self._lock:
            if self._waiting.get(execution.execution_id) is execution:
                del self._waiting[execution.execution_id]
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            execution.future.set_exception(error)

    def record(self, execution_id: str, *, timeout: float | None = None) -> ExecutionRecord:
        """The server's record of one execution (``RemoteError`` NOT_FOUND if unknown)."""
        reply = self.client.request(StatusRequest(request_id=0, execution_id=execution_id), timeout)
        if not isinstance(reply, RecordReply):
            raise RemoteProtocolError(f"server answered status with {type(reply).__name__}")
        return reply.record

    def list(
        self,
        *,
        status: Iterable[ExecutionStatus] = (),
        labels: Mapping[str, str] | None = None,
        prefix: str = "",
        after: str | None = None,
        limit: int = 100,
        timeout: float | None = None,
    ) -> RecordList:
        """One page of the records the server holds, oldest submission first: with one of the
        statuses ``status`` (any when empty), all of ``labels``, an id starting with
        ``prefix``, submitted after the execution ``after`` (the ``next_after`` of the
        previous page); at most ``limit`` (1 to 1,000). Only this client's executions unless
        it is an admin. ``RemoteError`` NOT_FOUND when ``after`` expired meanwhile."""
        query = ListRequest.query(
            status=status, labels=labels, prefix=prefix, after=after, limit=limit
        )
        reply = self.client.request(query, timeout)
        if not isinstance(reply, RecordList):
            raise RemoteProtocolError(f"server answered list with {type(reply).__name__}")
        return reply

    def progress_snapshot(
        self, execution_id: str, *, timeout: float | None = None
    ) -> builtins.list[ProgressEvent]:  # ``list`` is a method here
        """The latest progress event per key (``well``, ``step``, … as the server's
        ``ProgressRegistry`` is keyed) of one execution, for a window opened late; raises
        ``RemoteError`` if the server keeps none (an unknown request) or the execution is
        another client's."""
        events = self.request(PROGRESS_SNAPSHOT, {"execution_id": execution_id}, timeout=timeout)
        try:
            return [ProgressEvent(**event) for event in events]
        except TypeError as exc:
            why = f"the server's progress snapshot is malformed: {exc}"
            raise RemoteProtocolError(why) from exc

    def summary(self, *, timeout: float | None = None) -> ServerSummary:
        """The server's summary: queued, running, counts per status, workers, uptime."""
        reply = self.client.request(StatusRequest(request_id=0), timeout)
        if not isinstance(reply, SummaryReply):
            raise RemoteProtocolError(f"server answered status with {type(reply).__name__}")
        return reply.summary

    def status(
        self, execution_id: str | None = None, *, timeout: float | None = None
    ) -> ExecutionRecord | ServerSummary:
        """One execution's record, or without an id the server summary."""
        if execution_id is None:
            return self.summary(timeout=timeout)
        return self.record(execution_id, timeout=timeout)

    def cancel(self, execution_id: str, *, timeout: float | None = None) -> bool:
        """Cancel an execution: True if it was cancelled or is being stopped, False if it
        had already ended. A queued task is dropped; a running one sees
        ``context.cancelled`` (or its worker process is terminated)."""
        reply = self.client.request(Cancel(request_id=0, execution_id=execution_id), timeout)
        if not isinstance(reply, RecordReply):
            raise RemoteProtocolError(f"server answered cancel with {type(reply).__name__}")
        # Still queued after the cancel: it was handed to a worker but had not started, and
        # the pool will drop it there. Only an execution that had ended says False.
        status = reply.record.status
        return status is ExecutionStatus.CANCELLED or not status.is_terminal

    def wait(
        self,
        executions: Iterable[Execution],
        timeout: float | None = None,
        return_when: str = concurrent.futures.ALL_COMPLETED,
    ) -> tuple[set[Execution], set[Execution]]:
        """Wait like ``concurrent.futures.wait``: returns ``(done, not_done)``."""
        by_future = {execution.future: execution for execution in executions}
        limit = self.client.config.result_timeout if timeout is None else timeout
        done, pending = concurrent.futures.wait(by_future, limit, return_when)
        return {by_future[f] for f in done}, {by_future[f] for f in pending}

    def on_progress(
        self, callback: ProgressCallback, execution_id: str | None = None
    ) -> Subscription:
        """Call ``callback`` for progress of one execution (or all), on the I/O thread. Events
        published before the subscription reaches the server are not seen; :meth:`record`
        always has the latest progress."""
        return self._subscribers.add(callback, execution_id=execution_id)

    def subscribe(self, topic: str, callback: Callable[[Any], None]) -> Subscription:
        """Call ``callback(payload)`` for every application event the server publishes on
        ``topic`` (exactly that topic), on the I/O thread. Events published before the
        subscription reaches the server are not seen."""
        return self._subscribers.add(callback, event=topic)

    def request_async(
        self, name: str, payload: Any = None, *, timeout: float | None = None
    ) -> concurrent.futures.Future[Any]:
        """Send the application request ``name`` (a handler the server was given in its
        ``requests``); the future resolves to the reply's payload (see :meth:`request`)."""
        return self.client.call_async(name, payload, timeout=timeout)

    def request(self, name: str, payload: Any = None, *, timeout: float | None = None) -> Any:
        """Send the application request ``name`` with ``payload`` and return the reply's
        payload. A handler's exception, or an unknown name, raises :class:`~zmqruntime.RemoteError`
        (with ``error_type``, message and ``remote_traceback``); after ``timeout`` seconds
        (``config.request_timeout``), ``ZMQTimeoutError``."""
        return self.client.call(name, payload, timeout=timeout)

    def ping(self, timeout: float | None = None) -> Pong:
        """The server's identity and health."""
        return self.client.ping(timeout)

    def shutdown(self, graceful: bool = True, *, timeout: float | None = None) -> None:
        """Stop the server: graceful finishes what is queued; otherwise everything is
        cancelled first."""
        self.client.request(Shutdown(request_id=0, force=not graceful), timeout)

    # --- I/O thread callbacks --------------------------------------------------------------

    def _finish(self, message: Message) -> None:
        if not isinstance(message, Completion):
            logger.debug("ignored an unsolicited %s", message.TYPE.value)
            return
        record = message.record
        with self._lock:
            execution = self._waiting.pop(record.execution_id, None)
        if execution is None:
            return
        future = execution.future
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            if record.status is ExecutionStatus.CANCELLED:
                future.set_exception(TaskCancelled(record.execution_id))
            elif record.status is not ExecutionStatus.COMPLETE:
                future.set_exception(
                    TaskFailed(
                        record.execution_id,
                        record.error_type or "Error",
                        record.error_message or "",
                        record.traceback or "",
                    )
                )
            elif not message.result:
                future.set_exception(
                    RemoteProtocolError(
                        f"execution {record.execution_id} completed, but the server no "
                        "longer holds its result"
                    )
                )
            else:
                try:
                    future.set_result(self.serializer.loads(message.result))
                except ProtocolError as exc:
                    future.set_exception(exc)

    def _on_lost(self) -> None:
        # A refused handshake also ends in a disconnect: say why, whichever failure lands first.
        failure = self.client.handshake_failure
        why = "" if failure is None else f": {failure}"
        self._fail_all(ServerLost(f"the connection to the execution server was lost{why}"))

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for execution in waiting.values():
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                execution.future.set_exception(error)
