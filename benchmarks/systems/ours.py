"""zmqruntime as a user runs it: ExecutionServer/ExecutionClient, StreamingServer/ImageSender.

Server and client live in this process (server threads in the background), like the raw
baseline, with their defaults: one worker thread, the safe serializer, TCP on loopback, which
is secure by default (PLAIN with this user's credentials, made under a temporary
``ipc_root``). With ``curve=True`` every socket uses explicit CURVE keys instead, the client's
key the only one allowed: what a deployment on an exposed address pays.
"""

from __future__ import annotations

import tempfile
import threading
import time
from typing import Any

import numpy

from benchmarks.plan import Plan, Samples
from benchmarks.timing import repeat, run_clients, sample_calls, shares
from zmqruntime import (
    ClientCurve,
    ServerCurve,
    TransportMode,
    ZMQConfig,
    generate_curve_keypair,
)
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import Completion, ProgressEvent
from zmqruntime.execution import ExecutionClient, ExecutionServer
from zmqruntime.streaming import ImageSender, StreamingServer


def noop(task: Any, _context: Any) -> Any:
    """The no-op task: returns its input."""
    return task


def report(task: Any, context: Any) -> float:
    """Reports ``task`` progress updates; returns the seconds the loop took."""
    updates = int(task)
    start = time.perf_counter()
    for number in range(1, updates + 1):
        context.report_progress(number / updates)
    return time.perf_counter() - start


def curve_keys() -> tuple[ServerCurve, ClientCurve]:
    """A server's CURVE keys admitting only one client, and that client's keys."""
    server, client = generate_curve_keypair(), generate_curve_keypair()
    allowed = {client.public_key}
    return ServerCurve(server, allowed_client_keys=allowed), ClientCurve(client, server.public_key)


class _Pair:
    """An ExecutionServer with ``clients`` connected ExecutionClients, closed together."""

    def __init__(self, executor: Any, transport: str, clients: int = 1, curve: bool = False):
        self._folder = tempfile.TemporaryDirectory(prefix="zmqrt-bench-")
        mode = TransportMode(transport)
        config = ZMQConfig(ipc_root=self._folder.name)
        keys = curve_keys() if curve else (None, None)
        self.server = ExecutionServer.bind(
            Endpoint.of(port=0, transport_mode=mode, config=config, curve=keys[0]), executor
        )
        self.server.start()
        at = Endpoint.of(
            port=self.server.port_number, transport_mode=mode, config=config, curve=keys[1]
        )
        self.clients = [ExecutionClient.to(at).connect() for _ in range(clients)]

    def __enter__(self) -> _Pair:
        return self

    def __exit__(self, *_exc: object) -> None:
        for client in self.clients:
            client.close()
        self.server.close()
        self._folder.cleanup()


def latency(plan: Plan, transport: str, curve: bool = False) -> Samples:
    """Workload 1: sequential no-op submit→result."""
    with _Pair(noop, transport, curve=curve) as pair:
        client = pair.clients[0]
        samples = sample_calls(
            lambda number: client.submit(number).result(timeout=30),
            plan.latency_count,
            plan.warmup,
            plan.latency_budget,
        )
    return Samples(samples)


def pipelined(plan: Plan, clients: int, curve: bool = False) -> Samples:
    """Workloads 2 and 3: submit ``pipelined_tasks`` (split over clients), then wait for all."""
    with _Pair(noop, "tcp", clients, curve) as pair:

        def work(index: int, counts: list[int]) -> None:
            client = pair.clients[index]
            executions = [client.submit(number) for number in range(counts[index])]
            for execution in executions:
                execution.result(timeout=300)

        warm = shares(plan.warmup, clients)
        run_clients(clients, lambda index: work(index, warm))
        counts = shares(plan.pipelined_tasks, clients)
        durations = repeat(
            lambda: run_clients(clients, lambda index: work(index, counts)),
            plan.reps,
            plan.rep_budget,
        )
    return Samples(durations, items=plan.pipelined_tasks)


def payload(plan: Plan, curve: bool = False) -> Samples:
    """Workload 4: a numpy array of ``payload_bytes`` as task, returned as result."""
    array = numpy.arange(plan.payload_bytes // 8, dtype=numpy.float64)

    def call(_number: int) -> None:
        result = client.submit(array).result(timeout=30)
        assert result.size == array.size

    with _Pair(noop, "tcp", curve=curve) as pair:
        client = pair.clients[0]
        samples = sample_calls(call, plan.payload_count, min(plan.warmup, 20), plan.latency_budget)
    return Samples(samples)


def progress(plan: Plan, subscribed: bool) -> Samples:
    """Workload 6: a task reporting ``progress_updates`` events, with or without a subscriber.

    Values are submit → final record seen by the subscriber (after every event), or submit →
    result without one; ``extra["body"]`` is the task loop's own duration and
    ``extra["delivered"]`` the events the subscriber received.
    """
    updates = plan.progress_updates
    counter = ProgressCounter()
    with _Pair(report, "tcp") as pair:
        client = pair.clients[0]
        bodies: list[float] = []
        delivered: list[int] = []

        def run(count: int, wait: float = 60.0) -> float:
            counter.reset()
            start = time.perf_counter()
            execution = client.submit(count)
            body = execution.result(timeout=60)
            if subscribed:
                counter.finished.wait(wait)
            end = counter.end if subscribed and counter.end else time.perf_counter()
            bodies.append(body)
            delivered.append(counter.events)
            return end - start

        if subscribed:
            client.on_progress(counter)
            deadline = time.monotonic() + 10  # PUB/SUB joins late: probe until it has
            while run(1, wait=0.2) and not delivered[-1] and time.monotonic() < deadline:
                pass
        bodies.clear()
        delivered.clear()
        durations = repeat(lambda: run(updates), plan.reps, plan.rep_budget)
    return Samples(durations, extra={"body": bodies, "delivered": delivered, "updates": updates})


class ProgressCounter:
    """A progress callback counting events; notes when the final record arrives (also used
    by workload 8)."""

    def __init__(self) -> None:
        self.events = 0
        self.end = 0.0
        self.finished = threading.Event()

    def reset(self) -> None:
        self.events, self.end = 0, 0.0
        self.finished.clear()

    def __call__(self, message: ProgressEvent | Completion) -> None:
        if isinstance(message, ProgressEvent):
            self.events += 1
        else:
            self.end = time.perf_counter()
            self.finished.set()


def _touch(image: Any, _metadata: Any) -> None:
    _ = int(image.flat[0])


def stream_rate(
    transport: str,
    folder: str,
    size: int,
    window: int,
    frames: int,
    reps: int = 1,
    curve: bool = False,
) -> list[float]:
    """Acked frames per second of ``reps`` runs of ``frames`` (after one warm-up frame).

    With ``curve``, images and acks each travel under CURVE keys of their own."""
    mode = TransportMode(transport)
    config = ZMQConfig(ipc_root=folder)
    image = numpy.zeros((size, size), numpy.uint16)
    rates = []
    (data_server, data_client), (ack_server, ack_client) = (
        (curve_keys(), curve_keys()) if curve else ((None, None), (None, None))
    )
    with (
        StreamingServer.bind(
            Endpoint.of(port=0, transport_mode=mode, config=config, curve=data_server),
            _touch,
            ack_curve=ack_client,
        ) as viewer,
        ImageSender.to(
            Endpoint.of(
                port=viewer.port_number, transport_mode=mode, config=config, curve=data_client
            ),
            ack_curve=ack_server,
            max_in_flight=window,
        ) as sender,
    ):
        sender.send(image)
        sender.wait_all_acked(timeout=30)  # warm-up: connections made
        for _ in range(reps):
            start = time.perf_counter()
            for _ in range(frames):
                sender.send(image)
            sender.wait_all_acked(timeout=120)
            rates.append(frames / (time.perf_counter() - start))
    return rates


def batch_rate(
    folder: str, size: int, count: int, window: int, images: int, reps: int, batched: bool
) -> list[float]:
    """Acked images per second of ``reps`` runs of ``images`` (a multiple of ``count``), sent
    ``count`` to a batch or one by one, at most ``window`` ids in flight (over TCP)."""
    config = ZMQConfig(ipc_root=folder)
    image = numpy.zeros((size, size), numpy.uint16)
    batch = [image] * count
    at = Endpoint.of(port=0, transport_mode=TransportMode.TCP, config=config)
    rates = []
    with StreamingServer.bind(at, _touch) as viewer:
        to = Endpoint.of(port=viewer.port_number, transport_mode=TransportMode.TCP, config=config)
        with ImageSender.to(to, max_in_flight=window) as sender:
            sender.send_batch(batch)
            sender.wait_all_acked(timeout=30)  # warm-up: connections made, limits known
            for _ in range(reps):
                start = time.perf_counter()
                for _ in range(images // count):
                    if batched:
                        sender.send_batch(batch)
                    else:
                        for single in batch:
                            sender.send(single)
                sender.wait_all_acked(timeout=120)
                rates.append(images / (time.perf_counter() - start))
    return rates


def batches(plan: Plan, size: int, count: int, batched: bool) -> Samples:
    """Workload 10: acked images in batches of ``count`` (or one by one), at the plan's window."""
    frames = plan.frames_small if size <= 512 else plan.frames_large
    images = max(count, frames // count * count)
    with tempfile.TemporaryDirectory(prefix="zmqrt-bench-") as folder:
        rates = batch_rate(folder, size, count, plan.window, images, plan.reps, batched)
    return Samples([images / rate for rate in rates], items=images)


def stream(plan: Plan, size: int, window: int, curve: bool = False) -> Samples:
    """Workload 5: acked frames, as repetitions of ``frames`` each."""
    frames = plan.frames_small if size <= 512 else plan.frames_large
    with tempfile.TemporaryDirectory(prefix="zmqrt-bench-") as folder:
        rates = stream_rate("tcp", folder, size, window, frames, reps=plan.reps, curve=curve)
    return Samples([frames / rate for rate in rates], items=frames)
