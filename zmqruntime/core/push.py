"""One-way sockets: a socket connected to one address, and a set of PUSH sockets for many.

For endpoints that talk to many peers one way: an ack sender pushing to whichever
:class:`~zmqruntime.AckChannel` an image names, a sender's per-thread data socket.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from typing import Any, final

import attrs
import zmq

from zmqruntime.config import ZMQConfig
from zmqruntime.core.credentials import ClientCredentials, client_credentials
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.security import ClientCurve
from zmqruntime.core.socket_options import Context, Socket, configure_socket, ms
from zmqruntime.core.sockets import send_frames
from zmqruntime.errors import ConfigurationError

__all__ = ["PushSockets", "open_connected_socket"]

logger = logging.getLogger(__name__)

# A departed endpoint (a sender that closed) is retried ever more rarely until its socket is
# evicted, instead of every 100 ms.
_PUSH_RECONNECT_MAX = 5.0


def open_connected_socket(
    context: Context,
    socket_type: int,
    url: str,
    config: ZMQConfig,
    curve: ClientCredentials | None = None,
    *,
    reconnect_max: float | None = None,
    max_frame_bytes: int | None = None,
) -> Socket:
    """A single socket of ``socket_type`` connected to ``url``, configured like a pair's.

    It presents ``curve``, else the credentials of the connection file of a TCP ``url``'s
    port (see :func:`~zmqruntime.core.credentials.client_credentials`). ``reconnect_max``
    (seconds) makes reconnection attempts back off up to that interval; a frame larger than
    ``max_frame_bytes`` drops the connection (no limit by default). The caller owns and
    closes it.
    """
    socket = context.socket(socket_type)
    try:
        configure_socket(socket, config, bound=False)
        if reconnect_max is not None:
            socket.setsockopt(zmq.RECONNECT_IVL_MAX, ms(reconnect_max))
        if max_frame_bytes is not None:
            socket.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        credentials = curve
        if curve is None and url.startswith("tcp://"):
            credentials = client_credentials(Endpoint.parse(url, config=config))
        if credentials is not None:
            credentials.apply(socket)
        socket.connect(url)
    except BaseException:
        socket.close(linger=0)
        raise
    return socket


@final
@attrs.define(eq=False)
class PushSockets:
    """One PUSH socket per address, owned by one thread; at most ``capacity`` of them (the least
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
                    reconnect_max=_PUSH_RECONNECT_MAX,
                )
            except (zmq.ZMQError, ConfigurationError) as exc:
                logger.warning("cannot connect to %s: %s", address, exc)
                return False
            self._sockets[address] = socket
            if len(self._sockets) > self.capacity:
                self._sockets.popitem(last=False)[1].close()
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
