"""The sans-IO codec: round trips, strict headers, hostile input, error codes, import hygiene."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import attrs
import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zmqruntime
from tests.strategies import (
    HOSTILE_STRATEGIES,
    MAX_REQUEST_ID,
    MESSAGE_STRATEGIES,
    garbage_frames,
    hostile_frames,
    json_objects,
    messages,
    to_wire,
)
from zmqruntime.core import codec
from zmqruntime.core.messages import (
    MESSAGE_CLASSES,
    PROTOCOL_VERSION,
    Ack,
    AppEvent,
    AppReply,
    AppRequest,
    ArrayLayout,
    BatchEntry,
    Completion,
    ErrorReply,
    Execute,
    ExecutionRecord,
    ExecutionStatus,
    ImageFrame,
    Message,
    MessageFields,
    Ping,
    Pong,
    ProcessStats,
    ProgressEvent,
    RecordReply,
    ServerSummary,
    Shutdown,
    StatusRequest,
)
from zmqruntime.errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError

# numpy 2 warns when a peer's dtype text is the deprecated alias 'a' (the codec refuses it
# anyway: 'a' is a byte string, not a number); the hostile strategies send it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Data type alias 'a':DeprecationWarning")

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
VALUE_CLASSES = (ExecutionRecord, ServerSummary, ProcessStats, ArrayLayout, BatchEntry)
HEADER_KEYS = frozenset(member.value for member in MessageFields)


def _class_id(cls: type[Any]) -> str:
    return cls.__name__


def _buffer_fields(cls: type[Any]) -> list[attrs.Attribute[Any]]:
    return [field for field in attrs.fields(cls) if "buffer" in field.metadata]


def _header(frames: list[Any]) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(memoryview(frames[0]).tobytes())
    return header


def _frames(header: dict[str, Any], *buffers: bytes) -> list[bytes]:
    return [json.dumps(header).encode(), *buffers]


def _expected_array(image: ImageFrame) -> numpy.ndarray[Any, Any]:
    if isinstance(image.pixels, numpy.ndarray):
        return image.pixels
    return codec.array_from_image(image)


def assert_same_message(decoded: Message, original: Message) -> None:
    """``decoded`` is ``original`` off the wire: buffers compared as bytes, images as arrays."""
    assert type(decoded) is type(original)
    if isinstance(decoded, ImageFrame):
        assert isinstance(original, ImageFrame)
        assert isinstance(decoded.pixels, memoryview)
        array = codec.array_from_image(decoded)
        expected = _expected_array(original)
        assert array.dtype == numpy.dtype(original.dtype) == expected.dtype
        assert array.shape == original.shape == expected.shape
        assert array.tobytes() == expected.tobytes()
        numpy.testing.assert_array_equal(array, expected)  # NaN == NaN here
        assert attrs.evolve(decoded, pixels=b"") == attrs.evolve(original, pixels=b"")
        return
    replaced: dict[str, Any] = {}
    for field in _buffer_fields(type(decoded)):
        got = getattr(decoded, field.name)
        assert all(isinstance(view, memoryview) for view in got)
        assert [bytes(view) for view in got] == [
            memoryview(item).tobytes() for item in getattr(original, field.name)
        ]
        replaced[field.name] = ()
    assert attrs.evolve(decoded, **replaced) == attrs.evolve(original, **replaced)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=_class_id)
def test_every_message_class_has_a_strategy(cls: type[Any]) -> None:
    assert cls in MESSAGE_STRATEGIES, f"tests/strategies.py has no strategy for {cls.__name__}"


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=_class_id)
@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_encode_then_decode_is_the_identity(cls: type[Any], data: st.DataObject) -> None:
    message = data.draw(MESSAGE_STRATEGIES[cls], label="message")
    assert type(message) is cls
    frames = codec.encode(message)
    assert_same_message(codec.decode(frames), message)
    assert_same_message(codec.decode(to_wire(frames)), message)  # as a socket delivers them


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=_class_id)
@settings(FUZZ, max_examples=15)
@given(data=st.data())
def test_headers_are_strict_json_with_the_envelope(cls: type[Any], data: st.DataObject) -> None:
    message = data.draw(MESSAGE_STRATEGIES[cls], label="message")
    frames = codec.encode(message)

    def no_constants(token: str) -> None:
        raise AssertionError(f"header holds {token}")

    header = json.loads(
        memoryview(frames[0]).tobytes().decode("utf-8"), parse_constant=no_constants
    )
    assert type(header) is dict
    assert header["version"] == PROTOCOL_VERSION and type(header["version"]) is int
    assert header["type"] == cls.TYPE.value
    assert header["frames"] == len(frames) - 1
    assert set(header) <= HEADER_KEYS
    assert not {field.name for field in _buffer_fields(cls)} & set(header)


def test_buffers_are_not_copied() -> None:
    pixels = numpy.arange(12, dtype=">u2").reshape(3, 4)
    image = codec.image_from_array(pixels, image_id="i")
    frames = codec.encode(image)
    assert frames[1] is image.pixels
    assert numpy.shares_memory(image.pixels, pixels)
    wire = to_wire(frames)
    decoded = codec.decode(wire)
    assert isinstance(decoded, ImageFrame)
    assert memoryview(decoded.pixels).obj is wire[1]
    assert not codec.array_from_image(decoded).flags.writeable
    payload = [b"one", b"two"]
    execute = codec.decode(codec.encode(Execute(request_id=1, payload=tuple(payload))))
    assert isinstance(execute, Execute)
    assert [memoryview(view).obj for view in execute.payload] == payload


def test_image_from_array_keeps_zero_d_and_empty_shapes_and_copies_only_when_strided() -> None:
    scalar = numpy.array(3.5, dtype=">f8")
    image = codec.image_from_array(scalar, image_id="s")
    assert image.shape == () and image.dtype == ">f8"
    decoded = codec.decode(to_wire(codec.encode(image)))
    assert isinstance(decoded, ImageFrame)
    assert codec.array_from_image(decoded).shape == ()
    assert codec.array_from_image(decoded)[()] == 3.5
    empty = codec.image_from_array(numpy.zeros((0, 7), dtype="<i2"), image_id="e")
    decoded = codec.decode(codec.encode(empty))
    assert isinstance(decoded, ImageFrame)
    assert codec.array_from_image(decoded).shape == (0, 7)
    contiguous = numpy.ones((4, 5), dtype="u1")
    assert codec.image_from_array(contiguous, image_id="c").pixels is cast(Any, contiguous)
    strided = codec.image_from_array(contiguous.T, image_id="t")
    assert isinstance(strided.pixels, numpy.ndarray) and strided.pixels.flags.c_contiguous
    assert strided.shape == (5, 4)


def test_image_from_array_refuses_non_numeric_dtypes() -> None:
    for array in (
        numpy.array([object()]),
        numpy.zeros(2, dtype="i4,i4"),
        numpy.zeros(2, dtype="U3"),
        numpy.zeros(2, dtype="M8[s]"),
    ):
        with pytest.raises(TypeError):
            codec.image_from_array(array, image_id="x")


def test_lone_surrogates_and_non_ascii_text() -> None:
    text = "caf\xe9 \u6f22\u5b57 \U0001f600 \x00 \u202e"
    message = Ack(image_id=text, tracker_key=text, error=text)
    assert codec.decode(codec.encode(message)) == message
    # A str holding a lone surrogate (os.fsdecode of a bad file name) has no UTF-8 form.
    with pytest.raises(LocalProtocolError):
        codec.encode(Ack(image_id="\udcff", tracker_key="k"))
    # ... and a peer cannot smuggle one in through a JSON escape; a valid pair is fine.
    header = {"version": 1, "type": "ack", "frames": 0, "image_id": "x", "tracker_key": "k"}
    text_header = json.dumps(header)
    with pytest.raises(RemoteProtocolError):
        codec.decode([text_header.replace('"x"', '"\\ud800"').encode()])
    with pytest.raises(RemoteProtocolError):
        codec.decode([text_header.replace('"k"', '"\\udc00"').encode()])
    decoded = codec.decode([text_header.replace('"x"', '"\\ud83d\\ude00"').encode()])
    assert isinstance(decoded, Ack) and decoded.image_id == "\U0001f600"


# --- application requests, replies and events ----------------------------------------------


def test_app_messages_carry_their_payload_frames_and_fields() -> None:
    request = AppRequest(request_id=5, name="resize", serializer="pickle", payload=(b"a", b"b"))
    reply = AppReply(request_id=5, payload=(b"c",))
    event = AppEvent(topic="stage/moved", payload=(b"x", b"", b"y"))
    for message in (request, reply, event):
        frames = to_wire(codec.encode(message))
        header = _header(frames)
        assert header["type"] == message.TYPE.value and header["frames"] == len(frames) - 1
        assert "payload" not in header
        assert_same_message(codec.decode(frames), message)
    assert _header(codec.encode(request))["name"] == "resize"
    assert _header(codec.encode(event))["topic"] == "stage/moved"


@pytest.mark.parametrize("name", ["", "x" * 129])
def test_an_app_request_name_is_1_to_128_characters(name: str) -> None:
    with pytest.raises(ValueError):
        AppRequest(request_id=1, name=name)
    header = _header(codec.encode(AppRequest(request_id=1, name="x" * 128)))
    header["name"] = name
    exc = _refusal(_frames(header))
    assert exc.code is ErrorCode.MALFORMED
    assert "name" in str(exc)
    assert codec.peek_request_id(_frames(header)) == 1  # the refusal can be addressed


def test_an_error_reply_carries_the_remote_exception_and_old_replies_still_decode() -> None:
    reply = ErrorReply(
        request_id=3,
        code=ErrorCode.HANDLER_FAILED,
        message="no such key",
        error_type="KeyError",
        traceback='Traceback (most recent call last):\n  File "h.py", line 1\nKeyError',
    )
    assert codec.decode(to_wire(codec.encode(reply))) == reply
    header = _header(codec.encode(reply))
    del header["error_type"], header["traceback"]  # what a peer without them sends
    decoded = codec.decode(_frames(header))
    assert isinstance(decoded, ErrorReply)
    assert (decoded.error_type, decoded.traceback) == (None, None)
    assert decoded.message == "no such key"


# --- the dtype rule --------------------------------------------------------------------------


@pytest.mark.skipif(numpy.dtype(numpy.longdouble).itemsize == 8, reason="long double is a double")
def test_long_double_images_are_refused() -> None:
    # Their padding bytes are uninitialised memory, and their layout depends on the platform.
    with pytest.raises(TypeError):
        codec.image_from_array(numpy.zeros(2, numpy.longdouble), image_id="g")
    itemsize = numpy.dtype(numpy.longdouble).itemsize
    for dtype in ("g", "G", numpy.dtype(numpy.longdouble).str):
        size = itemsize * (2 if dtype == "G" else 1)
        refused = _refusal(_frames(_image_header(dtype=dtype, shape=[1]), bytes(size)))
        assert "long double" in str(refused)
    with pytest.raises(LocalProtocolError):
        codec.encode(ImageFrame(image_id="g", dtype="g", shape=(1,), pixels=bytes(itemsize)))


# --- hostile input ---------------------------------------------------------------------------


def _decode_or_refuse(frames: list[bytes]) -> None:
    """What a server does with input: decode it, or answer with an error reply it can send."""
    request_id = codec.peek_request_id(frames)
    assert request_id is None or (type(request_id) is int and 0 <= request_id <= MAX_REQUEST_ID)
    try:
        message = codec.decode(frames)
    except RemoteProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        assert str(exc)
        # The refusal itself must be sendable.
        codec.encode(ErrorReply(request_id=request_id, code=exc.code, message=str(exc)))
        return
    assert type(message) in MESSAGE_CLASSES
    # Whatever decodes can be sent on (forwarded, echoed) and comes back the same.
    assert_same_message(codec.decode(to_wire(codec.encode(message))), message)
    if hasattr(message, "request_id"):
        assert request_id == message.request_id


@settings(FUZZ, max_examples=1000)
@given(garbage_frames())
def test_garbage_decodes_or_raises_remote_protocol_error(frames: list[bytes]) -> None:
    _decode_or_refuse(frames)


@settings(FUZZ, max_examples=500)
@given(hostile_frames())
def test_hostile_frames_decode_or_raise_remote_protocol_error(frames: list[bytes]) -> None:
    _decode_or_refuse(frames)


@pytest.mark.parametrize("family", sorted(HOSTILE_STRATEGIES))
@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_each_hostile_family_decodes_or_raises(family: str, data: st.DataObject) -> None:
    _decode_or_refuse(data.draw(HOSTILE_STRATEGIES[family](), label=family))


def _ping_header(**changes: Any) -> dict[str, Any]:
    header: dict[str, Any] = {"version": PROTOCOL_VERSION, "type": "ping", "frames": 0}
    header["request_id"] = 7
    header.update(changes)
    return header


def _refusal(frames: list[Any], **kwargs: Any) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        codec.decode(frames, **kwargs)
    return info.value


@pytest.mark.parametrize(
    "version", [0, PROTOCOL_VERSION + 1, -1, 1.0, True, "1", None, [1], {"v": 1}, 2**64]
)
def test_a_wrong_version_is_unsupported_version(version: Any) -> None:
    exc = _refusal(_frames(_ping_header(version=version)))
    assert exc.code is ErrorCode.UNSUPPORTED_VERSION
    assert "version" in str(exc)


def test_a_missing_version_is_unsupported_version() -> None:
    header = _ping_header()
    del header["version"]
    assert _refusal(_frames(header)).code is ErrorCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize("type_name", ["nope", "PING", "", 1, None, ["ping"], {"t": 1}, True])
def test_an_unknown_type_is_unknown_type(type_name: Any) -> None:
    assert _refusal(_frames(_ping_header(type=type_name))).code is ErrorCode.UNKNOWN_TYPE
    header = _ping_header()
    del header["type"]
    assert _refusal(_frames(header)).code is ErrorCode.UNKNOWN_TYPE


def test_an_oversized_header_is_too_large() -> None:
    frames = codec.encode(
        Pong(
            request_id=1,
            role="r",
            app_name="a" * 100,
            pid=1,
            library_version="1",
            protocol_version=1,
            uptime=0.0,
        )
    )
    size = memoryview(frames[0]).nbytes
    assert _refusal(frames, max_header_bytes=size - 1).code is ErrorCode.TOO_LARGE
    assert _refusal([b"x" * 65], max_header_bytes=64).code is ErrorCode.TOO_LARGE  # before JSON
    assert isinstance(codec.decode(frames, max_header_bytes=size), Pong)


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param(_frames(_ping_header(), b"extra"), id="ping-with-an-extra-frame"),
        pytest.param(_frames(_ping_header(frames=1), b"extra"), id="ping-declaring-a-buffer"),
        pytest.param(_frames(_ping_header(frames=1)), id="declares-1-sends-0"),
        pytest.param(_frames(_ping_header(frames=-1)), id="negative-count"),
        pytest.param(_frames(_ping_header(frames=True), b""), id="bool-count"),
        pytest.param(_frames(_ping_header(frames=0.0)), id="float-count"),
        pytest.param(_frames(_ping_header(frames="0")), id="string-count"),
        pytest.param(_frames(_ping_header(frames=None)), id="null-count"),
    ],
)
def test_a_frame_count_mismatch_is_malformed(frames: list[bytes]) -> None:
    assert _refusal(frames).code is ErrorCode.MALFORMED


def test_buffer_frames_must_match_the_message() -> None:
    execute = to_wire(codec.encode(Execute(request_id=3, payload=(b"a", b"b"))))
    assert _refusal(execute[:-1]).code is ErrorCode.MALFORMED
    assert _refusal([*execute, b"c"]).code is ErrorCode.MALFORMED
    image = to_wire(codec.encode(codec.image_from_array(numpy.zeros(3, "u1"), image_id="i")))
    header = _header(image)
    for buffers in ([], [b"\0" * 3, b""]):
        header["frames"] = len(buffers)
        assert _refusal(_frames(header, *buffers)).code is ErrorCode.MALFORMED
    assert _refusal([]).code is ErrorCode.MALFORMED


def _image_header(**changes: Any) -> dict[str, Any]:
    header = _header(
        codec.encode(ImageFrame(image_id="i", dtype="<u2", shape=(2, 3), pixels=bytes(12)))
    )
    header.update(changes)
    return header


@pytest.mark.parametrize(
    ("changes", "pixels"),
    [
        pytest.param({"dtype": "O"}, bytes(48), id="object"),
        pytest.param({"dtype": "|O"}, bytes(48), id="object-2"),
        pytest.param({"dtype": "|V8"}, bytes(48), id="void"),
        pytest.param({"dtype": "i4,i4"}, bytes(48), id="structured"),
        pytest.param({"dtype": "(2,)u1"}, bytes(12), id="subarray"),
        pytest.param({"dtype": "<U2"}, bytes(48), id="unicode"),
        pytest.param({"dtype": "M8[s]"}, bytes(48), id="datetime"),
        pytest.param({"dtype": "not a dtype"}, bytes(12), id="garbage-dtype"),
        pytest.param({"dtype": 8}, bytes(12), id="dtype-not-a-string"),
        pytest.param({}, bytes(11), id="pixels-short"),
        pytest.param({}, bytes(13), id="pixels-long"),
        pytest.param({"shape": [2**40, 2**40]}, bytes(12), id="huge-shape-tiny-pixels"),
        pytest.param({"shape": [0, 10**30]}, b"", id="empty-but-unrepresentable"),
        pytest.param({"shape": [0, 2**62, 2**62]}, b"", id="empty-but-overflowing"),
        pytest.param({"shape": [-2, -3]}, bytes(12), id="negative-extents"),
        pytest.param({"shape": [1] * 33}, bytes(2), id="too-many-dimensions"),
        pytest.param({"shape": [2.0, 3.0]}, bytes(12), id="float-extents"),
        pytest.param({"shape": [True, 3]}, bytes(6), id="bool-extent"),
        pytest.param({"shape": "2,3"}, bytes(12), id="shape-not-a-list"),
    ],
)
def test_impossible_images_are_refused(changes: dict[str, Any], pixels: bytes) -> None:
    exc = _refusal(_frames(_image_header(**changes), pixels))
    assert exc.code is ErrorCode.MALFORMED


def test_a_zero_size_image_with_a_representable_shape_decodes() -> None:
    decoded = codec.decode(_frames(_image_header(shape=[0, 2**20, 3]), b""))
    assert isinstance(decoded, ImageFrame)
    assert codec.array_from_image(decoded).shape == (0, 2**20, 3)


_PING = '{"version":1,"type":"ping","frames":0,"request_id":1'


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(b'{"version":1,"type":"ping","frames":0,"request_id":NaN}', id="NaN"),
        pytest.param(f'{_PING},"x":Infinity}}'.encode(), id="Infinity"),
        pytest.param(f'{_PING},"x":[-Infinity]}}'.encode(), id="-Infinity"),
        pytest.param(f'{_PING},"x":1e999}}'.encode(), id="float-overflow"),
        pytest.param(f"{_PING}}}x".encode(), id="trailing-garbage"),
        pytest.param(_PING.encode(), id="truncated"),
        pytest.param(b"\xef\xbb\xbf" + f"{_PING}}}".encode(), id="utf8-bom"),
        pytest.param(f"{_PING}}}".encode("utf-16"), id="utf16"),
        pytest.param(f'{_PING},"x":"'.encode() + b'\xff"}', id="invalid-utf8"),
        pytest.param(f'{_PING},"x":"'.encode() + b'\xed\xa0\x80"}', id="utf8-surrogate"),
        pytest.param(b"[]", id="list"),
        pytest.param(b'"ping"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[" * 100_000, id="deep-list"),
        pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, id="deep-object"),
    ],
)
def test_headers_must_be_strict_utf8_json_objects(text: bytes) -> None:
    assert _refusal([text]).code is ErrorCode.MALFORMED


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("request_id", True),
        ("request_id", 7.0),
        ("request_id", "7"),
        ("request_id", -1),
        ("request_id", 2**63),
        ("request_id", None),
    ],
)
def test_request_ids_are_ints_in_range(field: str, value: Any) -> None:
    exc = _refusal(_frames(_ping_header(**{field: value})))
    assert exc.code is ErrorCode.MALFORMED
    assert "request_id" in str(exc)


def test_an_int_too_large_for_a_float_field_is_refused() -> None:
    header = _header(codec.encode(Ack(image_id="i", tracker_key="k")))
    header["timestamp"] = 10**400  # JSON allows it; float() overflows
    assert _refusal(_frames(header)).code is ErrorCode.MALFORMED


# --- schema evolution ------------------------------------------------------------------------


@settings(FUZZ, max_examples=60)
@given(messages(), json_objects(max_size=3))
def test_unknown_header_keys_are_ignored(message: Message, extra: dict[str, Any]) -> None:
    frames = to_wire(codec.encode(message))
    header = _header(frames)
    for key, value in extra.items():
        header.setdefault(f"future_{key}", value)
    for nested in ("record", "summary"):
        if isinstance(header.get(nested), dict):
            header[nested]["future_field"] = {"a": [1, 2.5, None]}
    assert_same_message(codec.decode(_frames(header, *frames[1:])), message)


def _optional_and_required_fields() -> list[tuple[type[Any], str, bool]]:
    found = []
    for cls in MESSAGE_CLASSES:
        for field in attrs.fields(cls):
            if "buffer" not in field.metadata:
                found.append((cls, field.name, field.default is attrs.NOTHING))
    return found


@pytest.mark.parametrize(
    ("cls", "name", "required"),
    _optional_and_required_fields(),
    ids=lambda value: value.__name__ if isinstance(value, type) else str(value),
)
@settings(FUZZ, max_examples=5)
@given(data=st.data())
def test_a_missing_field_takes_its_default_or_is_named_in_the_refusal(
    cls: type[Any], name: str, required: bool, data: st.DataObject
) -> None:
    message = data.draw(MESSAGE_STRATEGIES[cls], label="message")
    frames = to_wire(codec.encode(message))
    header = _header(frames)
    header.pop(name, None)  # a None whose default is None is left out already
    if required:
        exc = _refusal(_frames(header, *frames[1:]))
        assert exc.code is ErrorCode.MALFORMED
        assert repr(name) in str(exc)
    else:
        default: Any = attrs.fields_dict(cls)[name].default
        expected = default.factory() if isinstance(default, attrs.Factory) else default  # type: ignore[arg-type]
        decoded = codec.decode(_frames(header, *frames[1:]))
        assert getattr(decoded, name) == expected


def test_a_none_whose_default_is_none_is_left_out_of_the_header() -> None:
    record = ExecutionRecord(execution_id="e", status=ExecutionStatus.RUNNING, started_at=2.0)
    header = _header(codec.encode(RecordReply(request_id=2, record=record)))
    assert set(header["record"]) == {
        "execution_id",
        "status",
        "labels",
        "submitted_at",
        "started_at",
    }
    assert codec.decode(codec.encode(RecordReply(request_id=2, record=record))).record == record


@pytest.mark.parametrize(("nested", "name"), [("record", "status"), ("record", "execution_id")])
def test_a_missing_nested_field_is_named_with_its_path(nested: str, name: str) -> None:
    record = ExecutionRecord(execution_id="e", status=ExecutionStatus.RUNNING)
    header = _header(codec.encode(RecordReply(request_id=2, record=record)))
    del header[nested][name]
    exc = _refusal(_frames(header))
    assert f"{nested}.{name}" in str(exc)


def test_optional_nested_progress_round_trips_and_defaults() -> None:
    progress = ProgressEvent(execution_id="e", sequence=3, fraction=0.5, fields={"a": [1]})
    record = ExecutionRecord(execution_id="e", status=ExecutionStatus.RUNNING, progress=progress)
    message = RecordReply(request_id=2, record=record)
    assert codec.decode(codec.encode(message)) == message
    header = _header(codec.encode(message))
    del header["record"]["progress"]["fields"]
    decoded = codec.decode(_frames(header))
    assert isinstance(decoded, RecordReply) and decoded.record.progress is not None
    assert decoded.record.progress.fields == {}


# --- encoding what cannot be sent ------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(
            ImageFrame(
                image_id="i",
                dtype="u1",
                shape=(1,),
                pixels=b"x",
                metadata={"s": {1}},  # type: ignore[dict-item]
            ),
            id="set-in-metadata",
        ),
        pytest.param(ProgressEvent(execution_id="e", sequence=1, fields={"a": math.nan}), id="nan"),
        pytest.param(
            ProgressEvent(execution_id="e", sequence=1, fields={"a": [1, math.inf]}), id="inf"
        ),
        pytest.param(ProgressEvent(execution_id="e", sequence=1, fraction=math.nan), id="fraction"),
        pytest.param(ProgressEvent(execution_id="e", sequence=1, timestamp=-math.inf), id="time"),
        pytest.param(
            ProgressEvent(execution_id="e", sequence=1, fields={"n": numpy.int64(3)}), id="int64"
        ),
        pytest.param(
            ProgressEvent(execution_id="e", sequence=1, fields={"b": b"bytes"}),  # type: ignore[dict-item]
            id="bytes",
        ),
        pytest.param(
            ProgressEvent(execution_id="e", sequence=1, fields={"o": object()}),  # type: ignore[dict-item]
            id="obj",
        ),
        pytest.param(Execute(request_id=1, labels={"a": {"b"}}), id="set-label"),  # type: ignore[dict-item]
        pytest.param(
            ImageFrame(image_id="i", dtype="<u2", shape=(2,), pixels=b"xyz"), id="pixels-mismatch"
        ),
        pytest.param(ImageFrame(image_id="i", dtype="O", shape=(1,), pixels=bytes(8)), id="object"),
        pytest.param(ImageFrame(image_id="i", dtype="u1", shape=(-1,), pixels=b""), id="negative"),
        pytest.param(
            ImageFrame(image_id="i", dtype="u1", shape=(3,), pixels="abc"),  # type: ignore[arg-type]
            id="pixels-not-a-buffer",
        ),
        pytest.param(Ack(image_id="\ud800", tracker_key=""), id="lone-surrogate"),
    ],
)
def test_encoding_an_unsendable_message_raises_local_protocol_error(message: Message) -> None:
    with pytest.raises(LocalProtocolError):
        codec.encode(message)


@attrs.frozen
class _Imposter:
    """Not a message, though it names a message's wire type."""

    TYPE = Ping.TYPE
    request_id: int = 1


@pytest.mark.parametrize(
    "value",
    [
        object(),
        None,
        {"version": 1, "type": "ping"},
        Ping,
        _Imposter(),
        ExecutionRecord(execution_id="e", status=ExecutionStatus.QUEUED),
        ServerSummary(queued=0, running=0),
        b"",
    ],
    ids=repr,
)
def test_encoding_a_non_message_raises_local_protocol_error(value: Any) -> None:
    with pytest.raises(LocalProtocolError):
        codec.encode(value)


def test_plans_are_made_for_message_classes_only() -> None:
    """Plans are built on first use; a peer's unknown type names are not kept."""
    for number in range(1000):
        header = {"version": PROTOCOL_VERSION, "type": f"made-up-{number}", "frames": 0}
        assert _refusal(_frames(header)).code is ErrorCode.UNKNOWN_TYPE
    codec.decode(codec.encode(Ping(request_id=1)))
    assert set(codec._BY_TYPE) <= {cls.TYPE.value for cls in MESSAGE_CLASSES}
    assert set(codec._PLANS) <= set(MESSAGE_CLASSES)


def test_local_and_remote_errors_stay_apart() -> None:
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert not issubclass(RemoteProtocolError, LocalProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ProtocolError)


# --- check_json_object -----------------------------------------------------------------------


@settings(FUZZ, max_examples=80)
@given(json_objects())
def test_check_json_object_accepts_nested_json(value: dict[str, Any]) -> None:
    codec.check_json_object(value, "fields")
    codec.check_json_object({"t": (1, "a", [None, True, 1.5])})  # tuples become lists


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"a": [1, 2, {3}]}, "fields['a'][2]"),
        ({"a": [1, 2, math.nan]}, "fields['a'][2]"),
        ({"x": math.inf}, "fields['x']"),
        ({"x": {"y": -math.inf}}, "fields['x']['y']"),
        ({"n": numpy.int64(1)}, "fields['n']"),
        ({"n": numpy.float64(1.0)}, "fields['n']"),
        ({"b": b"x"}, "fields['b']"),
        ({"o": [object()]}, "fields['o'][0]"),
        ({"k": {1: "int key"}}, "fields['k']"),
        ({"k": {None: 1}}, "fields['k']"),
    ],
)
def test_check_json_object_names_the_offending_path(value: dict[str, Any], path: str) -> None:
    with pytest.raises(TypeError) as info:
        codec.check_json_object(value, "fields")
    assert path in str(info.value)


def test_check_json_object_refuses_absurd_nesting_and_names_the_default_root() -> None:
    deep: Any = 1
    for _ in range(150):
        deep = [deep]
    with pytest.raises(TypeError, match="deeper"):
        codec.check_json_object({"d": deep})
    with pytest.raises(TypeError, match=r"value\['s'\]"):
        codec.check_json_object({"s": {1}})


# --- peek_request_id -------------------------------------------------------------------------


@settings(FUZZ, max_examples=200)
@given(st.one_of(garbage_frames(), hostile_frames()))
def test_peek_request_id_never_raises(frames: list[bytes]) -> None:
    request_id = codec.peek_request_id(frames)
    assert request_id is None or 0 <= request_id <= MAX_REQUEST_ID


def test_peek_request_id_finds_the_id_in_a_broken_message() -> None:
    broken = {"version": 99, "type": "nope", "frames": "many", "request_id": 42, "x": {1: 2}}
    assert codec.peek_request_id([json.dumps(broken).encode(), b"extra"]) == 42
    assert codec.peek_request_id(_frames(_ping_header(type="execute"))) == 7  # missing fields
    assert codec.peek_request_id(_frames(_ping_header(), b"junk")) == 7
    assert codec.peek_request_id(_frames(_ping_header(request_id=MAX_REQUEST_ID))) == MAX_REQUEST_ID
    for request_id in (-1, 2**63, True, 7.0, "7", None, [7]):
        assert codec.peek_request_id(_frames(_ping_header(request_id=request_id))) is None
    for frames in ([], [b""], [b"\xff"], [b"[42]"], [b'"request_id"'], [b"{" * 10_000]):
        assert codec.peek_request_id(frames) is None
    huge = json.dumps({"request_id": 5, "pad": "x" * codec.DEFAULT_MAX_HEADER_BYTES}).encode()
    assert codec.peek_request_id([huge]) is None


@settings(FUZZ, max_examples=100)
@given(messages())
def test_peek_request_id_agrees_with_decode(message: Message) -> None:
    assert codec.peek_request_id(to_wire(codec.encode(message))) == getattr(
        message, "request_id", None
    )


# --- the header vocabulary -------------------------------------------------------------------


@pytest.mark.parametrize("cls", [*MESSAGE_CLASSES, *VALUE_CLASSES], ids=_class_id)
def test_every_field_is_a_message_fields_key(cls: type[Any]) -> None:
    missing = {field.name for field in attrs.fields(cls)} - HEADER_KEYS
    assert not missing, f"{cls.__name__} fields missing from MessageFields: {sorted(missing)}"


def test_message_fields_holds_the_envelope_and_nothing_stale() -> None:
    assert {"version", "type", "frames"} <= HEADER_KEYS
    used = {"version", "type", "frames"} | {
        field.name for cls in (*MESSAGE_CLASSES, *VALUE_CLASSES) for field in attrs.fields(cls)
    }
    assert used == HEADER_KEYS
    assert len(HEADER_KEYS) == len(MessageFields)  # no aliases


def test_every_wire_type_name_is_unique() -> None:
    names = [cls.TYPE.value for cls in MESSAGE_CLASSES]
    assert len(names) == len(set(names))
    assert all(type(name) is str for name in names)


def test_default_dict_fields_are_not_shared_between_decoded_messages() -> None:
    header = _ping_header(type="execute")
    first = codec.decode(_frames(header))
    second = codec.decode(_frames(header))
    assert isinstance(first, Execute) and isinstance(second, Execute)
    assert first.labels == {} and first.labels is not second.labels


# --- import hygiene --------------------------------------------------------------------------


def test_importing_the_codec_imports_no_zmq() -> None:
    code = (
        "import sys, zmqruntime.core.codec\n"
        "loaded = sorted(m for m in sys.modules if m == 'zmq' or m.startswith('zmq.'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def _imported_modules(path: Path) -> set[str]:
    """The modules ``path`` imports when it runs (``if TYPE_CHECKING:`` blocks never do)."""
    tree = ast.parse(path.read_text())
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        and ast.unparse(node.test) in {"TYPE_CHECKING", "typing.TYPE_CHECKING"}
        for statement in node.body
        for inner in ast.walk(statement)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_the_codec_and_what_it_imports_from_the_package_import_no_threads_or_zmq() -> None:
    package = Path(zmqruntime.__file__).parent
    todo, seen = ["zmqruntime.core.codec"], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = package.joinpath(*module.split(".")[1:]).with_suffix(".py")
        if not path.exists():  # a name imported from a module, not a module
            continue
        imported = _imported_modules(path)
        for name in imported:
            root = name.split(".")[0]
            assert root not in {"threading", "_thread", "zmq", "concurrent", "queue"}, (
                f"{path.name} imports {name}"
            )
        todo += [name for name in imported if name.startswith("zmqruntime.")]
    assert "zmqruntime.core.messages" in seen and "zmqruntime.errors" in seen


def test_decoded_messages_are_frozen() -> None:
    message = codec.decode(codec.encode(Shutdown(request_id=1, force=True)))
    assert isinstance(message, Shutdown)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        message.force = False  # type: ignore[misc]
    assert message == Shutdown(request_id=1, force=True)
    assert codec.decode(codec.encode(StatusRequest(request_id=0))) == StatusRequest(request_id=0)
    assert isinstance(
        codec.decode(
            codec.encode(
                Completion(
                    record=ExecutionRecord(execution_id="e", status=ExecutionStatus.COMPLETE)
                )
            )
        ),
        Completion,
    )
