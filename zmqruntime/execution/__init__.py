"""Tier 2: run a task in another process or host, follow it, cancel it, get its result.

:class:`ExecutionServer` runs tasks with an application's :class:`~zmqruntime.TaskExecutor` on
a :class:`WorkerPool` (:class:`ThreadWorkers`, :class:`ProcessWorkers`, or another engine's
workers through :class:`RemoteWorkers`); :class:`ExecutionClient` submits them and returns
:class:`Execution` handles backed by ``concurrent.futures.Future``;
:class:`AsyncExecutionClient` awaits them in asyncio code.
"""

from __future__ import annotations

from zmqruntime.core.messages import ExecutionRecord, ExecutionStatus, ServerSummary
from zmqruntime.errors import ServerLost, TaskCancelled, TaskFailed
from zmqruntime.execution.async_client import AsyncExecution, AsyncExecutionClient, ProgressStream
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
