"""Ownership: an execution belongs to the identity that submitted it; shutdown needs an admin.

Three CURVE identities on one execution server with real TCP sockets: the owner (who submits),
a stranger (another allowed key), and the admin (``ServerCurve(admin_keys=...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.executors import wait_for_cancel
from zmqruntime import ClientCurve, ExecutionClient, RemoteError, ServerCurve, ZMQConfig
from zmqruntime.config import TransportMode
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import ExecutionStatus
from zmqruntime.core.security import curve_from_folder, generate_curve_keypair, write_curve_keypair
from zmqruntime.errors import ErrorCode
from zmqruntime.execution import ExecutionServer, ProgressRegistry

_TIMEOUT = 10.0


Clients = dict[str, ExecutionClient]


def _client(port: int, config: ZMQConfig, curve: ClientCurve) -> ExecutionClient:
    endpoint = Endpoint.of(port=port, transport_mode=TransportMode.TCP, config=config, curve=curve)
    return ExecutionClient.to(endpoint).connect()


@pytest.fixture
def served(config: ZMQConfig, no_thread_leak: None) -> Iterator[tuple[ExecutionServer, Clients]]:
    """A server admitting the owner's and the stranger's keys, with the admin's as admin key,
    and a connected client for each."""
    server_keys = generate_curve_keypair()
    pairs = {name: generate_curve_keypair() for name in ("owner", "stranger", "admin")}
    curve = ServerCurve(
        server_keys,
        allowed_client_keys={pairs["owner"].public_key, pairs["stranger"].public_key},
        admin_keys={pairs["admin"].public_key},
    )
    endpoint = Endpoint.of(port=0, transport_mode=TransportMode.TCP, config=config, curve=curve)
    server = ExecutionServer.bind(endpoint, wait_for_cancel, progress=ProgressRegistry()).start()
    clients = {
        name: _client(server.port_number, config, ClientCurve(pair, server_keys.public_key))
        for name, pair in pairs.items()
    }
    try:
        yield server, clients
    finally:
        for client in clients.values():
            client.close()
        server.close()


def _refused(call: Callable[..., object], *args: object) -> str:
    with pytest.raises(RemoteError) as refused:
        call(*args, timeout=_TIMEOUT)
    assert refused.value.code is ErrorCode.REFUSED
    return str(refused.value)


def test_another_identity_can_neither_read_cancel_join_nor_shut_down(
    served: tuple[ExecutionServer, Clients],
) -> None:
    _server, clients = served
    owned = clients["owner"].submit({"limit": 30}, execution_id="plate-1/A01", confirm=True)
    owned.accepted.result(_TIMEOUT)
    stranger = clients["stranger"]
    assert "belongs to another client" in _refused(stranger.record, "plate-1/A01")
    assert "belongs to another client" in _refused(stranger.cancel, "plate-1/A01")
    joined = stranger.submit({"limit": 30}, execution_id="plate-1/A01")
    with pytest.raises(RemoteError, match="belongs to another client"):
        joined.result(_TIMEOUT)
    assert "only an admin may shut" in _refused(stranger.shutdown, True)
    assert clients["owner"].record("plate-1/A01").status is not ExecutionStatus.CANCELLED
    summary = stranger.summary(timeout=_TIMEOUT)  # counts are not private
    assert summary.running + summary.queued == 1
    # The stranger's own executions are its own.
    mine = stranger.submit({"limit": 30}, execution_id="stranger-1", confirm=True)
    mine.accepted.result(_TIMEOUT)
    assert stranger.cancel("stranger-1", timeout=_TIMEOUT)
    assert clients["owner"].cancel("plate-1/A01", timeout=_TIMEOUT)


def test_an_admin_may_act_on_every_execution_and_shut_down(
    served: tuple[ExecutionServer, Clients],
) -> None:
    server, clients = served
    owned = clients["owner"].submit({"limit": 30}, execution_id="well-B02", confirm=True)
    owned.accepted.result(_TIMEOUT)
    admin = clients["admin"]
    assert admin.record("well-B02", timeout=_TIMEOUT).execution_id == "well-B02"
    assert admin.cancel("well-B02", timeout=_TIMEOUT)
    assert owned.exception(_TIMEOUT) is not None  # cancelled, as its owner is told
    assert "only an admin" in _refused(clients["owner"].shutdown, True)
    admin.shutdown(graceful=False, timeout=_TIMEOUT)
    assert server.server.wait_stopped(_TIMEOUT)


def test_the_key_folder_makes_its_own_client_the_admin(tmp_path: Path) -> None:
    for name in ("server", "client", "colleague"):
        write_curve_keypair(tmp_path, name)
    server = curve_from_folder(tmp_path, server=True)
    assert isinstance(server, ServerCurve)
    own = (tmp_path / "client.key").read_text()
    assert len(server.admin_keys) == 1
    assert next(iter(server.admin_keys)).decode() in own
    assert len(server.allowed_client_keys or ()) == 2  # client and colleague


def test_admin_keys_are_admitted_even_when_not_listed_as_clients(config: ZMQConfig) -> None:
    server_keys, admin = generate_curve_keypair(), generate_curve_keypair()
    curve = ServerCurve(server_keys, allowed_client_keys=set(), admin_keys={admin.public_key})
    endpoint = Endpoint.of(port=0, transport_mode=TransportMode.TCP, config=config, curve=curve)
    with (
        ExecutionServer.bind(endpoint, wait_for_cancel) as server,
        _client(server.port_number, config, ClientCurve(admin, server_keys.public_key)) as client,
    ):
        assert client.summary(timeout=_TIMEOUT).running == 0
        assert server.summary().running == 0


def test_a_listing_shows_a_client_its_own_executions_and_an_admin_all(
    served: tuple[ExecutionServer, Clients],
) -> None:
    _server, clients = served
    for number in (1, 2):
        for name in ("owner", "stranger"):  # each accepted before the next: a known order
            execution_id = f"{name}-{number}"
            submitted = clients[name].submit({"limit": 30}, execution_id=execution_id, confirm=True)
            submitted.accepted.result(_TIMEOUT)
    listed = {
        name: [r.execution_id for r in client.list(timeout=_TIMEOUT).records]
        for name, client in clients.items()
    }
    assert listed == {
        "owner": ["owner-1", "owner-2"],
        "stranger": ["stranger-1", "stranger-2"],
        "admin": ["owner-1", "stranger-1", "owner-2", "stranger-2"],
    }
    for name in ("owner", "stranger"):
        for number in (1, 2):
            assert clients[name].cancel(f"{name}-{number}", timeout=_TIMEOUT)


def test_a_progress_snapshot_is_the_owners_and_the_admins_alone(
    served: tuple[ExecutionServer, Clients],
) -> None:
    _server, clients = served
    owned = clients["owner"].submit({"limit": 30}, execution_id="plate-9", confirm=True)
    owned.accepted.result(_TIMEOUT)
    with pytest.raises(RemoteError, match="belongs to another client"):
        clients["stranger"].progress_snapshot("plate-9", timeout=_TIMEOUT)
    for name in ("owner", "admin"):
        assert isinstance(clients[name].progress_snapshot("plate-9", timeout=_TIMEOUT), list)
    assert clients["owner"].cancel("plate-9", timeout=_TIMEOUT)
