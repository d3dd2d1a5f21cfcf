"""The payloads of :class:`~zmqruntime.SafeSerializer`: object trees to frames and back.

A payload follows the rules of :mod:`zmqruntime.core.wire`. It is one or more frames:

* **Frame 0** is strict JSON describing the tree. Plain JSON values stand for themselves, e.g.
  ``{"x": 21}`` is the single frame ``b'{"x":21}'`` (lone surrogates are written escaped).
* Other values are **tagged objects**: a JSON object with the key ``"$zr"`` naming the kind,
  and exactly the fields listed here:

  ``{"$zr": "array", "dtype": "<u2", "shape": [2, 3], "frame": 1}``
      a numpy array; ``dtype`` is ``numpy.dtype.str`` exactly, ``frame`` the index of the frame
      that holds its raw C-order bytes;
  ``{"$zr": "scalar", "dtype": "<f4", "frame": 2}``
      a numpy scalar (``numpy.float32(1.5)`` …) of a kind other than ``S``, ``U``, ``V``;
  ``{"$zr": "bytes", "frame": 3}``
      ``bytes``/``bytearray``/``memoryview``; the frame holds the bytes;
  ``{"$zr": "float", "value": "nan" | "inf" | "-inf"}``
      a non-finite Python float;
  ``{"$zr": "int", "hex": "-0x1f…"}``
      an ``int`` wider than :data:`~zmqruntime.core.wire.MAX_INT_BITS` bits;
  ``{"$zr": "dict", "items": {...}}``
      a user dict that itself has a ``"$zr"`` key; the keys of ``items`` are taken literally.

* **Frames 1…n** are raw buffers (array and bytes payloads), sent without copying where the
  transport allows. Every frame after frame 0 is referenced exactly once.

:func:`load_tree` raises :class:`~zmqruntime.errors.RemoteProtocolError` for anything that does
not follow these rules exactly (unknown tags or fields, non-canonical dtypes, wrong frame sizes,
unused frames …). What comes back differs from what went in only so:

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

import math
import re
from collections.abc import Sequence
from typing import Any, Final

import numpy

from zmqruntime.core import wire
from zmqruntime.core.wire import MAX_DEPTH
from zmqruntime.errors import RemoteProtocolError
from zmqruntime.protocols import Buffer

__all__ = ["MAX_DEPTH", "dump_tree", "load_tree"]

_TAG: Final = "$zr"
_HINT: Final = (
    "SafeSerializer handles JSON values, bytes and numpy arrays; "
    "use PickleSerializer for trusted setups"
)
_HEX: Final = re.compile(r"-?0x[0-9a-f]+")
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
_SPECIAL_FLOATS: Final = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_NAMES: Final = {"array": "dtype shape frame", "scalar": "dtype frame", "bytes": "frame"}
_NAMES.update(float="value", int="hex", dict="items")
_FIELDS: Final = {kind: frozenset({_TAG, *names.split()}) for kind, names in _NAMES.items()}
_RULES: Final = {
    "float": "float value must be 'nan', 'inf' or '-inf'",
    "int": "int hex must look like '-0x1f'",
    "dict": "an escaped dict needs an object as its items",
}


class _Refused(Exception):
    """Raised inside the encoder; collects the path as it unwinds (innermost step first)."""

    def __init__(self, what: str, reason: str = _HINT) -> None:
        super().__init__(what)
        self.what, self.reason = what, reason
        self.steps: list[tuple[str, object]] = []

    def to_type_error(self) -> TypeError:
        segments = [segment for segment, _container in reversed(self.steps)]
        seen: dict[int, int] = {}  # a container met twice on the way down is a reference cycle
        for index, (_segment, container) in enumerate(reversed(self.steps)):
            if (first := seen.setdefault(id(container), index)) != index:
                inner, outer = "".join(segments[:index]), "".join(segments[:first])
                return TypeError(
                    f"cannot serialize a reference cycle at obj{inner}: it is obj{outer} again"
                )
        return TypeError(f"cannot serialize {self.what} at obj{''.join(segments)}: {self.reason}")


def _encode(obj: Any, frames: list[Buffer], depth: int) -> Any:
    """``obj`` as JSON with tags; raw buffers go to ``frames``."""
    if type(obj) in _SCALARS and wire.json_problem(obj) is None:
        return obj  # a plain JSON value stands for itself
    if isinstance(obj, numpy.ndarray):
        if type(obj) is not numpy.ndarray and not isinstance(obj, numpy.memmap):
            raise _Refused(f"numpy array subclass {type(obj).__qualname__}")
        return _encode_array("array", obj, frames)
    if isinstance(obj, (dict, list, tuple)):
        if depth >= MAX_DEPTH:
            raise _Refused(type(obj).__qualname__, f"lists and dicts nest deeper than {MAX_DEPTH}")
        return _encode_container(obj, frames, depth)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        if isinstance(obj, memoryview):
            obj = _byte_view(obj) if obj.c_contiguous else obj.tobytes()
        frames.append(obj)
        return {_TAG: "bytes", "frame": len(frames) - 1}
    if isinstance(obj, numpy.generic) and not isinstance(obj, numpy.str_):
        if obj.dtype.kind in "SUV":
            raise _Refused(f"numpy scalar of dtype {obj.dtype}")
        return _encode_array("scalar", numpy.asarray(obj), frames)
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, int):
        wide = obj.bit_length() > wire.MAX_INT_BITS
        return {_TAG: "int", "hex": hex(obj)} if wide else int.__int__(obj)
    if isinstance(obj, float):
        value = float.__float__(obj)
        if value - value == 0.0:
            return value
        return {_TAG: "float", "value": "nan" if math.isnan(value) else repr(value)}
    raise _Refused(type(obj).__qualname__)


def _encode_container(obj: Any, frames: list[Buffer], depth: int) -> Any:
    is_dict = isinstance(obj, dict)
    out: dict[Any, Any] = {}
    for key, value in obj.items() if is_dict else enumerate(obj):
        if is_dict and type(key) is not str:
            if not isinstance(key, str):
                what = f"dict key {key!r} ({type(key).__qualname__})"
                raise _Refused(what, "JSON object keys must be str")
            key = str.__str__(key)  # noqa: PLW2901 - a str subclass becomes a str
        try:
            out[key] = _encode(value, frames, depth + 1)
        except _Refused as exc:
            exc.steps.append((f"[{key!r}]", obj))
            raise
    if not is_dict:
        return list(out.values())
    return {_TAG: "dict", "items": out} if _TAG in out else out


def _encode_array(kind: str, array: numpy.ndarray[Any, Any], frames: list[Buffer]) -> Any:
    if (problem := wire.dtype_problem(array.dtype)) is not None:
        raise _Refused(f"numpy {kind} of dtype {array.dtype}", f"the dtype {problem}; {_HINT}")
    if array.ndim > wire.MAX_NDIM:
        raise _Refused(f"numpy array of {array.ndim} dimensions", f"at most {wire.MAX_NDIM} travel")
    # A flat uint8 view always exports a plain byte buffer (datetime64 arrays do not).
    data = array if array.flags.c_contiguous else numpy.ascontiguousarray(array)
    frames.append(data.reshape(-1).view(numpy.uint8).data)
    tag = {_TAG: kind, "dtype": array.dtype.str, "frame": len(frames) - 1}
    if kind == "array":
        tag["shape"] = list(array.shape)
    return tag


def dump_tree(obj: object) -> list[Buffer]:
    """Encode ``obj`` into frames; ``TypeError`` naming the path if it cannot."""
    plain = type(obj) is not numpy.ndarray and wire.json_problem(obj, _TAG) is None
    frames: list[Buffer] = [b""]
    try:  # plain JSON stands for itself
        frames[0] = wire.dump_json(obj if plain else _encode(obj, frames, 0), lone_surrogates=True)
    except _Refused as exc:
        raise exc.to_type_error() from None
    return frames


def _byte_view(frame: Buffer) -> memoryview:
    view = memoryview(frame)
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


def _claim(index: Any, frames: Sequence[Buffer], used: list[bool]) -> Buffer:
    if type(index) is not int:
        raise RemoteProtocolError(f"frame index must be an int, got {index!r}")
    if not 1 <= index < len(frames):
        raise RemoteProtocolError(f"frame index {index} is out of range: {len(frames)} frames")
    if used[index]:
        raise RemoteProtocolError(f"frame {index} is referenced more than once")
    used[index] = True
    return frames[index]


def _decode_tagged(node: dict[str, Any], frames: Sequence[Buffer], used: list[bool]) -> Any:
    kind = node[_TAG]
    fields = _FIELDS.get(kind) if type(kind) is str else None
    if fields is None:
        raise RemoteProtocolError(f"unknown tag {_TAG}={kind!r}")
    if node.keys() != fields:
        raise RemoteProtocolError(f"tag {kind!r} needs exactly the fields {_TAG} {_NAMES[kind]}")
    if kind in ("array", "scalar"):
        dtype = wire.parse_dtype(node["dtype"])
        if dtype.str != node["dtype"] or (kind == "scalar" and dtype.kind in "SUV"):
            raise RemoteProtocolError(f"unsupported {kind} dtype {node['dtype']!r}")
        view = _byte_view(_claim(node["frame"], frames, used))
        shape = wire.check_array(dtype, node.get("shape", [1]), view.nbytes)
        array = numpy.frombuffer(view, dtype).reshape(shape)
        return array if kind == "array" else array[0]
    if kind == "bytes":
        frame = _claim(node["frame"], frames, used)
        return frame if type(frame) is bytes else bytes(memoryview(frame))
    value = node[_NAMES[kind]]
    if kind == "float" and type(value) is str and value in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[value]
    if kind == "int" and type(value) is str and _HEX.fullmatch(value):
        return int(value, 16)
    if kind == "dict" and type(value) is dict:
        return value  # its values are decoded by the caller, like any object's
    raise RemoteProtocolError(f"{_RULES[kind]}, not {repr(value)[:40]}")


def _decode(node: Any, frames: Sequence[Buffer], used: list[bool], depth: int) -> Any:
    """Decode a freshly parsed JSON list or object in place (tags become their values)."""
    if type(node) is dict and _TAG in node:
        node = _decode_tagged(node, frames, used)
        if type(node) is not dict:
            return node
    elif type(node) is not dict and type(node) is not list:
        return node
    if depth >= MAX_DEPTH:
        raise RemoteProtocolError(f"lists and objects nest deeper than {MAX_DEPTH} levels")
    for key, value in node.items() if type(node) is dict else enumerate(node):
        if type(value) is dict or type(value) is list:
            node[key] = _decode(value, frames, used, depth + 1)
    return node


def load_tree(frames: Sequence[Buffer]) -> object:
    """Decode frames made by :func:`dump_tree`; ``RemoteProtocolError`` on anything else."""
    try:
        if len(frames) == 0:
            raise RemoteProtocolError("a payload needs at least one frame")
        used = [True] + [False] * (len(frames) - 1)
        tree = _decode(wire.load_json(frames[0]), frames, used, 0)
        if not all(used):
            unused = [index for index, claimed in enumerate(used) if not claimed]
            raise RemoteProtocolError(f"frames {unused} are not referenced by frame 0")
        return tree
    except RemoteProtocolError as exc:
        raise RemoteProtocolError(f"malformed SafeSerializer payload: {exc}") from None
    except RecursionError:
        raise RemoteProtocolError("malformed SafeSerializer payload: nested too deeply") from None
    except (ValueError, TypeError, OverflowError, BufferError, KeyError, IndexError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise RemoteProtocolError(f"malformed SafeSerializer payload: {error}") from exc
