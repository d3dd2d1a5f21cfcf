"""ServerLoop: the I/O thread of a :class:`~zmqruntime.ZMQServer`, the one owner of its sockets."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Final, cast, final

import attrs
import zmq

from zmqruntime.config import ZMQConfig
from zmqruntime.core import codec
from zmqruntime.core.mailbox import Mailbox
from zmqruntime.core.messages import ErrorReply, Message
from zmqruntime.core.sockets import (
    SocketPair,
    decode_or_warn,
    envelope_end,
    receive_ready,
    send_frames,
)
from zmqruntime.core.subscriptions import SubscriberTopics
from zmqruntime.errors import ErrorCode
from zmqruntime.protocols import Buffer

__all__ = ["Peer", "ServerLoop"]

logger = logging.getLogger(__name__)

_POLL_TICK_MS: Final = 1000  # housekeeping period; all real work is event-driven
_BURST: Final = 256  # messages taken from one socket before the others get a turn


@final
@attrs.frozen
class Peer:
    """Who sent a control request: the routing envelope needed to answer it, now or later,
    and who the handshake said it is.

    ``user`` is the connection's ZAP user id (a PLAIN user name, a CURVE client's Z85 public
    key), None where nothing authenticates (IPC, ``insecure=True``). ``admin`` peers may act on
    every execution and shut the server down: the server's own user or its admin keys, and
    every peer of a socket that authenticates nobody.
    """

    envelope: tuple[bytes, ...]
    user: str | None = None
    admin: bool = True

    @property
    def identity(self) -> bytes:
        """The peer's ROUTER routing id."""
        return self.envelope[0]


@final
@attrs.define(eq=False)
class ServerLoop:
    """Everything the I/O thread of one server owns and updates.

    It polls the control socket, the data socket (when it receives) and the mailbox through
    which other threads send. ``answer(frames, peer)`` turns a request into its reply (None:
    answered later, through the mailbox); data messages go to the data handler; an XPUB's
    subscription notices go to ``topics``. Undecodable data is dropped with a warning. While
    ``data_paused()`` is true the data socket is neither polled nor read (its high-water marks
    then push back on senders); :meth:`ZMQServer.wake` has it checked again.
    """

    role: str
    config: ZMQConfig
    pair: SocketPair
    mailbox: Mailbox
    stop: threading.Event
    topics: SubscriberTopics
    counts: dict[str, int]
    answer: Callable[[list[Buffer], Peer], Message | None]
    data_handler: Callable[[Message], None] | None
    data_paused: Callable[[], bool] | None = None

    def run(self) -> None:
        """Serve until :attr:`stop` is set, then send what is still queued."""
        pair, mailbox = self.pair, self.mailbox
        poller = zmq.Poller()
        for source in (pair.control, mailbox.fileno):
            poller.register(source, zmq.POLLIN)
        receives = polled = pair.data_receives  # asked once: each ask is a getsockopt
        notices = cast(int, pair.data.type) == zmq.XPUB
        if polled:
            poller.register(pair.data, zmq.POLLIN)
        try:
            while not self.stop.is_set():
                try:
                    if receives and self._data_paused() == polled:
                        polled = not polled
                        if polled:
                            poller.register(pair.data, zmq.POLLIN)
                        else:
                            poller.unregister(pair.data)
                    ready = dict(poller.poll(_POLL_TICK_MS))
                    if mailbox.fileno in ready:
                        self._flush(pair, mailbox)
                    # Data first: a subscription that arrived with a request is known to
                    # the handler of that request.
                    if pair.data in ready:
                        self._drain_data(pair, notices)
                    if pair.control in ready:
                        self._drain_control(pair)
                except zmq.ContextTerminated:
                    raise
                except Exception:
                    # Never die: every message path has its own handling; this is the net.
                    logger.exception("%s: unexpected error in the serving loop", self.role)
            self._flush(pair, mailbox)  # replies queued before the stop still go out
        except zmq.ContextTerminated:
            logger.warning("%s: zmq context terminated under the loop", self.role)

    def _flush(self, pair: SocketPair, mailbox: Mailbox) -> None:
        for control, frames in mailbox.drain():
            self._send_now(pair.control if control else pair.data, frames)

    def _send_now(self, socket: zmq.Socket[bytes], frames: list[Buffer]) -> None:
        try:
            send_frames(socket, frames, zmq.NOBLOCK)
        except zmq.Again:
            self.counts["undeliverable"] += 1
            logger.warning("%s: peer is not reading (queue full); dropped a message", self.role)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.counts["undeliverable"] += 1
            logger.info("%s: peer disconnected before its reply could be sent", self.role)

    def _drain_control(self, pair: SocketPair) -> None:
        for index in range(_BURST):
            frames = receive_ready(pair.control, index == 0)
            if frames is None:
                return
            self.counts["requests"] += 1
            split = envelope_end(frames)
            peer = self._peer(frames, split)
            reply = self.answer(cast("list[Buffer]", frames[split:]), peer)
            if reply is not None:
                self._reply(pair, peer, reply)

    def _peer(self, frames: list[zmq.Frame], split: int) -> Peer:
        envelope = tuple(frame.bytes for frame in frames[:split])
        authentication = self.pair.authentication
        if authentication is None:
            return Peer(envelope)
        try:
            user = cast(str, frames[-1].get("User-Id"))  # set by the ZAP handshake
        except zmq.ZMQError:  # no user id: nobody vouched for this peer, so no rights
            return Peer(envelope, None, admin=False)
        return Peer(envelope, user, user in authentication.admins)

    def _reply(self, pair: SocketPair, peer: Peer, reply: Message) -> None:
        try:
            frames = codec.encode(reply)
        except Exception as exc:  # a handler returned something unsendable
            logger.exception("%s: could not encode reply %r", self.role, type(reply).__name__)
            why = f"server could not encode its reply: {exc}"
            request_id = getattr(reply, "request_id", None)
            frames = codec.encode(
                ErrorReply(request_id=request_id, code=ErrorCode.HANDLER_FAILED, message=why)
            )
        if isinstance(reply, ErrorReply):
            self.counts["error_replies"] += 1
        self.counts["replies"] += 1
        self._send_now(pair.control, [*peer.envelope, *frames])

    def _data_paused(self) -> bool:
        return self.data_paused is not None and self.data_paused()

    def _drain_data(self, pair: SocketPair, notices: bool) -> None:
        """Read data messages; an XPUB's (``notices``) are subscription notices."""
        for index in range(_BURST):
            frames = None if self._data_paused() else receive_ready(pair.data, index == 0)
            if frames is None:
                return
            if notices:  # XPUB: libzmq applied each frame that is a notice; so do we
                for frame in frames:
                    self.topics.note(frame.bytes)
                continue
            self.counts["data_messages"] += 1
            message = decode_or_warn(
                frames, self.config.max_header_bytes, self.role, "data message"
            )
            if message is None:
                self.counts["data_errors"] += 1
                continue
            if self.data_handler is None:
                self.counts["data_errors"] += 1
                logger.warning("%s: no data handler; dropped a %s", self.role, message.TYPE.value)
                continue
            try:
                self.data_handler(message)
            except Exception:
                self.counts["data_errors"] += 1
                logger.exception("%s: data handler failed on a %s", self.role, message.TYPE.value)
