"""AckChannel and AckSender: acks from real consumer processes into one tracker registry."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import zmq

from tests.conftest import authenticate
from zmqruntime import AckChannel, GlobalQueueTrackerRegistry, TransportMode, ZMQClient, ZMQConfig
from zmqruntime.core import codec
from zmqruntime.core.ack import AckSender
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import Ack, AckOutcome, Ping

CONSUMER = """
import sys
from zmqruntime import ZMQConfig
from zmqruntime.core.ack import AckSender
from zmqruntime.core.messages import AckOutcome
address, key, first, count, ipc_root = sys.argv[1:6]
config = ZMQConfig(ipc_root=ipc_root)
with AckSender(config=config) as sender:
    for number in range(int(first), int(first) + int(count)):
        outcome = AckOutcome.SKIPPED if number % 10 == 0 else AckOutcome.PROCESSED
        assert sender.acknowledge(address, f"img-{number}", key, outcome)
"""


@pytest.fixture(params=[TransportMode.TCP, TransportMode.IPC], ids=["tcp", "ipc"])
def mode(request: pytest.FixtureRequest) -> TransportMode:
    return request.param  # type: ignore[no-any-return]


def test_two_consumer_processes_ack_into_one_registry(tmp_path, mode) -> None:
    config = ZMQConfig(ipc_root=tmp_path)
    registry = GlobalQueueTrackerRegistry()
    tracker = registry.get_or_create_tracker("viewer-A")
    for number in range(400):
        tracker.register_sent(f"img-{number}")
    seen: list[Ack] = []
    lock = threading.Lock()

    def remember(ack: Ack) -> None:
        with lock:
            seen.append(ack)

    with AckChannel.bind(
        Endpoint.of(port=0, transport_mode=mode, config=config), registry=registry
    ) as channel:
        handle = channel.add_callback(remember)
        consumers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    CONSUMER,
                    channel.address,
                    "viewer-A",
                    str(first),
                    "200",
                    str(tmp_path),
                ],
            )
            for first in (0, 200)
        ]
        for process in consumers:
            assert process.wait(timeout=60) == 0
        assert tracker.wait_all_acknowledged(timeout=30)
        handle.remove()
        stats = channel.statistics()
    assert tracker.get_progress() == (400, 400)
    assert tracker.get_pending_count() == 0
    statistics = tracker.statistics()
    assert statistics.skipped == 40
    assert statistics.processed == 360
    assert len(seen) == 400
    assert stats.received == 400
    assert stats.applied == 400


def test_malformed_input_is_dropped_and_the_channel_goes_on(tmp_path) -> None:
    config = ZMQConfig(ipc_root=tmp_path)
    registry = GlobalQueueTrackerRegistry()
    tracker = registry.get_or_create_tracker("v")
    tracker.register_sent("good")
    with AckChannel.bind(
        Endpoint.of(port=0, transport_mode=TransportMode.TCP, config=config), registry=registry
    ) as channel:
        context = zmq.Context()
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        authenticate(push, channel.address, config)
        push.connect(channel.address)
        try:
            push.send_multipart([b"garbage"])
            push.send_multipart([b'{"version":1,"type":"ack","frames":0}'])  # missing fields
            push.send_multipart(codec.encode(Ping(request_id=1)))  # valid, but not an ack
            push.send_multipart(codec.encode(Ack(image_id="unknown", tracker_key="nobody")))
            push.send_multipart(codec.encode(Ack(image_id="good", tracker_key="v")))
        finally:
            push.close()
            context.term()
        assert tracker.wait_all_acknowledged(timeout=10)
        with ZMQClient(
            Endpoint.of(port=channel.port_number, transport_mode=TransportMode.TCP, config=config)
        ) as client:
            assert client.ping(timeout=5).role == "ack"
        stats = channel.statistics()
        server_stats = channel.server.statistics()
    assert stats.applied == 1
    assert stats.untracked == 1
    assert stats.malformed == 1
    assert server_stats.data_errors == 2


def test_callback_errors_are_contained_and_handles_unregister(tmp_path) -> None:
    config = ZMQConfig(ipc_root=tmp_path)
    registry = GlobalQueueTrackerRegistry()
    tracker = registry.get_or_create_tracker("v")
    calls: list[str] = []
    arrived = {"first": threading.Event(), "second": threading.Event()}

    def broken(ack: Ack) -> None:
        raise RuntimeError("callback bug")

    def counting(ack: Ack) -> None:
        calls.append(ack.image_id)
        arrived[ack.image_id].set()

    with AckChannel.bind(
        Endpoint.of(port=0, transport_mode=TransportMode.IPC, config=config), registry=registry
    ) as channel:
        channel.add_callback(broken)
        handle = channel.add_callback(counting)
        with AckSender(config=config) as sender:
            tracker.register_sent("first")
            assert sender.acknowledge(channel.address, "first", "v", AckOutcome.FAILED, "boom")
            assert arrived["first"].wait(10)  # callbacks run after the tracker update
            assert tracker.get_pending_count() == 0
            handle.remove()
            handle.remove()  # idempotent
            second = channel.add_callback(counting)
            tracker.register_sent("second")
            assert sender.acknowledge(channel.address, "second", "v")
            assert arrived["second"].wait(10)
            second.remove()
    assert calls == ["first", "second"]  # the removed registration was not called again
    assert tracker.statistics().failed == 1


def test_sender_refuses_addresses_that_are_not_zmq_endpoints() -> None:
    with AckSender() as sender:
        assert not sender.acknowledge("http://example.invalid/", "i", "k")


def test_default_port_is_the_shared_ack_port(tmp_path) -> None:
    config = ZMQConfig(ipc_root=tmp_path, shared_ack_port=7655)
    with AckChannel.bind(Endpoint.ipc(config.shared_ack_port, config=config)) as channel:
        assert channel.port_number == 7655
        assert channel.address.endswith("zmq-7655.sock")


def test_sent_notices_from_another_process_register_items(tmp_path) -> None:
    config = ZMQConfig(ipc_root=tmp_path)
    registry = GlobalQueueTrackerRegistry()
    tracker = registry.get_or_create_tracker("gui")
    with AckChannel.bind(
        Endpoint.of(port=0, transport_mode=TransportMode.IPC, config=config), registry=registry
    ) as channel:
        code = (
            "import sys\n"
            "from zmqruntime import ZMQConfig\n"
            "from zmqruntime.core.ack import AckSender\n"
            "from zmqruntime.core.messages import ImageSent\n"
            "with AckSender(config=ZMQConfig(ipc_root=sys.argv[2])) as sender:\n"
            "    for n in range(50):\n"
            "        for key, prefix in (('gui', 'i'), ('nobody', 'x')):\n"
            "            notice = ImageSent(image_id=f'{prefix}{n}', tracker_key=key)\n"
            "            assert sender.send(notice, sys.argv[1])\n"
        )
        process = subprocess.run(
            [sys.executable, "-c", code, channel.address, str(tmp_path)], timeout=60, check=True
        )
        assert process.returncode == 0
        deadline = time.monotonic() + 10  # notices and acks travel on different connections
        while channel.statistics().sent_notices < 50 and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        with AckSender(config=config) as sender:
            for number in range(50):
                assert sender.acknowledge(channel.address, f"i{number}", "gui")
        assert tracker.wait_all_acknowledged(timeout=10)
        stats = channel.statistics()
    assert tracker.get_progress() == (50, 50)
    assert stats.sent_notices == 50
    assert stats.untracked == 50
