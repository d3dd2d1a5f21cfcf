"""ProgressStream: the progress events of one execution (or all) as an async iterator, fed by
an :class:`~zmqruntime.execution.ExecutionClient`'s I/O thread through
``loop.call_soon_threadsafe`` (at most one wake-up queued at a time) into a bounded buffer;
:meth:`AsyncExecutionClient.progress <zmqruntime.execution.AsyncExecutionClient.progress>`
makes them."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import threading
from typing import Any, Final, TypeAlias, final

import attrs

from zmqruntime.core.messages import Completion, ProgressEvent
from zmqruntime.errors import ZMQTimeoutError
from zmqruntime.execution.client import ExecutionClient
from zmqruntime.execution.handles import Subscription

__all__ = ["COMPLETION_GRACE", "ProgressStream"]

logger = logging.getLogger(__name__)

COMPLETION_GRACE: Final = 2.0
"""Seconds a :class:`ProgressStream` of an execution submitted through its client waits for the
execution's ``Completion`` once the outcome is known: then it ends without (subscribed too
late, a refused task)."""

_Event: TypeAlias = ProgressEvent | Completion


@final
@attrs.define(eq=False)
class ProgressStream:
    """Progress events of one execution (or all) as an async iterator, made by
    :meth:`AsyncExecutionClient.progress`; ``async with`` or :meth:`close` ends it.

    Yields :class:`~zmqruntime.core.messages.ProgressEvent` and, last for one execution, its
    result-less :class:`~zmqruntime.core.messages.Completion`, after which the iteration ends
    (or :data:`COMPLETION_GRACE` seconds after the outcome of an execution submitted through
    the same client, with no ``Completion``, if the subscription came too late).
    At most :attr:`maxlen` events wait for the reader: past that the oldest is dropped (an
    execution's final ``Completion`` is the newest, so it stays), counted in :attr:`dropped`
    and logged (WARNING, the first time); the I/O thread never blocks. Each wait for the next
    event lasts at most :attr:`timeout` seconds, then raises
    :class:`~zmqruntime.ZMQTimeoutError`. Iterate and close it in the event loop's thread.
    """

    _loop: asyncio.AbstractEventLoop
    execution_id: str | None
    maxlen: int
    timeout: float
    dropped: int = attrs.field(default=0, init=False)
    """Events dropped because the reader fell ``maxlen`` behind."""
    _subscription: Subscription | None = attrs.field(default=None, init=False)
    _events: collections.deque[_Event] = attrs.field(init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _ended: bool = attrs.field(default=False, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _wake_posted: bool = attrs.field(default=False, init=False)
    _waiter: asyncio.Future[None] | None = attrs.field(default=None, init=False)
    _outcome: concurrent.futures.Future[Any] | None = attrs.field(default=None, init=False)

    @_events.default
    def _make_events(self) -> collections.deque[_Event]:
        return collections.deque(maxlen=self.maxlen)

    @classmethod
    def follow(
        cls, client: ExecutionClient, execution_id: str | None, *, maxlen: int, timeout: float
    ) -> ProgressStream:
        """Subscribe to ``client``'s progress of ``execution_id`` (None: all) now; call it
        in a coroutine (the running loop receives the events)."""
        stream = cls(asyncio.get_running_loop(), execution_id, maxlen, timeout)
        stream._subscription = client.on_progress(stream._deliver, execution_id)
        return stream

    def __aiter__(self) -> ProgressStream:
        return self

    async def __anext__(self) -> _Event:
        while True:
            with self._lock:
                if self._events:
                    return self._events.popleft()
                finished = self._ended or self._closed
            over = self._outcome is not None and self._outcome.done()
            if finished:
                self.close()
                raise StopAsyncIteration
            self._waiter = self._loop.create_future()
            limit = min(self.timeout, COMPLETION_GRACE) if over else self.timeout
            try:
                done, _pending = await asyncio.wait({self._waiter}, timeout=limit)
            finally:
                self._waiter = None
            if not done and over:
                logger.debug("no Completion of %s came; its progress ends", self.execution_id)
                self.close()
                raise StopAsyncIteration
            if not done:
                which = "any execution" if self.execution_id is None else self.execution_id
                raise ZMQTimeoutError(f"no progress of {which} within {self.timeout}s")

    def close(self) -> None:
        """Unsubscribe and drop what is buffered; a pending iteration ends. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._events.clear()
            subscription, self._subscription = self._subscription, None
        if subscription is not None:
            subscription.close()
        self._post()

    async def __aenter__(self) -> ProgressStream:
        return self

    async def __aexit__(self, *_exc_info: object) -> None:
        self.close()

    def _until(self, outcome: concurrent.futures.Future[Any]) -> None:
        """Know the outcome of this stream's execution (the client that submitted it)."""
        self._outcome = outcome
        outcome.add_done_callback(lambda _done: self._post())  # a waiting reader rechecks

    def _deliver(self, event: _Event) -> None:
        """Buffer ``event`` (the client's I/O thread); never blocks."""
        with self._lock:
            if self._closed or self._ended:
                return
            if len(self._events) == self.maxlen:
                self.dropped += 1
                if self.dropped == 1:
                    logger.warning(
                        "a progress reader fell %d events behind; dropping the oldest "
                        "(ProgressStream.dropped counts them)",
                        self.maxlen,
                    )
            self._events.append(event)
            self._ended = (
                isinstance(event, Completion) and event.record.execution_id == self.execution_id
            )
        self._post()

    def _post(self) -> None:
        with self._lock:
            if self._wake_posted:
                return
            self._wake_posted = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads any more
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._wake_posted = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
