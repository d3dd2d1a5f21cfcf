"""ZMQServer: a control socket answered by a table of handlers, plus a data socket.

The server binds a :class:`~zmqruntime.core.sockets.SocketPair` (ROUTER control, and a data socket
of the caller's choice: PUB to publish, PULL to receive) and drives it with a ``zmq.Poller``
in one I/O thread — its own (:meth:`ZMQServer.start`) or the caller's
(:meth:`ZMQServer.serve_forever`). Behaviour is supplied, never subclassed: ``handlers`` maps
each :class:`~zmqruntime.ControlMessageType` the server accepts to a callable
``handler(message, peer) -> reply | None``; ``data_handler`` receives decoded messages from a
receiving data socket.

The server answers :class:`~zmqruntime.core.messages.Ping` and (unless ``handlers`` has one)
:class:`~zmqruntime.core.messages.Shutdown` itself, turns undecodable input into an error reply
(or a logged drop), and turns an exception in a handler into an error reply. It never dies of
input. Other threads send through :meth:`ZMQServer.send` and :meth:`ZMQServer.publish`, which
hand the frames to the I/O thread.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType, TracebackType
from typing import Any, Final, TypeAlias, cast, final

import attrs
import zmq

from zmqruntime import __version__
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core import codec
from zmqruntime.core.mailbox import Mailbox
from zmqruntime.core.messages import (
    MESSAGE_CLASSES,
    PROTOCOL_VERSION,
    ControlMessageType,
    ErrorReply,
    Message,
    Ping,
    Pong,
    Shutdown,
    ShutdownReply,
    StreamMessageType,
)
from zmqruntime.core.security import ServerCurve
from zmqruntime.core.sockets import Context, SocketPair, envelope_end, receive_ready, send_frames
from zmqruntime.core.subscriptions import SubscriberTopics
from zmqruntime.errors import ChannelClosed, ErrorCode, RemoteProtocolError, ZMQTimeoutError
from zmqruntime.protocols import Buffer

__all__ = ["ControlHandler", "Peer", "ServerStatistics", "ZMQServer"]

logger = logging.getLogger(__name__)

_POLL_TICK_MS: Final = 1000  # housekeeping period; all real work is event-driven
_BURST: Final = 256  # messages taken from one socket before the others get a turn


@final
@attrs.frozen
class Peer:
    """Who sent a control request: the routing envelope needed to answer it, now or later."""

    envelope: tuple[bytes, ...]

    @property
    def identity(self) -> bytes:
        """The peer's ROUTER routing id."""
        return self.envelope[0]


ControlHandler = Callable[[Any, Peer], "Message | None"]
"""``handler(message, peer)``: return the reply, or None to reply later via ``server.send``."""
HandlerKey: TypeAlias = ControlMessageType | StreamMessageType


@final
@attrs.frozen(kw_only=True)
class ServerStatistics:
    """Counters of a server's traffic since it started."""

    requests: int
    replies: int
    error_replies: int
    undeliverable: int
    data_messages: int
    data_errors: int
    uptime: float


@final
@attrs.define(eq=False)
class ZMQServer:
    """A composed zmq server: a handler table on ROUTER control, any data socket beside it.

    ``port=None`` means ``config.default_port``; ``port=0`` picks a free port pair (read it
    back from :attr:`bound_port`). ``host`` overrides the
    interface TCP binds (``config.bind_host``, loopback by default). Handlers run on the I/O
    thread, so they should be quick; long work belongs to a worker that answers later through
    :meth:`send`.
    """

    handlers: Mapping[HandlerKey, ControlHandler] = attrs.field(factory=dict)
    port: int | None = None
    host: str | None = None
    transport_mode: TransportMode | None = None
    config: ZMQConfig = attrs.field(factory=ZMQConfig)
    role: str = "server"
    capabilities: tuple[str, ...] = ()
    data_socket_type: int = zmq.PUB
    data_handler: Callable[[Message], None] | None = None
    on_shutdown: Callable[[bool], None] | None = None
    curve: ServerCurve | None = None
    context: Context | None = None
    clock: Callable[[], float] = time.monotonic

    _pair: SocketPair | None = attrs.field(default=None, init=False)
    _topics: SubscriberTopics = attrs.field(factory=SubscriberTopics, init=False)
    _mailbox: Mailbox | None = attrs.field(default=None, init=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _loop_thread_id: int | None = attrs.field(default=None, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _stop: threading.Event = attrs.field(factory=threading.Event, init=False)
    _stopped: threading.Event = attrs.field(factory=threading.Event, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _started_at: float = attrs.field(default=0.0, init=False)
    _counts: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys(
            ("requests", "replies", "error_replies", "undeliverable", "data", "data_errors"), 0
        ),
        init=False,
    )

    # --- life cycle -----------------------------------------------------------------------

    def bind(self) -> ZMQServer:
        """Bind the sockets without serving yet (``start``/``serve_forever`` do it for you)."""
        with self._lock:
            if self._closed:
                raise ChannelClosed("this server was closed; create a new one")
            if self._pair is None:
                config = self.config
                if self.host is not None:
                    config = attrs.evolve(config, bind_host=self.host)
                port = config.default_port if self.port is None else self.port
                self._pair = SocketPair.bind(
                    port=port or None,
                    data_type=self.data_socket_type,
                    mode=self.transport_mode,
                    config=config,
                    curve=self.curve,
                    context=self.context,
                )
                self._mailbox = Mailbox.open()
                self._started_at = self.clock()
                logger.info(
                    "%s listening: control %s, data %s",
                    self.role,
                    self._pair.control_url,
                    self._pair.data_url,
                )
        return self

    def start(self) -> ZMQServer:
        """Bind, then serve in a background thread until :meth:`close`. Returns the server."""
        self.bind()
        with self._lock:
            if self._thread is not None or self._loop_thread_id is not None:
                raise RuntimeError("this server is already serving")
            self._thread = threading.Thread(
                target=self._run, name=f"zmqruntime-{self.role}-{self.bound_port}", daemon=True
            )
            self._thread.start()
        return self

    def serve_forever(self, *, handle_signals: bool = True) -> None:
        """Bind and serve in the calling thread until a shutdown request, :meth:`close`,
        :meth:`request_stop`, or (from the main thread) SIGINT/SIGTERM. Then close.
        """
        self.bind()
        with self._lock:
            if self._thread is not None or self._loop_thread_id is not None:
                raise RuntimeError("this server is already serving")
        previous: dict[signal.Signals, Any] = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            self._run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.close()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("%s received signal %d; stopping", self.role, signum)
        self.request_stop()

    def request_stop(self) -> None:
        """Ask the loop to finish; returns at once (safe from handlers and signal handlers)."""
        self._stop.set()
        if self._mailbox is not None:
            self._mailbox.wake()

    def wait_stopped(self, timeout: float = 10.0) -> bool:
        """Block until the serving loop has ended (or ``timeout`` seconds); True if it has."""
        return self._stopped.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop serving, join the I/O thread, close every socket. Idempotent.

        Raises :class:`ZMQTimeoutError` if the loop does not end within ``timeout`` seconds
        (``config.close_timeout`` by default), which means a handler is stuck.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            serving = self._thread is not None or self._loop_thread_id is not None
        self.request_stop()
        if serving:
            if threading.get_ident() == self._loop_thread_id:
                return  # called from a handler: the loop closes everything on its way out
            limit = self.config.close_timeout if timeout is None else timeout
            if not self._stopped.wait(limit):
                raise ZMQTimeoutError(
                    f"{self.role} loop did not stop within {limit}s; a handler is blocking it"
                )
            if self._thread is not None:
                self._thread.join(limit)
        else:
            self._release()

    def _release(self) -> None:
        if self._pair is not None:
            self._pair.close()
        if self._mailbox is not None:
            self._mailbox.close()

    def __enter__(self) -> ZMQServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- what a caller can ask ------------------------------------------------------------

    @property
    def sockets(self) -> SocketPair:
        """The bound socket pair (after :meth:`bind`/:meth:`start`)."""
        if self._pair is None:
            raise ChannelClosed("the server is not bound yet; call start() first")
        return self._pair

    @property
    def bound_port(self) -> int:
        """The data port the server is bound to."""
        return self.sockets.data_port

    @property
    def is_running(self) -> bool:
        """True while the serving loop runs."""
        running = self._thread is not None or self._loop_thread_id is not None
        return running and not self._stopped.is_set()

    def statistics(self) -> ServerStatistics:
        """Counters of requests, replies, errors and drops since the server was bound."""
        counts = dict(self._counts)
        uptime = self.clock() - self._started_at if self._pair is not None else 0.0
        return ServerStatistics(
            requests=counts["requests"],
            replies=counts["replies"],
            error_replies=counts["error_replies"],
            undeliverable=counts["undeliverable"],
            data_messages=counts["data"],
            data_errors=counts["data_errors"],
            uptime=uptime,
        )

    def send(self, peer: Peer, message: Message, *, request_id: int | None = None) -> None:
        """Send ``message`` to ``peer`` on the control socket, from any thread.

        ``request_id`` stamps the message as the reply to that request of the peer's. Encoding
        happens here, in the caller's thread; a message that cannot be encoded raises
        :class:`~zmqruntime.LocalProtocolError` here rather than on the I/O thread.
        """
        self._post(True, [*peer.envelope, *codec.encode(message, request_id=request_id)])

    def has_subscribers(self, topic: str | bytes = b"") -> bool:
        """Whether a message published on ``topic`` would reach anybody.

        Known only on an XPUB data socket (it hears every subscription); on any other data
        socket this is always True. Publishers use it to skip building unwanted events.
        """
        if self.data_socket_type != zmq.XPUB:
            return True
        return self._topics.wanted(topic.encode() if isinstance(topic, str) else topic)

    def publish(self, message: Message, topic: str | bytes | None = None) -> None:
        """Send ``message`` on the data socket (PUB: to every subscriber), from any thread.

        On a PUB socket every message leads with a topic frame (empty when ``topic`` is None)
        that subscribers filter on by prefix; other data sockets send the message alone.
        """
        frames = codec.encode(message)
        if self.data_socket_type in (zmq.PUB, zmq.XPUB):
            name = b"" if topic is None else topic
            frames.insert(0, name.encode() if isinstance(name, str) else name)
        self._post(False, frames)

    def _post(self, control: bool, frames: list[Buffer]) -> None:
        mailbox = self._mailbox
        if mailbox is None or mailbox.closed or self._stopped.is_set():
            raise ChannelClosed(f"{self.role} is not serving; nothing can be sent")
        mailbox.put((control, frames))

    # --- the I/O loop ---------------------------------------------------------------------

    def _run(self) -> None:
        pair, mailbox = self.sockets, self._mailbox
        assert mailbox is not None
        self._loop_thread_id = threading.get_ident()
        poller = zmq.Poller()
        poller.register(pair.control, zmq.POLLIN)
        if pair.data_receives:
            poller.register(pair.data, zmq.POLLIN)
        poller.register(mailbox.fileno, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                try:
                    ready = dict(poller.poll(_POLL_TICK_MS))
                    if mailbox.fileno in ready:
                        self._flush(pair, mailbox)
                    # Data first: a subscription that arrived with a request is known to
                    # the handler of that request.
                    if pair.data in ready:
                        self._drain_data(pair)
                    if pair.control in ready:
                        self._drain_control(pair)
                except zmq.ContextTerminated:
                    logger.warning("%s: zmq context terminated under the loop", self.role)
                    break
                except Exception:
                    # Never die: every message path has its own handling; this is the net.
                    logger.exception("%s: unexpected error in the serving loop", self.role)
            self._flush(pair, mailbox)  # replies queued before the stop still go out
        finally:
            try:
                self._release()
            finally:
                # Only now: whoever waits on this (close, wait_stopped) may rebind the address.
                self._stopped.set()
            logger.info("%s stopped", self.role)

    def _flush(self, pair: SocketPair, mailbox: Mailbox) -> None:
        for control, frames in mailbox.drain():
            self._send_now(pair.control if control else pair.data, frames)

    def _send_now(self, socket: zmq.Socket[bytes], frames: list[Buffer]) -> None:
        try:
            send_frames(socket, frames, zmq.NOBLOCK)
        except zmq.Again:
            self._counts["undeliverable"] += 1
            logger.warning("%s: peer is not reading (queue full); dropped a message", self.role)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self._counts["undeliverable"] += 1
            logger.info("%s: peer disconnected before its reply could be sent", self.role)

    def _drain_control(self, pair: SocketPair) -> None:
        for _ in range(_BURST):
            frames = receive_ready(pair.control)
            if frames is None:
                return
            self._counts["requests"] += 1
            split = envelope_end(frames)
            peer = Peer(tuple(frame.bytes for frame in frames[:split]))
            reply = self._answer(cast("list[Buffer]", frames[split:]), peer)
            if reply is not None:
                self._reply(pair, peer, reply)

    def _reply(self, pair: SocketPair, peer: Peer, reply: Message) -> None:
        try:
            frames = codec.encode(reply)
        except Exception as exc:  # a handler returned something unsendable
            logger.exception("%s: could not encode reply %r", self.role, type(reply).__name__)
            frames = codec.encode(
                ErrorReply(
                    request_id=getattr(reply, "request_id", None),
                    code=ErrorCode.HANDLER_FAILED,
                    message=f"server could not encode its reply: {exc}",
                )
            )
        if isinstance(reply, ErrorReply):
            self._counts["error_replies"] += 1
        self._counts["replies"] += 1
        self._send_now(pair.control, [*peer.envelope, *frames])

    def _answer(self, frames: list[Buffer], peer: Peer) -> Message | None:
        try:
            message = codec.decode(frames, max_header_bytes=self.config.max_header_bytes)
        except RemoteProtocolError as exc:
            logger.warning("%s: refused a malformed request: %s", self.role, exc)
            return ErrorReply(
                request_id=codec.peek_request_id(frames), code=exc.code, message=str(exc)
            )
        if isinstance(message, Ping):
            return self._pong(message)
        if isinstance(message, Shutdown) and ControlMessageType.SHUTDOWN not in self.handlers:
            return self._shutdown(message)
        message_type = message.TYPE
        # Stream messages too (progress …): a peer may need them ordered with its requests.
        handler = self.handlers.get(cast(HandlerKey, message_type))
        request_id = getattr(message, "request_id", None)
        if handler is None:
            return ErrorReply(
                request_id=request_id,
                code=ErrorCode.UNEXPECTED,
                message=f"a {self.role} does not accept {message_type.value!r} requests",
            )
        try:
            reply = handler(message, peer)
        except Exception as exc:
            logger.exception("%s: handler for %s failed", self.role, message_type.value)
            return ErrorReply(
                request_id=request_id,
                code=ErrorCode.HANDLER_FAILED,
                message=f"{type(exc).__name__}: {exc}",
            )
        if reply is not None and type(reply) not in MESSAGE_CLASSES:
            # Answer the request now: an error built later from the bad reply has no id.
            logger.error("%s: handler for %s returned %r", self.role, message_type.value, reply)
            return ErrorReply(
                request_id=request_id,
                code=ErrorCode.HANDLER_FAILED,
                message=f"the handler returned a {type(reply).__name__}, not a message",
            )
        return reply

    def _pong(self, ping: Ping) -> Pong:
        return Pong(
            request_id=ping.request_id,
            role=self.role,
            app_name=self.config.app_name,
            pid=os.getpid(),
            library_version=__version__,
            protocol_version=PROTOCOL_VERSION,
            uptime=self.clock() - self._started_at,
            capabilities=self.capabilities,
        )

    def _shutdown(self, request: Shutdown) -> ShutdownReply:
        logger.info("%s: shutdown requested (force=%s)", self.role, request.force)
        if self.on_shutdown is not None:
            try:
                self.on_shutdown(request.force)
            except Exception:
                logger.exception("%s: on_shutdown callback failed", self.role)
        self._stop.set()
        return ShutdownReply(request_id=request.request_id)

    def _drain_data(self, pair: SocketPair) -> None:
        notices = self.data_socket_type == zmq.XPUB
        for _ in range(_BURST):
            frames = receive_ready(pair.data)
            if frames is None:
                return
            if notices:  # XPUB: libzmq applied each frame that is a notice; so do we
                for frame in frames:
                    self._topics.note(frame.bytes)
                continue
            self._counts["data"] += 1
            try:
                message = codec.decode(
                    cast("list[Buffer]", frames), max_header_bytes=self.config.max_header_bytes
                )
            except RemoteProtocolError as exc:
                self._counts["data_errors"] += 1
                logger.warning("%s: dropped a malformed data message: %s", self.role, exc)
                continue
            if self.data_handler is None:
                self._counts["data_errors"] += 1
                logger.warning("%s: no data handler; dropped a %s", self.role, message.TYPE.value)
                continue
            try:
                self.data_handler(message)
            except Exception:
                self._counts["data_errors"] += 1
                logger.exception("%s: data handler failed on a %s", self.role, message.TYPE.value)
