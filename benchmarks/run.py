"""The benchmark suite: every workload on every system, one table, the same as JSON.

Run ``python -m benchmarks`` (full, several minutes) or ``python -m benchmarks --quick``
(under a minute; CI's smoke test). Progress lines go to stderr; the Markdown table and the
targets go to stdout; the JSON goes to ``--json`` (default ``benchmarks/results.json``).

Order: each workload runs raw pyzmq, zmqruntime and zmqruntime 0.6.5 one after another (side
by side in time), then Dask and ipyparallel each run workloads 1-3 on a cluster of their
own (started and stopped around their block, so their background threads disturb nobody
else), then workload 8 (zmqruntime over Dask against plain Dask, their repetitions
interleaved on one cluster of worker processes), then the memory workload. The exit code is
1 if any system raised.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy
import zmq

from benchmarks import memory, report, startup
from benchmarks.plan import (
    BATCHES,
    CURVE_SIZES,
    IPP,
    MANY_CLIENTS,
    OURS,
    OURS_BATCH,
    OURS_MANY_CLIENTS,
    OURS_ONE_CLIENT,
    OURS_SINGLE,
    PEERS,
    RAW,
    V065,
    Failed,
    Outcome,
    Plan,
    Samples,
    Skipped,
    Workload,
    curve_workloads,
    startup_workloads,
    workloads,
)
from benchmarks.systems import dask_over, ours, peers, raw, raw_stream, v065

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results.json"


def log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _guard(call: Callable[[], Outcome]) -> Outcome:
    try:
        return call()
    except Exception as exc:
        log(traceback.format_exc())
        return Failed(f"{type(exc).__name__}: {exc}")


RAW_CURVE_NOTE = "libzmq CURVE on every socket, no ZAP handler"
OURS_CURVE_NOTE = "explicit CURVE keys on every socket, one allowed client key (ZAP)"


def _noted(call: Callable[[], Outcome], note: str) -> Outcome:
    outcome = call()
    return dataclasses.replace(outcome, note=note) if isinstance(outcome, Samples) else outcome


def curve_calls(plan: Plan) -> dict[str, dict[str, Callable[[], Outcome]]]:
    """Workload 9: raw pyzmq and zmqruntime with CURVE keys (skipped if libzmq has none)."""
    p = functools.partial
    if not zmq.has("curve"):
        skipped = p(Skipped, "this libzmq was built without CURVE")
        keys9 = [workload.key for workload in curve_workloads(plan)]
        return {key: {RAW: skipped, OURS: skipped} for key in keys9}
    keys = raw.Curve.make()
    measured: dict[str, tuple[Callable[[], Outcome], Callable[[], Outcome]]] = {
        "9-curve-latency-tcp": (
            p(raw.latency, plan, "tcp", keys),
            p(ours.latency, plan, "tcp", curve=True),
        ),
        "9-curve-pipelined": (p(raw.pipelined, plan, 1, keys), p(ours.pipelined, plan, 1, True)),
        "9-curve-payload": (p(raw.payload, plan, keys), p(ours.payload, plan, curve=True)),
    }
    for size in CURVE_SIZES:
        measured[f"9-curve-stream-{size}-w{plan.window}"] = (
            p(raw_stream.stream, plan, size, plan.window, keys),
            p(ours.stream, plan, size, plan.window, curve=True),
        )
    return {
        key: {RAW: p(_noted, theirs, RAW_CURVE_NOTE), OURS: p(_noted, mine, OURS_CURVE_NOTE)}
        for key, (theirs, mine) in measured.items()
    }


def core_calls(plan: Plan, old: v065.Runner) -> dict[str, dict[str, Callable[[], Outcome]]]:
    """For each workload key, how raw pyzmq, zmqruntime and 0.6.5 measure it."""
    p = functools.partial
    calls: dict[str, dict[str, Callable[[], Outcome]]] = {}
    for transport in ("tcp", "ipc"):
        calls[f"1-latency-{transport}"] = {
            RAW: p(raw.latency, plan, transport),
            OURS: p(ours.latency, plan, transport),
            V065: p(old.latency, transport),
        }
    for key, clients in (("2-pipelined", 1), ("3-pipelined-clients", plan.clients)):
        calls[key] = {
            RAW: p(raw.pipelined, plan, clients),
            OURS: p(ours.pipelined, plan, clients),
            V065: p(old.pipelined, clients),
        }
    calls["4-payload"] = {RAW: p(raw.payload, plan), OURS: p(ours.payload, plan), V065: old.payload}
    for size in (512, 2048):
        for window in (1, plan.window):
            calls[f"5-stream-{size}-w{window}"] = {
                RAW: p(raw_stream.stream, plan, size, window),
                OURS: p(ours.stream, plan, size, window),
                V065: p(old.stream, size, window),
            }
    for key, subscribed in (("6-progress-subscribed", True), ("6-progress-body-alone", False)):
        calls[key] = {
            RAW: p(raw.progress, plan, subscribed),
            OURS: p(ours.progress, plan, subscribed),
            V065: p(old.progress, subscribed),
        }
    calls["7-memory"] = {OURS: p(memory.measure, plan)}
    for size, count in BATCHES:
        calls[f"10-batch-{size}x{count}"] = {
            OURS_SINGLE: p(ours.batches, plan, size, count, batched=False),
            OURS_BATCH: p(ours.batches, plan, size, count, batched=True),
        }
    calls["12-many-clients"] = {
        OURS_ONE_CLIENT: p(ours.pipelined, plan, 1),
        OURS_MANY_CLIENTS: p(ours.pipelined, plan, MANY_CLIENTS),
    }
    for workload in startup_workloads():
        calls[workload.key] = {
            system: p(startup.outcome, plan, workload.key, system) for system in workload.systems
        }
    return calls | curve_calls(plan)


def _brief(outcome: Outcome) -> str:
    if isinstance(outcome, Samples):
        return f"{len(outcome.values)} samples"
    if isinstance(outcome, Failed):
        return f"error: {outcome.error}"
    return f"skipped: {outcome.reason}"


def measure(plan: Plan, selected: list[Workload], old: v065.Runner) -> list[report.Row]:
    """Every selected workload on every system, rows in table order."""
    outcomes: dict[tuple[str, str], Outcome] = {}
    calls = core_calls(plan, old)
    keys = {workload.key for workload in selected}
    for workload in selected:
        if workload.key == "7-memory":
            continue  # last: it is the longest and needs a quiet machine
        for system, call in calls.get(workload.key, {}).items():
            started = time.perf_counter()
            outcomes[workload.key, system] = outcome = _guard(call)
            took = time.perf_counter() - started
            log(f"{workload.key} | {system}: {_brief(outcome)} ({took:.1f}s)")
    for peer in PEERS:
        if keys & set(peers.KEYS):
            started = time.perf_counter()
            try:
                found = peers.run(peer, plan, log, tuple(key for key in peers.KEYS if key in keys))
            except Exception as exc:
                log(traceback.format_exc())
                found = dict.fromkeys(peers.KEYS, Failed(f"{type(exc).__name__}: {exc}"))
            for key, outcome in found.items():
                outcomes[key, peer] = outcome
            log(f"{peer}: {time.perf_counter() - started:.1f}s")
    if keys & set(dask_over.KEYS):
        started = time.perf_counter()
        try:
            outcomes.update(
                dask_over.run(plan, log, tuple(key for key in dask_over.KEYS if key in keys))
            )
        except Exception as exc:
            log(traceback.format_exc())
            failed = Failed(f"{type(exc).__name__}: {exc}")
            for workload in selected:
                if workload.key in dask_over.KEYS:
                    outcomes.update({(workload.key, system): failed for system in workload.systems})
        log(f"workload 8 (over Dask): {time.perf_counter() - started:.1f}s")
    if "7-memory" in keys:
        started = time.perf_counter()
        outcomes["7-memory", OURS] = _guard(functools.partial(memory.measure, plan))
        log(f"7-memory | {OURS}: {time.perf_counter() - started:.1f}s")
    rows: list[report.Row] = []
    for workload in selected:
        primary, secondary = [], []
        for system in workload.systems:
            outcome = outcomes.get((workload.key, system), Failed("not run"))
            first, *rest = report.summarize(workload, system, outcome)
            primary.append(first)
            secondary += rest
        rows += primary + sorted(secondary, key=lambda row: row.key)  # stable: system order
    report.add_ratios(rows)
    return rows


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What the run ran on."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "numpy": numpy.__version__,
        "zmqruntime": _version("zmqruntime"),
        "distributed": _version("distributed"),
        "ipyparallel": _version(IPP),
        "commit": commit,
        "load_average": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the suite, print the table and the targets, write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke test)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where the JSON goes")
    parser.add_argument(
        "--only", default="", help="comma-separated workload key prefixes, e.g. 1,5-stream"
    )
    parser.add_argument(
        "--v065-venv",
        type=Path,
        default=None,
        help="the 0.6.5 virtual environment (default: a cached one, built on first use)",
    )
    args = parser.parse_args(argv)
    plan = Plan.quick_plan() if args.quick else Plan.full()
    prefixes = [part.strip() for part in args.only.split(",") if part.strip()]
    selected = [
        workload
        for workload in workloads(plan)
        if not prefixes or any(workload.key.startswith(prefix) for prefix in prefixes)
    ]
    started = time.perf_counter()
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = {"mode": "quick" if plan.quick else "full", "started": when, **machine()}
    venv = args.v065_venv or v065.venv_path()
    python = v065.ensure_venv(venv, log)
    if isinstance(python, v065.Skipped):
        log(f"skipped: {V065}: {python.reason}")
    rows = measure(plan, selected, v065.Runner(python, plan))
    found = report.targets(rows)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    meta["load_average_end"] = list(os.getloadavg())
    table = report.markdown(rows)
    sys.stdout.write(table + "\n" + report.targets_markdown(found))
    report.write_json(args.json, meta, rows, found)
    log(f"wrote {args.json} ({meta['seconds']}s)")
    return 1 if any(row.error is not None for row in rows) else 0
