"""The execution lifecycle: a thread-safe store of records with guarded transitions.

Every execution moves QUEUED → RUNNING → one of COMPLETE / FAILED / CANCELLED / INTERRUPTED (or
from QUEUED to FAILED, CANCELLED or INTERRUPTED). A transition that does not fit is refused
(None or False), never applied: terminal states never change. Terminal records are kept for a
bounded count, size and age.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, final

import attrs

from zmqruntime.core import codec, wire
from zmqruntime.core.messages import (
    ExecutionRecord,
    ExecutionStatus,
    ListRequest,
    ProgressEvent,
    RecordReply,
)
from zmqruntime.errors import ConfigurationError, LocalProtocolError
from zmqruntime.execution.outcomes import Failed
from zmqruntime.protocols import Buffer

__all__ = [
    "MAX_LABELS",
    "MAX_LABELS_BYTES",
    "ExecutionStore",
    "RetentionPolicy",
    "labels_problem",
    "record_bytes",
    "task_digest",
]

logger = logging.getLogger(__name__)

_QUEUED: Final = ExecutionStatus.QUEUED
_RUNNING: Final = ExecutionStatus.RUNNING
MAX_LABELS: Final = 64
"""Labels one submission may carry."""
MAX_LABELS_BYTES: Final = 4096
"""UTF-8 bytes of the keys and values of one submission's labels."""
_RECORD_OVERHEAD: Final = 1024
"""Bytes a retained record costs beyond its text (objects, index entries), charged to it."""


def labels_problem(labels: dict[str, str]) -> str | None:
    """Why a submission's ``labels`` are refused (past :data:`MAX_LABELS` or
    :data:`MAX_LABELS_BYTES`), or None."""
    if len(labels) > MAX_LABELS:
        return f"{len(labels)} labels, over the limit of {MAX_LABELS}"
    size = sum(
        len(text.encode("utf-8", "surrogatepass")) for item in labels.items() for text in item
    )
    if size > MAX_LABELS_BYTES:
        return (
            f"labels of {size} bytes, over the limit of {MAX_LABELS_BYTES} (UTF-8 keys and values)"
        )
    return None


_WHOLE_DIGEST_BYTES = 64 * 1024
_SAMPLED_BYTES = 4096


def _escaped(text: str) -> str:
    """``text`` with what UTF-8 cannot carry (lone surrogates: an undecodable file name in an
    exception's message) escaped, so every reply and file can hold it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _carriable(event: ProgressEvent) -> ProgressEvent:
    """``event`` as every reply can carry it: a message with lone surrogates escaped, fields
    that hold one dropped (the published event went out as it was, or not at all)."""
    if not event.message.isascii():
        event = attrs.evolve(event, message=_escaped(event.message))
    if event.fields:
        try:
            wire.dump_json(event.fields)
        except UnicodeEncodeError:
            event = attrs.evolve(event, fields={})
    return event


def _listed(record: ExecutionRecord) -> tuple[ExecutionRecord, int]:
    """The record as a listing carries it, and its size on the wire: a progress event the
    wire cannot carry (lone surrogates in an executor's text) is left out."""
    try:
        return record, memoryview(codec.encode(RecordReply(request_id=0, record=record))[0]).nbytes
    except LocalProtocolError:
        record = attrs.evolve(record, progress=None)
        return record, memoryview(codec.encode(RecordReply(request_id=0, record=record))[0]).nbytes


def task_digest(frames: tuple[Buffer, ...]) -> bytes:
    """A digest that tells a resubmission of the same task from another task under the same
    id. Payloads up to 64 KiB are hashed whole; larger ones by their first frame, the size of
    every frame and the first and last 4 KiB of each (so the network thread never hashes a
    gigabyte)."""
    views = [memoryview(frame).cast("B") for frame in frames]
    whole = sum(view.nbytes for view in views) <= _WHOLE_DIGEST_BYTES
    digest = hashlib.blake2b(digest_size=16)
    for index, view in enumerate(views):
        digest.update(view.nbytes.to_bytes(8, "little"))
        if whole or index == 0 or view.nbytes <= 2 * _SAMPLED_BYTES:
            digest.update(view)
        else:
            digest.update(view[:_SAMPLED_BYTES])
            digest.update(view[-_SAMPLED_BYTES:])
    return digest.digest()


def record_bytes(record: ExecutionRecord) -> int:
    """The memory a retained record is charged: its strings and a fixed overhead."""
    texts = [*record.labels, *record.labels.values()]
    texts += [record.error_type or "", record.error_message or "", record.traceback or ""]
    size = _RECORD_OVERHEAD + sum(sys.getsizeof(text) for text in texts)
    if (progress := record.progress) is not None:
        size += sys.getsizeof(progress.message) + len(
            wire.dump_json(progress.fields, lone_surrogates=True)
        )
    return size


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0 or isinstance(value, bool):
        raise ConfigurationError(f"{attribute.name} must be above 0, got {value!r}")


def _count(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not isinstance(value, int):
        raise ConfigurationError(f"{attribute.name} must be a whole number, got {value!r}")
    _positive(instance, attribute, value)


@final
@attrs.frozen(kw_only=True)
class RetentionPolicy:
    """How many terminal records a server keeps, how many bytes of them
    (:func:`record_bytes`; a larger record is not kept), and for how long (seconds)."""

    max_records: int = attrs.field(default=10_000, validator=_count)
    max_age: float = attrs.field(default=3600.0, validator=_positive)
    max_bytes: int = attrs.field(default=64 << 20, validator=_count)


@final
@attrs.define(eq=False)
class ExecutionStore:
    """All executions a server knows, by id, with their lifecycle rules enforced, in memory
    (:class:`~zmqruntime.execution.sqlite_store.SqliteStore` writes one through to a file).

    ``on_change`` hears each record a transition makes (started or finished) before the store
    holds it, and ``on_drop`` the ids retention dropped; both are called under the store's lock,
    so in order. An ``on_change`` that raises leaves the execution as it was.
    """

    retention: RetentionPolicy = attrs.field(factory=RetentionPolicy)
    clock: Callable[[], float] = time.time
    on_change: Callable[[ExecutionRecord], object] | None = None
    on_drop: Callable[[list[str]], object] | None = None

    _records: dict[str, ExecutionRecord] = attrs.field(factory=dict, init=False)
    _terminal: collections.OrderedDict[str, tuple[float, int]] = attrs.field(
        factory=collections.OrderedDict, init=False
    )
    """Terminal records, oldest first: when each finished and its bytes."""
    _terminal_bytes: int = attrs.field(default=0, init=False)
    _counts: collections.Counter[ExecutionStatus] = attrs.field(
        factory=collections.Counter, init=False
    )
    _progress: dict[str, ProgressEvent] = attrs.field(factory=dict, init=False)
    _origins: dict[str, tuple[bytes, str | None]] = attrs.field(factory=dict, init=False)
    """Each known execution's task digest and owner (see :meth:`same_task`, :meth:`owner`)."""
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def submit(
        self,
        execution_id: str,
        labels: dict[str, str],
        digest: bytes = b"",
        owner: str | None = None,
        payload: Sequence[Buffer] = (),
    ) -> tuple[ExecutionRecord, bool]:
        """Register a new QUEUED execution whose task has ``digest``, submitted by ``owner``
        (a ZAP user id; None: nobody authenticated); returns ``(record, created)``. A known id
        is not registered again: its current record comes back with ``created=False``.
        ``payload`` (the task's encoded frames) is for a durable store; this one ignores it."""
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
            self._origins[execution_id] = (digest, owner)
            self._counts[_QUEUED] += 1
            return record, True

    def same_task(self, execution_id: str, digest: bytes) -> bool:
        """Whether ``digest`` is the known execution's own (True when either is unknown)."""
        with self._lock:
            known = self._origins.get(execution_id, (b"", None))[0]
            return not known or not digest or known == digest

    def owner(self, execution_id: str) -> str | None:
        """Who submitted ``execution_id`` (None when nobody authenticated or it is unknown)."""
        with self._lock:
            return self._origins.get(execution_id, (b"", None))[1]

    def get(self, execution_id: str) -> ExecutionRecord | None:
        """The current record of ``execution_id``, or None if unknown (or expired)."""
        with self._lock:
            self._expire()
            return self._current(execution_id)

    def select(
        self, query: ListRequest, owner: str | None, *, everyone: bool, max_bytes: int
    ) -> tuple[list[ExecutionRecord], str | None]:
        """One page of :class:`~zmqruntime.core.messages.ListRequest` ``query``, in submission
        order, of the executions ``owner`` submitted (all of them with ``everyone``): at most
        ``query.limit`` records and, past the first, ``max_bytes``; returns them and the id
        to continue after (None: no more). ``ValueError`` if ``query.after`` is not held."""
        with self._lock:
            self._expire()
            records = self._records
            # Only what the caller may see: whether another client's id exists stays unknown.
            ids = sorted(
                (i for i in records if everyone or self._origins.get(i, (b"", None))[1] == owner),
                key=lambda execution_id: records[execution_id].submitted_at,
            )
            start = ids.index(query.after) + 1 if query.after is not None else 0
            page: list[ExecutionRecord] = []
            size = 0
            for execution_id in ids[start:]:
                record = records[execution_id]
                if (query.statuses and record.status not in query.statuses) or not (
                    execution_id.startswith(query.prefix)
                    and query.labels.items() <= record.labels.items()
                ):
                    continue
                listed, encoded = _listed(self._current(execution_id) or record)
                if len(page) == query.limit or (page and size + encoded > max_bytes):
                    return page, page[-1].execution_id
                size += encoded
                page.append(listed)
            return page, None

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
            if self.on_change is not None:
                self.on_change(running)
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
                self._progress[event.execution_id] = _carriable(event)
            return True

    def complete(self, execution_id: str) -> ExecutionRecord | None:
        """RUNNING → COMPLETE; None if the execution is not running."""
        return self._finish(execution_id, ExecutionStatus.COMPLETE)

    def fail(
        self, execution_id: str, error_type: str, error_message: str, traceback: str
    ) -> ExecutionRecord | None:
        """QUEUED or RUNNING → FAILED with the error's type, message and traceback."""
        failure = Failed(error_type, error_message, traceback)
        return self._finish(execution_id, ExecutionStatus.FAILED, failure)

    def cancel(self, execution_id: str) -> ExecutionRecord | None:
        """QUEUED or RUNNING → CANCELLED; None if unknown or already terminal."""
        return self._finish(execution_id, ExecutionStatus.CANCELLED)

    def interrupt(self, execution_id: str, why: str) -> ExecutionRecord | None:
        """QUEUED or RUNNING → INTERRUPTED (error type ``Interrupted``, message ``why``)."""
        failure = Failed("Interrupted", why, "")
        return self._finish(execution_id, ExecutionStatus.INTERRUPTED, failure)

    def restore(self, record: ExecutionRecord, digest: bytes, owner: str | None) -> None:
        """Hold ``record`` (read back from a durable store) as it is, with its task's
        ``digest`` and ``owner``; terminal ones oldest first. Retention applies on the next
        call."""
        with self._lock:
            self._records[record.execution_id] = record
            self._origins[record.execution_id] = (digest, owner)
            self._counts[record.status] += 1
            if record.status.is_terminal:
                size = record_bytes(record)
                self._terminal[record.execution_id] = (record.finished_at or 0.0, size)
                self._terminal_bytes += size

    def resume(self) -> list[tuple[ExecutionRecord, tuple[bytes, ...]]]:
        """Tasks to queue again at start: none in memory (see ``SqliteStore.resume``)."""
        return []

    def close(self) -> None:
        """Nothing to release in memory."""

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
        self, execution_id: str, status: ExecutionStatus, failure: Failed | None = None
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
                error_type=failure and _escaped(failure.error_type),
                error_message=failure and _escaped(failure.error_message),
                traceback=failure and _escaped(failure.traceback),
            )
            if self.on_change is not None:
                self.on_change(finished)
            self._counts[record.status] -= 1
            self._counts[status] += 1
            self._records[execution_id] = finished
            size = record_bytes(finished)
            self._terminal[execution_id] = (now, size)
            self._terminal_bytes += size
            self._expire()
            return finished

    def _expire(self) -> None:
        """Drop terminal records beyond the retention count, bytes or age (lock held)."""
        terminal, policy = self._terminal, self.retention
        oldest_allowed = self.clock() - policy.max_age
        dropped = []
        while terminal:
            execution_id, (finished_at, size) = next(iter(terminal.items()))
            fits = len(terminal) <= policy.max_records and self._terminal_bytes <= policy.max_bytes
            if fits and finished_at >= oldest_allowed:
                break
            terminal.popitem(last=False)
            self._terminal_bytes -= size
            record = self._records.pop(execution_id, None)
            self._origins.pop(execution_id, None)
            dropped.append(execution_id)
            if record is not None:
                self._counts[record.status] -= 1
        if dropped and self.on_drop is not None:
            self.on_drop(dropped)
