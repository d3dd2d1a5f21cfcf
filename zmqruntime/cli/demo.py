"""``zmqruntime demo``: the whole library at work, on an embedded default.

An execution server and a viewer run as subprocesses on private IPC sockets (TCP on Windows);
tasks synthesise microscopy-like images and stream them to the viewer from inside the
executor, one is cancelled on purpose, and every image's ack is awaited. The images land in
``OUT/frames`` (``.npy``) and ``OUT/contact-sheet.png`` (Pillow, the ``demo`` extra).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import numpy

from zmqruntime.cli.display import Bars, CLIError, check_napari, show_table, writable_folder
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

__all__ = ["MAX_TASKS", "contact_sheet", "run_demo"]

CANCELLED_ON_PURPOSE = 1
"""The index of the task the demo cancels to show cancellation."""
MAX_TASKS = 1000
"""The most tasks a demo runs (a showcase, well under the server's queue limit)."""


def run_demo(*, tasks: int, out: Path, use_napari: bool = False) -> int:
    """Run the demo; returns 0 when every task ended and every image was acknowledged."""
    if not 1 <= tasks <= MAX_TASKS:
        raise CLIError(f"--tasks must be 1 to {MAX_TASKS}, not {tasks}")
    if use_napari:
        check_napari()
    else:
        try:
            import PIL  # noqa: F401, PLC0415 - optional extra
        except ImportError:
            raise CLIError(
                "the demo writes a PNG contact sheet with Pillow: pip install 'zmqruntime[demo]'"
            ) from None
    frames = out / "frames"
    writable_folder(frames, "--out")
    try:
        for old in frames.glob("image-*"):
            old.unlink()  # a fresh run, a fresh contact sheet
    except OSError as exc:
        raise CLIError(f"--out: cannot remove the last run's images: {exc}") from None
    started = time.perf_counter()
    mode = get_default_transport_mode()
    with tempfile.TemporaryDirectory(prefix="zmqrt-") as private:
        config = ZMQConfig(ipc_root=private)
        registry = GlobalQueueTrackerRegistry()
        tracker = registry.get_or_create_tracker("demo")
        sink = "napari" if use_napari else f"npy:{frames}"

        def at(port: int) -> Endpoint:
            return Endpoint.of(port=port, transport_mode=mode, config=config)

        def launch(module: str, port: int, role: str, *args: str) -> VisualizerProcessManager:
            where = ("--port", str(port), "--transport", mode.value, "--ipc-root", private)
            spec = python_module_spec(module, *where, *args)
            return VisualizerProcessManager(spec, at(port), role)

        with AckChannel.bind(at(0), registry=registry) as channel:
            viewer_port, server_port = _two_ports(mode, config)  # after the channel's port
            viewer = launch("zmqruntime.streaming", viewer_port, "viewer", "--sink", sink)
            images = ("--viewer-port", str(viewer_port), "--ack-to", channel.address)
            worker = launch("zmqruntime.cli.demo_server", server_port, "execution", *images)
            with viewer.start(timeout=60), worker.start(timeout=60):
                outcome = _run_tasks(tasks, at(server_port))
                acked = tracker.wait_all_acknowledged(timeout=30)
                worker_code, viewer_code = worker.stop(), viewer.stop()
    elapsed = time.perf_counter() - started
    processed, sent = tracker.get_progress()
    total = sum(outcome.values())
    rows = [(f"tasks {name}", str(count)) for name, count in outcome.items()]
    rows += [
        ("images sent", str(sent)),
        ("images acked", str(processed)),
        ("wall time", f"{elapsed:.1f} s"),
        ("tasks per second", f"{total / elapsed:.1f}"),
        ("server, viewer exit codes", f"{worker_code}, {viewer_code}"),
    ]
    sheet = None if use_napari else contact_sheet(sorted(frames.glob("image-*.npy")), out)
    if sheet is not None:
        rows.append(("contact sheet", str(sheet)))
    show_table("zmqruntime demo", rows)
    sys.stdout.flush()
    return 0 if total == tasks and acked and processed == sent else 1


def _two_ports(mode: TransportMode, config: ZMQConfig) -> tuple[int, int]:
    if mode is TransportMode.IPC:
        first = find_free_ipc_port(config)
        return first, find_free_ipc_port(config, start=first + 1)
    first = find_free_port_pair(config)
    second = find_free_port_pair(config)
    while second == first:
        second = find_free_port_pair(config)
    return first, second


def _run_tasks(tasks: int, endpoint: Endpoint) -> dict[str, int]:
    outcome = {"complete": 0, "failed": 0, "cancelled": 0}
    bars = Bars().start()
    bars.update("all tasks", 0.0, f"0/{tasks}")
    names: dict[str, str] = {}
    try:
        with ExecutionClient.to(endpoint) as client:
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
    shape = (rows * (height + gap) + gap, columns * (width + gap) + gap)
    sheet = numpy.full(shape, 24, numpy.uint8)
    for number, image in enumerate(images):
        low, high = numpy.percentile(image, (1, 99.7))
        scaled = numpy.clip((image - low) / max(high - low, 1) * 255, 0, 255).astype(numpy.uint8)
        row, column = divmod(number, columns)
        top, left = gap + row * (height + gap), gap + column * (width + gap)
        sheet[top : top + height, left : left + width] = scaled[:height, :width]
    target = out / "contact-sheet.png"
    Image.fromarray(sheet, mode="L").save(target)
    return target
