"""StreamingServer and ImageSender over real sockets (TCP and IPC): pixels arrive bit-exact,
every image is acknowledged (processed, failed or skipped), backpressure bounds what is in
flight, acks can be routed to another process's AckChannel, and the DirectorySink writes
files numpy can read back.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst

from tests.conftest import authenticate
from tests.strategies import image_dtypes, json_objects
from zmqruntime import (
    AckChannel,
    ConfigurationError,
    GlobalQueueTrackerRegistry,
    ServerLost,
    TransportMode,
    ZMQClient,
    ZMQConfig,
    ZMQTimeoutError,
)
from zmqruntime.core import codec
from zmqruntime.core.ack import AckSender
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import Ack, AckOutcome, ImageSent, Ping, Pong, Shutdown, ShutdownReply
from zmqruntime.core.transport import find_free_ipc_port, find_free_port_pair, get_zmq_transport_url
from zmqruntime.streaming import (
    DirectorySink,
    ImageSender,
    StreamingServer,
    StreamMode,
    sink_from_spec,
)
from zmqruntime.streaming.thread_sockets import MAX_THREAD_SOCKETS

WAIT = 10.0
"""Deadline for anything that should happen promptly; reached only when something is broken."""

SCRIPTS = Path(__file__).with_name("viewer_scripts.py")

Image = numpy.ndarray[Any, Any]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``predicate`` in short bounded waits until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        pause.wait(0.005)


def free_port(mode: TransportMode, config: ZMQConfig) -> int:
    if mode is TransportMode.TCP:
        return find_free_port_pair(config)
    return find_free_ipc_port(config)


@contextlib.contextmanager
def streaming(
    sink: Callable[[Image, Mapping[str, Any]], None],
    mode: TransportMode,
    config: ZMQConfig,
    *,
    stream_mode: StreamMode = StreamMode.ALL,
    **sender_fields: Any,
) -> Iterator[tuple[StreamingServer, ImageSender]]:
    """A started viewer on a free port and a connected sender pointed at it."""
    with (
        StreamingServer.bind(
            Endpoint.of(port=0, transport_mode=mode, config=config), sink, mode=stream_mode
        ) as viewer,
        ImageSender.to(
            Endpoint.of(viewer.port_number, transport_mode=mode, config=config), **sender_fields
        ) as sender,
    ):
        yield viewer, sender


class Recorder:
    """A sink that keeps what it was given, notes its thread, and notes being closed."""

    def __init__(self) -> None:
        self.images: list[tuple[Image, dict[str, Any]]] = []
        self.closed = False
        self.thread_names: set[str] = set()

    def __call__(self, image: Image, metadata: Mapping[str, Any], /) -> None:
        self.thread_names.add(threading.current_thread().name)
        self.images.append((image, dict(metadata)))

    def close(self) -> None:
        self.closed = True


# --- the README tour ------------------------------------------------------------------------


def test_readme_usage(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    received: list[tuple[Image, Mapping[str, Any]]] = []

    def sink(image: Image, metadata: Mapping[str, Any]) -> None:  # a plain function is a sink
        received.append((image, metadata))

    with StreamingServer.bind(
        Endpoint.of(port=0, transport_mode=transport_mode, config=config), sink
    ) as viewer:
        with ImageSender.to(
            Endpoint.of(port=viewer.port_number, transport_mode=transport_mode, config=config)
        ) as sender:
            image_id = sender.send(numpy.zeros((512, 512), numpy.uint16), {"channel": 1})
            sender.wait_all_acked(timeout=5)
            assert sender.tracker is not None
            assert sender.tracker.get_pending_count() == 0
            assert sender.tracker.get_progress() == (1, 1)
            assert sender.tracker.statistics().processed == 1
        stats = viewer.statistics()
    assert isinstance(image_id, str) and image_id
    assert len(received) == 1
    image, metadata = received[0]
    assert image.dtype == numpy.uint16 and image.shape == (512, 512)
    assert not image.any()
    assert dict(metadata) == {"channel": 1}
    assert (stats.received, stats.processed, stats.failed, stats.skipped, stats.waiting) == (
        1,
        1,
        0,
        0,
        0,
    )


# --- pixels arrive bit-exact ----------------------------------------------------------------


@st.composite
def images(draw: st.DrawFn) -> Image:
    """Any numeric dtype in either byte order; 0-d, empty, 1- to 3-D; C order or a strided view."""
    dtype = draw(image_dtypes())
    shape = draw(npst.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
    view = draw(st.sampled_from(["as is", "transposed", "every other", "reversed", "column"]))
    if view == "every other" and shape:
        base = draw(npst.arrays(dtype, tuple(side * 2 for side in shape)))
        return base[tuple(slice(None, None, 2) for _ in shape)]  # type: ignore[no-any-return]
    if view == "column" and len(shape) >= 2:
        base = draw(npst.arrays(dtype, (*shape[:-1], shape[-1] + 3)))
        return base[..., 1 : shape[-1] + 1]  # type: ignore[no-any-return]
    array: Image = draw(npst.arrays(dtype, shape))
    if view == "transposed":
        return array.T
    if view == "reversed" and shape:
        return array[::-1]
    return array


def test_images_arrive_bit_exact_in_order(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    sink = Recorder()
    seen_kinds: set[str] = set()
    with streaming(sink, transport_mode, config) as (viewer, sender):

        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(batch=st.lists(st.tuples(images(), json_objects()), min_size=1, max_size=4))
        def check(batch: list[tuple[Image, dict[str, Any]]]) -> None:
            sink.images.clear()
            ids = [sender.send(image, metadata) for image, metadata in batch]
            assert len(set(ids)) == len(ids)
            sender.wait_all_acked(WAIT)
            assert len(sink.images) == len(batch)
            for (sent, metadata), (got, got_metadata) in zip(batch, sink.images, strict=True):
                assert got.dtype.str == sent.dtype.str  # byte order included
                assert got.shape == sent.shape
                assert got.tobytes() == sent.tobytes()  # bit-exact, NaN payloads included
                assert got_metadata == metadata
                seen_kinds.add(sent.dtype.kind)

        check()
        assert sender.tracker is not None
        sent = sender.tracker.get_progress()[1]
        assert sender.tracker.get_progress() == (sent, sent)
        assert viewer.statistics().processed == sent
    assert sink.thread_names and all(
        name.startswith("zmqruntime-sink") for name in sink.thread_names
    )
    assert sink.closed


@pytest.mark.parametrize(
    "image",
    [
        numpy.array(7, ">i4"),  # 0-d, big-endian
        numpy.zeros((0, 5), numpy.float32),  # empty
        numpy.arange(2 * 3 * 4, dtype=">c16").reshape(2, 3, 4),  # 3-D, big-endian complex
        numpy.array([[True, False], [False, True]]).T,  # bool, Fortran order
        numpy.arange(100, dtype=numpy.uint16).reshape(10, 10)[::3, 1::2],  # strided
        numpy.arange(12, dtype=">f8").reshape(3, 4)[::-1],  # negative stride, big-endian
    ],
    ids=["0-d", "empty", "3-d-complex", "bool-fortran", "strided", "reversed"],
)
def test_edge_images_arrive_bit_exact(
    image: Image, transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    sink = Recorder()
    with streaming(sink, transport_mode, config) as (_viewer, sender):
        sender.send(image, {"what": "edge"})
        sender.wait_all_acked(WAIT)
    [(got, metadata)] = sink.images
    assert (got.dtype.str, got.shape, got.tobytes()) == (
        image.dtype.str,
        image.shape,
        image.tobytes(),
    )
    assert metadata == {"what": "edge"}


def test_copy_true_lets_the_caller_reuse_the_array(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    sink = Recorder()
    buffer = numpy.zeros((256, 256), numpy.uint16)  # large enough to travel zero-copy
    with streaming(sink, transport_mode, config) as (_viewer, sender):
        for value in range(5):
            buffer[:] = value
            sender.send(buffer, {"value": value}, copy=True)
        sender.wait_all_acked(WAIT)
    assert [int(image[0, 0]) for image, _ in sink.images] == list(range(5))
    assert [int(image.max()) for image, _ in sink.images] == list(range(5))


# --- backpressure and volume ----------------------------------------------------------------


def test_two_thousand_images_with_max_in_flight_8(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    total, limit = 2000, 8
    pending_seen: list[int] = []
    waiting_seen: list[int] = []
    values: list[int] = []
    holder: dict[str, Any] = {}

    def sink(image: Image, metadata: Mapping[str, Any]) -> None:
        values.append(int(metadata["n"]))
        assert int(image[0, 0]) == metadata["n"] % 65536
        pending_seen.append(holder["sender"].tracker.get_pending_count())
        waiting_seen.append(holder["viewer"].statistics().waiting)

    tracemalloc.start()
    try:
        with streaming(sink, transport_mode, config, max_in_flight=limit) as (viewer, sender):
            holder.update(sender=sender, viewer=viewer)
            tracker = sender.tracker
            assert tracker is not None
            sender.send(numpy.zeros((64, 64), numpy.uint16), {"n": 0})
            sender.wait_all_acked(WAIT)  # connections up; measure the steady state from here
            tracemalloc.reset_peak()
            baseline = tracemalloc.get_traced_memory()[0]
            for number in range(1, total):
                sender.send(numpy.full((64, 64), number % 65536, numpy.uint16), {"n": number})
                assert tracker.get_pending_count() <= limit
            sender.wait_all_acked(WAIT)
            peak = tracemalloc.get_traced_memory()[1] - baseline
            assert tracker.get_progress() == (total, total)
            stats = tracker.statistics()
            assert (stats.processed, stats.failed, stats.skipped, stats.pending) == (total, 0, 0, 0)
            viewer_stats = viewer.statistics()
    finally:
        tracemalloc.stop()
    assert values == list(range(total))  # all shown, in order
    assert max(pending_seen) <= limit
    assert max(waiting_seen) < limit  # the one being shown is not waiting
    assert (viewer_stats.received, viewer_stats.processed, viewer_stats.waiting) == (
        total,
        total,
        0,
    )
    # 2,000 images of 8 KiB are 16 MiB; with at most 8 in flight the Python heap stays small.
    assert peak < 3 * 1024 * 1024, f"peak traced memory grew by {peak} bytes"


def test_many_sending_threads_share_one_bound_and_every_image_is_acked(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    """Each calling thread sends on a socket of its own (up to MAX_THREAD_SOCKETS, then
    through the I/O thread); threads that end leave room for new ones. Nothing is lost, each
    thread's images arrive in its order, and max_in_flight holds across all of them."""
    limit, rounds, threads_per_round, per_thread = 4, 2, MAX_THREAD_SOCKETS + 4, 5
    seen: list[tuple[int, int]] = []
    pending_seen: list[int] = []
    holder: dict[str, ImageSender] = {}

    def sink(image: Image, metadata: Mapping[str, Any]) -> None:
        assert int(image[0, 0]) == metadata["n"]
        seen.append((int(metadata["thread"]), int(metadata["n"])))
        tracker = holder["sender"].tracker
        assert tracker is not None
        pending_seen.append(tracker.get_pending_count())

    with streaming(sink, transport_mode, config, max_in_flight=limit) as (viewer, sender):
        holder["sender"] = sender

        def work(index: int) -> None:
            for number in range(per_thread):
                image = numpy.full((16, 16), number, numpy.uint16)
                sender.send(image, {"thread": index, "n": number}, copy=True)

        for round_number in range(rounds):  # the second round reuses ended threads' slots
            workers = [
                threading.Thread(target=work, args=(round_number * 100 + index,))
                for index in range(threads_per_round)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(WAIT)
                assert not worker.is_alive()
        sender.wait_all_acked(WAIT)
        assert sender.tracker is not None
        stats = sender.tracker.statistics()
        assert viewer.statistics().received == rounds * threads_per_round * per_thread
    total = rounds * threads_per_round * per_thread
    assert (stats.sent, stats.processed, stats.pending) == (total, total, 0)
    assert max(pending_seen) <= limit
    by_thread: dict[int, list[int]] = {}
    for index, number in seen:
        by_thread.setdefault(index, []).append(number)
    assert len(by_thread) == rounds * threads_per_round
    assert all(numbers == list(range(per_thread)) for numbers in by_thread.values())


def test_send_times_out_at_max_in_flight_without_a_viewer(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    port = free_port(transport_mode, config)  # nothing listens there
    with ImageSender.to(
        Endpoint.of(port=port, transport_mode=transport_mode, config=config),
        max_in_flight=3,
        send_timeout=0.2,
    ) as sender:
        for _ in range(3):
            sender.send(numpy.zeros((4, 4), numpy.uint8))
        started = time.monotonic()
        with pytest.raises(ZMQTimeoutError, match=r"max_in_flight=3") as caught:
            sender.send(numpy.zeros((4, 4), numpy.uint8))
        assert 0.15 <= time.monotonic() - started < WAIT
        assert "3 images" in str(caught.value)
        assert sender.tracker is not None
        assert sender.tracker.get_progress() == (0, 3)  # the refused image was not registered
        with pytest.raises(ZMQTimeoutError, match=r"^3 image\(s\) .* not acknowledged within 0.1s"):
            sender.wait_all_acked(0.1)
        assert isinstance(caught.value, TimeoutError)


def test_sender_validates_its_input(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    sink = Recorder()
    with pytest.raises(ConfigurationError):
        ImageSender.to(Endpoint.of(port=1), max_in_flight=0)
    with streaming(sink, transport_mode, config) as (_viewer, sender):
        good = numpy.ones((2, 2), numpy.int16)
        for metadata, where in [
            ({"when": object()}, "when"),
            ({"nested": {"x": {1, 2}}}, "nested"),
            ({"bad": math.nan}, "bad"),
            ({"raw": b"bytes"}, "raw"),
            ({"list": [1, numpy.int64(2)]}, "list"),
        ]:
            with pytest.raises(TypeError, match=where):
                sender.send(good, metadata)
        with pytest.raises(TypeError):
            sender.send(good, {1: "int key"})  # type: ignore[dict-item]
        for array in [
            numpy.array([object(), None], dtype=object),
            numpy.zeros(3, dtype=[("a", "i4"), ("b", "f4")]),
            numpy.array(["text"]),
            numpy.zeros(2, "datetime64[s]"),
        ]:
            with pytest.raises(TypeError, match="dtype"):
                sender.send(array)
        with pytest.raises(ValueError, match="2 items but 1 metadata"):
            sender.send_batch([good, good], item_metadata=[{}])
        assert sender.tracker is not None
        assert sender.tracker.get_progress() == (0, 0)  # nothing refused was registered
        sent = sender.send_batch([good, good * 2], item_metadata=[{"i": 0}, {"i": 1}])
        sender.wait_all_acked(WAIT)
        assert len(sent.item_ids) == 2 and sender.tracker.get_progress() == (3, 3)
    assert [metadata for _, metadata in sink.images] == [{"i": 0}, {"i": 1}]


# --- acks to another process's channel ------------------------------------------------------


def run_senders(
    viewer: StreamingServer,
    channel: AckChannel,
    mode: TransportMode,
    config: ZMQConfig,
    batches: list[tuple[int, int]],
) -> None:
    """Run one sender process per ``(first, count)`` batch, at once; wait for all to finish."""
    workers: list[subprocess.Popen[str]] = []
    try:
        for first, count in batches:
            argv = [
                sys.executable,
                str(SCRIPTS),
                "sender",
                str(viewer.port_number),
                mode.value,
                str(config.ipc_root),
                channel.address,
                "gui",
                str(count),
                str(first),
            ]
            workers.append(
                subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            )
        for worker, (_, count) in zip(workers, batches, strict=True):
            out, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
            assert out.strip() == f"sent {count}"
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def test_acks_cross_a_process_boundary_to_an_ack_channel(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    """Worker processes send with ``ack_to`` this process's channel and one shared tracker
    key ("gui"); the viewer (here) acks to the channel. The "gui" tracker ends exact."""
    registry = GlobalQueueTrackerRegistry()
    tracker = registry.get_or_create_tracker("gui")
    gate = threading.Event()
    shown: list[int] = []

    def gated_sink(image: Image, metadata: Mapping[str, Any]) -> None:
        assert gate.wait(WAIT), "the test never opened the gate"
        assert image.dtype == numpy.int32 and (image == metadata["value"]).all()
        shown.append(int(metadata["value"]))

    with (
        AckChannel.bind(
            Endpoint.of(port=0, transport_mode=transport_mode, config=config), registry=registry
        ) as channel,
        StreamingServer.bind(
            Endpoint.of(port=0, transport_mode=transport_mode, config=config), gated_sink
        ) as viewer,
    ):
        try:
            # Two workers at once, their images all pending together (the sink is gated):
            # the same tracker key must not make their image ids collide.
            run_senders(viewer, channel, transport_mode, config, [(0, 100), (1000, 100)])
            wait_until(lambda: tracker.get_progress()[1] == 200, "200 sent notices")
            assert tracker.get_progress() == (0, 200)
        finally:
            gate.set()
        wait_until(lambda: tracker.get_progress() == (200, 200), "200 acks")
        # One worker streaming freely: acks race its sent notices to the channel.
        run_senders(viewer, channel, transport_mode, config, [(2000, 300)])
        wait_until(
            lambda: tracker.get_progress() == (500, 500),
            f"tracker 'gui' at (500, 500); it is at {tracker.get_progress()}",
        )
        assert tracker.wait_all_acknowledged(WAIT)
        stats = tracker.statistics()
        channel_stats = channel.statistics()
    assert (stats.processed, stats.failed, stats.skipped, stats.pending) == (500, 0, 0, 0)
    assert channel_stats.sent_notices == 500
    assert channel_stats.received == 500
    assert sorted(shown) == [*range(100), *range(1000, 1100), *range(2000, 2300)]


def test_an_ack_that_overtakes_its_sent_notice_still_counts(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    """The notice (worker → channel) and the ack (worker → viewer → channel) race; an ack
    that wins must be applied when its notice arrives, not lost."""
    registry = GlobalQueueTrackerRegistry()
    tracker = registry.get_or_create_tracker("gui")
    with (
        AckChannel.bind(
            Endpoint.of(port=0, transport_mode=transport_mode, config=config), registry=registry
        ) as channel,
        AckSender(config=config) as viewer_side,
        AckSender(config=config) as worker_side,
    ):
        for number in range(3):
            outcome = AckOutcome.FAILED if number == 1 else AckOutcome.PROCESSED
            assert viewer_side.acknowledge(channel.address, f"img-{number}", "gui", outcome, "x")
        wait_until(lambda: channel.statistics().received == 3, "3 early acks")
        assert tracker.get_progress() == (0, 0)
        for number in range(4):
            assert worker_side.send(
                ImageSent(image_id=f"img-{number}", tracker_key="gui"), channel.address
            )
        wait_until(lambda: channel.statistics().sent_notices == 4, "4 sent notices")
        stats = tracker.statistics()
    assert (stats.sent, stats.processed, stats.failed, stats.pending) == (4, 2, 1, 1)
    assert tracker.get_progress() == (3, 4)


# --- failures, latest-frame mode, close -----------------------------------------------------


def test_sink_that_raises_on_every_third_image(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    count = 30
    shown: list[int] = []

    def sink(image: Image, metadata: Mapping[str, Any]) -> None:
        number = int(metadata["n"])
        if number % 3 == 2:
            raise RuntimeError(f"cannot show image {number}")
        shown.append(number)

    registry = GlobalQueueTrackerRegistry()
    watched = registry.get_or_create_tracker("watched")
    acks: list[Ack] = []
    lock = threading.Lock()

    def remember(ack: Ack) -> None:
        with lock:
            acks.append(ack)

    with (
        AckChannel.bind(
            Endpoint.of(port=0, transport_mode=transport_mode, config=config), registry=registry
        ) as channel,
        streaming(sink, transport_mode, config) as (viewer, sender),
        ImageSender.to(
            Endpoint.of(port=viewer.port_number, transport_mode=transport_mode, config=config),
            ack_to=channel.address,
            tracker_key="watched",
        ) as routed,
    ):
        channel.add_callback(remember)
        for number in range(count):
            sender.send(numpy.full((8, 8), number, numpy.uint8), {"n": number})
        sender.wait_all_acked(WAIT)
        assert sender.tracker is not None
        stats = sender.tracker.statistics()
        assert (stats.sent, stats.processed, stats.failed, stats.skipped) == (count, 20, 10, 0)

        # The same through a channel, to see the error text each failure was acked with.
        for number in range(count, count + 6):
            routed.send(numpy.full((8, 8), number, numpy.uint8), {"n": number})
        wait_until(lambda: watched.get_progress() == (6, 6), "6 routed acks")
        assert watched.statistics().failed == 2
        failed = sorted((ack for ack in acks if ack.outcome is AckOutcome.FAILED), key=str)
        assert {ack.error for ack in failed} == {
            "RuntimeError: cannot show image 32",
            "RuntimeError: cannot show image 35",
        }
        assert all(ack.error == "" for ack in acks if ack.outcome is AckOutcome.PROCESSED)

        # The viewer goes on after failures.
        sender.send(numpy.zeros((8, 8), numpy.uint8), {"n": 99})
        sender.wait_all_acked(WAIT)
        viewer_stats = viewer.statistics()
    assert viewer_stats.failed == 12
    assert viewer_stats.processed == 20 + 4 + 1
    assert viewer_stats.received == count + 6 + 1
    assert shown == [n for n in range(count + 6) if n % 3 != 2] + [99]


def test_latest_frame_mode_skips_what_a_slow_sink_cannot_show(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    count = 40
    release = threading.Event()
    shown: list[int] = []

    def slow_sink(image: Image, metadata: Mapping[str, Any]) -> None:
        shown.append(int(metadata["n"]))
        if not release.wait(WAIT):
            raise AssertionError("the test never released the sink")

    with streaming(
        slow_sink, transport_mode, config, stream_mode=StreamMode.LATEST, max_in_flight=count
    ) as (viewer, sender):
        try:
            sender.send(numpy.full((4, 4), 0, numpy.uint16), {"n": 0})
            wait_until(lambda: shown == [0], "the first image in the sink")
            for number in range(1, count):
                sender.send(numpy.full((4, 4), number, numpy.uint16), {"n": number})
            wait_until(lambda: viewer.statistics().received == count, f"{count} images received")
            assert viewer.statistics().waiting == count - 1
        finally:
            release.set()
        sender.wait_all_acked(WAIT)
        assert sender.tracker is not None
        stats = sender.tracker.statistics()
        viewer_stats = viewer.statistics()
    # The first image was being shown; of the 39 that waited only the newest was shown.
    assert shown == [0, count - 1]
    assert (stats.sent, stats.processed, stats.skipped, stats.failed) == (count, 2, count - 2, 0)
    assert stats.sent == stats.processed + stats.skipped
    assert (viewer_stats.received, viewer_stats.processed, viewer_stats.skipped) == (
        count,
        2,
        count - 2,
    )


def test_latest_frame_mode_keeps_streams_apart(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    """Skipping happens per tracker key: a burst on one stream never drops the other's frame."""
    release = threading.Event()
    shown: list[tuple[str, int]] = []

    def slow_sink(image: Image, metadata: Mapping[str, Any]) -> None:
        shown.append((str(metadata["stream"]), int(metadata["n"])))
        if not release.wait(WAIT):
            raise AssertionError("the test never released the sink")

    with (
        streaming(
            slow_sink, transport_mode, config, stream_mode=StreamMode.LATEST, max_in_flight=20
        ) as (viewer, first),
        ImageSender.to(
            Endpoint.of(port=viewer.port_number, transport_mode=transport_mode, config=config)
        ) as second,
    ):
        try:
            first.send(numpy.zeros(2, numpy.uint8), {"stream": "a", "n": 0})
            wait_until(lambda: shown == [("a", 0)], "the first image in the sink")
            for number in range(1, 6):
                first.send(numpy.zeros(2, numpy.uint8), {"stream": "a", "n": number})
            second.send(numpy.zeros(2, numpy.uint8), {"stream": "b", "n": 0})
            wait_until(lambda: viewer.statistics().received == 7, "7 images received")
        finally:
            release.set()
        first.wait_all_acked(WAIT)
        second.wait_all_acked(WAIT)
        assert first.tracker is not None and second.tracker is not None
        a, b = first.tracker.statistics(), second.tracker.statistics()
    assert (a.sent, a.processed, a.skipped) == (6, 2, 4)
    assert (b.sent, b.processed, b.skipped) == (1, 1, 0)
    # Two connections interleave in no fixed order; within each stream the order holds.
    assert [n for stream, n in shown if stream == "a"] == [0, 5]
    assert [n for stream, n in shown if stream == "b"] == [0]


def test_close_acks_waiting_images_as_skipped(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    count = 6
    entered = threading.Event()
    release = threading.Event()
    shown: list[int] = []

    def blocking_sink(image: Image, metadata: Mapping[str, Any]) -> None:
        shown.append(int(metadata["n"]))
        entered.set()
        if not release.wait(WAIT):
            raise AssertionError("the test never released the sink")

    viewer = StreamingServer.bind(
        Endpoint.of(port=0, transport_mode=transport_mode, config=config), blocking_sink
    )
    viewer.start()
    try:
        with ImageSender.to(
            Endpoint.of(port=viewer.port_number, transport_mode=transport_mode, config=config)
        ) as sender:
            for number in range(count):
                sender.send(numpy.full(3, number, numpy.int8), {"n": number})
            assert entered.wait(WAIT)
            wait_until(lambda: viewer.statistics().received == count, "all images received")
            # The sink is busy: close() stops receiving and gives up waiting for the sink...
            viewer.close(timeout=0.5)
            assert viewer.statistics().waiting == count - 1
            # ...and once the sink returns, what waited is acked as skipped, not shown.
            release.set()
            sender.wait_all_acked(WAIT)
            assert sender.tracker is not None
            stats = sender.tracker.statistics()
            sink_thread = f"zmqruntime-sink-{viewer.port_number}"
            wait_until(
                lambda: sink_thread not in {t.name for t in threading.enumerate()},
                "the sink thread to end",
            )
    finally:
        release.set()
        viewer.close()
    assert shown == [0]
    assert (stats.processed, stats.skipped, stats.pending) == (1, count - 1, 0)
    final = viewer.statistics()
    assert (final.processed, final.skipped, final.waiting) == (1, count - 1, 0)


def test_close_with_an_idle_sink_closes_the_sink(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    sink = Recorder()
    viewer = StreamingServer.bind(
        Endpoint.of(port=0, transport_mode=transport_mode, config=config), sink
    ).start()
    viewer.close()
    viewer.close()  # idempotent
    assert sink.closed
    with pytest.raises(RuntimeError, match="already started"):
        viewer.start()


# --- control socket: ping, shutdown, serve_forever ------------------------------------------


def test_viewer_answers_ping_and_stops_on_shutdown(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    port = free_port(transport_mode, config)
    sink = Recorder()
    viewer = StreamingServer.bind(
        Endpoint.of(port=port, transport_mode=transport_mode, config=config), sink
    )
    served = threading.Thread(target=viewer.serve_forever, name="test-serve-forever")
    served.start()
    try:
        with ZMQClient(
            Endpoint.of(port=port, transport_mode=transport_mode, config=config), connect_data=False
        ) as client:
            pong = client.ping(WAIT)
            assert isinstance(pong, Pong)
            assert pong.role == "viewer"
            assert "images" in pong.capabilities
            with ImageSender.to(
                Endpoint.of(port=port, transport_mode=transport_mode, config=config)
            ) as sender:
                sender.send(numpy.arange(6, dtype=numpy.float32).reshape(2, 3), {"k": "v"})
                sender.wait_all_acked(WAIT)
            reply = client.request(Shutdown(request_id=0), WAIT)
            assert isinstance(reply, ShutdownReply)
            served.join(WAIT)
            assert not served.is_alive()
            with pytest.raises((ZMQTimeoutError, ServerLost)):
                client.request(Ping(request_id=0), 0.3)
    finally:
        viewer.request_stop()
        served.join(WAIT)
    assert sink.closed
    assert len(sink.images) == 1
    if transport_mode is TransportMode.IPC:
        assert not list(config.ipc_directory().glob("*.sock"))


# --- hostile input on the data socket -------------------------------------------------------


def test_viewer_survives_garbage_and_non_images(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    sink = Recorder()
    with streaming(sink, transport_mode, config) as (viewer, sender):
        address = get_zmq_transport_url(viewer.port_number, "127.0.0.1", transport_mode, config)
        context = zmq.Context()
        raw = context.socket(zmq.PUSH)
        raw.setsockopt(zmq.LINGER, 1000)
        try:
            authenticate(raw, address, config)
            raw.connect(address)
            raw.send_multipart([b"not json at all"])
            raw.send_multipart([b'{"v": 999}', b"x"])
            ack = Ack(image_id="x", tracker_key="y")
            raw.send_multipart([bytes(frame) for frame in codec.encode(ack)])
            lone = codec.image_from_array(
                numpy.arange(4, dtype=numpy.uint8), image_id="lone", metadata={"lone": True}
            )
            raw.send_multipart([bytes(memoryview(frame)) for frame in codec.encode(lone)])
        finally:
            raw.close()
            context.term()
        wait_until(lambda: viewer.statistics().processed == 1, "the image without ack_to")
        sender.send(numpy.ones(3, numpy.uint8), {"after": "garbage"})
        sender.wait_all_acked(WAIT)
        stats = viewer.statistics()
        server_stats = viewer.server.statistics()
    assert (stats.received, stats.processed, stats.failed) == (2, 2, 0)
    assert server_stats.data_errors >= 2
    assert [metadata for _, metadata in sink.images] == [{"lone": True}, {"after": "garbage"}]


# --- DirectorySink --------------------------------------------------------------------------


def test_directory_sink_writes_npy_and_json_and_keeps_numbering(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    first = DirectorySink(folder)
    big_endian = numpy.arange(6, dtype=">u2").reshape(2, 3)
    first(big_endian, {"channel": 1})
    first(numpy.array(3.5), {})
    first.close()
    second = sink_from_spec(f"npy:{folder}")
    assert isinstance(second, DirectorySink)
    second(numpy.ones((2, 2, 2), bool), {"nested": {"a": [1, 2]}})

    names = sorted(path.name for path in folder.iterdir())
    assert names == [
        f"image-{number:06d}.{suffix}" for number in range(3) for suffix in ("json", "npy")
    ]
    loaded = numpy.load(folder / "image-000000.npy")
    assert loaded.dtype.str == ">u2" and (loaded == big_endian).all()
    assert numpy.load(folder / "image-000001.npy").shape == ()
    assert numpy.load(folder / "image-000002.npy").dtype == bool
    sidecar = json.loads((folder / "image-000000.json").read_text())
    assert sidecar == {"dtype": ">u2", "shape": [2, 3], "metadata": {"channel": 1}}
    assert json.loads((folder / "image-000002.json").read_text())["metadata"] == {
        "nested": {"a": [1, 2]}
    }
    assert not list(folder.glob(".*.part"))


def test_directory_sink_behind_a_viewer(
    tmp_path: Path, transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    folder = tmp_path / "frames"
    with streaming(DirectorySink(folder, prefix="frame"), transport_mode, config) as (_, sender):
        for number in range(5):
            sender.send(numpy.full((3, 3), number, numpy.int16)[::2], {"n": number})
        sender.wait_all_acked(WAIT)
    for number in range(5):
        image = numpy.load(folder / f"frame-{number:06d}.npy")
        assert image.shape == (2, 3) and (image == number).all()
        meta = json.loads((folder / f"frame-{number:06d}.json").read_text())
        assert meta["metadata"] == {"n": number}


def test_sink_from_spec_refuses_unknown_specs() -> None:
    for spec in ("", "npy:", "tiff:/tmp/x", "npy"):
        with pytest.raises(ValueError, match="unknown sink"):
            sink_from_spec(spec)


# --- no port is left behind -----------------------------------------------------------------


def test_ports_are_free_after_close(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    sink = Recorder()
    with streaming(sink, transport_mode, config) as (viewer, sender):
        port = viewer.port_number
        sender.send(numpy.zeros(1, numpy.uint8))
        sender.wait_all_acked(WAIT)
    if transport_mode is TransportMode.IPC:
        assert not list(config.ipc_directory().glob("*.sock"))
    else:
        for number in (port, config.control_port(port)):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", number))
    # The same port can be served again at once.
    with StreamingServer.bind(
        Endpoint.of(port=port, transport_mode=transport_mode, config=config), sink
    ) as again:
        assert again.port_number == port
