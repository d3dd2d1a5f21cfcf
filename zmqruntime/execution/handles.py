"""What an :class:`~zmqruntime.execution.ExecutionClient` hands out: an :class:`Execution`
per submitted task, and a :class:`Subscription` per progress or event callback, kept by the
client's :class:`Subscribers`."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar, final

import attrs

from zmqruntime.core.client import ZMQClient
from zmqruntime.core.lifecycle import close_on_exit
from zmqruntime.core.messages import AppEvent, Completion, ExecutionRecord, Message, ProgressEvent
from zmqruntime.core.server import event_topic
from zmqruntime.errors import ProtocolError, ZMQTimeoutError

__all__ = ["Execution", "ProgressCallback", "Subscribers", "Subscription"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

ProgressCallback = Callable[[ProgressEvent | Completion], None]
"""Receives progress events, and the final record (a result-less ``Completion``)."""


@final
@attrs.define(eq=False)
class Execution:
    """One submitted task, as seen by its client."""

    execution_id: str
    future: concurrent.futures.Future[Any]
    _result_timeout: float
    _cancel: Callable[..., bool]
    _record: Callable[..., ExecutionRecord]
    accepted: concurrent.futures.Future[Message] = attrs.field(factory=concurrent.futures.Future)
    """Resolves once the server has taken the task: to its ``Accepted`` reply when submitted
    with ``confirm=True``, otherwise to the ``Completion`` (or fails, failing :attr:`future`
    too, when the server refuses the task)."""

    def result(self, timeout: float | None = None) -> Any:
        """The task's result, waiting up to ``timeout`` (``config.result_timeout``) seconds.
        Raises :class:`TaskFailed` (with the remote traceback), :class:`TaskCancelled`,
        :class:`ServerLost`, or :class:`ZMQTimeoutError` if it is not done in time."""
        return self._wait(self.future.result, timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The task's error (None if it succeeded), waiting like :meth:`result`."""
        return self._wait(self.future.exception, timeout)

    def _wait(self, outcome: Callable[[float], _T], timeout: float | None) -> _T:
        limit = self._result_timeout if timeout is None else timeout
        try:
            return outcome(limit)
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
        return self._cancel(self.execution_id, timeout=timeout)

    def status(self, timeout: float | None = None) -> ExecutionRecord:
        """The server's current record of this execution."""
        return self._record(self.execution_id, timeout=timeout)


@final
@attrs.define(eq=False)
class Subscription:
    """A callback registration — progress of one execution (or all), or the application
    events of one topic; :meth:`close` (or ``with``) ends it."""

    _owner: Subscribers
    callback: Callable[[Any], None]
    execution_id: str | None = None
    """Progress of this execution (None: of all), unless :attr:`event` is set."""
    event: str | None = None
    """The application event topic this subscription hears."""
    _closed: bool = False

    def close(self) -> None:
        """Stop delivering events to the callback (idempotent)."""
        if not self._closed:
            self._closed = True
            self._owner.remove(self)

    def __enter__(self) -> Subscription:
        return self

    __exit__ = close_on_exit


@final
@attrs.define(eq=False)
class Subscribers:
    """The progress and event subscriptions of one client, and the topics they hold on its
    SUB socket. Delivery runs on the client's I/O thread; callbacks must be quick."""

    client: ZMQClient
    _subscriptions: tuple[Subscription, ...] = attrs.field(default=(), init=False)
    _sequences: dict[str, int] = attrs.field(factory=dict, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def add(
        self,
        callback: Callable[[Any], None],
        *,
        execution_id: str | None = None,
        event: str | None = None,
    ) -> Subscription:
        """Subscribe ``callback`` to one execution's progress (None: all), or to ``event``."""
        subscription = Subscription(self, callback, execution_id, event)
        with self._lock:
            self._subscriptions = (*self._subscriptions, subscription)
        self.client.subscribe(self._topic(subscription))
        return subscription

    def remove(self, subscription: Subscription) -> None:
        """End one subscription (its topic stays held while another subscription needs it)."""
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)
        try:
            self.client.unsubscribe(self._topic(subscription))
        except Exception:
            logger.debug("unsubscribe after close ignored")

    @staticmethod
    def _topic(subscription: Subscription) -> bytes:
        if subscription.event is not None:
            return event_topic(subscription.event)
        return (subscription.execution_id or "").encode()

    def deliver(self, message: Message, _topic: bytes | None) -> None:
        """Hand a published message to the subscriptions that want it (I/O thread)."""
        if isinstance(message, AppEvent):
            self._deliver_event(message)
            return
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
            if subscription.event is None and subscription.execution_id in (None, execution_id):
                try:
                    subscription.callback(message)
                except Exception:
                    logger.exception("progress callback failed")

    def _deliver_event(self, event: AppEvent) -> None:
        listeners = [s for s in self._subscriptions if s.event == event.topic]
        if not listeners:
            return
        try:
            payload = self.client.serializer.loads(event.payload)
        except (ProtocolError, ValueError, TypeError) as exc:
            logger.warning("dropped an event on %r that cannot be decoded: %s", event.topic, exc)
            return
        for subscription in listeners:
            try:
                subscription.callback(payload)
            except Exception:
                logger.exception("event callback for %r failed", event.topic)
