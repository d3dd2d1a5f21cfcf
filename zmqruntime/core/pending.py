"""PendingRequests: the requests in flight, who hears each reply, and when each one expires.

A client registers a request (any thread) before sending it, arms its deadline when the I/O
thread has sent it, and resolves it when the reply comes. The I/O thread expires requests
whose deadline passed, so even an asynchronous request never waits forever. A request is
answered to a ``Future``, or to a callback that runs on the I/O thread (no future, no lock,
no thread woken: what a caller that has its own handle, such as an execution, needs).
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Final, TypeAlias, final

import attrs

from zmqruntime.core.messages import ErrorReply, Message
from zmqruntime.errors import RemoteError, ZMQTimeoutError

__all__ = ["OnReply", "PendingRequests"]

logger = logging.getLogger(__name__)

_COMPACT_ABOVE: Final = 1024

OnReply: TypeAlias = Callable[[Message | BaseException], None]
"""Called once, on the client's I/O thread, with the reply or what failed the request."""
_Waiter: TypeAlias = "concurrent.futures.Future[Message] | OnReply"


@final
@attrs.define(eq=False)
class PendingRequests:
    """Requests in flight, by request id. Each is answered exactly once."""

    _futures: dict[int, _Waiter] = attrs.field(factory=dict)
    _deadlines: list[tuple[float, int, Callable[[], str]]] = attrs.field(factory=list)
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def __len__(self) -> int:
        return len(self._futures)

    def open(self) -> tuple[int, concurrent.futures.Future[Message]]:
        """A new request id and the future its reply will resolve (any thread)."""
        future: concurrent.futures.Future[Message] = concurrent.futures.Future()
        with self._lock:
            request_id = next(self._ids)
            self._futures[request_id] = future
        future.add_done_callback(lambda _done: self.discard(request_id))
        return request_id, future

    def open_callback(self, on_reply: OnReply) -> int:
        """A new request id whose reply (or failure) goes to ``on_reply`` (any thread)."""
        with self._lock:
            request_id = next(self._ids)
            self._futures[request_id] = on_reply
        return request_id

    def discard(self, request_id: int) -> None:
        """Forget a request (its reply, if one comes, is dropped)."""
        self._take(request_id)

    def arm(self, request_id: int, deadline: float, describe: Callable[[], str]) -> None:
        """Expire the request at ``deadline`` (monotonic seconds); ``describe()`` says what
        timed out (built only then). I/O thread only."""
        heapq.heappush(self._deadlines, (deadline, request_id, describe))
        if len(self._deadlines) > _COMPACT_ABOVE and len(self._deadlines) > 4 * len(self):
            # Answered requests leave their deadline behind; drop those in one sweep.
            with self._lock:
                live = set(self._futures)
            self._deadlines = [entry for entry in self._deadlines if entry[1] in live]
            heapq.heapify(self._deadlines)

    def next_deadline(self) -> float | None:
        """The earliest deadline still armed (possibly of an answered request)."""
        return self._deadlines[0][0] if self._deadlines else None

    def expire(self, now: float, cause: Exception | None = None) -> int:
        """Fail every request whose deadline is at or before ``now`` with ``cause``, or else
        a :class:`ZMQTimeoutError` saying what timed out; returns how many."""
        expired = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            _deadline, request_id, describe = heapq.heappop(self._deadlines)
            if request_id in self._futures:
                expired += self.fail(request_id, cause or ZMQTimeoutError(describe()))
        return expired

    def resolve(self, request_id: int, reply: Message) -> bool:
        """Resolve with ``reply`` (an :class:`ErrorReply` becomes :class:`RemoteError`, with the
        remote exception's type and traceback when the reply carries them)."""
        if isinstance(reply, ErrorReply):
            error = RemoteError(reply.code, reply.message, reply.error_type, reply.traceback)
            return self.fail(request_id, error)
        return _settle(self._take(request_id), reply)

    def fail(self, request_id: int, error: BaseException) -> bool:
        """Fail one request; False if it was no longer pending."""
        return _settle(self._take(request_id), error)

    def fail_all(self, error: BaseException) -> None:
        """Fail every pending request with ``error``."""
        with self._lock:
            futures, self._futures = self._futures, {}
        for future in futures.values():
            _settle(future, error)

    def _take(self, request_id: int) -> _Waiter | None:
        with self._lock:
            return self._futures.pop(request_id, None)


def _settle(future: _Waiter | None, outcome: Message | BaseException) -> bool:
    if future is None:
        return False
    if not isinstance(future, concurrent.futures.Future):
        try:
            future(outcome)
        except Exception:
            logger.exception("a reply callback failed")
        return True
    if future.done():
        return False
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except concurrent.futures.InvalidStateError:
        return False  # cancelled by its waiter in the meantime
    return True
