"""Per-socket limits at their edges, with real sockets: each bound socket accepts frames up to
what it legitimately carries (a frame one byte larger drops the peer's connection), and a
receiving data socket queues per connection no more than its frame limit allows."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy
import pytest
import zmq
from zmq.utils.monitor import parse_monitor_message

from tests.conftest import ServerFactory, authenticate
from zmqruntime import AckChannel, StreamingServer
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core import codec
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import Ack, Ping
from zmqruntime.core.push import open_connected_socket
from zmqruntime.core.socket_options import (
    RECEIVE_QUEUE_BYTES,
    frame_limit,
    receive_high_water_mark,
)
from zmqruntime.core.sockets import SocketPair
from zmqruntime.errors import ConfigurationError
from zmqruntime.execution.backends import remote

WAIT = 10.0
"""Deadline for what normally takes milliseconds."""
TCP = TransportMode.TCP
LIMIT = 16 * 1024
"""The small frame limits these tests configure, so that frames at the edge are cheap."""

RawSocket = zmq.Socket[bytes]
pytestmark = pytest.mark.timeout(120)


@contextlib.contextmanager
def raw_peer(url: str, kind: int, config: ZMQConfig) -> Iterator[tuple[RawSocket, RawSocket]]:
    """A hand-made socket of ``kind`` connected to ``url`` with this user's credentials, and
    a monitor of its disconnections."""
    context: zmq.Context[RawSocket] = zmq.Context()
    try:
        peer = context.socket(kind)
        peer.linger = 0
        monitor = peer.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        authenticate(peer, url, config)
        peer.connect(url)
        yield peer, monitor
    finally:
        context.destroy(linger=0)


def dropped(monitor: RawSocket, timeout: float = WAIT) -> bool:
    """Whether the peer's connection is dropped within ``timeout`` seconds."""
    while monitor.poll(round(timeout * 1000)):
        if parse_monitor_message(monitor.recv_multipart())["event"] == zmq.EVENT_DISCONNECTED:
            return True
    return False


def ping_with(extra: int) -> list[bytes]:
    """A ping followed by a frame of ``extra`` bytes (the server answers it with an error)."""
    return [*codec.encode(Ping(request_id=1)), bytes(extra)]


def answered(url: str, frames: list[bytes], config: ZMQConfig) -> bool:
    """Send ``frames`` to a control socket: True if answered, False if the connection was
    dropped for them."""
    with raw_peer(url, zmq.DEALER, config) as (peer, monitor):
        peer.send_multipart(frames)
        poller = zmq.Poller()
        poller.register(peer, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        if peer in dict(poller.poll(round(WAIT * 1000))):
            peer.recv_multipart()
            return True
        assert dropped(monitor, 0), "neither answered nor dropped"
        return False


def ack_of(header_bytes: int) -> list[bytes]:
    """An ack whose header frame is exactly ``header_bytes`` long."""
    base = len(codec.encode(Ack(image_id="i", tracker_key="k"))[0])
    frames = codec.encode(Ack(image_id="i", tracker_key="k", error="e" * (header_bytes - base)))
    assert len(frames[0]) == header_bytes
    return frames


@pytest.fixture(params=[TCP, TransportMode.IPC], ids=["tcp", "ipc"])
def mode(request: pytest.FixtureRequest) -> TransportMode:
    return request.param  # type: ignore[no-any-return]


# --- which socket gets which limit -----------------------------------------------------------


def test_each_kind_of_socket_gets_the_limit_of_what_it_carries() -> None:
    config = ZMQConfig(max_message_bytes=1000, max_request_bytes=100, max_header_bytes=10)
    assert frame_limit(config, zmq.ROUTER, control=True) == 100
    assert frame_limit(config, zmq.PULL, control=False) == 1000
    assert frame_limit(config, zmq.XPUB, control=False) == 10
    assert frame_limit(config, zmq.PUB, control=False) == 10
    # max_message_bytes caps them all
    capped = attrs.evolve(config, max_message_bytes=50, max_header_bytes=60)
    assert frame_limit(capped, zmq.ROUTER, control=True) == 50
    assert frame_limit(capped, zmq.XPUB, control=False) == 50
    defaults = ZMQConfig()
    assert (defaults.max_message_bytes, defaults.max_request_bytes) == (1 << 30, 256 << 20)
    assert defaults.headers_only().max_message_bytes == defaults.max_header_bytes == 1 << 20


@pytest.mark.parametrize("value", [0, -1, 1.5, True, None])
def test_max_request_bytes_is_a_positive_whole_number(value: object) -> None:
    with pytest.raises(ConfigurationError, match="max_request_bytes"):
        ZMQConfig(max_request_bytes=value)  # type: ignore[arg-type]
    assert ZMQConfig(max_request_bytes=1).max_request_bytes == 1


@pytest.mark.parametrize(
    ("frame_bytes", "expected"),
    [
        (RECEIVE_QUEUE_BYTES // 6, 6),  # at the edge: six of them fill the budget
        (RECEIVE_QUEUE_BYTES // 6 + 1, 5),
        (RECEIVE_QUEUE_BYTES // 5 + 1, 4),
        (RECEIVE_QUEUE_BYTES // 4 + 1, 4),  # at least 4: with 2, pipelined images stall
        (RECEIVE_QUEUE_BYTES, 4),
        (1 << 30, 4),
        (RECEIVE_QUEUE_BYTES // 100_000, 100_000),  # capped by send_high_water_mark
        (RECEIVE_QUEUE_BYTES // 100_001, 100_000),
    ],
)
def test_the_receive_high_water_mark_is_a_byte_budget(frame_bytes: int, expected: int) -> None:
    assert receive_high_water_mark(ZMQConfig(), frame_bytes) == expected


def test_bound_sockets_are_set_to_their_limits(config: ZMQConfig, mode: TransportMode) -> None:
    cfg = attrs.evolve(config, max_message_bytes=RECEIVE_QUEUE_BYTES // 4, max_request_bytes=LIMIT)
    pair = SocketPair.bind(Endpoint.of(0, transport_mode=mode, config=cfg), data_type=zmq.PULL)
    try:
        assert pair.data.getsockopt(zmq.MAXMSGSIZE) == RECEIVE_QUEUE_BYTES // 4
        # IPC keeps the count: there libzmq drops what a closing sender left past RCVHWM
        assert pair.data.getsockopt(zmq.RCVHWM) == (4 if mode is TCP else 100_000)
        assert pair.control.getsockopt(zmq.MAXMSGSIZE) == LIMIT
        assert pair.control.getsockopt(zmq.RCVHWM) == cfg.send_high_water_mark  # read at once
    finally:
        pair.close()
    with AckChannel.bind(Endpoint.of(0, transport_mode=mode, config=config)) as channel:
        sockets = channel.server.sockets
        for socket in (sockets.data, sockets.control):
            assert socket.getsockopt(zmq.MAXMSGSIZE) == config.max_header_bytes
        hwm = RECEIVE_QUEUE_BYTES // (1 << 20) if mode is TCP else 100_000
        assert sockets.data.getsockopt(zmq.RCVHWM) == hwm


def test_a_viewer_queues_four_images_per_sender_beyond_its_backlog(
    config: ZMQConfig, mode: TransportMode
) -> None:
    """A viewer whose backlog is full stops reading: libzmq then holds RCVHWM images per
    TCP connection, 4 with the default 1 GiB frame limit (100,000 before; still on IPC)."""
    endpoint = Endpoint.of(0, transport_mode=mode, config=config)
    with StreamingServer.bind(endpoint, lambda image, metadata: None) as viewer:
        sockets = viewer.server.sockets
        assert sockets.data.getsockopt(zmq.RCVHWM) == (4 if mode is TCP else 100_000)
        assert sockets.data.getsockopt(zmq.MAXMSGSIZE) == 1 << 30
        assert sockets.control.getsockopt(zmq.MAXMSGSIZE) == config.max_header_bytes


def test_a_worker_link_takes_notices_up_to_max_header_bytes(
    config: ZMQConfig, tmp_path: Path
) -> None:
    cfg = attrs.evolve(config, max_header_bytes=LIMIT)
    url = f"ipc://{tmp_path / 'inlet.sock'}"
    with zmq.Context() as context, context.socket(zmq.ROUTER) as inlet:
        inlet.linger = 0
        inlet.bind(url)
        link = remote._thread_link(url, cfg, None).socket
        assert link.getsockopt(zmq.MAXMSGSIZE) == LIMIT
        monitor = link.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            link.send(b"hello")
            assert inlet.poll(round(WAIT * 1000))
            identity = inlet.recv_multipart()[0]
            inlet.send_multipart([identity, bytes(LIMIT)])
            assert link.poll(round(WAIT * 1000)) and len(link.recv()) == LIMIT
            inlet.send_multipart([identity, bytes(LIMIT + 1)])
            assert dropped(monitor)
            assert not link.poll(0)
        finally:
            link.disable_monitor()
            monitor.close(linger=0)
            remote._LINKS.__dict__.clear()  # the link belongs to this thread; close it here
            link.close(linger=0)


def test_open_connected_socket_sets_a_frame_limit_only_when_asked(config: ZMQConfig) -> None:
    with zmq.Context() as context:
        url = "tcp://127.0.0.1:9"
        plain = open_connected_socket(context, zmq.DEALER, url, attrs.evolve(config), None)
        limited = open_connected_socket(
            context, zmq.DEALER, url, config, None, max_frame_bytes=LIMIT
        )
        try:
            assert plain.getsockopt(zmq.MAXMSGSIZE) == -1
            assert limited.getsockopt(zmq.MAXMSGSIZE) == LIMIT
        finally:
            plain.close(linger=0)
            limited.close(linger=0)


# --- the edges, with a peer that sends them ------------------------------------------------


def test_a_control_socket_takes_frames_up_to_max_request_bytes(
    start_server: ServerFactory, config: ZMQConfig, mode: TransportMode
) -> None:
    cfg = attrs.evolve(config, max_request_bytes=LIMIT)
    url = start_server(mode, config=cfg).sockets.control_url
    assert answered(url, ping_with(LIMIT), cfg)
    assert not answered(url, ping_with(LIMIT + 1), cfg)
    assert answered(url, ping_with(0), cfg)  # the server serves on


def test_a_viewer_control_socket_takes_frames_up_to_max_header_bytes(
    config: ZMQConfig, mode: TransportMode
) -> None:
    cfg = attrs.evolve(config, max_header_bytes=LIMIT)
    endpoint = Endpoint.of(0, transport_mode=mode, config=cfg)
    with StreamingServer.bind(endpoint, lambda image, metadata: None) as viewer:
        url = viewer.server.sockets.control_url
        assert answered(url, ping_with(LIMIT), cfg)
        assert not answered(url, ping_with(LIMIT + 1), cfg)
        assert answered(url, ping_with(0), cfg)


def test_a_viewer_takes_images_up_to_max_message_bytes(
    config: ZMQConfig, mode: TransportMode
) -> None:
    cfg = attrs.evolve(config, max_message_bytes=LIMIT)
    shown: list[int] = []
    arrived = threading.Event()

    def sink(image: numpy.ndarray[Any, Any], metadata: Mapping[str, Any]) -> None:
        shown.append(image.nbytes)
        arrived.set()

    with StreamingServer.bind(Endpoint.of(0, transport_mode=mode, config=cfg), sink) as viewer:
        url = viewer.server.sockets.data_url
        for pixels, kept in ((LIMIT, True), (LIMIT + 1, False)):
            image = codec.image_from_array(numpy.zeros(pixels, numpy.uint8), image_id=str(pixels))
            with raw_peer(url, zmq.PUSH, cfg) as (peer, monitor):
                peer.send_multipart(codec.encode(image))
                if kept:
                    assert arrived.wait(WAIT)
                else:
                    assert dropped(monitor)
        assert shown == [LIMIT]


def test_an_ack_channel_takes_frames_up_to_max_header_bytes(
    config: ZMQConfig, mode: TransportMode
) -> None:
    cfg = attrs.evolve(config, max_header_bytes=LIMIT)
    heard = threading.Event()
    with AckChannel.bind(Endpoint.of(0, transport_mode=mode, config=cfg)) as channel:
        channel.add_callback(lambda ack: heard.set())
        control, data = channel.server.sockets.control_url, channel.server.sockets.data_url
        assert answered(control, ping_with(LIMIT), cfg)
        assert not answered(control, ping_with(LIMIT + 1), cfg)
        with raw_peer(data, zmq.PUSH, cfg) as (peer, _monitor):
            peer.send_multipart(ack_of(LIMIT))
            assert heard.wait(WAIT)
        with raw_peer(data, zmq.PUSH, cfg) as (peer, monitor):
            peer.send_multipart(
                [*codec.encode(Ack(image_id="i", tracker_key="k")), bytes(LIMIT + 1)]
            )
            assert dropped(monitor)
        assert channel.statistics().received == 1


def test_a_publisher_takes_subscriptions_up_to_max_header_bytes(
    start_server: ServerFactory, config: ZMQConfig, mode: TransportMode
) -> None:
    cfg = attrs.evolve(config, max_header_bytes=LIMIT)
    server = start_server(mode, config=cfg, data_socket_type=zmq.XPUB)
    url = server.sockets.data_url
    with raw_peer(url, zmq.XSUB, cfg) as (peer, monitor):
        peer.send(b"\x01" + b"t" * (LIMIT - 1))  # a subscription of exactly LIMIT bytes
        peer.send(b"\x01event:")
        deadline = WAIT * 1000
        while deadline > 0 and not peer.poll(50):  # until the server knows the subscriber
            server.publish_event("news", 1)
            deadline -= 50
        assert peer.recv_multipart()[0] == b"event:news"
    with raw_peer(url, zmq.XSUB, cfg) as (peer, monitor):
        peer.send(b"\x01" + b"t" * LIMIT)
        assert dropped(monitor)
