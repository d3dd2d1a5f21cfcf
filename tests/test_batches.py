"""Batches: images and items sent as one message with the batch's metadata; round trips, a real
viewer with a per-item sink and a batch-aware sink, an ack per item and per batch (only after
the sink returned), hostile batches, the bounds at their edges, max_in_flight, latest-frame
mode and ack_to with batches, and the shipped sinks' batch support."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst

from tests.strategies import batch_frames, image_dtypes, items, json_objects, to_wire
from tests.test_streaming import wait_until
from zmqruntime import AckChannel, ConfigurationError, TransportMode, ZMQConfig, ZMQTimeoutError
from zmqruntime.core import codec
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import (
    MAX_BATCH_ITEMS,
    Ack,
    AckOutcome,
    ArrayLayout,
    BatchEntry,
    BatchFrame,
    ItemKind,
)
from zmqruntime.core.queue_tracker import QueueTracker
from zmqruntime.core.wire import MAX_DEPTH
from zmqruntime.errors import RemoteProtocolError
from zmqruntime.streaming import (
    DirectorySink,
    ImageSender,
    Points,
    SentBatch,
    Shapes,
    StreamingServer,
    StreamMode,
)
from zmqruntime.streaming.batches import VIEWER_LIMITS, batch_frame, batch_metadata, show_batch

WAIT = 10.0
Image = numpy.ndarray[Any, Any]
LIMITS = {"backlog_limit": 64, "backlog_bytes": 1 << 20}


class BatchRecorder:
    """A batch-aware sink (takes points too) that keeps each call; ``gate`` holds it."""

    item_kinds = ("points",)

    def __init__(self, gate: threading.Event | None = None, fail: str = "") -> None:
        self.batches: list[tuple[list[Any], list[dict[str, Any]], dict[str, Any]]] = []
        self.singles: list[Any] = []
        self.entered = threading.Event()
        self.gate, self.fail = gate, fail

    def __call__(self, image: Image, metadata: Mapping[str, Any], /) -> None:
        self.singles.append(image)

    def take_batch(
        self,
        values: Sequence[Any],
        metadatas: Sequence[Mapping[str, Any]],
        batch_metadata: Mapping[str, Any],
        /,
    ) -> None:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT)
        if self.fail:
            raise RuntimeError(self.fail)
        copies = [value.copy() if isinstance(value, numpy.ndarray) else value for value in values]
        self.batches.append((copies, [dict(m) for m in metadatas], dict(batch_metadata)))


class ItemRecorder:
    """A per-item sink; raises for an item whose metadata has ``"fail"``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Image, dict[str, Any]]] = []

    def __call__(self, image: Image, metadata: Mapping[str, Any], /) -> None:
        if "fail" in metadata:
            raise ValueError(metadata["fail"])
        self.calls.append((image.copy(), dict(metadata)))


@contextlib.contextmanager
def viewer_and_sender(
    sink: Any,
    config: ZMQConfig,
    mode: TransportMode = TransportMode.IPC,
    viewer_options: Mapping[str, Any] | None = None,
    **sender_fields: Any,
) -> Iterator[tuple[StreamingServer, ImageSender, list[Ack]]]:
    """A viewer, a sender to it, and the acks its channel heard, in order."""
    at = Endpoint.of(port=0, transport_mode=mode, config=config)
    with StreamingServer.bind(at, sink, **(viewer_options or {})) as viewer:
        to = Endpoint.of(viewer.port_number, transport_mode=mode, config=config)
        with ImageSender.to(to, **sender_fields) as sender:
            acks: list[Ack] = []
            if sender.channel is not None:
                sender.channel.add_callback(acks.append)
            yield viewer, sender, acks


@contextlib.contextmanager
def raw_push(url: str) -> Iterator[zmq.Socket[bytes]]:
    """A hand-made PUSH socket to a viewer over IPC (no credentials needed there)."""
    with zmq.Context() as context, context.socket(zmq.PUSH) as push:
        push.setsockopt(zmq.LINGER, 5000)
        push.connect(url)
        yield push


def outcomes(acks: list[Ack]) -> list[tuple[str, str, str]]:
    return [(ack.image_id, ack.outcome.value, ack.error) for ack in acks]


def _bits(array: Image) -> tuple[str, tuple[int, ...], bytes]:
    return array.dtype.str, array.shape, array.tobytes()


# --- round trip -----------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(
        npst.arrays(image_dtypes(), npst.array_shapes(min_dims=0, max_dims=3, max_side=4))
        | items(),
        min_size=1,
        max_size=4,
    ),
    metadata=json_objects(3),
)
def test_a_batch_reaches_the_sink_as_sent_bit_for_bit(values: list[Any], metadata: Any) -> None:
    metas = [{"i": index} for index in range(len(values))]
    ids = [f"p-{number}" for number in range(len(values) + 1)]
    frame = batch_frame(values, metadata, metas, ids, tracker_key="k")
    decoded = codec.decode(to_wire(codec.encode(frame)))
    assert isinstance(decoded, BatchFrame)
    assert decoded.entries == frame.entries and decoded.metadata == metadata
    sink = BatchRecorder()
    sink.item_kinds = ("shapes", "points", "labels")
    acked = show_batch(sink, decoded, {"backlog_limit": 4, "backlog_bytes": 1 << 30})
    assert acked == [(image_id, AckOutcome.PROCESSED, "") for image_id in ids]
    [(got, got_metas, got_batch)] = sink.batches
    assert got_metas == metas and got_batch == metadata
    for back, sent in zip(got, values, strict=True):
        if isinstance(sent, numpy.ndarray):
            assert _bits(back) == _bits(numpy.asarray(sent, order="C"))
        else:
            assert back == sent


# --- through a real viewer ------------------------------------------------------------------


def test_a_per_item_sink_gets_each_item_in_order_and_every_id_is_acked(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    sink = ItemRecorder()
    images = [numpy.full((3, 4), value, numpy.uint16) for value in range(3)]
    with viewer_and_sender(sink, config, transport_mode) as (viewer, sender, acks):
        sent = sender.send_batch(
            images,
            {"well": "A01", "channel": "?"},
            item_metadata=[{"channel": "dapi"}, {"channel": "gfp"}, {}],
        )
        sender.wait_all_acked(WAIT)
        assert isinstance(sent, SentBatch) and len(sent.item_ids) == 3
        assert sender.tracker is not None
        assert sender.tracker.get_progress() == (4, 4)  # 3 items and the batch
        wait_until(lambda: len(acks) == 4, "the acks")
        assert outcomes(acks) == [(i, "processed", "") for i in [*sent.item_ids, sent.batch_id]]
        stats = viewer.statistics()
        assert (stats.received, stats.processed, stats.backlog, stats.backlog_bytes) == (3, 3, 0, 0)
        assert stats.peak_backlog == 3
    assert [meta for _, meta in sink.calls] == [
        {"well": "A01", "channel": "dapi"},
        {"well": "A01", "channel": "gfp"},
        {"well": "A01", "channel": "?"},
    ]
    for (got, _), image in zip(sink.calls, images, strict=True):
        numpy.testing.assert_array_equal(got, image)


def test_a_batch_sink_gets_one_call_and_nothing_is_acked_before_it_returns(
    config: ZMQConfig, no_thread_leak: None
) -> None:
    gate = threading.Event()
    sink = BatchRecorder(gate)
    points = Points.of([[1, 2], [3, 4]])
    with viewer_and_sender(sink, config) as (_viewer, sender, acks):
        sent = sender.send_batch([numpy.ones((2, 2)), points], {"colormap": "gray"})
        assert sink.entered.wait(WAIT)
        assert sender.tracker is not None
        assert sender.tracker.get_pending_count() == 3 and acks == []  # nothing acked early
        gate.set()
        sender.wait_all_acked(WAIT)
        wait_until(lambda: len(acks) == 3, "the acks")
        assert [ack.image_id for ack in acks] == [*sent.item_ids, sent.batch_id]
    [(values, metas, batch_metadata)] = sink.batches
    assert values[1] == points and metas == [{}, {}] and batch_metadata == {"colormap": "gray"}
    assert sink.singles == []


def test_a_failing_item_fails_alone_with_a_per_item_sink_and_all_with_a_batch_sink(
    config: ZMQConfig, no_thread_leak: None
) -> None:
    image = numpy.zeros((2, 2), numpy.uint8)
    with viewer_and_sender(ItemRecorder(), config) as (_viewer, sender, acks):
        sent = sender.send_batch([image] * 3, item_metadata=[{}, {"fail": "no disk"}, {}])
        sender.wait_all_acked(WAIT)
        wait_until(lambda: len(acks) == 4, "the acks")
        first, second, third = sent.item_ids
        assert outcomes(acks) == [
            (first, "processed", ""),
            (second, "failed", "ValueError: no disk"),
            (third, "processed", ""),
            (sent.batch_id, "failed", "1 of 3 items failed; the first: ValueError: no disk"),
        ]
    with viewer_and_sender(BatchRecorder(fail="GPU lost"), config) as (viewer, sender, acks):
        sent = sender.send_batch([image] * 2)
        sender.wait_all_acked(WAIT)
        wait_until(lambda: len(acks) == 3, "the acks")
        assert {(ack.outcome, ack.error) for ack in acks} == {
            (AckOutcome.FAILED, "RuntimeError: GPU lost")
        }
        assert viewer.statistics().failed == 2


def _hostile(sender: ImageSender, entries: list[tuple[BatchEntry, list[Any]]]) -> BatchFrame:
    """A batch made by hand, past the sender's own checks, acked to ``sender``'s channel."""
    return BatchFrame(
        batch_id="evil-9",
        entries=tuple(entry for entry, _ in entries),
        buffers=tuple(buffer for _, buffers in entries for buffer in buffers),
        tracker_key="evil",
        ack_to=sender.ack_address,
    )


def _image_entry(image_id: str, array: Image) -> tuple[BatchEntry, list[Any]]:
    layout = ArrayLayout(name="pixels", dtype=array.dtype.str, shape=array.shape)
    return BatchEntry(image_id=image_id, arrays=(layout,)), [array]


def _points_entry(image_id: str, data: Any) -> tuple[BatchEntry, list[Any]]:
    array = numpy.asarray(data, numpy.float64)
    layout = ArrayLayout(name="data", dtype=array.dtype.str, shape=array.shape)
    return BatchEntry(image_id=image_id, kind=ItemKind.POINTS, arrays=(layout,)), [array]


def test_a_malformed_item_fails_the_whole_batch_and_the_viewer_goes_on(
    config: ZMQConfig, no_thread_leak: None
) -> None:
    sink = BatchRecorder()
    good = numpy.ones((2, 2), numpy.uint8)
    with viewer_and_sender(sink, config) as (viewer, sender, acks):
        nan = _hostile(sender, [_image_entry("a", good), _points_entry("b", [[numpy.nan, 0]])])
        sender.client.send_data(nan)
        wait_until(lambda: len(acks) == 3, "the acks of the NaN batch")
        bad = "InvalidItem: points: 1 of 1 points have NaN or infinite coordinates"
        whole = f"batch 'evil-9' was not shown: its item 1 ('b') failed: {bad}"
        expected = [("a", "failed", whole), ("b", "failed", bad), ("evil-9", "failed", whole)]
        assert outcomes(acks) == expected
        acks.clear()
        frames = to_wire(codec.encode(nan))
        with raw_push(sender.viewer_address) as push:
            push.send_multipart(frames[:-1])  # a buffer frame missing: dropped, logged
        sender.send_batch([good])  # the viewer lives on
        sender.wait_all_acked(WAIT)
        assert viewer.statistics().failed == 2
    shapes = Shapes.of([[[0, 0], [1, 1]]], "line")
    frame = batch_frame([good, shapes], {}, [{}, {}], "abc")
    not_taken = show_batch(sink, frame, LIMITS)
    assert [outcome for _, outcome, _ in not_taken] == [AckOutcome.FAILED] * 3
    assert (
        "takes no shapes items: give the viewer a sink with 'shapes' in its item_kinds"
        in (not_taken[1][2])
    )
    assert len(sink.batches) == 1


# --- bounds ---------------------------------------------------------------------------------


def test_items_per_batch_hold_at_the_limit_and_refuse_one_more() -> None:
    empty = numpy.zeros(0, numpy.uint8)
    ids = [str(number) for number in range(MAX_BATCH_ITEMS + 1)]
    frame = batch_frame([empty] * MAX_BATCH_ITEMS, {}, [{}] * MAX_BATCH_ITEMS, ids)
    frames = to_wire(codec.encode(frame))
    assert len(codec.decode(frames).entries) == MAX_BATCH_ITEMS  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=f"a batch holds 1 to {MAX_BATCH_ITEMS} items, not 1025"):
        batch_frame([empty] * 1025, {}, [{}] * 1025, [*ids, "1025"])
    with pytest.raises(ValueError, match="not 0"):
        batch_frame([], {}, [], ["b"])
    header = json.loads(frames[0])
    header["entries"].append(header["entries"][0])
    header["frames"] += 1
    with pytest.raises(RemoteProtocolError, match="entries"):
        codec.decode([json.dumps(header).encode(), *frames[1:], frames[1]])


def test_a_batch_must_fit_the_viewers_backlog_or_the_sender_refuses_it(
    config: ZMQConfig, no_thread_leak: None
) -> None:
    sink = BatchRecorder()
    options = {"backlog_limit": 3, "backlog_bytes": 1000}
    with viewer_and_sender(sink, config, viewer_options=options) as (viewer, sender, acks):
        sender.send_batch([numpy.zeros(500, numpy.uint8), numpy.zeros(500, numpy.uint8)])
        sender.send_batch([numpy.zeros(1, numpy.uint8)] * 3)
        with pytest.raises(
            ValueError, match="1001 bytes exceed the viewer's backlog_bytes of 1000"
        ):
            sender.send_batch([numpy.zeros(1001, numpy.uint8)])
        with pytest.raises(ValueError, match="4 items exceed the viewer's backlog_limit of 3"):
            sender.send_batch([numpy.zeros(1, numpy.uint8)] * 4)
        sender.wait_all_acked(WAIT)
        assert sender.tracker is not None and sender.tracker.get_progress() == (7, 7)
        too_big = _hostile(sender, [_image_entry("x", numpy.zeros(1001, numpy.uint8))])
        sender.client.send_data(too_big)  # past the sender's check: the viewer refuses it
        wait_until(lambda: len(acks) == 9, "the acks of the batch too large")
        assert acks[-1].error == (
            "batch refused: 1001 bytes exceed the viewer's backlog_bytes of 1000; send it as "
            "smaller batches"
        )
        assert viewer.statistics().backlog_bytes == 0
    assert len(sink.batches) == 2


def test_max_in_flight_counts_a_batchs_items_and_itself(
    config: ZMQConfig, no_thread_leak: None
) -> None:
    gate = threading.Event()
    sink = BatchRecorder(gate)
    image = numpy.zeros((2, 2), numpy.uint8)
    with viewer_and_sender(sink, config, max_in_flight=4, send_timeout=0.3) as (_v, sender, _a):
        sender.send_batch([image] * 2)  # 3 ids: one slot left
        assert sink.entered.wait(WAIT)
        with pytest.raises(ZMQTimeoutError, match="max_in_flight=4"):
            sender.send_batch([image] * 2)  # 3 more ids do not fit
        sender.send(image)  # one does
        with pytest.raises(ZMQTimeoutError, match="max_in_flight=4"):
            sender.send(image)
        gate.set()
        sender.send_batch([image] * 6)  # larger than the window: sent once nothing is pending
        assert sender.tracker is not None
        assert sender.tracker.get_pending_count() <= 7
        sender.wait_all_acked(WAIT)
        assert sender.tracker.get_progress() == (11, 11)
    assert [len(values) for values, _, _ in sink.batches] == [2, 6]


def test_latest_frame_mode_skips_a_whole_older_batch(
    config: ZMQConfig, no_thread_leak: None
) -> None:
    gate = threading.Event()
    sink = BatchRecorder(gate)
    options = {"mode": StreamMode.LATEST}
    with viewer_and_sender(sink, config, viewer_options=options) as (viewer, sender, acks):
        sender.send_batch([numpy.zeros(1)], {"n": 0})
        assert sink.entered.wait(WAIT)
        older = sender.send_batch([numpy.zeros(1)] * 2, {"n": 1})
        sender.send_batch([numpy.zeros(1)] * 3, {"n": 2})
        wait_until(lambda: viewer.statistics().waiting == 2, "both batches waiting")
        gate.set()
        sender.wait_all_acked(WAIT)
        skipped = [ack.image_id for ack in acks if ack.outcome is AckOutcome.SKIPPED]
        assert skipped == [*older.item_ids, older.batch_id]
        assert viewer.statistics().skipped == 2
    assert [batch for _, _, batch in sink.batches] == [{"n": 0}, {"n": 2}]


def test_batch_acks_go_to_another_processs_channel_with_ack_to(
    config: ZMQConfig, no_thread_leak: None
) -> None:
    at = Endpoint.of(port=0, transport_mode=TransportMode.IPC, config=config)
    with AckChannel.bind(at) as channel:
        tracker = channel.registry.get_or_create_tracker("gui")
        with viewer_and_sender(
            ItemRecorder(), config, ack_to=channel.address, tracker_key="gui", max_in_flight=3
        ) as (_viewer, sender, _acks):
            for _ in range(3):
                sender.send_batch([numpy.zeros(2)] * 2)  # 3 ids each: one batch at a time
            sender.wait_all_acked(WAIT)
        assert tracker.wait_all_acknowledged(WAIT)
        assert tracker.get_progress() == (9, 9)


def test_the_old_send_batch_signature_is_refused_with_the_new_one_named(
    config: ZMQConfig, no_thread_leak: None
) -> None:
    with viewer_and_sender(ItemRecorder(), config) as (_viewer, sender, _acks):
        image = numpy.zeros(2)
        with pytest.raises(TypeError, match="per-item metadata goes in item_metadata="):
            sender.send_batch([image, image], [{"i": 0}, {"i": 1}])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="2 items but 1 metadata"):
            sender.send_batch([image, image], item_metadata=[{}])
        with pytest.raises(TypeError, match=r"item_metadata\[0\]"):
            sender.send_batch([image], item_metadata=[{"x": object()}])
        assert sender.tracker is not None and sender.tracker.get_progress() == (0, 0)


# --- the shipped sinks ----------------------------------------------------------------------


def test_directory_sink_writes_a_batch_with_its_metadata_in_the_sidecars(
    config: ZMQConfig, tmp_path: Path, no_thread_leak: None
) -> None:
    sink = DirectorySink(tmp_path / "out")
    points = Points.of([[1, 2]])
    with viewer_and_sender(sink, config) as (_viewer, sender, _acks):
        sender.send_batch(
            [numpy.arange(4, dtype=numpy.uint16), points],
            {"well": "B02"},
            item_metadata=[{"c": 1}, {"c": 2}],
        )
        sender.wait_all_acked(WAIT)
    first, second = (
        json.loads((tmp_path / "out" / f"image-{n:06d}.json").read_text()) for n in (0, 1)
    )
    assert first["metadata"] == {"c": 1} and second["metadata"] == {"c": 2}
    assert first["batch"] == {"index": 0, "size": 2, "metadata": {"well": "B02"}}
    assert second["batch"]["index"] == 1 and second["kind"] == "points"
    numpy.testing.assert_array_equal(
        numpy.load(tmp_path / "out" / "image-000000.npy"), numpy.arange(4)
    )


def _nested(levels: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return dict(value)


def test_an_items_metadata_nests_two_levels_less_than_the_batchs() -> None:
    image = numpy.zeros(1)
    deepest = MAX_DEPTH - 2  # it sits in the list of entries, in its entry
    for item_metadata, metadata in (([_nested(deepest)], {}), ([{}], _nested(MAX_DEPTH))):
        frame = batch_frame([image], metadata, item_metadata, "ab")
        assert batch_metadata(1, metadata, item_metadata) == (metadata, item_metadata)
        decoded = codec.decode(to_wire(codec.encode(frame)))
        assert isinstance(decoded, BatchFrame) and decoded.entries == frame.entries
        assert decoded.metadata == metadata
    with pytest.raises(TypeError, match=r"item_metadata\[0\].* nests deeper"):
        batch_metadata(1, None, [_nested(deepest + 1)])
    with pytest.raises(TypeError, match=r"metadata.* nests deeper"):
        batch_metadata(1, _nested(MAX_DEPTH + 1), None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h, b: (h, b[:-1]), "2 array layouts and 1 buffer frames"),
        (lambda h, b: (_set(h, 0, "dtype", "<U2"), b), "entry 'a', array 'pixels'"),
        (lambda h, b: (_set(h, 0, "shape", [3]), b), "entry 'a', array 'pixels'"),
        (lambda h, b: (_twice(h), [*b, b[0]]), "is an image: it has one array, not 2"),
        (lambda h, b: (_set(h, 1, "kind", "circles"), b), "kind"),
        (lambda h, b: ({**h, "entries": []}, []), "entries"),
    ],
    ids=["a-buffer-missing", "text-pixels", "wrong-size", "two-arrays", "kind", "empty"],
)
def test_a_batch_whose_entries_and_frames_disagree_does_not_decode(
    change: Any, message: str
) -> None:
    points = Points.of([[1, 2]])
    frame = batch_frame(
        [numpy.zeros(2, numpy.uint8), points],
        {},
        [{}, {}],
        "abb",
    )
    first, *buffers = to_wire(codec.encode(frame))
    header, buffers = change(json.loads(first), buffers)
    header["frames"] = len(buffers)
    with pytest.raises(RemoteProtocolError, match=message):
        codec.decode([json.dumps(header).encode(), *buffers])


def _set(header: dict[str, Any], index: int, key: str, value: Any) -> dict[str, Any]:
    entry = header["entries"][index]
    if key in ("dtype", "shape"):
        entry["arrays"][0][key] = value
    else:
        entry[key] = value
    return header


def _twice(header: dict[str, Any]) -> dict[str, Any]:
    arrays = header["entries"][0]["arrays"]
    arrays.append({**arrays[0], "name": "more"})
    return header


def test_a_viewer_that_does_not_know_batches_is_named_at_the_sender(
    config: ZMQConfig, no_thread_leak: None
) -> None:
    with viewer_and_sender(ItemRecorder(), config, send_timeout=5) as (viewer, sender, _acks):
        table = viewer.server.requests  # as an older viewer: no zmqruntime.viewer_limits
        table.handlers = {k: v for k, v in table.handlers.items() if k != VIEWER_LIMITS}
        with pytest.raises(ConfigurationError, match=r"takes no batches: .*; upgrade it"):
            sender.send_batch([numpy.zeros(1)])
        assert sender.tracker is not None and sender.tracker.get_progress() == (0, 0)


class PerItemSink:
    """A plain ItemSink (no take_batch) taking every item kind."""

    item_kinds = ("shapes", "points", "labels")

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, image: Image, metadata: Mapping[str, Any], /) -> None:
        self.seen.append("image")

    def take_item(self, item: Any, metadata: Mapping[str, Any], /) -> None:
        self.seen.append(type(item).KIND.value)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=batch_frames(), whole=st.booleans())
def test_any_batch_that_decodes_is_acked_id_by_id_and_never_raises(
    frame: BatchFrame, whole: bool
) -> None:
    decoded = codec.decode(to_wire(codec.encode(frame)))
    assert isinstance(decoded, BatchFrame)
    sink: Any = BatchRecorder() if whole else PerItemSink()
    if whole:
        sink.item_kinds = ("shapes", "points", "labels")
    acked = show_batch(sink, decoded, {"backlog_limit": 4, "backlog_bytes": 1 << 30})
    ids = [entry.image_id for entry in decoded.entries] + [decoded.batch_id]
    assert [image_id for image_id, _, _ in acked] == ids
    outcomes = {outcome for _, outcome, _ in acked}
    shown = sink.batches if whole else sink.seen
    if outcomes == {AckOutcome.PROCESSED}:
        kinds = [entry.kind.value if entry.kind else "image" for entry in decoded.entries]
        assert len(shown) == 1 if whole else shown == kinds
    else:  # a bad entry: nothing of the batch was shown
        assert outcomes == {AckOutcome.FAILED} and shown == []


def test_the_tracker_registers_a_batch_when_all_its_ids_fit_or_nothing_is_pending() -> None:
    tracker = QueueTracker("k")
    assert tracker.wait_and_register_all(["a", "b", "c", "d"], 4, 0)  # exactly the window
    assert not tracker.wait_and_register_all(["e"], 4, 0)  # one past it
    tracker.mark_processed("a")
    assert not tracker.wait_and_register_all(["e", "f"], 4, 0)  # 3 pending + 2 > 4
    assert tracker.wait_and_register_all(["e"], 4, 0)
    for image_id in "bcde":
        tracker.mark_processed(image_id)
    assert tracker.wait_and_register_all(list("ghijk"), 4, 0)  # larger: sent when none pending
    assert not tracker.wait_and_register_all(["l"], 4, 0)
    assert tracker.get_progress() == (5, 10)
