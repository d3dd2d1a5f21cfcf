"""Request round trip: ZMQClient.ping against a raw pyzmq DEALER/ROUTER echo, same run.

Run: ``python -m benchmarks.transport_roundtrip [--requests N] [--mode tcp|ipc]``. Prints
median and p99 latency of sequential round trips and pipelined throughput for both systems,
and the ratio zmqruntime / raw. Absolute numbers drift on shared machines; the ratio is the
figure to compare.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import zmq

from zmqruntime import TransportMode, ZMQClient, ZMQConfig, ZMQServer
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import Ping


def _raw_echo_server(url: str, ready: threading.Event, stop: threading.Event) -> None:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(url)
    ready.set()
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    while not stop.is_set():
        if poller.poll(100):
            router.send_multipart(router.recv_multipart())
    router.close(linger=0)
    context.term()


def _measure(call: Callable[[], object], count: int) -> list[float]:
    for _ in range(min(200, count)):
        call()  # warm-up
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def _raw(url: str, count: int) -> tuple[list[float], float]:
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=_raw_echo_server, args=(url, ready, stop))
    thread.start()
    ready.wait(10)
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(url)
    payload = b'{"version":1,"type":"ping","frames":0,"request_id":1}'

    def once() -> None:
        dealer.send(payload)
        dealer.recv()

    samples = _measure(once, count)
    start = time.perf_counter()
    for _ in range(count):
        dealer.send(payload)
    for _ in range(count):
        dealer.recv()
    throughput = count / (time.perf_counter() - start)
    dealer.close(linger=0)
    context.term()
    stop.set()
    thread.join(10)
    return samples, throughput


def _ours(mode: TransportMode, config: ZMQConfig, count: int) -> tuple[list[float], float]:
    with (
        ZMQServer(Endpoint.of(port=0, transport_mode=mode, config=config)) as server,
        ZMQClient(
            Endpoint.of(port=server.bound_port, transport_mode=mode, config=config)
        ) as client,
    ):
        samples = _measure(lambda: client.ping(timeout=10), count)
        start = time.perf_counter()
        futures = [client.request_async(Ping(request_id=0)) for _ in range(count)]
        for future in futures:
            future.result(timeout=30)
        throughput = count / (time.perf_counter() - start)
    return samples, throughput


def _row(name: str, samples: list[float], throughput: float) -> str:
    ordered = sorted(samples)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    median = statistics.median(ordered)
    return f"| {name} | {median * 1e6:.0f} µs | {p99 * 1e6:.0f} µs | {throughput:,.0f}/s |"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--mode", choices=["tcp", "ipc"], default="tcp")
    args = parser.parse_args(argv)
    mode = TransportMode(args.mode)
    with tempfile.TemporaryDirectory(prefix="zmqrt-bench-") as folder:
        config = ZMQConfig(ipc_root=folder)
        url = "tcp://127.0.0.1:0"
        if mode is TransportMode.IPC:
            url = f"ipc://{folder}/raw.sock"
        else:
            probe = zmq.Context()
            socket = probe.socket(zmq.ROUTER)
            port = socket.bind_to_random_port("tcp://127.0.0.1")
            socket.close(linger=0)
            probe.term()
            url = f"tcp://127.0.0.1:{port}"
        raw_samples, raw_rate = _raw(url, args.requests)
        our_samples, our_rate = _ours(mode, config, args.requests)
    out = sys.stdout
    out.write(f"round trip, {args.requests} requests over {mode.value}\n\n")
    out.write("| system | median | p99 | pipelined |\n|---|---|---|---|\n")
    out.write(_row("raw pyzmq DEALER/ROUTER echo", raw_samples, raw_rate) + "\n")
    out.write(_row("zmqruntime ZMQClient.ping", our_samples, our_rate) + "\n")
    ratio = statistics.median(our_samples) / statistics.median(raw_samples)
    out.write(f"\nlatency ratio zmqruntime/raw: {ratio:.2f}x; ")
    out.write(f"throughput ratio: {our_rate / raw_rate:.2f}x\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
