"""The execution lifecycle, checked against plain models.

* :class:`ExecutionStoreMachine` drives an :class:`ExecutionStore` (with a fake clock) through
  every transition, on known, unknown, expired and resubmitted ids, and compares it after each
  step with a model: the expected record of every id, the finish order, and a declarative
  retention rule (the last ``max_records`` finishes that are at most ``max_age`` old).
* :class:`WorkerPoolMachine` drives a real ``WorkerPool.threads(n)`` whose jobs block on
  Events the test controls, so the test decides when each job ends; after every step it waits
  (with a deadline, never sleeping) for the pool to settle and compares it with a FIFO model.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

import attrs
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from zmqruntime.core.messages import ExecutionRecord, ExecutionStatus, ProgressEvent
from zmqruntime.errors import ChannelClosed
from zmqruntime.execution.backends import threads as threads_module
from zmqruntime.execution.context import ExecutionContext
from zmqruntime.execution.outcomes import Cancelled, Completed, Failed, Job, Outcome, PoolListener
from zmqruntime.execution.pool import WorkerPool
from zmqruntime.execution.records import ExecutionStore, RetentionPolicy
from zmqruntime.protocols import TaskContext

QUEUED = ExecutionStatus.QUEUED
RUNNING = ExecutionStatus.RUNNING
COMPLETE = ExecutionStatus.COMPLETE
FAILED = ExecutionStatus.FAILED
CANCELLED = ExecutionStatus.CANCELLED

MACHINE_SETTINGS = settings(
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# --- the store ------------------------------------------------------------------------------

SUBMITTABLE_IDS = ("a", "b", "c", "d", "e")
ALL_IDS = (*SUBMITTABLE_IDS, "never-submitted")
any_id = st.sampled_from(ALL_IDS)
labels = st.dictionaries(st.sampled_from(["x", "y"]), st.text(max_size=3), max_size=2)


@attrs.define
class FakeClock:
    """A clock that moves only when the test says so (and never backwards)."""

    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


class ExecutionStoreMachine(RuleBasedStateMachine):
    """ExecutionStore against a model: active records by id, plus every finish in order."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.retention = RetentionPolicy()
        self.store = ExecutionStore(self.retention, clock=self.clock)
        self.active: dict[str, ExecutionRecord] = {}
        self.finishes: list[ExecutionRecord] = []
        self.events = 0

    # --- the model ---

    def retained_terminal(self) -> dict[str, ExecutionRecord]:
        """The terminal records a store must still hold: recent by count, and fresh by age.

        Both rules drop from the oldest finish on, so together they keep a suffix of the
        finish order. An id only comes back (resubmitted) after its old record expired, and an
        expired record never qualifies again (the clock only moves forward), so by id is safe.
        """
        oldest_allowed = self.clock.now - self.retention.max_age
        recent = self.finishes[-self.retention.max_records :]
        return {
            r.execution_id: r
            for r in recent
            if r.finished_at is not None and r.finished_at >= oldest_allowed
        }

    def known(self) -> dict[str, ExecutionRecord]:
        terminal = self.retained_terminal()
        assert not terminal.keys() & self.active.keys()
        return {**terminal, **self.active}

    def _unchanged(self, execution_id: str, before: ExecutionRecord | None) -> None:
        assert self.store.get(execution_id) == before

    def _pick(self, data: st.DataObject, *statuses: ExecutionStatus) -> str:
        """An id, often one in ``statuses`` (where the transition applies), else any id."""
        fitting = sorted(i for i, r in self.known().items() if r.status in statuses)
        if not fitting:
            return data.draw(any_id, label="execution_id")
        fit = st.sampled_from(fitting)
        return data.draw(st.one_of(fit, fit, any_id), label="execution_id")

    # --- rules ---

    @initialize(max_records=st.integers(1, 4), max_age=st.sampled_from([1.0, 2.5, 5.0, 30.0]))
    def configure(self, max_records: int, max_age: float) -> None:
        self.retention = RetentionPolicy(max_records=max_records, max_age=max_age)
        self.store = ExecutionStore(self.retention, clock=self.clock)

    @rule(data=st.data(), given=labels)
    def submit_new(self, data: st.DataObject, given: dict[str, str]) -> None:
        unknown = [i for i in SUBMITTABLE_IDS if i not in self.known()]
        if unknown:
            self.submit(data.draw(st.sampled_from(unknown), label="execution_id"), given)

    @rule(execution_id=st.sampled_from(SUBMITTABLE_IDS), given=labels)
    def submit(self, execution_id: str, given: dict[str, str]) -> None:
        before = self.known().get(execution_id)
        passed = dict(given)
        record, created = self.store.submit(execution_id, passed)
        passed["changed after submit"] = "the store must have copied the labels"
        if before is not None:
            event(f"submit: duplicate of a {before.status.value} record")
            assert created is False
            assert record == before
        else:
            assert created is True
            expected = ExecutionRecord(
                execution_id=execution_id,
                status=QUEUED,
                labels=given,
                submitted_at=self.clock.now,
            )
            assert record == expected
            self.active[execution_id] = expected
        self._unchanged(execution_id, self.known()[execution_id])

    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        execution_id = self._pick(data, QUEUED)
        before = self.known().get(execution_id)
        result = self.store.start(execution_id)
        if before is not None and before.status is QUEUED:
            expected = attrs.evolve(before, status=RUNNING, started_at=self.clock.now)
            assert result == expected
            self.active[execution_id] = expected
        else:
            event(f"start refused: {before.status.value if before else 'unknown id'}")
            assert result is None
        self._unchanged(execution_id, self.known().get(execution_id))

    @rule(data=st.data(), step=st.integers(-3, 3), fraction=st.none() | st.floats(0, 1))
    def progress(self, data: st.DataObject, step: int, fraction: float | None) -> None:
        """One event: newer (step > 0), the same sequence again, or older (step < 0)."""
        execution_id = self._pick(data, RUNNING)
        before = self.known().get(execution_id)
        latest = before.progress if before is not None else None
        self._send_progress(execution_id, (latest.sequence if latest else 0) + step, fraction)

    @rule(data=st.data(), sequences=st.lists(st.integers(1, 6), min_size=2, max_size=6))
    def progress_out_of_order(self, data: st.DataObject, sequences: list[int]) -> None:
        """Several events whose sequences arrive in any order (late, duplicated)."""
        execution_id = self._pick(data, RUNNING)
        for sequence in sequences:
            self._send_progress(execution_id, sequence, None)

    def _send_progress(self, execution_id: str, sequence: int, fraction: float | None) -> None:
        before = self.known().get(execution_id)
        latest = before.progress if before is not None else None
        self.events += 1
        progress = ProgressEvent(
            execution_id=execution_id,
            sequence=max(1, sequence),
            fraction=fraction,
            message=f"event {self.events}",  # tells apart two events with one sequence
            timestamp=self.clock.now,
        )
        accepted = self.store.progress(progress)
        if before is not None and before.status is RUNNING:
            assert accepted is True  # accepted, even when too old to be kept
            if latest is None or progress.sequence >= latest.sequence:
                event("progress: kept as the latest")
                self.active[execution_id] = attrs.evolve(before, progress=progress)
            else:
                event("progress: stale sequence ignored")
        else:
            event(f"progress refused: {before.status.value if before else 'unknown id'}")
            assert accepted is False
        self._unchanged(execution_id, self.known().get(execution_id))

    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        execution_id = self._pick(data, RUNNING)
        self._finish(execution_id, COMPLETE, {RUNNING}, lambda: self.store.complete(execution_id))

    @rule(data=st.data(), message=st.text(max_size=5))
    def fail(self, data: st.DataObject, message: str) -> None:
        execution_id = self._pick(data, QUEUED, RUNNING)
        self._finish(
            execution_id,
            FAILED,
            {QUEUED, RUNNING},
            lambda: self.store.fail(execution_id, "ValueError", message, "tb"),
            error=("ValueError", message, "tb"),
        )

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        execution_id = self._pick(data, QUEUED, RUNNING)
        self._finish(
            execution_id, CANCELLED, {QUEUED, RUNNING}, lambda: self.store.cancel(execution_id)
        )

    def _finish(
        self,
        execution_id: str,
        status: ExecutionStatus,
        allowed_from: set[ExecutionStatus],
        transition: Callable[[], ExecutionRecord | None],
        error: tuple[str, str, str] | None = None,
    ) -> None:
        before = self.known().get(execution_id)
        result = transition()
        if before is not None and before.status in allowed_from:
            error_type, error_message, traceback = error or (None, None, None)
            expected = attrs.evolve(
                before,
                status=status,
                finished_at=self.clock.now,
                error_type=error_type,
                error_message=error_message,
                traceback=traceback,
            )
            assert result == expected
            del self.active[execution_id]
            self.finishes.append(expected)
            if len(self.finishes) > self.retention.max_records:
                event("retention: a finish pushed an older record out")
        else:
            event(f"finish refused: {before.status.value if before else 'unknown id'}")
            assert result is None
        self._unchanged(execution_id, self.known().get(execution_id))

    @rule(seconds=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 10.0]))
    def advance_clock(self, seconds: float) -> None:
        before = len(self.retained_terminal())
        self.clock.advance(seconds)
        if len(self.retained_terminal()) < before:
            event("retention: records aged out")

    # --- invariants ---

    @invariant()
    def store_matches_model(self) -> None:
        known = self.known()
        # get() and len() before counts(): they must not show what has expired either.
        for execution_id in ALL_IDS:
            assert self.store.get(execution_id) == known.get(execution_id), execution_id
        assert len(self.store) == len(known)
        per_status = collections.Counter(record.status for record in known.values())
        assert self.store.counts() == {status: per_status[status] for status in ExecutionStatus}
        active = self.store.active_ids()
        assert len(active) == len(set(active))
        assert set(active) == set(self.active)

    @invariant()
    def terminal_records_never_change(self) -> None:
        # The record kept is the very one the finishing transition returned: status,
        # finished_at, errors and last progress never move afterwards.
        for execution_id, finished in self.retained_terminal().items():
            assert self.store.get(execution_id) == finished

    @invariant()
    def timestamps_are_ordered(self) -> None:
        for execution_id in ALL_IDS:
            record = self.store.get(execution_id)
            if record is None:
                continue
            assert (record.finished_at is not None) == record.status.is_terminal
            if record.status in (RUNNING, COMPLETE):
                assert record.started_at is not None
            if record.status is QUEUED or record.progress is not None:
                assert (record.started_at is None) == (record.status is QUEUED)
            times = [record.submitted_at, record.started_at, record.finished_at]
            present = [t for t in times if t is not None]
            assert present == sorted(present), record
            has_error = record.error_type is not None or record.traceback is not None
            assert has_error == (record.status is FAILED)

    @invariant()
    def retention_is_bounded_and_spares_active_records(self) -> None:
        records = [self.store.get(execution_id) for execution_id in ALL_IDS]
        terminal = [r for r in records if r is not None and r.status.is_terminal]
        assert len(terminal) <= self.retention.max_records
        oldest_allowed = self.clock.now - self.retention.max_age
        assert all(r.finished_at is not None and r.finished_at >= oldest_allowed for r in terminal)
        for execution_id in self.active:  # however old, queued and running records stay
            assert self.store.get(execution_id) is not None


TestExecutionStoreLifecycle = ExecutionStoreMachine.TestCase
TestExecutionStoreLifecycle.settings = settings(
    MACHINE_SETTINGS, max_examples=200, stateful_step_count=50
)


def test_retention_drops_oldest_terminal_first_and_never_active_ones() -> None:
    clock = FakeClock()
    store = ExecutionStore(RetentionPolicy(max_records=2, max_age=10.0), clock=clock)
    store.submit("queued", {})
    store.submit("running", {})
    store.start("running")
    for name in ("t1", "t2", "t3"):
        store.submit(name, {})
        clock.advance(1.0)
        assert store.cancel(name) is not None
    assert store.get("t1") is None  # pushed out by count, oldest first
    assert store.get("t2") is not None and store.get("t3") is not None
    clock.advance(9.5)  # t2 finished 10.5 s ago, t3 9.5 s ago
    assert store.get("t2") is None
    assert store.get("t3") is not None
    assert len(store) == 3
    clock.advance(1_000_000.0)
    assert store.get("t3") is None
    assert sorted(store.active_ids()) == ["queued", "running"]
    assert len(store) == 2
    counts = store.counts()
    assert counts[QUEUED] == counts[RUNNING] == 1
    assert sum(counts.values()) == 2


def test_an_expired_id_can_be_submitted_again_as_new() -> None:
    clock = FakeClock()
    store = ExecutionStore(RetentionPolicy(max_records=5, max_age=1.0), clock=clock)
    store.submit("x", {"run": "1"})
    store.fail("x", "E", "m", "tb")
    again, created = store.submit("x", {"run": "2"})
    assert not created and again.status is FAILED  # still retained: a duplicate
    clock.advance(1.5)
    fresh, created = store.submit("x", {"run": "2"})
    assert created and fresh.status is QUEUED and fresh.labels == {"run": "2"}
    assert fresh.error_type is None and fresh.finished_at is None


def test_racing_transitions_apply_exactly_once() -> None:
    store = ExecutionStore(RetentionPolicy(max_records=1_000, max_age=1e9))
    ids = [f"job-{n}" for n in range(200)]
    for execution_id in ids:
        store.submit(execution_id, {})
    barrier = threading.Barrier(4)
    winners: list[tuple[str, ExecutionStatus]] = []
    winners_lock = threading.Lock()

    def race(action: Callable[[str], ExecutionRecord | None]) -> None:
        barrier.wait(timeout=10)
        for execution_id in ids:
            store.start(execution_id)
            record = action(execution_id)
            if record is not None:
                with winners_lock:
                    winners.append((execution_id, record.status))

    actions: list[Callable[[str], ExecutionRecord | None]] = [
        store.complete,
        store.cancel,
        lambda execution_id: store.fail(execution_id, "E", "m", "tb"),
        store.cancel,
    ]
    threads = [threading.Thread(target=race, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert sorted(execution_id for execution_id, _status in winners) == sorted(ids)
    for execution_id, status in winners:
        record = store.get(execution_id)
        assert record is not None and record.status is status
    counts = store.counts()
    assert counts[QUEUED] == counts[RUNNING] == 0
    assert sum(counts.values()) == len(store) == len(ids)


# --- the worker pool ------------------------------------------------------------------------

SETTLE_TIMEOUT = 5.0
"""How long a step may take to show its effects (they take milliseconds)."""
JOB_TIMEOUT = 20.0
"""A job neither released nor cancelled for this long gives up (and fails the test)."""


@attrs.frozen
class JobSpec:
    """What a test job does when released, and how it reacts to a cancellation."""

    execution_id: str
    on_release: Literal["complete", "fail"]
    on_cancel: Literal["return", "raise_cancelled", "raise_other"]

    def outcome_when_released(self) -> Outcome:
        if self.on_release == "complete":
            return Completed(f"result of {self.execution_id}")
        return Failed("ValueError", f"{self.execution_id} failed on purpose", "")


def same_outcome(actual: Outcome, expected: Outcome) -> bool:
    if isinstance(expected, Failed):
        return (
            isinstance(actual, Failed)
            and (actual.error_type, actual.error_message)
            == (expected.error_type, expected.error_message)
            and expected.error_type in actual.traceback
        )
    return actual == expected


class JobBoard:
    """The test's side of a pool: the executor, the listener, and what they saw.

    Every job blocks until the test sets its release Event or the pool cancels it; every
    callback records under ``cond`` and notifies, so the test can wait for effects.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.releases: dict[str, threading.Event] = {}
        self.started: list[str] = []
        self.entered: list[str] = []
        self.finished: list[tuple[str, Outcome]] = []
        self.progress: list[ProgressEvent] = []
        self.threads: set[threading.Thread] = set()
        self.running = 0
        self.max_running = 0

    def prepare(self, execution_id: str) -> None:
        self.releases[execution_id] = threading.Event()

    def listener(self) -> PoolListener:
        return PoolListener(started=self._started, progress=self._progress, finished=self._done)

    def finished_ids(self) -> list[str]:
        return [execution_id for execution_id, _outcome in self.finished]

    def _started(self, job: Job) -> bool:
        with self.cond:
            self.started.append(job.execution_id)
            self.cond.notify_all()
        return True

    def _progress(self, progress: ProgressEvent) -> None:
        with self.cond:
            self.progress.append(progress)
            self.cond.notify_all()

    def _done(self, job: Job, outcome: Outcome) -> None:
        with self.cond:
            self.finished.append((job.execution_id, outcome))
            self.cond.notify_all()

    def execute(self, task: Any, context: TaskContext) -> object:
        spec: JobSpec = task
        release = self.releases[spec.execution_id]
        with self.cond:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.entered.append(spec.execution_id)
            self.threads.add(threading.current_thread())
            self.cond.notify_all()
        try:
            context.report_progress(0.0, "started")
            deadline = time.monotonic() + JOB_TIMEOUT
            while not (release.is_set() or context.cancelled):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{spec.execution_id} was neither released nor cancelled")
                release.wait(0.005)
            if context.cancelled:
                if spec.on_cancel == "raise_cancelled":
                    context.raise_if_cancelled()
                if spec.on_cancel == "raise_other":
                    raise RuntimeError("stopped half-way by the cancellation")
                return "a result nobody wants"
            if spec.on_release == "fail":
                raise ValueError(f"{spec.execution_id} failed on purpose")
            return f"result of {spec.execution_id}"
        finally:
            with self.cond:
                self.running -= 1
                self.cond.notify_all()

    def wait_until(self, predicate: Callable[[], bool], what: Callable[[], str]) -> None:
        """Wait (on ``cond``, with a deadline) until ``predicate()`` holds."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        with self.cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting: {what()}")
                self.cond.wait(min(remaining, 0.01))


def on_release() -> st.SearchStrategy[Literal["complete", "fail"]]:
    return st.sampled_from(["complete", "fail"])


def on_cancel() -> st.SearchStrategy[Literal["return", "raise_cancelled", "raise_other"]]:
    return st.sampled_from(["return", "raise_cancelled", "raise_other"])


def step(method: Callable[..., None]) -> Callable[..., None]:
    """Mark the machine broken while ``method`` runs, so a failed step skips teardown checks.

    Without this, every shrink of a failure would also wait out the teardown deadlines.
    """

    @functools.wraps(method)
    def checked(machine: WorkerPoolMachine, *args: Any, **kwargs: Any) -> None:
        machine.broken = True
        method(machine, *args, **kwargs)
        machine.broken = False

    return checked


class WorkerPoolMachine(RuleBasedStateMachine):
    """WorkerPool.threads(n) against a FIFO model: a queue, up to n running, outcomes."""

    def __init__(self) -> None:
        super().__init__()
        self.board = JobBoard()
        self._pool: WorkerPool | None = None
        self.workers = 1
        self.specs: dict[str, JobSpec] = {}
        self.queue: list[str] = []
        self.running: list[str] = []
        self.start_order: list[str] = []
        self.expected: dict[str, Outcome] = {}
        self.cancelled_queued: set[str] = set()
        self.broken = False

    @property
    def pool(self) -> WorkerPool:
        assert self._pool is not None
        return self._pool

    def _start(self, execution_id: str) -> None:
        self.running.append(execution_id)
        self.start_order.append(execution_id)

    def _end(self, execution_id: str, outcome: Outcome) -> None:
        self.running.remove(execution_id)
        self.expected[execution_id] = outcome
        if self.queue:  # the freed worker takes the oldest queued job
            self._start(self.queue.pop(0))

    def _settle(self) -> None:
        """Wait until the pool has caught up with the model, then compare."""
        board = self.board

        def caught_up() -> bool:
            return (
                len(board.entered) >= len(self.start_order)
                and len(board.progress) >= len(self.start_order)
                and len(board.finished) >= len(self.expected)
            )

        board.wait_until(
            caught_up,
            lambda: (
                f"entered {board.entered}, expected {self.start_order}; finished "
                f"{board.finished_ids()}, expected {sorted(self.expected)}"
            ),
        )
        statistics = self.pool.statistics()
        assert sorted(statistics.running_ids) == sorted(self.running)
        assert statistics.running == len(self.running)
        assert statistics.queued == len(self.queue)

    # --- rules ---

    @initialize(workers=st.integers(1, 3))
    def start_pool(self, workers: int) -> None:
        self.workers = workers
        self._pool = WorkerPool.threads(workers)
        self._pool.start(self.board.execute, self.board.listener())

    @rule(release_as=on_release(), cancel_as=on_cancel())
    @step
    def submit(
        self,
        release_as: Literal["complete", "fail"],
        cancel_as: Literal["return", "raise_cancelled", "raise_other"],
    ) -> None:
        execution_id = f"job-{len(self.specs):03d}"
        spec = JobSpec(execution_id, release_as, cancel_as)
        self.specs[execution_id] = spec
        self.board.prepare(execution_id)
        self.pool.submit(Job(execution_id, spec, {"spec": release_as}))
        if len(self.running) < self.workers:
            self._start(execution_id)
        else:
            self.queue.append(execution_id)
        self._settle()

    @rule(data=st.data())
    @step
    def cancel(self, data: st.DataObject) -> None:
        anything = st.sampled_from([*self.specs, "never-submitted"])
        live = [*self.queue, *self.running]
        choice = st.sampled_from(live) | anything if live else anything
        execution_id = data.draw(choice, label="execution_id")
        accepted = self.pool.cancel(execution_id)
        if execution_id in self.queue:
            event("cancel: queued job")
            assert accepted
            with self.board.cond:  # reported at once, before cancel() returned
                assert execution_id in self.board.finished_ids()
            self.queue.remove(execution_id)
            self.cancelled_queued.add(execution_id)
            self.expected[execution_id] = Cancelled()
        elif execution_id in self.running:
            event("cancel: running job")
            assert accepted
            self._end(execution_id, Cancelled())
        else:
            event("cancel: finished or unknown job")
            assert not accepted
        self._settle()

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    @step
    def release(self, data: st.DataObject) -> None:
        execution_id = data.draw(st.sampled_from(self.running), label="execution_id")
        event(f"release: {self.specs[execution_id].on_release}")
        self.board.releases[execution_id].set()
        self._end(execution_id, self.specs[execution_id].outcome_when_released())
        self._settle()

    # --- invariants ---

    @invariant()
    @step
    def at_most_n_jobs_run_at_once(self) -> None:
        with self.board.cond:
            assert self.board.max_running <= self.workers
        assert self.pool.statistics().running <= self.workers

    @invariant()
    @step
    def jobs_start_in_fifo_order(self) -> None:
        with self.board.cond:
            started, entered = list(self.board.started), list(self.board.entered)
        assert started == entered == self.start_order
        assert started == sorted(started)  # ids number the submissions

    @invariant()
    @step
    def each_job_finishes_once_with_its_outcome(self) -> None:
        with self.board.cond:
            finished = list(self.board.finished)
        self._check_finished(finished)

    @invariant()
    @step
    def cancelled_queued_jobs_never_start(self) -> None:
        with self.board.cond:
            assert not self.cancelled_queued & set(self.board.entered)

    def _check_finished(self, finished: Iterable[tuple[str, Outcome]]) -> None:
        finished = list(finished)
        times = collections.Counter(execution_id for execution_id, _outcome in finished)
        assert all(n == 1 for n in times.values()), times
        assert set(times) == set(self.expected)
        for execution_id, outcome in finished:
            expected = self.expected[execution_id]
            assert same_outcome(outcome, expected), (execution_id, outcome, expected)

    def teardown(self) -> None:
        if self._pool is None:
            return
        pool, board = self._pool, self.board
        if self.broken:  # a step failed: just clean up, the failure is already reported
            for release in board.releases.values():
                release.set()
            pool.close(timeout=SETTLE_TIMEOUT)
            return
        pool.close(timeout=SETTLE_TIMEOUT)
        statistics = pool.statistics()
        assert statistics.running == statistics.queued == 0
        with pytest.raises(ChannelClosed):
            pool.submit(Job("too-late", None))
        # close() drops queued jobs and stops running ones: all of them end Cancelled.
        self.cancelled_queued.update(self.queue)
        for execution_id in [*self.queue, *self.running]:
            self.expected[execution_id] = Cancelled()
        # close() joined its threads: every finished() has been called, no worker is left.
        with board.cond:
            finished = list(board.finished)
            entered = set(board.entered)
            threads = list(board.threads)
            assert board.running == 0
        self._check_finished(finished)
        assert not self.cancelled_queued & entered
        alive = [thread.name for thread in threads if thread.is_alive()]
        assert not alive, f"still running after close(): {alive}"


TestWorkerPoolLifecycle = WorkerPoolMachine.TestCase
TestWorkerPoolLifecycle.settings = settings(
    MACHINE_SETTINGS, max_examples=100, stateful_step_count=30
)


def test_a_cancel_while_a_job_is_being_launched_reaches_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ThreadWorkers.run builds the job's ExecutionContext after the pool moved the job to
    # its ``_running``. A cancel() from another thread in that window must still reach the job:
    # the patched constructor cancels exactly there, as a racing control thread would, and
    # the job must then never start and end cancelled.
    pool = WorkerPool.threads(1)
    real_context = ExecutionContext

    def context_racing_a_cancel(execution_id: str, *args: Any, **kwargs: Any) -> Any:
        assert pool.cancel(execution_id)
        return real_context(execution_id, *args, **kwargs)

    monkeypatch.setattr(threads_module, "ExecutionContext", context_racing_a_cancel)
    board = JobBoard()
    board.prepare("raced")
    pool.start(board.execute, board.listener())
    try:
        pool.submit(Job("raced", JobSpec("raced", "complete", "return")))
        board.wait_until(lambda: bool(board.finished), lambda: "the job never finished")
    finally:
        board.releases["raced"].set()
        pool.close(timeout=SETTLE_TIMEOUT)
    assert board.finished == [("raced", Cancelled())]
    assert not board.entered  # the executor never ran it
