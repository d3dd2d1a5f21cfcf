"""SqliteStore: executions kept in a SQLite file, so a restarted server remembers its history
and runs what was queued.

The records live in memory too (an :class:`~zmqruntime.execution.records.ExecutionStore` whose
changes are written through, in order, under its lock): reads never touch the disk. The file
(``sqlite3``, WAL, ``synchronous=NORMAL``: a killed process loses nothing committed) holds every
record the memory store holds, as the wire's JSON, with its task's digest and owner (what
retention drops is deleted), and each queued task's payload frames as received (never decoded
here) until the task leaves the queue, up to ``max_payload_bytes`` in all (a task past that
runs, but is not kept for a restart).

At open, an execution the file says was RUNNING is recorded INTERRUPTED (it may have run part
way; it never runs again), and so is a QUEUED one whose payload was not kept; the other QUEUED
ones come back from :meth:`SqliteStore.resume`, in submission order, for the server to queue
again. A clean close of a server cancels its queued tasks (clients hear so): only a server that
died keeps them. One process uses a file at a time (SQLite's exclusive locking mode).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final, final

import attrs

from zmqruntime.core import codec
from zmqruntime.core.lifecycle import close_on_exit
from zmqruntime.core.messages import (
    ExecutionRecord,
    ExecutionStatus,
    ListRequest,
    ProgressEvent,
    RecordReply,
)
from zmqruntime.errors import ConfigurationError, LocalProtocolError, ProtocolError
from zmqruntime.execution.records import ExecutionStore, RetentionPolicy
from zmqruntime.protocols import Buffer

__all__ = ["APPLICATION_ID", "SqliteStore"]

logger = logging.getLogger(__name__)

APPLICATION_ID: Final = 0x7A6D7248
"""The SQLite ``application_id`` of a history file (``zmrH``); ``user_version`` is its format."""
_FORMAT: Final = 1
_SCHEMA: Final = (
    "CREATE TABLE executions (execution_id TEXT PRIMARY KEY, status TEXT NOT NULL, "
    "record BLOB NOT NULL, digest BLOB NOT NULL, owner TEXT, payload_bytes INTEGER)",
    "CREATE TABLE payloads (execution_id TEXT NOT NULL, position INTEGER NOT NULL, "
    "frame BLOB NOT NULL, PRIMARY KEY (execution_id, position)) WITHOUT ROWID",
)
_WAL_BYTES: Final = 64 << 20
"""``journal_size_limit``: the write-ahead log is cut back to this after a checkpoint."""
_RAN: Final = "the server stopped while it ran; it was not run again"
_LOST: Final = "the server stopped before it ran, and its payload was past max_payload_bytes ({})"


@final
@attrs.define(eq=False)
class SqliteStore:
    """A :class:`~zmqruntime.protocols.RecordStore` in the SQLite file at ``path``: records,
    queued tasks and their payloads survive a restart (see the module). Build it with
    :meth:`open`; pass it as ``ExecutionServer.bind(..., store=...)``; the server closes it.
    Thread-safe: one connection, guarded by a lock.
    """

    path: Path
    memory: ExecutionStore
    """The records, in memory (reads are served from it)."""
    max_payload_bytes: int
    _db: sqlite3.Connection
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _payloads: dict[str, int] = attrs.field(factory=dict, init=False)
    """Queued executions whose payload the file holds, and its bytes."""
    _payload_bytes: int = attrs.field(default=0, init=False)
    _resumable: list[tuple[ExecutionRecord, tuple[bytes, ...]]] = attrs.field(
        factory=list, init=False
    )
    _closed: bool = attrs.field(default=False, init=False)

    @classmethod
    def open(
        cls,
        path: str | Path,
        retention: RetentionPolicy | None = None,
        *,
        max_payload_bytes: int = 256 << 20,
        busy_timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> SqliteStore:
        """Open (or create, mode 0600) the history file at ``path``, keeping terminal records
        as ``retention`` says, and at most ``max_payload_bytes`` of queued payloads. Raises
        :class:`~zmqruntime.ConfigurationError` when the file is not a zmqruntime history (or
        is damaged), or another process holds it (after ``busy_timeout`` seconds)."""
        path = Path(path)
        connection = _connect(path, busy_timeout)
        try:
            store = cls(
                path,
                ExecutionStore(retention or RetentionPolicy(), clock),
                max_payload_bytes,
                connection,
            )
            store.memory.on_change, store.memory.on_drop = store._changed, store._dropped
            store._load()
        except BaseException:
            connection.close()
            raise
        return store

    def submit(
        self,
        execution_id: str,
        labels: dict[str, str],
        digest: bytes = b"",
        owner: str | None = None,
        payload: Sequence[Buffer] = (),
    ) -> tuple[ExecutionRecord, bool]:
        """As :meth:`ExecutionStore.submit`; a new execution is written with its ``payload``
        (within ``max_payload_bytes``; a failed write is logged, the task still runs)."""
        record, created = self.memory.submit(execution_id, labels, digest, owner)
        if not created:
            return record, created
        frames = [memoryview(frame).cast("B") for frame in payload]
        size = sum(frame.nbytes for frame in frames)
        try:
            with self._transaction() as db:
                keep = self._payload_bytes + size <= self.max_payload_bytes
                row = (execution_id, record.status.value, _blob(record), digest, owner)
                db.execute(
                    "INSERT OR REPLACE INTO executions VALUES (?, ?, ?, ?, ?, ?)",
                    (*row, size if keep else None),
                )
                if keep:
                    rows = [(execution_id, i, frame) for i, frame in enumerate(frames)]
                    db.executemany("INSERT INTO payloads VALUES (?, ?, ?)", rows)
                    self._payloads[execution_id] = size
                    self._payload_bytes += size
                else:
                    why = f"{size} bytes, past max_payload_bytes ({self.max_payload_bytes})"
                    logger.warning(
                        "%s: the payload of %s is not kept: %s", self.path, execution_id, why
                    )
        except sqlite3.Error:
            logger.exception("%s: %s is not kept (it runs all the same)", self.path, execution_id)
        return record, created

    def start(self, execution_id: str) -> ExecutionRecord | None:
        """QUEUED → RUNNING, written first; None if not queued, or if the write failed (the
        task then does not run: a restart must never run it again)."""
        try:
            return self.memory.start(execution_id)
        except sqlite3.Error:
            logger.exception("%s does not start: %s cannot record it", execution_id, self.path)
            return None

    def same_task(self, execution_id: str, digest: bytes) -> bool:
        """See :meth:`ExecutionStore.same_task`."""
        return self.memory.same_task(execution_id, digest)

    def owner(self, execution_id: str) -> str | None:
        """See :meth:`ExecutionStore.owner`."""
        return self.memory.owner(execution_id)

    def get(self, execution_id: str) -> ExecutionRecord | None:
        """See :meth:`ExecutionStore.get`."""
        return self.memory.get(execution_id)

    def progress(self, event: ProgressEvent) -> bool:
        """See :meth:`ExecutionStore.progress` (kept in memory; written with the final record)."""
        return self.memory.progress(event)

    def complete(self, execution_id: str) -> ExecutionRecord | None:
        """See :meth:`ExecutionStore.complete`."""
        return self.memory.complete(execution_id)

    def fail(
        self, execution_id: str, error_type: str, error_message: str, traceback: str
    ) -> ExecutionRecord | None:
        """See :meth:`ExecutionStore.fail`."""
        return self.memory.fail(execution_id, error_type, error_message, traceback)

    def cancel(self, execution_id: str) -> ExecutionRecord | None:
        """See :meth:`ExecutionStore.cancel`."""
        return self.memory.cancel(execution_id)

    def counts(self) -> dict[ExecutionStatus, int]:
        """See :meth:`ExecutionStore.counts`."""
        return self.memory.counts()

    def active_ids(self) -> list[str]:
        """See :meth:`ExecutionStore.active_ids`."""
        return self.memory.active_ids()

    def select(
        self, query: ListRequest, owner: str | None, *, everyone: bool, max_bytes: int
    ) -> tuple[list[ExecutionRecord], str | None]:
        """See :meth:`ExecutionStore.select`."""
        return self.memory.select(query, owner, everyone=everyone, max_bytes=max_bytes)

    def resume(self) -> list[tuple[ExecutionRecord, tuple[bytes, ...]]]:
        """The tasks found queued at open, oldest first, with their payload frames: returned
        once (then an empty list), for the server to queue again."""
        with self._lock:
            found, self._resumable = self._resumable, []
        return found

    def close(self) -> None:
        """Close the file (committed changes are in it). Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    __exit__ = close_on_exit

    # --- the file --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _changed(self, record: ExecutionRecord) -> None:
        """Write a transition (memory store's lock held). Raises only for a start."""
        execution_id = record.execution_id
        try:
            with self._transaction() as db:
                db.execute(  # a new rowid: rows are in the order of their last change
                    "INSERT OR REPLACE INTO executions SELECT execution_id, ?, ?, digest, owner, "
                    "payload_bytes FROM executions WHERE execution_id = ?",
                    (record.status.value, _blob(record), execution_id),
                )
                if (size := self._payloads.pop(execution_id, None)) is not None:
                    db.execute("DELETE FROM payloads WHERE execution_id = ?", (execution_id,))
                    self._payload_bytes -= size
        except (sqlite3.Error, ProtocolError):
            if record.status is ExecutionStatus.RUNNING:
                raise
            logger.exception(
                "%s ended %s, but %s cannot record it", execution_id, record.status.value, self.path
            )

    def _dropped(self, execution_ids: list[str]) -> None:
        """Delete what retention dropped (memory store's lock held)."""
        rows = [(execution_id,) for execution_id in execution_ids]
        try:
            with self._transaction() as db:
                db.executemany("DELETE FROM executions WHERE execution_id = ?", rows)
                db.executemany("DELETE FROM payloads WHERE execution_id = ?", rows)
        except sqlite3.Error:
            logger.exception(
                "%s keeps %d expired records: cannot delete them", self.path, len(rows)
            )

    def _load(self) -> None:
        """Read the file back: history as it was (queued ones in submission order, terminal
        ones in finish order); RUNNING and unkept QUEUED ones interrupted, in that order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT record, digest, owner, payload_bytes FROM executions ORDER BY rowid"
            ).fetchall()
        loaded = [
            (_record(blob, self.path), digest, owner, size) for blob, digest, owner, size in rows
        ]
        terminal = [row for row in loaded if row[0].status.is_terminal]  # in finish order
        active = [row for row in loaded if not row[0].status.is_terminal]
        for record, digest, owner, _size in [*terminal, *active]:
            self.memory.restore(record, digest, owner)
        for record, _digest, _owner, size in active:
            execution_id = record.execution_id
            if record.status is ExecutionStatus.QUEUED and size is not None:
                with self._lock:
                    frames = self._db.execute(
                        "SELECT frame FROM payloads WHERE execution_id = ? ORDER BY position",
                        (execution_id,),
                    ).fetchall()
                    self._payloads[execution_id] = size
                    self._payload_bytes += size
                self._resumable.append((record, tuple(frame for (frame,) in frames)))
            elif record.status is ExecutionStatus.QUEUED:
                self.memory.interrupt(execution_id, _LOST.format(self.max_payload_bytes))
            else:
                self.memory.interrupt(execution_id, _RAN)
        len(self.memory)  # retention applies now, on disk too


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """A connection holding the file for this process alone, its format checked or created."""
    where = f"the history file {str(path)!r}"
    try:
        path.touch(mode=0o600, exist_ok=True)
        db = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except (OSError, sqlite3.Error) as exc:
        raise ConfigurationError(f"cannot open {where}: {exc}; give a writable path") from exc
    try:
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        db.execute("BEGIN EXCLUSIVE")
        application, version = (
            db.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("application_id", "user_version")
        )
        if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {_FORMAT}")
        elif (application, version) != (APPLICATION_ID, _FORMAT):
            raise ConfigurationError(
                f"{where} is not a zmqruntime history (format {_FORMAT}): it belongs to another "
                "program or version; give another path, or move that file away"
            )
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute(f"PRAGMA journal_size_limit = {_WAL_BYTES}")
    except BaseException as exc:
        db.close()
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            raise ConfigurationError(
                f"{where} is already in use by another process (is a server running on this "
                "port?); one server per history file: stop that one, or give this one another"
            ) from exc
        if isinstance(exc, sqlite3.DatabaseError):
            why = f"is not a zmqruntime history, or cannot be used ({exc})"
            raise ConfigurationError(f"{where} {why}; give another path, or move it away") from exc
        raise
    return db


def _blob(record: ExecutionRecord) -> bytes:
    """The record as the wire's JSON; if it cannot be (lone surrogates in an executor's text),
    without its progress and with those texts escaped."""
    try:
        return bytes(codec.encode(RecordReply(request_id=0, record=record))[0])
    except LocalProtocolError:
        names = ("error_type", "error_message", "traceback")
        escaped = {
            n: t.encode("utf-8", "backslashreplace").decode()
            for n in names
            if (t := getattr(record, n))
        }
        bare = attrs.evolve(record, progress=None, **escaped)
        return bytes(codec.encode(RecordReply(request_id=0, record=bare))[0])


def _record(blob: bytes, path: Path) -> ExecutionRecord:
    try:
        message: object = codec.decode([blob])
    except ProtocolError as exc:
        message = exc
    if not isinstance(message, RecordReply):
        raise ConfigurationError(
            f"the history file {str(path)!r} holds a record that cannot be read ({message}): "
            "it is damaged or from another zmqruntime version; move it away"
        )
    return message.record
