"""ClientLoop: the I/O thread of a :class:`~zmqruntime.ZMQClient`, the one owner of its sockets."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Final, cast, final

import attrs
import zmq

from zmqruntime.config import ZMQConfig
from zmqruntime.core.connection import ConnectionWatch, LinkEvent
from zmqruntime.core.mailbox import Mailbox
from zmqruntime.core.messages import ErrorReply, Message
from zmqruntime.core.pending import PendingRequests
from zmqruntime.core.push import PushSockets
from zmqruntime.core.security import ClientCurve
from zmqruntime.core.sockets import SocketPair, decode_or_warn, receive_ready, send_frames
from zmqruntime.errors import ChannelClosed, ServerLost
from zmqruntime.protocols import Buffer

__all__ = ["ClientLoop"]

logger = logging.getLogger(__name__)

_POLL_TICK_MS: Final = 1000
_BURST: Final = 256
_REFUSING: Final = "the server is not taking requests"
_NOT_TAKING: Final = "its queue is full, or the handshake failed (CURVE authentication?)"
_SOCKOPTS: Final = {"subscribe": zmq.SUBSCRIBE, "unsubscribe": zmq.UNSUBSCRIBE}


@final
@attrs.define(eq=False)
class ClientLoop:
    """Everything the I/O thread of one client owns and updates.

    It sends what the client's callers put in its mailbox, arms request deadlines, delivers
    replies to their futures, unsolicited messages and published data to the client's
    callbacks, and watches the connection. Everything it owns is closed when it ends.
    """

    name: str
    config: ZMQConfig
    curve: ClientCurve | None
    pair: SocketPair
    mailbox: Mailbox
    monitor: zmq.Socket[bytes]
    pending: PendingRequests
    watch: ConnectionWatch
    counts: dict[str, int]
    stop: threading.Event
    on_message: Callable[[Message], None] | None
    on_data: Callable[[Message, bytes | None], None] | None
    on_disconnect: Callable[[], None] | None
    release: Callable[[], None] | None = None
    """Called once its sockets are closed (gives a shared context back)."""

    def run(self) -> None:
        """Serve until stopped (the I/O thread's target); closes everything on the way out."""
        pair, mailbox, monitor = self.pair, self.mailbox, self.monitor
        poller = zmq.Poller()
        for source in (pair.control, monitor, mailbox.fileno):
            poller.register(source, zmq.POLLIN)
        if pair.data_receives:
            poller.register(pair.data, zmq.POLLIN)
        pushers = PushSockets(pair.context, self.config, self.curve)
        try:
            while not self.stop.is_set():
                try:
                    ready = dict(poller.poll(self._poll_timeout_ms()))
                    if mailbox.fileno in ready:
                        self._flush(pair, mailbox, pushers)
                    if pair.control in ready:
                        self._drain_control(pair)
                    if pair.data in ready:
                        self._drain_data(pair)
                    if monitor in ready:
                        self._drain_monitor(monitor, pair)
                    if self.pending.next_deadline() is not None:
                        self.counts["timeouts"] += self._expire(pair)
                except zmq.ContextTerminated:
                    break
                except Exception:
                    logger.exception("%s: unexpected error in the I/O loop", self.name)
            self._flush(pair, mailbox, pushers)
        finally:
            self.watch.connected.clear()
            self.pending.fail_all(ChannelClosed(f"{self.name} closed"))
            pair.control.disable_monitor()
            monitor.close(linger=0)
            pushers.close()
            pair.close()
            mailbox.close()
            if self.release is not None:
                self.release()

    def _poll_timeout_ms(self) -> int:
        deadline = self.pending.next_deadline()
        if deadline is None:
            return _POLL_TICK_MS
        wait = (deadline - time.monotonic()) * 1000
        return max(0, min(_POLL_TICK_MS, int(wait) + 1))

    def _expire(self, pair: SocketPair) -> int:
        """Expire overdue requests: as lost when the handshake failed (they never reached a
        server, and waiting longer will not help), else as timed out."""
        failure = self.watch.handshake_failure
        cause = None if failure is None else ServerLost(self.watch.lost(pair.control_url))
        return self.pending.expire(time.monotonic(), cause)

    def _flush(self, pair: SocketPair, mailbox: Mailbox, pushers: PushSockets) -> None:
        for kind, payload in mailbox.drain():
            if kind in _SOCKOPTS:
                pair.data.setsockopt(_SOCKOPTS[kind], payload)
            elif kind == "push":
                if not pushers.send(*payload):
                    self.counts["dropped"] += 1
            elif kind == "request":
                frames, request_id, deadline, describe = payload
                try:
                    send_frames(pair.control, frames, zmq.NOBLOCK)
                except zmq.Again:  # no connection that takes messages
                    why = self.watch.handshake_failure or _NOT_TAKING
                    self.pending.fail(request_id, ServerLost(f"{_REFUSING}: {why}"))
                else:
                    self.pending.arm(request_id, deadline, describe)
            else:
                socket = pair.control if kind == "control" else pair.data
                try:
                    send_frames(socket, payload, zmq.NOBLOCK)
                except zmq.Again:
                    self.counts["dropped"] += 1
                    logger.warning("%s: send queue full; dropped an outgoing message", self.name)

    def _drain_control(self, pair: SocketPair, limit: int = _BURST) -> None:
        for index in range(limit):
            frames = receive_ready(pair.control, index == 0)
            if frames is None:
                return
            message = decode_or_warn(frames, self.config.max_header_bytes, self.name, "reply")
            if message is None:
                self.counts["dropped"] += 1
                continue
            self._deliver(message)

    def _deliver(self, message: Message) -> None:
        request_id = getattr(message, "request_id", None)
        if request_id is not None:
            if self.pending.resolve(request_id, message):
                self.counts["replies"] += 1
            else:
                logger.debug("%s: dropped a late reply to request %d", self.name, request_id)
        elif isinstance(message, ErrorReply):
            logger.warning("%s: server reported an error: %s", self.name, message.message)
        else:
            self.counts["unsolicited"] += 1
            if self.on_message is None:
                logger.debug("%s: no on_message callback; dropped a %s", self.name, message.TYPE)
            self._call(self.on_message, "on_message", message)

    def _call(self, callback: Callable[..., None] | None, name: str, *args: object) -> None:
        """Run one of the client's callbacks, if set; its failure is logged, never raised."""
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            logger.exception("%s: %s callback failed", self.name, name)

    def _drain_data(self, pair: SocketPair) -> None:
        subscribed = pair.data.type == zmq.SUB
        for index in range(_BURST):
            frames = receive_ready(pair.data, index == 0)
            if frames is None:
                return
            topic: bytes | None = None
            body = cast("list[Buffer]", frames)
            if subscribed and frames:  # published messages lead with their topic frame
                topic, body = frames[0].bytes, body[1:]
            message = decode_or_warn(body, self.config.max_header_bytes, self.name, "data message")
            if message is None:
                self.counts["dropped"] += 1
                continue
            self._call(self.on_data, "on_data", message, topic)

    def _drain_monitor(self, monitor: zmq.Socket[bytes], pair: SocketPair) -> None:
        for verdict, endpoint in self.watch.read(monitor):
            if verdict is LinkEvent.REFUSED:
                self.pending.fail_all(ServerLost(self.watch.lost(endpoint)))
            elif verdict is LinkEvent.LOST:
                # Replies the server sent before it went may be queued already (the poll that
                # saw this event looked a moment too early): deliver them before failing the rest.
                self._drain_control(pair, limit=sys.maxsize)
                level = logging.WARNING if len(self.pending) else logging.INFO
                logger.log(level, "%s: lost the connection to %s", self.name, endpoint)
                self.pending.fail_all(ServerLost(self.watch.lost(endpoint)))
                self._call(self.on_disconnect, "on_disconnect")
