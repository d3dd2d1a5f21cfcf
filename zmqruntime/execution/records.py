"""The execution lifecycle: a thread-safe store of records with guarded transitions.

Every execution moves QUEUED → RUNNING → one of COMPLETE / FAILED / CANCELLED (or from QUEUED
to FAILED or CANCELLED). A transition that does not fit is refused (None or False), never
applied: terminal states never change. Terminal records are kept for a bounded count and age.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final, final

import attrs

from zmqruntime.core.messages import ExecutionRecord, ExecutionStatus, ProgressEvent
from zmqruntime.errors import ConfigurationError

__all__ = ["ExecutionStore", "RetentionPolicy"]

logger = logging.getLogger(__name__)

_QUEUED: Final = ExecutionStatus.QUEUED
_RUNNING: Final = ExecutionStatus.RUNNING


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ConfigurationError(f"{attribute.name} must be above 0, got {value!r}")


@final
@attrs.frozen(kw_only=True)
class RetentionPolicy:
    """How many terminal records a server keeps, and for how long (seconds)."""

    max_records: int = attrs.field(default=10_000, validator=_positive)
    max_age: float = attrs.field(default=3600.0, validator=_positive)


@final
@attrs.define(eq=False)
class ExecutionStore:
    """All executions a server knows, by id, with their lifecycle rules enforced."""

    retention: RetentionPolicy = attrs.field(factory=RetentionPolicy)
    clock: Callable[[], float] = time.time

    _records: dict[str, ExecutionRecord] = attrs.field(factory=dict, init=False)
    _terminal: collections.OrderedDict[str, float] = attrs.field(
        factory=collections.OrderedDict, init=False
    )
    _counts: collections.Counter[ExecutionStatus] = attrs.field(
        factory=collections.Counter, init=False
    )
    _progress: dict[str, ProgressEvent] = attrs.field(factory=dict, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def submit(self, execution_id: str, labels: dict[str, str]) -> tuple[ExecutionRecord, bool]:
        """Register a new QUEUED execution; returns ``(record, created)``. A known id is not
        registered again: its current record comes back with ``created=False``."""
        with self._lock:
            self._expire()
            existing = self._current(execution_id)
            if existing is not None:
                return existing, False
            record = ExecutionRecord(
                execution_id=execution_id,
                status=_QUEUED,
                labels=dict(labels),
                submitted_at=self.clock(),
            )
            self._records[execution_id] = record
            self._counts[_QUEUED] += 1
            return record, True

    def get(self, execution_id: str) -> ExecutionRecord | None:
        """The current record of ``execution_id``, or None if unknown (or expired)."""
        with self._lock:
            self._expire()
            return self._current(execution_id)

    def _current(self, execution_id: str) -> ExecutionRecord | None:
        record = self._records.get(execution_id)
        latest = self._progress.get(execution_id)
        return record if record is None or latest is None else attrs.evolve(record, progress=latest)

    def start(self, execution_id: str) -> ExecutionRecord | None:
        """QUEUED → RUNNING; None if the execution is not queued (e.g. cancelled meanwhile)."""
        with self._lock:
            record = self._records.get(execution_id)
            if record is None or record.status is not _QUEUED:
                return None
            running = attrs.evolve(record, status=_RUNNING, started_at=self.clock())
            self._counts[_QUEUED] -= 1
            self._counts[_RUNNING] += 1
            self._records[execution_id] = running
            return running

    def progress(self, event: ProgressEvent) -> bool:
        """Keep ``event`` as the latest progress of a RUNNING execution; False otherwise."""
        with self._lock:
            record = self._records.get(event.execution_id)
            if record is None or record.status is not _RUNNING:
                return False
            latest = self._progress.get(event.execution_id)
            if latest is None or latest.sequence <= event.sequence:
                # An older event arriving late never hides a newer one. Kept aside (and
                # merged into the record when it is read) so an update costs no new record.
                self._progress[event.execution_id] = event
            return True

    def complete(self, execution_id: str) -> ExecutionRecord | None:
        """RUNNING → COMPLETE; None if the execution is not running."""
        return self._finish(execution_id, ExecutionStatus.COMPLETE)

    def fail(
        self, execution_id: str, error_type: str, error_message: str, traceback: str
    ) -> ExecutionRecord | None:
        """QUEUED or RUNNING → FAILED with the error's type, message and traceback."""
        return self._finish(
            execution_id, ExecutionStatus.FAILED, error_type, error_message, traceback
        )

    def cancel(self, execution_id: str) -> ExecutionRecord | None:
        """QUEUED or RUNNING → CANCELLED; None if unknown or already terminal."""
        return self._finish(execution_id, ExecutionStatus.CANCELLED)

    def counts(self) -> dict[ExecutionStatus, int]:
        """How many known executions are in each state."""
        with self._lock:
            self._expire()
            return {status: self._counts[status] for status in ExecutionStatus}

    def active_ids(self) -> list[str]:
        """Ids of executions that are queued or running."""
        with self._lock:
            return [key for key, rec in self._records.items() if not rec.status.is_terminal]

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._records)

    def _finish(
        self,
        execution_id: str,
        status: ExecutionStatus,
        error_type: str | None = None,
        error_message: str | None = None,
        traceback: str | None = None,
    ) -> ExecutionRecord | None:
        from_states = (_RUNNING,) if status is ExecutionStatus.COMPLETE else (_QUEUED, _RUNNING)
        with self._lock:
            record = self._records.get(execution_id)
            if record is None or record.status not in from_states:
                return None
            now = self.clock()
            finished = attrs.evolve(
                record,
                status=status,
                finished_at=now,
                progress=self._progress.pop(execution_id, record.progress),
                error_type=error_type,
                error_message=error_message,
                traceback=traceback,
            )
            self._counts[record.status] -= 1
            self._counts[status] += 1
            self._records[execution_id] = finished
            self._terminal[execution_id] = now
            self._expire()
            return finished

    def _expire(self) -> None:
        """Drop terminal records beyond the retention count or age (lock held)."""
        terminal = self._terminal
        oldest_allowed = self.clock() - self.retention.max_age
        while terminal:
            execution_id, finished_at = next(iter(terminal.items()))
            if len(terminal) <= self.retention.max_records and finished_at >= oldest_allowed:
                break
            terminal.popitem(last=False)
            record = self._records.pop(execution_id, None)
            if record is not None:
                self._counts[record.status] -= 1
