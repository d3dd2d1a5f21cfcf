"""The raw pyzmq baselines: what a careful hand-written pyzmq runtime does — the ceiling.

Task loop: the client is a DEALER in the calling thread; the server is a ROUTER served by an
I/O thread that hands each task to a worker thread through an inproc PAIR and sends the
result back. A task is a JSON header plus one frame: JSON for no-op tasks, raw array bytes
(zero-copy both ways) for the numpy payload. The worker owns a PUB socket for progress.

Streaming is in :mod:`benchmarks.systems.raw_stream`. With :class:`Curve` keys every socket
is a libzmq CURVE server or client (no ZAP handler: libzmq then admits any client that knows
the server's key; per message the cost is the same).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import threading
import time
from types import TracebackType
from typing import Any

import numpy
import zmq

from benchmarks.plan import Plan, Samples
from benchmarks.timing import repeat, run_clients, sample_calls, shares

HWM = 100_000  # zmqruntime's default send_high_water_mark: no drops, no blocking here


@dataclasses.dataclass(frozen=True)
class Curve:
    """CURVE keys (Z85) of one server and one client for the raw baselines."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def make(cls) -> Curve:
        return cls(*zmq.curve_keypair(), *zmq.curve_keypair())

    def serve(self, socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` the CURVE server (before it binds)."""
        socket.curve_secretkey, socket.curve_publickey = self.server_secret, self.server_public
        socket.curve_server = True

    def connect(self, socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` a CURVE client of the server (before it connects)."""
        socket.curve_secretkey, socket.curve_publickey = self.client_secret, self.client_public
        socket.curve_serverkey = self.server_public


def serve(socket: zmq.Socket[Any], curve: Curve | None) -> None:
    if curve is not None:
        curve.serve(socket)


def connect(socket: zmq.Socket[Any], curve: Curve | None) -> None:
    if curve is not None:
        curve.connect(socket)


def urls(transport: str, folder: str, count: int, name: str = "raw") -> list[str]:
    """``count`` endpoints to bind: free loopback TCP ports, or IPC files in ``folder``."""
    if transport == "ipc":
        return [f"ipc://{folder}/{name}-{index}.sock" for index in range(count)]
    context = zmq.Context()
    probes = [context.socket(zmq.ROUTER) for _ in range(count)]
    ports = [probe.bind_to_random_port("tcp://127.0.0.1") for probe in probes]
    for probe in probes:
        probe.close(linger=0)
    context.term()
    return [f"tcp://127.0.0.1:{port}" for port in ports]


# --- the task server ---------------------------------------------------------------------


def _execute(header: dict[str, Any], frames: list[Any], pub: zmq.Socket[Any] | None) -> list[Any]:
    """Run one task in the worker thread; returns the reply frames (header first)."""
    kind = header["kind"]
    reply: dict[str, Any] = {"id": header["id"], "ok": True}
    if kind == "array":
        data = frames[0].buffer if isinstance(frames[0], zmq.Frame) else frames[0]
        array = numpy.frombuffer(data, dtype=header["dtype"]).reshape(header["shape"])
        reply.update(dtype=header["dtype"], shape=header["shape"])
        return [json.dumps(reply).encode(), array]
    if kind == "progress":
        updates = header["updates"]
        topic = str(header["id"]).encode()
        start = time.perf_counter()
        for number in range(1, updates + 1):
            event = {"id": header["id"], "sequence": number, "fraction": number / updates}
            if pub is not None:
                pub.send_multipart([topic, json.dumps(event).encode()])
        reply["body"] = time.perf_counter() - start
        return [json.dumps(reply).encode()]
    task = json.loads(frames[0])
    return [json.dumps(reply).encode(), json.dumps(task).encode()]


def _worker(
    context: zmq.Context[Any],
    inproc: str,
    progress_url: str | None,
    ready: threading.Event,
    stop: threading.Event,
    zero_copy: bool,
) -> None:
    pair = context.socket(zmq.PAIR)
    pair.sndhwm = pair.rcvhwm = 0
    pair.connect(inproc)
    pub = None
    if progress_url is not None:
        pub = context.socket(zmq.PUB)
        pub.sndhwm = HWM
        pub.bind(progress_url)
    ready.set()
    poller = zmq.Poller()
    poller.register(pair, zmq.POLLIN)
    while not stop.is_set():
        if poller.poll(100):
            identity, header, *frames = pair.recv_multipart(copy=not zero_copy)
            raw_header = header.bytes if isinstance(header, zmq.Frame) else header
            reply = _execute(json.loads(raw_header), frames, pub)
            pair.send_multipart([identity, *reply], copy=not zero_copy)
    pair.close(linger=0)
    if pub is not None:
        pub.close(linger=0)


def _serve(
    url: str,
    progress_url: str | None,
    ready: threading.Event,
    stop: threading.Event,
    zero_copy: bool,
    curve: Curve | None,
) -> None:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.sndhwm = router.rcvhwm = HWM
    serve(router, curve)
    router.bind(url)
    inproc = f"inproc://work-{id(stop)}"
    to_worker = context.socket(zmq.PAIR)
    to_worker.sndhwm = to_worker.rcvhwm = 0
    to_worker.bind(inproc)
    worker_ready = threading.Event()
    worker = threading.Thread(
        target=_worker, args=(context, inproc, progress_url, worker_ready, stop, zero_copy)
    )
    worker.start()
    worker_ready.wait(10)
    ready.set()
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(to_worker, zmq.POLLIN)
    copy = not zero_copy
    while not stop.is_set():
        for socket, _event in poller.poll(100):
            if socket is router:
                to_worker.send_multipart(router.recv_multipart(copy=copy), copy=copy)
            else:
                router.send_multipart(to_worker.recv_multipart(copy=copy), copy=copy)
    worker.join()
    router.close(linger=0)
    to_worker.close(linger=0)
    context.term()


class TaskServer:
    """The raw task server in a background thread (``with TaskServer(url): ...``)."""

    def __init__(
        self,
        url: str,
        progress_url: str | None = None,
        zero_copy: bool = False,
        curve: Curve | None = None,
    ):
        self.url = url
        self._stop = threading.Event()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=_serve, args=(url, progress_url, ready, self._stop, zero_copy, curve)
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the raw task server did not start")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def __enter__(self) -> TaskServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class TaskClient:
    """A DEALER that sends raw tasks; used from one thread."""

    def __init__(self, context: zmq.Context[Any], url: str, curve: Curve | None = None):
        self.socket = context.socket(zmq.DEALER)
        self.socket.sndhwm = self.socket.rcvhwm = HWM
        connect(self.socket, curve)
        self.socket.connect(url)

    def send(self, number: int) -> None:
        header = json.dumps({"id": number, "kind": "json"}).encode()
        self.socket.send_multipart([header, json.dumps(number).encode()])

    def receive(self) -> list[bytes]:
        return self.socket.recv_multipart()

    def call(self, number: int) -> None:
        self.send(number)
        self.receive()

    def close(self) -> None:
        self.socket.close(linger=0)


# --- workloads ---------------------------------------------------------------------------


def latency(plan: Plan, transport: str, curve: Curve | None = None) -> Samples:
    """Workload 1: sequential no-op submit→result."""
    with tempfile.TemporaryDirectory(prefix="zmqrt-bench-") as folder:
        (url,) = urls(transport, folder, 1)
        with TaskServer(url, curve=curve):
            context = zmq.Context()
            client = TaskClient(context, url, curve)
            try:
                samples = sample_calls(
                    client.call, plan.latency_count, plan.warmup, plan.latency_budget
                )
            finally:
                client.close()
                context.term()
    return Samples(samples)


def pipelined(plan: Plan, clients: int, curve: Curve | None = None) -> Samples:
    """Workloads 2 and 3: submit ``pipelined_tasks`` (split over clients), then wait for all."""
    tasks = plan.pipelined_tasks
    with tempfile.TemporaryDirectory(prefix="zmqrt-bench-") as folder:
        (url,) = urls("tcp", folder, 1)
        with TaskServer(url, curve=curve):
            context = zmq.Context()
            dealers = [TaskClient(context, url, curve) for _ in range(clients)]
            counts = shares(tasks, clients)

            def work(index: int, counts: list[int] = counts) -> None:
                dealer = dealers[index]
                for number in range(counts[index]):
                    dealer.send(number)
                for _ in range(counts[index]):
                    dealer.receive()

            try:
                run_clients(clients, lambda index: work(index, shares(plan.warmup, clients)))
                durations = repeat(lambda: run_clients(clients, work), plan.reps, plan.rep_budget)
            finally:
                for dealer in dealers:
                    dealer.close()
                context.term()
    return Samples(durations, items=tasks)


def payload(plan: Plan, curve: Curve | None = None) -> Samples:
    """Workload 4: a task carrying a numpy array of ``payload_bytes``, returned as result."""
    array = numpy.arange(plan.payload_bytes // 8, dtype=numpy.float64)
    with tempfile.TemporaryDirectory(prefix="zmqrt-bench-") as folder:
        (url,) = urls("tcp", folder, 1)
        with TaskServer(url, zero_copy=True, curve=curve):
            context = zmq.Context()
            dealer = context.socket(zmq.DEALER)
            connect(dealer, curve)
            dealer.connect(url)

            def call(number: int) -> None:
                header = {"id": number, "kind": "array", "dtype": "<f8", "shape": [array.size]}
                dealer.send_multipart([json.dumps(header).encode(), array], copy=False)
                reply, data = dealer.recv_multipart(copy=False)
                meta = json.loads(reply.bytes)
                result = numpy.frombuffer(data.buffer, dtype=meta["dtype"])
                assert result.size == array.size

            try:
                samples = sample_calls(
                    call, plan.payload_count, min(plan.warmup, 20), plan.latency_budget
                )
            finally:
                dealer.close(linger=0)
                context.term()
    return Samples(samples)


def progress(plan: Plan, subscribed: bool) -> Samples:
    """Workload 6: a task publishing ``progress_updates`` events, with or without a subscriber.

    Values are submit → last event (with a subscriber) or submit → result; ``extra["body"]``
    is the task body's own duration, ``extra["delivered"]`` the events the subscriber got.
    """
    updates = plan.progress_updates
    with tempfile.TemporaryDirectory(prefix="zmqrt-bench-") as folder:
        url, progress_url = urls("tcp", folder, 2)
        with TaskServer(url, progress_url=progress_url):
            context = zmq.Context()
            dealer = context.socket(zmq.DEALER)
            dealer.connect(url)
            sub = context.socket(zmq.SUB)
            sub.rcvhwm = HWM
            sub.connect(progress_url)
            bodies: list[float] = []
            delivered: list[int] = []

            def run(count: int, wait: float = 10.0) -> float:
                header = {"id": len(bodies), "kind": "progress", "updates": count}
                start = time.perf_counter()
                dealer.send_multipart([json.dumps(header).encode()])
                seen, reply = _collect(dealer, sub if subscribed else None, count, wait)
                end = time.perf_counter()
                bodies.append(json.loads(reply[0])["body"])
                delivered.append(seen)
                return end - start

            try:
                if subscribed:
                    sub.subscribe(b"")
                    deadline = time.monotonic() + 10  # PUB/SUB joins late: probe until it has
                    while run(1, wait=0.2) and not delivered[-1] and time.monotonic() < deadline:
                        pass
                bodies.clear()
                delivered.clear()
                durations = repeat(lambda: run(updates), plan.reps, plan.rep_budget)
            finally:
                dealer.close(linger=0)
                sub.close(linger=0)
                context.term()
    return Samples(durations, extra={"body": bodies, "delivered": delivered, "updates": updates})


def _collect(
    dealer: zmq.Socket[Any], sub: zmq.Socket[Any] | None, count: int, wait: float
) -> tuple[int, list[bytes]]:
    """Read the reply and (with a subscriber) events until the last one; returns both.

    Gives up on events after ``wait`` seconds of silence: the row reports how many arrived.
    """
    poller = zmq.Poller()
    poller.register(dealer, zmq.POLLIN)
    if sub is not None:
        poller.register(sub, zmq.POLLIN)
    seen, reply, last = 0, None, 0
    while reply is None or (sub is not None and last < count):
        ready = dict(poller.poll(int(wait * 1000) if reply is not None else 30_000))
        if not ready:
            break
        if sub is not None and sub in ready:
            while True:
                try:
                    _topic, body = sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                seen += 1
                last = json.loads(body)["sequence"]
        if dealer in ready:
            reply = dealer.recv_multipart()
    if reply is None:
        raise RuntimeError("no reply from the raw task server")
    return seen, reply
