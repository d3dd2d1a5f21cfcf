"""Runs INSIDE a virtual environment holding the published zmqruntime 0.6.5 (not this repo).

Started by ``benchmarks/systems/v065.py`` as ``<venv python> -I v065_script.py WORKLOAD
PARAMS_JSON`` with ``HOME`` set to a scratch folder (0.6.5 keeps lock files and IPC sockets
under ``~/.zmqruntime``). Prints one JSON object on its last stdout line. Self-contained:
imports only the standard library, numpy, pyzmq and zmqruntime 0.6.5.

0.6.5 is extended by subclassing its ABCs; the subclasses below are the minimum it needs and
everything else is its defaults. Its server loop is ``serve_forever``: handle at most one
control request, publish queued progress, then ``time.sleep(0.01)`` — so every request waits
for the next turn of a 10 ms sleep loop. Its client opens a new REQ socket per request and
waits for completion through its progress stream (SUB, 50 ms poll) or a status poll.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
import time
import uuid
from multiprocessing import shared_memory
from typing import Any

import numpy
import zmq
from zmqruntime.messages import ImageTransferIdentity

from zmqruntime import (
    ExecuteRequest,
    GlobalAckListener,
    GlobalQueueTrackerRegistry,
    ProcessIdentity,
    TransportMode,
    ZMQConfig,
    serve_forever,
)
from zmqruntime import __version__ as VERSION
from zmqruntime.execution import ExecutionClient, ExecutionServer
from zmqruntime.streaming import StreamingVisualizerServer

HOST = "127.0.0.1"
OFFSET = ZMQConfig().control_port_offset


# --- the minimal subclasses --------------------------------------------------------------


class BenchServer(ExecutionServer):
    """Runs the benchmark task named in the request's ``pipeline_code``."""

    bodies: list[float]

    def execute_task(self, execution_id: str, request: ExecuteRequest) -> Any:
        params = request.config_params or {}
        if request.pipeline_code == "array":
            data = base64.b64decode(params["data"])
            array = numpy.frombuffer(data, dtype=params["dtype"])
            return {"size": array.size}
        if request.pipeline_code == "progress":
            updates = params["updates"]
            start = time.perf_counter()
            for number in range(1, updates + 1):
                self.send_progress_update(
                    {
                        "execution_id": execution_id,
                        "phase": "run",
                        "status": "running",
                        "percent": 100.0 * number / updates,
                        "timestamp": time.time(),
                        "completed": number,
                        "total": updates,
                    }
                )
            self.bodies.append(time.perf_counter() - start)
        return params  # 0.6.5 keeps only the keys of a dict result (results_summary)


class BenchClient(ExecutionClient):
    """Sends a task as an ExecuteRequest; attaches to the benchmark's server, never spawns."""

    def serialize_task(self, task: Any, config: Any) -> ExecuteRequest:
        code, params = task
        return ExecuteRequest(subject_id="bench", pipeline_code=code, config_params=params)

    def _spawn_server_process(self) -> Any:
        raise RuntimeError("the benchmark starts its server itself")

    def send_data(self, data: Any) -> None:
        raise NotImplementedError


class BenchViewer(StreamingVisualizerServer):
    """Reads the data socket (the base loop does not), loads images, acks each one."""

    def process_messages(self) -> None:
        super().process_messages()
        while self.data_socket is not None:
            try:
                message = self.data_socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            items = self.deserialize_message(message)["images"]
            images = self.load_images_from_shared_memory(items, error_callback=self.send_ack)
            self.handle_data_message({"images": images})
            for item in images:
                self.send_ack(ImageTransferIdentity.from_item(item))

    def handle_control_message(self, message: Any) -> dict[str, str]:
        return {"status": "error", "message": f"no control verb {message.get('type')!r} here"}

    def display_image(self, image_data: Any, metadata: dict[str, Any]) -> None:
        _ = int(image_data.flat[0])


# --- helpers -----------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port whose control port (port + offset) is free too."""
    context = zmq.Context()
    try:
        while True:
            probe = context.socket(zmq.ROUTER)
            port = probe.bind_to_random_port(f"tcp://{HOST}", 20000, 60000 - OFFSET)
            other = context.socket(zmq.ROUTER)
            try:
                other.bind(f"tcp://{HOST}:{port + OFFSET}")
                return port
            except zmq.ZMQError:
                continue
            finally:
                probe.close(linger=0)
                other.close(linger=0)
    finally:
        context.term()


def unlink(name: str) -> None:
    """Remove a shared-memory block nobody received (the consumer unlinks in 0.6.5)."""
    try:
        block = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return
    block.close()
    block.unlink()


class Running:
    """A 0.6.5 server served by ``serve_forever`` (its defaults) in a background thread."""

    def __init__(self, server: Any):
        self.server = server
        self.thread = threading.Thread(
            target=serve_forever, args=(server,), kwargs={"handle_signals": False}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not server.is_running() and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.server.request_shutdown()
        self.thread.join(10)


def execution_setup(mode: TransportMode, clients: int = 1) -> tuple[Running, list[BenchClient]]:
    port = free_port() if mode is TransportMode.TCP else 7777
    server = BenchServer(port=port, host=HOST, transport_mode=mode)
    server.bodies = []
    running = Running(server)
    connected = []
    for _ in range(clients):
        client = BenchClient(port=port, transport_mode=mode)
        if not client.connect_existing(timeout=5):
            raise RuntimeError("could not attach to the 0.6.5 server")
        connected.append(client)
    return running, connected


def close_all(running: Running, clients: list[BenchClient]) -> None:
    for client in clients:
        client.disconnect()
    running.close()


def run_task(client: BenchClient, code: str, params: dict[str, Any]) -> dict[str, Any]:
    response = client.submit_execution((code, params))
    result = client.wait_for_completion(response["execution_id"])
    if result["status"] != "complete":
        raise RuntimeError(f"0.6.5 task ended {result}")
    return result


def sample_calls(call: Any, count: int, warmup: int, budget: float) -> list[float]:
    for number in range(warmup):
        call(number)
    samples: list[float] = []
    deadline = time.perf_counter() + budget
    for number in range(count):
        start = time.perf_counter()
        call(number)
        end = time.perf_counter()
        samples.append(end - start)
        if end > deadline and len(samples) >= 20:
            break
    return samples


def repeat(run: Any, reps: int, budget: float) -> list[float]:
    durations: list[float] = []
    deadline = time.perf_counter() + budget
    for _ in range(reps):
        durations.append(run())
        if time.perf_counter() > deadline:
            break
    return durations


def run_clients(clients: list[BenchClient], work: Any) -> float:
    threads = [threading.Thread(target=work, args=(client,)) for client in clients]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


# --- workloads ---------------------------------------------------------------------------


def latency(p: dict[str, Any]) -> dict[str, Any]:
    running, clients = execution_setup(TransportMode(p["transport"]))
    try:
        samples = sample_calls(
            lambda number: run_task(clients[0], "noop", {"n": number}),
            p["count"],
            p["warmup"],
            p["budget"],
        )
    finally:
        close_all(running, clients)
    return {"values": samples}


def pipelined(p: dict[str, Any]) -> dict[str, Any]:
    running, clients = execution_setup(TransportMode.TCP, p["clients"])
    share = p["tasks"] // p["clients"]

    def work(client: BenchClient, count: int = share) -> None:
        ids = [
            client.submit_execution(("noop", {"n": number}))["execution_id"]
            for number in range(count)
        ]
        for execution_id in ids:
            if client.wait_for_completion(execution_id)["status"] != "complete":
                raise RuntimeError("a 0.6.5 task did not complete")

    try:
        run_clients(clients, lambda client: work(client, max(1, p["warmup"] // p["clients"])))
        durations = repeat(lambda: run_clients(clients, work), p["reps"], p["budget"])
    finally:
        close_all(running, clients)
    return {"values": durations, "items": share * p["clients"]}


def payload(p: dict[str, Any]) -> dict[str, Any]:
    """The array travels base64 in ``config_params``: 0.6.5 requests must be JSON values.

    0.6.5 returns no result (a record keeps only the keys of a dict result), so this
    measures the payload one way only.
    """
    array = numpy.arange(p["bytes"] // 8, dtype=numpy.float64)

    def call(_number: int) -> None:
        params = {"data": base64.b64encode(array.tobytes()).decode(), "dtype": "<f8"}
        run_task(clients[0], "array", params)

    running, clients = execution_setup(TransportMode.TCP)
    try:
        samples = sample_calls(
            call,
            p["count"],
            p["warmup"],
            p["budget"],
        )
    finally:
        close_all(running, clients)
    return {"values": samples}


def progress(p: dict[str, Any]) -> dict[str, Any]:
    running, clients = execution_setup(TransportMode.TCP)
    client = clients[0]
    events: list[str] = []
    client.progress_callback = lambda event: events.append(event["execution_id"])
    bodies, delivered = running.server.bodies, []

    def run(updates: int = p["updates"]) -> float:
        events.clear()
        start = time.perf_counter()
        response = client.submit_execution(("progress", {"updates": updates}))
        # With the default status_timeout_ms (1000) the wait raises TimeoutError: delivering
        # 10,000 events to the callback takes longer than its delivery barrier allows.
        result = client.wait_for_completion(response["execution_id"], status_timeout_ms=60_000)
        end = time.perf_counter()  # returns after every progress callback was delivered
        if result["status"] != "complete":
            raise RuntimeError(f"0.6.5 progress task ended {result}")
        delivered.append(len(events))
        return end - start

    try:
        run(min(200, p["updates"]))  # warm-up
        bodies.clear()
        delivered.clear()
        durations = repeat(run, p["reps"], p["budget"])
    finally:
        close_all(running, clients)
    extra = {"body": list(bodies), "delivered": delivered, "updates": p["updates"]}
    return {"values": durations, "extra": extra}


def stream(p: dict[str, Any]) -> dict[str, Any]:
    size, window, frames = p["size"], p["window"], p["frames"]
    port = free_port()
    viewer = BenchViewer(
        port, "bench", host=HOST, data_socket_type=zmq.SUB, transport_mode=TransportMode.TCP
    )
    running = Running(viewer)
    listener = GlobalAckListener()
    route = listener.start(port=0, transport_mode=TransportMode.TCP, host=HOST)
    tracker = GlobalQueueTrackerRegistry().get_or_create_tracker(port, "bench")
    acked = threading.Semaphore(0)
    listener.register_callback(lambda _ack: acked.release())
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.connect(f"tcp://{HOST}:{port}")
    image = numpy.zeros((size, size), numpy.uint16)
    producer = ProcessIdentity.current().to_dict()

    def send() -> str:
        shm = shared_memory.SharedMemory(create=True, size=image.nbytes)
        numpy.ndarray(image.shape, image.dtype, buffer=shm.buf)[:] = image
        shm.close()
        image_id = str(uuid.uuid4())
        tracker.register_sent(image_id)
        item = {
            "shm_name": shm.name,
            "shape": list(image.shape),
            "dtype": str(image.dtype),
            "metadata": {},
            "image_id": image_id,
            "return_route": route.to_dict(),
            "producer": producer,
        }
        pub.send(json.dumps({"type": "batch", "images": [item]}).encode())
        return shm.name

    def run() -> float:
        in_flight = 0
        start = time.perf_counter()
        for _ in range(frames):
            if in_flight >= window:
                if not acked.acquire(timeout=30):
                    raise RuntimeError("0.6.5 viewer stopped acking")
                in_flight -= 1
            send()
            in_flight += 1
        while in_flight:
            if not acked.acquire(timeout=30):
                raise RuntimeError("0.6.5 viewer stopped acking")
            in_flight -= 1
        return time.perf_counter() - start

    try:
        deadline = time.monotonic() + 10  # PUB/SUB joins late: probe until a frame is acked
        probes = []
        while True:
            probes.append(send())
            if acked.acquire(timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("0.6.5 viewer never acked a frame")
        for name in probes[:-1]:  # frames PUB dropped before the viewer joined
            unlink(name)
        durations = repeat(run, p["reps"], p["budget"])
    finally:
        pub.close(linger=0)
        context.term()
        running.close()  # the ack listener ends with the process (its stop polls for 1 s)
    return {"values": durations, "items": frames}


WORKLOADS = {
    "latency": latency,
    "pipelined": pipelined,
    "payload": payload,
    "progress": progress,
    "stream": stream,
}


def main() -> int:
    workload, params = sys.argv[1], json.loads(sys.argv[2])
    if VERSION != "0.6.5":
        raise SystemExit(f"expected zmqruntime 0.6.5 in this environment, found {VERSION}")
    result = WORKLOADS[workload](params)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    # Skip interpreter teardown: 0.6.5's ack listener (1 s poll) and its atexit hook would
    # only add waiting time; every socket and shared-memory block is already released.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
