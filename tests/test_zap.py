"""The ZAP handler (zmqruntime.core.zap): pyzmq's checks on a plain thread, which a failing
check neither kills nor lets a peer through."""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Generator

import pytest
import zmq

from zmqruntime.core.security import ClientCurve, ServerCurve, generate_curve_keypair
from zmqruntime.core.zap import ZapHandler

WAIT_MS = 10_000


class _Later:
    """An awaitable that suspends once: a check that waits for an event loop."""

    def __await__(self) -> Generator[None, None, bool]:
        yield
        return True


class _Checks:
    """Admits every key but the first one, whose check fails as ``first`` says."""

    def __init__(self, first: str) -> None:
        self.first, self.calls = first, 0
        self.failed = threading.Event()

    def callback(self, domain: str, key: bytes) -> bool | Awaitable[bool]:
        self.calls += 1
        if self.calls > 1:
            return True
        self.failed.set()
        if self.first == "raises":
            raise RuntimeError("the key store is gone")
        return _Later()


@pytest.mark.parametrize("first", ["raises", "awaits"])
def test_a_failing_check_refuses_its_peer_and_the_next_peer_is_checked(
    first: str, caplog: pytest.LogCaptureFixture
) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    handler = ZapHandler.start(context)
    checks = _Checks(first)
    server_keys = generate_curve_keypair()
    try:
        handler.checks.configure_curve_callback("d", checks)
        with context.socket(zmq.ROUTER) as server:
            server.linger = 0
            server.zap_domain = b"d"
            ServerCurve(server_keys).apply(server)
            port = server.bind_to_random_port("tcp://127.0.0.1")
            clients = []
            for name in ("refused", "admitted"):
                client = context.socket(zmq.DEALER)
                clients.append(client)
                client.linger = 0
                ClientCurve(generate_curve_keypair(), server_keys.public_key).apply(client)
                client.connect(f"tcp://127.0.0.1:{port}")
                client.send(name.encode())
                if name == "refused":
                    assert checks.failed.wait(WAIT_MS / 1000)
            assert server.poll(WAIT_MS), "the handler stopped answering after a failed check"
            assert server.recv_multipart()[1] == b"admitted"
            assert not server.poll(200), "the peer whose check failed got in"
            for client in clients:
                client.close()
        assert handler.is_alive()
        assert any(
            r.levelno == logging.ERROR and "check failed" in r.getMessage() for r in caplog.records
        )
    finally:
        assert handler.stop(10.0)
        context.term()


def test_a_malformed_request_is_answered_and_the_handler_goes_on() -> None:
    """Only code in this process can reach the ZAP address; still, a request pyzmq cannot
    answer must not leave the REP socket waiting for a reply forever."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    handler = ZapHandler.start(context)
    handler.checks.configure_plain("d", {"user": "secret"})
    try:
        with context.socket(zmq.REQ) as asker:
            asker.linger = 0
            asker.connect("inproc://zeromq.zap.01")
            asker.send(b"1.0")  # one frame: not even a request id
            assert asker.poll(WAIT_MS), "no answer"
            assert asker.recv_multipart()[2] == b"400"
            request = [b"1.0", b"7", b"d", b"127.0.0.1", b"", b"PLAIN", b"user", b"secret"]
            asker.send_multipart(request)
            assert asker.poll(WAIT_MS), "the handler stopped answering"
            assert asker.recv_multipart()[1:3] == [b"7", b"200"]
    finally:
        assert handler.stop(10.0)
        context.term()


def test_a_context_takes_one_handler_at_a_time_and_a_stopped_one_leaves_nothing_open() -> None:
    """A second handler is refused without leaking its socket; a stopped one frees the ZAP
    address at once (pyzmq's ThreadAuthenticator, started again right after stop(), found it
    in use 171 times in 200)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    first = ZapHandler.start(context)
    try:
        with pytest.raises(zmq.ZMQError):
            ZapHandler.start(context)
        assert first.is_alive()
    finally:
        assert first.stop(10.0)
        assert first.stop(10.0), "a second stop is harmless"
    for _ in range(50):
        assert ZapHandler.start(context).stop(10.0)
    terminating = threading.Thread(target=context.term)
    terminating.start()
    terminating.join(10.0)
    assert not terminating.is_alive(), "a socket was left open: the context cannot end"
