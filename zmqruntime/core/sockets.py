"""SocketPair: the control and data socket of one endpoint, opened and closed together.

This is the only code that creates the zmq sockets of servers (ROUTER control + a data socket
such as PUB or PULL, bound) and clients (DEALER control + a matching data socket, connected);
the options every socket wants (:mod:`~zmqruntime.core.socket_options`) and its credentials
are applied here, once. A pair is created in one thread and may then be handed to
exactly one other thread (the I/O thread that owns it from then on); ``close()`` must run there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast, final

import attrs
import zmq

from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core import codec
from zmqruntime.core.authentication import ServerAuthentication
from zmqruntime.core.credentials import client_credentials
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import Message
from zmqruntime.core.socket_options import (
    RECEIVING_TYPES,
    Context,
    Socket,
    configure_socket,
    ms,
    raise_open_file_limit,
)
from zmqruntime.core.transport import (
    ensure_ipc_directory,
    find_free_ipc_port,
    find_free_port_pair,
    get_ipc_socket_path,
    is_ipc_socket_in_use,
    remove_ipc_socket,
)
from zmqruntime.errors import AddressInUseError, ConfigurationError, RemoteProtocolError

__all__ = ["SocketPair", "decode_or_warn", "envelope_end", "receive_ready", "send_frames"]

logger = logging.getLogger(__name__)

_BIND_ATTEMPTS = 5


@final
@attrs.define(eq=False)
class SocketPair:
    """The control and data socket of one endpoint, plus what they need to be closed cleanly.

    Build one with :meth:`bind` (servers) or :meth:`connect` (clients); never directly.
    ``endpoint`` is the address actually in use (a server's port 0 replaced by the port bound).
    """

    context: Context
    control: Socket
    data: Socket
    endpoint: Endpoint
    owns_context: bool
    authentication: ServerAuthentication | None = None
    """What a bound TCP pair requires at the handshake (None: IPC, insecure, or a client)."""
    removes_ipc_files: bool = False
    """A bound IPC pair removes its socket files on close."""
    closed: bool = False

    @property
    def data_port(self) -> int:
        return self.endpoint.port

    @property
    def control_port(self) -> int:
        """Data port + the configured offset."""
        return self.endpoint.control_port

    @property
    def data_url(self) -> str:
        return self.endpoint.data_url

    @property
    def control_url(self) -> str:
        return self.endpoint.control_url

    @property
    def mode(self) -> TransportMode:
        """The transport of both sockets."""
        return self.endpoint.transport

    @property
    def config(self) -> ZMQConfig:
        return self.endpoint.config

    @property
    def data_receives(self) -> bool:
        """Whether the data socket is one that receives (PULL, SUB …) and so must be polled."""
        return cast(int, self.data.type) in RECEIVING_TYPES

    @classmethod
    def bind(
        cls,
        endpoint: Endpoint,
        *,
        data_type: int = zmq.PUB,
        control_type: int = zmq.ROUTER,
        context: Context | None = None,
    ) -> SocketPair:
        """Bind a control and a data socket at the endpoint's data and control port.

        Port 0 picks a free port pair. An IPC socket file that a live server listens on is
        never taken over: :class:`AddressInUseError` says so; a stale file left by a dead
        server is replaced. TCP requires credentials at the handshake unless the endpoint is
        ``insecure`` (see :class:`~zmqruntime.core.authentication.ServerAuthentication`); made-up
        ones are written to the connection file of the bound port, removed on close.
        """
        raise_open_file_limit()
        owns = context is None
        ctx: Context = zmq.Context() if context is None else context
        auth = None
        try:
            auth = ServerAuthentication.start(endpoint, ctx)
            for attempt in range(1, _BIND_ATTEMPTS + 1):
                chosen = endpoint if endpoint.port else endpoint.with_port(_free_port(endpoint))
                try:
                    opened = _open(ctx, chosen, data_type, control_type, bound=True, auth=auth)
                    data, control = opened
                    break
                except AddressInUseError:
                    if endpoint.port or attempt == _BIND_ATTEMPTS:
                        raise
                    logger.debug("port %d was taken while binding; trying another", chosen.port)
            if auth is not None:
                auth.publish(chosen)
        except BaseException:
            if auth is not None:
                auth.close()
            if owns:
                ctx.term()
            raise
        ipc = chosen.transport is TransportMode.IPC
        return cls(ctx, control, data, chosen, owns, auth, removes_ipc_files=ipc)

    @classmethod
    def connect(
        cls,
        endpoint: Endpoint,
        *,
        data_type: int = zmq.SUB,
        connect_data: bool = True,
        control_type: int = zmq.DEALER,
        context: Context | None = None,
    ) -> SocketPair:
        """Connect a control and a data socket to the server at ``endpoint``.

        Connecting never blocks: libzmq connects (and reconnects) in the background. The
        sockets present :func:`~zmqruntime.core.credentials.client_credentials`. With
        ``connect_data=False`` the data socket is created but left unconnected (for a client
        that only talks on the control socket, e.g. a health check of any kind of server).
        """
        if not endpoint.port:
            raise ConfigurationError("a client needs the server's port; port 0 is for binding")
        owns = context is None
        ctx: Context = zmq.Context() if context is None else context
        try:
            data, control = _open(
                ctx, endpoint, data_type, control_type, bound=False, connect_data=connect_data
            )
        except BaseException:
            if owns:
                ctx.term()
            raise
        return cls(ctx, control, data, endpoint, owns)

    def close(self, linger: float | None = None) -> None:
        """Close both sockets and the authentication, end an owned context, remove IPC files.

        Idempotent. ``linger`` (seconds) bounds how long unsent messages are kept trying;
        the configured ``linger`` by default.
        """
        if self.closed:
            return
        self.closed = True
        linger_ms = 0 if linger == 0 else ms(self.config.linger if linger is None else linger)
        self.data.close(linger=linger_ms)
        self.control.close(linger=linger_ms)
        stopped = self.authentication is None or self.authentication.close()
        if self.owns_context and stopped:
            self.context.term()  # with a ZAP thread stuck, term() would wait for it forever
        elif self.owns_context:
            logger.error("left a zmq context open: its ZAP authentication thread is stuck")
        if self.removes_ipc_files:
            for number in (self.data_port, self.control_port):
                remove_ipc_socket(number, self.config)


def _open(
    ctx: Context,
    endpoint: Endpoint,
    data_type: int,
    control_type: int,
    *,
    bound: bool,
    auth: ServerAuthentication | None = None,
    connect_data: bool = True,
) -> tuple[Socket, Socket]:
    """The (data, control) sockets of ``endpoint``, bound (requiring ``auth``) or connected
    (presenting the client's credentials); AddressInUseError if an address to bind is taken."""
    cfg = endpoint.config
    credentials = None if bound else client_credentials(endpoint)
    if bound and endpoint.transport is TransportMode.IPC:
        ensure_ipc_directory(cfg)
        for number in (endpoint.port, endpoint.control_port):
            if is_ipc_socket_in_use(number, cfg):
                raise AddressInUseError(
                    f"a live server already listens on {get_ipc_socket_path(number, cfg)}; "
                    "stop it or choose another port"
                )
            remove_ipc_socket(number, cfg)
    sockets: list[Socket] = []
    try:
        for url, socket_type, wanted, control in (
            (endpoint.data_url, data_type, connect_data, False),
            (endpoint.control_url, control_type, True, True),
        ):
            socket = ctx.socket(socket_type)
            sockets.append(socket)
            tcp = endpoint.transport is TransportMode.TCP
            configure_socket(socket, cfg, bound=bound, control=control, tcp=tcp)
            if tcp and ":" in endpoint.host:
                socket.setsockopt(zmq.IPV6, 1)
            if auth is not None:
                auth.apply(socket)
            if credentials is not None:
                credentials.apply(socket)
            if bound:
                try:
                    socket.bind(url)
                except zmq.ZMQError as exc:
                    if exc.errno != zmq.EADDRINUSE:
                        raise
                    raise AddressInUseError(
                        f"{url} is already in use by another process; stop it or choose "
                        "another port (port 0 picks a free one)"
                    ) from None
            elif wanted:
                socket.connect(url)
    except BaseException:
        for socket in sockets:
            socket.close(linger=0)
        raise
    return sockets[0], sockets[1]


_SNDMORE = int(zmq.SNDMORE)  # plain ints: enum flag arithmetic costs more than the send
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
ZERO_COPY_THRESHOLD = 64 * 1024
"""Frames at least this large are sent without copying; smaller ones are cheaper to copy."""


def send_frames(socket: Socket, frames: Sequence[Any], flags: int = 0) -> None:
    """Send one multipart message, zero-copy for large frames only.

    Raises ``zmq.Again`` (only ever on the first frame: multipart sends are atomic) when
    ``flags`` has NOBLOCK and the peer's queue is full. (Frame by frame with plain int
    flags: pyzmq's ``send_multipart`` checks every part and combines enum flags, which costs
    more than the sends.)
    """
    flags = int(flags)
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        size = len(frame) if type(frame) is bytes else memoryview(frame).nbytes
        more = flags | _SNDMORE if index < last else flags
        socket.send(frame, more, copy=size < ZERO_COPY_THRESHOLD)


def envelope_end(frames: Sequence[Any]) -> int:
    """Where a ROUTER message's routing envelope ends: after the identity, and after an empty
    delimiter frame if the peer is a REQ socket (so plain REQ clients can talk to it too)."""
    return 2 if len(frames) >= 2 and len(frames[1]) == 0 else 1


def decode_or_warn(
    frames: Sequence[Any], max_header_bytes: int, owner: str, what: str
) -> Message | None:
    """The message ``frames`` hold, or None after a warning that ``owner`` dropped a
    malformed ``what`` (a peer's bad input never raises on an I/O thread)."""
    try:
        return codec.decode(frames, max_header_bytes=max_header_bytes)
    except RemoteProtocolError as exc:
        logger.warning("%s: dropped a malformed %s: %s", owner, what, exc)
        return None


def receive_ready(socket: Socket, polled: bool = False) -> list[zmq.Frame] | None:
    """The next message if one is waiting, else None (no exception on the common path).

    ``polled``: a poller has just seen the socket readable, so the readiness check (a system
    call inside libzmq) is skipped and the message is read at once."""
    if not polled and not cast(int, socket.getsockopt(_EVENTS)) & _POLLIN:
        return None
    try:
        frame = socket.recv(_NOBLOCK, copy=False)
        frames = [frame]
        while frame.more:  # the frame says so: no getsockopt(RCVMORE) per part
            frame = socket.recv(_NOBLOCK, copy=False)
            frames.append(frame)
        return frames
    except zmq.Again:  # POLLIN for a message whose sender left before its last frame
        return None


def _free_port(endpoint: Endpoint) -> int:
    if endpoint.transport is TransportMode.IPC:
        return find_free_ipc_port(endpoint.config)
    return find_free_port_pair(endpoint.config, host=endpoint.host)
