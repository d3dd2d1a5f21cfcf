"""AsyncExecutionClient: the execution client for asyncio code. It awaits the futures of an
:class:`~zmqruntime.execution.ExecutionClient` through :func:`asyncio.wrap_future` (nothing
blocks the loop, nothing polls); progress reaches the loop from the client's I/O thread through
``loop.call_soon_threadsafe``, at most one wake-up per :class:`ProgressStream` queued at a time.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import threading
import weakref
from collections.abc import Generator, Mapping
from typing import Any, Final, TypeAlias, TypeVar, final

import attrs

from zmqruntime.config import ZMQConfig, check_count, checked
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import (
    Cancel,
    Completion,
    ExecutionRecord,
    ExecutionStatus,
    Message,
    ProgressEvent,
    RecordReply,
    ServerSummary,
    StatusRequest,
    SummaryReply,
)
from zmqruntime.errors import RemoteProtocolError, ZMQTimeoutError
from zmqruntime.execution.client import ExecutionClient
from zmqruntime.execution.handles import Execution, Subscription

__all__ = [
    "COMPLETION_GRACE",
    "PROGRESS_BUFFER",
    "AsyncExecution",
    "AsyncExecutionClient",
    "ProgressStream",
]

logger = logging.getLogger(__name__)

PROGRESS_BUFFER: Final = 1000
"""Default :attr:`AsyncExecutionClient.progress_buffer`: the events one :class:`ProgressStream`
holds for its reader; past it the oldest is dropped and counted."""

COMPLETION_GRACE: Final = 2.0
"""Seconds a :class:`ProgressStream` of an execution submitted through its client waits for the
execution's ``Completion`` once the outcome is known: then it ends without (subscribed too
late, a refused task)."""

_T = TypeVar("_T")
_Event: TypeAlias = ProgressEvent | Completion


async def _settle(
    future: concurrent.futures.Future[_T], limit: float, what: str, *, drop: bool
) -> _T:
    """``future``'s outcome, awaited for at most ``limit`` seconds, then ``ZMQTimeoutError``
    ("``what`` within ``limit``s"). With ``drop``, a timeout or a cancelled caller cancels
    ``future`` (a request: its late reply is dropped); otherwise ``future`` (an execution's,
    shared with other waiters) is left alone."""
    waiting = asyncio.wrap_future(future)
    # Mark an outcome nobody may await any more as seen (no "never retrieved" log).
    waiting.add_done_callback(lambda done: done.cancelled() or done.exception())
    try:
        done, _pending = await asyncio.wait({waiting}, timeout=limit)
    finally:
        if drop and not waiting.done():
            waiting.cancel()
    if not done:
        raise ZMQTimeoutError(f"{what} within {limit}s")
    return waiting.result()


@final
@attrs.define(eq=False)
class AsyncExecution:
    """One task submitted through an :class:`AsyncExecutionClient`;
    ``await execution`` is ``await execution.result()``."""

    execution: Execution
    """The thread-side handle, with its ``future`` and ``accepted`` futures."""
    _client: AsyncExecutionClient

    @property
    def execution_id(self) -> str:
        """The execution's id."""
        return self.execution.execution_id

    def done(self) -> bool:
        """True once the outcome is known here."""
        return self.execution.done()

    async def result(self, timeout: float | None = None) -> Any:
        """The task's result, awaited for up to ``timeout`` seconds (``config.result_timeout``).
        Raises :class:`~zmqruntime.TaskFailed` (with the remote traceback),
        :class:`~zmqruntime.TaskCancelled`, :class:`~zmqruntime.ServerLost`, or
        :class:`~zmqruntime.ZMQTimeoutError`. A timeout or a cancelled await leaves the task
        running; :meth:`cancel` stops it."""
        limit = self._client.config.result_timeout if timeout is None else timeout
        what = f"execution {self.execution_id} did not finish"
        return await _settle(self.execution.future, limit, what, drop=False)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.result().__await__()

    async def status(self, timeout: float | None = None) -> ExecutionRecord:
        """The server's current record of this execution."""
        return await self._client.record(self.execution_id, timeout=timeout)

    async def cancel(self, timeout: float | None = None) -> bool:
        """Ask the server to cancel; see :meth:`AsyncExecutionClient.cancel`."""
        return await self._client.cancel(self.execution_id, timeout=timeout)


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


@final
@attrs.define(eq=False)
class AsyncExecutionClient:
    """An :class:`~zmqruntime.execution.ExecutionClient` (``client``) for asyncio code:
    ``async with AsyncExecutionClient.to(endpoint) as client:``, then
    ``await (await client.submit(task))`` for a result.

    Every await is bounded: results by ``config.result_timeout``, requests (status, cancel,
    application requests) by ``config.request_timeout``, unless given a ``timeout``; then
    :class:`~zmqruntime.ZMQTimeoutError`. Use it from one event loop; the wrapped client stays
    usable from threads (``client.on_progress`` for callbacks such as a GUI's).
    """

    client: ExecutionClient
    progress_buffer: int = attrs.field(default=PROGRESS_BUFFER, validator=checked(check_count, 1))
    """Events each :class:`ProgressStream` buffers for its reader (see there)."""
    _streams: weakref.WeakSet[ProgressStream] = attrs.field(factory=weakref.WeakSet, init=False)

    @classmethod
    def to(
        cls, endpoint: Endpoint, *, progress_buffer: int = PROGRESS_BUFFER, **options: Any
    ) -> AsyncExecutionClient:
        """Around ``ExecutionClient.to(endpoint, **options)`` (``serializer``, ``context``,
        ``allow_insecure``)."""
        return cls(ExecutionClient.to(endpoint, **options), progress_buffer)

    @property
    def config(self) -> ZMQConfig:
        """The endpoint's configuration (its timeouts are the defaults here)."""
        return self.client.client.config

    def connect(self) -> AsyncExecutionClient:
        """Open the sockets (idempotent, never blocks); returns the client."""
        self.client.connect()
        return self

    async def __aenter__(self) -> AsyncExecutionClient:
        return self.connect()

    async def __aexit__(self, *_exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End every progress stream and close the client: executions still waiting fail
        (``ChannelClosed``; ``ServerLost`` if submitted with ``confirm``). The closing (which
        joins the client's I/O thread within ``config.close_timeout``) runs in the loop's
        default executor, awaited. Idempotent."""
        for stream in list(self._streams):
            stream.close()
        await asyncio.to_thread(self.client.close)

    def close(self) -> None:
        """:meth:`aclose` for code outside the event loop (this blocks while closing)."""
        for stream in list(self._streams):
            stream.close()
        self.client.close()

    async def submit(
        self,
        task: Any,
        *,
        labels: Mapping[str, str] | None = None,
        execution_id: str | None = None,
        timeout: float | None = None,
        confirm: bool = False,
    ) -> AsyncExecution:
        """Send ``task``, as :meth:`ExecutionClient.submit` does (same arguments and errors).
        Returns at once, or with ``confirm=True`` once the server has queued it (raising its
        refusal, or ``ZMQTimeoutError`` after ``timeout``, ``config.result_timeout``)."""
        execution = self.client.submit(
            task, labels=labels, execution_id=execution_id, timeout=timeout, confirm=confirm
        )
        for stream in list(self._streams):
            if stream.execution_id == execution.execution_id:
                stream._until(execution.future)
        if confirm:
            limit = self.config.result_timeout if timeout is None else timeout
            what = f"execution {execution.execution_id} was not accepted"
            await _settle(execution.accepted, limit, what, drop=False)
        return AsyncExecution(execution, self)

    async def status(
        self, execution_id: str | None = None, *, timeout: float | None = None
    ) -> ExecutionRecord | ServerSummary:
        """One execution's record (``RemoteError`` NOT_FOUND if unknown), or the summary."""
        if execution_id is not None:
            return await self.record(execution_id, timeout=timeout)
        reply = await self._request(StatusRequest(request_id=0), timeout)
        if not isinstance(reply, SummaryReply):
            raise RemoteProtocolError(f"server answered status with {type(reply).__name__}")
        return reply.summary

    async def record(self, execution_id: str, *, timeout: float | None = None) -> ExecutionRecord:
        """The server's record of one execution (``RemoteError`` NOT_FOUND if unknown)."""
        return await self._record(StatusRequest(request_id=0, execution_id=execution_id), timeout)

    async def cancel(self, execution_id: str, *, timeout: float | None = None) -> bool:
        """Cancel an execution: True if it was cancelled or is being stopped, False if it had
        already ended (see :meth:`ExecutionClient.cancel`)."""
        record = await self._record(Cancel(request_id=0, execution_id=execution_id), timeout)
        return record.status is ExecutionStatus.CANCELLED or not record.status.is_terminal

    async def request(self, name: str, payload: Any = None, *, timeout: float | None = None) -> Any:
        """The reply's payload to the application request ``name``; raises like
        :meth:`ExecutionClient.request`. A cancelled await drops the request's late reply."""
        limit = self.config.request_timeout if timeout is None else timeout
        reply = self.client.request_async(name, payload, timeout=limit)
        return await _settle(reply, limit, f"no reply to request {name!r}", drop=True)

    def progress(
        self, execution_id: str | None = None, *, timeout: float | None = None
    ) -> ProgressStream:
        """A :class:`ProgressStream` of one execution's progress (None: of all), from now on:
        events published before the subscription reaches the server are not seen, so make it
        before submitting (with a chosen ``execution_id``). Call it in a coroutine. ``timeout``
        (``config.result_timeout``) bounds each wait for an event."""
        limit = self.config.result_timeout if timeout is None else timeout
        stream = ProgressStream.follow(
            self.client, execution_id, maxlen=self.progress_buffer, timeout=limit
        )
        self._streams.add(stream)
        return stream

    async def _record(
        self, request: StatusRequest | Cancel, timeout: float | None
    ) -> ExecutionRecord:
        reply = await self._request(request, timeout)
        if not isinstance(reply, RecordReply):
            kind = type(request).__name__
            raise RemoteProtocolError(f"server answered {kind} with {type(reply).__name__}")
        return reply.record

    async def _request(self, request: Message, timeout: float | None) -> Message:
        limit = self.config.request_timeout if timeout is None else timeout
        reply = self.client.client.request_async(request, limit)
        what = f"no reply to {type(request).__name__} from {self.client.client.endpoint}"
        return await _settle(reply, limit, what, drop=True)
