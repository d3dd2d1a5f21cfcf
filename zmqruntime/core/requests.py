"""RequestTable: an application's own named requests, answered off the server's I/O thread.

A server is given a table of plain callables, ``handler(payload, peer) -> reply payload``
(:class:`~zmqruntime.protocols.RequestHandler`). A client's
:class:`~zmqruntime.core.messages.AppRequest` names one; the I/O thread only looks the name
up and queues the request, and one of the table's worker threads decodes the payload with
the serializer, calls the handler and sends the :class:`~zmqruntime.core.messages.AppReply`.
A slow handler therefore never delays pings, submissions or another client's requests (up
to ``workers`` handlers run at once). A handler's exception reaches the caller as an error
reply with its type, message and traceback; an unknown name gets an error naming the known
ones; beyond ``max_pending`` queued requests the table refuses more.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any, Final, final

import attrs

from zmqruntime.core.messages import AppReply, AppRequest, ErrorReply, Message
from zmqruntime.core.serializers import serializer_name
from zmqruntime.errors import ConfigurationError, ErrorCode, ProtocolError
from zmqruntime.protocols import RequestHandler, TaskSerializer

__all__ = ["MAX_PENDING_REQUESTS", "RequestTable", "as_request_table"]

logger = logging.getLogger(__name__)

MAX_PENDING_REQUESTS: Final = 1024
"""Requests a table queues before it answers "busy"; each waits for a free worker."""
_IDLE_SECONDS: Final = 1.0

Answer = Callable[[Any, Message], None]
"""``answer(peer, reply)``: how a worker sends a reply (the server's thread-safe ``send``)."""


def _at_least_one(_table: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{attribute.name} must be a whole number of 1 or more")


@final
@attrs.define(eq=False)
class RequestTable:
    """Named request handlers and the worker threads that run them.

    The server's serializer decodes payloads and encodes replies; client and server must
    agree on it (a request encoded with another one is refused, naming both). Threads start
    with the first request and end with :meth:`close`.
    """

    handlers: Mapping[str, RequestHandler] = attrs.field(factory=dict)
    workers: int = attrs.field(default=4, validator=_at_least_one)
    """Handlers that may run at once."""
    max_pending: int = attrs.field(default=MAX_PENDING_REQUESTS, validator=_at_least_one)
    """Requests queued or running before more are refused as busy."""
    _queue: queue.SimpleQueue[_Job | None] = attrs.field(factory=queue.SimpleQueue, init=False)
    _threads: list[threading.Thread] = attrs.field(factory=list, init=False)
    _pending: int = attrs.field(default=0, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    @property
    def names(self) -> tuple[str, ...]:
        """The request names this table answers, sorted."""
        return tuple(sorted(self.handlers))

    def dispatch(
        self, request: AppRequest, peer: Any, serializer: TaskSerializer, answer: Answer
    ) -> Message | None:
        """Queue ``request`` for a worker (I/O thread); an error reply if it cannot be run."""
        handler = self.handlers.get(request.name)
        rid = request.request_id
        if handler is None:
            known = ", ".join(self.names) or "none"
            return ErrorReply(
                request_id=rid,
                code=ErrorCode.NOT_FOUND,
                message=f"no request named {request.name!r} here; known requests: {known}",
            )
        ours = serializer_name(serializer)
        if request.serializer != ours:
            return ErrorReply(
                request_id=rid,
                code=ErrorCode.REFUSED,
                message=f"the payload was encoded with {request.serializer!r}, but this server "
                f"uses {ours!r}; give client and server the same serializer",
            )
        with self._lock:
            if self._closed:
                return ErrorReply(request_id=rid, code=ErrorCode.REFUSED, message="closing")
            if self._pending >= self.max_pending:
                return ErrorReply(
                    request_id=rid,
                    code=ErrorCode.REFUSED,
                    message=f"{self._pending} requests are waiting for a handler; retry later",
                )
            self._pending += 1
            if len(self._threads) < min(self.workers, self._pending):
                self._start_worker()
        self._queue.put(_Job(handler, request, peer, serializer, answer))
        return None

    def close(self, timeout: float = 5.0) -> None:
        """Drop queued requests and give running handlers ``timeout`` seconds in all to
        return; a handler still running then is left to finish on its (daemon) thread."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    logger.error("a request handler did not return within %ss", timeout)

    def _start_worker(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"zmqruntime-requests-{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                if self._closed:
                    return
                continue
            if item is None:
                return
            try:
                if not self._closed:
                    item.answer(item.peer, item.run())
            except Exception:
                logger.exception("could not answer request %r", item.request.name)
            finally:
                with self._lock:
                    self._pending -= 1


@final
@attrs.frozen
class _Job:
    """One queued request and everything needed to answer it."""

    handler: RequestHandler
    request: AppRequest
    peer: Any
    serializer: TaskSerializer
    answer: Answer

    def run(self) -> Message:
        """Decode, call the handler, encode: the reply, or the error reply."""
        rid = self.request.request_id
        try:
            payload = self.serializer.loads(self.request.payload)
        except (ProtocolError, ValueError, TypeError) as exc:
            return ErrorReply(
                request_id=rid, code=ErrorCode.MALFORMED, message=f"bad payload: {exc}"
            )
        try:
            reply = self.serializer.dumps(self.handler(payload, self.peer))
        except Exception as exc:
            logger.info("request %r failed: %s: %s", self.request.name, type(exc).__name__, exc)
            return ErrorReply(
                request_id=rid,
                code=ErrorCode.HANDLER_FAILED,
                message=str(exc),
                error_type=type(exc).__name__,
                traceback=traceback.format_exc(),
            )
        return AppReply(request_id=rid, payload=tuple(reply))


def as_request_table(value: RequestTable | Mapping[str, RequestHandler]) -> RequestTable:
    """``value`` itself, or a table of the handlers in a mapping (with the safe serializer)."""
    return value if isinstance(value, RequestTable) else RequestTable(dict(value))
