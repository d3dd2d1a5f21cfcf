"""Child processes for tests/test_discovery.py and tests/test_stop.py, run as
``python tests/discovery_scripts.py <command> <args…>``.

* ``fleet COUNT IPC_ROOT`` — forks COUNT servers (IPC and TCP in turn), one after the other,
  each printing ``<pid> <port> <transport>`` once bound; they (and this process) exit when
  stdin reaches end-of-file. Importing once and forking keeps 50 servers cheap.
* ``drainer PORT MODE IPC_ROOT SECONDS`` — a "viewer" that, asked to shut down, keeps serving
  (draining) for SECONDS before it stops, like a server finishing its work; it stops when its
  launcher goes, and on SIGTERM.

None of them sleeps to wait: they block on stdin, pipes or the server's own loop.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from typing import Any

from zmqruntime import ZMQConfig
from zmqruntime.config import TransportMode
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.lifeline import watch_lifeline
from zmqruntime.core.messages import ControlMessageType, Shutdown, ShutdownReply
from zmqruntime.core.server import Peer, ZMQServer


def fleet(count: str, ipc_root: str) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # a killed child is reaped at once
    config = ZMQConfig(ipc_root=ipc_root)
    for index in range(int(count)):
        mode = TransportMode.TCP if index % 2 else TransportMode.IPC
        read_end, write_end = os.pipe()
        if os.fork() == 0:
            os.close(read_end)
            _serve_until_end_of_input(config, mode, write_end)
        os.close(write_end)
        with os.fdopen(read_end) as ready:
            line = ready.readline()
        if not line:
            sys.exit("a server of the fleet did not start")
        sys.stdout.write(line)
        sys.stdout.flush()
    sys.stdin.read()


def _serve_until_end_of_input(config: ZMQConfig, mode: TransportMode, ready: int) -> None:
    code = 0
    try:
        endpoint = Endpoint.of(0, transport_mode=mode, config=config)
        with ZMQServer(endpoint, role="execution", application="fleet 1.0") as server:
            os.write(ready, f"{os.getpid()} {server.bound_port} {mode.value}\n".encode())
            os.close(ready)
            sys.stdin.read()
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def drainer(port: str, mode: str, ipc_root: str, seconds: str) -> None:
    endpoint = Endpoint.of(int(port), transport_mode=TransportMode(mode), config=_config(ipc_root))

    def drain(message: Any, _peer: Peer) -> ShutdownReply:
        assert isinstance(message, Shutdown)
        threading.Timer(float(seconds), server.request_stop).start()  # the work left to finish
        return ShutdownReply(request_id=message.request_id)

    server = ZMQServer(endpoint, handlers={ControlMessageType.SHUTDOWN: drain}, role="viewer")
    watch_lifeline(server.request_stop)
    server.serve_forever()


def embedded(port: str, mode: str, ipc_root: str) -> None:
    """An application whose server stops when asked, while the application lives on (until
    its input ends)."""
    endpoint = Endpoint.of(int(port), transport_mode=TransportMode(mode), config=_config(ipc_root))
    server = ZMQServer(endpoint, role="execution").start()
    print("ready", flush=True)
    while not server.wait_stopped(1.0):
        pass
    server.close()
    print("server closed", flush=True)
    sys.stdin.read()


def _config(ipc_root: str) -> ZMQConfig:
    return ZMQConfig(ipc_root=ipc_root, linger=0.1)


COMMANDS = {"fleet": fleet, "drainer": drainer, "embedded": embedded}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
