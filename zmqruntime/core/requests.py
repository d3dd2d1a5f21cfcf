"""RequestTable: an application's own named requests, answered off the server's I/O thread."""

from __future__ import annotations

import functools
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

__all__ = ["MAX_PENDING_REQUESTS", "RequestTable", "as_request_table", "serializer_refusal"]

logger = logging.getLogger(__name__)

MAX_PENDING_REQUESTS: Final = 1024
"""Requests a table queues before it answers "busy"; each waits for a free worker."""
_IDLE_SECONDS: Final = 1.0

Answer = Callable[[Any, Message], None]
"""``answer(peer, reply)``: how a worker sends a reply (the server's thread-safe ``send``)."""


def _at_least_one(_table: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{attribute.name} must be a whole number of 1 or more")


def serializer_refusal(
    request_id: int, used: str, serializer: TaskSerializer, what: str
) -> ErrorReply | None:
    """The refusal of a request whose ``what`` (e.g. "the task") was serialized with ``used``
    rather than with this server's ``serializer``; None when the two agree."""
    ours = serializer_name(serializer)
    if used == ours:
        return None
    why = f"{what} was serialized with {used!r} but this server uses {ours!r}"
    message = f"{why}; give client and server the same serializer"
    return ErrorReply(request_id=request_id, code=ErrorCode.REFUSED, message=message)


@final
@attrs.define(eq=False)
class RequestTable:
    """Named request handlers and the worker threads that run them.

    The I/O thread only looks an :class:`~zmqruntime.core.messages.AppRequest`'s name up and
    queues it; a worker decodes the payload with the server's serializer, calls the handler
    and sends the reply, so a slow handler never delays pings, submissions or another
    client's requests. Client and server must agree on the serializer (a request encoded with
    another one is refused, naming both). Threads start with the first request and end with
    :meth:`close`.
    """

    handlers: Mapping[str, RequestHandler] = attrs.field(factory=dict)
    workers: int = attrs.field(default=4, validator=_at_least_one)
    """Handlers that may run at once."""
    max_pending: int = attrs.field(default=MAX_PENDING_REQUESTS, validator=_at_least_one)
    """Requests queued or running before more are refused as busy."""
    _queue: queue.SimpleQueue[Callable[[], None] | None] = attrs.field(
        factory=queue.SimpleQueue, init=False
    )
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
            why = f"no request named {request.name!r} here; known requests: {known}"
            return ErrorReply(request_id=rid, code=ErrorCode.NOT_FOUND, message=why)
        refusal = serializer_refusal(rid, request.serializer, serializer, "the payload")
        if refusal is not None:
            return refusal
        with self._lock:
            if self._closed:
                return ErrorReply(request_id=rid, code=ErrorCode.REFUSED, message="closing")
            if self._pending >= self.max_pending:
                why = f"{self._pending} requests are waiting for a handler; retry later"
                return ErrorReply(request_id=rid, code=ErrorCode.REFUSED, message=why)
            self._pending += 1
            if len(self._threads) < min(self.workers, self._pending):
                self._start_worker()
        self._queue.put(functools.partial(self._answer, handler, request, peer, serializer, answer))
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
                job = self._queue.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                if self._closed:
                    return
                continue
            if job is None:
                return
            job()

    def _answer(
        self,
        handler: RequestHandler,
        request: AppRequest,
        peer: Any,
        serializer: TaskSerializer,
        answer: Answer,
    ) -> None:
        try:
            if not self._closed:
                answer(peer, _reply(handler, request, peer, serializer))
        except Exception:
            logger.exception("could not answer request %r", request.name)
        finally:
            with self._lock:
                self._pending -= 1


def _reply(
    handler: RequestHandler, request: AppRequest, peer: Any, serializer: TaskSerializer
) -> Message:
    """Decode, call the handler, encode: the reply, or the error reply."""
    rid = request.request_id
    try:
        payload = serializer.loads(request.payload)
    except (ProtocolError, ValueError, TypeError) as exc:
        return ErrorReply(request_id=rid, code=ErrorCode.MALFORMED, message=f"bad payload: {exc}")
    try:
        reply = serializer.dumps(handler(payload, peer))
    except Exception as exc:
        logger.info("request %r failed: %s: %s", request.name, type(exc).__name__, exc)
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
