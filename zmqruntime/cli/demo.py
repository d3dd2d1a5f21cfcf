"""``zmqruntime demo``: the whole library at work, on an embedded default.

It launches an execution server and a viewer as real subprocesses (through
:class:`~zmqruntime.streaming.VisualizerProcessManager` and :class:`LaunchSpec`\\ s) on private
IPC sockets (TCP on Windows), submits a batch of tasks that synthesise microscopy-like images
and stream them to the viewer from inside the executor, shows live progress from the progress
stream, cancels one task on purpose, waits for every image's ack, stops both processes, and
prints a summary. The images land in ``OUT/frames`` as ``.npy`` files and in
``OUT/contact-sheet.png`` (Pillow, from the ``demo`` extra).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy

from zmqruntime.cli.display import Bars, CLIError, show_table
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.ack import AckChannel
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.queue_tracker import GlobalQueueTrackerRegistry
from zmqruntime.core.transport import (
    find_free_ipc_port,
    find_free_port_pair,
    get_default_transport_mode,
)
from zmqruntime.errors import TaskCancelled, TaskFailed, ZMQRuntimeError
from zmqruntime.execution import ExecutionClient
from zmqruntime.streaming import VisualizerProcessManager, python_module_spec

__all__ = ["contact_sheet", "run_demo"]

CANCELLED_ON_PURPOSE = 1
"""The index of the task the demo cancels to show cancellation."""


def run_demo(*, tasks: int, out: Path, use_napari: bool = False) -> int:
    """Run the demo; returns 0 when every task ended and every image was acknowledged."""
    if tasks < 1:
        raise CLIError("--tasks must be 1 or more")
    if not use_napari:
        _require_pillow()
    out.mkdir(parents=True, exist_ok=True)
    frames = out / "frames"
    for old in frames.glob("image-*"):
        old.unlink()  # a fresh run, a fresh contact sheet
    started = time.perf_counter()
    mode = get_default_transport_mode()
    with tempfile.TemporaryDirectory(prefix="zmqrt-") as private:
        config = ZMQConfig(ipc_root=private)
        registry = GlobalQueueTrackerRegistry()
        tracker = registry.get_or_create_tracker("demo")
        sink = "napari" if use_napari else f"npy:{frames}"

        def launch(module: str, port: int, role: str, *args: str) -> VisualizerProcessManager:
            where = ("--port", str(port), "--transport", mode.value, "--ipc-root", private)
            spec = python_module_spec(module, *where, *args)
            return VisualizerProcessManager(
                spec, Endpoint.of(port=port, transport_mode=mode, config=config), role=role
            )

        with AckChannel.bind(
            Endpoint.of(port=0, transport_mode=mode, config=config), registry=registry
        ) as channel:
            viewer_port, server_port = _two_ports(mode, config)  # after the channel's port
            viewer = launch("zmqruntime.streaming", viewer_port, "viewer", "--sink", sink)
            images = ("--viewer-port", str(viewer_port), "--ack-to", channel.address)
            worker = launch("zmqruntime.cli.demo_server", server_port, "execution", *images)
            with viewer.start(timeout=60), worker.start(timeout=60):
                outcome = _run_tasks(tasks, server_port, mode, config)
                acked = tracker.wait_all_acknowledged(timeout=30)
                worker_code, viewer_code = worker.stop(), viewer.stop()
    elapsed = time.perf_counter() - started
    processed, sent = tracker.get_progress()
    sheet = None if use_napari else contact_sheet(sorted(frames.glob("image-*.npy")), out)
    _summary(outcome, sent, processed, elapsed, sheet=sheet, codes=(worker_code, viewer_code))
    everything_ended = sum(outcome.values()) == tasks
    return 0 if everything_ended and acked and processed == sent else 1


def _require_pillow() -> None:
    try:
        import PIL  # noqa: F401, PLC0415 - optional extra
    except ImportError:
        raise CLIError(
            "the demo writes a PNG contact sheet with Pillow: pip install 'zmqruntime[demo]'"
        ) from None


def _two_ports(mode: TransportMode, config: ZMQConfig) -> tuple[int, int]:
    if mode is TransportMode.IPC:
        first = find_free_ipc_port(config)
        return first, find_free_ipc_port(config, start=first + 1)
    first = find_free_port_pair(config)
    second = find_free_port_pair(config)
    while second == first:
        second = find_free_port_pair(config)
    return first, second


def _run_tasks(tasks: int, port: int, mode: TransportMode, config: ZMQConfig) -> dict[str, int]:
    outcome = {"complete": 0, "failed": 0, "cancelled": 0}
    bars = Bars().start()
    bars.update("all tasks", 0.0, f"0/{tasks}")
    names: dict[str, str] = {}

    try:
        with ExecutionClient.to(
            Endpoint.of(port=port, transport_mode=mode, config=config)
        ) as client:
            subscription = client.on_progress(lambda event: bars.show(event, names))
            client.ping(timeout=10)
            executions = []
            for index in range(tasks):
                task = {"index": index, "size": 256, "blobs": 40, "steps": 10}
                execution = client.submit(task, labels={"tile": str(index)})
                names[execution.execution_id] = f"tile {index:>3}"
                executions.append(execution)
            if tasks > CANCELLED_ON_PURPOSE:
                executions[CANCELLED_ON_PURPOSE].cancel(timeout=10)
            for done, execution in enumerate(executions, start=1):
                try:
                    execution.result(timeout=120)
                    ended = "complete"
                except TaskCancelled:
                    ended = "cancelled"
                except TaskFailed:
                    ended = "failed"
                outcome[ended] += 1
                # The outcome, not only the progress stream (whose last event may come later).
                bars.update(names[execution.execution_id], 1.0, ended)
                bars.update("all tasks", done / tasks, f"{done}/{tasks}")
            subscription.close()
    except ZMQRuntimeError as exc:
        raise CLIError(f"the demo's execution server failed: {exc}", 3) from exc
    finally:
        bars.finish()
    return outcome


def contact_sheet(paths: list[Path], out: Path) -> Path | None:
    """Tile the images in ``paths`` into ``out/contact-sheet.png`` (Pillow)."""
    from PIL import Image  # noqa: PLC0415 - optional extra

    if not paths:
        return None
    images = [numpy.load(path) for path in paths]
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    height, width = images[0].shape[:2]
    gap = 4
    sheet = numpy.full(
        (rows * (height + gap) + gap, columns * (width + gap) + gap), 24, numpy.uint8
    )
    for number, image in enumerate(images):
        low, high = numpy.percentile(image, (1, 99.7))
        scaled = numpy.clip((image - low) / max(high - low, 1) * 255, 0, 255).astype(numpy.uint8)
        row, column = divmod(number, columns)
        top, left = gap + row * (height + gap), gap + column * (width + gap)
        sheet[top : top + height, left : left + width] = scaled[:height, :width]
    target = out / "contact-sheet.png"
    Image.fromarray(sheet, mode="L").save(target)
    return target


def _summary(
    outcome: dict[str, int],
    sent: int,
    acked: int,
    elapsed: float,
    *,
    sheet: Path | None,
    codes: tuple[Any, Any],
) -> None:
    total = sum(outcome.values())
    rows = [
        ("tasks complete", str(outcome["complete"])),
        ("tasks failed", str(outcome["failed"])),
        ("tasks cancelled", str(outcome["cancelled"])),
        ("images sent", str(sent)),
        ("images acked", str(acked)),
        ("wall time", f"{elapsed:.1f} s"),
        ("tasks per second", f"{total / elapsed:.1f}"),
        ("server, viewer exit codes", f"{codes[0]}, {codes[1]}"),
    ]
    if sheet is not None:
        rows.append(("contact sheet", str(sheet)))
    show_table("zmqruntime demo", rows)
    sys.stdout.flush()
