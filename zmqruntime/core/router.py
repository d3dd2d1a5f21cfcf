"""ControlRouter: what a server answers to each request on its control socket."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias, cast, final

import attrs

from zmqruntime import __version__
from zmqruntime.config import ZMQConfig
from zmqruntime.core import codec
from zmqruntime.core.messages import (
    MESSAGE_CLASSES,
    PROTOCOL_VERSION,
    AppRequest,
    ControlMessageType,
    ErrorReply,
    Message,
    Ping,
    Pong,
    Shutdown,
    ShutdownReply,
    StreamMessageType,
)
from zmqruntime.core.requests import RequestTable
from zmqruntime.core.server_loop import Peer
from zmqruntime.errors import ErrorCode, RemoteProtocolError
from zmqruntime.protocols import Buffer, TaskSerializer

__all__ = ["ControlHandler", "ControlRouter", "HandlerKey", "admin_only"]

logger = logging.getLogger(__name__)

ControlHandler = Callable[[Any, Peer], "Message | None"]
"""``handler(message, peer)``: return the reply, or None to reply later via ``server.send``."""
HandlerKey: TypeAlias = ControlMessageType | StreamMessageType


def admin_only(request_id: int, action: str) -> ErrorReply:
    """The refusal of a peer that is not an admin (see :class:`Peer`) trying to ``action``."""
    why = (
        f"only an admin may {action}: this server's own user or one of its admin keys "
        "(ServerCurve(admin_keys=...))"
    )
    return ErrorReply(request_id=request_id, code=ErrorCode.REFUSED, message=why)


@final
@attrs.define(eq=False)
class ControlRouter:
    """The answers of one server, on its I/O thread.

    Ping and (unless ``handlers`` has one) shutdown are answered here, and a shutdown sets
    ``stop``; a shutdown from a peer that is not an admin is refused before any handler sees
    it; applications' named requests go to ``requests``, whose workers reply through
    ``answer_later(peer, reply)``; every other request goes to the handler for its type.
    Undecodable input, an unknown type, a handler's exception or a reply that is not a
    message all become an :class:`~zmqruntime.core.messages.ErrorReply`: the server never
    dies of input.
    """

    role: str
    config: ZMQConfig
    capabilities: tuple[str, ...]
    handlers: Mapping[HandlerKey, ControlHandler]
    requests: RequestTable
    serializer: TaskSerializer
    stop: threading.Event
    answer_later: Callable[[Peer, Message], None]
    on_shutdown: Callable[[bool], None] | None
    clock: Callable[[], float]
    started_at: float
    draining: threading.Event
    """Set once a shutdown was accepted; pongs report it."""

    def answer(self, frames: list[Buffer], peer: Peer) -> Message | None:
        """The reply to one request's frames; None when it will be answered later."""
        try:
            message = codec.decode(frames, max_header_bytes=self.config.max_header_bytes)
        except RemoteProtocolError as exc:
            logger.warning("%s: refused a malformed request: %s", self.role, exc)
            return ErrorReply(
                request_id=codec.peek_request_id(frames), code=exc.code, message=str(exc)
            )
        if isinstance(message, AppRequest):
            return self.requests.dispatch(message, peer, self.serializer, self.answer_later)
        if isinstance(message, Ping):
            return self._pong(message)
        if isinstance(message, Shutdown) and not peer.admin:
            return admin_only(message.request_id, "shut this server down")
        if isinstance(message, Shutdown) and ControlMessageType.SHUTDOWN not in self.handlers:
            return self._shutdown(message)
        kind = message.TYPE.value
        # Stream messages too (progress …): a peer may need them ordered with its requests.
        handler = self.handlers.get(cast(HandlerKey, message.TYPE))
        request_id = getattr(message, "request_id", None)
        if handler is None:
            why = f"a {self.role} does not accept {kind!r} requests"
            return ErrorReply(request_id=request_id, code=ErrorCode.UNEXPECTED, message=why)
        try:
            reply = handler(message, peer)
            if isinstance(reply, ShutdownReply):
                self.draining.set()
        except Exception as exc:
            logger.exception("%s: handler for %s failed", self.role, kind)
            why = f"{type(exc).__name__}: {exc}"
            return ErrorReply(request_id=request_id, code=ErrorCode.HANDLER_FAILED, message=why)
        if reply is not None and type(reply) not in MESSAGE_CLASSES:
            # Answer the request now: an error built later from the bad reply has no id.
            logger.error("%s: handler for %s returned %r", self.role, kind, reply)
            why = f"the handler returned a {type(reply).__name__}, not a message"
            return ErrorReply(request_id=request_id, code=ErrorCode.HANDLER_FAILED, message=why)
        return reply

    def _pong(self, ping: Ping) -> Pong:
        return Pong(
            request_id=ping.request_id,
            role=self.role,
            app_name=self.config.app_name,
            pid=os.getpid(),
            library_version=__version__,
            protocol_version=PROTOCOL_VERSION,
            uptime=self.clock() - self.started_at,
            draining=self.draining.is_set() or self.stop.is_set(),
            capabilities=(*self.capabilities, *self.requests.names),
        )

    def _shutdown(self, request: Shutdown) -> ShutdownReply:
        logger.info("%s: shutdown requested (force=%s)", self.role, request.force)
        self.draining.set()
        if self.on_shutdown is not None:
            try:
                self.on_shutdown(request.force)
            except Exception:
                logger.exception("%s: on_shutdown callback failed", self.role)
        self.stop.set()
        return ShutdownReply(request_id=request.request_id)
