"""Shapes, points and labels items: round trips through the codec, their rules at the edges of
their bounds, hostile items through a real viewer (acked failed with the reason, the viewer
goes on), and DirectorySink's files for them."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.strategies import items, labels_items, points_items, shapes_items, to_wire
from tests.test_streaming import wait_until
from zmqruntime import TransportMode, ZMQConfig
from zmqruntime.core import codec
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import Ack, AckOutcome, ArrayLayout, ItemFrame, ItemKind
from zmqruntime.errors import InvalidItem, LocalProtocolError, RemoteProtocolError
from zmqruntime.streaming import DirectorySink, ImageSender, StreamingServer, StreamMode
from zmqruntime.streaming.item_wire import frame_from_item, item_from_frame
from zmqruntime.streaming.items import (
    MAX_DIMS,
    MAX_FEATURE_NAME,
    MAX_FEATURES,
    MAX_POINTS,
    MAX_SHAPES,
    MAX_VERTICES,
    MIN_DIMS,
    Item,
    Labels,
    Points,
    Shapes,
    ShapeType,
)

WAIT = 10.0
ITEMS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _bits(array: numpy.ndarray[Any, Any]) -> tuple[str, tuple[int, ...], bytes]:
    return array.dtype.str, array.shape, array.tobytes()


def _wire_round_trip(item: Item) -> Item:
    frame = frame_from_item(item, image_id="i", tracker_key="k", metadata={"name": "x"})
    decoded = codec.decode(to_wire(codec.encode(frame)))
    assert isinstance(decoded, ItemFrame)
    assert attrs.evolve(decoded, buffers=()) == attrs.evolve(frame, buffers=())
    return item_from_frame(decoded)


@pytest.mark.parametrize(
    "strategy", [shapes_items(), points_items(), labels_items()], ids=["shapes", "points", "labels"]
)
@ITEMS
@given(data=st.data())
def test_encode_then_decode_is_the_identity_bit_for_bit(
    strategy: st.SearchStrategy[Item], data: st.DataObject
) -> None:
    item = data.draw(strategy)
    back = _wire_round_trip(item)
    assert back == item and type(back) is type(item)
    for name in ("data", "vertices", "vertex_counts"):
        if isinstance(getattr(item, name, None), numpy.ndarray):
            assert _bits(getattr(back, name)) == _bits(getattr(item, name))
    for name, column in getattr(item, "features", {}).items():
        assert _bits(back.features[name]) == _bits(column)  # type: ignore[union-attr]


def test_equality_is_bit_exact() -> None:
    points = Points.of([[1.0, 2.0]])
    assert points == Points.of([[1.0, 2.0]])
    assert points != Points(data=numpy.array([[1.0, 2.0]], numpy.float32))
    assert points != Points.of([[1.0, 2.0]], {"a": [1]})
    assert Labels.of([[1, 2]]) != Labels.of([[1, 3]])


def test_named_constructors_take_napari_forms() -> None:
    shapes = Shapes.of(
        [[[0, 0], [0, 4], [4, 4]], [[1, 1], [2, 2]]], ["polygon", "line"], {"cell": ["a", "b"]}
    )
    assert shapes.shape_type == (ShapeType.POLYGON, ShapeType.LINE)
    assert [part.tolist() for part in shapes.data] == [[[0, 0], [0, 4], [4, 4]], [[1, 1], [2, 2]]]
    assert shapes.vertices.dtype == numpy.float64
    assert shapes.features["cell"].dtype.kind == "U"
    text = numpy.array(["x", "y"], dtype=object)  # a pandas text column
    assert Points.of([[0, 0], [1, 1]], {"t": text}).features["t"].tolist() == ["x", "y"]
    assert Shapes.of([]).data == [] and Shapes.of([], "rectangle").vertices.shape == (0, 2)
    with pytest.raises(InvalidItem, match="'blob' is not a valid ShapeType; use one of rectangle"):
        Shapes.of([TRIANGLE], "blob")
    with pytest.raises(InvalidItem, match="same dimensions"):
        Shapes.of([[[0, 0], [1, 1]], [[0, 0, 0], [1, 1, 1]]], "line")


# --- rules at the edges of their bounds -------------------------------------------------------


def _lines(count: int) -> Shapes:
    return Shapes(
        vertices=numpy.zeros((2 * count, 2), numpy.float16),
        vertex_counts=numpy.full(count, 2),
        shape_type=(ShapeType.LINE,) * count,
    )


def _path(vertices: int) -> Shapes:
    return Shapes(
        vertices=numpy.zeros((vertices, 2), numpy.float16),
        vertex_counts=numpy.array([vertices]),
        shape_type=(ShapeType.PATH,),
    )


@pytest.mark.parametrize(
    ("make", "limit", "message"),
    [
        (lambda n: Points(data=numpy.zeros((n, 2), numpy.float16)), MAX_POINTS, "points exceed"),
        (_lines, MAX_SHAPES, "shapes exceed"),
        (_path, MAX_VERTICES, "vertices exceed"),
        (lambda n: Points.of([[0, 0]], {f"f{i}": [i] for i in range(n)}), MAX_FEATURES, "features"),
        (lambda n: Points.of([[0, 0]], {"x" * n: [1]}), MAX_FEATURE_NAME, "1 to 128 characters"),
        (lambda n: Points(data=numpy.zeros((1, n))), MAX_DIMS, "dimensions"),
        (lambda n: Labels(data=numpy.zeros((1,) * n, numpy.uint8)), MAX_DIMS, "dimensions"),
    ],
    ids=["points", "shapes", "vertices", "features", "feature-name", "dims", "labels-dims"],
)
def test_each_bound_holds_at_its_limit_and_refuses_one_more(
    make: Any, limit: int, message: str
) -> None:
    make(limit)
    with pytest.raises(InvalidItem, match=message):
        make(limit + 1)


def test_dimensions_start_at_two() -> None:
    Points(data=numpy.zeros((1, MIN_DIMS)))
    Labels(data=numpy.zeros((1,) * MIN_DIMS, numpy.int8))
    with pytest.raises(InvalidItem, match="dimensions"):
        Points(data=numpy.zeros((1, MIN_DIMS - 1)))
    with pytest.raises(InvalidItem, match="dimensions"):
        Labels(data=numpy.zeros((1,) * (MIN_DIMS - 1), numpy.int8))
    with pytest.raises(InvalidItem, match="1 to 128"):
        Points.of([[0, 0]], {"": [1]})


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("line", [2], [1, 3]),
        ("rectangle", [2, 4], [1, 3, 5]),
        ("ellipse", [2, 4], [3]),
        ("path", [2, 9], [1]),
        ("polygon", [3, 9], [2]),
    ],
)
def test_each_shape_type_takes_its_vertex_counts(
    kind: str, good: list[int], bad: list[int]
) -> None:
    for count in good:
        Shapes.of([numpy.zeros((count, 2))], kind)
    for count in bad:
        with pytest.raises(InvalidItem, match=f"a {kind} has {count} vertices"):
            Shapes.of([numpy.zeros((count, 2))], kind)


# --- hostile items through a real viewer ------------------------------------------------------


def _raw(kind: ItemKind, **arrays: Any) -> ItemFrame:
    """An item message with any arrays, made without the items' own checks."""
    named = {name.replace("__", "."): numpy.asarray(array) for name, array in arrays.items()}
    return ItemFrame(
        image_id="",
        kind=kind,
        arrays=tuple(
            ArrayLayout(name=name, dtype=array.dtype.str, shape=array.shape)
            for name, array in named.items()
        ),
        buffers=tuple(numpy.ascontiguousarray(array) for array in named.values()),
    )


def _shapes(vertices: Any, counts: Any, types: Any, **more: Any) -> ItemFrame:
    return _raw(
        ItemKind.SHAPES,
        vertices=numpy.asarray(vertices, numpy.float64),
        vertex_counts=numpy.asarray(counts, numpy.int64),
        shape_type=numpy.asarray(types),
        **more,
    )


TRIANGLE = [[0, 0], [0, 1], [1, 1]]
POINTS, SHAPES, LABELS = ItemKind.POINTS, ItemKind.SHAPES, ItemKind.LABELS
HOSTILE = {
    "nan": (_raw(POINTS, data=[[0.0, numpy.nan]]), "1 of 1 points have NaN or infinite"),
    "inf": (_shapes([[0, 0], [numpy.inf, 1]], [2], ["line"]), "1 of 2 vertices have NaN"),
    "ragged": (_shapes(TRIANGLE, [3, 2], ["polygon", "line"]), "ragged coordinates"),
    "negative-count": (_shapes(TRIANGLE, [5, -2], ["polygon", "line"]), "ragged coordinates"),
    "flat": (_raw(POINTS, data=[0.0, 1.0]), "must be an NxD array, not a 1-D"),
    "1-d": (_raw(POINTS, data=[[0.0], [1.0]]), "have 1 dimensions, not 2 to 6"),
    "7-d": (_raw(POINTS, data=numpy.zeros((1, 7))), "have 7 dimensions"),
    "ints": (_raw(POINTS, data=[[1, 2]]), "must be floats"),
    "too-many-points": (
        _raw(POINTS, data=numpy.zeros((MAX_POINTS + 1, 2), numpy.float16)),
        f"{MAX_POINTS + 1} points exceed the limit of {MAX_POINTS}",
    ),
    "types-count": (_shapes(TRIANGLE, [3], ["polygon", "line"]), "2 shape types for 1 shapes"),
    "too-many-shapes": (
        _shapes(
            numpy.zeros((2 * MAX_SHAPES + 2, 2)),
            [2] * (MAX_SHAPES + 1),
            ["line"] * (MAX_SHAPES + 1),
        ),
        f"{MAX_SHAPES + 1} shapes exceed the limit of {MAX_SHAPES}",
    ),
    "too-many-vertices": (
        _shapes(numpy.zeros((MAX_VERTICES + 1, 2)), [MAX_VERTICES + 1], ["path"]),
        "vertices exceed the limit",
    ),
    "features-count": (
        _raw(POINTS, data=numpy.zeros((3, 2)), features__size=[1.0, 2.0]),
        "feature 'size' must hold one value per point (3), has (2,)",
    ),
    "features-dtype": (
        _raw(POINTS, data=numpy.zeros((1, 2)), features__when=numpy.zeros(1, numpy.complex64)),
        "must be numbers, booleans or text",
    ),
    "float-labels": (_raw(LABELS, data=numpy.zeros((4, 4))), "integer dtype, not float64"),
    "bool-labels": (_raw(LABELS, data=numpy.zeros((4, 4), bool)), "integer dtype"),
    "1-d-labels": (_raw(LABELS, data=numpy.zeros(4, numpy.int32)), "has 1 dimensions"),
    "unknown-type": (_shapes(TRIANGLE, [3], ["blob"]), "unknown shape type 'blob'"),
    "line-of-3": (_shapes(TRIANGLE, [3], ["line"]), "a line has 3 vertices; it takes 2"),
    "types-not-text": (
        _raw(SHAPES, vertices=TRIANGLE, vertex_counts=[3], shape_type=[4]),
        "shape_type must be a 1-D text array",
    ),
    "missing-array": (_raw(SHAPES, vertices=numpy.zeros((2, 2))), "carries arrays ['vertices']"),
    "extra-array": (_raw(POINTS, data=numpy.zeros((1, 2)), extra=[1]), "carries arrays"),
}


@attrs.define
class RecordingSink:
    """Takes images and the item kinds it is given; remembers what it was handed."""

    item_kinds: tuple[str, ...] = ("shapes", "points", "labels")
    taken: list[tuple[str, Any]] = attrs.field(factory=list)

    def __call__(self, image: numpy.ndarray[Any, Any], metadata: Mapping[str, Any], /) -> None:
        self.taken.append(("image", image))

    def take_item(self, item: Item, metadata: Mapping[str, Any], /) -> None:
        self.taken.append((item.KIND.value, item))


def _stream(sink: Any, config: ZMQConfig) -> tuple[StreamingServer, ImageSender]:
    server = StreamingServer.bind(
        Endpoint.of(port=0, transport_mode=TransportMode.IPC, config=config), sink
    ).start()
    sender = ImageSender.to(
        Endpoint.of(port=server.port_number, transport_mode=TransportMode.IPC, config=config)
    ).connect()
    return server, sender


def _send_raw(sender: ImageSender, frame: ItemFrame, number: int) -> str:
    """Send a hand-made item message as the sender would: tracked, acked to its channel."""
    assert sender.tracker is not None
    image_id = f"{sender.tracker.viewer_key}-raw-{number}"
    sender.tracker.register_sent(image_id)
    tracked = attrs.evolve(
        frame, image_id=image_id, tracker_key=sender.tracker.viewer_key, ack_to=sender.ack_address
    )
    sender.client.send_data(tracked)
    return image_id


def _acks(sender: ImageSender) -> tuple[dict[str, Ack], threading.Lock]:
    acks: dict[str, Ack] = {}
    lock = threading.Lock()

    def remember(ack: Ack) -> None:
        with lock:
            acks[ack.image_id] = ack

    assert sender.channel is not None
    sender.channel.add_callback(remember)
    return acks, lock


def test_hostile_items_are_acked_failed_with_the_reason_and_the_viewer_goes_on(
    config: ZMQConfig,
) -> None:
    sink = RecordingSink()
    server, sender = _stream(sink, config)
    try:
        acks, lock = _acks(sender)
        ids = {
            _send_raw(sender, frame, n): name
            for n, (name, (frame, _)) in enumerate(HOSTILE.items())
        }
        good = Points.of([[1, 2]], {"id": [7]})
        sender.send(numpy.ones((4, 4), numpy.uint8), {"name": "after"})
        sender.send(good, {"name": "after"})
        sender.wait_all_acked(WAIT)
        stats = server.statistics()
    finally:
        sender.close()
        server.close()
    with lock:
        by_name = {ids[image_id]: ack for image_id, ack in acks.items() if image_id in ids}
    for name, (_frame, reason) in HOSTILE.items():
        ack = by_name[name]
        assert ack.outcome is AckOutcome.FAILED, name
        assert reason in ack.error, (name, ack.error)
        assert ack.error.startswith("InvalidItem: "), ack.error
    assert [kind for kind, _ in sink.taken] == ["image", "points"]
    assert sink.taken[1][1] == good
    assert (stats.failed, stats.processed) == (len(HOSTILE), 2)


def test_a_kind_the_sink_does_not_take_is_acked_failed_naming_it(config: ZMQConfig) -> None:
    shown: list[Any] = []
    plain_server, plain = _stream(lambda image, metadata: shown.append(image), config)
    picky = RecordingSink(item_kinds=("points",))
    picky_server, sender = _stream(picky, config)
    try:
        plain_acks, _ = _acks(plain)
        picky_acks, _ = _acks(sender)
        refused = plain.send(Labels.of(numpy.ones((2, 2), numpy.uint8)))
        plain.send(numpy.zeros((2, 2)))
        not_taken = sender.send(Shapes.of([TRIANGLE]))
        sender.send(Points.of([[0, 0]]))
        plain.wait_all_acked(WAIT)
        sender.wait_all_acked(WAIT)
    finally:
        for closing in (plain, sender, plain_server, picky_server):
            closing.close()
    assert "sink (function) takes no labels items" in plain_acks[refused].error
    assert "takes no shapes items" in picky_acks[not_taken].error
    assert len(shown) == 1 and [kind for kind, _ in picky.taken] == ["points"]


# --- DirectorySink ----------------------------------------------------------------------------


def _read_item(folder: Path, stem: str) -> tuple[dict[str, Any], dict[str, Any]]:
    sidecar = json.loads((folder / f"{stem}.json").read_text())
    arrays = {
        name: numpy.load(folder / f"{stem}{layout['suffix']}")
        for name, layout in sidecar["arrays"].items()
    }
    for name, layout in sidecar["arrays"].items():
        assert (arrays[name].dtype.str, list(arrays[name].shape)) == (
            layout["dtype"],
            layout["shape"],
        )
    return sidecar, arrays


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(item=items())
def test_directory_sink_writes_items_as_npy_files_and_a_sidecar(
    tmp_path_factory: pytest.TempPathFactory, item: Item
) -> None:
    folder = tmp_path_factory.mktemp("items")
    sink = DirectorySink(folder)
    sink(numpy.zeros((2, 2), numpy.uint8), {})
    sink.take_item(item, {"name": "cells"})
    sidecar, arrays = _read_item(folder, "image-000001")
    assert sidecar["kind"] == item.KIND.value and sidecar["metadata"] == {"name": "cells"}
    frame = frame_from_item(item, image_id="i")
    assert list(arrays) == [layout.name for layout in frame.arrays]
    rebuilt = item_from_frame(
        attrs.evolve(frame, buffers=tuple(memoryview(array) for array in arrays.values()))
    )
    assert rebuilt == item
    assert not [name for name in os.listdir(folder) if name.startswith(".")]  # no .part left


def test_directory_sink_never_overwrites_an_items_array_and_leaves_no_litter(
    tmp_path: Path,
) -> None:
    stray = tmp_path / "image-000000.1.npy"  # not ours: item 0 cannot be published here
    stray.write_bytes(b"keep")
    item = Shapes.of([TRIANGLE], "polygon", {"area": [0.5]})
    DirectorySink(tmp_path).take_item(item, {})
    assert stray.read_bytes() == b"keep"
    assert sorted(os.listdir(tmp_path)) == [
        "image-000000.1.npy",
        "image-000001.1.npy",
        "image-000001.2.npy",
        "image-000001.3.npy",
        "image-000001.json",
        "image-000001.npy",
    ]
    assert _read_item(tmp_path, "image-000001")[1]["features.area"].tolist() == [0.5]


def test_latest_frame_mode_replaces_an_item_only_by_a_newer_one_of_its_kind(
    config: ZMQConfig,
) -> None:
    release = threading.Event()
    sink = RecordingSink()

    def slow(image: numpy.ndarray[Any, Any], metadata: Mapping[str, Any], /) -> None:
        sink.taken.append(("image", int(image[0, 0])))
        if not release.wait(WAIT):
            raise AssertionError("the test never released the sink")

    server = StreamingServer.bind(
        Endpoint.of(port=0, transport_mode=TransportMode.IPC, config=config),
        _Slow(slow, sink),
        mode=StreamMode.LATEST,
    ).start()
    sender = ImageSender.to(
        Endpoint.of(port=server.port_number, transport_mode=TransportMode.IPC, config=config)
    ).connect()
    try:
        sender.send(numpy.zeros((2, 2), numpy.uint8))
        wait_until(lambda: sink.taken == [("image", 0)], "the first image in the sink")
        first, newest = Points.of([[0, 0]]), Points.of([[1, 1]])
        sender.send(first)
        sender.send(Labels.of([[1, 2]]))
        sender.send(numpy.ones((2, 2), numpy.uint8))
        sender.send(newest)
        wait_until(lambda: server.statistics().waiting == 4, "4 waiting")
        release.set()
        sender.wait_all_acked(WAIT)
        assert sender.tracker is not None
        stats = sender.tracker.statistics()
    finally:
        release.set()
        sender.close()
        server.close()
    assert sink.taken[0] == ("image", 0)
    assert sorted(map(str, sink.taken[1:])) == sorted(
        map(str, [("labels", Labels.of([[1, 2]])), ("image", 1), ("points", newest)])
    )
    assert (stats.processed, stats.skipped) == (4, 1)  # only the older points were skipped


@attrs.define
class _Slow:
    """An item sink whose images go to ``images`` and items to ``items``."""

    images: Any
    items: RecordingSink
    item_kinds: tuple[str, ...] = ("points", "labels")

    def __call__(self, image: numpy.ndarray[Any, Any], metadata: Mapping[str, Any], /) -> None:
        self.images(image, metadata)

    def take_item(self, item: Item, metadata: Mapping[str, Any], /) -> None:
        self.items.take_item(item, metadata)


def test_the_codec_refuses_item_arrays_that_do_not_pair_with_their_frames() -> None:
    frame = frame_from_item(Points.of([[1, 2]], {"a": [1]}), image_id="i")
    wire = to_wire(codec.encode(frame))
    header = json.loads(wire[0])
    with pytest.raises(RemoteProtocolError, match="2 array layouts and 1 buffer frames"):
        codec.decode([json.dumps({**header, "frames": 1}).encode(), wire[1]])
    twice = {**header, "arrays": [header["arrays"][0]] * 2}
    with pytest.raises(RemoteProtocolError, match="names an array twice"):
        codec.decode([json.dumps(twice).encode(), wire[1], wire[1]])
    with pytest.raises(RemoteProtocolError, match=r"array 'data'.*needs 16 bytes"):
        codec.decode([wire[0], wire[1][:-1], wire[2]])
    with pytest.raises(LocalProtocolError, match="pair up"):
        codec.encode(attrs.evolve(frame, buffers=frame.buffers[:1]))
    assert isinstance(codec.decode(wire), ItemFrame)  # the untouched frames decode
