"""Endpoint: named constructors, URLs, parse <-> str round trips, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmqruntime import ConfigurationError, Endpoint, TransportMode, ZMQConfig
from zmqruntime.core.security import ClientCurve, ServerCurve, generate_curve_keypair

ports = st.integers(min_value=1, max_value=64535)
hosts = st.sampled_from(["127.0.0.1", "localhost", "10.1.2.3", "::1", "fe80::1", "example.org"])
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=12)


def test_tcp_endpoint_urls_and_control_port() -> None:
    endpoint = Endpoint.tcp(7777)
    assert endpoint.transport is TransportMode.TCP
    assert endpoint.data_url == "tcp://127.0.0.1:7777"
    assert endpoint.control_port == 8777
    assert endpoint.control_url == "tcp://127.0.0.1:8777"
    assert str(endpoint) == endpoint.data_url
    assert Endpoint.tcp(5000, host="::1").data_url == "tcp://[::1]:5000"


def test_ipc_endpoint_lives_in_the_configured_folder(tmp_path: Path) -> None:
    endpoint = Endpoint.ipc(7777, config=ZMQConfig(ipc_root=tmp_path))
    assert endpoint.data_url == f"ipc://{tmp_path}/.zmqruntime/ipc/zmq-7777.sock"
    assert endpoint.control_url.endswith("zmq-8777.sock")


def test_the_keyword_shorthand_uses_the_config_defaults(tmp_path: Path) -> None:
    config = ZMQConfig(ipc_root=tmp_path, default_port=6000, bind_host="127.0.0.2")
    endpoint = Endpoint.of(config=config, transport_mode=TransportMode.TCP)
    assert (endpoint.port, endpoint.host) == (6000, "127.0.0.2")
    assert Endpoint.of(0, config=config).port == 0


@given(port=ports, host=hosts)
def test_tcp_parse_and_str_round_trip(port: int, host: str) -> None:
    endpoint = Endpoint.tcp(port, host=host)
    assert Endpoint.parse(str(endpoint)) == endpoint
    assert str(Endpoint.parse(str(endpoint))) == str(endpoint)


@given(port=ports, app=names, folder=names, prefix=names)
def test_ipc_parse_and_str_round_trip(port: int, app: str, folder: str, prefix: str) -> None:
    config = ZMQConfig(
        ipc_root=Path("/tmp/zr"), app_name=app, ipc_socket_dir=folder, ipc_socket_prefix=prefix
    )
    endpoint = Endpoint.ipc(port, config=config)
    parsed = Endpoint.parse(str(endpoint))
    assert str(parsed) == str(endpoint)
    assert parsed.port == port
    assert parsed.config.ipc_directory() == config.ipc_directory()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:80", "not an endpoint URL"),
        ("tcp://127.0.0.1", "not an endpoint URL"),
        ("tcp://127.0.0.1:99999", "port must be"),
        ("tcp://:5000", "not an endpoint URL"),
        ("ipc://relative/zmq-1.sock", "not a zmqruntime socket path"),
        ("ipc:///tmp/.app/ipc/no-number.sock", "not a zmqruntime socket path"),
        ("tcp://127.0.0.1:65000", "control port"),
    ],
)
def test_bad_urls_raise_a_clear_configuration_error(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        Endpoint.parse(url)


@pytest.mark.parametrize("port", [-1, 70000, True, 1.5, "7777"])
def test_bad_ports_are_refused(port: object) -> None:
    with pytest.raises(ConfigurationError, match="port"):
        Endpoint.tcp(port)  # type: ignore[arg-type]


def test_bad_hosts_are_refused() -> None:
    for host in ("", "a b", "a/b", "[]"):
        with pytest.raises(ConfigurationError, match="host"):
            Endpoint.tcp(5000, host=host)


def test_curve_keys_belong_to_tcp_and_to_the_right_side() -> None:
    keys = generate_curve_keypair()
    server_keys = ServerCurve(keys)
    with pytest.raises(ConfigurationError, match="TCP"):
        Endpoint.ipc(7000).with_curve(server_keys)
    bound = Endpoint.tcp(7000, curve=server_keys)
    assert bound.server_curve is server_keys
    with pytest.raises(
        ConfigurationError, match="needs ClientCurve keys, but the endpoint holds ServerCurve"
    ):
        _ = bound.client_curve
    client = bound.with_curve(ClientCurve(keys, keys.public_key))
    with pytest.raises(
        ConfigurationError, match="needs ServerCurve keys, but the endpoint holds ClientCurve"
    ):
        _ = client.server_curve


def test_port_zero_has_no_control_port_until_bound() -> None:
    endpoint = Endpoint.tcp(0)
    with pytest.raises(ConfigurationError, match="port 0"):
        _ = endpoint.control_port
    assert endpoint.with_port(4000).control_port == 5000
