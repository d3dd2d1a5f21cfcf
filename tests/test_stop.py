"""Issue 16, item 3: ``zmqruntime stop PORT`` asks, then ends a hung server's process only
once its descriptor proves who it is (a stranger never); a process manager starting a server
right after a shutdown waits for the draining one to go instead of attaching to it."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from zmqruntime import TransportMode, ZMQConfig
from zmqruntime.core.client import ZMQClient
from zmqruntime.core.descriptors import ServerDescriptor, process_identity, read_descriptors
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import Shutdown
from zmqruntime.core.transport import find_free_ipc_port, find_free_port_pair
from zmqruntime.streaming import CommandSpec, VisualizerProcessManager

SCRIPTS = Path(__file__).parent
WAIT = 60.0
pytestmark = pytest.mark.skipif(os.name != "posix", reason="IPC sockets and signals are POSIX")
linux_only = pytest.mark.skipif(
    not hasattr(os, "pidfd_open"), reason="waits on other processes through pidfds (Linux)"
)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "zmqruntime", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=WAIT, check=False)


def _spec(script: str, command: str, *args: str) -> CommandSpec:
    return CommandSpec((sys.executable, str(SCRIPTS / script), command, *args))


@contextlib.contextmanager
def launched(
    config: ZMQConfig, script: str, command: str, *extra: str
) -> Iterator[VisualizerProcessManager]:
    """A server launched from ``script`` on a free IPC port, answering pings; its process
    is gone at the end."""
    port = str(find_free_ipc_port(config))
    spec = _spec(script, command, port, "ipc", str(config.ipc_root), *extra)
    manager = VisualizerProcessManager(spec, Endpoint.of(int(port), config=config))
    manager.start(timeout=WAIT)
    try:
        yield manager
    finally:
        manager.stop(timeout=5.0)  # shutdown request, SIGTERM, SIGKILL: gone either way


@linux_only
def test_a_server_frozen_with_sigstop_is_stopped(config: ZMQConfig) -> None:
    with launched(config, "discovery_scripts.py", "drainer", "0") as manager:
        assert manager.pid is not None
        os.kill(manager.pid, signal.SIGSTOP)  # frozen: it acts on nothing until SIGCONT
        port = str(manager.endpoint.port)
        stopped = _cli("stop", port, "--ipc-root", str(config.ipc_root), "--timeout", "1")
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.endswith(f"(ipc, pid {manager.pid}): terminated\n")
        assert process_identity(manager.pid) is None
        assert read_descriptors(config) == []


@linux_only
def test_a_server_that_ignores_shutdown_and_sigterm_is_killed(config: ZMQConfig) -> None:
    with launched(config, "viewer_scripts.py", "stubborn") as manager:
        port = str(manager.endpoint.port)
        stopped = _cli("stop", port, "--ipc-root", str(config.ipc_root), "--timeout", "0.5")
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.endswith(": killed\n")
        assert manager.pid is not None and process_identity(manager.pid) is None
        assert read_descriptors(config) == [] and list(config.ipc_directory().iterdir()) == []


@linux_only
def test_a_willing_server_just_shuts_down(config: ZMQConfig) -> None:
    with launched(config, "discovery_scripts.py", "drainer", "0.1") as manager:
        root = str(config.ipc_root)
        stopped = _cli("stop", str(manager.endpoint.port), "--ipc-root", root, "--json")
        assert stopped.returncode == 0, stopped.stderr
        assert '"outcome": "shut down"' in stopped.stdout
        assert _cli("stop", str(manager.endpoint.port), "--ipc-root", root).returncode == 3


@linux_only
def test_an_application_whose_server_shut_down_lives_on(config: ZMQConfig) -> None:
    """stop asks; the server closes and withdraws its descriptor, the process goes on with
    its other work: it is never signalled."""
    port = str(find_free_ipc_port(config))
    command = [sys.executable, str(SCRIPTS / "discovery_scripts.py"), "embedded", port, "ipc"]
    application = subprocess.Popen(
        [*command, str(config.ipc_root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert application.stdin is not None and application.stdout is not None
    try:
        assert application.stdout.readline() == b"ready\n"
        root = str(config.ipc_root)
        stopped = _cli("stop", port, "--ipc-root", root, "--timeout", "3", "--json")
        assert stopped.returncode == 0, stopped.stderr
        assert '"outcome": "shut down"' in stopped.stdout
        assert application.stdout.readline() == b"server closed\n"
        assert application.poll() is None  # alive: no signal came
    finally:
        application.stdin.close()
        assert application.wait(WAIT) == 0  # it ended of its own accord, when its input did
        application.stdout.close()


@contextlib.contextmanager
def stranger() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A process that is no zmqruntime server, holding a TCP port until its stdin closes."""
    code = (
        "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
        "print(s.getsockname()[1], flush=True); sys.stdin.read()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        assert select.select([process.stdout], [], [], WAIT)[0], "the stranger did not start"
        yield process, int(process.stdout.readline())
    finally:
        process.stdin.close()
        process.stdout.close()
        process.wait(WAIT)


@linux_only
@pytest.mark.parametrize("fake", ["command line", "start time"])
def test_a_stranger_with_a_faked_descriptor_is_never_killed(config: ZMQConfig, fake: str) -> None:
    with stranger() as (process, port):
        identity = process_identity(process.pid)
        assert identity is not None and identity.start_time is not None
        server = ServerDescriptor.of("viewer", "", Endpoint.tcp(port, config=config, insecure=True))
        server = attrs.evolve(server, pid=process.pid, start_time=identity.start_time)
        described = {
            "command line": attrs.evolve(server, argv=("python", "-m", "zmqruntime", "serve")),
            "start time": attrs.evolve(server, start_time=identity.start_time + 1),
        }[fake]
        assert described.publish(config)
        stopped = _cli("stop", str(port), "--ipc-root", str(config.ipc_root), "--timeout", "0.3")
        assert process.poll() is None, "the stranger was killed"
        if fake == "command line":  # alive and not provably the server: refused, kept
            assert stopped.returncode == 4, stopped.stderr
            assert "nothing was signalled" in stopped.stderr
            assert read_descriptors(config) == [(described.path(config), described)]
        else:  # another start time: the described server is long gone
            assert stopped.returncode == 0, stopped.stderr
            assert stopped.stdout.endswith(": not running\n")
            assert read_descriptors(config) == []


@pytest.mark.soak  # about 50 s: the default Python runs it, the extra ones leave it out
@pytest.mark.timeout(600)  # 55 launches of a Python process
def test_a_restart_right_after_a_shutdown_never_attaches_to_the_dying_server(
    config: ZMQConfig, transport_mode: TransportMode, no_thread_leak: None
) -> None:
    tcp = transport_mode is TransportMode.TCP
    port = find_free_port_pair(config) if tcp else find_free_ipc_port(config)
    endpoint = Endpoint.of(port, transport_mode=transport_mode, config=config)
    root, mode = str(config.ipc_root), transport_mode.value
    spec = _spec("discovery_scripts.py", "drainer", str(port), mode, root, "0.1")
    with contextlib.ExitStack() as stack:

        def launch() -> VisualizerProcessManager:
            manager = VisualizerProcessManager(spec, endpoint)
            stack.callback(manager.stop, timeout=5.0)  # each one is gone at the end
            return manager.start(timeout=WAIT)

        previous = launch()
        for _ in range(5 if tcp else 50):  # each TCP restart waits out a quarter-second probe
            with ZMQClient(endpoint, connect_data=False) as client:
                client.request(Shutdown(request_id=0), timeout=5.0)
            manager = launch()  # at once: the previous server is still draining
            pong = manager.ping(timeout=5.0)
            assert not manager.attached and (pong.pid, pong.draining) == (manager.pid, False)
            previous.stop(timeout=5.0)
            previous = manager
