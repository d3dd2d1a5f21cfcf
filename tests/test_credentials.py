"""Connection files and the credentials in them: what a secure-by-default TCP server writes
and what a client of the same user reads back."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import ClientFactory, ServerFactory
from zmqruntime import AckChannel, StreamingServer
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
from zmqruntime.core.messages import Ack, Ping, Pong
from zmqruntime.core.security import ClientCurve, ServerCurve, generate_curve_keypair
from zmqruntime.core.serializers import PickleSerializer, SafeSerializer
from zmqruntime.core.server import ZMQServer
from zmqruntime.errors import ConfigurationError, ServerLost, ZMQTimeoutError
from zmqruntime.execution import ExecutionServer, RemoteWorkers, WorkerPool


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_user_credentials_are_made_once_owner_only_and_then_reused(config: ZMQConfig) -> None:
    first = UserCredentials.load(config)
    path = runtime_directory(config) / "credentials.json"
    assert _mode(path) == 0o600
    assert _mode(runtime_directory(config)) == 0o700
    assert len(first.plain.password) == 64  # 256 random bits, in hex
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
        first.checks.configure_plain("a", {"u": "p"})
        second = acquire_authenticator(context)
        assert second is first
        second.checks.configure_plain("b", {"u": "q"})
        release_authenticator(context, "a")
        passwords = first.checks.passwords
        assert first.is_alive() and "a" not in passwords and "b" in passwords
        assert release_authenticator(context, "b")
        assert not first.is_alive() and first.pipe.closed
    finally:
        context.term()


def test_servers_starting_and_stopping_at_once_on_one_context_all_get_the_zap_handler() -> None:
    """The last server's release stops the handler while another server starts: the starting
    one waits for the ZAP address instead of failing to bind it (162 failures in 1,200
    cycles before)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    failures: list[BaseException] = []

    def cycle(domain: str) -> None:
        for _ in range(150):
            try:
                acquire_authenticator(context)
            except zmq.ZMQError as exc:
                failures.append(exc)
                continue
            release_authenticator(context, domain)

    threads = [threading.Thread(target=cycle, args=(f"d{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60.0)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
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
    # Refused at the handshake; whether the client has heard why when its wait ends is a
    # race (under load it may only know that nothing gets through).
    why = _refusal(connect_client(server, config=stranger))
    assert "refused" in why or "handshake failed" in why, why
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


# --- every socket bound on TCP authenticates; release_authenticator; pickle exposure --------


def _echo_task(task: object, context: object) -> object:
    return task


@pytest.fixture
def bound_tcp_sockets(config: ZMQConfig) -> Iterator[dict[str, tuple[str, int]]]:
    """Every socket the library binds on TCP, as ``name: (url, socket type of a peer)``: an
    ack channel's, a viewer's, an execution server's, and its remote pool's inlet."""
    with contextlib.ExitStack() as stack:
        at = Endpoint.tcp(0, config=config)
        channel = stack.enter_context(AckChannel.bind(at))
        viewer = stack.enter_context(StreamingServer.bind(at, lambda image, metadata: None))
        engine = stack.enter_context(concurrent.futures.ThreadPoolExecutor(1))
        server = stack.enter_context(
            ExecutionServer.bind(at, _echo_task, pool=WorkerPool.remote(engine))
        )
        inlet = server.pool.backend
        assert isinstance(inlet, RemoteWorkers) and inlet.address is not None
        yield {
            "ack-control": (channel.server.sockets.control_url, zmq.DEALER),
            "ack-data": (channel.server.sockets.data_url, zmq.PUSH),
            "viewer-control": (viewer.server.sockets.control_url, zmq.DEALER),
            "viewer-data": (viewer.server.sockets.data_url, zmq.PUSH),
            "execution-control": (server.server.sockets.control_url, zmq.DEALER),
            "execution-data": (server.server.sockets.data_url, zmq.XSUB),
            "inlet": (inlet.address, zmq.DEALER),
        }


def test_every_socket_bound_on_tcp_refuses_a_raw_peer_without_credentials(
    bound_tcp_sockets: dict[str, tuple[str, int]],
) -> None:
    message = {
        zmq.DEALER: codec.encode(Ping(request_id=1)),
        zmq.PUSH: codec.encode(Ack(image_id="i", tracker_key="k")),
        zmq.XSUB: [b"\x01"],
    }
    refused = []
    for name, (url, kind) in bound_tcp_sockets.items():
        with zmq.Context() as context, context.socket(kind) as peer:
            peer.linger = 0
            monitor = peer.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_FAILED_AUTH
                | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_DISCONNECTED
            )
            peer.connect(url)
            peer.send_multipart(message[kind])
            if monitor.poll(10_000):
                refused.append(name)
            if kind == zmq.DEALER:
                assert not peer.poll(0), f"{name} answered a peer without credentials"
            peer.disable_monitor()
            monitor.close(linger=0)
    assert refused == list(bound_tcp_sockets)


def test_release_authenticator_gives_up_on_a_stuck_thread_within_its_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A credentials check that never returns: pyzmq's ThreadAuthenticator.stop() would wait
    for it forever."""
    entered, go_on = threading.Event(), threading.Event()

    class StuckCheck:
        def callback(self, domain: str, key: bytes) -> bool:
            entered.set()
            return go_on.wait(30.0)

    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    server_keys, client_keys = generate_curve_keypair(), generate_curve_keypair()
    authenticator = acquire_authenticator(context)
    authenticator.checks.configure_curve_callback("stuck", StuckCheck())
    thread = authenticator.thread
    try:
        with context.socket(zmq.ROUTER) as server, context.socket(zmq.DEALER) as client:
            server.linger = client.linger = 0
            server.zap_domain = b"stuck"
            ServerCurve(server_keys).apply(server)
            port = server.bind_to_random_port("tcp://127.0.0.1")
            ClientCurve(client_keys, server_keys.public_key).apply(client)
            client.connect(f"tcp://127.0.0.1:{port}")
            assert entered.wait(10.0), "the handshake never reached the ZAP handler"
            result: list[bool] = []
            releasing = threading.Thread(
                target=lambda: result.append(release_authenticator(context, "stuck", 0.2))
            )
            releasing.start()
            releasing.join(10.0)
            assert not releasing.is_alive(), "release_authenticator waited without a limit"
            assert result == [False]
            assert "did not stop within 0.2s" in caplog.text
    finally:
        go_on.set()
        assert authenticator.stop(10.0)  # it reads the TERMINATE sent to it, and ends
        assert not thread.is_alive()
        context.term()


@pytest.mark.parametrize(
    "endpoint",
    [
        Endpoint.tcp(7777, host="10.1.2.3"),  # secure by default: CURVE beyond loopback
        Endpoint.tcp(7777, host="0.0.0.0"),
        Endpoint.tcp(7777, host="127.0.0.1", insecure=True),  # loopback: only this machine
        Endpoint.tcp(7777, host="10.1.2.3", curve=ServerCurve(generate_curve_keypair())),
    ],
    ids=["exposed", "wildcard", "insecure-loopback", "curve"],
)
def test_pickle_is_accepted_where_every_peer_is_authenticated(endpoint: Endpoint) -> None:
    endpoint.check_serializer(PickleSerializer(), allow_insecure=False, side="test")


def test_pickle_on_an_exposed_insecure_address_is_refused_unless_allowed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exposed = Endpoint.tcp(7777, host="10.1.2.3", insecure=True)
    with pytest.raises(ConfigurationError, match="drop insecure=True"):
        exposed.check_serializer(PickleSerializer(), allow_insecure=False, side="test")
    exposed.check_serializer(PickleSerializer(), allow_insecure=True, side="test")
    assert "anyone who can reach it can run code" in caplog.text
    exposed.check_serializer(SafeSerializer(), allow_insecure=False, side="test")
