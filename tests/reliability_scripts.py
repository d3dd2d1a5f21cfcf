"""Child processes for ``tests/test_reliability.py``, run as
``python tests/reliability_scripts.py <command> <args…>`` with the repository root as the
working directory (so ``tests.executors`` imports).

* ``server PORT MODE IPC_ROOT WORKERS MAX_RECORDS`` — an ExecutionServer running
  :func:`tests.executors.dispatch` on ``WORKERS`` threads, keeping at most ``MAX_RECORDS``
  terminal records, with the test config's short heartbeats. Serves until a shutdown
  request or SIGTERM (then exits 0) or until it is killed.
* ``client PORT MODE IPC_ROOT COUNT`` — an ExecutionClient that submits COUNT tasks
  ``{"block": True, "n": i}``, waits until the server accepted each one, prints
  ``accepted <id>`` per task and then ``ready``, and blocks until it is killed.

None of them sleeps: waiting is blocking on futures, or on an Event that is never set.
"""

from __future__ import annotations

import sys
import threading

from tests.executors import dispatch
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.execution import ExecutionClient, ExecutionServer, RetentionPolicy, WorkerPool


def child_config(ipc_root: str) -> ZMQConfig:
    """The config both the tests and their children use (short heartbeats, short linger)."""
    return ZMQConfig(
        ipc_root=ipc_root,
        request_timeout=5.0,
        connect_timeout=5.0,
        heartbeat_interval=0.2,
        heartbeat_timeout=1.0,
        close_timeout=5.0,
        linger=0.5,
    )


def server(port: str, mode: str, ipc_root: str, workers: str, max_records: str) -> None:
    ExecutionServer.bind(
        Endpoint.of(
            port=int(port), transport_mode=TransportMode(mode), config=child_config(ipc_root)
        ),
        dispatch,
        pool=WorkerPool.threads(int(workers)),
        retention=RetentionPolicy(max_records=int(max_records)),
    ).serve_forever()


def client(port: str, mode: str, ipc_root: str, count: str) -> None:
    connection = ExecutionClient.to(
        Endpoint.of(
            port=int(port), transport_mode=TransportMode(mode), config=child_config(ipc_root)
        )
    )
    executions = [
        connection.submit({"block": True, "n": n}, confirm=True) for n in range(int(count))
    ]
    for execution in executions:
        execution.accepted.result(30)
        print("accepted", execution.execution_id, flush=True)
    print("ready", flush=True)
    threading.Event().wait()  # until killed


COMMANDS = {"server": server, "client": client}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
