"""Shared fixtures: a fast test config, both transports, servers and clients that clean up.

Everything here uses real zmq sockets: TCP on 127.0.0.1, IPC socket files under ``tmp_path``.
The ``start_server`` / ``connect_client`` factories close what they made at teardown and, through
``no_thread_leak``, fail the test if a thread it started is still alive afterwards.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.utils.garbage

from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.client import ZMQClient
from zmqruntime.core.credentials import client_credentials
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.server import ControlHandler, ZMQServer

THREAD_PREFIX = "zmqruntime-"
"""Every thread zmqruntime starts is named with this prefix."""

_IPC_SUPPORTED = os.name != "nt"


@pytest.fixture(autouse=True, scope="session")
def _no_home_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point ``HOME`` (and so every default ``ZMQConfig``'s IPC and runtime folders) at a
    temporary folder for the whole run, child processes included: tests never touch the home
    folder of whoever runs them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        yield


THEIR_TEMP_FILES = ("pymp-", "dask-scratch-space")
"""Temp entries of other libraries: multiprocessing's (removed when this process exits) and
distributed's scratch folder (its workers' folders in it are removed)."""


@pytest.fixture(autouse=True, scope="session")
def _no_system_temp_litter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point the temp folder (``tempfile`` here, ``TMPDIR``/``TEMP``/``TMP`` for child
    processes) at a folder of this run, so nothing lands in the system temp folder; at the end,
    fail the run if anything but :data:`THEIR_TEMP_FILES` is left in it."""
    folder = tmp_path_factory.mktemp("tmp")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("TMPDIR", "TEMP", "TMP"):
            patch.setenv(name, str(folder))
        patch.setattr(tempfile, "tempdir", str(folder))
        yield
    left = sorted(p.name for p in folder.iterdir() if not p.name.startswith(THEIR_TEMP_FILES))
    assert not left, f"the tests left these in the temp folder: {left}"


@pytest.fixture
def config(tmp_path: Path) -> ZMQConfig:
    """A config with IPC sockets under ``tmp_path`` and timeouts short enough for tests."""
    return ZMQConfig(
        ipc_root=tmp_path,
        request_timeout=5.0,
        connect_timeout=5.0,
        heartbeat_interval=0.2,
        heartbeat_timeout=1.0,
        close_timeout=5.0,
        linger=0.5,
    )


@pytest.fixture(params=[TransportMode.TCP, TransportMode.IPC], ids=["tcp", "ipc"])
def transport_mode(request: pytest.FixtureRequest) -> TransportMode:
    """Each transport in turn (IPC is skipped where Unix sockets do not exist)."""
    mode: TransportMode = request.param
    if mode is TransportMode.IPC and not _IPC_SUPPORTED:
        pytest.skip("IPC needs Unix domain sockets")
    return mode


def _ignorable(thread: threading.Thread) -> bool:
    # pyzmq's process-wide zero-copy garbage collector starts on first large send and lives
    # for the rest of the process; it belongs to pyzmq, not to the code under test.
    return isinstance(thread, zmq.utils.garbage.GarbageCollectorThread)


def live_threads(prefix: str = THREAD_PREFIX) -> list[str]:
    """Names of the live threads whose name starts with ``prefix``."""
    return sorted(t.name for t in threading.enumerate() if t.name.startswith(prefix))


def assert_no_new_threads(before: set[threading.Thread]) -> None:
    """Fail if a thread not in ``before`` is still alive (zmqruntime's threads above all)."""
    leaked = [
        t for t in threading.enumerate() if t not in before and t.is_alive() and not _ignorable(t)
    ]
    assert not leaked, f"threads left running: {sorted(t.name for t in leaked)}"


@pytest.fixture
def no_thread_leak() -> Iterator[None]:
    """Fail the test if it leaves any thread running that was not running before it.

    Checked at once (no grace period): ``close()`` must have joined what it started.
    """
    before = set(threading.enumerate())
    yield
    assert_no_new_threads(before)


def authenticate(socket: zmq.Socket[bytes], url: str, config: ZMQConfig) -> None:
    """Make a hand-made socket present this user's credentials to the server at a TCP ``url``
    bound with ``config``, as a hostile peer of the same user (who can read them) would."""
    if url.startswith("tcp://"):
        credentials = client_credentials(Endpoint.parse(url, config=config))
        assert credentials is not None
        credentials.apply(socket)


ServerFactory = Callable[..., ZMQServer]
ClientFactory = Callable[..., ZMQClient]


def split_endpoint(
    fields: dict[str, Any], port: int, mode: TransportMode | None
) -> tuple[Endpoint, dict[str, Any]]:
    """The endpoint named by the address keywords among ``fields``, and the other fields."""
    names = ("host", "config", "curve", "insecure")
    address = {key: fields.pop(key) for key in names if key in fields}
    return Endpoint.of(fields.pop("port", port), transport_mode=mode, **address), fields


@pytest.fixture
def start_server(config: ZMQConfig, no_thread_leak: None) -> Iterator[ServerFactory]:
    """``start_server(mode, handlers=None, **fields)``: a started ZMQServer on a free port.

    Uses the ``config`` fixture unless ``config=`` is given; closed (and checked for leaked
    threads) at teardown.
    """
    servers: list[ZMQServer] = []

    def factory(
        mode: TransportMode,
        handlers: dict[Any, ControlHandler] | None = None,
        **fields: Any,
    ) -> ZMQServer:
        fields.setdefault("config", config)
        endpoint, rest = split_endpoint(fields, 0, mode)
        server = ZMQServer(endpoint, handlers=handlers or {}, **rest)
        servers.append(server)
        return server.start()

    yield factory
    errors: list[BaseException] = []
    for server in reversed(servers):
        try:
            server.close()
        except BaseException as exc:  # close every one, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def connect_client(config: ZMQConfig, no_thread_leak: None) -> Iterator[ClientFactory]:
    """``connect_client(server_or_port, mode=None, **fields)``: a connected ZMQClient.

    Given a server, connects to its port with its transport; given a port, ``mode`` is needed.
    Closed at teardown (before the servers, which were set up after this fixture or not at all).
    """
    clients: list[ZMQClient] = []

    def factory(
        target: ZMQServer | int, mode: TransportMode | None = None, **fields: Any
    ) -> ZMQClient:
        if isinstance(target, ZMQServer):
            port = target.bound_port
            mode = target.sockets.mode if mode is None else mode
        else:
            port = target
        if mode is None:
            raise TypeError("connect_client needs mode= when given a bare port")
        fields.setdefault("config", config)
        endpoint, rest = split_endpoint(fields, port, mode)
        client = ZMQClient(endpoint, **rest)
        clients.append(client)
        return client.connect()

    yield factory
    errors: list[BaseException] = []
    for client in reversed(clients):
        try:
            client.close()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
