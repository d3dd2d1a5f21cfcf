"""An application's own requests and events, on execution servers and viewers, over real sockets.

Handlers are plain callables ``(payload, peer) -> reply``; they run off the I/O thread, so a
blocked handler must not delay pings, submissions or other clients. Nothing sleeps: a "slow"
handler blocks on an event the test sets once it has seen everything else answered.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy
import pytest
from hypothesis import HealthCheck, given, settings

from tests.strategies import json_values
from zmqruntime import (
    ConfigurationError,
    Endpoint,
    RemoteError,
    TransportMode,
    ZMQClient,
    ZMQConfig,
)
from zmqruntime.core.serializers import SafeSerializer
from zmqruntime.core.server import Peer
from zmqruntime.execution import ExecutionClient, ExecutionServer
from zmqruntime.streaming import ImageSender, StreamingServer

WAIT = 20.0


def _double(payload: Any, _peer: Peer) -> Any:
    return {"doubled": payload["x"] * 2}


def _arrays(payload: Any, _peer: Peer) -> Any:
    return {"sum": payload["image"].sum(), "flipped": payload["image"][::-1].copy()}


def _fails(_payload: Any, _peer: Peer) -> Any:
    raise KeyError("no plate called 'P9'")


def _who(_payload: Any, peer: Peer) -> Any:
    return peer.identity


def _echo(payload: Any, _peer: Peer) -> Any:
    return payload


@pytest.fixture
def endpoint(config: ZMQConfig, transport_mode: TransportMode) -> Endpoint:
    return Endpoint.of(0, transport_mode=transport_mode, config=config)


@pytest.fixture
def server(endpoint: Endpoint, no_thread_leak: None) -> Iterator[ExecutionServer]:
    requests = {"double": _double, "arrays": _arrays, "fails": _fails, "who": _who, "echo": _echo}
    with ExecutionServer.bind(endpoint, lambda task, ctx: task, requests=requests) as server:
        yield server


def _client_of(server: ExecutionServer) -> ExecutionClient:
    return ExecutionClient.to(server.server.sockets.endpoint)


def test_a_request_gets_its_reply(server: ExecutionServer) -> None:
    with _client_of(server) as client:
        assert client.request("double", {"x": 21}, timeout=WAIT) == {"doubled": 42}
        future = client.request_async("double", {"x": 1}, timeout=WAIT)
        assert future.result(WAIT) == {"doubled": 2}


def test_arrays_travel_both_ways(server: ExecutionServer) -> None:
    image = numpy.arange(512 * 512, dtype=numpy.uint16).reshape(512, 512)
    with _client_of(server) as client:
        reply = client.request("arrays", {"image": image}, timeout=WAIT)
    assert reply["sum"] == image.sum()
    numpy.testing.assert_array_equal(reply["flipped"], image[::-1])
    assert reply["flipped"].dtype == numpy.uint16


def test_a_handlers_exception_arrives_with_type_and_traceback(server: ExecutionServer) -> None:
    with _client_of(server) as client:
        with pytest.raises(RemoteError) as caught:
            client.request("fails", None, timeout=WAIT)
        assert caught.value.error_type == "KeyError"
        assert "no plate called 'P9'" in str(caught.value)
        assert caught.value.remote_traceback is not None
        assert "_fails" in caught.value.remote_traceback
        # The server lives on and answers the next request.
        assert client.request("double", {"x": 2}, timeout=WAIT) == {"doubled": 4}


def test_an_unknown_name_is_refused_naming_the_known_ones(server: ExecutionServer) -> None:
    with _client_of(server) as client:
        with pytest.raises(RemoteError, match="catalog") as caught:
            client.request("catalog", timeout=WAIT)
        for name in ("arrays", "double", "echo", "fails", "who"):
            assert name in str(caught.value)
        capabilities = client.ping(timeout=WAIT).capabilities
    assert {"double", "arrays", "fails", "who", "execute"} <= set(capabilities)


def test_the_handler_sees_which_peer_asked(server: ExecutionServer) -> None:
    with _client_of(server) as first, _client_of(server) as second:
        one = first.request("who", timeout=WAIT)
        two = second.request("who", timeout=WAIT)
        assert one == first.request("who", timeout=WAIT)
    assert isinstance(one, bytes) and one != two


def test_a_blocked_handler_delays_nothing_else(endpoint: Endpoint, no_thread_leak: None) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(_payload: Any, _peer: Peer) -> str:
        entered.set()
        release.wait(WAIT)
        return "done"

    with (
        ExecutionServer.bind(
            endpoint, lambda task, ctx: task + 1, requests={"slow": slow}
        ) as server,
        _client_of(server) as waiting,
        _client_of(server) as other,
    ):
        slow_reply = waiting.request_async("slow", timeout=WAIT)
        assert entered.wait(WAIT)
        pings = [other.client.request_async(_ping(), timeout=WAIT) for _ in range(100)]
        tasks = [other.submit(n) for n in range(100)]
        assert [t.result(WAIT) for t in tasks] == [n + 1 for n in range(100)]
        assert all(p.result(WAIT).role == "execution" for p in pings)
        assert not slow_reply.done()  # everything above was answered while it blocked
        release.set()
        assert slow_reply.result(WAIT) == "done"


def _ping() -> Any:
    from zmqruntime.core.messages import Ping  # noqa: PLC0415 - keeps the test's imports short

    return Ping(request_id=0)


def test_four_clients_with_a_hundred_requests_each(server: ExecutionServer) -> None:
    clients = [_client_of(server).connect() for _ in range(4)]
    try:
        futures = {
            (index, n): client.request_async("double", {"x": n}, timeout=WAIT)
            for index, client in enumerate(clients)
            for n in range(100)
        }
        for (_index, n), future in futures.items():
            assert future.result(WAIT) == {"doubled": 2 * n}
    finally:
        for client in clients:
            client.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=json_values())
def test_any_json_payload_round_trips(server: ExecutionServer, payload: Any) -> None:
    with _client_of(server) as client:
        assert client.request("echo", payload, timeout=WAIT) == payload


# --- events -----------------------------------------------------------------------------------


class CountingSerializer:
    """The safe serializer, counting what it encodes."""

    name = "safe"

    def __init__(self) -> None:
        self.inner = SafeSerializer()
        self.encoded = 0

    def dumps(self, obj: Any) -> list[Any]:
        self.encoded += 1
        return self.inner.dumps(obj)

    def loads(self, frames: Any) -> Any:
        return self.inner.loads(frames)


def test_events_reach_subscribers_until_they_unsubscribe(
    endpoint: Endpoint, no_thread_leak: None
) -> None:
    counting = CountingSerializer()
    with ExecutionServer.bind(endpoint, lambda task, ctx: task, serializer=counting) as server:
        assert server.publish("plate", {"well": "A1"}) is False  # nobody listens yet
        assert counting.encoded == 0  # and nothing was encoded for nobody
        with _client_of(server) as client:
            heard: list[Any] = []
            arrived = threading.Condition()

            def on_plate(payload: Any) -> None:
                with arrived:
                    heard.append(payload)
                    arrived.notify_all()

            subscription = client.subscribe("plate", on_plate)
            other = client.subscribe("plates", lambda payload: heard.append(("wrong", payload)))
            # The subscription reaches the server asynchronously: publish until it is heard.
            deadline = time.monotonic() + WAIT
            with arrived:
                while not heard and time.monotonic() < deadline:
                    server.publish("plate", {"well": "A1"})
                    arrived.wait(0.05)
            assert heard[0] == {"well": "A1"}
            assert all(item == {"well": "A1"} for item in heard)  # "plates" heard nothing
            subscription.close()
            other.close()

            def nobody_listens() -> bool:
                return not server.server.has_subscribers(b"event:plate")

            _wait_for(nobody_listens)
            before = counting.encoded
            assert server.publish("plate", {"well": "B2"}) is False
            assert counting.encoded == before


def _wait_for(predicate: Any) -> None:
    done = threading.Event()
    for _ in range(int(WAIT / 0.02)):
        if predicate():
            return
        done.wait(0.02)
    pytest.fail("condition not met in time")


# --- on a viewer ------------------------------------------------------------------------------


def test_a_viewer_answers_requests_of_its_own(endpoint: Endpoint, no_thread_leak: None) -> None:
    layers: list[str] = ["nuclei", "cells"]

    def list_layers(_payload: Any, _peer: Peer) -> list[str]:
        return layers

    def clear(names: Any, _peer: Peer) -> int:
        before = len(layers)
        layers[:] = [name for name in layers if name not in names]
        return before - len(layers)

    viewer = StreamingServer.bind(
        endpoint, lambda image, metadata: None, requests={"layers": list_layers, "clear": clear}
    )
    with viewer, ZMQClient(viewer.server.sockets.endpoint, connect_data=False) as client:
        assert client.call("layers", timeout=WAIT) == ["nuclei", "cells"]
        assert client.call("clear", ["cells"], timeout=WAIT) == 1
        assert client.call("layers", timeout=WAIT) == ["nuclei"]
        assert set(client.ping(timeout=WAIT).capabilities) >= {"layers", "clear", "images"}
        with ImageSender.to(viewer.server.sockets.endpoint) as sender:  # the sender asks too
            sender.send(numpy.zeros((4, 4), numpy.uint8))
            sender.wait_all_acked(timeout=WAIT)
            assert sender.request("layers", timeout=WAIT) == ["nuclei"]


def test_a_busy_table_refuses_beyond_its_bound(endpoint: Endpoint, no_thread_leak: None) -> None:
    from zmqruntime.core.requests import RequestTable  # noqa: PLC0415

    release = threading.Event()

    def stuck(_payload: Any, _peer: Peer) -> None:
        release.wait(WAIT)

    table = RequestTable({"stuck": stuck}, workers=1, max_pending=2)
    server = ExecutionServer.bind(endpoint, lambda task, ctx: task, requests=table)
    with server, _client_of(server) as client:
        futures = [client.request_async("stuck", timeout=WAIT) for _ in range(3)]
        done, _ = concurrent.futures.wait(futures, WAIT, concurrent.futures.FIRST_EXCEPTION)
        errors = [f.exception() for f in done if f.exception() is not None]
        assert errors and "waiting for a handler" in str(errors[0])
        release.set()
        assert sum(1 for f in futures if f.exception(WAIT) is None) == 2


@pytest.mark.parametrize("field", ["workers", "max_pending"])
def test_a_table_needs_at_least_one_worker_and_one_place(field: str) -> None:
    from zmqruntime.core.requests import RequestTable  # noqa: PLC0415

    with pytest.raises(ConfigurationError, match=field):
        RequestTable({}, **{field: 0})
