"""Per-message costs added by issue 14, against a sequential submit→result in the same run.

Run: ``python -m benchmarks.message_costs [--budget SECONDS]``.

- ``wire.load_json`` with its nesting check (``max_levels=MAX_DEPTH + 1``, as ``codec.decode``
  calls it on every header), without it (as ``load_tree`` calls it on frame 0 of a task), and
  plain ``json.loads`` of the same bytes: an ``Execute`` header (~190 bytes), a
  ``ProgressEvent`` header, and a 64 KiB task (a list of small objects: many brackets, so the
  level walk runs).
- ``records.task_digest``, once per ``Execute`` on the server's I/O thread: a no-op task's
  frames, a 64 KiB JSON task (the largest hashed whole) and a 1 MiB numpy task (sampled).

Each cost is the median of timed batches, in µs per call and as a % of the median no-op
submit→result round trip (TCP, secure by default) measured by the same process.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Mapping

import numpy

from benchmarks.plan import Plan
from benchmarks.systems import ours
from zmqruntime.core import codec, wire
from zmqruntime.core.messages import Execute, ProgressEvent
from zmqruntime.core.safe_format import dump_tree
from zmqruntime.execution.records import task_digest


def per_call(calls: Mapping[str, Callable[[], object]], budget: float) -> dict[str, float]:
    """Median seconds per call of each of ``calls``, timed in batches of about 10 ms taken in
    turn (so drift of a shared machine hits them alike) for ``budget`` seconds each."""
    numbers = {}
    for name, call in calls.items():  # calibrate: a batch lasts at least 10 ms
        number = 1
        while _batch(call, number) < 0.01:
            number *= 2
        numbers[name] = number
    batches: dict[str, list[float]] = {name: [] for name in calls}
    deadline = time.perf_counter() + budget * len(calls)
    while time.perf_counter() < deadline or len(batches[name]) < 5:
        for name, call in calls.items():
            batches[name].append(_batch(call, numbers[name]) / numbers[name])
    return {name: statistics.median(values) for name, values in batches.items()}


def _batch(call: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        call()
    return time.perf_counter() - start


def json_frames() -> dict[str, bytes]:
    """The JSON frames measured: two real headers and a task of about 64 KiB."""
    execute = Execute(
        request_id=123_456,
        execution_id=uuid.uuid4().hex,
        labels={"plate": "P0001", "well": "B07"},
        payload=(b"0",),
    )
    event = ProgressEvent(
        execution_id=uuid.uuid4().hex,
        sequence=1234,
        fraction=0.4321,
        message="site 12 of 28",
        fields={"well": "B07", "site": 12},
        timestamp=time.time(),
    )
    frames = {
        "Execute header": bytes(codec.encode(execute)[0]),
        "ProgressEvent header": bytes(codec.encode(event)[0]),
        "task JSON": bytes(dump_tree(task_of(64 * 1024))[0]),
    }
    return {f"{name} ({_size(len(frame))})": frame for name, frame in frames.items()}


def task_of(size: int) -> dict[str, object]:
    """A screening task of about ``size`` bytes of JSON: one small object per site."""

    def make(count: int) -> dict[str, object]:
        sites = [
            {"well": f"{'ABCDEFGH'[n // 12 % 8]}{n % 12 + 1:02}", "site": n, "z": 0.5}
            for n in range(count)
        ]
        return {"plate": "P0001", "channels": ["DAPI", "GFP"], "sites": sites}

    guess = size // 40
    return make(guess * size // len(wire.dump_json(make(guess))))


def payloads() -> dict[str, tuple[memoryview, ...]]:
    """Task payloads as an Execute carries them (the safe serializer's frames)."""
    array = numpy.arange((1 << 20) // 8, dtype=numpy.float64)
    found = {
        "no-op task (42)": dump_tree(42),
        "JSON task": dump_tree(task_of(64 * 1024 - 512)),
        "numpy task": dump_tree(array),
    }
    result = {}
    for name, frames in found.items():
        views = tuple(memoryview(frame) for frame in frames)
        result[f"{name}, {_size(sum(view.nbytes for view in views))}"] = views
    return result


def _size(count: int) -> str:
    return f"{count:,} B" if count < 4096 else f"{count / 1024:,.0f} KiB"


def main(argv: list[str] | None = None) -> int:
    """Measure, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per measured call")
    args = parser.parse_args(argv)
    plan = Plan.full()
    trip = statistics.median(ours.latency(plan, "tcp").values)
    out = sys.stdout
    out.write(f"no-op submit→result (tcp, secure by default): median {trip * 1e6:,.0f} µs\n\n")
    out.write("| call | on | µs per call | % of a round trip |\n|---|---|--:|--:|\n")
    levels = wire.MAX_DEPTH + 1

    def row(call: str, on: str, seconds: float) -> None:
        out.write(f"| {call} | {on} | {seconds * 1e6:,.2f} | {seconds / trip:.2%} |\n")
        out.flush()

    for name, frame in json_frames().items():
        found = per_call(
            {
                "json.loads": functools.partial(json.loads, frame),
                "wire.load_json": functools.partial(wire.load_json, frame),
                f"wire.load_json(max_levels={levels})": functools.partial(
                    wire.load_json, frame, lone_surrogates=False, max_levels=levels
                ),
            },
            args.budget,
        )
        for call, seconds in found.items():
            row(call, name, seconds)
    digests = {name: functools.partial(task_digest, frames) for name, frames in payloads().items()}
    for name, seconds in per_call(digests, args.budget).items():
        row("records.task_digest", name, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
