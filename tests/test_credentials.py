"""Connection files and the credentials in them: what a secure-by-default TCP server writes
and what a client of the same user reads back."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import ClientFactory, ServerFactory
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core import codec
from zmqruntime.core.authentication import acquire_authenticator, release_authenticator
from zmqruntime.core.client import ZMQClient
from zmqruntime.core.credentials import (
    ConnectionFile,
    PlainCredentials,
    UserCredentials,
    connection_file_path,
    remove_connection_file,
    runtime_directory,
)
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import Ping, Pong
from zmqruntime.core.security import ClientCurve, ServerCurve, generate_curve_keypair
from zmqruntime.core.server import ZMQServer
from zmqruntime.errors import ConfigurationError, ServerLost, ZMQTimeoutError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_user_credentials_are_made_once_owner_only_and_then_reused(config: ZMQConfig) -> None:
    first = UserCredentials.load(config)
    path = runtime_directory(config) / "credentials.json"
    assert _mode(path) == 0o600
    assert _mode(runtime_directory(config)) == 0o700
    assert len(first.plain.password) >= 40  # 256 random bits, URL-safe base64
    assert "password" not in repr(first.plain)
    assert UserCredentials.load(config) == first
    assert UserCredentials.load(ZMQConfig(ipc_root=config.ipc_root / "other")) != first


def test_loopback_uses_plain_and_other_hosts_curve_keys_that_admit_this_user(
    config: ZMQConfig,
) -> None:
    user = UserCredentials.load(config)
    assert user.server_side("127.0.0.1") == user.client_side("::1") == user.plain
    server, client = user.server_side("10.1.2.3"), user.client_side("10.1.2.3")
    assert isinstance(server, ServerCurve) and isinstance(client, ClientCurve)
    assert client.server_public_key == server.keypair.public_key
    assert server.allowed_client_keys == {client.keypair.public_key}


@given(st.sampled_from(["127.0.0.1", "::1", "localhost", "10.0.0.5", "example.org"]))
def test_the_json_form_of_a_connection_file_round_trips(host: str) -> None:
    keys = UserCredentials(
        PlainCredentials("u", "p"), generate_curve_keypair(), generate_curve_keypair()
    )
    file = ConnectionFile(host, 7777, 8777, 42, keys.client_side(host))
    assert ConnectionFile.from_json(json.loads(json.dumps(file.to_json()))) == file


def test_a_connection_file_is_found_by_port(config: ZMQConfig) -> None:
    file = ConnectionFile("127.0.0.1", 40001, 41001, os.getpid(), PlainCredentials("u", "p"))
    path = file.write(config)
    assert path == connection_file_path(config, 40001) and _mode(path) == 0o600
    assert ConnectionFile.find(config, 40001) == file
    assert ConnectionFile.find(config, 40002) is None


@pytest.mark.parametrize(
    "content",
    [
        {},
        {"format": 2, "transport": "tcp"},
        {"format": 1, "transport": "ipc"},
        {"format": 1, "transport": "tcp", "host": "h", "port": 1, "control_port": 2, "pid": 3},
        {
            "format": 1,
            "transport": "tcp",
            "host": "h",
            "port": 1,
            "control_port": 2,
            "pid": 3,
            "mechanism": "curve",
            "server_key": "short",
            "client_public_key": "x",
            "client_secret_key": "y",
        },
        {
            "format": 1,
            "transport": "tcp",
            "host": "h",
            "port": "not a number",
            "control_port": 2,
            "pid": 3,
            "mechanism": "plain",
            "username": "u",
            "password": "p",
        },
    ],
)
def test_anything_else_is_refused_with_a_clear_error(content: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="not a zmqruntime connection file"):
        ConnectionFile.from_json(content)


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (b"{}", 0o644, "mode 0600"),
        (b"[1]", 0o600, "not a JSON object"),
        (b"{", 0o600, "not JSON"),
        (b" " * 70_000, 0o600, "too large"),
    ],
    ids=["readable by others", "not an object", "not json", "huge"],
)
def test_a_suspicious_file_is_refused(
    config: ZMQConfig, content: bytes, mode: int, message: str
) -> None:
    path = connection_file_path(config, 40003)
    runtime_directory(config, create=True)
    path.write_bytes(content)
    path.chmod(mode)
    with pytest.raises(ConfigurationError, match=message):
        ConnectionFile.find(config, 40003)


def test_a_symlink_in_place_of_the_file_is_not_followed(config: ZMQConfig, tmp_path: Path) -> None:
    file = ConnectionFile("127.0.0.1", 40004, 41004, 1, PlainCredentials("u", "p"))
    target = file.write(ZMQConfig(ipc_root=tmp_path / "elsewhere"))
    link = connection_file_path(config, 40004)
    runtime_directory(config, create=True)
    link.symlink_to(target)
    with pytest.raises(ConfigurationError, match="cannot read"):
        ConnectionFile.find(config, 40004)


def test_a_runtime_folder_open_to_others_is_refused(config: ZMQConfig) -> None:
    folder = runtime_directory(config, create=True)
    folder.chmod(0o755)
    with pytest.raises(ConfigurationError, match="mode 0700"):
        runtime_directory(config, create=True)


def test_a_server_removes_only_its_own_file(config: ZMQConfig) -> None:
    file = ConnectionFile("127.0.0.1", 40005, 41005, os.getpid(), PlainCredentials("u", "p"))
    path = file.write(config)
    remove_connection_file(path, os.getpid() + 1)  # a newer server's file stays
    assert path.exists()
    remove_connection_file(path, os.getpid())
    assert not path.exists()
    assert not list(runtime_directory(config).iterdir())  # no temporary file left behind


def test_servers_on_one_context_share_one_authenticator() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        first = acquire_authenticator(context)
        first.configure_plain("a", {"u": "p"})
        second = acquire_authenticator(context)
        assert second is first
        second.configure_plain("b", {"u": "q"})
        release_authenticator(context, "a")
        assert first.is_alive() and "a" not in first.passwords and "b" in first.passwords
        release_authenticator(context, "b")
        assert not first.is_alive()
    finally:
        context.term()


# --- secure by default, end to end ------------------------------------------------------------


def _refusal(client: ZMQClient) -> str:
    with pytest.raises((ServerLost, ZMQTimeoutError)) as refused:
        client.ping(timeout=2.0)
    return str(refused.value)


def test_a_tcp_server_admits_its_own_user_and_refuses_another(
    start_server: ServerFactory, connect_client: ClientFactory, config: ZMQConfig
) -> None:
    server = start_server(TransportMode.TCP)
    path = connection_file_path(config, server.bound_port)
    assert _mode(path) == 0o600
    assert json.loads(path.read_text())["mechanism"] == "plain"
    assert connect_client(server).ping(timeout=5.0).pid == os.getpid()
    stranger = ZMQConfig(ipc_root=config.ipc_root / "stranger", request_timeout=2.0)
    assert "refused" in _refusal(connect_client(server, config=stranger))
    server.close()
    assert not path.exists()


def test_a_raw_peer_without_credentials_gets_nothing(start_server: ServerFactory) -> None:
    server = start_server(TransportMode.TCP)
    with zmq.Context() as context, context.socket(zmq.DEALER) as peer:
        peer.linger = 0
        # Which event the refused side sees depends on who notices the mismatch first: a
        # failed handshake, or the server closing the connection under it.
        monitor = peer.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_DISCONNECTED
        )
        peer.connect(server.sockets.control_url)
        peer.send_multipart(codec.encode(Ping(request_id=1)))
        assert monitor.poll(10_000), "the handshake was not refused"
        assert not peer.poll(200)
        peer.disable_monitor()
        monitor.close(linger=0)


def test_an_insecure_server_is_open_and_says_so(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture, config: ZMQConfig
) -> None:
    server = start_server(TransportMode.TCP, insecure=True)
    assert "insecure=True" in caplog.text
    assert not connection_file_path(config, server.bound_port).exists()
    with zmq.Context() as context, context.socket(zmq.DEALER) as peer:
        peer.linger = 0
        peer.connect(server.sockets.control_url)
        peer.send_multipart(codec.encode(Ping(request_id=1)))
        assert peer.poll(5000)
        assert isinstance(codec.decode(peer.recv_multipart()), Pong)


def test_a_client_may_start_before_its_server_and_follow_a_restart(
    start_server: ServerFactory, connect_client: ClientFactory, config: ZMQConfig
) -> None:
    first = start_server(TransportMode.TCP)
    port = first.bound_port
    first.close()
    client = connect_client(port, TransportMode.TCP)  # no server, no connection file
    start_server(TransportMode.TCP, port=port)
    assert client.ping(timeout=5.0).pid == os.getpid()


def test_servers_sharing_a_context_keep_their_own_credentials(
    connect_client: ClientFactory, config: ZMQConfig
) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    keys, friend = generate_curve_keypair(), generate_curve_keypair()
    admits_friend = ServerCurve(keys, allowed_client_keys=[friend.public_key])
    try:
        with (
            ZMQServer(Endpoint.tcp(0, config=config), handlers={}, context=context) as plain,
            ZMQServer(
                Endpoint.tcp(0, config=config, curve=admits_friend), handlers={}, context=context
            ) as curve,
        ):
            assert connect_client(plain).ping(timeout=5.0)
            stranger = ClientCurve(generate_curve_keypair(), keys.public_key)
            assert "refused" in _refusal(connect_client(curve, curve=stranger))
            plain.close()  # releases its ZAP domain; the authenticator serves on
            assert connect_client(curve, curve=ClientCurve(friend, keys.public_key)).ping(5.0)
            assert "refused" in _refusal(connect_client(curve, curve=stranger))
    finally:
        context.term()
