"""The demo's worker process (``python -m zmqruntime.cli.demo_server``, launched by
``zmqruntime demo``): an execution server whose task synthesises a microscopy-like image and
streams it to the demo's viewer, with the acks going to the launcher's AckChannel."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, final

import attrs
import numpy

from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.lifeline import report_ready, watch_lifeline
from zmqruntime.execution import ExecutionServer, WorkerPool
from zmqruntime.protocols import TaskContext
from zmqruntime.streaming import ImageSender

__all__ = ["BlobTask", "blob_field", "main"]


def blob_field(size: int, blobs: int, seed: int) -> numpy.ndarray[Any, Any]:
    """A square uint16 image of ``blobs`` Gaussian spots over a noisy background."""
    rng = numpy.random.default_rng(seed)
    yy, xx = numpy.mgrid[0:size, 0:size].astype(numpy.float32)
    field = rng.normal(400.0, 40.0, (size, size)).astype(numpy.float32)
    for y, x, sigma, amplitude in zip(
        rng.uniform(0, size, blobs),
        rng.uniform(0, size, blobs),
        rng.uniform(size / 80, size / 25, blobs),
        rng.uniform(1500, 9000, blobs),
        strict=True,
    ):
        field += amplitude * numpy.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma * sigma))
    return numpy.clip(field, 0, 65535).astype(numpy.uint16)


@final
@attrs.frozen
class BlobTask:
    """The demo's :class:`~zmqruntime.TaskExecutor`: acquire, synthesise, stream one image.

    A task is ``{"index": n, "size": px, "blobs": k, "steps": s, "step_seconds": t}``. The
    image goes out through ``images`` (which the worker threads share).
    """

    images: ImageSender

    def __call__(self, task: Any, context: TaskContext) -> dict[str, Any]:
        """Run one acquisition."""
        index = int(task["index"])
        steps = int(task.get("steps", 8))
        for step in range(steps):
            context.raise_if_cancelled()
            context.report_progress(step / steps, f"acquiring tile {index}", step=step)
            wait = getattr(context, "wait_cancelled", None)
            if wait is not None:
                wait(float(task.get("step_seconds", 0.05)))
        context.raise_if_cancelled()
        image = blob_field(int(task.get("size", 256)), int(task.get("blobs", 30)), index)
        image_id = self.images.send(image, {"name": f"tile {index}", "index": index})
        context.report_progress(1.0, f"tile {index} sent", image_id=image_id)
        return {"index": index, "image_id": image_id, "mean": float(image.mean())}


def main(argv: list[str] | None = None) -> int:
    """``python -m zmqruntime.cli.demo_server …``: serve :class:`BlobTask` until stopped."""
    parser = argparse.ArgumentParser(prog="python -m zmqruntime.cli.demo_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--viewer-port", type=int, required=True)
    parser.add_argument("--ack-to", required=True, help="where the viewer sends image acks")
    parser.add_argument("--transport", choices=["tcp", "ipc"], required=True)
    parser.add_argument("--ipc-root")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    mode, config = TransportMode(args.transport), ZMQConfig(ipc_root=args.ipc_root)
    viewer = Endpoint.of(args.viewer_port, transport_mode=mode, config=config)
    with ImageSender.to(viewer, ack_to=args.ack_to, tracker_key="demo") as images:
        endpoint = Endpoint.of(args.port, transport_mode=mode, config=config)
        pool = WorkerPool.threads(args.workers)
        server = ExecutionServer.bind(endpoint, BlobTask(images), pool=pool)
        server.start()  # bound before it tells its launcher so
        watch_lifeline(server.request_stop)
        report_ready()
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
