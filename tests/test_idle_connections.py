"""Silent connections: a peer that connects and never speaks is dropped after the handshake
timeout, and a server raises its open-file limit so that many of them cannot starve it."""

from __future__ import annotations

import resource
import socket
import time

import pytest

from tests.conftest import ServerFactory
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.socket_options import OPEN_FILE_LIMIT, raise_open_file_limit


def _until_closed(peer: socket.socket, limit: float) -> float:
    """Read until the server closes the connection; how long that took."""
    began = time.monotonic()
    peer.settimeout(limit)
    while peer.recv(4096):  # the server's ZMTP greeting, then nothing until it hangs up
        pass
    return time.monotonic() - began


@pytest.mark.parametrize("socket_kind", ["control", "data"])
def test_a_peer_that_never_speaks_is_dropped_after_the_handshake_timeout(
    start_server: ServerFactory, config: ZMQConfig, socket_kind: str
) -> None:
    server = start_server(TransportMode.TCP)
    port = server.bound_port if socket_kind == "data" else config.control_port(server.bound_port)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
        # config.heartbeat_timeout is 1 s in tests (libzmq's own default would be 30 s)
        assert _until_closed(silent, limit=10.0) < 5.0


def test_a_server_raises_its_open_file_limit(start_server: ServerFactory) -> None:
    start_server(TransportMode.TCP)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = OPEN_FILE_LIMIT if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILE_LIMIT)
    assert soft >= ceiling
    assert raise_open_file_limit() >= ceiling
