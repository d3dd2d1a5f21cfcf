"""Task submit→result latency and pipelined throughput, against a raw pyzmq task loop.

Run: ``python -m benchmarks.execution_roundtrip [--tasks N] [--mode tcp|ipc]``.

The raw baseline (``benchmarks/systems/raw.py``, shared with the full suite) is what a
careful hand-written pyzmq runtime does: a ROUTER served by an I/O thread that hands each
task to a worker thread (through an inproc PAIR) and sends the result back; the client is a
DEALER in the calling thread. zmqruntime is measured with an
:class:`~zmqruntime.execution.ExecutionServer` (one worker thread) and an
:class:`~zmqruntime.execution.ExecutionClient`, same machine, same run. The task is a no-op
that returns its input. Ratios are the figures to compare; absolute times drift.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from typing import Any

import zmq

from benchmarks.systems import raw
from zmqruntime import TransportMode, ZMQConfig
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.execution import ExecutionClient, ExecutionServer


def _noop(task: Any, _context: Any) -> Any:
    return task


def _raw(url: str, tasks: int) -> tuple[list[float], float]:
    with raw.TaskServer(url):
        context = zmq.Context()
        client = raw.TaskClient(context, url)
        samples = _measure(client.call, tasks)
        start = time.perf_counter()
        for number in range(tasks):
            client.send(number)
        for _ in range(tasks):
            client.receive()
        throughput = tasks / (time.perf_counter() - start)
        client.close()
        context.term()
    return samples, throughput


def _ours(mode: TransportMode, config: ZMQConfig, tasks: int) -> tuple[list[float], float]:
    with (
        ExecutionServer.bind(
            Endpoint.of(port=0, transport_mode=mode, config=config), _noop
        ) as server,
        ExecutionClient.to(
            Endpoint.of(port=server.port_number, transport_mode=mode, config=config)
        ) as client,
    ):
        samples = _measure(lambda number: client.submit(number).result(timeout=30), tasks)
        start = time.perf_counter()
        executions = [client.submit(number) for number in range(tasks)]
        for execution in executions:
            execution.result(timeout=120)
        throughput = tasks / (time.perf_counter() - start)
    return samples, throughput


def _measure(call: Any, count: int) -> list[float]:
    for number in range(min(200, count)):
        call(number)  # warm-up
    samples = []
    for number in range(count):
        start = time.perf_counter()
        call(number)
        samples.append(time.perf_counter() - start)
    return samples


def _row(name: str, samples: list[float], throughput: float) -> str:
    ordered = sorted(samples)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    return (
        f"| {name} | {statistics.median(ordered) * 1e6:.0f} µs | {p99 * 1e6:.0f} µs "
        f"| {throughput:,.0f} tasks/s |"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--mode", choices=["tcp", "ipc"], default="tcp")
    args = parser.parse_args(argv)
    mode = TransportMode(args.mode)
    with tempfile.TemporaryDirectory(prefix="zmqrt-bench-") as folder:
        config = ZMQConfig(ipc_root=folder)
        if mode is TransportMode.IPC:
            url = f"ipc://{folder}/raw.sock"
        else:
            probe = zmq.Context()
            socket = probe.socket(zmq.ROUTER)
            port = socket.bind_to_random_port("tcp://127.0.0.1")
            socket.close(linger=0)
            probe.term()
            url = f"tcp://127.0.0.1:{port}"
        raw_samples, raw_rate = _raw(url, args.tasks)
        our_samples, our_rate = _ours(mode, config, args.tasks)
    out = sys.stdout
    out.write(
        f"no-op tasks over {mode.value}: {args.tasks} sequential, then {args.tasks} pipelined\n\n"
    )
    out.write("| system | median submit→result | p99 | pipelined |\n|---|---|---|---|\n")
    out.write(_row("raw pyzmq ROUTER/DEALER + worker thread", raw_samples, raw_rate) + "\n")
    out.write(_row("zmqruntime ExecutionServer/Client", our_samples, our_rate) + "\n")
    ratio = statistics.median(our_samples) / statistics.median(raw_samples)
    out.write(f"\nlatency ratio zmqruntime/raw: {ratio:.2f}x; ")
    out.write(f"throughput ratio: {our_rate / raw_rate:.2f}x\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
