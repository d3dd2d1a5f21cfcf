"""A server's history: which store ``zmqruntime serve --store`` names, and the tasks a durable
store kept queued, queued again when its server starts."""

from __future__ import annotations

import re

from zmqruntime.core.credentials import runtime_directory
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.serializers import SafeSerializer
from zmqruntime.execution.outcomes import EncodedTask, Job
from zmqruntime.execution.pool import WorkerPool
from zmqruntime.execution.records import ExecutionStore
from zmqruntime.protocols import RecordStore, TaskSerializer

__all__ = ["open_history", "requeue"]


def open_history(choice: str | None, endpoint: Endpoint, executor: str = "") -> RecordStore:
    """The store ``zmqruntime serve --store`` names: ``"memory"``; a file path
    (:meth:`SqliteStore.open`); or None, the file
    ``history-<transport>-<port>-<executor>.sqlite3`` in the runtime folder (memory for port 0:
    a free port is another one at each start). The executor (``module:function``, made safe
    for a file name) is in the name so that tasks one executor left queued are never run by
    another on the same port."""
    if choice == "memory" or (choice is None and endpoint.port == 0):
        return ExecutionStore()
    # Loaded here: sqlite3 is ~3 ms of the import of every server otherwise.
    from zmqruntime.execution.sqlite_store import SqliteStore  # noqa: PLC0415

    if choice is None:
        owner = re.sub(r"[^A-Za-z0-9._-]", "-", executor)[:64]
        name = f"history-{endpoint.transport.value}-{endpoint.port}{'-' * bool(owner)}{owner}"
        return SqliteStore.open(runtime_directory(endpoint.config, create=True) / f"{name}.sqlite3")
    return SqliteStore.open(choice)


def requeue(
    store: RecordStore, pool: WorkerPool, serializer: TaskSerializer, max_nodes: int
) -> int:
    """Queue on ``pool`` again, oldest first, the tasks ``store`` kept queued when its last
    server died (:meth:`SqliteStore.resume`); each is decoded by its worker (bounded to
    ``max_nodes`` with the safe serializer), and fails there if it cannot. Returns how many."""
    nodes = max_nodes if isinstance(serializer, SafeSerializer) else None
    found = store.resume()
    for record, frames in found:
        pool.submit(Job(record.execution_id, EncodedTask(frames, serializer, nodes), record.labels))
    return len(found)
