"""Tier 2: run a task in another process or host, follow it, cancel it, get its result.

:class:`ExecutionServer` runs tasks with an application's :class:`~zmqruntime.TaskExecutor` on
a :class:`WorkerPool` (:class:`ThreadWorkers`, :class:`ProcessWorkers`, or another engine's
workers through :class:`RemoteWorkers`); :class:`ExecutionClient` submits them and returns
:class:`Execution` handles backed by ``concurrent.futures.Future``;
:class:`AsyncExecutionClient` awaits them in asyncio code.

Names load on first use: a client does not import the server, the pool or asyncio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zmqruntime.lazy import lazy_exports

__all__ = [
    "AsyncExecution",
    "AsyncExecutionClient",
    "Execution",
    "ExecutionClient",
    "ExecutionContext",
    "ExecutionRecord",
    "ExecutionServer",
    "ExecutionStatus",
    "ExecutionStore",
    "PoolStatistics",
    "ProcessWorkers",
    "ProgressRegistry",
    "ProgressRollup",
    "ProgressStream",
    "RemoteContext",
    "RemoteWorkers",
    "RetentionPolicy",
    "ServerLost",
    "ServerSummary",
    "SqliteStore",
    "Subscription",
    "TaskCancelled",
    "TaskFailed",
    "ThreadWorkers",
    "WorkerPool",
    "WorkerStatistics",
    "open_history",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "zmqruntime.core.messages": ("ExecutionRecord", "ExecutionStatus", "ServerSummary"),
        "zmqruntime.errors": ("ServerLost", "TaskCancelled", "TaskFailed"),
        "zmqruntime.execution.async_client": (
            "AsyncExecution",
            "AsyncExecutionClient",
            "ProgressStream",
        ),
        "zmqruntime.execution.backends.inlet": ("RemoteWorkers",),
        "zmqruntime.execution.backends.processes": ("ProcessWorkers",),
        "zmqruntime.execution.backends.remote": ("RemoteContext",),
        "zmqruntime.execution.backends.threads": ("ThreadWorkers",),
        "zmqruntime.execution.client": ("Execution", "ExecutionClient", "Subscription"),
        "zmqruntime.execution.context": ("ExecutionContext",),
        "zmqruntime.execution.history": ("open_history",),
        "zmqruntime.execution.outcomes": ("WorkerStatistics",),
        "zmqruntime.execution.pool": ("PoolStatistics", "WorkerPool"),
        "zmqruntime.execution.progress": ("ProgressRegistry", "ProgressRollup"),
        "zmqruntime.execution.records": ("ExecutionStore", "RetentionPolicy"),
        "zmqruntime.execution.server": ("ExecutionServer",),
        "zmqruntime.execution.sqlite_store": ("SqliteStore",),
    },
)

# For type checkers only: at run time each name is loaded on first use (lazy_exports above).
if TYPE_CHECKING:
    from zmqruntime.core.messages import ExecutionRecord, ExecutionStatus, ServerSummary
    from zmqruntime.errors import ServerLost, TaskCancelled, TaskFailed
    from zmqruntime.execution.async_client import (
        AsyncExecution,
        AsyncExecutionClient,
        ProgressStream,
    )
    from zmqruntime.execution.backends.inlet import RemoteWorkers
    from zmqruntime.execution.backends.processes import ProcessWorkers
    from zmqruntime.execution.backends.remote import RemoteContext
    from zmqruntime.execution.backends.threads import ThreadWorkers
    from zmqruntime.execution.client import Execution, ExecutionClient, Subscription
    from zmqruntime.execution.context import ExecutionContext
    from zmqruntime.execution.history import open_history
    from zmqruntime.execution.outcomes import WorkerStatistics
    from zmqruntime.execution.pool import PoolStatistics, WorkerPool
    from zmqruntime.execution.progress import ProgressRegistry, ProgressRollup
    from zmqruntime.execution.records import ExecutionStore, RetentionPolicy
    from zmqruntime.execution.server import ExecutionServer
    from zmqruntime.execution.sqlite_store import SqliteStore
