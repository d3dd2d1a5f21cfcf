"""``python -m zmqruntime``: a one-minute tour of the transport core on this machine.

It starts a server with a custom handler on a free port, talks to it from a client, measures
the request round trip, and streams acknowledgements from a consumer into a tracker through an
:class:`~zmqruntime.AckChannel`. This module is a command-line program: writing to the
terminal is its job (the library itself only logs).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

from zmqruntime import (
    AckChannel,
    AckSender,
    ControlMessageType,
    GlobalQueueTrackerRegistry,
    Peer,
    ServerSummary,
    StatusRequest,
    SummaryReply,
    ZMQClient,
    ZMQConfig,
    ZMQServer,
    get_default_transport_mode,
)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _status(request: StatusRequest, _peer: Peer) -> SummaryReply:
    return SummaryReply(
        request_id=request.request_id, summary=ServerSummary(queued=0, running=0, workers=1)
    )


def main() -> int:
    """Run the tour; returns the process exit code."""
    mode = get_default_transport_mode()
    with tempfile.TemporaryDirectory(prefix="zmqrt-") as folder:
        config = ZMQConfig(ipc_root=folder)
        handlers = {ControlMessageType.STATUS: _status}
        with ZMQServer(handlers, port=0, transport_mode=mode, config=config, role="demo") as server:
            port = server.bound_port
            _say(f"server listening ({mode.value}): {server.sockets.control_url}")
            with ZMQClient(port=port, transport_mode=mode, config=config) as client:
                pong = client.ping(timeout=5)
                _say(f"ping: role={pong.role} pid={pong.pid} protocol v{pong.protocol_version}")
                summary = client.request(StatusRequest(request_id=0), timeout=5)
                _say(f"custom handler answered: {summary}")
                samples = []
                for _ in range(1000):
                    start = time.perf_counter()
                    client.ping(timeout=5)
                    samples.append((time.perf_counter() - start) * 1e6)
                samples.sort()
                _say(
                    f"1000 round trips: median {statistics.median(samples):.0f} us, "
                    f"p99 {samples[989]:.0f} us"
                )
        registry = GlobalQueueTrackerRegistry()
        tracker = registry.get_or_create_tracker("demo-viewer")
        with AckChannel(registry, port=0, transport_mode=mode, config=config) as channel:
            with AckSender(config=config) as sender:
                for number in range(500):
                    tracker.register_sent(f"image-{number}")
                    sender.acknowledge(channel.address, f"image-{number}", "demo-viewer")
            acked = tracker.wait_all_acknowledged(timeout=10)
            processed, sent = tracker.get_progress()
            _say(f"acks: processed {processed} of {sent} images (all acknowledged: {acked})")
    return 0 if acked else 1


if __name__ == "__main__":
    sys.exit(main())
