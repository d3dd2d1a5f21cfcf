"""Tests of zmqruntime.core.serializers: bit-exact round trips, refusals, and hostile input."""

from __future__ import annotations

import collections
import contextlib
import enum
import json
import math
import pathlib
import pickle
import sys
from typing import Any

import attrs
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmqruntime.core.serializers import MAX_DEPTH, PickleSerializer, SafeSerializer
from zmqruntime.errors import RemoteProtocolError

SAFE = SafeSerializer()
PICKLE = PickleSerializer()

# --------------------------------------------------------------------------------------------
# helpers


def assert_same(expected: Any, actual: Any, path: str = "obj") -> None:
    """Bit-exact comparison, modulo the documented normalisations.

    Tuples come back as lists, bytes-likes as ``bytes``, ``numpy.str_``/``numpy.bytes_`` as
    ``str``/``bytes``; Python float NaNs only need to stay NaN.
    """
    if isinstance(expected, np.ndarray):
        assert type(actual) is np.ndarray, path
        assert actual.dtype.str == expected.dtype.str, path
        assert actual.dtype == expected.dtype, path
        assert actual.shape == expected.shape, path
        assert actual.tobytes() == expected.tobytes(), path
    elif isinstance(expected, np.generic) and not isinstance(expected, (np.str_, np.bytes_)):
        assert type(actual) is type(expected), path
        assert actual.dtype.str == expected.dtype.str, path
        assert np.asarray(actual).tobytes() == np.asarray(expected).tobytes(), path
    elif isinstance(expected, (bytes, bytearray, memoryview)):
        assert type(actual) is bytes, path
        assert actual == bytes(expected), path
    elif isinstance(expected, bool):
        assert type(actual) is bool, path
        assert actual is expected, path
    elif isinstance(expected, int):
        assert type(actual) is int, path
        assert actual == expected, path
    elif isinstance(expected, float):
        assert type(actual) is float, path
        if math.isnan(expected):
            assert math.isnan(actual), path
        else:
            assert actual == expected, path
            assert math.copysign(1.0, actual) == math.copysign(1.0, expected), path
    elif isinstance(expected, str):
        assert type(actual) is str, path
        assert actual == expected, path
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is list, path
        assert len(actual) == len(expected), path
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_same(e, a, f"{path}[{i}]")
    elif isinstance(expected, dict):
        assert type(actual) is dict, path
        assert list(actual) == list(expected), path
        for k, v in expected.items():
            assert_same(v, actual[k], f"{path}[{k!r}]")
    else:
        assert expected is None, f"unexpected type in test data at {path}"
        assert actual is None, path


def wire_copies(frames: list[Any]) -> list[bytes]:
    """What the far side of a socket sees: independent bytes copies of every frame."""
    return [bytes(memoryview(f)) for f in frames]


def roundtrip(obj: Any) -> None:
    frames = SAFE.dumps(obj)
    assert isinstance(frames, list)
    assert type(frames[0]) is bytes
    header = frames[0].decode("utf-8")  # strict UTF-8
    json.loads(header, parse_constant=_no_constant)  # strict JSON
    assert_same(obj, SAFE.loads(frames))
    assert_same(obj, SAFE.loads(wire_copies(frames)))
    assert_same(obj, SAFE.loads([memoryview(bytearray(f)) for f in frames]))


def _short_id(obj: Any) -> str:
    if isinstance(obj, int) and abs(obj) > 10**100:
        return f"int_{obj.bit_length()}_bits"
    text = repr(obj).replace("\n", " ")
    return text if len(text) <= 40 else text[:37] + "..."


def _no_constant(name: str) -> None:
    raise AssertionError(f"frame 0 contains the non-JSON constant {name}")


# --------------------------------------------------------------------------------------------
# strategies

TAGGY_KEYS = st.sampled_from(["$zr", "array", "dtype", "shape", "frame", "items", "value", ""])
KEYS = st.one_of(st.text(max_size=8), TAGGY_KEYS)
TEXT = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(exclude_categories=()), max_size=6),  # lone surrogates included
    st.sampled_from(["$zr", '{"$zr": "bytes", "frame": 1}', "\0", "\\u0024zr"]),
)
FLOATS = st.one_of(
    st.floats(),
    st.sampled_from([math.nan, -math.nan, math.inf, -math.inf, -0.0, 5e-324, sys.float_info.max]),
)
INTS = st.one_of(
    st.integers(),
    st.builds(
        lambda bits, sign, low: sign * (2**bits + low),
        st.integers(60, 7000),
        st.sampled_from([1, -1]),
        st.integers(0, 2**64),
    ),
    st.sampled_from([2048, -2048, 5000, -9000]).map(lambda n: (n // abs(n)) * 2 ** abs(n)),
    st.sampled_from([2048, -2048]).map(lambda n: (n // abs(n)) * (2 ** abs(n) - 1)),
    st.just(5000).map(lambda n: 10**n),  # more decimal digits than int->str allows
)


@st.composite
def dtypes(draw: st.DrawFn, *, exotic: bool = True) -> np.dtype[Any]:
    """Every supported dtype kind, in both byte orders (``exotic`` adds void)."""
    kinds = [
        hnp.scalar_dtypes(),
        hnp.byte_string_dtypes(max_len=5),
        hnp.unicode_string_dtypes(max_len=5),
    ]
    if exotic:
        kinds.append(st.just("V3"))
    base = np.dtype(draw(st.one_of(kinds)))
    order = draw(st.sampled_from(["<", ">", "="]))
    return base.newbyteorder(order)  # type: ignore[arg-type,no-any-return]


@st.composite
def raw_arrays(draw: st.DrawFn) -> np.ndarray[Any, Any]:
    """Arrays holding arbitrary bit patterns (NaN payloads, NaT …), in assorted layouts."""
    dtype = draw(dtypes())
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    size = math.prod(shape) * dtype.itemsize
    data = draw(st.binary(min_size=size, max_size=size))
    arr = np.frombuffer(data, dtype).reshape(shape).copy()
    layout = draw(st.sampled_from(["c", "transposed", "fortran", "strided", "reversed", "ro"]))
    if layout == "transposed":
        arr = arr.T
    elif layout == "fortran":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim >= 1:
        arr = arr[::2, ..., ::3] if arr.ndim >= 2 else arr[::2]
    elif layout == "reversed" and arr.ndim >= 1:
        arr = arr[..., ::-1]
    elif layout == "ro":
        arr.flags.writeable = False
    return arr  # type: ignore[no-any-return]


VALUE_ARRAYS = dtypes(exotic=False).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3))
)


def _strided_view(data: bytes) -> memoryview:
    """A memoryview that is contiguous for 0-1 bytes and strided otherwise."""
    return memoryview(data)[::2]


@st.composite
def numpy_scalars(draw: st.DrawFn) -> np.generic:
    dtype = draw(hnp.scalar_dtypes())
    data = draw(st.binary(min_size=dtype.itemsize, max_size=dtype.itemsize))
    return np.frombuffer(data, dtype)[0]  # type: ignore[no-any-return]


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    INTS,
    FLOATS,
    TEXT,
    st.binary(max_size=20),
    st.binary(max_size=8).map(bytearray),
    st.binary(max_size=8).map(_strided_view),
    raw_arrays(),
    VALUE_ARRAYS,
    numpy_scalars(),
)
TREES = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(KEYS, children, max_size=4),
    ),
    max_leaves=16,
)
JSON_TREES = st.recursive(
    st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=4)
    ),
    max_leaves=20,
)


# --------------------------------------------------------------------------------------------
# round trips


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TREES)
def test_roundtrip_mixed_trees_bit_exact(obj: Any) -> None:
    roundtrip(obj)


@settings(max_examples=200, deadline=None)
@given(JSON_TREES)
def test_roundtrip_json_trees(obj: Any) -> None:
    roundtrip(obj)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_arrays())
def test_roundtrip_arrays_bit_exact(arr: np.ndarray[Any, Any]) -> None:
    roundtrip(arr)
    roundtrip({"nested": [arr, {"again": arr}]})


@pytest.mark.parametrize(
    "obj",
    [
        None,
        True,
        False,
        0,
        -1,
        2**63,
        10**5000,
        -(2**9000),
        1.5,
        -0.0,
        math.nan,
        math.inf,
        -math.inf,
        "",
        "héllo ☃ \U0001f600",
        "\ud800",
        [],
        (),
        {},
        {"$zr": "array", "dtype": "<f8", "shape": [1], "frame": 1},
        {"$zr": {"$zr": {"$zr": 1}}},
        {"$zr": "dict", "items": {"$zr": "bytes", "frame": 1}},
        [1, (2, (3, [4.5, None])), {"a": [True, "x"]}],
        b"",
        b"\x00\xff" * 100,
        bytearray(b"abc"),
        memoryview(b"abcdef")[::2],
        np.arange(6, dtype="<i4").reshape(2, 3).data,
        np.float32(1.5),
        np.float64(math.nan),
        np.int64(-(2**63)),
        np.uint8(255),
        np.bool_(True),
        np.complex128(1 + 2j),
        np.datetime64("2024-02-29T12:00:00.123456789"),
        np.timedelta64("NaT"),
        np.str_("numpy str"),
        np.bytes_(b"numpy bytes"),
        np.array(3, dtype=">u2"),
        np.zeros((0,), dtype="<f8"),
        np.zeros((3, 0, 2), dtype=">c8"),
        np.array([b"ab", b"c\x00"], dtype="S3"),
        np.array(["ab", "☃"], dtype=">U2"),
        np.arange(24, dtype=">f8").reshape(4, 6)[::2, ::3],
        np.arange(24, dtype="<i2").reshape(2, 3, 4).transpose(2, 0, 1),
        np.asfortranarray(np.arange(12, dtype="<u8").reshape(3, 4)),
        np.array(["2020-01-01", "NaT"], dtype="datetime64[D]"),
        np.array([1, 2], dtype="timedelta64[25s]"),
        np.array([True, False]),
        np.zeros(3, dtype="V4"),
    ],
    ids=_short_id,
)
def test_roundtrip_examples(obj: Any) -> None:
    roundtrip(obj)
    roundtrip([obj, {"k": obj}])


LONG_DOUBLE_IS_WIDER = np.dtype(np.longdouble).itemsize > 8


@pytest.mark.skipif(not LONG_DOUBLE_IS_WIDER, reason="long double is a plain double here")
@pytest.mark.parametrize(
    "obj",
    [
        np.longdouble(1) / 3,
        np.clongdouble(1j) / 3,
        np.arange(3, dtype=np.longdouble) / 3,
        {"a": [np.zeros((2, 2), dtype=np.clongdouble)]},
    ],
    ids=_short_id,
)
def test_long_doubles_are_refused_their_padding_is_undefined(obj: Any) -> None:
    # An 80-bit long double fills 12 or 16 bytes; the rest is uninitialised memory, which
    # would reach the peer (and means something else on a platform with 128-bit long doubles).
    with pytest.raises(TypeError, match="long double"):
        SAFE.dumps(obj)
    dtype = np.dtype(np.longdouble).str
    tagged = f'{{"$zr":"array","dtype":"{dtype}","shape":[1],"frame":1}}'.encode()
    with pytest.raises(RemoteProtocolError, match="long double"):
        SAFE.loads([tagged, bytes(np.dtype(np.longdouble).itemsize)])


def test_numpy_scalars_come_back_as_numpy_scalars() -> None:
    out = SAFE.loads(SAFE.dumps({"f": np.float32(1.5), "i": np.int16(-3)}))
    assert isinstance(out, dict)
    assert type(out["f"]) is np.float32
    assert out["f"] == np.float32(1.5)
    assert type(out["i"]) is np.int16


def test_plain_json_is_one_compact_frame() -> None:
    frames = SAFE.dumps({"x": 21})
    assert frames == [b'{"x":21}']
    assert SAFE.loads(frames) == {"x": 21}
    assert SAFE.dumps("é") == ['"é"'.encode()]


def test_array_frame_is_zero_copy_and_decoded_array_is_a_view() -> None:
    arr = np.arange(1000, dtype="<f8")
    frames = SAFE.dumps({"a": arr, "b": b"payload"})
    assert len(frames) == 3
    assert np.shares_memory(np.asarray(frames[1]), arr)
    assert frames[2] is not None
    header = json.loads(bytes(memoryview(frames[0])))
    assert header["a"] == {"$zr": "array", "dtype": "<f8", "shape": [1000], "frame": 1}
    assert header["b"] == {"$zr": "bytes", "frame": 2}

    received = wire_copies(frames)
    out = SAFE.loads(received)
    assert isinstance(out, dict)
    assert np.shares_memory(out["a"], np.frombuffer(received[1], np.uint8))
    assert not out["a"].flags.writeable  # a view of an immutable bytes frame
    assert out["b"] is received[2]  # bytes frames come back as they are


def test_non_contiguous_array_is_sent_contiguous() -> None:
    arr = np.arange(24, dtype=">i4").reshape(4, 6)[::2, ::3]
    frames = SAFE.dumps(arr)
    assert bytes(memoryview(frames[1])) == np.ascontiguousarray(arr).tobytes()


def test_tuples_come_back_as_lists() -> None:
    assert SAFE.loads(SAFE.dumps((1, (2, 3)))) == [1, [2, 3]]


def test_str_int_float_dict_subclasses_come_back_as_builtins() -> None:
    class Colour(str, enum.Enum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    obj = collections.OrderedDict([(Colour.RED, Level.HIGH)])
    out = SAFE.loads(SAFE.dumps(obj))
    assert out == {"red": 3}
    assert isinstance(out, dict)
    assert type(next(iter(out))) is str
    assert type(out["red"]) is int


def test_nesting_limit_is_inclusive() -> None:
    ok: list[Any] = []
    node = ok
    for _ in range(MAX_DEPTH - 1):
        node.append([])
        node = node[0]
    node.append(np.zeros(2))
    roundtrip(ok)  # MAX_DEPTH nested lists, an array at the bottom

    too_deep: list[Any] = []
    node = too_deep
    for _ in range(MAX_DEPTH):
        node.append([])
        node = node[0]
    with pytest.raises(TypeError, match="deeper than"):
        SAFE.dumps(too_deep)
    header = ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)).encode()
    with pytest.raises(RemoteProtocolError, match="deeper"):
        SAFE.loads([header])
    SAFE.loads([("[" * MAX_DEPTH + "]" * MAX_DEPTH).encode()])


# --------------------------------------------------------------------------------------------
# refusals on the sending side


def _cycle() -> Any:
    inner: list[Any] = [1]
    outer = {"a": {"b": inner}}
    inner.append(outer["a"])
    return outer


@pytest.mark.parametrize(
    ("obj", "what", "path"),
    [
        ({1, 2}, "set", "obj:"),
        ({"items": [0, 1, 2, {3}]}, "set", "obj['items'][3]:"),
        ({"task": object()}, "object", "obj['task']:"),
        ([np.array([1, "x"], dtype=object)], "dtype object", "obj[0]:"),
        ({"a": {1: "x"}}, "dict key 1 (int)", "obj['a']:"),
        ({"a": [{(1, 2): 3}]}, "dict key (1, 2) (tuple)", "obj['a'][0]:"),
        ({"s": np.zeros(2, dtype=[("x", "<i4")])}, "numpy array of dtype", "obj['s']:"),
        ([np.ma.masked_array([1, 2], mask=[False, True])], "MaskedArray", "obj[0]:"),
        ({"c": 1j}, "complex", "obj['c']:"),
        ({"f": frozenset()}, "frozenset", "obj['f']:"),
    ],
)
def test_unsupported_objects_are_refused_with_their_path(obj: Any, what: str, path: str) -> None:
    with pytest.raises(TypeError) as info:
        SAFE.dumps(obj)
    message = str(info.value)
    assert what in message
    assert f"at {path}" in message
    if "key" not in what:
        assert "PickleSerializer" in message


def test_reference_cycle_is_refused_with_its_path() -> None:
    with pytest.raises(TypeError, match="reference cycle") as info:
        SAFE.dumps(_cycle())
    assert "obj['a']['b'][1]" in str(info.value)
    assert "obj['a'] again" in str(info.value)

    selfref: list[Any] = []
    selfref.append(selfref)
    with pytest.raises(TypeError, match=r"reference cycle at obj\[0\]: it is obj again"):
        SAFE.dumps(selfref)


# --------------------------------------------------------------------------------------------
# hostile input on the receiving side


def loads_or_protocol_error(frames: list[Any]) -> None:
    with contextlib.suppress(RemoteProtocolError):
        SAFE.loads(frames)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_random_frames_never_raise_anything_else(frames: list[bytes]) -> None:
    loads_or_protocol_error(frames)


TAG_KINDS = st.sampled_from(["array", "scalar", "bytes", "float", "int", "dict", "nope", 1, None])
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=6),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            "<f8",
            ">u2",
            "|b1",
            "|O8",
            "O",
            "|V8",
            "<V8",
            "i4,i4",
            "<M8[us]",
            "<M8[xx]",
            "|S0",
            "<U0",
            "|S999999999999",
            "float64",
            "<f3",
            "nan",
            "inf",
            "-inf",
            "0x10",
            "-0x1f",
            "1",
        ]
    ),
    st.lists(st.integers(min_value=-2, max_value=2**64), max_size=4),
    st.text(max_size=5),
)


@st.composite
def tagged_junk(draw: st.DrawFn) -> dict[str, Any]:
    node: dict[str, Any] = {"$zr": draw(TAG_KINDS)}
    for field in draw(st.sets(st.sampled_from(["dtype", "shape", "frame", "value", "hex", "x"]))):
        node[field] = draw(JUNK)
    if draw(st.booleans()):
        node["items"] = draw(st.dictionaries(st.text(max_size=3), JUNK, max_size=2))
    return node


STRUCTURED_JUNK = st.recursive(
    st.one_of(JUNK, tagged_junk()),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(TAGGY_KEYS, children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(STRUCTURED_JUNK, st.lists(st.binary(max_size=24), max_size=4))
def test_structured_garbage_never_raises_anything_else(tree: Any, frames: list[bytes]) -> None:
    header = json.dumps(tree).encode()
    loads_or_protocol_error([header, *frames])
    loads_or_protocol_error([memoryview(header), *(memoryview(f) for f in frames)])


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([], "at least one frame"),
        ([b"\xff\xfe"], "UnicodeDecodeError"),
        ([b'{"x": 1'], "JSONDecodeError"),
        ([b"NaN"], "NaN"),
        ([b"[Infinity]"], "Infinity"),
        ([b"1 2"], "after its JSON"),
        ([b" 1"], "JSONDecodeError"),
        ([b"1" * 5000], "ValueError"),
        ([b"[" * 100_000], "deeply"),
        ([b"1", b"extra"], r"frames \[1\] are not referenced"),
        ([b'{"$zr":"what"}'], "unknown tag"),
        ([b'{"$zr":7}'], "unknown tag"),
        ([b'{"$zr":"bytes","frame":1,"x":1}', b""], "exactly the fields"),
        ([b'{"$zr":"bytes","frame":1}'], "out of range"),
        ([b'{"$zr":"bytes","frame":0}'], "out of range"),
        ([b'{"$zr":"bytes","frame":-1}', b""], "out of range"),
        ([b'{"$zr":"bytes","frame":true}', b""], "must be an int"),
        ([b'{"$zr":"bytes","frame":1.0}', b""], "must be an int"),
        ([b'[{"$zr":"bytes","frame":1},{"$zr":"bytes","frame":1}]', b""], "more than once"),
        (
            [b'{"$zr":"array","dtype":"<f8","shape":[1000000,1000000],"frame":1}', b"x" * 8],
            "needs 8000000000000 bytes",
        ),
        ([b'{"$zr":"array","dtype":"<f8","shape":[-1],"frame":1}', b"x" * 8], "non-negative"),
        ([b'{"$zr":"array","dtype":"<f8","shape":[true],"frame":1}', b"x" * 8], "non-negative"),
        ([b'{"$zr":"array","dtype":"<f8","shape":"8","frame":1}', b"x" * 8], "non-negative"),
        (
            [b'{"$zr":"array","dtype":"<f8","shape":[' + b"1," * 64 + b'1],"frame":1}', b"x" * 8],
            "non-negative",
        ),
        ([b'{"$zr":"array","dtype":"<f8","shape":[2],"frame":1}', b"x" * 9], "needs 16 bytes"),
        ([b'{"$zr":"array","dtype":"|O8","shape":[1],"frame":1}', b"x" * 8], "dtype"),
        ([b'{"$zr":"array","dtype":"i4,i4","shape":[1],"frame":1}', b"x" * 8], "dtype"),
        ([b'{"$zr":"array","dtype":"<V8","shape":[1],"frame":1}', b"x" * 8], "dtype"),
        ([b'{"$zr":"array","dtype":"float64","shape":[1],"frame":1}', b"x" * 8], "dtype"),
        ([b'{"$zr":"array","dtype":"|S0","shape":[0],"frame":1}', b""], "dtype"),
        ([b'{"$zr":"array","dtype":"<f3","shape":[1],"frame":1}', b"x" * 3], "dtype"),
        ([b'{"$zr":"array","dtype":5,"shape":[1],"frame":1}', b"x" * 8], "dtype"),
        (
            [b'{"$zr":"array","dtype":"|u1","shape":[0,99999999999999999999],"frame":1}', b""],
            "ValueError",
        ),
        ([b'{"$zr":"scalar","dtype":"<f8","frame":1}', b"x" * 7], "needs 8 bytes"),
        ([b'{"$zr":"scalar","dtype":"|S3","frame":1}', b"x" * 3], "scalar dtype"),
        ([b'{"$zr":"float","value":"NaN"}'], "float value"),
        ([b'{"$zr":"float","value":1e999}'], "float value"),
        ([b'{"$zr":"int","hex":"1_000"}'], "int hex"),
        ([b'{"$zr":"int","hex":16}'], "int hex"),
        ([b'{"$zr":"dict","items":[1]}'], "escaped dict"),
        ([b'{"$zr":"dict","items":{"a":{"$zr":"nope"}}}'], "unknown tag"),
    ],
)
def test_malformed_payloads_are_refused(frames: list[bytes], match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        SAFE.loads(frames)


def test_valid_tags_decode() -> None:
    out = SAFE.loads(
        [
            b'[{"$zr":"array","dtype":">i2","shape":[2],"frame":2},'
            b'{"$zr":"float","value":"-inf"},{"$zr":"int","hex":"-0x1f"},'
            b'{"$zr":"bytes","frame":1},{"$zr":"dict","items":{"$zr":[]}}]',
            b"raw",
            b"\x00\x01\x00\x02",
        ]
    )
    assert isinstance(out, list)
    assert_same(np.array([1, 2], dtype=">i2"), out[0])
    assert out[1:] == [-math.inf, -31, b"raw", {"$zr": []}]


def test_loads_accepts_any_buffer_and_refuses_non_buffers() -> None:
    frames = SAFE.dumps({"a": np.arange(4, dtype="<i8")})
    out = SAFE.loads([bytearray(frames[0]), np.frombuffer(bytes(frames[1]), np.uint8).data])
    assert isinstance(out, dict)
    assert out["a"].tolist() == [0, 1, 2, 3]
    with pytest.raises(RemoteProtocolError):
        SAFE.loads(["not a buffer"])  # type: ignore[list-item]
    with pytest.raises(RemoteProtocolError):
        SAFE.loads([frames[0], 12345])  # type: ignore[list-item]
    with pytest.raises(RemoteProtocolError):
        SAFE.loads([frames[0], np.zeros((4, 2))[:, 0].data])  # non-contiguous frame


class _Evil:
    """Unpickling this creates a file: the canonical remote-code-execution payload."""

    def __init__(self, target: pathlib.Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.target,))


def test_safe_serializer_never_unpickles(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(target), protocol=5)
    for frames in ([evil], [evil, b""], [b'{"$zr":"bytes","frame":1}', evil]):
        try:
            out = SAFE.loads(frames)
        except RemoteProtocolError:
            pass
        else:
            assert out == evil  # carried as opaque bytes, never interpreted
        assert not target.exists()
    with pytest.raises(RemoteProtocolError):
        SAFE.loads([evil])
    assert not target.exists()

    # The payload is live: the (trusted-only) pickle serializer does run it.
    PICKLE.loads([evil])
    assert target.exists()


# --------------------------------------------------------------------------------------------
# PickleSerializer


def test_pickle_roundtrip_with_out_of_band_buffers() -> None:
    big = np.arange(100_000, dtype=">f8").reshape(100, 1000)
    obj = {"big": big, "set": {1, 2}, "complex": 1j, "t": (1, "x"), "b": b"abc"}
    frames = PICKLE.dumps(obj)
    assert len(frames) > 1
    assert np.shares_memory(np.asarray(frames[1]), big)  # zero-copy out-of-band buffer
    for received in (frames, wire_copies(frames)):
        out = PICKLE.loads(received)
        assert isinstance(out, dict)
        assert out["set"] == {1, 2}
        assert out["complex"] == 1j
        assert out["t"] == (1, "x")
        assert_same(big, out["big"])


def test_pickle_non_contiguous_array() -> None:
    arr = np.arange(100_000, dtype="<i4").reshape(100, 1000)[::2, ::3]
    out = PICKLE.loads(wire_copies(PICKLE.dumps(arr)))
    assert_same(arr, out)


def test_pickle_malformed() -> None:
    with pytest.raises(RemoteProtocolError):
        PICKLE.loads([])
    with pytest.raises(RemoteProtocolError):
        PICKLE.loads([b"\x80\x05garbage"])


def test_names_and_immutability() -> None:
    assert SafeSerializer.name == "safe"
    assert PickleSerializer.name == "pickle"
    assert SafeSerializer() == SAFE
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        SAFE.name = "x"  # type: ignore[misc]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TREES, st.data())
def test_mutated_valid_payloads_never_raise_anything_else(obj: Any, data: st.DataObject) -> None:
    frames = wire_copies(SAFE.dumps(obj))
    header = bytearray(frames[0])
    for _ in range(data.draw(st.integers(1, 3))):
        if not header:
            break
        i = data.draw(st.integers(0, len(header) - 1))
        header[i] = data.draw(st.integers(0, 255))
    frames[0] = bytes(header[: data.draw(st.integers(0, len(header)))])
    if len(frames) > 1 and data.draw(st.booleans()):
        del frames[data.draw(st.integers(1, len(frames) - 1))]
    if data.draw(st.booleans()):
        frames.append(data.draw(st.binary(max_size=8)))
    loads_or_protocol_error(frames)
