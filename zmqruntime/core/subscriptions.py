"""SubscriberTopics: which topics anybody subscribes to on a server's XPUB data socket, so a
publisher can skip encoding and sending an event nobody listens to.

An XPUB socket reports each topic filter when its first subscriber registers it and when the
last one drops it (or disconnects); the socket's owner thread feeds those notices to
:meth:`SubscriberTopics.note`, any thread may ask :meth:`SubscriberTopics.wanted`.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Final, final

import attrs

__all__ = ["MAX_FILTERS", "MAX_FILTER_BYTES", "SubscriberTopics"]

logger = logging.getLogger(__name__)

_UNSUBSCRIBE = 0
_SUBSCRIBE = 1

MAX_FILTERS: Final = 4096
"""Most topic filters :class:`SubscriberTopics` keeps (a GUI holds one per execution it
follows); past this, or :data:`MAX_FILTER_BYTES`, it stops telling topics apart."""
MAX_FILTER_BYTES: Final = 1 << 20
"""Most bytes of topic filters :class:`SubscriberTopics` keeps (1 MiB)."""


@final
@attrs.define(eq=False)
class SubscriberTopics:
    """The topic filters subscribers currently hold (prefix filters, as zmq applies them), up
    to :data:`MAX_FILTERS` filters of :data:`MAX_FILTER_BYTES` in all. Past either bound it
    forgets them and wants every topic from then on: a publisher then sends everything, as
    over a plain PUB socket, and a peer's subscriptions cost it no more memory."""

    _filters: set[bytes] = attrs.field(factory=set)
    # How many filters have each length: a topic is matched by looking up its prefixes of
    # those lengths, so a peer that registers many filters cannot make every check slow.
    _lengths: collections.Counter[int] = attrs.field(factory=collections.Counter)
    _bytes: int = attrs.field(default=0, init=False)
    _overflowed: bool = attrs.field(default=False, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def note(self, notice: bytes) -> bool:
        """Apply one XPUB subscription notice; False if ``notice`` is not one."""
        if not notice or notice[0] not in (_SUBSCRIBE, _UNSUBSCRIBE):
            return False
        topic = notice[1:]
        with self._lock:
            if self._overflowed:
                return True
            if notice[0] == _SUBSCRIBE and topic not in self._filters:
                full = len(self._filters) == MAX_FILTERS
                if full or self._bytes + len(topic) > MAX_FILTER_BYTES:
                    self._overflow()
                    return True
                self._filters.add(topic)
                self._lengths[len(topic)] += 1
                self._bytes += len(topic)
            elif notice[0] == _UNSUBSCRIBE and topic in self._filters:
                self._filters.remove(topic)
                self._bytes -= len(topic)
                self._lengths[len(topic)] -= 1
                if not self._lengths[len(topic)]:
                    del self._lengths[len(topic)]
        return True

    def _overflow(self) -> None:
        logger.warning(
            "subscribers hold more than %d topic filters or %d bytes of them: from now on "
            "every event is published, whoever listens",
            MAX_FILTERS,
            MAX_FILTER_BYTES,
        )
        self._overflowed, self._bytes = True, 0
        self._filters.clear()
        self._lengths.clear()

    @property
    def overflowed(self) -> bool:
        """True once subscribers held more filters than the bounds: every topic is wanted."""
        return self._overflowed

    def wanted(self, topic: bytes) -> bool:
        """Whether a message on ``topic`` would reach at least one subscriber (always, once
        :attr:`overflowed`)."""
        with self._lock:
            filters = self._filters
            return self._overflowed or any(topic[:length] in filters for length in self._lengths)

    @property
    def filters(self) -> frozenset[bytes]:
        """The filters held now (the empty filter means "everything")."""
        with self._lock:
            return frozenset(self._filters)
