"""Acknowledged image streaming, against raw zero-copy pyzmq in the same run.

Run: ``python -m benchmarks.streaming_acked [--frames N] [--mode tcp|ipc]``.

Workloads: 512x512 and 2048x2048 uint16 frames, stop-and-wait (one frame in flight) and
windowed (8 in flight), every frame acknowledged after the receiver touched it. The raw
baseline is a PUSH/PULL pair sending header + pixels with ``copy=False`` and a DEALER/ROUTER
pair carrying the acks; zmqruntime is an :class:`~zmqruntime.streaming.ImageSender` and a
:class:`~zmqruntime.streaming.StreamingServer` with a sink that reads one pixel.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from typing import Any

import numpy
import zmq

from zmqruntime import TransportMode, ZMQConfig
from zmqruntime.streaming import ImageSender, StreamingServer

SIZES = (512, 2048)
WINDOWS = (1, 8)


def _urls(mode: TransportMode, folder: str) -> tuple[str, str]:
    if mode is TransportMode.IPC:
        return f"ipc://{folder}/raw-data.sock", f"ipc://{folder}/raw-ack.sock"
    probe = zmq.Context()
    socket = probe.socket(zmq.PULL)
    ports = [socket.bind_to_random_port("tcp://127.0.0.1") for _ in range(2)]
    socket.close(linger=0)
    probe.term()
    return f"tcp://127.0.0.1:{ports[0]}", f"tcp://127.0.0.1:{ports[1]}"


def _raw_receiver(data_url: str, ack_url: str, ready: threading.Event, frames: int) -> None:
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.bind(data_url)
    acks = context.socket(zmq.DEALER)
    acks.connect(ack_url)
    ready.set()
    for _ in range(frames):
        header, pixels = pull.recv_multipart(copy=False)
        meta = json.loads(header.bytes)
        image = numpy.frombuffer(pixels, dtype=meta["dtype"]).reshape(meta["shape"])
        _ = int(image[0, 0])
        acks.send(meta["id"].encode())
    pull.close(linger=0)
    acks.close(linger=1000)
    context.term()


def _raw(mode: TransportMode, folder: str, size: int, window: int, frames: int) -> float:
    data_url, ack_url = _urls(mode, folder)
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(ack_url)
    ready = threading.Event()
    receiver = threading.Thread(target=_raw_receiver, args=(data_url, ack_url, ready, frames))
    receiver.start()
    ready.wait(10)
    push = context.socket(zmq.PUSH)
    push.connect(data_url)
    image = numpy.zeros((size, size), numpy.uint16)
    in_flight = 0
    start = time.perf_counter()
    for number in range(frames):
        if in_flight >= window:
            router.recv_multipart()
            in_flight -= 1
        header = json.dumps({"id": str(number), "dtype": "<u2", "shape": [size, size]})
        push.send_multipart([header.encode(), image], copy=False)
        in_flight += 1
    while in_flight:
        router.recv_multipart()
        in_flight -= 1
    rate = frames / (time.perf_counter() - start)
    receiver.join(30)
    push.close(linger=0)
    router.close(linger=0)
    context.term()
    return rate


def _touch(image: Any, _metadata: Any) -> None:
    _ = int(image.flat[0])


def _ours(mode: TransportMode, config: ZMQConfig, size: int, window: int, frames: int) -> float:
    image = numpy.zeros((size, size), numpy.uint16)
    with (
        StreamingServer(_touch, port=0, transport_mode=mode, config=config) as viewer,
        ImageSender(
            port=viewer.port_number, transport_mode=mode, config=config, max_in_flight=window
        ) as sender,
    ):
        sender.send(image)
        sender.wait_all_acked(timeout=30)  # warm-up: connections made
        start = time.perf_counter()
        for _ in range(frames):
            sender.send(image)
        sender.wait_all_acked(timeout=120)
        return frames / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    """Run every workload and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--mode", choices=["tcp", "ipc"], default="tcp")
    args = parser.parse_args(argv)
    mode = TransportMode(args.mode)
    out = sys.stdout
    out.write(f"acked uint16 frames over {mode.value}, {args.frames} per workload\n\n")
    out.write("| frame | in flight | raw pyzmq | zmqruntime | ratio |\n|---|---|---|---|---|\n")
    with tempfile.TemporaryDirectory(prefix="zmqrt-bench-") as folder:
        config = ZMQConfig(ipc_root=folder)
        for size in SIZES:
            frames = args.frames if size <= 512 else max(20, args.frames // 8)
            for window in WINDOWS:
                raw = _raw(mode, folder, size, window, frames)
                ours = _ours(mode, config, size, window, frames)
                out.write(
                    f"| {size}x{size} | {window} | {raw:,.0f}/s | {ours:,.0f}/s "
                    f"| {ours / raw:.2f}x |\n"
                )
                out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
