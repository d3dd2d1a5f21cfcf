"""Pieces passed in: servers and clients built from a ZMQServer / ZMQClient they are given."""

from __future__ import annotations

from typing import Any

import numpy
import pytest
import zmq

from zmqruntime import (
    AckChannel,
    ConfigurationError,
    Endpoint,
    TransportMode,
    ZMQClient,
    ZMQConfig,
    ZMQServer,
)
from zmqruntime.core.messages import ControlMessageType, Ping
from zmqruntime.execution import ExecutionClient, ExecutionServer
from zmqruntime.streaming import ImageSender, StreamingServer

WAIT = 20.0


@pytest.fixture
def endpoint(config: ZMQConfig, transport_mode: TransportMode) -> Endpoint:
    return Endpoint.of(0, transport_mode=transport_mode, config=config)


def test_an_execution_server_runs_on_the_server_it_is_given(
    endpoint: Endpoint, no_thread_leak: None
) -> None:
    piece = ZMQServer(endpoint, role="pipeline-runner", capabilities=("plates",))
    with ExecutionServer(lambda task, ctx: task * 3, piece) as server:
        assert server.server is piece and server.port_number == piece.bound_port
        client_piece = ZMQClient(piece.sockets.endpoint, name="gui")
        with ExecutionClient(client_piece) as client:
            assert client.client is client_piece
            assert client.submit(14).result(timeout=WAIT) == 42
            pong = client.ping(timeout=WAIT)
    assert pong.role == "pipeline-runner" and "plates" in pong.capabilities


def test_handlers_are_routed_before_binding_only(endpoint: Endpoint) -> None:
    server = ZMQServer(endpoint)
    server.route({ControlMessageType.STATUS: lambda message, peer: None})
    with pytest.raises(RuntimeError, match="already has handlers for status"):
        server.route({ControlMessageType.STATUS: lambda message, peer: None})
    with server, pytest.raises(RuntimeError, match="route handlers before start"):
        server.route({ControlMessageType.CANCEL: lambda message, peer: None})


def test_callbacks_are_set_before_connecting_only(endpoint: Endpoint) -> None:
    with ZMQServer(endpoint) as server:
        client = ZMQClient(server.sockets.endpoint)
        client.listen(on_disconnect=lambda: None)
        with pytest.raises(RuntimeError, match="already has an on_disconnect"):
            client.listen(on_disconnect=lambda: None)
        with client:
            assert client.request(Ping(request_id=0), timeout=WAIT) is not None
            with pytest.raises(RuntimeError, match="already connected"):
                client.listen(on_message=lambda message: None)


def test_one_context_can_serve_several_pieces(endpoint: Endpoint, no_thread_leak: None) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        shown: list[Any] = []
        viewer = StreamingServer.bind(
            endpoint, lambda image, meta: shown.append(image), context=context
        )
        with viewer:
            sender_to = viewer.server.sockets.endpoint
            with ImageSender.to(sender_to, context=context) as sender:
                sender.send(numpy.ones((8, 8), numpy.uint8))
                sender.wait_all_acked(timeout=WAIT)
        assert len(shown) == 1
    finally:
        context.term()


def test_a_sender_reports_its_acks_to_the_channel_it_is_given(
    endpoint: Endpoint, no_thread_leak: None
) -> None:
    viewer = StreamingServer.bind(endpoint, lambda image, meta: None)
    channel = AckChannel.bind(endpoint.with_port(0))
    with viewer:
        sender = ImageSender(
            ZMQClient(viewer.server.sockets.endpoint, data_socket_type=zmq.PUSH), channel
        )
        with sender:
            sender.send(numpy.zeros((4, 4), numpy.uint16))
            sender.wait_all_acked(timeout=WAIT)
            assert channel.statistics().applied == 1
            assert sender.ack_address == channel.address


def test_a_sender_without_a_channel_or_ack_to_says_what_to_do(endpoint: Endpoint) -> None:
    sender = ImageSender(ZMQClient(endpoint.with_port(5555), data_socket_type=zmq.PUSH))
    with pytest.raises(ConfigurationError, match=r"ImageSender\.to"):
        sender.connect()
    sender.close()
