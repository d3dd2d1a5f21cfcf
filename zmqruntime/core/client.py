"""ZMQClient: requests with ids over a DEALER, from any number of threads.

Callers wait on a ``concurrent.futures.Future`` with a timeout. Each request carries an id, so
many may be in flight, and a late reply to a forgotten request is dropped: the socket is never
wedged. When libzmq reports the server gone (ZMTP heartbeats timed out, the connection broke),
every request in flight fails at once with :class:`~zmqruntime.ServerLost`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Literal, TypeAlias, TypeVar, final

import attrs
import zmq

from zmqruntime.config import ZMQConfig
from zmqruntime.core import codec
from zmqruntime.core.client_loop import ClientLoop
from zmqruntime.core.connection import MONITORED, ConnectionWatch
from zmqruntime.core.contexts import CLIENT_CONTEXT
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.lifecycle import close_on_exit, connect_on_enter
from zmqruntime.core.mailbox import Mailbox
from zmqruntime.core.messages import AppReply, AppRequest, Message, Ping, Pong
from zmqruntime.core.pending import OnReply, PendingRequests
from zmqruntime.core.security import ClientCurve
from zmqruntime.core.serializers import SafeSerializer, serializer_name
from zmqruntime.core.socket_options import Context
from zmqruntime.core.sockets import SocketPair
from zmqruntime.errors import ChannelClosed, RemoteProtocolError, ZMQTimeoutError
from zmqruntime.protocols import TaskSerializer

__all__ = ["ClientStatistics", "ZMQClient"]

logger = logging.getLogger(__name__)

_BACKSTOP_SECONDS: Final = 5.0
_COUNTERS: Final = ("requests", "replies", "timeouts", "unsolicited", "dropped")
_AUTH_HINT: Final = (
    " CURVE is on: a server that does not accept this client's key drops it without a word, "
    "so check that the client's public key is allowed and the server key is right."
)

_Command: TypeAlias = tuple[
    Literal["request", "control", "data", "push", "subscribe", "unsubscribe"], Any
]
_T = TypeVar("_T")


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

    Callbacks run on the I/O thread and must be quick: ``on_message`` gets control messages
    that answer no request, ``on_data`` decoded data messages with their topic (SUB), and
    ``on_disconnect`` is called when the server connection breaks. The client connects on
    first use, or explicitly with :meth:`connect` / ``with``.
    """

    endpoint: Endpoint
    data_socket_type: int = zmq.SUB
    connect_data: bool = True
    subscriptions: tuple[bytes, ...] = ()
    on_message: Callable[[Message], None] | None = None
    on_data: Callable[[Message, bytes | None], None] | None = None
    on_disconnect: Callable[[], None] | None = None
    context: Context | None = None
    """The zmq context of its sockets; None: the process's shared client context."""
    name: str = "client"
    serializer: TaskSerializer = attrs.field(factory=SafeSerializer)
    """Encodes and decodes the payloads of application requests and events."""

    _pair: SocketPair | None = attrs.field(default=None, init=False)
    _mailbox: Mailbox | None = attrs.field(default=None, init=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _pending: PendingRequests = attrs.field(factory=PendingRequests, init=False)
    _stop: threading.Event = attrs.field(factory=threading.Event, init=False)
    _watch: ConnectionWatch = attrs.field(init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _counts: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(_COUNTERS, 0), init=False)

    @_watch.default
    def _make_watch(self) -> ConnectionWatch:
        return ConnectionWatch(self.name, curve=self.endpoint.curve is not None)

    @property
    def config(self) -> ZMQConfig:
        """The endpoint's configuration."""
        return self.endpoint.config

    @property
    def curve(self) -> ClientCurve | None:
        """This client's CURVE keys (from the endpoint), if any."""
        return self.endpoint.client_curve

    def listen(
        self,
        *,
        on_message: Callable[[Message], None] | None = None,
        on_data: Callable[[Message, bytes | None], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
    ) -> None:
        """Set the callbacks of a component that was given this client, before it connects;
        ``RuntimeError`` once connected, or when a callback is already set."""
        wanted = {"on_message": on_message, "on_data": on_data, "on_disconnect": on_disconnect}
        with self._lock:
            if self._pair is not None:
                raise RuntimeError(f"{self.name} is already connected; call listen() before")
            for name, callback in wanted.items():
                if callback is not None:
                    if getattr(self, name) is not None:
                        raise RuntimeError(f"{self.name} already has an {name} callback")
                    setattr(self, name, callback)

    # --- life cycle -----------------------------------------------------------------------

    def connect(self) -> ZMQClient:
        """Create the sockets and start the I/O thread (idempotent). Returns the client."""
        with self._lock:
            if self._closed:
                raise ChannelClosed(f"this {self.name} was closed; create a new one")
            if self._pair is not None:
                return self
            # Given none, the client borrows the process's shared context (see
            # CLIENT_CONTEXT); its I/O thread gives it back once its sockets are closed.
            context = CLIENT_CONTEXT.acquire() if self.context is None else self.context
            release = CLIENT_CONTEXT.release if self.context is None else None
            try:
                pair = SocketPair.connect(
                    self.endpoint,
                    data_type=self.data_socket_type,
                    connect_data=self.connect_data,
                    context=context,
                )
            except BaseException:
                if release is not None:
                    release()
                raise
            if pair.data.type == zmq.SUB:
                for topic in self.subscriptions:
                    pair.data.setsockopt(zmq.SUBSCRIBE, topic)
            monitor = pair.control.get_monitor_socket(MONITORED)
            self._pair = pair
            self._mailbox = Mailbox.open()
            loop = ClientLoop(
                self.name,
                self.config,
                self.curve,
                pair,
                self._mailbox,
                monitor,
                self._pending,
                self._watch,
                self._counts,
                self._stop,
                self.on_message,
                self.on_data,
                self.on_disconnect,
                release,
            )
            self._thread = threading.Thread(
                target=loop.run, name=f"zmqruntime-{self.name}-{pair.data_port}", daemon=True
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

    __enter__ = connect_on_enter
    __exit__ = close_on_exit

    @property
    def sockets(self) -> SocketPair:
        """The connected socket pair (connecting first if needed)."""
        self.connect()
        assert self._pair is not None
        return self._pair

    @property
    def connected(self) -> bool:
        """True while a handshake with the server has succeeded and not broken since."""
        return self._watch.connected.is_set()

    @property
    def handshake_failure(self) -> str | None:
        """Why the last connection handshake with the server failed (e.g. CURVE refused this
        client, or only one end uses CURVE); None once a handshake has succeeded."""
        return self._watch.handshake_failure

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until the control connection is up (or ``timeout``); True if it is."""
        self.connect()
        return self._watch.connected.wait(
            self.config.connect_timeout if timeout is None else timeout
        )

    def statistics(self) -> ClientStatistics:
        """Counters of requests, replies, timeouts and drops."""
        return ClientStatistics(
            **self._counts, in_flight=len(self._pending), disconnects=self._watch.disconnects
        )

    # --- requests -------------------------------------------------------------------------

    def request_async(
        self, message: Message, timeout: float | None = None
    ) -> concurrent.futures.Future[Message]:
        """Send a request now (stamped with the client's own ``request_id``); the future
        resolves to its reply. An :class:`ErrorReply` fails it with :class:`RemoteError`; a lost
        server with :class:`ServerLost`; no reply within ``timeout`` seconds
        (``config.request_timeout``) with :class:`ZMQTimeoutError`. Cancel the future freely: a
        late reply is dropped."""
        request_id, future = self._pending.open()
        self._send_request(message, request_id, timeout)
        return future

    def request_then(
        self, message: Message, on_reply: OnReply, timeout: float | None = None
    ) -> None:
        """Send a request now; ``on_reply`` is called once, on the I/O thread, with the reply
        or with the error that fails it (as :meth:`request_async`'s future would be). No future
        is made and no other thread is woken: for callers that keep a handle of their own.
        What sending raises (``ChannelClosed``, ``LocalProtocolError``) is raised here at once,
        and then ``on_reply`` is never called."""
        self._send_request(message, self._pending.open_callback(on_reply), timeout)

    def _send_request(self, message: Message, request_id: int, timeout: float | None) -> None:
        limit = self.config.request_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        try:
            if not hasattr(message, "request_id"):
                name = type(message).__name__
                raise TypeError(f"{name} is not a request (it has no request_id)")
            frames = codec.encode(message, request_id=request_id)
            describe = functools.partial(self._timed_out, type(message).__name__, limit)
            self._post(("request", (frames, request_id, deadline, describe)))
        except BaseException:
            self._pending.discard(request_id)
            raise
        self._counts["requests"] += 1

    def _timed_out(self, what: str, limit: float) -> str:
        return f"no reply to {what} within {limit}s; is a server running at {self.endpoint}?" + (
            _AUTH_HINT if self.curve is not None else ""
        )

    def request(self, message: Message, timeout: float | None = None) -> Message:
        """Send a request and wait for its reply (``config.request_timeout`` by default). Raises
        :class:`ZMQTimeoutError` (a ``TimeoutError``) when no reply comes in time,
        :class:`RemoteError` when the server refuses, :class:`ServerLost` when it vanishes."""
        limit = self.config.request_timeout if timeout is None else timeout
        return self._wait(self.request_async(message, limit), limit, type(message).__name__)

    def call_async(
        self, name: str, payload: Any = None, *, timeout: float | None = None
    ) -> concurrent.futures.Future[Any]:
        """Send the application request ``name``; the future resolves to the reply's payload.
        ``payload`` and the reply travel through :attr:`serializer` (arrays out of band). The
        future fails like :meth:`request_async`'s; a handler's exception arrives as
        :class:`~zmqruntime.RemoteError` with its ``error_type`` and ``remote_traceback``."""
        request = AppRequest(
            request_id=0,
            name=name,
            serializer=serializer_name(self.serializer),
            payload=tuple(self.serializer.dumps(payload)),
        )
        reply = self.request_async(request, timeout)
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()
        result.add_done_callback(lambda done: done.cancelled() and reply.cancel())
        reply.add_done_callback(lambda done: _settle_call(done, result, self.serializer))
        return result

    def call(self, name: str, payload: Any = None, *, timeout: float | None = None) -> Any:
        """Send the application request ``name`` and wait for the reply's payload. Raises
        :class:`~zmqruntime.RemoteError` (the handler failed, the name is unknown, the server is
        busy), :class:`ZMQTimeoutError` and :class:`ServerLost` like :meth:`request`."""
        limit = self.config.request_timeout if timeout is None else timeout
        return self._wait(self.call_async(name, payload, timeout=limit), limit, f"request {name!r}")

    def _wait(self, future: concurrent.futures.Future[_T], limit: float, what: str) -> _T:
        try:
            # The I/O thread expires the request at its deadline; this is only a backstop.
            return future.result(limit + _BACKSTOP_SECONDS)
        except ZMQTimeoutError:
            raise  # expired by the I/O thread (also a TimeoutError: keep it apart)
        except concurrent.futures.TimeoutError:
            future.cancel()
            self._counts["timeouts"] += 1
            raise ZMQTimeoutError(
                f"no reply to {what} from {self.sockets.control_url} within {limit}s; is a server "
                "running there?"
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
        """Send ``message`` one way, from any thread, to the PULL socket at ``address`` (only
        ``tcp://`` and ``ipc://``: ``ValueError`` otherwise) with the keys ``curve`` (default:
        this client's own). The I/O thread keeps one PUSH socket per address (at most 64); a
        message that cannot be queued is dropped with a warning.
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


def _settle_call(
    reply: concurrent.futures.Future[Message],
    result: concurrent.futures.Future[Any],
    serializer: TaskSerializer,
) -> None:
    """Resolve an application call's future from the future of its reply message."""
    if result.done():
        return
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled meanwhile
        try:
            message = reply.result()
            if not isinstance(message, AppReply):
                raise RemoteProtocolError(f"a request was answered with {type(message).__name__}")
            result.set_result(serializer.loads(message.payload))
        except BaseException as exc:  # the future carries whatever happened
            result.set_exception(exc)
