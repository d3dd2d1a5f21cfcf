"""The raw pyzmq streaming baseline: PUSH/PULL carrying a JSON header and the pixels with
``copy=False``, and a DEALER/ROUTER pair carrying one ack per frame after the receiver touched
the image. With :class:`~benchmarks.systems.raw.Curve` keys, the receiver's PULL and the
sender's ack ROUTER are CURVE servers, the PUSH and the ack DEALER their clients.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time

import numpy
import zmq

from benchmarks.plan import Plan, Samples
from benchmarks.systems.raw import Curve, connect, serve, urls
from benchmarks.timing import repeat


def _receiver(
    data_url: str, ack_url: str, ready: threading.Event, frames: int, curve: Curve | None
) -> None:
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    serve(pull, curve)
    pull.bind(data_url)
    acks = context.socket(zmq.DEALER)
    connect(acks, curve)  # the sender's ack ROUTER is the same CURVE server (same keys)
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


def stream_rate(
    transport: str, folder: str, size: int, window: int, frames: int, curve: Curve | None = None
) -> float:
    """Acked frames per second: one warm-up frame, then ``frames`` with ``window`` in flight."""
    data_url, ack_url = urls(transport, folder, 2, name=f"raw-stream-{size}-{window}")
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    serve(router, curve)
    router.bind(ack_url)
    ready = threading.Event()
    receiver = threading.Thread(
        target=_receiver, args=(data_url, ack_url, ready, frames + 1, curve)
    )
    receiver.start()
    ready.wait(10)
    push = context.socket(zmq.PUSH)
    connect(push, curve)
    push.connect(data_url)
    image = numpy.zeros((size, size), numpy.uint16)

    def send(number: int) -> None:
        header = json.dumps({"id": str(number), "dtype": "<u2", "shape": [size, size]})
        push.send_multipart([header.encode(), image], copy=False)

    send(-1)  # warm-up: the connections are made
    router.recv_multipart()
    in_flight = 0
    start = time.perf_counter()
    for number in range(frames):
        if in_flight >= window:
            router.recv_multipart()
            in_flight -= 1
        send(number)
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


def stream(plan: Plan, size: int, window: int, curve: Curve | None = None) -> Samples:
    """Workload 5: acked frames, as repetitions of ``frames`` each."""
    frames = plan.frames_small if size <= 512 else plan.frames_large
    with tempfile.TemporaryDirectory(prefix="zmqrt-bench-") as folder:
        durations = repeat(
            lambda: frames / stream_rate("tcp", folder, size, window, frames, curve),
            plan.reps,
            plan.rep_budget,
        )
    return Samples(durations, items=frames)
