"""Workload 11: start-up. Every sample is a fresh Python process.

* Import: ``import zmq, numpy, attrs`` (raw) against ``import zmqruntime.execution,
  zmqruntime.streaming`` (ours, the packages alone: their names load on first use) and against
  the headline classes (``ExecutionClient``, ``ExecutionServer``, ``ImageSender``,
  ``StreamingServer``), which load the modules behind them. Each child times its own import
  statement (``perf_counter`` around it), so the interpreter's start is not counted.
* Viewer start → ready: a driver process times ``VisualizerProcessManager.start()`` of
  ``python -m zmqruntime.streaming`` (TCP, loopback, a temporary runtime folder) until it
  returns, i.e. until the launched viewer answered ping; raw: ``Popen`` of a ``python -c``
  that imports zmq, numpy and attrs and answers one request on a ROUTER, until a DEALER of
  the driver (reconnecting every 10 ms) has its answer.

Bytecode: this environment may set ``PYTHONDONTWRITEBYTECODE=1``; the children run without
it, after one warm-up run of each, so every measured import reads cached ``.pyc`` files.
The systems alternate sample by sample (A, B, A, B…), so a noisy neighbour hits both alike.
``root`` is the source tree the children import from (for A/B runs against an older tree).
"""

from __future__ import annotations

import functools
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

from benchmarks.plan import OURS, OURS_NAMES, RAW, Plan, Samples

REPO = Path(__file__).resolve().parents[1]
_TIMEOUT = 120.0

_IMPORTS = {
    RAW: "import zmq, numpy, attrs",
    OURS: "import zmqruntime.execution, zmqruntime.streaming",
    OURS_NAMES: (
        "from zmqruntime.execution import ExecutionClient, ExecutionServer; "
        "from zmqruntime.streaming import ImageSender, StreamingServer"
    ),
}
_TIMED_IMPORT = "import time; t = time.perf_counter(); {0}; print(time.perf_counter() - t)"

_RAW_VIEWER = """
import sys, zmq, numpy, attrs
router = zmq.Context().socket(zmq.ROUTER)
router.bind("tcp://127.0.0.1:" + sys.argv[1])
if router.poll(60_000):
    router.send_multipart(router.recv_multipart())
"""
_RAW_DRIVER = """
import subprocess, sys, time, zmq
code, port = sys.argv[1], sys.argv[2]
dealer = zmq.Context().socket(zmq.DEALER)
dealer.setsockopt(zmq.RECONNECT_IVL, 10)
dealer.setsockopt(zmq.LINGER, 0)
dealer.connect("tcp://127.0.0.1:" + port)
started = time.perf_counter()
child = subprocess.Popen([sys.executable, "-c", code, port])
dealer.send(b"ping")
answered = 0
while not answered and child.poll() is None and time.perf_counter() < started + 60:
    answered = dealer.poll(1000)  # a child that died (its port taken) ends the wait
took = time.perf_counter() - started
child.wait(60)
print(took if answered else "no answer")
"""
_OURS_DRIVER = """
import sys, tempfile, time
from zmqruntime import TransportMode, ZMQConfig
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.transport import find_free_port_pair
from zmqruntime.streaming import VisualizerProcessManager, python_module_spec
with tempfile.TemporaryDirectory() as folder:
    config = ZMQConfig(ipc_root=folder)
    port = find_free_port_pair(config, start=int(sys.argv[1]))
    spec = python_module_spec(
        "zmqruntime.streaming", "--port", str(port), "--transport", "tcp",
        "--ipc-root", folder, "--sink", "npy:" + folder + "/images", "--log-level", "WARNING",
    )
    endpoint = Endpoint.of(port, transport_mode=TransportMode.TCP, config=config)
    manager = VisualizerProcessManager(spec, endpoint)
    started = time.perf_counter()
    manager.start(timeout=60)
    took = time.perf_counter() - started
    manager.stop()
print(took)
"""


def _environment(root: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


def _seconds(argv: list[str], root: Path) -> float:
    done = subprocess.run(
        argv,
        cwd=root,
        env=_environment(root),
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{argv[:3]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return float(lines[-1])


def import_seconds(system: str, root: Path = REPO) -> float:
    """One fresh process's import time of ``system``'s modules, in seconds."""
    code = _TIMED_IMPORT.format(_IMPORTS[system])
    return _seconds([sys.executable, "-c", code], root)


def viewer_seconds(system: str, root: Path = REPO) -> float:
    """One launch of a viewer process until it answered, in seconds (driver process)."""
    if system == RAW:
        return _seconds([sys.executable, "-c", _RAW_DRIVER, _RAW_VIEWER, str(_free_port())], root)
    return _seconds([sys.executable, "-c", _OURS_DRIVER, str(_free_port())], root)


def _free_port() -> int:
    """A free port below the ephemeral range: a client that connects to an ephemeral port
    before its server binds can, rarely, connect to itself (TCP self-connect) and take it."""
    while True:
        port = random.randrange(20_000, 30_000, 2)
        with socket.socket() as one, socket.socket() as two:
            try:
                one.bind(("127.0.0.1", port))
                two.bind(("127.0.0.1", port + 1000))  # the control port (offset 1000)
            except OSError:
                continue
            return port


def _counts(plan: Plan) -> tuple[int, int]:
    """(import samples, viewer samples) per system."""
    return (3, 2) if plan.quick else (15, 9)


@functools.cache
def measure(plan: Plan) -> dict[tuple[str, str], Samples]:
    """Every workload-11 sample, systems interleaved; cached: each system's call reads its own
    part of one interleaved run."""
    imports, viewers = _counts(plan)
    note = "fresh process, bytecode cached (warmed once, PYTHONDONTWRITEBYTECODE unset)"
    found: dict[tuple[str, str], list[float]] = {}
    for system in _IMPORTS:
        import_seconds(system)  # warm-up: writes the .pyc files
    for _ in range(imports):
        for system in _IMPORTS:
            found.setdefault(("11-import", system), []).append(import_seconds(system))
    viewer_seconds(OURS)
    for _ in range(viewers):
        for system in (RAW, OURS):
            found.setdefault(("11-viewer-start", system), []).append(viewer_seconds(system))
    viewer_note = "Popen → answering ping, driver-timed; raw: a ROUTER after import zmq+numpy+attrs"
    notes = {
        ("11-import", RAW): note,
        ("11-import", OURS): note + "; the packages alone: their names load on first use",
        ("11-import", OURS_NAMES): note + "; ExecutionClient, ExecutionServer, ImageSender, "
        "StreamingServer",
    }
    return {key: Samples(values, note=notes.get(key, viewer_note)) for key, values in found.items()}


def outcome(plan: Plan, key: str, system: str) -> Samples:
    """One system's samples of one workload-11 row."""
    return measure(plan)[key, system]
