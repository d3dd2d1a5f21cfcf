"""What the suite measures: sizes for --quick and full runs, the workloads, the outcomes.

A workload is one row per system in the table. Systems return :class:`Samples` (seconds per
operation, or seconds per repetition of ``items`` operations) or :class:`Skipped` with the
reason; the report turns samples into medians, p99s and ratios to the raw baseline (for
workload 8, zmqruntime over Dask, to plain Dask).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

RAW = "raw pyzmq"
OURS = "zmqruntime"
V065 = "zmqruntime 0.6.5"
DASK = "dask distributed"
IPP = "ipyparallel"
OURS_DASK = "zmqruntime over Dask"
OURS_DASK_ALL = "zmqruntime over Dask, a Dask task per job"
"""Workload 8's diagnostic variant: ``dask_pool(client, max_workers=<the task count>)``:
every job handed over at once, each as a Dask task of its own (no batches)."""

OURS_SINGLE = "zmqruntime, one by one"
OURS_BATCH = "zmqruntime, batches"
"""Workload 10: the same acked images sent one by one (the baseline) and as batches."""
BATCHES = ((512, 16), (2048, 3))
"""Workload 10: (frame size, images per batch)."""

OURS_NAMES = "zmqruntime, headline classes"
"""Workload 11: importing the classes an application uses (the packages load names lazily)."""

MANY_CLIENTS = 32
OURS_ONE_CLIENT = "zmqruntime, 1 client"
OURS_MANY_CLIENTS = f"zmqruntime, {MANY_CLIENTS} clients"
"""Workload 12: the pipelined tasks from one client, and from 32 in one process (each in a
thread of its own: several panels of one GUI); the ratio is to the one client."""

PEERS = (DASK, IPP)
CURVE_SIZES = (512, 2048)
"""Workload 9 streams these frame sizes with the plan's window."""
ALL_SYSTEMS = (RAW, OURS, V065, DASK, IPP)
CORE_SYSTEMS = (RAW, OURS, V065)


class Kind(enum.Enum):
    """How samples read: per-operation latency, a rate over repetitions, a duration, memory."""

    LATENCY = "latency"
    RATE = "rate"
    DURATION = "duration"
    MEMORY = "memory"


@dataclasses.dataclass(frozen=True)
class Samples:
    """What one system measured for one workload.

    ``values`` are seconds: per operation when ``items`` is 1, else per repetition of
    ``items`` operations (rates). For memory they are MiB. ``extra`` carries named
    secondary samples (e.g. the task body time of the progress workload) and details.
    """

    values: list[float]
    items: int = 1
    note: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A system that could not be measured here, and why (printed, never faked)."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Failed:
    """A system that raised while being measured (a bug in a system or in the suite)."""

    error: str


Outcome = Samples | Skipped | Failed


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one run; :meth:`quick` is the CI smoke test, :meth:`full` the real one."""

    quick: bool
    latency_count: int
    latency_budget: float
    warmup: int
    pipelined_tasks: int
    slow_pipelined_tasks: int
    """The pipelined task count for systems that need seconds per hundred tasks (0.6.5)."""
    peer_pipelined_tasks: int
    """The pipelined task count for Dask and ipyparallel."""
    clients: int
    reps: int
    rep_budget: float
    payload_bytes: int
    payload_count: int
    frames_small: int
    frames_large: int
    window: int
    progress_updates: int
    memory_tasks: int
    dask_tasks: int
    """Workload 8: no-op tasks per repetition, plain Dask and zmqruntime over Dask."""
    dask_budget: float
    """Workload 8: seconds after which no further (interleaved) repetition starts."""
    dask_progress_updates: int
    dask_work_tasks: int
    """Workload 8, small real tasks: tasks per repetition, each burning ``dask_work_ms``."""
    dask_work_ms: float
    dask_long_tasks: int
    """Workload 8, longer tasks (run one per Dask task): tasks per repetition."""
    dask_long_ms: float

    @classmethod
    def full(cls) -> Plan:
        return cls(
            quick=False,
            latency_count=2000,
            latency_budget=8.0,
            warmup=100,
            pipelined_tasks=5000,
            slow_pipelined_tasks=1000,
            peer_pipelined_tasks=5000,
            clients=4,
            reps=5,
            rep_budget=25.0,
            payload_bytes=1 << 20,
            payload_count=300,
            frames_small=400,
            frames_large=50,
            window=8,
            progress_updates=10_000,
            memory_tasks=100_000,
            dask_tasks=1000,
            dask_budget=40.0,
            dask_progress_updates=100,
            dask_work_tasks=400,
            dask_work_ms=10.0,
            dask_long_tasks=100,
            dask_long_ms=50.0,
        )

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(
            quick=True,
            latency_count=100,
            latency_budget=0.5,
            warmup=10,
            pipelined_tasks=500,
            slow_pipelined_tasks=50,
            peer_pipelined_tasks=100,
            clients=4,
            reps=2,
            rep_budget=1.0,
            payload_bytes=1 << 20,
            payload_count=20,
            frames_small=30,
            frames_large=6,
            window=8,
            progress_updates=1000,
            memory_tasks=3000,
            dask_tasks=200,
            dask_budget=1.0,
            dask_progress_updates=100,
            dask_work_tasks=40,
            dask_work_ms=10.0,
            dask_long_tasks=10,
            dask_long_ms=50.0,
        )


@dataclasses.dataclass(frozen=True)
class Workload:
    """One line of the table per system.

    ``key`` identifies it in code and JSON; ``secondary`` names rows derived from a
    system's ``extra`` samples: ``(extra key, row key, row title)``; ``baseline`` is the
    system every row's ratio is taken to (raw pyzmq but for workload 8: plain Dask).
    """

    key: str
    title: str
    kind: Kind
    unit: str
    systems: tuple[str, ...]
    secondary: tuple[tuple[str, str, str], ...] = ()
    baseline: str = RAW


def workloads(plan: Plan) -> list[Workload]:
    """The workloads of the issue, titled with the sizes this plan uses."""
    tasks = f"{plan.pipelined_tasks:,}"
    updates = f"{plan.progress_updates:,}"
    mib = plan.payload_bytes / (1 << 20)
    result = [
        Workload("1-latency-tcp", "1 no-op submit→result (tcp)", Kind.LATENCY, "", ALL_SYSTEMS),
        Workload("1-latency-ipc", "1 no-op submit→result (ipc)", Kind.LATENCY, "", ALL_SYSTEMS),
        Workload("2-pipelined", f"2 pipelined {tasks} no-op", Kind.RATE, "tasks", ALL_SYSTEMS),
        Workload(
            "3-pipelined-clients",
            f"3 pipelined {tasks} no-op, {plan.clients} clients",
            Kind.RATE,
            "tasks",
            ALL_SYSTEMS,
        ),
        Workload(
            "4-payload",
            f"4 {mib:g} MiB numpy payload → result",
            Kind.LATENCY,
            "",
            CORE_SYSTEMS,
        ),
    ]
    for size in (512, 2048):
        for window in (1, plan.window):
            how = "stop-and-wait" if window == 1 else f"window {window}"
            result.append(
                Workload(
                    f"5-stream-{size}-w{window}",
                    f"5 acked stream {size}² uint16, {how}",
                    Kind.RATE,
                    "frames",
                    CORE_SYSTEMS,
                )
            )
    result += [
        Workload(
            "6-progress-subscribed",
            f"6 progress: {updates} updates delivered (submit → last event)",
            Kind.DURATION,
            "",
            CORE_SYSTEMS,
            secondary=(
                ("body", "6-progress-body-subscribed", "6 progress: task body, subscriber"),
            ),
        ),
        Workload(
            "6-progress-body-alone",
            "6 progress: task body, no subscriber",
            Kind.DURATION,
            "",
            CORE_SYSTEMS,
        ),
        Workload(
            "7-memory",
            f"7 server peak RSS over {plan.memory_tasks:,} tasks",
            Kind.MEMORY,
            "MiB",
            (OURS,),
        ),
        Workload(
            "8-dask-throughput",
            f"8 over Dask: {plan.dask_tasks:,} no-op, 2 worker processes",
            Kind.RATE,
            "tasks",
            (DASK, OURS_DASK, OURS_DASK_ALL),
            baseline=DASK,
        ),
        Workload(
            "8-dask-work",
            f"8 over Dask: {plan.dask_work_tasks:,} tasks of {plan.dask_work_ms:g} ms CPU each",
            Kind.RATE,
            "tasks",
            (DASK, OURS_DASK),
            baseline=DASK,
        ),
        Workload(
            "8-dask-long",
            f"8 over Dask: {plan.dask_long_tasks:,} tasks of {plan.dask_long_ms:g} ms CPU each",
            Kind.RATE,
            "tasks",
            (DASK, OURS_DASK),
            baseline=DASK,
        ),
        Workload(
            "8-dask-progress",
            f"8 over Dask: {plan.dask_progress_updates:,} progress updates (submit → last event)",
            Kind.DURATION,
            "",
            (OURS_DASK,),
            baseline=DASK,
        ),
    ]
    result.append(
        Workload(
            "12-many-clients",
            f"12 pipelined {tasks} no-op: {MANY_CLIENTS} clients in one process vs 1",
            Kind.RATE,
            "tasks",
            (OURS_ONE_CLIENT, OURS_MANY_CLIENTS),
            baseline=OURS_ONE_CLIENT,
        )
    )
    return result + curve_workloads(plan) + batch_workloads(plan) + startup_workloads()


def startup_workloads() -> list[Workload]:
    """Workload 11: start-up, each sample a fresh process (``benchmarks/startup.py``)."""
    return [
        Workload(
            "11-import",
            "11 import zmqruntime.execution+streaming (raw: zmq+numpy+attrs)",
            Kind.DURATION,
            "",
            (RAW, OURS, OURS_NAMES),
        ),
        Workload(
            "11-viewer-start",
            "11 viewer process start → answering ping",
            Kind.DURATION,
            "",
            (RAW, OURS),
        ),
    ]


def batch_workloads(plan: Plan) -> list[Workload]:
    """Workload 10: acked images in batches against the same images one by one, both with
    ``max_in_flight`` = the plan's window (a batch of n takes n + 1 of it)."""
    return [
        Workload(
            f"10-batch-{size}x{count}",
            f"10 acked {count}x {size}² uint16 per batch, window {plan.window}",
            Kind.RATE,
            "frames",
            (OURS_SINGLE, OURS_BATCH),
            baseline=OURS_SINGLE,
        )
        for size, count in BATCHES
    ]


def curve_workloads(plan: Plan) -> list[Workload]:
    """Workload 9: workloads 1 (tcp), 2, 4 and 5 (windowed) again, raw and ours, with CURVE
    on every socket; each key is ``9-curve-`` + the default row's key without its number."""
    both = (RAW, OURS)
    payload = f"{plan.payload_bytes / (1 << 20):g} MiB numpy payload → result"
    result = [
        Workload(
            "9-curve-latency-tcp", "9 CURVE: no-op submit→result (tcp)", Kind.LATENCY, "", both
        ),
        Workload(
            "9-curve-pipelined",
            f"9 CURVE: pipelined {plan.pipelined_tasks:,} no-op",
            Kind.RATE,
            "tasks",
            both,
        ),
        Workload("9-curve-payload", f"9 CURVE: {payload}", Kind.LATENCY, "", both),
    ]
    for size in CURVE_SIZES:
        title = f"9 CURVE: acked stream {size}² uint16, window {plan.window}"
        key = f"9-curve-stream-{size}-w{plan.window}"
        result.append(Workload(key, title, Kind.RATE, "frames", both))
    return result


def row_keys(plan: Plan) -> list[tuple[str, str]]:
    """Every (row key, system) the table must contain, secondary rows included."""
    keys = []
    for workload in workloads(plan):
        keys += [(workload.key, system) for system in workload.systems]
        for _extra, key, _title in workload.secondary:
            keys += [(key, system) for system in workload.systems]
    return keys
