"""Tier 2: run a task in another process or host, follow it, cancel it, get its result.

:class:`ExecutionServer` runs tasks with an application-supplied
:class:`~zmqruntime.TaskExecutor` on a :class:`WorkerPool`; :class:`ExecutionClient` submits
them and returns :class:`Execution` handles backed by ``concurrent.futures.Future``.
"""

from __future__ import annotations

from zmqruntime.errors import ServerLost, TaskCancelled, TaskFailed
from zmqruntime.execution.client import Execution, ExecutionClient, Subscription
from zmqruntime.execution.context import ExecutionContext
from zmqruntime.execution.pool import PoolMode, PoolStatistics, WorkerPool
from zmqruntime.execution.records import ExecutionStore, RetentionPolicy
from zmqruntime.execution.server import ExecutionServer
from zmqruntime.messages import ExecutionRecord, ExecutionStatus, ServerSummary

__all__ = [
    "Execution",
    "ExecutionClient",
    "ExecutionContext",
    "ExecutionRecord",
    "ExecutionServer",
    "ExecutionStatus",
    "ExecutionStore",
    "PoolMode",
    "PoolStatistics",
    "RetentionPolicy",
    "ServerLost",
    "ServerSummary",
    "Subscription",
    "TaskCancelled",
    "TaskFailed",
    "WorkerPool",
]
