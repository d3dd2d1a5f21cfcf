"""A zmqruntime ExecutionServer (defaults, no-op executor) in a process of its own.

For the memory workload: ``python -m benchmarks.systems.ours_server`` prints its TCP data
port on the first line of stdout, then serves until a client asks it to shut down.
"""

from __future__ import annotations

import sys

from benchmarks.systems.ours import noop
from zmqruntime import TransportMode
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.execution import ExecutionServer


def main() -> int:
    server = ExecutionServer.bind(
        Endpoint.of(port=0, transport_mode=TransportMode.TCP), noop
    ).start()
    sys.stdout.write(f"{server.port_number}\n")
    sys.stdout.flush()
    try:
        while not server.server.wait_stopped(1.0):
            pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
