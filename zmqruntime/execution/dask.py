"""Dask distributed behind an :class:`~zmqruntime.execution.ExecutionServer`.

``ExecutionServer(run, pool=dask_pool(client))`` keeps zmqruntime's protocol, progress,
cancellation and records, and hands the work to a Dask cluster: the executor function and
each task are shipped to Dask workers (so both must be picklable and importable there), and
the workers report progress and hear cancellation through the pool's inlet. Needs the
``dask`` extra (``pip install 'zmqruntime[dask]'``).
"""

from __future__ import annotations

from typing import Any

from zmqruntime.errors import ConfigurationError
from zmqruntime.execution.pool import WorkerPool

__all__ = ["dask_pool"]


def dask_pool(
    client: Any,
    *,
    max_workers: int | None = None,
    inlet_host: str | None = None,
    advertise_host: str | None = None,
) -> WorkerPool:
    """A remote :class:`WorkerPool` on a ``distributed.Client``.

    At most ``max_workers`` tasks are handed to Dask at once (default: four per thread of the
    cluster when the pool is made, at least 8, so Dask always has the next tasks at hand);
    the rest wait in the server's queue. A cancel drops a task from either queue.
    ``inlet_host`` / ``advertise_host``: see :meth:`WorkerPool.remote` — on a real cluster,
    bind an interface the workers can reach and advertise its name. The client stays yours:
    close it after the server.
    """
    get_executor = getattr(client, "get_executor", None)
    if get_executor is None:
        raise ConfigurationError(
            f"dask_pool needs a distributed.Client, got {type(client).__name__}; for a "
            "scheduler address, pass distributed.Client(address)"
        )
    if max_workers is None:
        max_workers = max(8, 4 * sum(client.nthreads().values()))
    # pure=False: two submissions of equal tasks are two executions, never one cached key.
    return WorkerPool.remote(
        get_executor(pure=False),
        max_workers,
        inlet_host=inlet_host,
        advertise_host=advertise_host,
    )
