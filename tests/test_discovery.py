"""Issue 16, items 1 and 2: every bound server writes a descriptor in the runtime folder and
removes it at close; ``discover()`` and ``zmqruntime ls`` list the servers, pinging them all
at once; dead ones are known at once and their descriptors removed."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmqruntime import TransportMode, ZMQConfig
from zmqruntime.core.client import ZMQClient
from zmqruntime.core.descriptors import (
    ServerDescriptor,
    descriptor_path,
    process_identity,
    read_descriptors,
)
from zmqruntime.core.discovery import ServerState, discover
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import ControlMessageType, Shutdown, ShutdownReply
from zmqruntime.core.server import ZMQServer
from zmqruntime.errors import ConfigurationError

SCRIPTS = Path(__file__).with_name("discovery_scripts.py")
WAIT = 60.0
pytestmark = pytest.mark.skipif(os.name != "posix", reason="IPC sockets and signals are POSIX")
linux_only = pytest.mark.skipif(
    not hasattr(os, "pidfd_open"), reason="waits on other processes through pidfds (Linux)"
)


def read_lines(fd: int, count: int, timeout: float) -> list[str]:
    """``count`` lines from the pipe ``fd``, waiting at most ``timeout`` seconds in all."""
    deadline, data = time.monotonic() + timeout, b""
    while data.count(b"\n") < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            pytest.fail(f"timed out waiting for {count} lines; got {data!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            pytest.fail(f"the child closed its output after {data!r}")
        data += chunk
    return data.decode().splitlines()


def wait_gone(handles: dict[int, int], timeout: float = WAIT) -> None:
    """Wait until every process of ``handles`` (pid → pidfd) has ended, then close them."""
    deadline = time.monotonic() + timeout
    try:
        for handle in handles.values():
            left = max(0.0, deadline - time.monotonic())
            assert select.select([handle], [], [], left)[0], "a server process did not exit"
    finally:
        for handle in handles.values():
            os.close(handle)


@contextlib.contextmanager
def fleet(count: int, config: ZMQConfig) -> Iterator[list[tuple[int, int, str]]]:
    """``count`` server processes, as (pid, port, transport); all gone at the end."""
    command = [sys.executable, str(SCRIPTS), "fleet", str(count), str(config.ipc_root)]
    spawner = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert spawner.stdin is not None and spawner.stdout is not None
    handles: dict[int, int] = {}
    try:
        servers = []
        for line in read_lines(spawner.stdout.fileno(), count, WAIT):
            pid, port, transport = line.split()
            handles[int(pid)] = os.pidfd_open(int(pid))
            servers.append((int(pid), int(port), transport))
        yield servers
    finally:
        spawner.stdin.close()  # every server and the spawner read end-of-file and exit
        try:
            spawner.wait(WAIT)
        finally:
            spawner.stdout.close()
            wait_gone(handles)


@linux_only
def test_a_server_writes_its_descriptor_at_bind_and_removes_it_at_close(
    config: ZMQConfig, transport_mode: TransportMode, no_thread_leak: None
) -> None:
    endpoint = Endpoint.of(0, transport_mode=transport_mode, config=config)
    with ZMQServer(endpoint, role="viewer", application="openhcs 2.0") as server:
        path = descriptor_path(config, transport_mode, server.bound_port)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        [(found_path, descriptor)] = read_descriptors(config)
        me = process_identity(os.getpid())
        assert me is not None and found_path == path
        assert (descriptor.role, descriptor.application, descriptor.pid) == (
            "viewer",
            "openhcs 2.0",
            os.getpid(),
        )
        assert (descriptor.start_time, descriptor.argv) == (me.start_time, me.argv)
        assert descriptor.is_process(me) and not descriptor.is_stale(me)
        assert descriptor.control_url == server.sockets.control_url
        assert descriptor.data_url == server.sockets.data_url
        assert descriptor.transport is transport_mode
    assert not path.exists()


def test_closing_never_removes_a_newer_servers_descriptor(config: ZMQConfig) -> None:
    endpoint = Endpoint.ipc(0, config=config)
    server = ZMQServer(endpoint, role="viewer").start()
    path = descriptor_path(config, TransportMode.IPC, server.bound_port)
    newer = attrs.evolve(read_descriptors(config)[0][1], application="the newer one")
    assert newer.publish(config)
    server.close()
    assert read_descriptors(config) == [(path, newer)]


@linux_only
def test_stale_descriptors_are_marked_dead_and_removed(config: ZMQConfig) -> None:
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    )
    with ZMQServer(Endpoint.ipc(0, config=config), role="viewer") as server:
        mine = read_descriptors(config)[0][1]
        assert mine.start_time is not None
        reused = attrs.evolve(mine, port=server.bound_port + 1, start_time=mine.start_time - 1)
        dead = attrs.evolve(mine, port=server.bound_port + 2, pid=int(ended.stdout))
        assert reused.publish(config) and dead.publish(config)
        found = {entry.descriptor.port: entry.state for entry in discover(config)}
        assert found == {
            mine.port: ServerState.LIVE,
            reused.port: ServerState.DEAD,
            dead.port: ServerState.DEAD,
        }
        assert [descriptor for _path, descriptor in read_descriptors(config)] == [mine]


def test_a_server_asked_to_shut_down_says_draining(config: ZMQConfig) -> None:
    def keep_serving(message: Shutdown, _peer: object) -> ShutdownReply:
        return ShutdownReply(request_id=message.request_id)

    handlers = {ControlMessageType.SHUTDOWN: keep_serving}
    with (
        ZMQServer(Endpoint.ipc(0, config=config), handlers, role="viewer") as server,
        ZMQClient(server.sockets.endpoint, connect_data=False) as client,
    ):
        assert not client.ping().draining and not server.draining
        [before] = discover(config)
        client.request(Shutdown(request_id=0))
        assert client.ping().draining and server.draining
        [after] = discover(config)
    assert (before.state, after.state) == (ServerState.LIVE, ServerState.DRAINING)


def test_a_server_finishing_its_work_can_say_it_is_draining(config: ZMQConfig) -> None:
    with (
        ZMQServer(Endpoint.ipc(0, config=config), role="execution") as server,
        ZMQClient(server.sockets.endpoint, connect_data=False) as client,
    ):
        server.begin_draining()  # e.g. an execution server draining on SIGTERM
        assert client.ping().draining and server.is_running


@linux_only
def test_fifty_servers_ten_of_them_killed_are_listed_within_a_second(config: ZMQConfig) -> None:
    with fleet(50, config) as servers:
        victims = {pid for pid, _port, _transport in servers[::5]}
        handles = {pid: os.pidfd_open(pid) for pid in victims}
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        wait_gone(handles)
        started = time.monotonic()
        found = discover(config, timeout=0.8)
        elapsed = time.monotonic() - started
        states = {server.descriptor.pid: server.state for server in found}
        assert elapsed <= 1.0
        assert states == {
            pid: ServerState.DEAD if pid in victims else ServerState.LIVE
            for pid, _port, _transport in servers
        }
        assert {(s.descriptor.port, s.descriptor.transport.value) for s in found} == {
            (port, transport) for _pid, port, transport in servers
        }
        assert {d.pid for _path, d in read_descriptors(config)} == set(states) - victims
        assert all(
            s.pong is not None and s.pong.pid == s.descriptor.pid
            for s in found
            if s.state is ServerState.LIVE
        )
    assert read_descriptors(config) == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "zmqruntime", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=WAIT, check=False)


def test_ls_and_scan_list_the_servers(config: ZMQConfig) -> None:
    root = str(config.ipc_root)
    assert _cli("ls", "--ipc-root", root).stdout.startswith("no servers in")
    endpoint = Endpoint.tcp(0, config=config)
    with ZMQServer(endpoint, role="execution", application="openhcs 2.0") as server:
        listed = _cli("ls", "--ipc-root", root, "--json")
        human = _cli("scan", "--ipc-root", root)
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert (entry["port"], entry["role"], entry["state"]) == (
        server.bound_port,
        "execution",
        "live",
    )
    assert entry["pid"] == os.getpid() and entry["transport"] == "tcp"
    assert entry["capabilities"] == [] and entry["uptime"] >= 0
    header, row = human.stdout.splitlines()
    assert header.split() == ["PORT", "TRANSPORT", "ROLE", "PID", "STATE", "UPTIME", "APPLICATION"]
    assert row.split()[:5] == [str(server.bound_port), "tcp", "execution", str(os.getpid()), "live"]
    assert row.endswith("openhcs 2.0")
    assert _cli("ls", "--ipc-root", root, "--timeout", "-1").returncode == 2


def test_an_unreadable_descriptor_is_skipped_not_fatal(config: ZMQConfig) -> None:
    with ZMQServer(Endpoint.ipc(0, config=config), role="viewer") as server:
        path = descriptor_path(config, TransportMode.IPC, server.bound_port + 5)
        path.write_text(json.dumps({"format": 1, "role": ["not", "text"]}))
        path.chmod(0o600)
        assert [found.descriptor.port for found in discover(config)] == [server.bound_port]
        [(_path, mine)] = read_descriptors(config)
        assert ServerDescriptor.from_json(mine.to_json()) == mine


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)
_FIELDS = [field.name for field in attrs.fields(ServerDescriptor)]
_PORTS = st.integers(1, 65535)


@given(
    st.builds(
        ServerDescriptor,
        role=st.text(),
        application=st.text(),
        app_name=st.text(),
        library_version=st.text(),
        protocol_version=st.integers(),
        pid=st.integers(1, 2**22),
        start_time=st.none() | st.floats(allow_nan=False, allow_infinity=False),
        argv=st.lists(st.text(), max_size=4).map(tuple),
        transport=st.sampled_from(TransportMode),
        host=st.text(),
        port=_PORTS,
        control_port=_PORTS,
        data_url=st.text(),
        control_url=st.text(),
        insecure=st.booleans(),
    )
)
def test_a_descriptor_survives_its_file(descriptor: ServerDescriptor) -> None:
    assert ServerDescriptor.from_json(json.loads(json.dumps(descriptor.to_json()))) == descriptor


@given(st.fixed_dictionaries({"format": st.just(1)}, optional=dict.fromkeys(_FIELDS, _JSON)))
def test_any_json_object_is_a_descriptor_or_a_configuration_error(content: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigurationError):
        assert isinstance(ServerDescriptor.from_json(content), ServerDescriptor)
