"""QueueTracker and GlobalQueueTrackerRegistry: model-based, threaded and unit tests."""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections import OrderedDict

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from zmqruntime.core.queue_tracker import (
    AckOutcome,
    GlobalQueueTrackerRegistry,
    QueueTracker,
    TrackerStatistics,
)
from zmqruntime.errors import ConfigurationError

JOIN_TIMEOUT = 10.0


@attrs.define
class FakeClock:
    """A clock the test moves by hand."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive(), f"{thread.name} did not finish"


# --------------------------------------------------------------------------- model-based

IDS = st.sampled_from([f"img-{i}" for i in range(6)])
OUTCOMES = st.sampled_from(list(AckOutcome))
TIMEOUT = 10.0
CAPACITY = 3


class QueueTrackerMachine(RuleBasedStateMachine):
    """QueueTracker against plain dicts and ints."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.tracker = QueueTracker(
            "tcp://127.0.0.1:7780", timeout=TIMEOUT, clock=self.clock, recent_ack_capacity=CAPACITY
        )
        self.pending: dict[str, float] = {}
        self.recent: OrderedDict[str, AckOutcome] = OrderedDict()
        self.sent = 0
        self.outcomes = dict.fromkeys(AckOutcome, 0)
        self.unknown = 0
        self.duplicate = 0

    def _zero(self) -> None:
        self.sent = 0
        self.outcomes = dict.fromkeys(AckOutcome, 0)
        self.unknown = 0
        self.duplicate = 0

    def _model_ack(self, item_id: str, outcome: AckOutcome) -> bool:
        if item_id not in self.pending:
            self.unknown += 1
            if item_id in self.recent:
                self.duplicate += 1
            return False
        del self.pending[item_id]
        self.outcomes[outcome] += 1
        self.recent[item_id] = outcome
        if len(self.recent) > CAPACITY:
            self.recent.popitem(last=False)
        return True

    @rule(item_id=IDS)
    def register_sent(self, item_id: str) -> None:
        self.tracker.register_sent(item_id)
        if item_id not in self.pending:
            self.recent.pop(item_id, None)
            self.pending[item_id] = self.clock.now
            self.sent += 1

    @rule(item_id=IDS, outcome=OUTCOMES)
    def ack_any(self, item_id: str, outcome: AckOutcome) -> None:
        # Known, unknown and duplicate ids alike, through the generic entry point.
        expected = self._model_ack(item_id, outcome)
        assert self.tracker.acknowledge(item_id, outcome, "boom") is expected

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data(), outcome=OUTCOMES)
    def ack_pending(self, data: st.DataObject, outcome: AckOutcome) -> None:
        item_id = data.draw(st.sampled_from(sorted(self.pending)))
        assert self._model_ack(item_id, outcome) is True
        if outcome is AckOutcome.PROCESSED:
            assert self.tracker.mark_processed(item_id) is True
        elif outcome is AckOutcome.SKIPPED:
            assert self.tracker.mark_skipped(item_id) is True
        else:
            assert self.tracker.mark_failed(item_id, "decode error") is True

    @rule(item_id=IDS)
    def mark_processed(self, item_id: str) -> None:
        expected = self._model_ack(item_id, AckOutcome.PROCESSED)
        assert self.tracker.mark_processed(item_id) is expected

    @rule(seconds=st.one_of(st.integers(0, 12).map(float), st.floats(0, 25, allow_nan=False)))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def clear(self) -> None:
        self.tracker.clear()
        self.pending.clear()
        self.recent.clear()
        self._zero()

    @rule()
    def reset_for_new_batch(self) -> None:
        # Like the predecessor's: pending items are forgotten along with everything else.
        self.tracker.reset_for_new_batch()
        self.pending.clear()
        self.recent.clear()
        self._zero()

    @rule()
    def start_batch_keeping_pending(self) -> None:
        self.tracker.start_batch_keeping_pending()
        self._zero()
        self.sent = len(self.pending)

    def _stuck(self) -> list[str]:
        now = self.clock.now
        pending = sorted(self.pending.items(), key=lambda kv: kv[1])  # stable: send order
        return [item_id for item_id, sent_at in pending if now - sent_at > TIMEOUT]

    @invariant()
    def pending_count_agrees(self) -> None:
        assert self.tracker.get_pending_count() == len(self.pending)

    @invariant()
    def progress_agrees(self) -> None:
        acknowledged = sum(self.outcomes.values())
        assert self.tracker.get_progress() == (acknowledged, self.sent)
        assert self.sent - acknowledged == len(self.pending)

    @invariant()
    def stuck_agrees(self) -> None:
        stuck = self._stuck()
        assert self.tracker.get_stuck_images() == stuck
        assert self.tracker.has_stuck_images() is bool(stuck)

    @invariant()
    def statistics_agree(self) -> None:
        now = self.clock.now
        oldest = min(self.pending.values(), default=None)
        expected = TrackerStatistics(
            viewer_key="tcp://127.0.0.1:7780",
            sent=self.sent,
            processed=self.outcomes[AckOutcome.PROCESSED],
            skipped=self.outcomes[AckOutcome.SKIPPED],
            failed=self.outcomes[AckOutcome.FAILED],
            pending=len(self.pending),
            stuck=len(self._stuck()),
            unknown_acks=self.unknown,
            duplicate_acks=self.duplicate,
            oldest_pending_age=None if oldest is None else now - oldest,
        )
        stats = self.tracker.statistics()
        assert stats == expected
        assert stats.acknowledged == sum(self.outcomes.values())

    @invariant()
    def nothing_pending_means_drained(self) -> None:
        assert self.tracker.wait_all_acknowledged(0) is (not self.pending)


QueueTrackerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestQueueTrackerModel = QueueTrackerMachine.TestCase


# --------------------------------------------------------------------------- unit behaviour


def test_register_same_pending_id_twice_keeps_first_send_time() -> None:
    clock = FakeClock()
    tracker = QueueTracker("viewer", timeout=5.0, clock=clock)
    tracker.register_sent("a")
    clock.advance(4.0)
    tracker.register_sent("a")
    clock.advance(2.0)
    assert tracker.get_progress() == (0, 1)
    assert tracker.get_stuck_images() == ["a"]
    assert tracker.statistics().oldest_pending_age == 6.0


def test_resend_after_ack_is_a_new_send() -> None:
    clock = FakeClock()
    tracker = QueueTracker("viewer", timeout=5.0, clock=clock)
    tracker.register_sent("a")
    assert tracker.mark_processed("a") is True
    clock.advance(10.0)
    tracker.register_sent("a")
    assert tracker.get_progress() == (1, 2)
    assert tracker.get_pending_count() == 1
    assert not tracker.has_stuck_images()
    # The re-send made "a" pending again, so its ack counts and is not a duplicate.
    assert tracker.mark_skipped("a") is True
    assert tracker.statistics().duplicate_acks == 0


def test_unknown_and_duplicate_acks_are_counted_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracker = QueueTracker("viewer")
    tracker.register_sent("a")
    with caplog.at_level(logging.DEBUG, logger="zmqruntime.core.queue_tracker"):
        assert tracker.mark_processed("a") is True
        assert tracker.mark_processed("a") is False
        assert tracker.mark_failed("never-sent", "oops") is False
    stats = tracker.statistics()
    assert (stats.processed, stats.failed, stats.unknown_acks, stats.duplicate_acks) == (1, 0, 2, 1)
    assert "duplicate" in caplog.text
    assert "unknown" in caplog.text


def test_recent_ack_memory_is_bounded() -> None:
    tracker = QueueTracker("viewer", recent_ack_capacity=2)
    for item_id in "abc":
        tracker.register_sent(item_id)
        tracker.mark_processed(item_id)
    assert tracker.mark_processed("a") is False  # forgotten: unknown, not duplicate
    assert tracker.mark_processed("c") is False  # remembered: duplicate
    stats = tracker.statistics()
    assert (stats.unknown_acks, stats.duplicate_acks) == (2, 1)


def test_reset_for_new_batch_forgets_pending_items() -> None:
    clock = FakeClock()
    tracker = QueueTracker("viewer", timeout=5.0, clock=clock)
    for item_id in "abc":
        tracker.register_sent(item_id)
    tracker.mark_processed("a")
    tracker.mark_processed("zzz")
    waiting = threading.Event()
    woke: list[bool] = []

    def waiter() -> None:
        waiting.set()
        # Longer than join_all waits: only a wake-up from the reset ends it in time.
        woke.append(tracker.wait_all_acknowledged(timeout=3 * JOIN_TIMEOUT))

    thread = threading.Thread(target=waiter)
    thread.start()
    assert waiting.wait(JOIN_TIMEOUT)
    tracker.reset_for_new_batch()
    join_all([thread])
    assert woke == [True]  # nothing is pending any more
    assert tracker.get_progress() == (0, 0)
    assert tracker.get_pending_count() == 0
    clock.advance(6.0)
    assert tracker.get_stuck_images() == []
    assert tracker.has_stuck_images() is False
    assert tracker.mark_processed("b") is False  # a late ack of the old batch: unknown
    assert tracker.mark_processed("a") is False  # acked before the reset: forgotten too
    stats = tracker.statistics()
    assert (stats.sent, stats.unknown_acks, stats.duplicate_acks) == (0, 2, 0)
    tracker.register_sent("b")  # sent again in the new batch: a new send
    assert tracker.get_progress() == (0, 1)


def test_start_batch_keeping_pending_keeps_pending_items() -> None:
    clock = FakeClock()
    tracker = QueueTracker("viewer", timeout=5.0, clock=clock)
    for item_id in "abc":
        tracker.register_sent(item_id)
    tracker.mark_processed("a")
    tracker.mark_processed("zzz")
    tracker.start_batch_keeping_pending()
    assert tracker.get_progress() == (0, 2)
    assert tracker.get_pending_count() == 2
    assert tracker.statistics().unknown_acks == 0
    clock.advance(6.0)
    assert tracker.get_stuck_images() == ["b", "c"]
    assert tracker.mark_failed("b", "bad frame") is True
    assert tracker.get_progress() == (1, 2)


def test_clear_forgets_everything() -> None:
    tracker = QueueTracker("viewer")
    tracker.register_sent("a")
    tracker.register_sent("b")
    tracker.mark_processed("a")
    tracker.clear()
    assert tracker.get_progress() == (0, 0)
    assert tracker.get_pending_count() == 0
    assert tracker.mark_processed("b") is False
    assert tracker.statistics().duplicate_acks == 0


def test_acknowledge_accepts_outcome_value() -> None:
    tracker = QueueTracker("viewer")
    tracker.register_sent("a")
    assert tracker.acknowledge("a", AckOutcome("skipped")) is True
    assert tracker.statistics().skipped == 1


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, math.inf, math.nan, True, "3"])
def test_tracker_timeout_must_be_positive_and_finite(bad: object) -> None:
    with pytest.raises(ConfigurationError):
        QueueTracker("viewer", timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        GlobalQueueTrackerRegistry(default_timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        GlobalQueueTrackerRegistry().get_or_create_tracker("viewer", timeout=bad)  # type: ignore[arg-type]


def test_tracker_validates_key_and_capacity() -> None:
    with pytest.raises(ConfigurationError):
        QueueTracker(7780)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        QueueTracker("viewer", recent_ack_capacity=-1)


def test_wait_arguments_are_validated() -> None:
    tracker = QueueTracker("viewer")
    with pytest.raises(ConfigurationError):
        tracker.wait_all_acknowledged(-1.0)
    with pytest.raises(ConfigurationError):
        tracker.wait_all_acknowledged(math.inf)
    with pytest.raises(ConfigurationError):
        tracker.wait_pending_below(0, 0.05)
    with pytest.raises(ConfigurationError):
        tracker.wait_pending_below(1, math.nan)


# --------------------------------------------------------------------------- threads and waits


def test_concurrent_register_and_ack_totals_are_exact() -> None:
    tracker = QueueTracker("viewer")
    producers, consumers, per_producer = 4, 4, 500
    handoff: queue.Queue[str | None] = queue.Queue()
    barrier = threading.Barrier(producers + consumers, timeout=JOIN_TIMEOUT)
    results: list[list[bool]] = [[] for _ in range(consumers)]

    def produce(index: int) -> None:
        barrier.wait()
        for n in range(per_producer):
            item_id = f"p{index}-{n}"
            tracker.register_sent(item_id)
            tracker.register_sent(item_id)  # idempotent while pending
            handoff.put(item_id)

    def consume(index: int) -> None:
        barrier.wait()
        outcomes = list(AckOutcome)
        n = 0
        while (item_id := handoff.get(timeout=JOIN_TIMEOUT)) is not None:
            results[index].append(tracker.acknowledge(item_id, outcomes[n % 3]))
            tracker.mark_processed(f"unknown-{index}-{n}")
            n += 1

    producer_threads = [threading.Thread(target=produce, args=(i,)) for i in range(producers)]
    consumer_threads = [threading.Thread(target=consume, args=(i,)) for i in range(consumers)]
    for thread in producer_threads + consumer_threads:
        thread.start()
    join_all(producer_threads)
    for _ in consumer_threads:
        handoff.put(None)
    join_all(consumer_threads)

    total = producers * per_producer
    assert all(all(r) for r in results)
    assert sum(len(r) for r in results) == total
    stats = tracker.statistics()
    assert stats.sent == total
    assert stats.acknowledged == total
    assert stats.pending == 0
    assert stats.unknown_acks == total
    assert tracker.get_progress() == (total, total)
    assert tracker.wait_all_acknowledged(0) is True


def test_wait_all_acknowledged_wakes_when_last_item_is_acked() -> None:
    tracker = QueueTracker("viewer")
    tracker.register_sent("a")
    tracker.register_sent("b")
    tracker.mark_processed("a")
    waiting = threading.Event()
    result: list[bool] = []

    def waiter() -> None:
        waiting.set()
        result.append(tracker.wait_all_acknowledged(timeout=JOIN_TIMEOUT))

    thread = threading.Thread(target=waiter)
    thread.start()
    assert waiting.wait(JOIN_TIMEOUT)
    assert tracker.mark_processed("b") is True
    join_all([thread])
    assert result == [True]


def test_wait_all_acknowledged_times_out() -> None:
    tracker = QueueTracker("viewer")
    assert tracker.wait_all_acknowledged(0.05) is True  # nothing sent: already drained
    tracker.register_sent("a")
    assert tracker.wait_all_acknowledged(0.05) is False
    assert tracker.get_pending_count() == 1


def test_wait_all_acknowledged_wakes_on_clear() -> None:
    tracker = QueueTracker("viewer")
    tracker.register_sent("a")
    waiting = threading.Event()
    result: list[bool] = []

    def waiter() -> None:
        waiting.set()
        result.append(tracker.wait_all_acknowledged(timeout=JOIN_TIMEOUT))

    thread = threading.Thread(target=waiter)
    thread.start()
    assert waiting.wait(JOIN_TIMEOUT)
    tracker.clear()
    join_all([thread])
    assert result == [True]


def test_wait_pending_below_gives_backpressure() -> None:
    tracker = QueueTracker("viewer")
    for item_id in "abc":
        tracker.register_sent(item_id)
    assert tracker.wait_pending_below(4, 0.05) is True
    assert tracker.wait_pending_below(3, 0.05) is False
    waiting = threading.Event()
    result: list[bool] = []

    def sender() -> None:
        waiting.set()
        result.append(tracker.wait_pending_below(3, timeout=JOIN_TIMEOUT))

    thread = threading.Thread(target=sender)
    thread.start()
    assert waiting.wait(JOIN_TIMEOUT)
    tracker.mark_skipped("b")
    join_all([thread])
    assert result == [True]


def test_wait_and_register_is_one_step_and_bounds_concurrent_senders() -> None:
    tracker = QueueTracker("viewer")
    assert tracker.wait_and_register("a", 2, 0.05) is True
    assert tracker.wait_and_register("a", 2, 0.05) is True  # already pending: unchanged
    assert tracker.wait_and_register("b", 2, 0.05) is True
    assert tracker.wait_and_register("c", 2, 0.05) is False  # full: nothing registered
    assert tracker.get_progress() == (0, 2)
    with pytest.raises(ConfigurationError):
        tracker.wait_and_register("c", 0, 0.05)
    with pytest.raises(ConfigurationError):
        tracker.wait_and_register("c", 1, math.nan)
    # Four senders wait for room under a limit of 2; each ack lets exactly one through.
    started = threading.Barrier(5, timeout=JOIN_TIMEOUT)
    results: queue.SimpleQueue[str] = queue.SimpleQueue()

    def sender(item_id: str) -> None:
        started.wait()
        if tracker.wait_and_register(item_id, 2, timeout=JOIN_TIMEOUT):
            results.put(item_id)

    threads = [threading.Thread(target=sender, args=(name,)) for name in "defg"]
    for thread in threads:
        thread.start()
    started.wait()
    for done in ["a", "b", "", ""]:
        assert tracker.get_pending_count() <= 2
        tracker.mark_processed(done or results.get(timeout=JOIN_TIMEOUT))
    join_all(threads)
    assert results.qsize() == 2 and tracker.get_pending_count() == 2
    assert tracker.get_progress() == (4, 6)


# --------------------------------------------------------------------------- registry


def test_registry_get_or_create_returns_same_tracker() -> None:
    clock = FakeClock()
    registry = GlobalQueueTrackerRegistry(default_timeout=12.0, clock=clock)
    tracker = registry.get_or_create_tracker("tcp://127.0.0.1:7780")
    assert registry.get_or_create_tracker("tcp://127.0.0.1:7780") is tracker
    assert registry.get_or_create_tracker("tcp://127.0.0.1:7780", timeout=99.0) is tracker
    assert tracker.timeout == 12.0
    assert tracker.clock is clock
    assert registry.get_tracker("tcp://127.0.0.1:7780") is tracker
    other = registry.get_or_create_tracker("ipc:///tmp/viewer.sock", timeout=3.0)
    assert other is not tracker
    assert other.timeout == 3.0
    assert other.clock is clock


def test_registries_are_independent() -> None:
    first = GlobalQueueTrackerRegistry()
    second = GlobalQueueTrackerRegistry()
    tracker = first.get_or_create_tracker("viewer")
    assert second.get_tracker("viewer") is None
    assert second.get_or_create_tracker("viewer") is not tracker
    first.clear_all()
    assert second.get_tracker("viewer") is not None


def test_registry_remove_and_clear_all() -> None:
    registry = GlobalQueueTrackerRegistry()
    tracker = registry.get_or_create_tracker("a")
    registry.get_or_create_tracker("b")
    tracker.register_sent("x")
    assert registry.remove_tracker("a") is True
    assert registry.remove_tracker("a") is False
    assert registry.get_tracker("a") is None
    assert tracker.get_pending_count() == 1  # the removed tracker itself is untouched
    assert registry.get_or_create_tracker("a") is not tracker
    registry.clear_all()
    assert registry.get_all_trackers() == {}
    assert registry.get_tracker("b") is None


def test_registry_get_all_trackers_returns_a_copy() -> None:
    registry = GlobalQueueTrackerRegistry()
    a = registry.get_or_create_tracker("a")
    b = registry.get_or_create_tracker("b")
    snapshot = registry.get_all_trackers()
    assert snapshot == {"a": a, "b": b}
    snapshot.clear()
    snapshot["c"] = QueueTracker("c")
    assert registry.get_all_trackers() == {"a": a, "b": b}


def test_registry_get_or_create_is_thread_safe() -> None:
    registry = GlobalQueueTrackerRegistry()
    barrier = threading.Barrier(8, timeout=JOIN_TIMEOUT)
    seen: list[QueueTracker] = []
    lock = threading.Lock()

    def grab() -> None:
        barrier.wait()
        for n in range(200):
            tracker = registry.get_or_create_tracker(f"viewer-{n % 4}")
            tracker.register_sent(f"{threading.get_ident()}-{n}")
            with lock:
                seen.append(tracker)

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    join_all(threads)
    trackers = registry.get_all_trackers()
    assert len(trackers) == 4
    assert {id(t) for t in seen} == {id(t) for t in trackers.values()}
    assert sum(t.get_pending_count() for t in trackers.values()) == 8 * 200
