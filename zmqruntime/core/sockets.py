"""SocketPair: the control socket and data socket of one endpoint, opened and closed together.

This is the only code in zmqruntime that creates zmq sockets for servers and clients. A
server binds a pair (ROUTER control + a data socket such as PUB or PULL) at a data port and
its control port (data port + ``control_port_offset``); a client connects a pair (DEALER
control + a matching data socket). Socket options that every endpoint wants — linger, high
water marks, ZMTP heartbeats, the maximum message size, CURVE — are applied here, once.

A pair is created in one thread and may then be handed to exactly one other thread (the I/O
thread that owns it from then on). ``close()`` must run in the owning thread.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from typing import Any, cast, final

import attrs
import zmq
import zmq.auth.thread

from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.security import ClientCurve, ServerCurve, is_loopback_host
from zmqruntime.core.transport import (
    ensure_ipc_directory,
    find_free_ipc_port,
    find_free_port_pair,
    get_default_transport_mode,
    get_ipc_socket_path,
    get_zmq_transport_url,
    is_ipc_socket_in_use,
    remove_ipc_socket,
)
from zmqruntime.errors import AddressInUseError, ConfigurationError

__all__ = [
    "PushSockets",
    "SocketPair",
    "envelope_end",
    "open_connected_socket",
    "receive_ready",
    "send_frames",
]

logger = logging.getLogger(__name__)

# XPUB receives too: its subscribers' subscription notices.
_RECEIVING_TYPES = frozenset(
    {zmq.ROUTER, zmq.DEALER, zmq.PULL, zmq.SUB, zmq.XPUB, zmq.PAIR, zmq.REP}
)
_BIND_ATTEMPTS = 5
_PUSH_RECONNECT_MAX = 5.0

Context = zmq.Context[zmq.Socket[bytes]]
Socket = zmq.Socket[bytes]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _configure(socket: Socket, config: ZMQConfig, *, bound: bool) -> None:
    socket.setsockopt(zmq.LINGER, _ms(config.linger))
    socket.setsockopt(zmq.SNDHWM, config.send_high_water_mark)
    socket.setsockopt(zmq.RCVHWM, config.send_high_water_mark)
    if socket.type not in (zmq.PUB, zmq.XPUB, zmq.SUB):
        # ZMTP heartbeats are answered by libzmq's I/O thread, outside the GIL, so a busy
        # executor never makes a healthy peer look dead.
        socket.setsockopt(zmq.HEARTBEAT_IVL, _ms(config.heartbeat_interval))
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, _ms(config.heartbeat_timeout))
        socket.setsockopt(zmq.HEARTBEAT_TTL, _ms(config.heartbeat_timeout))
    if bound:
        socket.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes)
    if socket.type == zmq.ROUTER:
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)


def _is_receiving(socket_type: int) -> bool:
    return socket_type in _RECEIVING_TYPES


@final
@attrs.define(eq=False)
class SocketPair:
    """The control and data socket of one endpoint, plus what they need to be closed cleanly.

    Build one with :meth:`bind` (servers) or :meth:`connect` (clients); never directly.
    """

    context: Context
    control: Socket
    data: Socket
    data_port: int
    control_url: str
    data_url: str
    mode: TransportMode
    owns_context: bool
    authenticator: zmq.auth.thread.ThreadAuthenticator | None = None
    ipc_ports: tuple[int, ...] = ()
    config: ZMQConfig = attrs.field(factory=ZMQConfig)
    closed: bool = False

    @property
    def control_port(self) -> int:
        """The control port (data port + the configured offset)."""
        return self.config.control_port(self.data_port)

    @property
    def data_receives(self) -> bool:
        """Whether the data socket is one that receives (PULL, SUB …) and so must be polled."""
        return _is_receiving(cast(int, self.data.type))

    @classmethod
    def bind(
        cls,
        *,
        port: int | None = None,
        data_type: int = zmq.PUB,
        control_type: int = zmq.ROUTER,
        mode: TransportMode | None = None,
        config: ZMQConfig | None = None,
        curve: ServerCurve | None = None,
        context: Context | None = None,
    ) -> SocketPair:
        """Bind a control and a data socket at ``port`` and its control port.

        ``port=None`` picks a free port pair. TCP binds ``config.bind_host`` (loopback by
        default). An IPC socket file that a live server listens on is never taken over:
        :class:`AddressInUseError` says so; a stale file left by a dead server is replaced.
        """
        cfg = ZMQConfig() if config is None else config
        mode = get_default_transport_mode() if mode is None else mode
        if curve is not None and mode is not TransportMode.TCP:
            raise ConfigurationError("CURVE applies to TCP endpoints; use mode=TransportMode.TCP")
        owns = context is None
        ctx: Context = zmq.Context() if context is None else context
        authenticator = curve.start_authenticator(ctx) if curve is not None else None
        try:
            attempts = 1 if port is not None else _BIND_ATTEMPTS
            for attempt in range(attempts):
                chosen = port if port is not None else _free_port(mode, cfg)
                try:
                    return cls._bind_at(
                        ctx=ctx,
                        port=chosen,
                        data_type=data_type,
                        control_type=control_type,
                        mode=mode,
                        cfg=cfg,
                        curve=curve,
                        owns=owns,
                        authenticator=authenticator,
                    )
                except AddressInUseError:
                    if attempt + 1 == attempts:
                        raise
                    logger.debug("port %d was taken while binding; trying another", chosen)
            raise AssertionError("unreachable")  # pragma: no cover
        except BaseException:
            if authenticator is not None:
                authenticator.stop()
            if owns:
                ctx.term()
            raise

    @classmethod
    def _bind_at(
        cls,
        *,
        ctx: Context,
        port: int,
        data_type: int,
        control_type: int,
        mode: TransportMode,
        cfg: ZMQConfig,
        curve: ServerCurve | None,
        owns: bool,
        authenticator: zmq.auth.thread.ThreadAuthenticator | None,
    ) -> SocketPair:
        control_port = cfg.control_port(port)
        if mode is TransportMode.IPC:
            ensure_ipc_directory(cfg)
            for number in (port, control_port):
                if is_ipc_socket_in_use(number, cfg):
                    raise AddressInUseError(
                        f"a live server already listens on {get_ipc_socket_path(number, cfg)}; "
                        "stop it or choose another port"
                    )
                remove_ipc_socket(number, cfg)
        host = cfg.bind_host
        if mode is TransportMode.TCP and curve is None and not is_loopback_host(host):
            logger.warning(
                "binding %s:%d without CURVE: anyone who can reach this host can talk to this "
                "server; pass curve=ServerCurve(...) for an exposed host",
                host,
                port,
            )
        data_url = get_zmq_transport_url(port, host, mode, cfg)
        control_url = get_zmq_transport_url(control_port, host, mode, cfg)
        sockets: list[Socket] = []
        try:
            for url, socket_type in ((data_url, data_type), (control_url, control_type)):
                socket = ctx.socket(socket_type)
                sockets.append(socket)
                _configure(socket, cfg, bound=True)
                if ":" in host and mode is TransportMode.TCP:
                    socket.setsockopt(zmq.IPV6, 1)
                if curve is not None:
                    curve.apply(socket)
                try:
                    socket.bind(url)
                except zmq.ZMQError as exc:
                    if exc.errno == zmq.EADDRINUSE:
                        raise AddressInUseError(
                            f"{url} is already in use by another process; stop it or choose "
                            "another port (port=0 picks a free one)"
                        ) from None
                    raise
        except BaseException:
            for socket in sockets:
                socket.close(linger=0)
            raise
        ipc_ports = (port, control_port) if mode is TransportMode.IPC else ()
        return cls(
            context=ctx,
            control=sockets[1],
            data=sockets[0],
            data_port=port,
            control_url=control_url,
            data_url=data_url,
            mode=mode,
            owns_context=owns,
            authenticator=authenticator,
            ipc_ports=ipc_ports,
            config=cfg,
        )

    @classmethod
    def connect(
        cls,
        *,
        port: int | None = None,
        host: str = "localhost",
        data_type: int = zmq.SUB,
        connect_data: bool = True,
        control_type: int = zmq.DEALER,
        mode: TransportMode | None = None,
        config: ZMQConfig | None = None,
        curve: ClientCurve | None = None,
        context: Context | None = None,
    ) -> SocketPair:
        """Connect a control and a data socket to the server at ``port`` on ``host``.

        Connecting never blocks: libzmq connects (and reconnects) in the background. With
        ``connect_data=False`` the data socket is created but left unconnected (for a client
        that only talks on the control socket, e.g. a health check of any kind of server).
        """
        cfg = ZMQConfig() if config is None else config
        mode = get_default_transport_mode() if mode is None else mode
        data_port = cfg.default_port if port is None else port
        data_url = get_zmq_transport_url(data_port, host, mode, cfg)
        control_url = get_zmq_transport_url(cfg.control_port(data_port), host, mode, cfg)
        owns = context is None
        ctx: Context = zmq.Context() if context is None else context
        sockets: list[Socket] = []
        try:
            for url, socket_type in ((data_url, data_type), (control_url, control_type)):
                socket = ctx.socket(socket_type)
                sockets.append(socket)
                _configure(socket, cfg, bound=False)
                if ":" in host and mode is TransportMode.TCP:
                    socket.setsockopt(zmq.IPV6, 1)
                if curve is not None:
                    curve.apply(socket)
                if connect_data or url is control_url:
                    socket.connect(url)
        except BaseException:
            for socket in sockets:
                socket.close(linger=0)
            if owns:
                ctx.term()
            raise
        return cls(
            context=ctx,
            control=sockets[1],
            data=sockets[0],
            data_port=data_port,
            control_url=control_url,
            data_url=data_url,
            mode=mode,
            owns_context=owns,
            config=cfg,
        )

    def close(self, linger: float | None = None) -> None:
        """Close both sockets, stop the authenticator, end an owned context, remove IPC files.

        Idempotent. ``linger`` (seconds) bounds how long unsent messages are kept trying;
        the configured ``linger`` by default.
        """
        if self.closed:
            return
        self.closed = True
        linger_ms = _ms(self.config.linger if linger is None else linger)
        if linger == 0:
            linger_ms = 0
        self.data.close(linger=linger_ms)
        self.control.close(linger=linger_ms)
        if self.authenticator is not None:
            self.authenticator.stop()
        if self.owns_context:
            self.context.term()
        for number in self.ipc_ports:
            remove_ipc_socket(number, self.config)


def open_connected_socket(
    context: Context,
    socket_type: int,
    url: str,
    config: ZMQConfig,
    curve: ClientCurve | None = None,
    *,
    reconnect_max: float | None = None,
) -> Socket:
    """A single socket of ``socket_type`` connected to ``url``, configured like a pair's.

    For endpoints that talk to many peers one-way (an ack sender pushing to whichever
    :class:`~zmqruntime.AckChannel` an image names). ``reconnect_max`` (seconds) makes
    reconnection attempts back off up to that interval. The caller owns and closes it.
    """
    socket = context.socket(socket_type)
    try:
        _configure(socket, config, bound=False)
        if reconnect_max is not None:
            socket.setsockopt(zmq.RECONNECT_IVL_MAX, _ms(reconnect_max))
        if curve is not None:
            curve.apply(socket)
        socket.connect(url)
    except BaseException:
        socket.close(linger=0)
        raise
    return socket


_SNDMORE = int(zmq.SNDMORE)  # plain ints: enum flag arithmetic costs more than the send
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
ZERO_COPY_THRESHOLD = 64 * 1024
"""Frames at least this large are sent without copying; smaller ones are cheaper to copy."""


def send_frames(socket: Socket, frames: Sequence[Any], flags: int = 0) -> None:
    """Send one multipart message, zero-copy for large frames only.

    Raises ``zmq.Again`` (only ever on the first frame: multipart sends are atomic) when
    ``flags`` has NOBLOCK and the peer's queue is full.
    """
    flags = int(flags)
    sizes = [len(frame) if type(frame) is bytes else memoryview(frame).nbytes for frame in frames]
    if max(sizes, default=0) < ZERO_COPY_THRESHOLD:
        socket.send_multipart(frames, flags, copy=True)  # the common case: one call
        return
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        more = _SNDMORE if index < last else 0
        socket.send(frame, flags | more, copy=sizes[index] < ZERO_COPY_THRESHOLD)


def envelope_end(frames: Sequence[Any]) -> int:
    """Where a ROUTER message's routing envelope ends: after the identity, and after an empty
    delimiter frame if the peer is a REQ socket (so plain REQ clients can talk to it too)."""
    if len(frames) >= 2 and len(frames[1]) == 0:
        return 2
    return 1


def receive_ready(socket: Socket) -> list[zmq.Frame] | None:
    """The next message if one is waiting, else None (no exception on the common path)."""
    if not cast(int, socket.getsockopt(_EVENTS)) & _POLLIN:
        return None
    return socket.recv_multipart(zmq.NOBLOCK, copy=False)


@final
@attrs.define(eq=False)
class PushSockets:
    """One PUSH socket per address, for one-way messages to many endpoints.

    Owned by one thread, like any socket. Keeps at most ``capacity`` sockets (the least
    recently used is closed first). Only ``tcp://`` and ``ipc://`` addresses are used: an
    address from a message header must never make a process connect anywhere else.
    """

    context: Context
    config: ZMQConfig
    curve: ClientCurve | None = None
    capacity: int = 64
    _sockets: collections.OrderedDict[str, Socket] = attrs.field(
        factory=collections.OrderedDict, init=False
    )

    def send(self, address: str, frames: Sequence[Any], curve: ClientCurve | None = None) -> bool:
        """Queue ``frames`` for ``address``; False (and a warning) if it cannot be.

        ``curve`` overrides :attr:`curve` for a socket opened now (an endpoint with keys of
        its own); an open socket keeps the keys it was opened with.
        """
        if not address.startswith(("tcp://", "ipc://")):
            logger.warning("refusing to send to %r: not a tcp:// or ipc:// address", address)
            return False
        socket = self._sockets.get(address)
        if socket is None:
            try:
                socket = open_connected_socket(
                    self.context,
                    zmq.PUSH,
                    address,
                    self.config,
                    curve or self.curve,
                    # A departed endpoint (a sender that closed) is retried ever more rarely
                    # until the socket is evicted, instead of every 100 ms.
                    reconnect_max=_PUSH_RECONNECT_MAX,
                )
            except zmq.ZMQError as exc:
                logger.warning("cannot connect to %s: %s", address, exc)
                return False
            self._sockets[address] = socket
            if len(self._sockets) > self.capacity:
                self._sockets.popitem(last=False)[1].close()
        else:
            self._sockets.move_to_end(address)
        try:
            send_frames(socket, frames, zmq.NOBLOCK)
        except zmq.Again:
            logger.warning("%s is not taking messages (queue full); dropped one", address)
            return False
        return True

    def close(self) -> None:
        """Close every socket (queued messages get ``config.linger`` to leave)."""
        while self._sockets:
            self._sockets.popitem()[1].close()


def _free_port(mode: TransportMode, config: ZMQConfig) -> int:
    if mode is TransportMode.IPC:
        return find_free_ipc_port(config)
    return find_free_port_pair(config, host=config.bind_host)
