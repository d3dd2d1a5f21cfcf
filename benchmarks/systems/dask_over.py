"""Workload 8: zmqruntime in front of Dask against plain Dask, on one shared cluster.

One ``distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` and one
``Client`` serve every system in the same run, their repetitions interleaved so that a noisy
machine hurts all alike:

* plain Dask: ``client.submit(noop, n, pure=False)`` for every task, then ``client.gather``;
* zmqruntime over Dask: an :class:`~zmqruntime.execution.ExecutionServer` whose pool is
  ``dask_pool(client)`` (its defaults: at most four Dask tasks per cluster thread, short
  jobs in batches), an :class:`~zmqruntime.execution.ExecutionClient` submitting every
  task, then waiting for every result;
* the same with ``dask_pool(client, max_workers=<the task count>)``: every job handed to
  Dask at once, each as a Dask task of its own, as plain Dask has them — what the layer
  costs per Dask task, without batches of short jobs;
* for the second and third rows, tasks that keep a CPU busy for ``dask_work_ms`` (10 ms:
  the pool batches them) and ``dask_long_ms`` (50 ms: one job per Dask task), plain Dask
  against ``dask_pool(client)``.

Server, client and the Dask client (with LocalCluster's scheduler) share this process, like
the rest of the suite. The functions shipped to Dask live here, at module level: Dask starts
its worker processes with ``spawn``, and they inherit this process's ``sys.path``, so they
import ``benchmarks.systems.dask_over`` by name. Without ``distributed`` every row is skipped.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks.plan import DASK, OURS_DASK, OURS_DASK_ALL, Outcome, Plan, Samples, Skipped
from benchmarks.systems.ours import ProgressCounter
from benchmarks.timing import repeat
from zmqruntime import TransportMode, ZMQConfig
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.execution import ExecutionClient, ExecutionServer

THROUGHPUT = "8-dask-throughput"
WORK = "8-dask-work"
LONG = "8-dask-long"
PROGRESS = "8-dask-progress"
KEYS = (THROUGHPUT, WORK, LONG, PROGRESS)
SYSTEMS = {
    THROUGHPUT: (DASK, OURS_DASK, OURS_DASK_ALL),
    WORK: (DASK, OURS_DASK),
    LONG: (DASK, OURS_DASK),
    PROGRESS: (OURS_DASK,),
}
WORKERS = 2
WAIT = 120.0
"""Seconds to wait for the cluster's workers, or for a task's result."""


def noop(task: Any) -> Any:
    """Plain Dask's no-op task: returns its input."""
    return task


def run_noop(task: Any, _context: Any) -> Any:
    """zmqruntime's no-op executor (runs in a Dask worker): returns its input."""
    return task


def burn(task: Any) -> Any:
    """Plain Dask's small real task: ``[number, seconds]`` → keeps a CPU busy for
    ``seconds`` (a stand-in for a little computation), returns ``task``."""
    deadline = time.perf_counter() + task[1]
    while time.perf_counter() < deadline:
        pass
    return task


def run_burn(task: Any, _context: Any) -> Any:
    """zmqruntime's executor for the same task (runs in a Dask worker)."""
    return burn(task)


def report(task: Any, context: Any) -> int:
    """Reports ``task`` progress updates from a Dask worker."""
    updates = int(task)
    for number in range(1, updates + 1):
        context.report_progress(number / updates)
    return updates


def installed() -> bool:
    return importlib.util.find_spec("distributed") is not None


@contextmanager
def _served(
    client: Any, executor: Any, max_workers: int | None = None
) -> Iterator[tuple[ExecutionClient, int]]:
    """An ExecutionServer on ``dask_pool(client)``, one connected ExecutionClient, and the
    pool's cap on tasks handed to Dask at once."""
    from zmqruntime.execution.backends.dask import dask_pool  # noqa: PLC0415 (optional peer)

    with tempfile.TemporaryDirectory(prefix="zmqrt-bench-") as folder:
        config = ZMQConfig(ipc_root=folder)
        pool = dask_pool(client, max_workers=max_workers)
        server = ExecutionServer.bind(
            Endpoint.of(port=0, transport_mode=TransportMode.TCP, config=config),
            executor,
            pool=pool,
        )
        server.start()
        try:
            ours = ExecutionClient.to(
                Endpoint.of(
                    port=server.port_number, transport_mode=TransportMode.TCP, config=config
                )
            ).connect()
            try:
                yield ours, pool.max_workers
            finally:
                ours.close()
        finally:
            server.close()


def _plain_rep(client: Any, tasks: list[Any], function: Callable[[Any], Any] = noop) -> float:
    start = time.perf_counter()
    futures = [client.submit(function, task, pure=False) for task in tasks]
    results = client.gather(futures)
    duration = time.perf_counter() - start
    if results != tasks:
        raise AssertionError("plain Dask returned wrong results")
    return duration


def _ours_rep(ours: ExecutionClient, tasks: list[Any]) -> float:
    start = time.perf_counter()
    executions = [ours.submit(task) for task in tasks]
    results = [execution.result(timeout=WAIT) for execution in executions]
    duration = time.perf_counter() - start
    if results != tasks:
        raise AssertionError("zmqruntime over Dask returned wrong results")
    return duration


def _interleaved(runs: list[Callable[[], float]], reps: int, budget: float) -> list[list[float]]:
    """Durations of up to ``reps`` rounds of every run, one after another, within ``budget``.

    At least one round is made; the budget only stops further rounds.
    """
    durations: list[list[float]] = [[] for _ in runs]
    deadline = time.perf_counter() + budget
    for _ in range(reps):
        for index, run in enumerate(runs):
            durations[index].append(run())
        if time.perf_counter() > deadline:
            break
    return durations


def _throughput(client: Any, plan: Plan) -> dict[str, Outcome]:
    """Plain Dask, and zmqruntime over Dask capped and uncapped, interleaved."""
    count = plan.dask_tasks
    tasks, warmup = list(range(count)), list(range(plan.warmup))
    with (
        _served(client, run_noop) as (capped, cap),
        _served(client, run_noop, max_workers=count) as (uncapped, _),
    ):
        _plain_rep(client, warmup)
        _ours_rep(capped, warmup)
        _ours_rep(uncapped, warmup)
        plain, over, over_all = _interleaved(
            [
                lambda: _plain_rep(client, tasks),
                lambda: _ours_rep(capped, tasks),
                lambda: _ours_rep(uncapped, tasks),
            ],
            plan.reps,
            plan.dask_budget,
        )
    return {
        **_plain_and_ours(plain, over, count, cap),
        OURS_DASK_ALL: Samples(
            over_all,
            items=count,
            note=f"dask_pool(client, max_workers={count:,}): no batches",
        ),
    }


def _work(client: Any, plan: Plan, count: int, milliseconds: float) -> dict[str, Outcome]:
    """``count`` real tasks of ``milliseconds`` of CPU each: plain Dask and zmqruntime over
    Dask with its defaults, interleaved."""
    seconds = milliseconds / 1000
    tasks = [[number, seconds] for number in range(count)]
    with _served(client, run_burn) as (ours, cap):
        _plain_rep(client, tasks[:WORKERS], burn)
        _ours_rep(ours, tasks[:WORKERS])
        plain, over = _interleaved(
            [lambda: _plain_rep(client, tasks, burn), lambda: _ours_rep(ours, tasks)],
            plan.reps,
            plan.dask_budget,
        )
    return _plain_and_ours(plain, over, count, cap)


def _plain_and_ours(
    plain: list[float], over: list[float], count: int, cap: int
) -> dict[str, Outcome]:
    """The samples of plain Dask and of ``dask_pool(client)`` with its cap of ``cap``."""
    return {
        DASK: Samples(plain, items=count, note="the baseline"),
        OURS_DASK: Samples(
            over, items=count, note=f"dask_pool(client): at most {cap} tasks in Dask at once"
        ),
    }


def _progress(client: Any, plan: Plan) -> Samples:
    """A task on a Dask worker reporting ``dask_progress_updates`` events, with a
    subscriber: submit → the final record seen after every event."""
    updates = plan.dask_progress_updates
    heard = ProgressCounter()
    delivered: list[int] = []
    with _served(client, report) as (ours, _cap):
        ours.on_progress(heard)

        def run(count: int, wait: float = WAIT) -> float:
            heard.reset()
            start = time.perf_counter()
            ours.submit(count).result(timeout=WAIT)
            heard.finished.wait(wait)
            end = heard.end or time.perf_counter()
            delivered.append(heard.events)
            return end - start

        deadline = time.monotonic() + 10  # PUB/SUB joins late: probe until it has
        while run(1, wait=0.5) and not delivered[-1] and time.monotonic() < deadline:
            pass
        delivered.clear()
        durations = repeat(lambda: run(updates), plan.reps, plan.rep_budget)
    return Samples(durations, extra={"delivered": delivered, "updates": updates})


def run(
    plan: Plan, log: Callable[[str], None], keys: tuple[str, ...] = KEYS
) -> dict[tuple[str, str], Outcome]:
    """Workload 8 (the rows in ``keys``) on one shared cluster, by (row key, system)."""
    if not installed():
        reason = "distributed not installed"
        log(f"skipped: {reason}")
        return {(key, system): Skipped(reason) for key in keys for system in SYSTEMS[key]}
    from distributed import Client, LocalCluster  # noqa: PLC0415 (optional peer)

    logging.getLogger("distributed").setLevel(logging.ERROR)
    results: dict[tuple[str, str], Outcome] = {}
    with (
        LocalCluster(
            n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(WORKERS, timeout=WAIT)
        log(f"{OURS_DASK}: {WORKERS} workers up")
        if THROUGHPUT in keys:
            for system, outcome in _throughput(client, plan).items():
                results[THROUGHPUT, system] = outcome
            log(f"{OURS_DASK}: {THROUGHPUT} done")
        for key, count, milliseconds in (
            (WORK, plan.dask_work_tasks, plan.dask_work_ms),
            (LONG, plan.dask_long_tasks, plan.dask_long_ms),
        ):
            if key in keys:
                for system, outcome in _work(client, plan, count, milliseconds).items():
                    results[key, system] = outcome
                log(f"{OURS_DASK}: {key} done")
        if PROGRESS in keys:
            results[PROGRESS, OURS_DASK] = _progress(client, plan)
            log(f"{OURS_DASK}: {PROGRESS} done")
    return results
