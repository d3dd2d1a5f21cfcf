"""ZMQClient: requests with ids over a DEALER, from any number of threads.

The client connects a :class:`~zmqruntime.core.sockets.SocketPair` (DEALER control, and a data
socket such as SUB or PUSH) and owns it from one I/O thread. Callers in any thread send
requests through a mailbox and wait on a ``concurrent.futures.Future`` with a timeout. Each
request carries an id, so many may be in flight; a request that times out is simply forgotten
and its late reply dropped — the socket is never wedged (the classic REQ/REP failure).

A socket monitor watches the connection: when libzmq reports the server gone (ZMTP heartbeats
timed out, the connection broke), every request in flight fails at once with
:class:`~zmqruntime.ServerLost` instead of waiting out its timeout.
"""

from __future__ import annotations

import concurrent.futures
import logging
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias, cast, final

import attrs
import zmq
from zmq.utils.monitor import parse_monitor_message

from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core import codec
from zmqruntime.core.mailbox import Mailbox
from zmqruntime.core.messages import ErrorReply, Message, Ping, Pong
from zmqruntime.core.pending import PendingRequests
from zmqruntime.core.security import ClientCurve, describe_handshake_failure
from zmqruntime.core.sockets import Context, PushSockets, SocketPair, receive_ready, send_frames
from zmqruntime.errors import (
    ChannelClosed,
    RemoteProtocolError,
    ServerLost,
    ZMQTimeoutError,
)
from zmqruntime.protocols import Buffer

__all__ = ["ClientStatistics", "ZMQClient"]

logger = logging.getLogger(__name__)

_POLL_TICK_MS: Final = 1000
_BACKSTOP_SECONDS: Final = 5.0
_BURST: Final = 256
_MONITORED: Final = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_HANDSHAKE_FAILURES: Final = (
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
)
_AUTH_HINT: Final = (
    " CURVE is on: a server that does not accept this client's key drops it without a word, "
    "so check that the client's public key is allowed and the server key is right."
)

_Command: TypeAlias = tuple[
    Literal["request", "control", "data", "push", "subscribe", "unsubscribe"], Any
]


_REFUSING: Final = "the server is not taking requests"
_NOT_TAKING: Final = "its queue is full, or the handshake failed (CURVE authentication?)"


@final
@attrs.frozen(kw_only=True)
class ClientStatistics:
    """Counters of a client's traffic since it connected."""

    requests: int
    replies: int
    timeouts: int
    in_flight: int
    unsolicited: int
    dropped: int
    disconnects: int


@final
@attrs.define(eq=False)
class ZMQClient:
    """A composed zmq client: DEALER control with request ids, an optional data socket.

    ``on_message`` receives control messages that answer no request (e.g. an execution's
    completion pushed by the server); ``on_data`` receives decoded messages from a SUB data
    socket with their topic. Both run on the I/O thread and must be quick.
    ``on_disconnect`` is called (on the I/O thread) when the server connection breaks.

    The client connects on first use, or explicitly with :meth:`connect` / ``with``.
    """

    port: int | None = None
    host: str = "localhost"
    transport_mode: TransportMode | None = None
    config: ZMQConfig = attrs.field(factory=ZMQConfig)
    curve: ClientCurve | None = None
    data_socket_type: int = zmq.SUB
    connect_data: bool = True
    subscriptions: tuple[bytes, ...] = ()
    on_message: Callable[[Message], None] | None = None
    on_data: Callable[[Message, bytes | None], None] | None = None
    on_disconnect: Callable[[], None] | None = None
    context: Context | None = None
    name: str = "client"

    _pair: SocketPair | None = attrs.field(default=None, init=False)
    _mailbox: Mailbox | None = attrs.field(default=None, init=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _pending: PendingRequests = attrs.field(factory=PendingRequests, init=False)
    _stop: threading.Event = attrs.field(factory=threading.Event, init=False)
    _connected: threading.Event = attrs.field(factory=threading.Event, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _handshake_failure: str | None = attrs.field(default=None, init=False)
    _counts: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys(
            ("requests", "replies", "timeouts", "unsolicited", "dropped", "disconnects"), 0
        ),
        init=False,
    )

    # --- life cycle -----------------------------------------------------------------------

    def connect(self) -> ZMQClient:
        """Create the sockets and start the I/O thread (idempotent). Returns the client."""
        with self._lock:
            if self._closed:
                raise ChannelClosed(f"this {self.name} was closed; create a new one")
            if self._pair is not None:
                return self
            pair = SocketPair.connect(
                port=self.port,
                host=self.host,
                data_type=self.data_socket_type,
                connect_data=self.connect_data,
                mode=self.transport_mode,
                config=self.config,
                curve=self.curve,
                context=self.context,
            )
            if pair.data.type == zmq.SUB:
                for topic in self.subscriptions:
                    pair.data.setsockopt(zmq.SUBSCRIBE, topic)
            monitor = pair.control.get_monitor_socket(_MONITORED)
            self._pair = pair
            self._mailbox = Mailbox.open()
            self._thread = threading.Thread(
                target=self._run,
                args=(pair, self._mailbox, monitor),
                name=f"zmqruntime-{self.name}-{pair.data_port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Stop the I/O thread and close the sockets; requests in flight fail with
        :class:`ChannelClosed`. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread, mailbox = self._thread, self._mailbox
        self._stop.set()
        if mailbox is not None:
            mailbox.wake()
        if thread is not None and thread is not threading.current_thread():
            limit = self.config.close_timeout if timeout is None else timeout
            thread.join(limit)
            if thread.is_alive():
                raise ZMQTimeoutError(f"{self.name} I/O thread did not stop within {limit}s")

    def __enter__(self) -> ZMQClient:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def sockets(self) -> SocketPair:
        """The connected socket pair (connecting first if needed)."""
        self.connect()
        assert self._pair is not None
        return self._pair

    @property
    def connected(self) -> bool:
        """True while a handshake with the server has succeeded and not broken since."""
        return self._connected.is_set()

    @property
    def handshake_failure(self) -> str | None:
        """Why the last connection handshake with the server failed (e.g. CURVE refused this
        client, or only one end uses CURVE); None once a handshake has succeeded."""
        return self._handshake_failure

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until the control connection is up (or ``timeout``); True if it is."""
        self.connect()
        return self._connected.wait(self.config.connect_timeout if timeout is None else timeout)

    def statistics(self) -> ClientStatistics:
        """Counters of requests, replies, timeouts and drops."""
        counts = dict(self._counts)
        return ClientStatistics(
            requests=counts["requests"],
            replies=counts["replies"],
            timeouts=counts["timeouts"],
            in_flight=len(self._pending),
            unsolicited=counts["unsolicited"],
            dropped=counts["dropped"],
            disconnects=counts["disconnects"],
        )

    # --- requests -------------------------------------------------------------------------

    def request_async(
        self, message: Message, timeout: float | None = None
    ) -> concurrent.futures.Future[Message]:
        """Send a request now; the future resolves to its reply.

        The client stamps its own ``request_id`` on the message. An :class:`ErrorReply`
        resolves the future with :class:`RemoteError`; a lost server with
        :class:`ServerLost`; no reply within ``timeout`` seconds (``config.request_timeout``)
        with :class:`ZMQTimeoutError`. Cancel the future freely: a late reply is dropped.
        """
        limit = self.config.request_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        if not hasattr(message, "request_id"):
            raise TypeError(f"{type(message).__name__} is not a request (it has no request_id)")
        request_id, future = self._pending.open()
        try:
            frames = codec.encode(message, request_id=request_id)
            description = (
                f"no reply to {type(message).__name__} within {limit}s; is a server running "
                f"at port {self.port if self.port is not None else self.config.default_port}?"
                + (_AUTH_HINT if self.curve is not None else "")
            )
            self._post(("request", (frames, request_id, deadline, description)))
        except BaseException:
            self._pending.discard(request_id)
            raise
        self._counts["requests"] += 1
        return future

    def request(self, message: Message, timeout: float | None = None) -> Message:
        """Send a request and wait for its reply (``config.request_timeout`` by default).

        Raises :class:`ZMQTimeoutError` (a ``TimeoutError``) when no reply comes in time,
        :class:`RemoteError` when the server refuses, :class:`ServerLost` when it vanishes.
        """
        limit = self.config.request_timeout if timeout is None else timeout
        future = self.request_async(message, limit)
        try:
            # The I/O thread expires the request at its deadline; this is only a backstop.
            return future.result(limit + _BACKSTOP_SECONDS)
        except ZMQTimeoutError:
            raise  # expired by the I/O thread (also a TimeoutError: keep it apart)
        except concurrent.futures.TimeoutError:
            future.cancel()
            self._counts["timeouts"] += 1
            raise ZMQTimeoutError(
                f"no reply to {type(message).__name__} from {self.sockets.control_url} within "
                f"{limit}s; is a server running there?"
            ) from None

    def ping(self, timeout: float | None = None) -> Pong:
        """Ask the server who it is; raises like :meth:`request`."""
        reply = self.request(Ping(request_id=0), timeout)
        if not isinstance(reply, Pong):
            raise RemoteProtocolError(f"server answered ping with {type(reply).__name__}")
        return reply

    def send(self, message: Message) -> None:
        """Send a message on the control socket without waiting for anything."""
        self._post(("control", codec.encode(message)))

    def push(self, address: str, message: Message, *, curve: ClientCurve | None = None) -> None:
        """Send ``message`` one way to another endpoint's PULL socket at ``address``.

        For notices to a third party (an :class:`~zmqruntime.AckChannel` …) from any thread:
        the I/O thread keeps one PUSH socket per address (at most 64). ``curve`` holds the keys
        for that endpoint (default: this client's own). Only ``tcp://`` and ``ipc://``
        addresses are accepted (``ValueError`` otherwise); a message that cannot be queued is
        dropped with a warning.
        """
        if not address.startswith(("tcp://", "ipc://")):
            raise ValueError(f"{address!r} is not a tcp:// or ipc:// address")
        self._post(("push", (address, codec.encode(message), curve)))

    def send_data(self, message: Message) -> None:
        """Send a message on the data socket (e.g. PUSH), without waiting."""
        self._post(("data", codec.encode(message)))

    def subscribe(self, topic: bytes | str = b"") -> None:
        """Receive data messages whose topic starts with ``topic`` (SUB data socket only)."""
        self._post(("subscribe", topic.encode() if isinstance(topic, str) else topic))

    def unsubscribe(self, topic: bytes | str = b"") -> None:
        """Undo one :meth:`subscribe` of ``topic``."""
        self._post(("unsubscribe", topic.encode() if isinstance(topic, str) else topic))

    def _post(self, command: _Command) -> None:
        self.connect()
        mailbox = self._mailbox
        if mailbox is None or self._stop.is_set():
            raise ChannelClosed(f"this {self.name} is closed")
        mailbox.put(command)

    # --- the I/O loop ---------------------------------------------------------------------

    def _run(self, pair: SocketPair, mailbox: Mailbox, monitor: zmq.Socket[bytes]) -> None:
        poller = zmq.Poller()
        poller.register(pair.control, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        if pair.data_receives:
            poller.register(pair.data, zmq.POLLIN)
        poller.register(mailbox.fileno, zmq.POLLIN)
        pushers = PushSockets(pair.context, self.config, self.curve)
        try:
            while not self._stop.is_set():
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
                    if self._pending.next_deadline() is not None:
                        self._counts["timeouts"] += self._pending.expire(time.monotonic())
                except zmq.ContextTerminated:
                    break
                except Exception:
                    logger.exception("%s: unexpected error in the I/O loop", self.name)
            self._flush(pair, mailbox, pushers)
        finally:
            self._connected.clear()
            self._pending.fail_all(ChannelClosed(f"{self.name} closed"))
            pair.control.disable_monitor()
            monitor.close(linger=0)
            pushers.close()
            pair.close()
            mailbox.close()

    def _poll_timeout_ms(self) -> int:
        deadline = self._pending.next_deadline()
        if deadline is None:
            return _POLL_TICK_MS
        wait = (deadline - time.monotonic()) * 1000
        return max(0, min(_POLL_TICK_MS, int(wait) + 1))

    def _flush(self, pair: SocketPair, mailbox: Mailbox, pushers: PushSockets) -> None:
        for kind, payload in mailbox.drain():
            if kind == "request":
                frames, request_id, deadline, description = payload
                try:
                    send_frames(pair.control, frames, zmq.NOBLOCK)
                except zmq.Again:  # no connection that takes messages
                    why = self._handshake_failure or _NOT_TAKING
                    self._pending.fail(request_id, ServerLost(f"{_REFUSING}: {why}"))
                    continue
                self._pending.arm(request_id, deadline, description)
                continue
            if kind == "push":
                if not pushers.send(*payload):
                    self._counts["dropped"] += 1
                continue
            if kind == "subscribe":
                pair.data.setsockopt(zmq.SUBSCRIBE, payload)
                continue
            if kind == "unsubscribe":
                pair.data.setsockopt(zmq.UNSUBSCRIBE, payload)
                continue
            socket = pair.control if kind == "control" else pair.data
            try:
                send_frames(socket, payload, zmq.NOBLOCK)
            except zmq.Again:
                self._counts["dropped"] += 1
                logger.warning("%s: send queue full; dropped an outgoing message", self.name)

    def _drain_control(self, pair: SocketPair, limit: int = _BURST) -> None:
        for _ in range(limit):
            frames = receive_ready(pair.control)
            if frames is None:
                return
            try:
                message = codec.decode(
                    cast("list[Buffer]", frames), max_header_bytes=self.config.max_header_bytes
                )
            except RemoteProtocolError as exc:
                self._counts["dropped"] += 1
                logger.warning("%s: dropped a malformed reply: %s", self.name, exc)
                continue
            self._deliver(message)

    def _deliver(self, message: Message) -> None:
        request_id = getattr(message, "request_id", None)
        if request_id is not None and self._pending.resolve(request_id, message):
            self._counts["replies"] += 1
            return
        if isinstance(message, ErrorReply) and request_id is None:
            logger.warning("%s: server reported an error: %s", self.name, message.message)
            return
        if request_id is not None:
            logger.debug("%s: dropped a late reply to request %d", self.name, request_id)
            return
        self._counts["unsolicited"] += 1
        if self.on_message is None:
            logger.debug("%s: no on_message callback; dropped a %s", self.name, message.TYPE)
            return
        try:
            self.on_message(message)
        except Exception:
            logger.exception("%s: on_message callback failed", self.name)

    def _drain_data(self, pair: SocketPair) -> None:
        subscribed = pair.data.type == zmq.SUB
        for _ in range(_BURST):
            frames = receive_ready(pair.data)
            if frames is None:
                return
            topic: bytes | None = None
            body = cast("list[Buffer]", frames)
            if subscribed and frames:  # published messages lead with their topic frame
                topic, body = frames[0].bytes, body[1:]
            try:
                message = codec.decode(body, max_header_bytes=self.config.max_header_bytes)
            except RemoteProtocolError as exc:
                self._counts["dropped"] += 1
                logger.warning("%s: dropped a malformed data message: %s", self.name, exc)
                continue
            if self.on_data is None:
                continue
            try:
                self.on_data(message, topic)
            except Exception:
                logger.exception("%s: on_data callback failed", self.name)

    def _drain_monitor(self, monitor: zmq.Socket[bytes], pair: SocketPair) -> None:
        while True:
            try:
                event = parse_monitor_message(monitor.recv_multipart(flags=zmq.NOBLOCK))
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshake_failure = None
                self._connected.set()
            elif event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                logger.warning("%s: the server refused this client's credentials", self.name)
                self._handshake_failure = (
                    "the server refused this client's CURVE credentials (authentication "
                    "failed); is the client's public key in its allowed keys?"
                )
                self._pending.fail_all(ServerLost(self._handshake_failure))
            elif event["event"] in _HANDSHAKE_FAILURES:
                self._handshake_failure = describe_handshake_failure(
                    event["event"], event["value"], curve=self.curve is not None
                )
                logger.warning("%s: %s", self.name, self._handshake_failure)
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self._connected.clear()
                self._counts["disconnects"] += 1
                # Replies the server sent before it went are already queued on the control
                # socket (the poll that saw this event may have looked at it a moment too
                # early); deliver them before failing what is still pending.
                self._drain_control(pair, limit=sys.maxsize)
                level = logging.WARNING if len(self._pending) else logging.INFO
                logger.log(level, "%s: lost the connection to %s", self.name, event["endpoint"])
                failure = self._handshake_failure
                self._pending.fail_all(
                    ServerLost(
                        f"the server at {event['endpoint']!r} went away mid-request"
                        if failure is None
                        else f"no connection to the server at {event['endpoint']!r}: {failure}"
                    )
                )
                if self.on_disconnect is not None:
                    try:
                        self.on_disconnect()
                    except Exception:
                        logger.exception("%s: on_disconnect callback failed", self.name)
