"""Secure defaults: loopback binds, pickle refused on exposed TCP, CURVE errors that explain."""

from __future__ import annotations

import json
import logging

import attrs
import pytest

from zmqruntime import (
    ClientCurve,
    ConfigurationError,
    PickleSerializer,
    ServerCurve,
    ServerLost,
    TransportMode,
    ZMQClient,
    ZMQServer,
    ZMQTimeoutError,
    generate_curve_keypair,
)
from zmqruntime.core.credentials import connection_file_path
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.security import check_pickle_exposure, is_loopback_host
from zmqruntime.execution import ExecutionClient, ExecutionServer


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("example.org", False),
    ],
)
def test_loopback_hosts_are_recognised(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def _echo(task, ctx):  # type: ignore[no-untyped-def]
    return task


def test_pickle_on_an_exposed_tcp_server_without_curve_is_refused(config) -> None:
    server = ExecutionServer.bind(
        Endpoint.of(
            port=0, host="0.0.0.0", transport_mode=TransportMode.TCP, config=config, insecure=True
        ),
        _echo,
        serializer=PickleSerializer(),
    )
    with pytest.raises(ConfigurationError, match="allow_insecure"):
        server.start()
    server.close()


def test_pickle_on_loopback_or_with_curve_or_explicitly_allowed_is_accepted(config) -> None:
    for host, curve, allow in (
        ("127.0.0.1", None, False),
        ("0.0.0.0", ServerCurve(generate_curve_keypair()), False),
        ("0.0.0.0", None, True),
    ):
        with ExecutionServer.bind(
            Endpoint.of(
                port=0, host=host, transport_mode=TransportMode.TCP, config=config, curve=curve
            ),
            _echo,
            serializer=PickleSerializer(),
            allow_insecure=allow,
        ) as server:
            assert server.port_number > 0


def test_a_pickle_client_for_a_remote_host_without_curve_is_refused_before_connecting() -> None:
    with pytest.raises(ConfigurationError, match="PickleSerializer"):
        ExecutionClient.to(
            Endpoint.of(
                port=7777, host="10.1.2.3", transport_mode=TransportMode.TCP, insecure=True
            ),
            serializer=PickleSerializer(),
        )
    keys = generate_curve_keypair()
    ExecutionClient.to(
        Endpoint.of(
            port=7777,
            host="10.1.2.3",
            transport_mode=TransportMode.TCP,
            curve=ClientCurve(keys, generate_curve_keypair().public_key),
        ),
        serializer=PickleSerializer(),
    )
    check_pickle_exposure(
        serializer=PickleSerializer(),
        host="10.1.2.3",
        mode=TransportMode.TCP,
        curve=None,
        allow_insecure=True,
        side="test",
    )


def test_binding_beyond_loopback_without_keys_uses_curve_and_insecure_warns(config, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="zmqruntime.core.authentication")
    exposed = Endpoint.of(port=0, host="0.0.0.0", transport_mode=TransportMode.TCP, config=config)
    with ZMQServer(exposed) as server:
        path = connection_file_path(config, server.bound_port)
        assert json.loads(path.read_text())["mechanism"] == "curve"
    assert not caplog.records
    with ZMQServer(attrs.evolve(exposed, insecure=True)):
        pass
    assert any("insecure=True" in record.getMessage() for record in caplog.records)


def test_a_client_with_an_unknown_key_is_told_authentication_may_be_why(config) -> None:
    server_keys = generate_curve_keypair()
    allowed = generate_curve_keypair()
    stranger = ClientCurve(generate_curve_keypair(), server_keys.public_key)
    with ZMQServer(
        Endpoint.of(
            port=0,
            transport_mode=TransportMode.TCP,
            config=config,
            curve=ServerCurve(server_keys, allowed_client_keys={allowed.public_key}),
        )
    ) as server:
        with ZMQClient(
            Endpoint.of(
                port=server.bound_port,
                transport_mode=TransportMode.TCP,
                config=config,
                curve=stranger,
            )
        ) as client:
            with pytest.raises((ZMQTimeoutError, ServerLost)) as refused:
                client.ping(timeout=1.0)
            text = str(refused.value)
            assert "CURVE" in text and ("key" in text or "authentication" in text)
        assert server.statistics().requests == 0  # the stranger learned nothing
