"""What a user would otherwise pick: Dask distributed and ipyparallel, workloads 1-3.

Each peer runs as its documented defaults suggest for one local worker: Dask a
``LocalCluster`` with one worker thread in this process (``processes=False``) over TCP on
loopback; ipyparallel a controller and one engine (its own processes) on loopback. A peer that
is not installed is skipped, never faked. Neither has an IPC transport here: that row is
skipped with the reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks.plan import DASK, IPP, Outcome, Plan, Samples, Skipped
from benchmarks.timing import repeat, run_clients, sample_calls, shares

MODULES = {DASK: "distributed", IPP: "ipyparallel"}
KEYS = ("1-latency-tcp", "1-latency-ipc", "2-pipelined", "3-pipelined-clients")
"""The workloads the peers are measured on."""
NO_IPC = {
    DASK: "Dask has no IPC transport (tcp, inproc, ucx)",
    IPP: "ipyparallel measured with its default loopback TCP only",
}


def noop(task: Any) -> Any:
    """The no-op task: returns its input."""
    return task


def installed(peer: str) -> bool:
    return importlib.util.find_spec(MODULES[peer]) is not None


class _Dask:
    """``submit(n)`` returns a future with ``.result()``; one Client per benchmark client."""

    def __init__(self) -> None:
        from distributed import Client, LocalCluster  # noqa: PLC0415 (optional peer)

        logging.getLogger("distributed").setLevel(logging.ERROR)
        self.cluster = LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            protocol="tcp://",
            host="127.0.0.1",
            dashboard_address=None,
        )
        self._client_type = Client
        self.clients: list[Any] = []

    def client(self) -> Callable[[int], Any]:
        client = self._client_type(self.cluster.scheduler_address, set_as_default=False)
        self.clients.append(client)
        return lambda number: client.submit(noop, number, pure=False)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.cluster.close()


class _Ipyparallel:
    """``submit(n)`` returns an AsyncResult with ``.get()``; one Client per benchmark client."""

    def __init__(self) -> None:
        import ipyparallel  # noqa: PLC0415 (optional peer)

        self._profile = tempfile.TemporaryDirectory(prefix="zmqrt-bench-ipp-")
        self.cluster = ipyparallel.Cluster(
            n=1, profile_dir=self._profile.name, log_level=logging.ERROR
        )
        self.cluster.start_cluster_sync()
        self.clients: list[Any] = []

    def client(self) -> Callable[[int], Any]:
        client = self.cluster.connect_client_sync()
        client.wait_for_engines(1, timeout=60)
        self.clients.append(client)
        view = client[0]
        return lambda number: view.apply_async(noop, number)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.cluster.stop_cluster_sync()
        self._profile.cleanup()


def _wait(handle: Any) -> Any:
    return handle.result() if hasattr(handle, "result") else handle.get()


@contextlib.contextmanager
def _running(peer: str) -> Iterator[Any]:
    system = _Dask() if peer == DASK else _Ipyparallel()
    try:
        yield system
    finally:
        system.close()


def run(
    peer: str, plan: Plan, log: Callable[[str], None], keys: tuple[str, ...] = KEYS
) -> dict[str, Outcome]:
    """Workloads 1-3 (those in ``keys``) for one peer, by workload key, on one cluster."""
    if not installed(peer):
        reason = f"{peer} not installed"
        log(f"skipped: {reason}")
        return dict.fromkeys(KEYS, Skipped(reason))
    results: dict[str, Outcome] = {"1-latency-ipc": Skipped(NO_IPC[peer])}
    with _running(peer) as system:
        submit = system.client()
        if "1-latency-tcp" in keys:
            results["1-latency-tcp"] = Samples(
                sample_calls(
                    lambda number: _wait(submit(number)),
                    plan.latency_count,
                    plan.warmup,
                    plan.latency_budget,
                )
            )
            log(f"{peer}: latency done")
        for key, clients in (("2-pipelined", 1), ("3-pipelined-clients", plan.clients)):
            if key not in keys:
                continue
            submitters = [submit] + [system.client() for _ in range(clients - 1)]
            results[key] = _pipelined(plan, submitters)
            log(f"{peer}: {key} done")
    return results


def _pipelined(plan: Plan, submitters: list[Callable[[int], Any]]) -> Samples:
    clients = len(submitters)

    def work(index: int, counts: list[int]) -> None:
        handles = [submitters[index](number) for number in range(counts[index])]
        for handle in handles:
            _wait(handle)

    warm = shares(plan.warmup, clients)
    run_clients(clients, lambda index: work(index, warm))
    counts = shares(plan.peer_pipelined_tasks, clients)
    durations = repeat(
        lambda: run_clients(clients, lambda index: work(index, counts)),
        plan.reps,
        plan.rep_budget,
    )
    note = "" if plan.peer_pipelined_tasks == plan.pipelined_tasks else "fewer tasks"
    return Samples(durations, items=plan.peer_pipelined_tasks, note=note)
