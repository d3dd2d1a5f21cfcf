"""ConnectionWatch: what libzmq's socket monitor says about a client's link to its server.

The client's I/O thread reads the monitor's handshake and disconnect events here; the watch
turns them into state (connected or not, why the last handshake failed) and into verdicts.
"""

from __future__ import annotations

import enum
import logging
import os
import struct
import threading
from collections.abc import Iterator
from typing import Final, final

import attrs
import zmq

from zmqruntime.core.security import describe_handshake_failure

__all__ = ["ConnectionWatch", "LinkEvent"]

logger = logging.getLogger(__name__)

MONITORED: Final = (
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
_EVENT: Final = struct.Struct("=HI")  # a monitor event's first frame: event id, value
_REFUSED: Final = (
    "the server refused this client's credentials (authentication failed): it belongs to "
    "another user or runtime folder (ZMQConfig ipc_root/app_name), or its CURVE keys do not "
    "allow this client's public key"
)


class LinkEvent(enum.Enum):
    """What a monitor event means to the client."""

    UP = "up"
    REFUSED = "refused"
    """The server refused this client's credentials: requests in flight can never succeed."""
    LOST = "lost"
    """The connection broke: requests in flight will not be answered."""


@final
@attrs.define(eq=False)
class ConnectionWatch:
    """The state of one client's connection, kept from its monitor's events (I/O thread).

    ``curve`` says whether the client uses CURVE keys, which changes how a failed handshake
    is explained. Other threads may read :attr:`connected` and :attr:`handshake_failure`.
    """

    name: str
    curve: bool
    connected: threading.Event = attrs.field(factory=threading.Event)
    handshake_failure: str | None = None
    """Why the last handshake failed; None once one has succeeded."""
    disconnects: int = 0

    def read(self, monitor: zmq.Socket[bytes]) -> Iterator[tuple[LinkEvent, str]]:
        """The verdicts of every event waiting on ``monitor``, with the endpoint each names."""
        while True:
            try:
                frames = monitor.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            # Parsed here, not by zmq.utils.monitor: that module imports asyncio (~30 ms).
            if len(frames) != 2 or len(frames[0]) != _EVENT.size:
                logger.warning("%s: ignoring a malformed monitor event", self.name)
                continue
            kind, value = _EVENT.unpack(frames[0])
            endpoint = os.fsdecode(frames[1])
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshake_failure = None
                self.connected.set()
                yield LinkEvent.UP, endpoint
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                # INFO: the requests this fails carry the reason to the caller.
                logger.info("%s: the server refused this client's credentials", self.name)
                self.handshake_failure = _REFUSED
                yield LinkEvent.REFUSED, endpoint
            elif kind in _HANDSHAKE_FAILURES:
                self.handshake_failure = describe_handshake_failure(kind, value, curve=self.curve)
                logger.info("%s: %s", self.name, self.handshake_failure)
            elif kind == zmq.EVENT_DISCONNECTED:
                self.connected.clear()
                self.disconnects += 1
                yield LinkEvent.LOST, endpoint

    def lost(self, endpoint: str) -> str:
        """Why requests in flight failed when the connection to ``endpoint`` broke."""
        if self.handshake_failure is None:
            return f"the server at {endpoint} went away mid-request"
        return f"no connection to the server at {endpoint}: {self.handshake_failure}"
