"""ZMQServer: a control socket answered by a table of handlers, plus a data socket.

Behaviour is supplied, never subclassed: ``handlers`` maps each
:class:`~zmqruntime.ControlMessageType` the server accepts to a callable
``handler(message, peer) -> reply | None`` (:mod:`zmqruntime.core.router` says what the server
answers itself); ``data_handler`` receives decoded messages from a receiving data socket. One
I/O thread owns the sockets: the server's own (:meth:`ZMQServer.start`) or the caller's
(:meth:`ZMQServer.serve_forever`); other threads send through :meth:`ZMQServer.send` and
:meth:`ZMQServer.publish`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, final

import attrs
import zmq

from zmqruntime.config import ZMQConfig
from zmqruntime.core import codec
from zmqruntime.core.descriptors import ServerDescriptor
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.lifecycle import (
    already_started,
    close_on_exit,
    start_on_enter,
    stop_on_signals,
)
from zmqruntime.core.mailbox import Mailbox
from zmqruntime.core.messages import AppEvent, Message
from zmqruntime.core.requests import RequestTable, as_request_table
from zmqruntime.core.router import ControlHandler, ControlRouter, HandlerKey
from zmqruntime.core.serializers import SafeSerializer
from zmqruntime.core.server_loop import Peer, ServerLoop
from zmqruntime.core.socket_options import Context
from zmqruntime.core.sockets import SocketPair
from zmqruntime.core.subscriptions import SubscriberTopics
from zmqruntime.errors import ChannelClosed, ZMQTimeoutError
from zmqruntime.protocols import Buffer, TaskSerializer

__all__ = ["EVENT_PREFIX", "ControlHandler", "Peer", "ServerStatistics", "ZMQServer", "event_topic"]

logger = logging.getLogger(__name__)

EVENT_PREFIX: Final = b"event:"
"""What an application event's zmq topic starts with, apart from execution ids' progress."""


def event_topic(topic: str) -> bytes:
    """The zmq topic that carries application events named ``topic``."""
    return EVENT_PREFIX + topic.encode()


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


_COUNTERS: Final = [field.name for field in attrs.fields(ServerStatistics)][:-1]  # not uptime


@final
@attrs.define(eq=False)
class ZMQServer:
    """A composed zmq server: a handler table on ROUTER control, any data socket beside it.

    It binds ``endpoint`` (port 0 picks a free port pair: read it back from
    :attr:`bound_port`). Handlers run on the I/O thread, so they should be quick; long work
    belongs to a worker that answers later through :meth:`send`. While bound it keeps a
    descriptor in the runtime folder for discovery (:mod:`zmqruntime.core.descriptors`); once a
    shutdown is accepted, its pongs say ``draining``.
    """

    endpoint: Endpoint
    handlers: Mapping[HandlerKey, ControlHandler] = attrs.field(factory=dict)
    role: str = "server"
    capabilities: tuple[str, ...] = ()
    data_socket_type: int = zmq.PUB
    data_handler: Callable[[Message], None] | None = None
    data_paused: Callable[[], bool] | None = None
    """Checked by the I/O thread before reading data: while true the data socket is not read;
    call :meth:`wake` when it turns false."""
    on_shutdown: Callable[[bool], None] | None = None
    context: Context | None = None
    clock: Callable[[], float] = time.monotonic
    requests: RequestTable = attrs.field(factory=RequestTable, converter=as_request_table)
    """The application's own named requests (a mapping of handlers is taken as a table)."""
    serializer: TaskSerializer = attrs.field(factory=SafeSerializer)
    """Encodes and decodes the payloads of application requests and events."""
    application: str = ""
    """The application's name (and version) in this server's descriptor, for discovery."""

    _pair: SocketPair | None = attrs.field(default=None, init=False)
    _topics: SubscriberTopics = attrs.field(factory=SubscriberTopics, init=False)
    _mailbox: Mailbox | None = attrs.field(default=None, init=False)
    _loop: ServerLoop | None = attrs.field(default=None, init=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _loop_thread_id: int | None = attrs.field(default=None, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _stop: threading.Event = attrs.field(factory=threading.Event, init=False)
    _stopped: threading.Event = attrs.field(factory=threading.Event, init=False)
    _draining: threading.Event = attrs.field(factory=threading.Event, init=False)
    _descriptor: ServerDescriptor | None = attrs.field(default=None, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _started_at: float = attrs.field(default=0.0, init=False)
    _counts: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(_COUNTERS, 0), init=False)

    @property
    def config(self) -> ZMQConfig:
        """The endpoint's configuration."""
        return self.endpoint.config

    def route(
        self,
        handlers: Mapping[HandlerKey, ControlHandler],
        *,
        data_handler: Callable[[Message], None] | None = None,
        data_paused: Callable[[], bool] | None = None,
        on_shutdown: Callable[[bool], None] | None = None,
    ) -> None:
        """Add handlers (and the data handler and pause, the shutdown hook) before the start;
        ``RuntimeError`` once it is bound, or when a request type already has a handler."""
        with self._lock:
            if self._pair is not None:
                raise RuntimeError(f"{self.role} is already bound; route handlers before start()")
            taken = set(handlers) & set(self.handlers)
            if taken:
                names = ", ".join(sorted(key.value for key in taken))
                raise RuntimeError(f"{self.role} already has handlers for {names}")
            self.handlers = {**self.handlers, **handlers}
            self.data_handler = data_handler or self.data_handler
            self.data_paused = data_paused or self.data_paused
            self.on_shutdown = on_shutdown or self.on_shutdown

    # --- life cycle -----------------------------------------------------------------------

    def bind(self) -> ZMQServer:
        """Bind the sockets without serving yet (``start``/``serve_forever`` do it for you)."""
        with self._lock:
            if self._closed:
                raise ChannelClosed("this server was closed; create a new one")
            if self._pair is not None:
                return self
            pair = self._pair = SocketPair.bind(
                self.endpoint, data_type=self.data_socket_type, context=self.context
            )
            self._mailbox = Mailbox.open()
            self._started_at = self.clock()
            router = ControlRouter(
                self.role,
                self.config,
                self.capabilities,
                self.handlers,
                self.requests,
                self.serializer,
                self._stop,
                self._answer_later,
                self.on_shutdown,
                self.clock,
                self._started_at,
                self._draining,
            )
            self._loop = ServerLoop(
                self.role,
                self.config,
                pair,
                self._mailbox,
                self._stop,
                self._topics,
                self._counts,
                router.answer,
                self.data_handler,
                self.data_paused,
            )
            descriptor = ServerDescriptor.of(self.role, self.application, pair.endpoint)
            self._descriptor = descriptor if descriptor.publish(self.config) else None
            logger.info(
                "%s listening: control %s, data %s", self.role, pair.control_url, pair.data_url
            )
        return self

    def start(self) -> ZMQServer:
        """Bind, then serve in a background thread until :meth:`close`. Returns the server."""
        self.bind()
        with self._lock:
            if self._thread is not None or self._loop_thread_id is not None:
                raise already_started("server")
            self._thread = threading.Thread(
                target=self._run, name=f"zmqruntime-{self.role}-{self.bound_port}", daemon=True
            )
            self._thread.start()
        return self

    def serve_forever(self, *, handle_signals: bool = True) -> None:
        """Bind and serve in the calling thread until a shutdown request, :meth:`close`,
        :meth:`request_stop`, or (from the main thread) SIGINT/SIGTERM. Then close."""
        self.bind()
        with self._lock:
            if self._thread is not None or self._loop_thread_id is not None:
                raise already_started("server")
        with stop_on_signals(self._on_signal, enabled=handle_signals):
            try:
                self._run()
            finally:
                self.close()

    def _on_signal(self, signum: int) -> None:
        logger.info("%s received signal %d; stopping", self.role, signum)
        self.request_stop()

    def request_stop(self) -> None:
        """Ask the loop to finish; returns at once (safe from handlers and signal handlers)."""
        self._draining.set()
        self._stop.set()
        if self._mailbox is not None:
            self._mailbox.wake()

    def wake(self) -> None:
        """Have the I/O thread check ``data_paused`` again now (thread-safe)."""
        if self._mailbox is not None:
            self._mailbox.wake()

    def wait_stopped(self, timeout: float = 10.0) -> bool:
        """Block until the serving loop has ended (or ``timeout`` seconds); True if it has."""
        return self._stopped.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop serving, join the I/O thread, close every socket; idempotent. Raises
        :class:`ZMQTimeoutError` if the loop does not end within ``timeout`` seconds
        (``config.close_timeout`` by default), which means a handler is stuck."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            serving = self._thread is not None or self._loop_thread_id is not None
        self.request_stop()
        if not serving:
            self._release()
        elif threading.get_ident() != self._loop_thread_id:  # in a handler: the loop closes all
            limit = self.config.close_timeout if timeout is None else timeout
            if not self._stopped.wait(limit):
                raise ZMQTimeoutError(
                    f"{self.role} loop did not stop within {limit}s; a handler is blocking it"
                )
            if self._thread is not None:
                self._thread.join(limit)

    def _release(self) -> None:
        self.requests.close(self.config.close_timeout / 2)  # the rest is the loop's
        if self._pair is not None:
            self._pair.close()
        if self._mailbox is not None:
            self._mailbox.close()
        if self._descriptor is not None:
            self._descriptor.withdraw(self.config)

    __enter__ = start_on_enter
    __exit__ = close_on_exit

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

    @property
    def draining(self) -> bool:
        """True once a shutdown began (an accepted shutdown request, :meth:`request_stop`,
        :meth:`close`): its pongs say ``draining``, so nobody takes it for a ready server."""
        return self._draining.is_set()

    def begin_draining(self) -> None:
        """Say ``draining`` in pongs from now on, while still serving: for a component that
        finishes its work before it stops (thread-safe, idempotent)."""
        self._draining.set()

    def statistics(self) -> ServerStatistics:
        """Counters of requests, replies, errors and drops since the server was bound."""
        uptime = self.clock() - self._started_at if self._pair is not None else 0.0
        return ServerStatistics(**self._counts, uptime=uptime)

    def send(self, peer: Peer, message: Message, *, request_id: int | None = None) -> None:
        """Send ``message`` to ``peer`` on the control socket, from any thread, as the reply to
        its request ``request_id`` if given. A message that cannot be encoded raises
        :class:`~zmqruntime.LocalProtocolError` here, in the caller's thread."""
        self._post(True, [*peer.envelope, *codec.encode(message, request_id=request_id)])

    def has_subscribers(self, topic: str | bytes = b"") -> bool:
        """Whether a message published on ``topic`` would reach anybody: known only on an XPUB
        data socket (it hears every subscription); on any other data socket always True."""
        if self.data_socket_type != zmq.XPUB:
            return True
        return self._topics.wanted(topic.encode() if isinstance(topic, str) else topic)

    def publish_event(self, topic: str, payload: Any) -> bool:
        """Publish an application event on ``topic`` (any thread), its payload encoded with
        :attr:`serializer`; False, and nothing encoded, if :meth:`has_subscribers` says no."""
        key = event_topic(topic)
        if not self.has_subscribers(key):
            return False
        self.publish(AppEvent(topic=topic, payload=tuple(self.serializer.dumps(payload))), key)
        return True

    def _answer_later(self, peer: Peer, reply: Message) -> None:
        try:
            self.send(peer, reply)
        except ChannelClosed:
            logger.debug("%s closed before a reply could be sent", self.role)

    def publish(self, message: Message, topic: str | bytes | None = None) -> None:
        """Send ``message`` on the data socket, from any thread. On a PUB socket it leads with
        a topic frame (empty when ``topic`` is None) that subscribers filter on by prefix."""
        frames = codec.encode(message)
        if self.data_socket_type in (zmq.PUB, zmq.XPUB):
            topic = topic or b""
            frames.insert(0, topic.encode() if isinstance(topic, str) else topic)
        self._post(False, frames)

    def _post(self, control: bool, frames: list[Buffer]) -> None:
        mailbox = self._mailbox
        if mailbox is None or mailbox.closed or self._stopped.is_set():
            raise ChannelClosed(f"{self.role} is not serving; nothing can be sent")
        mailbox.put((control, frames))

    # --- the I/O thread -------------------------------------------------------------------

    def _run(self) -> None:
        assert self._loop is not None
        self._loop_thread_id = threading.get_ident()
        try:
            self._loop.run()
        finally:
            try:
                self._release()
            finally:
                # Only now: whoever waits on this (close, wait_stopped) may rebind the address.
                self._stopped.set()
            logger.info("%s stopped", self.role)
