"""The options every zmqruntime socket gets: linger, high-water marks, ZMTP heartbeats, the
handshake timeout, and the frame and queue limits of each bound socket, fitted to what that
socket carries; and the open-file limit a server raises itself to."""

from __future__ import annotations

import functools
import logging
from typing import cast

import zmq

from zmqruntime.config import ZMQConfig

__all__ = [
    "MIN_RECEIVE_QUEUE",
    "OPEN_FILE_LIMIT",
    "RECEIVE_QUEUE_BYTES",
    "RECEIVING_TYPES",
    "Context",
    "Socket",
    "configure_socket",
    "frame_limit",
    "ms",
    "raise_open_file_limit",
    "receive_high_water_mark",
]

logger = logging.getLogger(__name__)

Context = zmq.Context[zmq.Socket[bytes]]
Socket = zmq.Socket[bytes]
RECEIVING_TYPES = frozenset(
    {zmq.ROUTER, zmq.DEALER, zmq.PULL, zmq.SUB, zmq.XPUB, zmq.PAIR, zmq.REP}
)
"""Socket types that receive (XPUB too: its subscribers' subscription notices)."""


def ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


OPEN_FILE_LIMIT = 65_536
"""The soft open-file limit a server raises itself to (never past the hard limit)."""


@functools.cache
def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files toward :data:`OPEN_FILE_LIMIT`, once: a
    server holds a descriptor per connection, so the usual 1,024 is soon reached. Returns the
    soft limit now in force (0 where the platform has no such limit)."""
    try:
        import resource  # noqa: PLC0415 - POSIX only
    except ImportError:
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILE_LIMIT if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILE_LIMIT)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as exc:
            logger.warning("could not raise the open-file limit to %d: %s", wanted, exc)
            return soft
        return wanted
    return soft


RECEIVE_QUEUE_BYTES = 256 << 20
"""Bytes of its largest frames a bound data socket queues per connection (its RCVHWM)."""
MIN_RECEIVE_QUEUE = 4
"""The fewest messages that queue holds, whatever the frames' size: with 2, libzmq wakes the
connection's reader after each message, and a stream of 512² images with 8 in flight ran 27%
slower (benchmarks/README.md)."""


def frame_limit(config: ZMQConfig, socket_type: int, *, control: bool) -> int:
    """The largest frame a bound socket accepts (a larger one drops the peer's connection):
    ``max_request_bytes`` on a control socket, ``max_header_bytes`` on a PUB/XPUB (it hears
    only subscriptions), else ``max_message_bytes``; never more than ``max_message_bytes``."""
    limit = config.max_message_bytes
    if control:
        limit = config.max_request_bytes
    elif socket_type in (zmq.PUB, zmq.XPUB):
        limit = config.max_header_bytes
    return min(limit, config.max_message_bytes)


def receive_high_water_mark(config: ZMQConfig, max_frame_bytes: int) -> int:
    """RCVHWM of a bound TCP data socket that receives (a viewer's, whose reading may pause):
    ``RECEIVE_QUEUE_BYTES // max_frame_bytes``, ``MIN_RECEIVE_QUEUE``..send_high_water_mark.
    Not on IPC, where libzmq 4.3 drops what a closing peer left unread past it, nor on control
    sockets."""
    budget = RECEIVE_QUEUE_BYTES // max_frame_bytes
    return max(MIN_RECEIVE_QUEUE, min(config.send_high_water_mark, budget))


def configure_socket(
    socket: Socket, config: ZMQConfig, *, bound: bool, control: bool = False, tcp: bool = False
) -> None:
    """Apply the options every socket wants; a ``bound`` one (a ``control`` socket or not) gets
    :func:`frame_limit`, and on ``tcp`` a receiving data socket :func:`receive_high_water_mark`."""
    kind = cast(int, socket.type)
    socket.setsockopt(zmq.LINGER, ms(config.linger))
    socket.setsockopt(zmq.SNDHWM, config.send_high_water_mark)
    receive_hwm = config.send_high_water_mark
    if bound:
        limit = frame_limit(config, kind, control=control)
        socket.setsockopt(zmq.MAXMSGSIZE, limit)
        if tcp and not control and kind in RECEIVING_TYPES and kind != zmq.XPUB:
            receive_hwm = receive_high_water_mark(config, limit)
    socket.setsockopt(zmq.RCVHWM, receive_hwm)
    if socket.type not in (zmq.PUB, zmq.XPUB, zmq.SUB, zmq.PUSH, zmq.PULL):
        # ZMTP heartbeats are answered by libzmq's I/O thread, outside the GIL, so a busy
        # executor never makes a healthy peer look dead. Not on PUSH/PULL, whose reading
        # may pause for backpressure: libzmq aborts when a stalled pipe's connection timed
        # out meanwhile (zeromq/libzmq#3937, #4767).
        socket.setsockopt(zmq.HEARTBEAT_IVL, ms(config.heartbeat_interval))
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, ms(config.heartbeat_timeout))
        socket.setsockopt(zmq.HEARTBEAT_TTL, ms(config.heartbeat_timeout))
    if bound:
        # A peer that connects and never completes the handshake is dropped this soon
        # (libzmq's default is 30 s), so silent connections cannot hold descriptors long.
        socket.setsockopt(zmq.HANDSHAKE_IVL, ms(config.heartbeat_timeout))
    if socket.type == zmq.ROUTER:
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
