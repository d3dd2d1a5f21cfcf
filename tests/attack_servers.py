"""Servers for ``tests/test_attacks.py``, each in a process of its own, run as
``python -m tests.attack_servers KIND PORT IPC_ROOT [options]`` from the repository root:

* ``execution`` — an ExecutionServer running :func:`tests.executors.dispatch` on 2 threads;
* ``viewer`` — a StreamingServer whose sink is ``--sink gate`` (holds every image until the
  parent writes ``go`` on stdin, then drops them) or ``--sink npy:DIR`` (a DirectorySink);
* ``ack`` — an AckChannel owning a tracker named ``gui``.

``--insecure`` binds TCP without credentials; ``--nofile N`` sets both open-file limits to N
first; ``--hwm N`` and ``--backlog-bytes N`` set the high-water marks and the viewer's backlog.
The server prints ``ready`` once it serves and runs until stdin ends (the parent closes it),
reading ``go`` lines meanwhile. Nothing sleeps: the main thread blocks on stdin.
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
from collections.abc import Mapping
from typing import Any

import attrs
import numpy

from tests.executors import dispatch
from tests.reliability_scripts import child_config
from zmqruntime import AckChannel, GlobalQueueTrackerRegistry
from zmqruntime.config import TransportMode
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.execution import ExecutionServer, WorkerPool
from zmqruntime.streaming import StreamingServer
from zmqruntime.streaming.sinks import DirectorySink

HOLD = 120.0
"""Longest a gated sink holds an image (seconds): longer than any test waits."""


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.attack_servers")
    parser.add_argument("kind", choices=["execution", "viewer", "ack"])
    parser.add_argument("port", type=int)
    parser.add_argument("ipc_root")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--nofile", type=int)
    parser.add_argument("--hwm", type=int)
    parser.add_argument("--backlog-bytes", type=int)
    parser.add_argument("--sink", default="gate")
    args = parser.parse_args(argv)
    if args.nofile:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
    config = child_config(args.ipc_root)
    if args.hwm:
        config = attrs.evolve(config, send_high_water_mark=args.hwm)
    endpoint = Endpoint.of(
        args.port, transport_mode=TransportMode.TCP, config=config, insecure=args.insecure
    )
    gate = threading.Event()
    server: Any
    if args.kind == "execution":
        server = ExecutionServer.bind(endpoint, dispatch, pool=WorkerPool.threads(2))
    elif args.kind == "ack":
        registry = GlobalQueueTrackerRegistry()
        registry.get_or_create_tracker("gui")
        server = AckChannel.bind(endpoint, registry=registry)
    else:
        directory = args.sink.removeprefix("npy:")
        sink = DirectorySink(directory) if args.sink.startswith("npy:") else None

        def gated(image: numpy.ndarray[Any, Any], metadata: Mapping[str, Any], /) -> None:
            if sink is not None:
                sink(image, metadata)
            elif not gate.wait(HOLD):
                raise TimeoutError("the test never opened the gate")

        options = {"backlog_bytes": args.backlog_bytes} if args.backlog_bytes else {}
        server = StreamingServer.bind(endpoint, gated, **options)
    with server:
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() == "go":
                gate.set()


if __name__ == "__main__":
    main(sys.argv[1:])
