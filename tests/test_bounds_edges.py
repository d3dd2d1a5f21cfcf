"""Every documented bound at its edge: at the limit it passes, one past it fails.

JSON nesting (100 levels, lists and objects alike), array dimensions (32), ints (2048 bits),
header bytes (1 MiB), request ids (0..2**63-1), an int where a float is expected, the tracker's
waits at ``limit=1`` and ``timeout=0``, its recent-ack memory (10,000), retention (at least one
record), a request table (4 workers, 1,024 pending), execution ids (1..256 characters) and
an ack channel's early acks (4,096).
"""

from __future__ import annotations

import json
import operator
import threading
import typing
from typing import Any

import attrs
import numpy
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.strategies import MAX_REQUEST_ID, MESSAGE_STRATEGIES, to_wire
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core import codec, wire
from zmqruntime.core.ack import EARLY_ACK_CAPACITY, AckChannel
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import (
    MESSAGE_CLASSES,
    PROTOCOL_VERSION,
    Ack,
    AppReply,
    AppRequest,
    Completion,
    ErrorReply,
    ExecutionRecord,
    ExecutionStatus,
    ImageFrame,
    ImageSent,
    Message,
    Ping,
)
from zmqruntime.core.queue_tracker import (
    DEFAULT_RECENT_ACK_CAPACITY,
    GlobalQueueTrackerRegistry,
    QueueTracker,
)
from zmqruntime.core.requests import MAX_PENDING_REQUESTS, RequestTable
from zmqruntime.core.safe_format import dump_tree, load_tree
from zmqruntime.core.serializers import SafeSerializer
from zmqruntime.errors import (
    ConfigurationError,
    ErrorCode,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
)
from zmqruntime.execution import ExecutionClient, ExecutionServer
from zmqruntime.execution.records import RetentionPolicy
from zmqruntime.protocols import JSONObject

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=40)
WAIT = 10.0
DEPTH, NDIM, INT_BITS = wire.MAX_DEPTH, wire.MAX_NDIM, wire.MAX_INT_BITS
LEVELS = st.lists(st.sampled_from(["list", "dict"]), min_size=1, max_size=DEPTH + 20)


def _nested(kinds: list[str], leaf: Any = 1) -> Any:
    """Containers nested ``len(kinds)`` levels deep, outermost first, ``leaf`` innermost."""
    value = leaf
    for kind in reversed(kinds):
        value = [value] if kind == "list" else {"k": value}
    return value


_request_id = operator.attrgetter("request_id")


def _refusal(frames: list[Any]) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        codec.decode(frames)
    return info.value


def _header(frames: list[Any]) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(memoryview(frames[0]).tobytes())
    return header


def _frames(header: dict[str, Any], *buffers: bytes) -> list[bytes]:
    return [json.dumps(header).encode(), *buffers]


# --- JSON nesting: 100 levels of lists or objects ------------------------------------------


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_check_json_object_takes_100_levels_of_each_container_and_refuses_101(kind: str) -> None:
    codec.check_json_object(_nested([kind] * DEPTH))
    codec.check_json_object({"k": _nested([kind] * (DEPTH - 1))})  # the root is a level too
    with pytest.raises(TypeError, match="deeper than 100"):
        codec.check_json_object(_nested([kind] * (DEPTH + 1)))
    with pytest.raises(TypeError, match="deeper than 100"):
        codec.check_json_object({"k": _nested([kind] * DEPTH)})


@settings(FUZZ)
@given(LEVELS)
def test_json_nesting_of_any_mix_is_refused_exactly_past_100_levels(kinds: list[str]) -> None:
    value = _nested(kinds)
    assert (wire.json_problem(value) is None) == (len(kinds) <= DEPTH)


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_image_metadata_nests_100_levels_and_not_101(kind: str) -> None:
    metadata = {"k": _nested([kind] * (DEPTH - 1))}  # the metadata object is the first level
    image = codec.image_from_array(numpy.zeros(1, "u1"), image_id="i", metadata=metadata)
    decoded = codec.decode(to_wire(codec.encode(image)))
    assert isinstance(decoded, ImageFrame) and decoded.metadata == metadata
    too_deep = attrs.evolve(image, metadata={"k": _nested([kind] * DEPTH)})
    with pytest.raises(LocalProtocolError, match="deeper than 100"):
        codec.encode(too_deep)
    header = _header(codec.encode(image))
    header["metadata"] = too_deep.metadata
    assert _refusal(_frames(header, b"\0")).code is ErrorCode.MALFORMED


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("leaf", [1, b"bytes"], ids=["plain-json", "tagged"])
def test_safe_payloads_nest_100_levels_and_not_101(kind: str, leaf: Any) -> None:
    # Plain JSON and trees with a tagged leaf take different paths through the encoder.
    deepest = _nested([kind] * DEPTH, leaf)
    assert load_tree(dump_tree(deepest)) == deepest
    with pytest.raises(TypeError, match="deeper than 100"):
        dump_tree(_nested([kind] * (DEPTH + 1), leaf))
    text = json.dumps(_nested([kind] * (DEPTH + 1))).encode()
    with pytest.raises(RemoteProtocolError, match="deeper than 100"):
        load_tree([text])
    assert load_tree([json.dumps(_nested([kind] * DEPTH)).encode()]) == _nested([kind] * DEPTH)


# --- array dimensions: 32 ------------------------------------------------------------------

_NUMPY_TAKES_33 = numpy.lib.NumpyVersion(numpy.__version__) >= "2.0.0"


def test_an_image_of_32_dimensions_travels_and_33_do_not() -> None:
    image = codec.image_from_array(
        numpy.arange(2, dtype="<u2").reshape((1,) * 31 + (2,)), image_id="i"
    )
    decoded = codec.decode(to_wire(codec.encode(image)))
    assert isinstance(decoded, ImageFrame)
    assert codec.array_from_image(decoded).shape == (1,) * 31 + (2,)
    header = _header(codec.encode(image))
    header["shape"] = [1] * 32 + [2]
    assert "32" in str(_refusal(_frames(header, bytes(4))))
    with pytest.raises(LocalProtocolError):
        codec.encode(ImageFrame(image_id="i", dtype="<u2", shape=(1,) * 33, pixels=bytes(2)))


def test_a_safe_payload_array_of_32_dimensions_travels_and_33_do_not() -> None:
    array = numpy.arange(3, dtype="<i4").reshape((1,) * 31 + (3,))
    frames = dump_tree({"a": array})
    numpy.testing.assert_array_equal(load_tree(to_wire(frames))["a"], array)  # type: ignore[index]
    tag = json.loads(memoryview(frames[0]).tobytes())
    tag["a"]["shape"] = [1] * 33
    with pytest.raises(RemoteProtocolError, match="32"):
        load_tree([json.dumps(tag).encode(), bytes(4)])
    if _NUMPY_TAKES_33:
        with pytest.raises(TypeError, match="33 dimensions"):
            dump_tree(numpy.zeros((1,) * 33, "u1"))


@pytest.mark.skipif(not _NUMPY_TAKES_33, reason="numpy 1 makes no array of 33 dimensions")
def test_image_from_array_of_33_dimensions_cannot_be_sent() -> None:
    image = codec.image_from_array(numpy.zeros((1,) * 33, "u1"), image_id="i")
    with pytest.raises(LocalProtocolError, match="32"):
        codec.encode(image)


# --- ints: 2048 bits -----------------------------------------------------------------------


class _Int(int):
    """An int subclass (an IntEnum is one)."""


@pytest.mark.parametrize("sign", [1, -1])
def test_ints_of_2048_bits_are_json_and_2049_are_not(sign: int) -> None:
    widest, wider = sign * (2**INT_BITS - 1), sign * 2**INT_BITS
    for fits in (widest, [widest], {"n": widest}):
        codec.check_json_object(fits)
    for too_wide in (wider, [wider], {"n": wider}):
        with pytest.raises(TypeError, match="2048 bits"):
            codec.check_json_object(too_wide)
    assert dump_tree([widest]) == [json.dumps([widest]).encode()]  # plain JSON, no tag
    assert b"$zr" in memoryview(dump_tree([wider])[0]).tobytes()  # a hex tag
    assert load_tree(dump_tree([widest, wider])) == [widest, wider]
    # An int subclass is not plain JSON: the encoder decides by its width alone.
    assert dump_tree([_Int(widest)]) == [json.dumps([widest]).encode()]
    assert b"$zr" in memoryview(dump_tree([_Int(wider)])[0]).tobytes()
    assert load_tree(dump_tree([_Int(wider)])) == [wider]


# --- header bytes: 1 MiB by default --------------------------------------------------------


def _ping_of_size(size: int, request_id: int = 7) -> bytes:
    header = {"version": PROTOCOL_VERSION, "type": "ping", "frames": 0, "request_id": request_id}
    empty = len(wire.dump_json({**header, "pad": ""}))
    text = wire.dump_json({**header, "pad": "x" * (size - empty)})
    assert len(text) == size
    return text


def test_a_header_of_exactly_max_header_bytes_decodes_and_one_more_is_too_large() -> None:
    limit = codec.DEFAULT_MAX_HEADER_BYTES
    assert limit == 1 << 20
    assert codec.decode([_ping_of_size(limit)]) == Ping(request_id=7)
    assert _refusal([_ping_of_size(limit + 1)]).code is ErrorCode.TOO_LARGE
    assert codec.decode([_ping_of_size(80)], max_header_bytes=80) == Ping(request_id=7)
    with pytest.raises(RemoteProtocolError) as info:
        codec.decode([_ping_of_size(81)], max_header_bytes=80)
    assert info.value.code is ErrorCode.TOO_LARGE


def test_peek_request_id_reads_headers_up_to_max_header_bytes() -> None:
    limit = codec.DEFAULT_MAX_HEADER_BYTES
    assert codec.peek_request_id([_ping_of_size(limit)]) == 7
    assert codec.peek_request_id([_ping_of_size(limit + 1)]) is None


# --- request ids: 0..2**63-1 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_id", "fits"),
    [(0, True), (MAX_REQUEST_ID, True), (-1, False), (MAX_REQUEST_ID + 1, False)],
)
def test_request_ids_span_0_to_2_63_minus_1(request_id: int, fits: bool) -> None:
    frames = [_ping_of_size(200, request_id)]
    if fits:
        assert codec.decode(frames) == Ping(request_id=request_id)
        assert codec.peek_request_id(frames) == request_id
    else:
        assert "request_id" in str(_refusal(frames))
        assert codec.peek_request_id(frames) is None


@settings(FUZZ)
@given(data=st.data(), request_id=st.integers(0, MAX_REQUEST_ID))
def test_encode_with_request_id_replaces_the_messages_own(
    data: st.DataObject, request_id: int
) -> None:
    cls = data.draw(
        st.sampled_from([c for c in MESSAGE_CLASSES if "request_id" in attrs.fields_dict(c)])
    )
    message = data.draw(MESSAGE_STRATEGIES[cls])
    frames = codec.encode(message, request_id=request_id)
    assert _header(frames)["request_id"] == request_id
    decoded = codec.decode(to_wire(frames))
    assert _request_id(decoded) == request_id
    assert codec.peek_request_id(to_wire(frames)) == request_id
    unchanged = codec.decode(to_wire(codec.encode(message)))
    assert _request_id(unchanged) == _request_id(message)


def test_encode_with_request_id_sets_an_id_a_push_has_not() -> None:
    push = Completion(record=ExecutionRecord(execution_id="e", status=ExecutionStatus.COMPLETE))
    decoded = codec.decode(to_wire(codec.encode(push, request_id=5)))
    assert isinstance(decoded, Completion) and decoded.request_id == 5
    assert codec.decode(to_wire(codec.encode(push))) == push  # None stays None


# --- an int where a float is expected (what a peer not written in Python sends) -------------


def _float_paths(cls: type[Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Header paths of the fields typed ``float`` or ``float | None``, nested records included."""
    types = typing.get_type_hints(cls, localns={"JSONObject": dict})
    found = []
    for field in attrs.fields(cls):
        tp = types[field.name]
        args = [arg for arg in typing.get_args(tp) if arg is not type(None)] or [tp]
        if args == [float]:
            found.append((*prefix, field.name))
        elif isinstance(args[0], type) and attrs.has(args[0]):
            found += _float_paths(args[0], (*prefix, field.name))
    return found


_FLOATY = [cls for cls in MESSAGE_CLASSES if _float_paths(cls)]


def test_float_fields_are_found() -> None:
    names = {cls.__name__ for cls in _FLOATY}
    assert {"Ack", "ImageSent", "Pong", "ProgressEvent", "RecordReply", "Completion"} <= names


def _at(header: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        header = header.get(key) if type(header) is dict else None
    return header


def _put(header: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        header = header[key]
    header[path[-1]] = value


@pytest.mark.parametrize("cls", _FLOATY, ids=lambda cls: cls.__name__)
@settings(FUZZ)
@given(data=st.data())
def test_an_int_decodes_as_a_float_and_a_bool_is_refused(
    cls: type[Any], data: st.DataObject
) -> None:
    message = data.draw(MESSAGE_STRATEGIES[cls])
    frames = to_wire(codec.encode(message))
    header = _header(frames)
    paths = [path for path in _float_paths(cls) if type(_at(header, path)) is float]
    if not paths:
        return
    path = data.draw(st.sampled_from(paths))
    whole = int(_at(header, path))  # the same number without a fraction, as JSON 1 not 1.0
    _put(header, path, whole)
    decoded = codec.decode(_frames(header, *frames[1:]))
    got = _at(_header(codec.encode(decoded)), path)
    assert type(got) is float and got == float(whole)
    for wrong in (True, False, str(whole), [whole]):
        _put(header, path, wrong)
        exc = _refusal(_frames(header, *frames[1:]))
        assert exc.code is ErrorCode.MALFORMED and path[-1] in str(exc)


def test_a_json_integer_is_a_float_timestamp() -> None:
    header = {"version": 1, "type": "ack", "frames": 0, "image_id": "i", "tracker_key": "k"}
    decoded = codec.decode(_frames({**header, "timestamp": 1}))
    assert isinstance(decoded, Ack) and type(decoded.timestamp) is float
    assert decoded.timestamp == 1.0
    assert _refusal(_frames({**header, "timestamp": True})).code is ErrorCode.MALFORMED


# --- image_from_array's fields -------------------------------------------------------------


def test_image_from_array_carries_tracker_key_metadata_and_ack_to() -> None:
    metadata: JSONObject = {"well": "B03", "site": 2, "channels": ["dapi", "gfp"], "z": 1.5}
    image = codec.image_from_array(
        numpy.ones((2, 3), "<u2"),
        image_id="img-1",
        tracker_key="viewer-1",
        metadata=metadata,
        ack_to="ipc:///tmp/acks",
    )
    assert (image.tracker_key, image.metadata, image.ack_to) == (
        "viewer-1",
        metadata,
        "ipc:///tmp/acks",
    )
    decoded = codec.decode(to_wire(codec.encode(image)))
    assert isinstance(decoded, ImageFrame)
    assert (decoded.image_id, decoded.tracker_key, decoded.ack_to) == (
        "img-1",
        "viewer-1",
        "ipc:///tmp/acks",
    )
    assert decoded.metadata == metadata
    plain = codec.image_from_array(numpy.ones(1, "u1"), image_id="p")
    assert (plain.tracker_key, plain.metadata, plain.ack_to) == ("", {}, None)


# --- the tracker: waits at limit=1 and timeout=0, recent acks, add_tracker ----------------


def test_tracker_waits_take_limit_1_and_timeout_0() -> None:
    tracker = QueueTracker("viewer")
    assert tracker.wait_pending_below(1, 0) is True
    assert tracker.wait_all_acknowledged(0) is True
    assert tracker.wait_and_register("a", 1, 0) is True
    assert tracker.wait_pending_below(1, 0) is False  # one pending: not below 1
    assert tracker.wait_pending_below(2, 0.0) is True
    assert tracker.wait_all_acknowledged(0.0) is False
    assert tracker.wait_and_register("b", 1, 0) is False  # full at once, nothing registered
    assert tracker.get_progress() == (0, 1)
    assert tracker.mark_processed("a") is True
    assert tracker.wait_and_register("b", 1, 0) is True
    for limit in (0, -1, True):
        with pytest.raises(ConfigurationError, match="limit"):
            tracker.wait_pending_below(limit, 0)
    with pytest.raises(ConfigurationError, match="timeout"):
        tracker.wait_pending_below(1, -0.001)


def test_the_default_recent_ack_memory_holds_10_000_ids() -> None:
    assert DEFAULT_RECENT_ACK_CAPACITY == 10_000
    for capacity, remembered in ((DEFAULT_RECENT_ACK_CAPACITY, True), (1, True), (0, False)):
        tracker = QueueTracker("viewer", recent_ack_capacity=capacity)
        for n in range(capacity or 1):
            tracker.register_sent(f"i{n}")
            tracker.mark_processed(f"i{n}")
        assert tracker.mark_processed("i0") is False
        assert tracker.statistics().duplicate_acks == int(remembered)
        tracker.register_sent("one-more")
        tracker.mark_processed("one-more")  # pushes i0 out
        assert tracker.mark_processed("i0") is False
        assert tracker.statistics().duplicate_acks == int(remembered)


def test_add_tracker_registers_an_existing_tracker_once_per_key() -> None:
    registry = GlobalQueueTrackerRegistry()
    tracker = QueueTracker("tcp://127.0.0.1:7780", timeout=3.0)
    registry.add_tracker(tracker)
    assert registry.get_tracker("tcp://127.0.0.1:7780") is tracker
    assert registry.get_or_create_tracker("tcp://127.0.0.1:7780") is tracker
    registry.add_tracker(tracker)  # the same tracker again: nothing changes
    registry.add_tracker(tracker, viewer_key="alias")
    assert registry.get_all_trackers() == {"tcp://127.0.0.1:7780": tracker, "alias": tracker}
    other = QueueTracker("tcp://127.0.0.1:7780")
    with pytest.raises(ValueError, match="7780"):
        registry.add_tracker(other)
    with pytest.raises(ValueError, match="alias"):
        registry.add_tracker(other, "alias")
    assert registry.get_tracker("tcp://127.0.0.1:7780") is tracker
    assert registry.remove_tracker("alias") is True
    registry.add_tracker(other, "alias")
    assert registry.get_tracker("alias") is other


# --- retention: at least one record, for more than 0 seconds ------------------------------


def test_retention_keeps_at_least_one_record_for_some_time() -> None:
    assert RetentionPolicy(max_records=1, max_age=1e-9).max_records == 1
    bads = [{"max_records": 0}, {"max_records": -1}, {"max_age": 0.0}, {"max_age": -1.0}]
    bads += [{"max_records": True}, {"max_records": 1.5}, {"max_bytes": 2.5}, {"max_age": True}]
    for bad in bads:
        with pytest.raises(ConfigurationError, match=next(iter(bad))):
            RetentionPolicy(**bad)


# --- a request table: 4 workers, 1,024 pending ---------------------------------------------


def test_a_request_table_runs_4_handlers_at_once_and_queues_1024() -> None:
    release, running = threading.Event(), threading.Condition()
    state = {"now": 0, "most": 0}
    answers: list[Any] = []

    def hold(payload: Any, _peer: Any) -> Any:
        with running:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            running.notify_all()
        release.wait(WAIT)
        with running:
            state["now"] -= 1
        return payload

    def answer(_peer: Any, reply: Message) -> None:
        with running:
            answers.append(reply)
            running.notify_all()

    table = RequestTable({"hold": hold})
    assert (table.workers, table.max_pending, MAX_PENDING_REQUESTS) == (4, 1024, 1024)
    serializer = SafeSerializer()
    payload = tuple(serializer.dumps(None))
    try:
        for n in range(MAX_PENDING_REQUESTS):
            request = AppRequest(request_id=n, name="hold", payload=payload)
            assert table.dispatch(request, b"peer", serializer, answer) is None
        with running:
            assert running.wait_for(lambda: state["now"] == 4, WAIT)
        refused = table.dispatch(AppRequest(request_id=9, name="hold"), b"p", serializer, answer)
        assert isinstance(refused, ErrorReply) and refused.code is ErrorCode.REFUSED
        assert "1024 requests are waiting" in refused.message
        release.set()
        with running:
            assert running.wait_for(lambda: len(answers) == MAX_PENDING_REQUESTS, WAIT)
    finally:
        release.set()
        table.close(WAIT)
    assert state["most"] == 4
    assert all(isinstance(reply, AppReply) for reply in answers)


# --- execution ids: 1..256 characters ------------------------------------------------------


def test_an_execution_id_of_256_characters_runs_and_257_is_refused(
    config: ZMQConfig, no_thread_leak: None
) -> None:
    endpoint = Endpoint.of(0, transport_mode=TransportMode.IPC, config=config)
    server = ExecutionServer.bind(endpoint, lambda task, ctx: task)
    with server, ExecutionClient.to(server.server.sockets.endpoint) as client:
        assert client.submit("ok", execution_id="e" * 256).result(WAIT) == "ok"
        assert client.submit("ok", execution_id="\u00e9" * 256).result(WAIT) == "ok"
        with pytest.raises(RemoteError) as info:
            client.submit("no", execution_id="e" * 257).result(WAIT)
        assert info.value.code is ErrorCode.MALFORMED
        assert "1..256 characters" in str(info.value)


# --- an ack channel keeps 4,096 early acks -------------------------------------------------


def test_an_ack_channel_keeps_the_4096_latest_early_acks(
    config: ZMQConfig, no_thread_leak: None
) -> None:
    assert EARLY_ACK_CAPACITY == 4096
    registry = GlobalQueueTrackerRegistry()
    tracker = registry.get_or_create_tracker("v")
    tracker.register_sent("last")
    done = threading.Event()
    endpoint = Endpoint.of(0, transport_mode=TransportMode.IPC, config=config)
    with AckChannel.bind(endpoint, registry=registry) as channel:
        channel.add_callback(lambda ack: done.set() if ack.image_id == "last" else None)
        context = zmq.Context()
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDTIMEO, int(WAIT * 1000))
        push.setsockopt(zmq.LINGER, 1000)
        try:
            push.connect(channel.address)
            # One past the capacity of acks that overtake their notices: the oldest is dropped.
            for n in range(EARLY_ACK_CAPACITY + 1):
                push.send_multipart(codec.encode(Ack(image_id=f"e{n}", tracker_key="v")))
            for image_id in ("e0", "e1"):
                push.send_multipart(codec.encode(ImageSent(image_id=image_id, tracker_key="v")))
            push.send_multipart(codec.encode(Ack(image_id="last", tracker_key="v")))
        finally:
            push.close()
            context.term()
        assert done.wait(WAIT)
    assert tracker.get_pending_count() == 1  # e0's ack was dropped, e1's was kept and applied
    assert tracker.wait_pending_below(1, 0) is False
    assert tracker.mark_processed("e0") is True
    assert tracker.mark_processed("e1") is False


def test_a_header_nests_at_most_its_object_plus_100_levels_on_any_thread() -> None:
    """An unknown field nested deeper than the limit is refused the same way on every thread
    (Python's own recursion limit depends on the parsing thread's stack)."""

    def header(levels: int) -> bytes:  # the header object plus ``levels`` lists
        head = b'{"version":1,"type":"ping","frames":0,"request_id":0,"x":'
        return head + b"[" * levels + b"]" * levels + b"}"

    assert isinstance(codec.decode([header(100)]), Ping)
    with pytest.raises(RemoteProtocolError, match="nested deeper than 101 levels"):
        codec.decode([header(101)])
