"""The wire format of :class:`~zmqruntime.SafeSerializer`: object trees to frames and back.

A payload is one or more frames:

* **Frame 0** is UTF-8 JSON (compact, strict: no ``NaN``/``Infinity`` literals) describing the
  object tree. JSON values stand for themselves (a tuple is written as a list).
* Values JSON cannot carry are **tagged objects**: a JSON object with the key ``"$zr"``
  naming the kind, and exactly the fields listed here:

  ``{"$zr": "array", "dtype": "<u2", "shape": [2, 3], "frame": 1}``
      a numpy array; ``dtype`` is ``numpy.dtype.str``, ``frame`` the index of the frame that
      holds its raw C-order bytes (exactly ``prod(shape) * itemsize`` of them);
  ``{"$zr": "scalar", "dtype": "<f4", "frame": 2}``
      a numpy scalar (``numpy.float32(1.5)`` …), its ``itemsize`` raw bytes in ``frame``;
  ``{"$zr": "bytes", "frame": 3}``
      ``bytes``/``bytearray``/``memoryview``; the frame holds the bytes;
  ``{"$zr": "float", "value": "nan" | "inf" | "-inf"}``
      a non-finite Python float;
  ``{"$zr": "int", "hex": "-0x1f…"}``
      an ``int`` too large for JSON's decimal digits (more than 2048 bits);
  ``{"$zr": "dict", "items": {...}}``
      a user dict that itself has a ``"$zr"`` key; the keys of ``items`` are taken literally.

* **Frames 1…n** are raw buffers (array and bytes payloads), sent without copying where the
  transport allows. Every frame after frame 0 is referenced exactly once.

A payload of plain JSON values is a single frame, e.g. ``{"x": 21}`` is ``b'{"x":21}'``.
Lists and dicts nest at most :data:`MAX_DEPTH` (100) levels. ``loads`` raises
:class:`~zmqruntime.errors.RemoteProtocolError` for anything that does not follow these rules
exactly (unknown tags or fields, non-canonical dtypes, wrong frame sizes, unused frames …).

What comes back from :meth:`SafeSerializer.loads`:

* tuples come back as lists; ``bytearray`` and ``memoryview`` come back as ``bytes``;
  subclasses of ``str``/``int``/``float``/``dict`` (enums, ``OrderedDict`` …) come back as the
  plain builtin; ``numpy.str_``/``numpy.bytes_`` come back as ``str``/``bytes``;
* numpy arrays come back with the same dtype (byte order included), shape and bytes, C-ordered,
  built with ``numpy.frombuffer`` over the received frame: zero-copy and **read-only** when the
  frame is read-only (``bytes``, ``zmq.Frame``) — copy them if you need to write;
* numpy scalars come back as numpy scalars of the same type and bit pattern;
* an array or bytes object referenced twice in the payload comes back as two objects.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy
from typing_extensions import Buffer

from zmqruntime.errors import RemoteProtocolError

__all__ = ["MAX_DEPTH", "dump_tree", "load_tree"]

_TAG = "$zr"
"""The key that marks a tagged object in frame 0."""
MAX_DEPTH = 100
"""How deeply lists and dicts may nest in a :class:`SafeSerializer` payload."""
_MAX_INT_BITS = 2048
"""Ints wider than this travel as hex (below Python's int/str digit limit at any setting)."""
_MAX_NDIM = 64
_ARRAY_KINDS = frozenset("biufcmMSUV")
_SCALAR_KINDS = frozenset("biufcmM")
_DTYPE_RE = re.compile(r"[<>|][biufcmMSUV][0-9]{1,12}(?:\[[0-9]{0,12}[A-Za-z]{1,3}\])?")
_HEX_RE = re.compile(r"-?0x[0-9a-f]+")
_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_HINT = (
    "SafeSerializer handles JSON values, bytes and numpy arrays; "
    "use PickleSerializer for trusted setups"
)


_JSON_ENCODE = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False
).encode
_JSON_ENCODE_ASCII = json.JSONEncoder(
    ensure_ascii=True, allow_nan=False, separators=(",", ":"), check_circular=False
).encode


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"JSON constant {name} is not allowed")


_JSON_RAW_DECODE = json.JSONDecoder(parse_constant=_reject_constant).raw_decode


# --------------------------------------------------------------------------------------------
# encoding


class _Refused(Exception):
    """Raised inside the encoder; carries the path as it unwinds (innermost first)."""

    def __init__(self, what: str, reason: str = _HINT, *, too_deep: bool = False) -> None:
        super().__init__(what)
        self.what = what
        self.reason = reason
        self.too_deep = too_deep
        self.segments: list[str] = []
        self.containers: list[object] = []

    def add(self, segment: str, container: object) -> None:
        self.segments.append(segment)
        self.containers.append(container)

    def to_type_error(self) -> TypeError:
        segments = self.segments[::-1]
        path = "obj" + "".join(segments)
        if self.too_deep:
            # The containers on the path, outermost first; a repeat means a reference cycle.
            containers = self.containers[::-1]
            seen: dict[int, int] = {}
            for i, container in enumerate(containers):
                first = seen.setdefault(id(container), i)
                if first != i:
                    inner = "obj" + "".join(segments[:i])
                    outer = "obj" + "".join(segments[:first])
                    return TypeError(
                        f"cannot serialize a reference cycle at {inner}: it is {outer} again"
                    )
            return TypeError(
                f"cannot serialize {self.what} at {path}: lists and dicts nest deeper than "
                f"{MAX_DEPTH} levels"
            )
        return TypeError(f"cannot serialize {self.what} at {path}: {self.reason}")


def _is_plain(obj: object, depth: int) -> bool:
    """True if ``obj`` is exactly JSON that decodes back to itself (no tags, no frames)."""
    t = type(obj)
    if t is dict:
        if depth >= MAX_DEPTH:
            return False
        for k, v in obj.items():  # type: ignore[attr-defined]
            if type(k) is not str or k == _TAG:
                return False
            tv = type(v)
            if tv is str or tv is bool or v is None:
                continue
            if tv is int:
                if v.bit_length() > _MAX_INT_BITS:
                    return False
            elif tv is float:
                if v - v != 0.0:  # nan or inf
                    return False
            elif not _is_plain(v, depth + 1):
                return False
        return True
    if t is list or t is tuple:
        if depth >= MAX_DEPTH:
            return False
        for v in obj:  # type: ignore[attr-defined]
            tv = type(v)
            if tv is str or tv is bool or v is None:
                continue
            if tv is int:
                if v.bit_length() > _MAX_INT_BITS:
                    return False
            elif tv is float:
                if v - v != 0.0:
                    return False
            elif not _is_plain(v, depth + 1):
                return False
        return True
    if t is str or t is bool or obj is None:
        return True
    if t is int:
        return obj.bit_length() <= _MAX_INT_BITS  # type: ignore[attr-defined,no-any-return]
    if t is float:
        return obj - obj == 0.0  # type: ignore[operator,no-any-return]
    return False


def _encode_float(value: float) -> object:
    if value - value == 0.0:
        return value
    if math.isnan(value):
        return {_TAG: "float", "value": "nan"}
    return {_TAG: "float", "value": "inf" if value > 0 else "-inf"}


def _encode_int(value: int) -> object:
    if value.bit_length() <= _MAX_INT_BITS:
        return value
    return {_TAG: "int", "hex": hex(value)}


def _encode_array(arr: numpy.ndarray[Any, Any], frames: list[Buffer]) -> object:
    dtype = arr.dtype
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.itemsize == 0:
        raise _Refused(f"numpy array of dtype {dtype}")
    if not arr.flags.c_contiguous:
        arr = numpy.ascontiguousarray(arr)
    # A flat uint8 view always exports a plain byte buffer (datetime64 arrays do not).
    frames.append(arr.reshape(-1).view(numpy.uint8).data)
    return {_TAG: "array", "dtype": dtype.str, "shape": list(arr.shape), "frame": len(frames) - 1}


def _encode_other(obj: object, frames: list[Buffer], depth: int) -> object:
    """Everything that is not an exact JSON builtin."""
    if isinstance(obj, numpy.ndarray):
        if type(obj) is not numpy.ndarray and not isinstance(obj, numpy.memmap):
            raise _Refused(f"numpy array subclass {type(obj).__qualname__}")
        return _encode_array(obj, frames)
    if isinstance(obj, (bytes, bytearray)):
        frames.append(obj)
        return {_TAG: "bytes", "frame": len(frames) - 1}
    if isinstance(obj, memoryview):
        if obj.c_contiguous:
            frames.append(obj if obj.ndim == 1 and obj.format == "B" else obj.cast("B"))
        else:
            frames.append(obj.tobytes())
        return {_TAG: "bytes", "frame": len(frames) - 1}
    if isinstance(obj, numpy.generic):
        dtype = obj.dtype
        if isinstance(obj, numpy.str_):
            return str.__str__(obj)
        if dtype.kind not in _SCALAR_KINDS:
            raise _Refused(f"numpy scalar of dtype {dtype}")
        frames.append(numpy.asarray(obj).reshape(1).view(numpy.uint8).data)
        return {_TAG: "scalar", "dtype": dtype.str, "frame": len(frames) - 1}
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, int):
        return _encode_int(int.__int__(obj))
    if isinstance(obj, float):
        return _encode_float(float.__float__(obj))
    if isinstance(obj, dict):
        return _encode_dict(obj, frames, depth)
    if isinstance(obj, (list, tuple)):
        return _encode_list(obj, frames, depth)
    raise _Refused(type(obj).__qualname__)


def _encode(obj: object, frames: list[Buffer], depth: int) -> object:
    t = type(obj)
    if t is str or t is bool or obj is None:
        return obj
    if t is int:
        return _encode_int(obj)  # type: ignore[arg-type]
    if t is float:
        return _encode_float(obj)  # type: ignore[arg-type]
    if t is dict:
        return _encode_dict(obj, frames, depth)  # type: ignore[arg-type]
    if t is list or t is tuple:
        return _encode_list(obj, frames, depth)  # type: ignore[arg-type]
    return _encode_other(obj, frames, depth)


def _encode_dict(obj: dict[Any, Any], frames: list[Buffer], depth: int) -> object:
    if depth >= MAX_DEPTH:
        raise _Refused(type(obj).__qualname__, too_deep=True)
    out: dict[str, object] = {}
    escape = False
    for k, v in obj.items():
        if type(k) is not str:
            if not isinstance(k, str):
                err = _Refused(
                    f"dict key {k!r} ({type(k).__qualname__})", "JSON object keys must be str"
                )
                raise err
            k = str.__str__(k)  # noqa: PLW2901 - normalise str subclasses
        if k == _TAG:
            escape = True
        try:
            out[k] = _encode(v, frames, depth + 1)
        except _Refused as exc:
            exc.add(f"[{k!r}]", obj)
            raise
    return {_TAG: "dict", "items": out} if escape else out


def _encode_list(obj: list[Any] | tuple[Any, ...], frames: list[Buffer], depth: int) -> object:
    if depth >= MAX_DEPTH:
        raise _Refused(type(obj).__qualname__, too_deep=True)
    out: list[object] = []
    append = out.append
    for i, v in enumerate(obj):
        try:
            append(_encode(v, frames, depth + 1))
        except _Refused as exc:
            exc.add(f"[{i}]", obj)
            raise
    return out


def _to_json(tree: object) -> bytes:
    text = _JSON_ENCODE(tree)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: escape them so frame 0 stays valid UTF-8
        return _JSON_ENCODE_ASCII(tree).encode("ascii")


# --------------------------------------------------------------------------------------------
# decoding


class _Malformed(Exception):
    """Raised inside the decoder; ``SafeSerializer.loads`` turns it into RemoteProtocolError."""


def _byte_view(frame: Buffer) -> memoryview:
    view = memoryview(frame)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


class _Frames:
    """The frames of one payload and which of them were claimed by a tag."""

    __slots__ = ("frames", "used")

    def __init__(self, frames: Sequence[Buffer]) -> None:
        self.frames = frames
        self.used = [False] * len(frames)
        if self.used:
            self.used[0] = True

    def claim(self, tagged: dict[str, Any]) -> Buffer:
        index = tagged["frame"]
        if type(index) is not int:
            raise _Malformed(f"frame index must be an int, got {index!r}")
        if not 1 <= index < len(self.frames):
            raise _Malformed(
                f"frame index {index} is out of range: the payload has {len(self.frames)} frames"
            )
        if self.used[index]:
            raise _Malformed(f"frame {index} is referenced more than once")
        self.used[index] = True
        return self.frames[index]

    def check_all_used(self) -> None:
        if not all(self.used):
            unused = [i for i, used in enumerate(self.used) if not used]
            raise _Malformed(f"frames {unused} are not referenced by frame 0")


_TAG_FIELDS: dict[str, frozenset[str]] = {
    "array": frozenset({_TAG, "dtype", "shape", "frame"}),
    "scalar": frozenset({_TAG, "dtype", "frame"}),
    "bytes": frozenset({_TAG, "frame"}),
    "float": frozenset({_TAG, "value"}),
    "int": frozenset({_TAG, "hex"}),
    "dict": frozenset({_TAG, "items"}),
}


def _decode_dtype(text: object) -> numpy.dtype[Any]:
    if type(text) is not str or _DTYPE_RE.fullmatch(text) is None:
        raise _Malformed(f"unsupported dtype {text!r}")
    try:
        dtype = numpy.dtype(text)
    except TypeError:
        raise _Malformed(f"unsupported dtype {text!r}") from None
    if (
        dtype.str != text
        or dtype.kind not in _ARRAY_KINDS
        or dtype.hasobject
        or dtype.fields is not None
        or dtype.subdtype is not None
        or dtype.itemsize == 0
    ):
        raise _Malformed(f"unsupported dtype {text!r}")
    return dtype


def _decode_tagged(node: dict[str, Any], frames: _Frames, depth: int) -> object:
    kind = node[_TAG]
    fields = _TAG_FIELDS.get(kind) if type(kind) is str else None
    if fields is None:
        raise _Malformed(f"unknown tag {_TAG}={kind!r}")
    if node.keys() != fields:
        raise _Malformed(f"tag {kind!r} needs exactly the fields {sorted(fields)}")
    if kind == "array":
        dtype = _decode_dtype(node["dtype"])
        shape = node["shape"]
        if (
            type(shape) is not list
            or len(shape) > _MAX_NDIM
            or not all(type(n) is int and n >= 0 for n in shape)
        ):
            raise _Malformed(f"array shape must be a list of non-negative ints, got {shape!r}")
        view = _byte_view(frames.claim(node))
        expected = math.prod(shape) * dtype.itemsize
        if view.nbytes != expected:
            raise _Malformed(
                f"array of dtype {dtype.str} and shape {shape} needs {expected} bytes, "
                f"its frame has {view.nbytes}"
            )
        return numpy.frombuffer(view, dtype).reshape(shape)
    if kind == "scalar":
        dtype = _decode_dtype(node["dtype"])
        if dtype.kind not in _SCALAR_KINDS:
            raise _Malformed(f"unsupported scalar dtype {dtype.str!r}")
        view = _byte_view(frames.claim(node))
        if view.nbytes != dtype.itemsize:
            raise _Malformed(
                f"scalar of dtype {dtype.str} needs {dtype.itemsize} bytes, "
                f"its frame has {view.nbytes}"
            )
        return numpy.frombuffer(view, dtype)[0]
    if kind == "bytes":
        frame = frames.claim(node)
        return frame if type(frame) is bytes else bytes(memoryview(frame))
    if kind == "float":
        value = node["value"]
        if type(value) is not str or value not in _SPECIAL_FLOATS:
            raise _Malformed(f"float value must be 'nan', 'inf' or '-inf', got {value!r}")
        return _SPECIAL_FLOATS[value]
    if kind == "int":
        text = node["hex"]
        if type(text) is not str or _HEX_RE.fullmatch(text) is None:
            raise _Malformed(f"int hex must look like '-0x1f', got {text!r}")
        return int(text, 16)
    # kind == "dict"
    items = node["items"]
    if type(items) is not dict:
        raise _Malformed("an escaped dict needs an object as its items")
    if depth >= MAX_DEPTH:
        raise _Malformed(f"lists and objects nest deeper than {MAX_DEPTH} levels")
    return _decode_items(items, frames, depth)


def _decode_items(node: dict[str, Any], frames: _Frames, depth: int) -> dict[str, Any]:
    """Decode the values of a freshly parsed JSON object in place."""
    for k, v in node.items():
        tv = type(v)
        if tv is dict or tv is list:
            node[k] = _decode(v, frames, depth + 1)
    return node


def _decode(node: object, frames: _Frames, depth: int) -> object:
    """Decode a freshly parsed JSON list or object in place (tags become their values)."""
    if type(node) is dict and _TAG in node:
        return _decode_tagged(node, frames, depth)
    if depth >= MAX_DEPTH:
        raise _Malformed(f"lists and objects nest deeper than {MAX_DEPTH} levels")
    if type(node) is list:
        for i, v in enumerate(node):
            tv = type(v)
            if tv is dict or tv is list:
                node[i] = _decode(v, frames, depth + 1)
        return node
    assert type(node) is dict
    return _decode_items(node, frames, depth)


# --------------------------------------------------------------------------------------------
# entry points


def dump_tree(obj: object) -> list[Buffer]:
    """Encode ``obj`` into frames; ``TypeError`` naming the path if it cannot."""
    if _is_plain(obj, 0):
        return [_to_json(obj)]
    frames: list[Buffer] = [b""]
    try:
        tree = _encode(obj, frames, 0)
    except _Refused as exc:
        raise exc.to_type_error() from None
    frames[0] = _to_json(tree)
    return frames


def load_tree(frames: Sequence[Buffer]) -> object:
    """Decode frames made by :func:`dump_tree`; ``RemoteProtocolError`` on anything else."""
    try:
        if len(frames) == 0:
            raise _Malformed("a payload needs at least one frame")
        text = str(frames[0], "utf-8")
        tree, end = _JSON_RAW_DECODE(text)
        if end != len(text):
            raise _Malformed(f"frame 0 has data after its JSON value (at {end})")
        table = _Frames(frames)
        tv = type(tree)
        if tv is dict or tv is list:
            tree = _decode(tree, table, 0)
        table.check_all_used()
        return tree
    except _Malformed as exc:
        raise RemoteProtocolError(f"malformed SafeSerializer payload: {exc}") from None
    except RecursionError:
        raise RemoteProtocolError("malformed SafeSerializer payload: nested too deeply") from None
    except (ValueError, TypeError, OverflowError, BufferError, KeyError, IndexError) as exc:
        raise RemoteProtocolError(
            f"malformed SafeSerializer payload: {type(exc).__name__}: {exc}"
        ) from exc
