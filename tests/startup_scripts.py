"""Child processes for the start-up tests, run as ``python tests/startup_scripts.py <command>``.

* ``ready`` — reports readiness on its lifeline (``report_ready``) and exits.
* ``slow_pong PORT IPC_ROOT DELAY`` — a raw ROUTER on the IPC control address of PORT that
  reports readiness at once but answers each ping DELAY seconds late, as a viewer busy
  loading its GUI would; it answers a shutdown request and exits, and exits when its launcher
  is gone.
"""

from __future__ import annotations

import os
import sys
import threading

import zmq

from zmqruntime import ZMQConfig, __version__
from zmqruntime.config import TransportMode
from zmqruntime.core import codec
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.lifeline import report_ready, watch_lifeline
from zmqruntime.core.messages import PROTOCOL_VERSION, Ping, Pong, Shutdown, ShutdownReply
from zmqruntime.core.transport import ensure_ipc_directory

_LIMIT_MS = 60_000  # nothing this script waits for takes longer; then it gives up


def ready() -> None:
    report_ready()


def slow_pong(port: str, ipc_root: str, delay: str) -> None:
    endpoint = Endpoint.of(
        int(port), transport_mode=TransportMode.IPC, config=ZMQConfig(ipc_root=ipc_root)
    )
    watch_lifeline(lambda: os._exit(0))
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    ensure_ipc_directory(endpoint.config)
    router.bind(endpoint.control_url)
    report_ready()
    late = threading.Event()  # never set: the answer is late by ``delay`` seconds on purpose
    while router.poll(_LIMIT_MS):
        identity, *frames = router.recv_multipart()
        message = codec.decode(frames)
        if isinstance(message, Shutdown):
            router.send_multipart(
                [identity, *codec.encode(ShutdownReply(request_id=message.request_id))]
            )
            break
        if isinstance(message, Ping):
            late.wait(float(delay))
            pong = Pong(
                request_id=message.request_id,
                role="viewer",
                app_name=endpoint.config.app_name,
                pid=os.getpid(),
                library_version=__version__,
                protocol_version=PROTOCOL_VERSION,
                uptime=0.0,
            )
            router.send_multipart([identity, *codec.encode(pong)])
    router.close(linger=1000)
    context.term()


COMMANDS = {"ready": ready, "slow_pong": slow_pong}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
