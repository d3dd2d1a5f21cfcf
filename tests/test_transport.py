"""Tests of zmqruntime.core.transport against real TCP sockets and real Unix sockets in tmp_path."""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core import transport
from zmqruntime.core.transport import (
    ensure_ipc_directory,
    find_free_ipc_port,
    find_free_port_pair,
    get_bind_url,
    get_control_port,
    get_control_url,
    get_default_transport_mode,
    get_ipc_socket_path,
    get_zmq_transport_url,
    ipc_path_limit,
    ipc_socket_is_stale,
    is_endpoint_in_use,
    is_ipc_socket_in_use,
    is_port_in_use,
    remove_ipc_socket,
    validate_ipc_socket_path,
)
from zmqruntime.errors import ConfigurationError, ZMQRuntimeError

posix_only = pytest.mark.skipif(os.name == "nt", reason="IPC needs Unix domain sockets")


@pytest.fixture
def cfg(tmp_path: Path) -> ZMQConfig:
    return ZMQConfig(ipc_root=tmp_path)


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)


def _bind_stale_socket(path: Path) -> None:
    """Leave a socket file behind that nobody listens on (a crashed server's leftover)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(os.fspath(path))
    assert stat.S_ISSOCK(path.lstat().st_mode)


def _can_bind(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# --- paths and URLs -------------------------------------------------------------------------


@posix_only
def test_ipc_path_layout_with_custom_names(tmp_path: Path) -> None:
    config = ZMQConfig(
        ipc_root=tmp_path,
        app_name="myapp",
        ipc_socket_dir="socks",
        ipc_socket_prefix="srv",
        ipc_socket_extension=".ipc",
    )
    path = get_ipc_socket_path(5555, config)
    assert path == tmp_path / ".myapp" / "socks" / "srv-5555.ipc"
    assert not (tmp_path / ".myapp").exists()  # pure: nothing is created


@posix_only
def test_ipc_path_layout_defaults(cfg: ZMQConfig, tmp_path: Path) -> None:
    assert get_ipc_socket_path(7777, cfg) == tmp_path / ".zmqruntime" / "ipc" / "zmq-7777.sock"


@posix_only
def test_default_mode_is_ipc_here() -> None:
    assert get_default_transport_mode() is TransportMode.IPC


def test_tcp_urls(cfg: ZMQConfig) -> None:
    tcp = TransportMode.TCP
    assert get_zmq_transport_url(5555, mode=tcp) == "tcp://localhost:5555"
    assert get_zmq_transport_url(5555, "10.0.0.2", tcp, cfg) == "tcp://10.0.0.2:5555"
    assert get_zmq_transport_url(5555, "::1", tcp) == "tcp://[::1]:5555"
    assert get_zmq_transport_url(5555, "[::1]", tcp) == "tcp://[::1]:5555"
    assert get_zmq_transport_url(5555, "fe80::1%eth0", tcp) == "tcp://[fe80::1%eth0]:5555"


@posix_only
def test_ipc_urls(cfg: ZMQConfig) -> None:
    path = get_ipc_socket_path(5555, cfg)
    assert get_zmq_transport_url(5555, mode=TransportMode.IPC, config=cfg) == f"ipc://{path}"
    assert get_zmq_transport_url(5555, config=cfg) == f"ipc://{path}"  # default mode
    assert get_bind_url(5555, config=cfg) == f"ipc://{path}"


def test_bind_urls() -> None:
    tcp = TransportMode.TCP
    assert get_bind_url(5555, tcp) == "tcp://127.0.0.1:5555"
    assert get_bind_url(5555, tcp, ZMQConfig(bind_host="0.0.0.0")) == "tcp://0.0.0.0:5555"
    assert get_bind_url(5555, tcp, ZMQConfig(bind_host="::1")) == "tcp://[::1]:5555"


def test_control_port_and_url(cfg: ZMQConfig) -> None:
    assert get_control_port(5555) == 6555
    assert get_control_port(5555, ZMQConfig(control_port_offset=-100)) == 5455
    assert get_control_url(5555, mode=TransportMode.TCP) == "tcp://localhost:6555"
    assert get_control_url(5555, "::1", TransportMode.TCP) == "tcp://[::1]:6555"
    if os.name != "nt":
        control_path = get_ipc_socket_path(6555, cfg)
        assert get_control_url(5555, mode=TransportMode.IPC, config=cfg) == f"ipc://{control_path}"
    with pytest.raises(ConfigurationError, match="control port"):
        get_control_port(65000)


@pytest.mark.parametrize("port", [0, -1, 65536, True, 5555.0, "5555"])
def test_invalid_ports_raise(port: object, cfg: ZMQConfig) -> None:
    for call in (
        lambda: get_zmq_transport_url(port, mode=TransportMode.TCP),  # type: ignore[arg-type]
        lambda: get_zmq_transport_url(port, config=cfg),  # type: ignore[arg-type]
        lambda: get_ipc_socket_path(port, cfg),  # type: ignore[arg-type]
        lambda: get_bind_url(port, TransportMode.TCP),  # type: ignore[arg-type]
        lambda: get_control_port(port),  # type: ignore[arg-type]
        lambda: is_port_in_use(port),  # type: ignore[arg-type]
    ):
        with pytest.raises(ConfigurationError):
            call()


def test_empty_host_raises() -> None:
    with pytest.raises(ConfigurationError, match="host"):
        get_zmq_transport_url(5555, "", TransportMode.TCP)


# --- the IPC folder and path length ---------------------------------------------------------


@posix_only
def test_ensure_ipc_directory_creates_private_folder(cfg: ZMQConfig) -> None:
    directory = ensure_ipc_directory(cfg)
    assert directory == cfg.ipc_directory()
    assert directory.is_dir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert ensure_ipc_directory(cfg) == directory  # idempotent


@posix_only
def test_ensure_ipc_directory_tightens_existing_folder(cfg: ZMQConfig) -> None:
    directory = cfg.ipc_directory()
    directory.mkdir(parents=True)
    directory.chmod(0o755)
    ensure_ipc_directory(cfg)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


@posix_only
def test_ensure_ipc_directory_refuses_a_file(cfg: ZMQConfig) -> None:
    cfg.ipc_directory().parent.mkdir(parents=True)
    cfg.ipc_directory().write_text("not a folder")
    with pytest.raises(ConfigurationError, match="cannot create"):
        ensure_ipc_directory(cfg)


@posix_only
def test_too_long_ipc_path_raises(tmp_path: Path) -> None:
    config = ZMQConfig(ipc_root=tmp_path / ("x" * 120))
    with pytest.raises(ConfigurationError, match=r"bytes, longer than the \d+-byte limit"):
        get_zmq_transport_url(5555, mode=TransportMode.IPC, config=config)
    with pytest.raises(ConfigurationError, match="ipc_root"):
        get_bind_url(5555, TransportMode.IPC, config)
    fits = Path("/" + "a" * (ipc_path_limit() - 1))
    assert validate_ipc_socket_path(fits) == fits
    with pytest.raises(ConfigurationError):
        validate_ipc_socket_path(Path("/" + "a" * ipc_path_limit()))


# --- probing TCP ----------------------------------------------------------------------------


def test_is_port_in_use_with_real_zmq_listener() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        router = context.socket(zmq.ROUTER)
        router.linger = 0
        try:
            port = router.bind_to_random_port("tcp://127.0.0.1")
            assert is_port_in_use(port)
            assert is_port_in_use(port, "127.0.0.1")
            assert is_endpoint_in_use(port, TransportMode.TCP)
        finally:
            router.close()
    finally:
        context.term()
    assert not is_port_in_use(port)
    assert not is_endpoint_in_use(port, TransportMode.TCP, "127.0.0.1")


def test_find_free_port_pair_both_ports_bind() -> None:
    config = ZMQConfig()
    port = find_free_port_pair(config)
    control = get_control_port(port, config)
    assert _can_bind(port)
    assert _can_bind(control)


def test_find_free_port_pair_from_start_skips_taken_ports() -> None:
    config = ZMQConfig(control_port_offset=1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        if busy + 3 > 65535:
            pytest.skip("the OS picked a port at the very top of the range")
        port = find_free_port_pair(config, start=busy, attempts=50)
        # busy itself is taken, so the search moves on to the ports above it.
        assert port > busy
        assert not is_port_in_use(port) and not is_port_in_use(port + 1)


def test_find_free_port_pair_gives_up() -> None:
    with pytest.raises(ZMQRuntimeError, match="no free data/control port pair"):
        find_free_port_pair(ZMQConfig(), start=65535, attempts=1)  # control would be 66535
    with pytest.raises(ConfigurationError, match="attempts"):
        find_free_port_pair(attempts=0)
    with pytest.raises(ConfigurationError, match="start"):
        find_free_port_pair(start=0)


# --- probing and cleaning IPC ---------------------------------------------------------------


@posix_only
def test_live_zmq_ipc_socket_is_in_use_and_kept(
    cfg: ZMQConfig, zmq_context: zmq.Context[zmq.Socket[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    ensure_ipc_directory(cfg)
    path = get_ipc_socket_path(7777, cfg)
    assert path is not None
    router = zmq_context.socket(zmq.ROUTER)
    router.linger = 0
    try:
        router.bind(get_bind_url(7777, TransportMode.IPC, cfg))
        assert path.exists()
        assert is_ipc_socket_in_use(7777, cfg)
        assert is_endpoint_in_use(7777, TransportMode.IPC, config=cfg)
        assert is_endpoint_in_use(7777, config=cfg)  # default mode is IPC here
        assert not ipc_socket_is_stale(7777, cfg)
        with caplog.at_level(logging.WARNING, logger="zmqruntime.core.transport"):
            assert remove_ipc_socket(7777, cfg) is False
        assert "listening" in caplog.text
        assert path.exists()
        assert find_free_ipc_port(cfg, start=7777) == 7778
    finally:
        router.close()


@posix_only
def test_stale_ipc_socket_is_removed_once(cfg: ZMQConfig) -> None:
    path = get_ipc_socket_path(7777, cfg)
    assert path is not None
    _bind_stale_socket(path)
    assert path.exists()
    assert not is_ipc_socket_in_use(7777, cfg)
    assert not is_endpoint_in_use(7777, TransportMode.IPC, config=cfg)
    assert ipc_socket_is_stale(7777, cfg)
    assert find_free_ipc_port(cfg, start=7777) == 7777  # a stale file does not block a port
    assert remove_ipc_socket(7777, cfg) is True
    assert not path.exists()
    assert remove_ipc_socket(7777, cfg) is False
    assert not ipc_socket_is_stale(7777, cfg)


@posix_only
def test_plain_unix_listener_counts_as_in_use(cfg: ZMQConfig) -> None:
    path = get_ipc_socket_path(7777, cfg)
    assert path is not None
    path.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(os.fspath(path))
        listener.listen()
        assert is_ipc_socket_in_use(7777, cfg)
        assert remove_ipc_socket(7777, cfg) is False
    path.unlink()


@posix_only
def test_missing_and_non_socket_files(cfg: ZMQConfig) -> None:
    assert not is_ipc_socket_in_use(7777, cfg)
    assert not ipc_socket_is_stale(7777, cfg)
    assert remove_ipc_socket(7777, cfg) is False
    path = get_ipc_socket_path(7777, cfg)
    assert path is not None
    path.parent.mkdir(parents=True)
    path.write_text("a regular file, not ours to delete")
    assert not is_ipc_socket_in_use(7777, cfg)
    assert not ipc_socket_is_stale(7777, cfg)
    assert remove_ipc_socket(7777, cfg) is False
    assert path.exists()


@posix_only
def test_find_free_ipc_port_checks_control_socket(
    tmp_path: Path, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    config = ZMQConfig(ipc_root=tmp_path, control_port_offset=1)
    ensure_ipc_directory(config)
    router = zmq_context.socket(zmq.ROUTER)
    router.linger = 0
    try:
        router.bind(get_bind_url(7778, TransportMode.IPC, config))
        # 7777 is free but its control port 7778 is not; 7778 itself is taken.
        assert find_free_ipc_port(config) == 7779
    finally:
        router.close()
    with pytest.raises(ZMQRuntimeError, match="no free IPC port"):
        find_free_ipc_port(config, start=65535, attempts=1)


# --- Windows behaviour (the platform probe is swapped; the code paths are real) -------------


def test_windows_paths(monkeypatch: pytest.MonkeyPatch, cfg: ZMQConfig) -> None:
    monkeypatch.setattr(transport, "_on_windows", lambda: True)
    assert get_default_transport_mode() is TransportMode.TCP
    assert get_ipc_socket_path(5555, cfg) is None
    assert get_zmq_transport_url(5555) == "tcp://localhost:5555"
    assert get_bind_url(5555) == "tcp://127.0.0.1:5555"
    with pytest.raises(ConfigurationError, match=r"use TransportMode\.TCP"):
        get_zmq_transport_url(5555, mode=TransportMode.IPC, config=cfg)
    with pytest.raises(ConfigurationError, match="Windows"):
        ensure_ipc_directory(cfg)
    with pytest.raises(ConfigurationError, match="Windows"):
        find_free_ipc_port(cfg)
    assert not is_ipc_socket_in_use(5555, cfg)
    assert not ipc_socket_is_stale(5555, cfg)
    assert remove_ipc_socket(5555, cfg) is False
