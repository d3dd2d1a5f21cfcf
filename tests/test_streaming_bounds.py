"""The streaming tier's bounds over real sockets: the viewer's backlog (count and pixel bytes)
stops the reading of its data socket so that senders' sends fail once the pipe is full, and
``max_in_flight`` holds with ``ack_to`` too. Each bound is tried at its edge."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy
import pytest

from tests.test_streaming import WAIT, Image, wait_until
from zmqruntime import (
    AckChannel,
    ConfigurationError,
    GlobalQueueTrackerRegistry,
    RemoteError,
    TransportMode,
    ZMQClient,
    ZMQConfig,
    ZMQTimeoutError,
)
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.streaming import ImageSender, StreamingServer, StreamMode, server

PIXELS = 16 * 1024  # bytes per test image: small, so kernel buffers fill after some hundreds


class GatedSink:
    """A sink that shows an image only once the test gives it a permit (or opens it for good)."""

    def __init__(self) -> None:
        self.permits = threading.Semaphore(0)
        self.shown: list[int] = []

    def __call__(self, image: Image, metadata: Mapping[str, Any], /) -> None:
        assert self.permits.acquire(timeout=WAIT), "the test never let the sink go on"
        self.shown.append(int(metadata["n"]))

    def release(self, count: int = 1_000_000) -> None:
        self.permits.release(count)


def image(number: int) -> Image:
    return numpy.full(PIXELS, number % 251, numpy.uint8)


@contextlib.contextmanager
def viewer_at(
    sink: GatedSink, transport: TransportMode, config: ZMQConfig, **fields: Any
) -> Iterator[StreamingServer]:
    endpoint = Endpoint.of(port=0, transport_mode=transport, config=config)
    with StreamingServer.bind(endpoint, sink, **fields) as viewer:
        try:
            yield viewer
        finally:
            sink.release()  # never leave the sink thread waiting for a permit


def to(viewer: StreamingServer, mode: TransportMode, config: ZMQConfig) -> Endpoint:
    return Endpoint.of(port=viewer.port_number, transport_mode=mode, config=config)


@pytest.fixture
def tight(config: ZMQConfig) -> ZMQConfig:
    """High-water marks of 2 messages, so that the pipe to the viewer fills quickly."""
    return attrs.evolve(config, send_high_water_mark=2)


def send_until_refused(sender: ImageSender, viewer: StreamingServer, held: int) -> list[int]:
    """Send until a send is refused (the pipe to the viewer is full) while the viewer holds
    ``held`` images; returns the numbers of the images that went (a refusal before then is
    the sender's own queue of 2, which its I/O thread had not emptied yet)."""
    sent: list[int] = []
    deadline = time.monotonic() + 60.0  # a loaded machine may refuse early many times over
    for number in itertools.count():
        if time.monotonic() > deadline:
            break
        try:
            sender.send(image(number), {"n": number})
            sent.append(number)
        except ZMQTimeoutError as exc:
            assert "is full" in str(exc)
            if viewer.statistics().backlog == held and len(sent) > held:
                return sent
    pytest.fail(f"{len(sent)} images went out in 60 s: nothing pushed back on the sender")


@pytest.mark.parametrize(
    ("limit", "held_bytes", "held"),
    [
        (3, 1 << 30, 3),  # the count is the bound, reached
        (1, 1 << 30, 1),
        (64, 3 * PIXELS, 3),  # bytes: reading stops once the backlog holds backlog_bytes
        (64, 3 * PIXELS + 1, 4),  # … and goes on while it holds less, so one image more
    ],
)
def test_a_full_backlog_stops_the_reading_and_the_sender(
    transport_mode: TransportMode,
    tight: ZMQConfig,
    limit: int,
    held_bytes: int,
    held: int,
    no_thread_leak: None,
) -> None:
    """A fast sender and a sink that shows nothing until released: the viewer holds exactly
    its bound, the sender's send fails once the pipe is full, and everything sent before is
    shown and acknowledged once the sink goes on."""
    sink = GatedSink()
    with (
        viewer_at(sink, transport_mode, tight, backlog_limit=limit, backlog_bytes=held_bytes) as v,
        ImageSender.to(to(v, transport_mode, tight), max_in_flight=5000) as sender,
    ):
        sent = send_until_refused(sender, v, held)
        stats = v.statistics()
        assert (stats.received, stats.peak_backlog) == (held, held)
        assert stats.backlog_bytes == stats.peak_backlog_bytes == held * PIXELS
        assert len(sent) > held  # the rest waits in libzmq's queues and the kernel's
        assert sender.tracker is not None  # refused images were acked as failed at once
        refused = sender.tracker.statistics().failed

        sink.release()
        sender.wait_all_acked(WAIT)
        stats = v.statistics()
        tracker = sender.tracker.statistics()
    assert sink.shown == sent
    assert (stats.processed, stats.backlog, stats.backlog_bytes) == (len(sent), 0, 0)
    assert stats.peak_backlog == held  # never more, though all those images were on their way
    assert (tracker.processed, tracker.failed, tracker.pending) == (len(sent), refused, 0)


def test_the_viewer_answers_requests_while_its_backlog_is_full(
    transport_mode: TransportMode, tight: ZMQConfig, no_thread_leak: None
) -> None:
    sink = GatedSink()
    with (
        viewer_at(sink, transport_mode, tight, backlog_limit=2) as v,
        ImageSender.to(to(v, transport_mode, tight), max_in_flight=5000) as sender,
        ZMQClient(to(v, transport_mode, tight)) as client,
    ):
        send_until_refused(sender, v, 2)
        assert "images" in client.ping(timeout=WAIT).capabilities
        assert v.statistics().received == 2  # pinging read no image


def test_latest_frame_mode_under_a_full_backlog_skips_and_acks_everything(
    transport_mode: TransportMode, tight: ZMQConfig, no_thread_leak: None
) -> None:
    sink = GatedSink()
    with (
        viewer_at(sink, transport_mode, tight, backlog_limit=3, mode=StreamMode.LATEST) as v,
        ImageSender.to(to(v, transport_mode, tight), max_in_flight=5000) as sender,
    ):
        sent = send_until_refused(sender, v, 3)
        sink.release()
        sender.wait_all_acked(WAIT)
        stats = v.statistics()
    assert stats.peak_backlog == 3
    assert stats.processed + stats.skipped == len(sent) and stats.skipped > 0
    assert sink.shown[-1] == sent[-1]  # the newest is shown last


@pytest.mark.parametrize("field", ["backlog_limit", "backlog_bytes"])
def test_backlog_bounds_are_whole_numbers_from_1(
    field: str, config: ZMQConfig, no_thread_leak: None
) -> None:
    endpoint = Endpoint.of(port=0, transport_mode=TransportMode.TCP, config=config)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigurationError, match=field):
            StreamingServer.bind(endpoint, GatedSink(), **{field: bad})
    assert getattr(StreamingServer.bind(endpoint, GatedSink(), **{field: 1}), field) == 1
    defaults = StreamingServer.bind(endpoint, GatedSink())
    assert (defaults.backlog_limit, defaults.backlog_bytes) == (64, 256 << 20)


# --- max_in_flight with ack_to --------------------------------------------------------------


@contextlib.contextmanager
def gui_channel(
    mode: TransportMode, config: ZMQConfig
) -> Iterator[tuple[AckChannel, GlobalQueueTrackerRegistry]]:
    registry = GlobalQueueTrackerRegistry()
    registry.get_or_create_tracker("gui")
    endpoint = Endpoint.of(port=0, transport_mode=mode, config=config)
    with AckChannel.bind(endpoint, registry=registry) as channel:
        yield channel, registry


def test_max_in_flight_holds_with_ack_to(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    """Acks go to another process's channel; the sender still waits at max_in_flight=4, its
    fifth send goes once the viewer acknowledged one image, and the channel's tracker ends
    exact."""
    sink = GatedSink()
    with (
        gui_channel(transport_mode, config) as (channel, registry),
        viewer_at(sink, transport_mode, config) as v,
        ImageSender.to(
            to(v, transport_mode, config),
            ack_to=channel.address,
            tracker_key="gui",
            max_in_flight=4,
            send_timeout=WAIT,
        ) as sender,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        gui = registry.get_tracker("gui")
        assert gui is not None
        for number in range(4):
            sender.send(image(number), {"n": number})
        wait_until(lambda: gui.get_progress() == (0, 4), "4 sent notices at the channel")
        fifth = pool.submit(sender.send, image(4), {"n": 4})
        with pytest.raises(concurrent.futures.TimeoutError):
            fifth.result(timeout=0.3)  # waiting for room: no ack has come
        assert sender.tracker is not None and sender.tracker.get_pending_count() == 4
        assert gui.get_progress() == (0, 4)

        sink.release(1)  # one image shown and acked: the fifth goes
        fifth.result(timeout=WAIT)
        assert sink.shown == [0]
        assert sender.tracker.get_pending_count() == 4
        wait_until(lambda: gui.get_progress() == (1, 5), "the ack and the fifth notice")

        sink.release()
        for number in range(5, 40):
            sender.send(image(number), {"n": number})
            assert sender.tracker.get_pending_count() <= 4
        sender.wait_all_acked(WAIT)
        wait_until(lambda: gui.get_progress() == (40, 40), "every ack at the channel")
        mine = sender.tracker.statistics()
    assert (mine.sent, mine.processed, mine.pending) == (40, 40, 0)
    assert sink.shown == list(range(40))


def test_an_ack_to_sender_asks_a_restarted_viewer_for_copies(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    """The viewer that copied acks to the sender is replaced by a new one on the same port:
    the sender asks the new one too, so its slots keep freeing past ``max_in_flight``."""
    sink = GatedSink()
    sink.release()
    with gui_channel(transport_mode, config) as (channel, _registry):
        with viewer_at(sink, transport_mode, config) as first:
            endpoint = to(first, transport_mode, config)
            sender = ImageSender.to(
                endpoint, ack_to=channel.address, max_in_flight=2, send_timeout=WAIT
            )
            for number in range(4):
                sender.send(image(number), {"n": number})
            sender.wait_all_acked(WAIT)
        try:
            wait_until(lambda: sender.client.statistics().disconnects >= 1, "the viewer gone")
            with StreamingServer.bind(endpoint, sink):
                for number in range(4, 10):
                    sender.send(image(number), {"n": number})
                sender.wait_all_acked(WAIT)
        finally:
            sender.close()
    assert sink.shown == list(range(10))


def test_a_full_ack_to_sender_times_out_at_its_limit(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    sink = GatedSink()
    with (
        gui_channel(transport_mode, config) as (channel, registry),
        viewer_at(sink, transport_mode, config) as v,
        ImageSender.to(
            to(v, transport_mode, config),
            ack_to=channel.address,
            tracker_key="gui",
            max_in_flight=1,
            send_timeout=0.2,
        ) as sender,
    ):
        sender.send(image(0), {"n": 0})  # at the limit: goes
        with pytest.raises(ZMQTimeoutError, match=r"max_in_flight=1"):
            sender.send(image(1), {"n": 1})  # one past it: waits 0.2 s, then refused
        assert sender.tracker is not None and sender.tracker.get_progress() == (0, 1)
        sink.release()
        assert sender.tracker.wait_pending_below(1, WAIT)  # the ack came: room again
        sender.send(image(2), {"n": 2})
        sender.wait_all_acked(WAIT)
        gui = registry.get_tracker("gui")
        assert gui is not None
        wait_until(lambda: gui.get_progress() == (2, 2), "both acks at the channel")
    assert sink.shown == [0, 2]


def test_ack_copies_go_to_the_latest_senders_only(
    monkeypatch: pytest.MonkeyPatch, config: ZMQConfig, no_thread_leak: None
) -> None:
    """A viewer copies acks to at most MAX_ACK_COPY_SENDERS senders (here 1): a second
    ack_to sender takes the place of the first, whose next send then waits in vain."""
    monkeypatch.setattr(server, "MAX_ACK_COPY_SENDERS", 1)
    sink = GatedSink()
    sink.release()
    mode = TransportMode.TCP
    with (
        gui_channel(mode, config) as (channel, _registry),
        viewer_at(sink, mode, config) as v,
        ZMQClient(to(v, mode, config)) as client,
    ):
        with pytest.raises(RemoteError, match="prefix"):
            client.call(server.ACK_COPIES, {"prefix": ""}, timeout=WAIT)
        senders = [
            ImageSender.to(
                to(v, mode, config),
                ack_to=channel.address,
                tracker_key="gui",
                max_in_flight=1,
                send_timeout=0.3,
            )
            for _ in range(2)
        ]
        first, second = senders
        try:
            first.send(image(0), {"n": 0})
            first.wait_all_acked(WAIT)  # one sender: copied
            second.send(image(1), {"n": 1})
            second.wait_all_acked(WAIT)
            first.send(image(2), {"n": 2})  # its slot was freed before it lost its place
            wait_until(lambda: sink.shown == [0, 1, 2], "the third image shown")
            with pytest.raises(ZMQTimeoutError, match="unacknowledged"):
                first.send(image(3), {"n": 3})  # its ack came, but no copy: no room
        finally:
            for sender in senders:
                sender.close()


def _zmq_threads() -> set[str]:
    """libzmq's I/O and reaper threads in this process (each open context has a pair)."""
    names = {}
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            names[task] = Path(f"/proc/self/task/{task}/comm").read_text()
    return {task for task, name in names.items() if name.startswith("ZMQbg/")}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
@pytest.mark.parametrize(
    ("option", "value"),
    [("send_timeout", -1), ("send_timeout", math.nan), ("send_timeout", "1"), ("max_in_flight", 0)],
)
def test_a_bad_sender_option_is_refused_and_leaves_nothing_open(
    config: ZMQConfig, option: str, value: object, no_thread_leak: None
) -> None:
    """Checked at construction, with the option's name; the client and the ack channel that
    ``ImageSender.to`` built for it are closed again (their zmq contexts ended)."""
    endpoint = Endpoint.of(port=7, transport_mode=TransportMode.TCP, config=config)
    before = _zmq_threads()
    with pytest.raises(ConfigurationError, match=option):
        ImageSender.to(endpoint, **{option: value})
    assert _zmq_threads() <= before
    with ImageSender.to(endpoint, send_timeout=0) as sender:  # 0: never wait for room
        assert sender.max_in_flight == 16


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_a_sender_and_a_viewer_each_run_on_one_zmq_context(
    config: ZMQConfig, no_thread_leak: None
) -> None:
    """A raw pyzmq stream has one libzmq I/O thread per side; so do an ``ImageSender.to``
    (its client and ack channel) and a ``StreamingServer.bind`` (its server and the acks its
    sink sends): two contexts, four libzmq threads, all ended on close."""
    before = _zmq_threads()
    acked = threading.Event()
    at = Endpoint.of(port=0, transport_mode=TransportMode.TCP, config=config)
    with StreamingServer.bind(at, lambda _image, _metadata: None) as viewer:
        with ImageSender.to(to(viewer, TransportMode.TCP, config)) as sender:
            assert sender.channel is not None
            assert sender.client.context is sender.channel.server.context is not None
            assert viewer.server.context is not None
            handle = sender.channel.add_callback(lambda _ack: acked.set())
            sender.send(image(1))
            sender.wait_all_acked(timeout=WAIT)
            assert acked.wait(WAIT)
            handle.remove()
            assert len(_zmq_threads() - before) == 4  # an I/O and a reaper thread per context
        assert sender.client.context.closed  # the sender ended the context it made
    assert _zmq_threads() <= before
