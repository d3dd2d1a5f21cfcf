"""AsyncExecutionClient: the execution client for asyncio code. It awaits the futures of an
:class:`~zmqruntime.execution.ExecutionClient` through :func:`asyncio.wrap_future` (nothing
blocks the loop, nothing polls); progress reaches the loop from the client's I/O thread through
``loop.call_soon_threadsafe``, at most one wake-up per :class:`ProgressStream` queued at a time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import weakref
from collections.abc import Generator, Iterable, Mapping
from typing import Any, Final, TypeVar, final

import attrs

from zmqruntime.config import ZMQConfig, check_count, checked
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import (
    Cancel,
    ExecutionRecord,
    ExecutionStatus,
    ListRequest,
    Message,
    RecordList,
    RecordReply,
    ServerSummary,
    StatusRequest,
    SummaryReply,
)
from zmqruntime.errors import RemoteProtocolError, ZMQTimeoutError
from zmqruntime.execution.client import ExecutionClient
from zmqruntime.execution.handles import Execution
from zmqruntime.execution.progress_stream import ProgressStream

__all__ = ["PROGRESS_BUFFER", "AsyncExecution", "AsyncExecutionClient", "ProgressStream"]

logger = logging.getLogger(__name__)

PROGRESS_BUFFER: Final = 1000
"""Default :attr:`AsyncExecutionClient.progress_buffer`: the events one :class:`ProgressStream`
holds for its reader; past it the oldest is dropped and counted."""

_T = TypeVar("_T")


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
        with ``ChannelClosed``, confirmed or not. The closing (which
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

    async def list(
        self,
        *,
        status: Iterable[ExecutionStatus] = (),
        labels: Mapping[str, str] | None = None,
        prefix: str = "",
        after: str | None = None,
        limit: int = 100,
        timeout: float | None = None,
    ) -> RecordList:
        """One page of the server's records; see :meth:`ExecutionClient.list`."""
        query = ListRequest.query(
            status=status, labels=labels, prefix=prefix, after=after, limit=limit
        )
        reply = await self._request(query, timeout)
        if not isinstance(reply, RecordList):
            raise RemoteProtocolError(f"server answered list with {type(reply).__name__}")
        return reply

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
