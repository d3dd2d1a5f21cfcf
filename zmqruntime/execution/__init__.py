"""Tier 2: run a task in another process or host, follow it, cancel it, get its result.

:class:`ExecutionServer` runs tasks with an application-supplied
:class:`~zmqruntime.TaskExecutor` on a :class:`WorkerPool`; :class:`ExecutionClient` submits
them and returns :class:`Execution` handles backed by ``concurrent.futures.Future``.
``WorkerPool.remote`` (and :func:`zmqruntime.execution.backends.dask.dask_pool`) run the tasks on
another engine's workers, which get a :class:`RemoteContext`.
"""

from __future__ import annotations

from zmqruntime.core.messages import ExecutionRecord, ExecutionStatus, ServerSummary
from zmqruntime.errors import ServerLost, TaskCancelled, TaskFailed
from zmqruntime.execution.backends.remote import RemoteContext
from zmqruntime.execution.client import Execution, ExecutionClient, Subscription
from zmqruntime.execution.context import ExecutionContext
from zmqruntime.execution.pool import PoolMode, PoolStatistics, WorkerPool
from zmqruntime.execution.records import ExecutionStore, RetentionPolicy
from zmqruntime.execution.server import ExecutionServer

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
    "RemoteContext",
    "RetentionPolicy",
    "ServerLost",
    "ServerSummary",
    "Subscription",
    "TaskCancelled",
    "TaskFailed",
    "WorkerPool",
]
