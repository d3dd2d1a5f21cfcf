"""SenderPeers: a viewer's bounded table from a sender's id prefix to the control connection
that sender named for one purpose (command replies, ack copies).

A sender's ids are ``<prefix>-<number>``; it names its control connection with a built-in
request whose payload is ``{"prefix": str}``, and the viewer sends what belongs to that sender
(a command's reply, a copy of an ack) to that :class:`~zmqruntime.Peer`.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Final, final

import attrs

from zmqruntime.core.server import Peer

__all__ = ["ACK_COPIES", "MAX_ACK_COPY_SENDERS", "MAX_PREFIX", "SenderPeers"]

ACK_COPIES: Final = "zmqruntime.ack_copies"
"""The built-in request (payload ``{"prefix": str}``) by which a sender whose acks go to another
process (``ack_to``) asks for a copy of each, pushed on its control connection, for the images
whose id is ``prefix-<number>``: so it can hold its ``max_in_flight``."""
MAX_ACK_COPY_SENDERS: Final = 1024
"""How many senders (id prefixes) a viewer sends ack copies to; the least recent is dropped."""
MAX_PREFIX: Final = 256
"""Characters of a sender's id prefix (its own are ``<tracker key>-<12 hex>``)."""


@final
@attrs.define(eq=False)
class SenderPeers:
    """At most ``limit`` senders' control connections, by id prefix; naming one more forgets
    the least recently named. ``purpose`` words the refusal of a bad payload. Thread-safe."""

    purpose: str
    limit: int
    _peers: collections.OrderedDict[str, Peer] = attrs.field(
        factory=collections.OrderedDict, init=False
    )
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def register(self, payload: Any, peer: Peer) -> bool:
        """Request handler: what belongs to the sender ``payload["prefix"]`` goes to ``peer``
        from now on; ``ValueError`` unless the prefix is a string of 1 to
        :data:`MAX_PREFIX` characters."""
        prefix = payload.get("prefix") if isinstance(payload, dict) else None
        if not isinstance(prefix, str) or not 0 < len(prefix) <= MAX_PREFIX:
            raise ValueError(
                f'{self.purpose} need a payload {{"prefix": "<1 to {MAX_PREFIX} characters>"}}'
            )
        with self._lock:
            self._peers[prefix] = peer
            self._peers.move_to_end(prefix)
            while len(self._peers) > self.limit:
                self._peers.popitem(last=False)
        return True

    def peer_of(self, prefix: str) -> Peer | None:
        """The connection the sender ``prefix`` named, if it is still remembered."""
        if not self._peers:  # the common case of a viewer no sender asked anything of
            return None
        with self._lock:
            return self._peers.get(prefix)
