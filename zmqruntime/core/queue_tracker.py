"""Bookkeeping of items sent to a viewer and the acknowledgements that come back: a
:class:`QueueTracker` per viewer, a :class:`GlobalQueueTrackerRegistry` to route acks by key.

Memory stays flat: acknowledged ids are not kept, only counters plus a bounded set of the most
recently acknowledged ids (to tell a duplicate ack from an unknown one).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, final

import attrs

from zmqruntime.config import check_count, check_seconds, checked
from zmqruntime.core.messages import AckOutcome
from zmqruntime.errors import ConfigurationError

__all__ = ["AckOutcome", "GlobalQueueTrackerRegistry", "QueueTracker", "TrackerStatistics"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
"""Seconds an item may stay pending before it counts as stuck, unless told otherwise."""
DEFAULT_RECENT_ACK_CAPACITY = 10_000
"""How many recently acknowledged ids a tracker remembers to recognise duplicate acks."""

_COUNTERS = ("sent", "processed", "skipped", "failed", "unknown_acks", "duplicate_acks")
"""A tracker's per-batch counters, named as in :class:`TrackerStatistics` (outcomes by value)."""

_positive_seconds = checked(check_seconds)


def _viewer_key(_instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str):
        raise ConfigurationError(f"{attribute.name} must be a str, got {value!r}")


@final
@attrs.frozen(kw_only=True)
class TrackerStatistics:
    """A consistent snapshot of one tracker's counters, taken under its lock.

    Counters cover the current batch (they restart with it); ``sent - acknowledged ==
    pending`` always holds. ``processed``, ``skipped`` and ``failed`` count acks by outcome;
    ``stuck`` counts pending items older than the tracker's timeout.
    """

    viewer_key: str
    sent: int
    """Items sent in this batch (plus those still pending when it started)."""
    processed: int
    skipped: int
    failed: int
    pending: int
    stuck: int
    unknown_acks: int
    """Acks that matched no pending item (unknown ids and duplicates together)."""
    duplicate_acks: int
    """The part of ``unknown_acks`` recognised as repeats of a recent ack."""
    oldest_pending_age: float | None
    """Seconds the oldest pending item has waited, or ``None`` when nothing is pending."""

    @property
    def acknowledged(self) -> int:
        """Items acknowledged with any outcome: ``processed + skipped + failed``."""
        return self.processed + self.skipped + self.failed


@final
@attrs.define(eq=False)
class QueueTracker:
    """What was sent to one viewer and what it acknowledged; thread-safe, no I/O.

    An item is *pending* from :meth:`register_sent` until it is acknowledged with any
    :class:`AckOutcome`. It is *stuck* once it has been pending longer than ``timeout``
    seconds, measured with ``clock`` (which must not run backwards). The waiting methods use
    real time for their own ``timeout`` argument, whatever ``clock`` is.
    """

    viewer_key: str = attrs.field(validator=_viewer_key)
    """What this tracker follows, e.g. ``"tcp://127.0.0.1:7780"``."""
    timeout: float = attrs.field(default=DEFAULT_TIMEOUT, validator=_positive_seconds)
    clock: Callable[[], float] = attrs.field(default=time.monotonic, repr=False)
    recent_ack_capacity: int = attrs.field(
        default=DEFAULT_RECENT_ACK_CAPACITY, validator=checked(check_count, 0), repr=False
    )
    """How many acknowledged ids to remember for duplicate detection (0: none)."""

    _condition: threading.Condition = attrs.field(
        factory=threading.Condition, init=False, repr=False
    )
    _pending: dict[str, float] = attrs.field(factory=dict, init=False, repr=False)
    _recent_acks: OrderedDict[str, AckOutcome] = attrs.field(
        factory=OrderedDict, init=False, repr=False
    )
    _counts: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys(_COUNTERS, 0), init=False, repr=False
    )

    def register_sent(self, item_id: str) -> None:
        """Record that ``item_id`` was sent and awaits an ack. An id already pending keeps its
        first send time; an id acknowledged earlier and sent again counts as a new send."""
        with self._condition:
            self._register(item_id)

    def wait_and_register(self, item_id: str, limit: int, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Wait until fewer than ``limit`` items are pending, then :meth:`register_sent`
        ``item_id``, in one step (so concurrent senders never push the pending count past
        ``limit``); ``False`` (nothing registered) after ``timeout`` seconds."""
        with self._condition:  # re-entrant: held from the wait through the registration
            if not self.wait_pending_below(limit, timeout):
                return False
            self._register(item_id)
        return True

    def wait_and_register_all(
        self, item_ids: Sequence[str], limit: int, timeout: float = DEFAULT_TIMEOUT
    ) -> bool:
        """:meth:`wait_and_register` for several ids at once (a batch and its items): waits
        until they all fit under ``limit`` pending, or, when they are more than ``limit``,
        until nothing is pending; ``False`` (nothing registered) after ``timeout`` seconds
        (checked only when it has to wait)."""
        room = max(1, limit - len(item_ids) + 1)
        with self._condition:
            # The common case (there is room) skips the checks of a wait.
            if len(self._pending) >= room and not self._wait_below(room, timeout):
                return False
            for item_id in item_ids:
                self._register(item_id)
        return True

    def _register(self, item_id: str) -> None:
        """The body of :meth:`register_sent` (condition held)."""
        if item_id not in self._pending:
            self._recent_acks.pop(item_id, None)
            self._pending[item_id] = self.clock()
            self._counts["sent"] += 1

    def acknowledge(self, item_id: str, outcome: AckOutcome, error: str = "") -> bool:
        """Record the consumer's ``outcome`` for ``item_id``; ``True`` if it was pending.

        An ack for an id that is not pending is not an error: it returns ``False`` and is
        counted in :meth:`statistics`. ``error``, the reason for a failure, is logged, not stored.
        """
        if type(outcome) is not AckOutcome:
            outcome = AckOutcome(outcome)
        with self._condition:
            if self._pending.pop(item_id, None) is None:
                self._counts["unknown_acks"] += 1
                previous = self._recent_acks.get(item_id)
                self._counts["duplicate_acks"] += previous is not None
                why = "unknown item" if previous is None else f"duplicate, already {previous.value}"
                logger.debug("%s: %s ack for %r: %s", self.viewer_key, outcome.value, item_id, why)
                return False
            self._counts[outcome.value] += 1
            self._recent_acks[item_id] = outcome
            while len(self._recent_acks) > self.recent_ack_capacity:
                self._recent_acks.popitem(last=False)
            self._condition.notify_all()
        if outcome is AckOutcome.FAILED:
            logger.debug("%s: item %r failed: %s", self.viewer_key, item_id, error or "(no reason)")
        return True

    def mark_processed(self, item_id: str) -> bool:
        """Acknowledge ``item_id`` as processed; ``True`` if it was pending."""
        return self.acknowledge(item_id, AckOutcome.PROCESSED)

    def mark_skipped(self, item_id: str) -> bool:
        """Acknowledge ``item_id`` as skipped; ``True`` if it was pending."""
        return self.acknowledge(item_id, AckOutcome.SKIPPED)

    def mark_failed(self, item_id: str, error: str = "") -> bool:
        """Acknowledge ``item_id`` as failed, with the consumer's reason; ``True`` if pending."""
        return self.acknowledge(item_id, AckOutcome.FAILED, error)

    def get_progress(self) -> tuple[int, int]:
        """``(acknowledged, sent)`` for the current batch, e.g. ``(812, 900)``."""
        with self._condition:
            return sum(self._counts[outcome.value] for outcome in AckOutcome), self._counts["sent"]

    def get_pending_count(self) -> int:
        """How many items are sent and not yet acknowledged."""
        with self._condition:
            return len(self._pending)

    def has_stuck_images(self) -> bool:
        """Whether any item has been pending for longer than ``timeout``."""
        with self._condition:
            return next(self._stuck(self.clock()), None) is not None

    def get_stuck_images(self) -> list[str]:
        """Ids pending for longer than ``timeout``, oldest first."""
        with self._condition:
            return list(self._stuck(self.clock()))

    def _stuck(self, now: float) -> Iterator[str]:
        """Stuck ids, oldest first; consume it with the condition held."""
        # Pending ids are kept in send order, and send times never decrease.
        for item_id, sent_at in self._pending.items():
            if now - sent_at <= self.timeout:
                return
            yield item_id

    def clear(self) -> None:
        """Forget everything: pending items, remembered acks and all counters (a late ack for
        an item pending before then counts as unknown). Threads waiting in
        :meth:`wait_all_acknowledged` wake and see nothing pending. :meth:`reset_for_new_batch`
        is the predecessor's name for it; :meth:`start_batch_keeping_pending` keeps tracking.
        """
        self._restart(keep_pending=False)

    reset_for_new_batch = clear

    def start_batch_keeping_pending(self) -> None:
        """Start counting a new batch while still tracking the items that are pending: they
        count as sent in it (``get_progress()`` is then ``(0, pending count)``), every other
        counter restarts at 0, remembered acks are kept."""
        self._restart(keep_pending=True)

    def _restart(self, *, keep_pending: bool) -> None:
        with self._condition:
            if not keep_pending:
                self._pending.clear()
                self._recent_acks.clear()
            self._counts = dict.fromkeys(_COUNTERS, 0)
            self._counts["sent"] = len(self._pending)
            self._condition.notify_all()
        done = "counts a new batch" if keep_pending else "cleared"
        logger.debug("%s: queue tracker %s", self.viewer_key, done)

    def wait_all_acknowledged(self, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Block until nothing is pending (acknowledged or cleared) or ``timeout`` seconds
        pass; ``True`` if drained."""
        return self.wait_pending_below(1, timeout)

    def wait_pending_below(self, limit: int, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Block until fewer than ``limit`` items are pending or ``timeout`` seconds pass;
        returns whether the pending count is below ``limit``."""
        check_count("limit", limit, 1)
        with self._condition:
            return self._wait_below(limit, timeout)

    def _wait_below(self, limit: int, timeout: float) -> bool:
        """:meth:`wait_pending_below` with the condition held: a stop-and-wait sender's every
        send comes here, so it waits without ``Condition.wait_for``'s predicate calls."""
        pending, seconds = self._pending, check_seconds("timeout", timeout, allow_zero=True)
        deadline = time.monotonic() + seconds
        while len(pending) >= limit:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._condition.wait(left)
        return True

    def statistics(self) -> TrackerStatistics:
        """A consistent snapshot of the counters, pending and stuck counts."""
        with self._condition:
            now = self.clock()
            oldest = next(iter(self._pending.values()), None)
            return TrackerStatistics(
                viewer_key=self.viewer_key,
                pending=len(self._pending),
                stuck=len(list(self._stuck(now))),
                oldest_pending_age=None if oldest is None else now - oldest,
                **self._counts,
            )


@final
@attrs.define(eq=False)
class GlobalQueueTrackerRegistry:
    """One :class:`QueueTracker` per viewer key; thread-safe.

    Not a singleton: create one and hand it to whatever sends and whatever receives acks.
    Two registries never share trackers. Trackers it creates use its ``clock``, and
    ``default_timeout`` unless given one.
    """

    default_timeout: float = attrs.field(default=DEFAULT_TIMEOUT, validator=_positive_seconds)
    clock: Callable[[], float] = attrs.field(default=time.monotonic, repr=False)

    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, repr=False)
    _trackers: dict[str, QueueTracker] = attrs.field(factory=dict, init=False, repr=False)

    def get_or_create_tracker(self, viewer_key: str, timeout: float | None = None) -> QueueTracker:
        """The tracker for ``viewer_key``, created on first use (only then does ``timeout``
        apply; an existing tracker is returned unchanged)."""
        if timeout is not None:
            check_seconds("timeout", timeout)
        with self._lock:
            if viewer_key not in self._trackers:
                self._trackers[viewer_key] = QueueTracker(
                    viewer_key, timeout=timeout or self.default_timeout, clock=self.clock
                )
                logger.debug("created queue tracker for %s", viewer_key)
            return self._trackers[viewer_key]

    def add_tracker(self, tracker: QueueTracker, viewer_key: str | None = None) -> None:
        """Register an existing tracker under ``viewer_key`` (default: its own key); raises
        ``ValueError`` if a different tracker already holds that key."""
        key = tracker.viewer_key if viewer_key is None else viewer_key
        with self._lock:
            current = self._trackers.setdefault(key, tracker)
        if current is not tracker:
            raise ValueError(f"another tracker is already registered for {key!r}")

    def get_tracker(self, viewer_key: str) -> QueueTracker | None:
        """The tracker for ``viewer_key``, or ``None`` if there is none."""
        with self._lock:
            return self._trackers.get(viewer_key)

    def remove_tracker(self, viewer_key: str) -> bool:
        """Drop the tracker for ``viewer_key`` (holders may keep using it); ``True`` if there
        was one."""
        with self._lock:
            return self._trackers.pop(viewer_key, None) is not None

    def get_all_trackers(self) -> dict[str, QueueTracker]:
        """A new dict of every tracker by viewer key; changing it does not touch the registry."""
        with self._lock:
            return dict(self._trackers)

    def clear_all(self) -> None:
        """Drop every tracker (the tracker objects themselves are left as they are)."""
        with self._lock:
            self._trackers.clear()
