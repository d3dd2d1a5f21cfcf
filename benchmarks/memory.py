"""Workload 7: the resident memory of a zmqruntime server process over many tasks.

The server runs in a subprocess (``benchmarks.systems.ours_server``, all defaults: records
kept up to ``RetentionPolicy.max_records`` = 10,000, results cached within 64 MiB); this
process submits ``memory_tasks`` no-op tasks with a bounded number in flight and reads
``VmRSS``/``VmHWM`` from ``/proc/<pid>/status`` at twenty checkpoints. Retention works when
RSS stops growing once the retained records are full: the note gives the growth over the
second half of the run.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.plan import Plan, Samples, Skipped
from zmqruntime import TransportMode
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.execution import Execution, ExecutionClient

IN_FLIGHT = 1000
CHECKPOINTS = 20
REPO = Path(__file__).resolve().parents[1]


def read_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of ``pid`` in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
    return values


def measure(plan: Plan) -> Samples | Skipped:
    """Peak RSS of the server over ``plan.memory_tasks`` tasks, with the RSS series."""
    if not Path("/proc/self/status").exists():
        return Skipped("needs /proc (Linux)")
    total = plan.memory_tasks
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.systems.ours_server"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with ExecutionClient.to(Endpoint.of(port=port, transport_mode=TransportMode.TCP)) as client:
            client.submit(0).result(timeout=30)
            start_rss = read_status(server.pid)["VmRSS"]
            series = _run(client, server.pid, total)
            client.shutdown(graceful=True, timeout=30)
        server.wait(60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    peak = max(hwm for _tasks, _rss, hwm in series)
    half = [rss for tasks, rss, _hwm in series if tasks >= total // 2]
    end = series[-1][1]
    note = (
        f"RSS {start_rss:.0f} MiB at start, {series[0][1]:.0f} after {series[0][0]:,} tasks, "
        f"{end:.0f} after {total:,}; {half[-1] - half[0]:+.1f} MiB over the second half"
    )
    return Samples(
        [peak],
        note=note,
        extra={"series": [[tasks, rss] for tasks, rss, _hwm in series], "start": start_rss},
    )


def _run(client: ExecutionClient, pid: int, total: int) -> list[tuple[int, float, float]]:
    """Submit ``total`` tasks, at most IN_FLIGHT at once; (tasks done, RSS, HWM) series."""
    step = max(1, total // CHECKPOINTS)
    pending: collections.deque[Execution] = collections.deque()
    series = []
    done = 0
    deadline = time.monotonic() + 1800
    for number in range(total):
        pending.append(client.submit(number))
        while len(pending) >= IN_FLIGHT or (number == total - 1 and pending):
            pending.popleft().result(timeout=120)
            done += 1
            if done % step == 0 or done == total:
                status = read_status(pid)
                series.append((done, status["VmRSS"], status["VmHWM"]))
        if time.monotonic() > deadline:
            raise RuntimeError(f"the memory workload took over 30 minutes ({done} tasks)")
    return series
