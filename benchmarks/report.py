"""From outcomes to rows: medians, p99s, ratios to the raw baseline, targets, Markdown, JSON.

Latency and duration rows read in seconds (shown in µs or ms); rate rows in operations per
second, computed per repetition (``items / duration``), their p99 being the rate of the
slowest 1% of repetitions (with few repetitions: the slowest one). The ratio is the system's
median divided by the baseline's median in the same unit: below 1 is faster for latencies and
durations, above 1 is faster for rates. The baseline is raw pyzmq, except for workload 8
(zmqruntime over Dask), whose ratios are to plain Dask and say so in their cell.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.plan import (
    DASK,
    OURS,
    OURS_BATCH,
    OURS_DASK,
    OURS_MANY_CLIENTS,
    OURS_NAMES,
    OURS_ONE_CLIENT,
    OURS_SINGLE,
    RAW,
    V065,
    Failed,
    Kind,
    Outcome,
    Samples,
    Skipped,
    Workload,
)

BASELINE_LABELS = {
    RAW: "",
    DASK: " vs plain Dask",
    OURS_SINGLE: " vs one by one",
    OURS_ONE_CLIENT: " vs 1 client",
}
"""How a ratio cell names its baseline: raw pyzmq (the column's) goes unsaid."""


@dataclasses.dataclass
class Row:
    """One line of the table."""

    key: str
    workload: str
    system: str
    kind: str
    unit: str
    median: float | None = None
    p99: float | None = None
    ratio: float | None = None
    samples: int = 0
    note: str = ""
    skipped: str | None = None
    error: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    baseline: str = RAW
    """The system ``ratio`` is taken to."""

    @property
    def measured(self) -> bool:
        return self.median is not None


def _nearest_rank(ordered: list[float], fraction: float) -> float:
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summarize(workload: Workload, system: str, outcome: Outcome) -> list[Row]:
    """The row (and secondary rows) one system's outcome gives for one workload."""
    kind = workload.kind
    unit = {Kind.RATE: f"{workload.unit}/s", Kind.MEMORY: "MiB"}.get(kind, "s")
    row = Row(workload.key, workload.title, system, kind.value, unit, baseline=workload.baseline)
    rows = [row]
    for extra_key, key, title in workload.secondary:
        secondary = Row(key, title, system, Kind.DURATION.value, "s", baseline=workload.baseline)
        if isinstance(outcome, Samples):
            values = outcome.extra.get(extra_key, [])
            _fill(secondary, Kind.DURATION, Samples(values, note=outcome.note))
        else:
            _fill(secondary, Kind.DURATION, outcome)
        rows.append(secondary)
    _fill(row, kind, outcome)
    return rows


def _fill(row: Row, kind: Kind, outcome: Outcome) -> None:
    if isinstance(outcome, Skipped):
        row.skipped = outcome.reason
        return
    if isinstance(outcome, Failed):
        row.error = outcome.error
        return
    values = list(outcome.values)
    if not values:
        row.error = "no samples"
        return
    row.samples = len(values)
    row.details = dict(outcome.extra)
    notes = [outcome.note] if outcome.note else []
    delivered = outcome.extra.get("delivered")
    if delivered and any(delivered):
        notes.append(f"subscriber got {min(delivered):,} events per run (fewest)")
    row.note = "; ".join(notes)
    if kind is Kind.RATE:
        rates = sorted(outcome.items / value for value in values)
        row.median = statistics.median(rates)
        row.p99 = outcome.items / _nearest_rank(sorted(values), 0.99)
    elif kind is Kind.MEMORY:
        row.median = max(values)
    else:
        ordered = sorted(values)
        row.median = statistics.median(ordered)
        row.p99 = _nearest_rank(ordered, 0.99)


def add_ratios(rows: list[Row]) -> None:
    """Set every measured row's ratio to its baseline's row of the same workload."""
    medians = {(row.key, row.system): row.median for row in rows if row.measured}
    for row in rows:
        base = medians.get((row.key, row.baseline))
        if row.median is not None and base:
            row.ratio = row.median / base


def _show(value: float | None, row: Row) -> str:
    if value is None:
        return "—"
    if row.kind == Kind.RATE.value:
        return f"{value:,.0f} {row.unit}"
    if row.kind == Kind.MEMORY.value:
        return f"{value:.1f} MiB"
    if value < 1e-3:
        return f"{value * 1e6:,.0f} µs"
    if value < 10:
        return f"{value * 1e3:,.1f} ms" if value < 0.1 else f"{value * 1e3:,.0f} ms"
    return f"{value:,.1f} s"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[Row]) -> str:
    """The table: workload, system, median, p99, ratio to raw, notes."""
    lines = [
        "| workload | system | median | p99 | vs raw | notes |",
        "|---|---|--:|--:|--:|---|",
    ]
    for row in rows:
        if row.skipped is not None:
            cells = ["—", "—", "—", f"skipped: {row.skipped}"]
        elif row.error is not None:
            cells = ["—", "—", "—", f"error: {row.error}"]
        else:
            label = BASELINE_LABELS.get(row.baseline, f" vs {row.baseline}")
            ratio = "—" if row.ratio is None else f"{row.ratio:.2f}x{label}"
            cells = [_show(row.median, row), _show(row.p99, row), ratio, row.note]
        lines.append("| " + " | ".join(_cell(c) for c in [row.workload, row.system, *cells]) + " |")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Target:
    """One target of the issue, and whether this run met it."""

    name: str
    goal: str
    measured: str
    met: bool | None


def _find(rows: list[Row], key: str, system: str) -> Row | None:
    for row in rows:
        if row.key == key and row.system == system and row.measured:
            return row
    return None


def _ratio_target(rows: list[Row], name: str, key: str, goal: str, ok: Any) -> Target:
    row = _find(rows, key, OURS)
    if row is None or row.ratio is None:
        return Target(name, goal, "not measured", None)
    return Target(name, goal, f"{row.ratio:.2f}x raw", bool(ok(row.ratio)))


def targets(rows: list[Row]) -> list[Target]:
    """The issue's targets, checked against this run's rows."""
    result = [
        _ratio_target(
            rows,
            f"sequential latency ({transport})",
            f"1-latency-{transport}",
            "≤ 1.5x raw",
            lambda ratio: ratio <= 1.5,
        )
        for transport in ("tcp", "ipc")
    ]
    result += [
        _ratio_target(rows, title, key, "≥ 0.5x raw", lambda ratio: ratio >= 0.5)
        for key, title in (
            ("2-pipelined", "pipelined throughput"),
            ("3-pipelined-clients", "pipelined throughput, 4 clients"),
        )
    ]
    ours, old = _find(rows, "2-pipelined", OURS), _find(rows, "2-pipelined", V065)
    if ours is not None and old is not None and ours.median and old.median:
        factor = ours.median / old.median
        result.append(
            Target(
                "pipelined vs 0.6.5 default (follows from the line above)",
                "≈ 180x on the issue's machine",
                f"{factor:,.0f}x",
                None,
            )
        )
    result += [
        _ratio_target(
            rows,
            f"acked stream {key.removeprefix('5-stream-')}",
            key,
            "≥ 0.8x raw",
            lambda ratio: ratio >= 0.8,
        )
        for key in (row.key for row in rows if row.system == OURS)
        if key.startswith("5-stream-")
    ]
    for key in (row.key for row in rows if row.system == OURS_BATCH):
        batch = _find(rows, key, OURS_BATCH)
        ratio = None if batch is None else batch.ratio
        shown = "not measured" if ratio is None else f"{ratio:.2f}x one by one"
        goal = "≥ 1x one by one (per image)"
        title = f"batches {key.removeprefix('10-batch-')} not slower per image"
        result.append(Target(title, goal, shown, None if ratio is None else ratio >= 1.0))
    delivered = _find(rows, "6-progress-subscribed", OURS)
    if delivered is not None and delivered.details.get("delivered"):
        fewest, expected = min(delivered.details["delivered"]), delivered.details["updates"]
        result.append(
            Target(
                "progress: every update reaches the subscriber",
                f"{expected:,} of {expected:,}",
                f"{fewest:,} (fewest in a run)",
                fewest == expected,
            )
        )
    with_sub = _find(rows, "6-progress-body-subscribed", OURS)
    alone = _find(rows, "6-progress-body-alone", OURS)
    if with_sub is not None and alone is not None and with_sub.median and alone.median:
        slowdown = with_sub.median / alone.median
        result.append(
            Target(
                "progress: task body with subscriber vs without",
                "≤ 2x",
                f"{slowdown:.2f}x",
                slowdown <= 2,
            )
        )
    raw_body = _find(rows, "6-progress-body-subscribed", RAW)
    if with_sub is not None and raw_body is not None and with_sub.median and raw_body.median:
        # The same 10,000 reports into the raw baseline's PUB: what the layer itself adds.
        slowdown = with_sub.median / raw_body.median
        result.append(
            Target(
                "progress: task body with subscriber vs raw's",
                "≤ 2x",
                f"{slowdown:.2f}x",
                slowdown <= 2,
            )
        )
    many = _find(rows, "12-many-clients", OURS_MANY_CLIENTS)
    shown = "not measured" if many is None or many.ratio is None else f"{many.ratio:.2f}x"
    met = None if many is None or many.ratio is None else many.ratio >= 0.8
    result.append(Target(f"{OURS_MANY_CLIENTS} in one process", "≥ 0.8x of 1 client", shown, met))
    result += curve_costs(rows) + startup_targets(rows)
    for key, name in DASK_TARGETS:
        over = _find(rows, key, OURS_DASK)
        if over is None or over.ratio is None:
            result.append(Target(name, DASK_GOAL, "not measured", None))
        else:
            overhead = 1 / over.ratio - 1  # extra time per task, from the throughput ratio
            measured = f"{over.ratio:.2f}x plain Dask ({overhead:+.0%} time per task)"
            result.append(Target(name, DASK_GOAL, measured, over.ratio >= 1 / 1.3))
    return result


def curve_costs(rows: list[Row]) -> list[Target]:
    """What CURVE costs: each workload-9 row against the default row it repeats, same system
    (zmqruntime's default: PLAIN on loopback; raw's: no security). No goal: for the record."""
    found = []
    for row in rows:
        if not row.key.startswith("9-curve-") or not row.median:
            continue
        suffix = row.key.removeprefix("9-curve-")
        default = next((r for r in rows if r.system == row.system and r.key[2:] == suffix), None)
        if default is None or not default.median:
            continue
        slower = row.median / default.median
        slower = slower if row.kind != Kind.RATE.value else 1 / slower
        name = f"CURVE cost, {row.system}: {row.workload.removeprefix('9 CURVE: ')}"
        found.append(Target(name, "—", f"{slower:.2f}x the default's time", None))
    return found


def startup_targets(rows: list[Row]) -> list[Target]:
    """Workload 11: the viewer ready within 250 ms; the import within +30 ms of raw's, judged
    on the headline classes: the packages alone import nothing until a name is used."""
    found = []
    names, raw = _find(rows, "11-import", OURS_NAMES), _find(rows, "11-import", RAW)
    if names is None or raw is None or names.median is None or raw.median is None:
        found.append(Target("import over zmq+numpy+attrs", "≤ +30 ms", "not measured", None))
    else:
        extra = (names.median - raw.median) * 1e3
        name = "import of the headline classes over zmq+numpy+attrs"
        found.append(Target(name, "≤ +30 ms", f"{extra:+.0f} ms", extra <= 30))
    viewer = _find(rows, "11-viewer-start", OURS)
    if viewer is None or viewer.median is None:
        found.append(Target("viewer start → ready", "≤ 250 ms", "not measured", None))
    else:
        shown = f"{viewer.median * 1e3:.0f} ms" + (
            "" if viewer.ratio is None else f" ({viewer.ratio:.2f}x raw's start)"
        )
        found.append(Target("viewer start → ready", "≤ 250 ms", shown, viewer.median <= 0.25))
    return found


DASK_TARGETS = (
    ("8-dask-throughput", "zmqruntime over Dask, no-op tasks: overhead vs plain Dask ≤ 30%"),
    ("8-dask-work", "zmqruntime over Dask, 10 ms tasks: overhead vs plain Dask ≤ 30%"),
    ("8-dask-long", "zmqruntime over Dask, 50 ms tasks: overhead vs plain Dask ≤ 30%"),
)
DASK_GOAL = "≥ 0.77x plain Dask's tasks/s"


def targets_markdown(found: list[Target]) -> str:
    lines = ["| target | goal | this run | |", "|---|---|---|---|"]
    for target in found:
        verdict = {True: "met", False: "**missed**", None: "—"}[target.met]
        lines.append(f"| {target.name} | {target.goal} | {target.measured} | {verdict} |")
    return "\n".join(lines) + "\n"


def write_json(path: Path, meta: dict[str, Any], rows: list[Row], found: list[Target]) -> None:
    """The same table as JSON (plus the machine and the targets)."""
    document = {
        "meta": meta,
        "rows": [dataclasses.asdict(row) for row in rows],
        "targets": [dataclasses.asdict(target) for target in found],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
