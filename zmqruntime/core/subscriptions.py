"""SubscriberTopics: which topics anybody subscribes to on a server's XPUB data socket, so a
publisher can skip encoding and sending an event nobody listens to.

An XPUB socket reports each topic filter when its first subscriber registers it and when the
last one drops it (or disconnects); the socket's owner thread feeds those notices to
:meth:`SubscriberTopics.note`, any thread may ask :meth:`SubscriberTopics.wanted`.
"""

from __future__ import annotations

import collections
import threading
from typing import final

import attrs

__all__ = ["SubscriberTopics"]

_UNSUBSCRIBE = 0
_SUBSCRIBE = 1


@final
@attrs.define(eq=False)
class SubscriberTopics:
    """The topic filters subscribers currently hold (prefix filters, as zmq applies them)."""

    _filters: set[bytes] = attrs.field(factory=set)
    # How many filters have each length: a topic is matched by looking up its prefixes of
    # those lengths, so a peer that registers many filters cannot make every check slow.
    _lengths: collections.Counter[int] = attrs.field(factory=collections.Counter)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def note(self, notice: bytes) -> bool:
        """Apply one XPUB subscription notice; False if ``notice`` is not one."""
        if not notice or notice[0] not in (_SUBSCRIBE, _UNSUBSCRIBE):
            return False
        topic = notice[1:]
        with self._lock:
            if notice[0] == _SUBSCRIBE and topic not in self._filters:
                self._filters.add(topic)
                self._lengths[len(topic)] += 1
            elif notice[0] == _UNSUBSCRIBE and topic in self._filters:
                self._filters.remove(topic)
                self._lengths[len(topic)] -= 1
                if not self._lengths[len(topic)]:
                    del self._lengths[len(topic)]
        return True

    def wanted(self, topic: bytes) -> bool:
        """Whether a message on ``topic`` would reach at least one subscriber."""
        with self._lock:
            filters = self._filters
            return any(topic[:length] in filters for length in self._lengths)

    @property
    def filters(self) -> frozenset[bytes]:
        """The filters held now (the empty filter means "everything")."""
        with self._lock:
            return frozenset(self._filters)
