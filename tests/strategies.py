"""Hypothesis strategies for zmqruntime's wire messages, and hostile frames to fuzz with.

Valid values: one strategy per message class in :data:`MESSAGE_STRATEGIES` (and
:func:`messages` for any of them), plus the nested values :func:`execution_records`,
:func:`server_summaries` and :func:`progress_events`. Every value they produce encodes: JSON
fields hold only finite floats, request ids are in ``0..2**63-1``, enums come from their members.

Invalid input: :func:`garbage_frames` is random bytes; :func:`hostile_frames` is structured
garbage aimed at every rule of the decoder (mutated valid encodings, wrong versions and types,
frame-count lies, impossible images, strict-JSON violations, deep nesting, bad UTF-8). Both
produce ``list[bytes]``, as a socket would deliver, so they can be sent to live servers as is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst

from zmqruntime.core import codec
from zmqruntime.core.listing_messages import MAX_LISTED
from zmqruntime.core.messages import (
    MESSAGE_CLASSES,
    PROTOCOL_VERSION,
    Accepted,
    Ack,
    AckOutcome,
    AppEvent,
    AppReply,
    AppRequest,
    ArrayLayout,
    Attach,
    BatchEntry,
    BatchFrame,
    Cancel,
    CommandFrame,
    CommandReply,
    Completion,
    ControlMessageType,
    ErrorReply,
    Execute,
    ExecutionRecord,
    ExecutionStatus,
    ImageFrame,
    ImageSent,
    ItemFrame,
    ItemKind,
    ListRequest,
    Message,
    Ping,
    Pong,
    ProcessStats,
    ProgressEvent,
    RecordList,
    RecordReply,
    ServerSummary,
    Shutdown,
    ShutdownReply,
    StatusRequest,
    SummaryReply,
)
from zmqruntime.errors import ErrorCode
from zmqruntime.streaming.batches import batch_frame
from zmqruntime.streaming.item_wire import frame_from_item
from zmqruntime.streaming.items import MAX_DIMS, MIN_DIMS, Item, Labels, Points, Shapes, ShapeType

__all__ = [
    "HOSTILE_STRATEGIES",
    "MAX_REQUEST_ID",
    "MESSAGE_STRATEGIES",
    "batch_frames",
    "buffers",
    "control_requests",
    "encoded_frames",
    "execution_records",
    "finite_floats",
    "garbage_frames",
    "hostile_frames",
    "image_dtypes",
    "image_frames",
    "item_frames",
    "items",
    "json_objects",
    "json_values",
    "labels_items",
    "messages",
    "points_items",
    "progress_events",
    "request_ids",
    "server_summaries",
    "shapes_items",
    "texts",
    "to_wire",
]

MAX_REQUEST_ID = 2**63 - 1

# --- building blocks ------------------------------------------------------------------------


def texts(max_size: int = 24) -> st.SearchStrategy[str]:
    """Unicode text (any code point but lone surrogates, which UTF-8 cannot carry)."""
    return st.text(max_size=max_size)


def finite_floats() -> st.SearchStrategy[float]:
    """Floats a strict JSON header can carry: no NaN, no infinities (-0.0 and subnormals yes)."""
    return st.floats(allow_nan=False, allow_infinity=False)


def request_ids() -> st.SearchStrategy[int]:
    """Every id the protocol allows, with the edges drawn often."""
    return st.one_of(st.sampled_from([0, 1, MAX_REQUEST_ID]), st.integers(0, MAX_REQUEST_ID))


def _ints() -> st.SearchStrategy[int]:
    """Integers for plain int fields: the codec bounds none of them, so neither do we (much)."""
    return st.integers(-(2**64), 2**64)


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Nested JSON: None, bool, int, finite float, str, lists and str-keyed dicts of them."""
    scalars = st.none() | st.booleans() | _ints() | finite_floats() | texts()
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(texts(12), children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def json_objects(max_size: int = 5) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object (the ``JSONObject`` fields: progress ``fields``, image ``metadata``)."""
    return st.dictionaries(texts(12), json_values(), max_size=max_size)


def _labels() -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(texts(12), texts(), max_size=4)


def _view(data: bytes) -> memoryview:
    return memoryview(data)


def buffers(max_size: int = 256) -> st.SearchStrategy[Any]:
    """One buffer frame: bytes mostly, sometimes a bytearray or memoryview (all sendable)."""
    raw = st.binary(max_size=max_size)
    return st.one_of(raw, raw.map(bytearray), raw.map(_view))


def _buffer_tuples() -> st.SearchStrategy[tuple[Any, ...]]:
    return st.lists(buffers(), max_size=4).map(tuple)


# --- nested values --------------------------------------------------------------------------


def progress_events() -> st.SearchStrategy[ProgressEvent]:
    """A progress report (also a message in its own right)."""
    return st.builds(
        ProgressEvent,
        execution_id=texts(),
        sequence=_ints(),
        fraction=_optional(finite_floats()),
        message=texts(),
        fields=json_objects(),
        timestamp=finite_floats(),
    )


def execution_records() -> st.SearchStrategy[ExecutionRecord]:
    """A record in any status, with or without times, progress and error details."""
    return st.builds(
        ExecutionRecord,
        execution_id=texts(),
        status=st.sampled_from(ExecutionStatus),
        labels=_labels(),
        submitted_at=finite_floats(),
        started_at=_optional(finite_floats()),
        finished_at=_optional(finite_floats()),
        progress=_optional(progress_events()),
        error_type=_optional(texts()),
        error_message=_optional(texts()),
        traceback=_optional(texts(200)),
    )


def server_summaries() -> st.SearchStrategy[ServerSummary]:
    """A server overview with arbitrary counts."""
    return st.builds(
        ServerSummary,
        queued=_ints(),
        running=_ints(),
        counts=st.dictionaries(texts(12), _ints(), max_size=5),
        workers=_ints(),
        uptime=finite_floats(),
        engine=st.dictionaries(texts(20), st.lists(texts(12), max_size=3).map(tuple), max_size=3),
        processes=st.lists(
            st.builds(
                ProcessStats,
                name=texts(20),
                pid=_ints(),
                cpu_percent=_optional(finite_floats()),
                rss_bytes=_ints(),
            ),
            max_size=3,
        ).map(tuple),
    )


# --- images ---------------------------------------------------------------------------------


def image_dtypes() -> st.SearchStrategy[numpy.dtype[Any]]:
    """Every plain numeric dtype an image may have, in both byte orders."""
    return st.one_of(
        npst.boolean_dtypes(),
        npst.integer_dtypes(endianness="?"),
        npst.unsigned_integer_dtypes(endianness="?"),
        npst.floating_dtypes(endianness="?", sizes=(16, 32, 64)),
        npst.complex_number_dtypes(endianness="?", sizes=(64, 128)),
    )


_IMAGE_SHAPES = npst.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)

_DTYPE_SPELLINGS = (
    "uint8",
    "|u1",
    "<u2",
    ">u2",
    "=i4",
    ">i8",
    "int16",
    "float32",
    "<f2",
    ">f4",
    ">f8",
    "float64",
    "complex64",
    ">c16",
    "bool",
    "?",
    "b",
    "B",
    "d",
)
"""How people spell dtypes in headers; the codec accepts any numpy spelling of a numeric dtype
the wire carries (not long double: ``"g"``, ``"G"``)."""


def _strided(array: numpy.ndarray[Any, Any], how: int) -> numpy.ndarray[Any, Any]:
    if how == 1 and array.ndim >= 2:
        transposed: numpy.ndarray[Any, Any] = array.T  # Fortran order: needs a C-order copy
        return transposed
    if how == 2 and array.ndim >= 1:
        reversed_rows: numpy.ndarray[Any, Any] = array[::-1]  # negative stride
        return reversed_rows
    return array


@st.composite
def _images_from_arrays(draw: st.DrawFn) -> ImageFrame:
    array = draw(npst.arrays(image_dtypes(), _IMAGE_SHAPES))
    array = _strided(array, draw(st.integers(0, 2)))
    return codec.image_from_array(
        array,
        image_id=draw(texts()),
        tracker_key=draw(texts()),
        metadata=draw(json_objects()),
        ack_to=draw(_optional(texts())),
    )


@st.composite
def _images_from_bytes(draw: st.DrawFn) -> ImageFrame:
    dtype = draw(st.sampled_from(_DTYPE_SPELLINGS))
    shape = draw(_IMAGE_SHAPES)
    size = math.prod(shape) * numpy.dtype(dtype).itemsize
    seed = draw(st.integers(0, 2**32 - 1))
    raw = numpy.random.default_rng(seed).bytes(size)  # any bit pattern: NaNs, denormals, ...
    pixels = draw(st.sampled_from([bytes, bytearray, memoryview]))(raw)
    return ImageFrame(
        image_id=draw(texts()),
        dtype=dtype,
        shape=shape,
        pixels=pixels,
        tracker_key=draw(texts()),
        metadata=draw(json_objects()),
        ack_to=draw(_optional(texts())),
    )


def image_frames() -> st.SearchStrategy[ImageFrame]:
    """Images from real arrays (any numeric dtype, either byte order, 0-d, empty, strided)
    or from raw bytes of exactly the right length under a header-style dtype spelling."""
    return st.one_of(_images_from_arrays(), _images_from_bytes())


# --- items ----------------------------------------------------------------------------------

_COORDINATE_DTYPES = st.sampled_from(["<f2", ">f4", "<f4", "<f8", ">f8"])
_VERTEX_COUNTS = {
    ShapeType.RECTANGLE: st.sampled_from([2, 4]),
    ShapeType.ELLIPSE: st.sampled_from([2, 4]),
    ShapeType.LINE: st.just(2),
    ShapeType.PATH: st.integers(2, 6),
    ShapeType.POLYGON: st.integers(3, 6),
}


def _coordinates(dtype: str, rows: int, dims: int) -> st.SearchStrategy[Any]:
    width = numpy.dtype(dtype).itemsize * 8
    finite = st.floats(allow_nan=False, allow_infinity=False, width=width)
    return npst.arrays(dtype, (rows, dims), elements=finite)


@st.composite
def _features(draw: st.DrawFn, count: int) -> dict[str, Any]:
    """Feature columns of every kind an item carries: booleans, integers, floats (NaN too:
    a feature may be missing), text."""
    columns = {}
    for name in draw(st.lists(texts(12).filter(bool), max_size=3, unique=True)):
        dtype = draw(
            st.one_of(
                npst.boolean_dtypes(),
                npst.integer_dtypes(endianness="?"),
                npst.unsigned_integer_dtypes(endianness="?"),
                npst.floating_dtypes(endianness="?", sizes=(32, 64)),
                npst.unicode_string_dtypes(min_len=1, max_len=6),
            )
        )
        columns[name] = draw(npst.arrays(dtype, (count,)))
    return columns


@st.composite
def points_items(draw: st.DrawFn) -> Points:
    """0 to 8 points of 2 to 6 dimensions, any float width and byte order, with features."""
    rows, dims = draw(st.integers(0, 8)), draw(st.integers(MIN_DIMS, MAX_DIMS))
    data = draw(_coordinates(draw(_COORDINATE_DTYPES), rows, dims))
    return Points(data=data, features=draw(_features(rows)))


@st.composite
def shapes_items(draw: st.DrawFn) -> Shapes:
    """0 to 5 shapes of every type with the vertex counts it takes, with features."""
    types = draw(st.lists(st.sampled_from(ShapeType), max_size=5))
    counts = [draw(_VERTEX_COUNTS[kind]) for kind in types]
    dims = draw(st.integers(MIN_DIMS, MAX_DIMS))
    vertices = draw(_coordinates(draw(_COORDINATE_DTYPES), sum(counts), dims))
    return Shapes(
        vertices=vertices,
        vertex_counts=numpy.array(counts, draw(st.sampled_from(["<i8", ">i4", "<u2"]))),
        shape_type=tuple(types),
        features=draw(_features(len(types))),
    )


def labels_items() -> st.SearchStrategy[Labels]:
    """Labels images of any integer dtype and byte order, 2 to 4 dimensions, empty ones too."""
    dtypes = npst.integer_dtypes(endianness="?") | npst.unsigned_integer_dtypes(endianness="?")
    shapes = npst.array_shapes(min_dims=2, max_dims=4, min_side=0, max_side=5)
    return npst.arrays(dtypes, shapes).map(lambda data: Labels(data=data))


def items() -> st.SearchStrategy[Item]:
    """Any shapes, points or labels item."""
    return st.one_of(shapes_items(), points_items(), labels_items())


@st.composite
def _raw_item_frames(draw: st.DrawFn) -> ItemFrame:
    """Item messages whose arrays make arrays by the wire's rules but not (always) items."""
    layouts, buffers = [], []
    for name in draw(st.lists(texts(12), max_size=3, unique=True)):
        image = draw(_images_from_bytes())
        layouts.append(ArrayLayout(name=name, dtype=image.dtype, shape=image.shape))
        buffers.append(image.pixels)
    return ItemFrame(
        image_id=draw(texts()),
        kind=draw(st.sampled_from(ItemKind)),
        arrays=tuple(layouts),
        buffers=tuple(buffers),
        tracker_key=draw(texts()),
        metadata=draw(json_objects()),
        ack_to=draw(_optional(texts())),
    )


@st.composite
def _item_frames_from_items(draw: st.DrawFn) -> ItemFrame:
    return frame_from_item(
        draw(items()),
        image_id=draw(texts()),
        tracker_key=draw(texts()),
        metadata=draw(json_objects()),
        ack_to=draw(_optional(texts())),
    )


def item_frames() -> st.SearchStrategy[ItemFrame]:
    """Item messages from real items, or from raw arrays under any names and kind."""
    return st.one_of(_item_frames_from_items(), _raw_item_frames())


# --- batches --------------------------------------------------------------------------------


@st.composite
def _batches_from_items(draw: st.DrawFn) -> BatchFrame:
    """A batch as a sender makes it: images (any numeric dtype, strided too) and items."""
    images = npst.arrays(image_dtypes(), _IMAGE_SHAPES).map(_strided_any)
    values = draw(st.lists(images | items(), min_size=1, max_size=3))
    ids = [draw(texts(8)) for _ in range(len(values) + 1)]
    return batch_frame(
        values,
        draw(json_objects(3)),
        [draw(_small_objects()) for _ in values],
        ids,
        tracker_key=draw(texts()),
        ack_to=draw(_optional(texts())),
        copy=draw(st.booleans()),
    )


def _small_objects() -> st.SearchStrategy[dict[str, Any]]:
    """An item's metadata in a batch: flat (the batch's own is any JSON object)."""
    return st.dictionaries(texts(6), st.integers() | finite_floats() | texts(6), max_size=2)


def _strided_any(array: numpy.ndarray[Any, Any]) -> numpy.ndarray[Any, Any]:
    return _strided(array, 1)


@st.composite
def _raw_batches(draw: st.DrawFn) -> BatchFrame:
    """Batches of entries whose arrays follow the wire's rules but need not make items."""
    entries, buffers = [], []
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(_optional(st.sampled_from(ItemKind)))
        names = ["pixels"] if kind is None else draw(st.lists(texts(8), max_size=2, unique=True))
        layouts = []
        for name in names:
            dtype, shape = draw(st.sampled_from(_DTYPE_SPELLINGS)), draw(_IMAGE_SHAPES)
            layouts.append(ArrayLayout(name=name, dtype=dtype, shape=shape))
            buffers.append(bytes(math.prod(shape) * numpy.dtype(dtype).itemsize))
        entries.append(
            BatchEntry(
                image_id=draw(texts(8)),
                kind=kind,
                arrays=tuple(layouts),
                metadata=draw(_small_objects()),
            )
        )
    return BatchFrame(
        batch_id=draw(texts()),
        entries=tuple(entries),
        buffers=tuple(buffers),
        tracker_key=draw(texts()),
        metadata=draw(json_objects()),
        ack_to=draw(_optional(texts())),
    )


def batch_frames() -> st.SearchStrategy[BatchFrame]:
    """Batch messages from real images and items, or from raw entries of any kind."""
    return st.one_of(_batches_from_items(), _raw_batches())


# --- messages -------------------------------------------------------------------------------

MESSAGE_STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    Ping: st.builds(Ping, request_id=request_ids()),
    Shutdown: st.builds(Shutdown, request_id=request_ids(), force=st.booleans()),
    Execute: st.builds(
        Execute,
        request_id=request_ids(),
        execution_id=_optional(texts()),
        labels=_labels(),
        serializer=st.sampled_from(["safe", "pickle"]) | texts(),
        confirm=st.booleans(),
        payload=_buffer_tuples(),
    ),
    StatusRequest: st.builds(
        StatusRequest, request_id=request_ids(), execution_id=_optional(texts())
    ),
    Cancel: st.builds(Cancel, request_id=request_ids(), execution_id=texts()),
    ListRequest: st.builds(
        ListRequest,
        request_id=request_ids(),
        statuses=st.lists(st.sampled_from(ExecutionStatus), max_size=3).map(tuple),
        labels=_labels(),
        prefix=texts(),
        after=_optional(texts()),
        limit=st.integers(1, MAX_LISTED),
    ),
    RecordList: st.builds(
        RecordList,
        request_id=request_ids(),
        records=st.lists(execution_records(), max_size=3).map(tuple),
        next_after=_optional(texts()),
    ),
    Attach: st.builds(Attach, request_id=request_ids(), execution_id=texts(), worker=texts()),
    Pong: st.builds(
        Pong,
        request_id=request_ids(),
        role=texts(),
        app_name=texts(),
        pid=_ints(),
        library_version=texts(),
        protocol_version=_ints(),
        uptime=finite_floats(),
        capabilities=st.lists(texts(), max_size=5).map(tuple),
        draining=st.booleans(),
    ),
    ErrorReply: st.builds(
        ErrorReply,
        request_id=_optional(request_ids()),
        code=st.sampled_from(ErrorCode),
        message=texts(200),
        error_type=_optional(texts()),
        traceback=_optional(texts(200)),
    ),
    AppRequest: st.builds(
        AppRequest,
        request_id=request_ids(),
        name=st.text(min_size=1, max_size=128),
        serializer=st.sampled_from(["safe", "pickle"]) | texts(),
        payload=_buffer_tuples(),
    ),
    ShutdownReply: st.builds(ShutdownReply, request_id=request_ids()),
    Accepted: st.builds(
        Accepted,
        request_id=request_ids(),
        execution_id=texts(),
        status=st.sampled_from(ExecutionStatus),
        duplicate=st.booleans(),
    ),
    RecordReply: st.builds(RecordReply, request_id=request_ids(), record=execution_records()),
    SummaryReply: st.builds(SummaryReply, request_id=request_ids(), summary=server_summaries()),
    AppReply: st.builds(AppReply, request_id=request_ids(), payload=_buffer_tuples()),
    ProgressEvent: progress_events(),
    Completion: st.builds(
        Completion,
        record=execution_records(),
        request_id=_optional(request_ids()),
        serializer=st.sampled_from(["safe", "pickle"]) | texts(),
        result=_buffer_tuples(),
    ),
    ImageFrame: image_frames(),
    ItemFrame: item_frames(),
    BatchFrame: batch_frames(),
    Ack: st.builds(
        Ack,
        image_id=texts(),
        tracker_key=texts(),
        outcome=st.sampled_from(AckOutcome),
        error=texts(),
        timestamp=finite_floats(),
    ),
    ImageSent: st.builds(
        ImageSent, image_id=texts(), tracker_key=texts(), timestamp=finite_floats()
    ),
    AppEvent: st.builds(AppEvent, topic=texts(), payload=_buffer_tuples()),
    CommandFrame: st.builds(
        CommandFrame,
        command_id=_ints(),
        reply_to=texts(),
        name=st.text(min_size=1, max_size=128),
        serializer=st.sampled_from(["safe", "pickle"]) | texts(),
        payload=_buffer_tuples(),
    ),
    CommandReply: st.builds(
        CommandReply,
        command_id=_ints(),
        code=_optional(st.sampled_from(ErrorCode)),
        message=texts(200),
        error_type=_optional(texts()),
        traceback=_optional(texts(200)),
        payload=_buffer_tuples(),
    ),
}
"""One strategy per message class (keyed by the class)."""


def messages() -> st.SearchStrategy[Message]:
    """Any message of any class in :data:`~zmqruntime.core.messages.MESSAGE_CLASSES`."""
    return st.one_of([MESSAGE_STRATEGIES[cls] for cls in MESSAGE_CLASSES])


def control_requests() -> st.SearchStrategy[Message]:
    """Any request a client may send on a control socket (ping, shutdown, execute, ...)."""
    return st.one_of(
        [
            MESSAGE_STRATEGIES[cls]
            for cls in MESSAGE_CLASSES
            if isinstance(getattr(cls, "TYPE", None), ControlMessageType)
        ]
    )


def to_wire(frames: Sequence[Any]) -> list[bytes]:
    """The frames as the bytes a socket would deliver (a copy of each buffer)."""
    return [memoryview(frame).tobytes() for frame in frames]


def encoded_frames(
    strategy: st.SearchStrategy[Message] | None = None,
) -> st.SearchStrategy[list[bytes]]:
    """Valid encodings (as wire bytes) of messages drawn from ``strategy`` (default: any)."""
    return (messages() if strategy is None else strategy).map(
        lambda message: to_wire(codec.encode(message))
    )


# --- garbage --------------------------------------------------------------------------------


def garbage_frames() -> st.SearchStrategy[list[bytes]]:
    """0..6 frames of random bytes (mostly short, sometimes a few KiB)."""
    frame = st.one_of(st.binary(max_size=64), st.binary(min_size=64, max_size=4096))
    return st.lists(frame, max_size=6)


def _dumps(header: Any) -> bytes:
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


def _valid_header(draw: st.DrawFn, strategy: st.SearchStrategy[Message] | None = None) -> Any:
    frames = draw(encoded_frames(strategy))
    return json.loads(frames[0]), frames[1:]


_WRONG_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([-1, 0, 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**40]),
    st.sampled_from([0.0, -0.0, 1.0, 0.5, -1.5, 1e300, 5e-324]),
    st.sampled_from(["", "1", "true", "null", "ping", "\x00", "\u202e", "x" * 300]),
    texts(),
)
_WRONG_VALUES = st.one_of(
    _WRONG_SCALARS,
    st.lists(_WRONG_SCALARS, max_size=3),
    st.dictionaries(texts(8), _WRONG_SCALARS, max_size=3),
    st.just({}),
    st.just([]),
)
"""Values of every JSON type, edges first: put one where a field expects another."""

_TYPE_NAMES = sorted(
    str(cls.TYPE.value) for cls in MESSAGE_CLASSES if getattr(cls, "TYPE", None) is not None
)


def _retype(value: Any) -> st.SearchStrategy[Any]:
    """Near misses for ``value``: the same number as another type, a bool for an int, ..."""
    options: list[Any] = [None, [value], {"value": value}]
    if type(value) is int:
        options += [True, False, float(value), str(value), -value - 1, value + 2**64]
    elif type(value) is float:
        options += [str(value), [value], int(value) if math.isfinite(value) else 0]
    elif type(value) is bool:
        options += [int(value), float(value), str(value).lower()]
    elif type(value) is str:
        options += [value.upper(), value + "\x00", len(value), value.encode().hex(), ""]
    elif type(value) is list:
        options += [_joined(value), value[:-1], [*value, value[:1]], {"0": value}]
    elif type(value) is dict:
        options += [list(value), list(value.values()), json.dumps(value)]
    return st.sampled_from(options) | _WRONG_VALUES


def _joined(value: list[Any]) -> str:
    """``[1, 2]`` as the string ``"1,2"`` (what a sloppy peer sends for a shape)."""
    return ",".join(str(item) for item in value)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and indexes) to a value inside nested dicts and lists."""
    found: list[tuple[Any, ...]] = []
    items: Any = value.items() if type(value) is dict else enumerate(value)
    for key, item in items:
        found.append((*prefix, key))
        if type(item) in (dict, list):
            found += _paths(item, (*prefix, key))
    return found


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


_ENVELOPE = frozenset({"version", "type", "frames"})


@st.composite
def _mutated_valid(draw: st.DrawFn) -> list[bytes]:
    """A valid encoding with 1-3 field edits: drop a key, retype a value, add a key.

    The envelope (version, type, frames) stays valid, so the edits reach the field decoders;
    :func:`_envelope_attacks` covers the envelope.
    """
    header, buffer_frames = _valid_header(draw)
    for _ in range(draw(st.integers(1, 3))):
        paths = [path for path in _paths(header) if path[0] not in _ENVELOPE]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _get(header, path[:-1]), path[-1]
        action = draw(st.sampled_from(["drop", "retype", "replace", "add"]))
        if action == "drop":
            del parent[key]
        elif action == "retype":
            parent[key] = draw(_retype(parent[key]))
        elif action == "replace":
            parent[key] = draw(_WRONG_VALUES)
        elif type(parent) is dict:
            parent[draw(st.sampled_from(["request_id", "x", "", "pixels", "payload"]))] = draw(
                _WRONG_VALUES
            )
        else:
            parent.append(draw(_WRONG_VALUES))
    return [_dumps(header), *buffer_frames]


@st.composite
def _envelope_attacks(draw: st.DrawFn) -> list[bytes]:
    """Valid fields under a wrong version, type or frame count."""
    header, buffer_frames = _valid_header(draw)
    target = draw(st.sampled_from(["version", "type", "frames"]))
    if target == "version":
        wrong: list[Any] = [0, PROTOCOL_VERSION + 1, -1, float(PROTOCOL_VERSION), True]
        wrong += [str(PROTOCOL_VERSION), None, [PROTOCOL_VERSION], {"major": 1}, 2**64]
    elif target == "type":
        wrong = [*_TYPE_NAMES, "", "PING", "Ping", "ControlMessageType.PING", 1, None, ["ping"]]
    else:
        count = len(buffer_frames)
        wrong = [count - 1, count + 1, -1, True, False, float(count), str(count), None, 2**63]
    if draw(st.booleans()):
        del header[target]
    else:
        header[target] = draw(st.sampled_from(wrong) | _WRONG_SCALARS)
    return [_dumps(header), *buffer_frames]


@st.composite
def _frame_attacks(draw: st.DrawFn) -> list[bytes]:
    """A valid header with frames dropped, added, duplicated or reordered."""
    frames = draw(encoded_frames())
    action = draw(st.sampled_from(["truncate", "extend", "duplicate_header", "rotate", "empty"]))
    if action == "truncate":  # drop buffer frames if there are any, else the header
        return frames[: draw(st.integers(min(1, len(frames) - 1), len(frames) - 1))]
    if action == "extend":
        return frames + draw(st.lists(st.binary(max_size=32), min_size=1, max_size=3))
    if action == "duplicate_header":
        return [frames[0], *frames]
    if action == "rotate":
        return [*frames[1:], frames[0]]
    return [b"", *frames[1:]]


@st.composite
def _type_confusion(draw: st.DrawFn) -> list[bytes]:
    """The fields of one message type under another type's name (frame count kept honest)."""
    header, buffer_frames = _valid_header(draw)
    header["type"] = draw(st.sampled_from(_TYPE_NAMES))
    return [_dumps(header), *buffer_frames]


_TOKENS = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e400",
    "1E309",
    "1" * 5000,  # more digits than int() will parse
    "-0",
    "1.0e0",
    '"\\ud800"',
    '"\\udfff"',
    '"a\\udc80b"',
    '"\\ud83d\\ude00"',  # a valid surrogate pair: the emoji decodes fine
    '"\\u0000"',
    "tru",
    "nul",
    "01",
    "+1",
    ".5",
    "0x10",
    "'single'",
    "[1,]",
    "{,}",
)
"""JSON-ish tokens Python's parser is lenient about, or that strict JSON forbids outright."""


@st.composite
def _token_attacks(draw: st.DrawFn) -> list[bytes]:
    """A valid header text with one value (or a key, or a duplicate key) replaced by a token."""
    header, buffer_frames = _valid_header(draw)
    token = draw(st.sampled_from(_TOKENS))
    where = draw(st.sampled_from([*header, "@key", "@duplicate"]))
    marker = "@@TOKEN@@"
    if where == "@key":
        header[marker] = 1
        text = _dumps(header).decode("utf-8", "surrogatepass")
        text = text.replace(f'"{marker}"', token if token.startswith('"') else f'"{token}"')
    else:
        text = _dumps(header).decode("utf-8", "surrogatepass")
        if where == "@duplicate":
            key = draw(st.sampled_from(list(header)))
            text = text[:-1] + f',"{key}":{token}}}'
        else:
            header[where] = marker
            text = _dumps(header).decode("utf-8", "surrogatepass").replace(f'"{marker}"', token)
    return [text.encode("utf-8", "surrogatepass"), *buffer_frames]


_BAD_DTYPES: tuple[Any, ...] = (
    "O",
    "|O",
    "object",
    "|V8",
    "V",
    "V0",
    "<U4",
    "S3",
    "a",
    "g",  # long double: its padding bytes are undefined
    "G",
    "<f16",
    "M8[ns]",
    "<m8[s]",
    "i4,i4",
    "(2,)i4",
    "(0,)u1",
    "[('a', '<i4')]",
    "float",  # fine: numpy spells it f8
    "int0",
    "Float64",
    "f99",
    "<",
    "",
    " uint8",
    "uint8\x00",
    "\ud800",
    "i" * 1000,
    8,
    None,
    True,
    ["<i4"],
    {"names": ["a"], "formats": ["<i4"]},
    [["a", "<i4"]],
)
"""Dtypes that are not plain numeric ones, or not dtypes at all."""

_BAD_SHAPES: tuple[Any, ...] = (
    [2**40, 2**40],
    [10**30],
    [2**63],
    [2**64],
    [0, 10**30],  # zero pixels, but no numpy array has that shape
    [0, 2**62, 2**62],
    [0, 2**63],
    [-1],
    [-1, -1],  # the product is positive
    [2, -2, -1],
    [1] * 33,
    [0] * 64,
    [1] * 1000,
    [1.0],
    [1.5],
    [True],
    ["3"],
    [[1]],
    [None],
    "3",
    3,
    None,
    {"0": 1},
)
"""Shapes that are impossible, huge, negative, too deep or not lists of ints."""


@st.composite
def _image_attacks(draw: st.DrawFn) -> list[bytes]:
    """Image headers whose dtype, shape and pixel frame(s) do not make an image."""
    header, buffer_frames = _valid_header(draw, image_frames())
    for _ in range(draw(st.integers(1, 2))):
        target = draw(st.sampled_from(["dtype", "shape", "pixels", "frames"]))
        if target == "dtype":
            header["dtype"] = draw(st.sampled_from(_BAD_DTYPES) | texts(8))
        elif target == "shape":
            header["shape"] = draw(
                st.sampled_from(_BAD_SHAPES)
                | st.lists(st.integers(-(2**65), 2**65), min_size=1, max_size=40)
            )
        elif target == "pixels":
            size = len(buffer_frames[0]) if buffer_frames else 0
            new_size = draw(st.sampled_from([0, 1, max(0, size - 1), size + 1, size * 2]))
            buffer_frames = [bytes(new_size)]
        else:
            buffer_frames = draw(st.lists(st.binary(max_size=16), max_size=3))
            if draw(st.booleans()):
                header["frames"] = len(buffer_frames)
    return [_dumps(header), *buffer_frames]


def _nest(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    if kind == "dict":
        return '{"a":' * depth + "1" + "}" * depth
    return '[{"a":' * depth + "[]" + "}]" * depth


@st.composite
def _deep_json(draw: st.DrawFn) -> list[bytes]:
    """JSON nested from a few to thousands of levels, as the header or inside a field."""
    depth = draw(st.sampled_from([1, 2, 50, 99, 101, 500, 990, 1000, 1100, 5000, 20000]))
    nested = _nest(depth, draw(st.sampled_from(["list", "dict", "mixed"])))
    if draw(st.booleans()):
        return [nested.encode()]
    header, buffer_frames = _valid_header(draw)
    key = draw(st.sampled_from([*header, "metadata", "fields", "labels", "extra"]))
    header[key] = "@@NEST@@"
    text = _dumps(header).decode("utf-8", "surrogatepass").replace('"@@NEST@@"', nested)
    return [text.encode("utf-8", "surrogatepass"), *buffer_frames]


_NOT_OBJECTS = (
    b"",
    b" ",
    b"null",
    b"true",
    b"1",
    b"-0.0",
    b'"ping"',
    b"[]",
    b"[1,2,3]",
    b'[{"version":1,"type":"ping","frames":0,"request_id":1}]',
    b"{",
    b"}",
    b"{}",
    b'{"version":1}',
    b'{"version":1,"type":"ping"}',
    b"\x00",
    b"\xff\xfe",
    b"\xef\xbb\xbf{}",
)


@st.composite
def _encoding_attacks(draw: st.DrawFn) -> list[bytes]:
    """A valid header spoiled at the byte level: cut, padded, re-encoded, invalid UTF-8."""
    header, buffer_frames = _valid_header(draw)
    text = _dumps(header)
    action = draw(
        st.sampled_from(["cut", "trail", "pad", "bom", "utf16", "utf32", "latin1", "bad_utf8"])
    )
    if action == "cut":
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    elif action == "trail":
        text += draw(st.sampled_from([b"x", b"{}", b"\x00", b"\n\n", b",", b"]"]))
    elif action == "pad":
        text = b" \t\r\n" + text + b"\n"  # legal JSON whitespace: may well decode
    elif action == "bom":
        text = b"\xef\xbb\xbf" + text
    elif action in ("utf16", "utf32"):
        text = text.decode().encode("utf-16" if action == "utf16" else "utf-32")
    elif action == "latin1":
        header["message"] = "caf\xe9 \u00ff"
        text = json.dumps(header, ensure_ascii=False).encode("latin-1", "replace")
    else:
        at = draw(st.integers(0, len(text)))
        junk = draw(
            st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"])
        )
        text = text[:at] + junk + text[at:]
    return [text, *buffer_frames]


def _not_objects() -> st.SearchStrategy[list[bytes]]:
    headers = st.sampled_from(_NOT_OBJECTS)
    return st.tuples(headers, st.lists(st.binary(max_size=16), max_size=2)).map(
        lambda pair: [pair[0], *pair[1]]
    )


HOSTILE_STRATEGIES: dict[str, Callable[[], st.SearchStrategy[list[bytes]]]] = {
    "mutated": _mutated_valid,
    "envelope": _envelope_attacks,
    "frames": _frame_attacks,
    "type_confusion": _type_confusion,
    "tokens": _token_attacks,
    "images": _image_attacks,
    "deep": _deep_json,
    "encoding": _encoding_attacks,
    "not_objects": _not_objects,
}
"""Each family of hostile input on its own, by name."""


def hostile_frames() -> st.SearchStrategy[list[bytes]]:
    """Structured garbage aimed at every rule of the decoder (see :data:`HOSTILE_STRATEGIES`).

    Mostly invalid; some draws are valid after all (an extra key, a harmless token, legal
    whitespace), which a fuzzed server must answer normally.
    """
    return st.one_of([make() for make in HOSTILE_STRATEGIES.values()])
