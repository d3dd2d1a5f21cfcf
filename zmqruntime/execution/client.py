"""ExecutionClient: submit tasks, follow their progress, cancel them, get their results.

Composed from a :class:`~zmqruntime.ZMQClient` (DEALER control with request ids, SUB data for
progress). Each submission returns an :class:`Execution` whose ``future`` is a real
``concurrent.futures.Future``: it is resolved by the completion the server pushes to this
client — no polling — or failed with :class:`~zmqruntime.ServerLost` the moment the
connection to the server breaks. Safe to use from several threads.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, cast, final

import attrs
import zmq

from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.client import ZMQClient
from zmqruntime.core.messages import (
    Accepted,
    Cancel,
    Completion,
    Execute,
    ExecutionRecord,
    ExecutionStatus,
    Message,
    Pong,
    ProgressEvent,
    RecordReply,
    ServerSummary,
    Shutdown,
    StatusRequest,
    SummaryReply,
)
from zmqruntime.core.security import ClientCurve, check_pickle_exposure
from zmqruntime.core.serializers import SafeSerializer, serializer_name
from zmqruntime.core.transport import get_default_transport_mode
from zmqruntime.errors import (
    ProtocolError,
    RemoteProtocolError,
    ServerLost,
    TaskCancelled,
    TaskFailed,
    ZMQTimeoutError,
)
from zmqruntime.protocols import TaskSerializer

__all__ = ["Execution", "ExecutionClient", "ProgressCallback", "Subscription"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[ProgressEvent | Completion], None]
"""Receives progress events, and the final record (a result-less ``Completion``)."""

ALL_COMPLETED: Final = concurrent.futures.ALL_COMPLETED
FIRST_COMPLETED: Final = concurrent.futures.FIRST_COMPLETED
FIRST_EXCEPTION: Final = concurrent.futures.FIRST_EXCEPTION


@final
@attrs.define(eq=False)
class Execution:
    """One submitted task, as seen by its client."""

    execution_id: str
    future: concurrent.futures.Future[Any]
    _client: ExecutionClient
    accepted: concurrent.futures.Future[Message] = attrs.field(factory=concurrent.futures.Future)
    """Resolves once the server has taken the task: to its ``Accepted`` reply when submitted
    with ``confirm=True``, otherwise to the ``Completion`` (or fails, failing :attr:`future`
    too, when the server refuses the task)."""

    def result(self, timeout: float | None = None) -> Any:
        """The task's result, waiting up to ``timeout`` (``config.result_timeout``) seconds.

        Raises :class:`TaskFailed` (with the remote traceback), :class:`TaskCancelled`,
        :class:`ServerLost`, or :class:`ZMQTimeoutError` if it is not done in time.
        """
        limit = self._client.config.result_timeout if timeout is None else timeout
        try:
            return self.future.result(limit)
        except concurrent.futures.TimeoutError:
            if self.future.done():
                raise  # the execution's own error (a ZMQTimeoutError is a TimeoutError too)
            raise ZMQTimeoutError(
                f"execution {self.execution_id} did not finish within {limit}s"
            ) from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The task's error (None if it succeeded), waiting like :meth:`result`."""
        limit = self._client.config.result_timeout if timeout is None else timeout
        try:
            return self.future.exception(limit)
        except concurrent.futures.TimeoutError:
            if self.future.done():
                raise  # the execution's own error (a ZMQTimeoutError is a TimeoutError too)
            raise ZMQTimeoutError(
                f"execution {self.execution_id} did not finish within {limit}s"
            ) from None

    def done(self) -> bool:
        """True once the outcome is known here."""
        return self.future.done()

    def cancel(self, timeout: float | None = None) -> bool:
        """Ask the server to cancel; see :meth:`ExecutionClient.cancel`."""
        return self._client.cancel(self.execution_id, timeout=timeout)

    def status(self, timeout: float | None = None) -> ExecutionRecord:
        """The server's current record of this execution."""
        return self._client.record(self.execution_id, timeout=timeout)


@final
@attrs.define(eq=False)
class Subscription:
    """A progress callback registration; :meth:`close` (or ``with``) ends it."""

    _client: ExecutionClient
    callback: ProgressCallback
    execution_id: str | None
    _closed: bool = False

    def close(self) -> None:
        """Stop delivering events to the callback (idempotent)."""
        if not self._closed:
            self._closed = True
            self._client._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


@final
@attrs.define(eq=False)
class ExecutionClient:
    """Talks to one :class:`~zmqruntime.execution.ExecutionServer`.

    ``port=None`` means ``config.default_port``. Give client and server the same
    ``serializer`` (the safe default on both, or ``PickleSerializer`` on both for trusted
    setups). The client connects on first use, or with ``with`` / :meth:`connect`.
    """

    port: int | None = None
    host: str = "localhost"
    transport_mode: TransportMode | None = None
    config: ZMQConfig = attrs.field(factory=ZMQConfig)
    serializer: TaskSerializer = attrs.field(factory=SafeSerializer)
    curve: ClientCurve | None = None
    allow_insecure: bool = False
    """Accept ``PickleSerializer`` to a non-loopback TCP host without CURVE (not advised)."""

    _zmq: ZMQClient = attrs.field(init=False)
    _waiting: dict[str, Execution] = attrs.field(factory=dict, init=False)
    _subscriptions: tuple[Subscription, ...] = attrs.field(default=(), init=False)
    _sequences: dict[str, int] = attrs.field(factory=dict, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    @_zmq.default
    def _make_zmq(self) -> ZMQClient:
        check_pickle_exposure(
            serializer=self.serializer,
            host=self.host,
            mode=self.transport_mode or get_default_transport_mode(),
            curve=self.curve,
            allow_insecure=self.allow_insecure,
            side="ExecutionClient",
        )
        return ZMQClient(
            port=self.port,
            host=self.host,
            transport_mode=self.transport_mode,
            config=self.config,
            curve=self.curve,
            data_socket_type=zmq.SUB,
            on_message=self._on_push,
            on_data=self._on_published,
            on_disconnect=self._on_lost,
            name="execution-client",
        )

    # --- life cycle ------------------------------------------------------------------------

    def connect(self) -> ExecutionClient:
        """Open the sockets (idempotent); returns the client."""
        self._zmq.connect()
        return self

    def close(self) -> None:
        """Close the connection; executions still waiting fail with ``ServerLost``."""
        self._zmq.close()
        self._fail_all(ServerLost("the client was closed before the execution finished"))

    def __enter__(self) -> ExecutionClient:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def transport(self) -> ZMQClient:
        """The composed tier-1 client (statistics, connection state)."""
        return self._zmq

    # --- requests --------------------------------------------------------------------------

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

        Submissions pipeline: nothing waits for the server here. If the server refuses (queue
        full, shutting down …) the execution's future fails with that :class:`RemoteError`;
        if it has not ended within ``timeout`` seconds (``config.result_timeout``, an hour by
        default: pass more for longer tasks), with :class:`ZMQTimeoutError`. The server
        answers with the outcome only, which is what keeps a submission cheap; with
        ``confirm=True`` it also replies as soon as it has queued the task
        (``execution.accepted`` resolves then, and ``timeout`` bounds only that reply) — for
        a caller that must know the task is in before it lets go. A
        client-chosen ``execution_id`` makes resubmission idempotent: the server never runs
        an id twice, and a retry gets the first run's outcome. Raises ``TypeError`` here for
        a task the serializer cannot carry or labels that are not strings.
        """
        labels = dict(labels or {})
        for key, value in labels.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"labels must map str to str, got {key!r}: {value!r}")
        execution_id = uuid.uuid4().hex if execution_id is None else execution_id
        if not isinstance(execution_id, str) or not execution_id:
            raise TypeError("execution_id must be a non-empty str")
        payload = tuple(self.serializer.dumps(task))
        with self._lock:
            execution = self._waiting.get(execution_id)
            created = execution is None
            if execution is None:
                future: concurrent.futures.Future[Any] = concurrent.futures.Future()
                future.set_running_or_notify_cancel()  # only the server can cancel it
                execution = Execution(execution_id, future, self)
                self._waiting[execution_id] = execution
        request = Execute(
            request_id=0,
            execution_id=execution_id,
            labels=labels,
            serializer=serializer_name(self.serializer),
            confirm=confirm,
            payload=payload,
        )
        try:
            # The reply is the outcome (or, confirmed, the acceptance, which a burst of
            # submissions may delay as long as the work ahead of it): it may take as long as
            # a result would, and a lost server fails it at once anyway.
            acceptance = self._zmq.request_async(
                request, self.config.result_timeout if timeout is None else timeout
            )
        except BaseException:
            if created:
                with self._lock:
                    self._waiting.pop(execution_id, None)
            raise
        acceptance.add_done_callback(
            lambda done: self._on_accepted(execution, done, created=created)
        )
        return execution

    def _on_accepted(
        self,
        execution: Execution,
        acceptance: concurrent.futures.Future[Message],
        *,
        created: bool,
    ) -> None:
        error = acceptance.exception()
        reply = None if error is not None else acceptance.result()
        if error is None and not isinstance(reply, (Accepted, Completion)):
            error = RemoteProtocolError(f"server answered execute with {type(reply).__name__}")
        if error is None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                execution.accepted.set_result(cast(Message, reply))
            if isinstance(reply, Completion):
                self._complete(reply)
            return
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
        reply = self._zmq.request(StatusRequest(request_id=0, execution_id=execution_id), timeout)
        if not isinstance(reply, RecordReply):
            raise RemoteProtocolError(f"server answered status with {type(reply).__name__}")
        return reply.record

    def summary(self, *, timeout: float | None = None) -> ServerSummary:
        """The server's summary: queued, running, counts per status, workers, uptime."""
        reply = self._zmq.request(StatusRequest(request_id=0), timeout)
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
        reply = self._zmq.request(Cancel(request_id=0, execution_id=execution_id), timeout)
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
        return_when: str = ALL_COMPLETED,
    ) -> tuple[set[Execution], set[Execution]]:
        """Wait like ``concurrent.futures.wait``: returns ``(done, not_done)``."""
        by_future = {execution.future: execution for execution in executions}
        limit = self.config.result_timeout if timeout is None else timeout
        done, pending = concurrent.futures.wait(by_future, limit, return_when)
        return {by_future[f] for f in done}, {by_future[f] for f in pending}

    def on_progress(
        self, callback: ProgressCallback, execution_id: str | None = None
    ) -> Subscription:
        """Call ``callback`` for progress of one execution (or all), on the I/O thread.

        Events published before the subscription reaches the server are not seen (PUB/SUB);
        :meth:`record` always has the latest progress.
        """
        subscription = Subscription(self, callback, execution_id)
        with self._lock:
            self._subscriptions = (*self._subscriptions, subscription)
        self._zmq.subscribe(execution_id or b"")
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)
        try:
            self._zmq.unsubscribe(subscription.execution_id or b"")
        except Exception:
            logger.debug("unsubscribe after close ignored")

    def ping(self, timeout: float | None = None) -> Pong:
        """The server's identity and health."""
        return self._zmq.ping(timeout)

    def shutdown(self, graceful: bool = True, *, timeout: float | None = None) -> None:
        """Stop the server: graceful finishes what is queued; otherwise everything is
        cancelled first."""
        self._zmq.request(Shutdown(request_id=0, force=not graceful), timeout)

    # --- I/O thread callbacks --------------------------------------------------------------

    def _on_push(self, message: Message) -> None:
        if not isinstance(message, Completion):
            logger.debug("ignored an unsolicited %s", message.TYPE.value)
            return
        self._complete(message)

    def _complete(self, message: Completion) -> None:
        record = message.record
        with self._lock:
            execution = self._waiting.pop(record.execution_id, None)
        if execution is None:
            return
        future = execution.future
        try:
            if record.status is ExecutionStatus.COMPLETE:
                future.set_result(self._result(message))
            elif record.status is ExecutionStatus.CANCELLED:
                future.set_exception(TaskCancelled(record.execution_id))
            else:
                future.set_exception(
                    TaskFailed(
                        record.execution_id,
                        record.error_type or "Error",
                        record.error_message or "",
                        record.traceback or "",
                    )
                )
        except ProtocolError as exc:
            future.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            pass

    def _result(self, completion: Completion) -> Any:
        if not completion.result:
            raise RemoteProtocolError(
                f"execution {completion.record.execution_id} completed, but the server no "
                "longer holds its result"
            )
        return self.serializer.loads(completion.result)

    def _on_published(self, message: Message, _topic: bytes | None) -> None:
        if isinstance(message, ProgressEvent):
            execution_id = message.execution_id
            last = self._sequences.get(execution_id, 0)
            if message.sequence > last + 1:
                logger.debug(
                    "missed progress %d..%d of %s", last + 1, message.sequence - 1, execution_id
                )
            self._sequences[execution_id] = max(last, message.sequence)
        elif isinstance(message, Completion):
            execution_id = message.record.execution_id
            self._sequences.pop(execution_id, None)
        else:
            return
        for subscription in self._subscriptions:
            if subscription.execution_id in (None, execution_id):
                try:
                    subscription.callback(message)
                except Exception:
                    logger.exception("progress callback failed")

    def _on_lost(self) -> None:
        # A refused handshake also ends in a disconnect: say why, whichever failure lands first.
        failure = self._zmq.handshake_failure
        why = "" if failure is None else f": {failure}"
        self._fail_all(ServerLost(f"the connection to the execution server was lost{why}"))

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for execution in waiting.values():
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                execution.future.set_exception(error)
