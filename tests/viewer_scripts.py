"""Child processes for the streaming and process-manager tests, run as
``python tests/viewer_scripts.py <command> <args…>``.

* ``sender PORT MODE IPC_ROOT ACK_TO KEY COUNT FIRST`` — an ImageSender in another process
  that streams COUNT images (pixel value FIRST+i) to a viewer, with its acks routed to the
  AckChannel at ACK_TO (so acks and sent notices cross a process boundary).
* ``stubborn PORT MODE IPC_ROOT`` — a "viewer" that ignores SIGTERM and answers shutdown
  requests without stopping: only SIGKILL ends it.
* ``launcher PORT MODE IPC_ROOT SINK_DIR`` — starts the ready-made viewer through a
  VisualizerProcessManager, prints ``pid <viewer pid>`` and then blocks forever (the test
  SIGKILLs it to check that the viewer notices its launcher is gone).

None of them sleeps: waiting is blocking on an Event that is never set, or on sockets.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import numpy

from zmqruntime import ZMQConfig
from zmqruntime.config import TransportMode
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import ControlMessageType, Shutdown, ShutdownReply
from zmqruntime.core.server import Peer, ZMQServer
from zmqruntime.streaming import ImageSender, VisualizerProcessManager, python_module_spec


def _config(ipc_root: str) -> ZMQConfig:
    return ZMQConfig(ipc_root=ipc_root, linger=5.0)


def sender(
    port: str, mode: str, ipc_root: str, ack_to: str, key: str, count: str, first: str
) -> None:
    start = int(first)
    with ImageSender.to(
        Endpoint.of(port=int(port), transport_mode=TransportMode(mode), config=_config(ipc_root)),
        ack_to=ack_to,
        tracker_key=key,
        max_in_flight=int(count),  # all may be pending at once: the parent gates the sink
    ) as images:
        for number in range(start, start + int(count)):
            images.send(numpy.full((16, 16), number, numpy.int32), {"value": number})
    # close() delivered everything still queued (linger); the parent checks the tracker.
    print("sent", count, flush=True)


def stubborn(port: str, mode: str, ipc_root: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def refuse_to_stop(message: Any, _peer: Peer) -> ShutdownReply:
        assert isinstance(message, Shutdown)
        print("shutdown request ignored", flush=True)
        return ShutdownReply(request_id=message.request_id)

    server = ZMQServer(
        Endpoint.of(port=int(port), transport_mode=TransportMode(mode), config=_config(ipc_root)),
        handlers={ControlMessageType.SHUTDOWN: refuse_to_stop},
        role="viewer",
    )
    server.serve_forever(handle_signals=False)


def launcher(port: str, mode: str, ipc_root: str, sink_dir: str) -> None:
    spec = python_module_spec(
        "zmqruntime.streaming",
        "--port",
        port,
        "--transport",
        mode,
        "--ipc-root",
        ipc_root,
        "--sink",
        f"npy:{sink_dir}",
    )
    manager = VisualizerProcessManager(
        spec,
        Endpoint.of(port=int(port), transport_mode=TransportMode(mode), config=_config(ipc_root)),
    )
    manager.start(timeout=30)
    print("pid", manager.pid, flush=True)
    threading.Event().wait()  # until killed


COMMANDS = {"sender": sender, "stubborn": stubborn, "launcher": launcher}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
