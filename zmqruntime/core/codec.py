"""Sans-IO encoding of :mod:`zmqruntime.core.messages` to multipart frames, and back.

A message is ``[header, *buffers]``: a strict JSON object (:mod:`zmqruntime.core.wire`) holding
the protocol ``version``, the message ``type``, the number of buffer ``frames`` that follow and
the message's fields, then the raw buffer frames (payloads, pixels), never copied by the codec.

Fields travel as their attrs types say: ``str``, ``int``, ``float`` (an int is taken too) and
``bool`` as themselves, enums as their values, ``X | None`` as X or ``null`` (left out when it
is None and so is its default), ``tuple[X, ...]`` as lists, ``dict[str, X]`` and
``JSONObject`` as objects, attrs classes as objects of their fields. A missing field takes its
default; unknown keys are ignored. The field whose metadata has ``{"buffer": "one"}`` (or
``"many"``) holds the buffer frame (frames). ``request_id`` is in ``0..2**63-1``; an image's
dtype (a numeric one), shape and pixels make an array by the wire's rules, and so does each of
an item's array layouts with its buffer frame, and each of a batch's entries with the next
buffer frames (an image entry: one numeric array).

:func:`decode` treats its input as hostile: what is not a valid message raises
:class:`~zmqruntime.RemoteProtocolError` (and nothing else), with an :class:`ErrorCode` saying
which rule was broken. :func:`encode` raises :class:`~zmqruntime.LocalProtocolError` for a
message that cannot be sent. This module imports neither zmq nor threading.
"""

from __future__ import annotations

import enum
import functools
import operator
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, cast, final

import attrs
import numpy

from zmqruntime.core import wire
from zmqruntime.core.messages import (
    MESSAGE_CLASSES,
    PROTOCOL_VERSION,
    ArrayLayout,
    BatchFrame,
    ImageFrame,
    ItemFrame,
    Message,
)
from zmqruntime.core.wire import check_json_object
from zmqruntime.errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from zmqruntime.protocols import Buffer, JSONObject

__all__ = [
    "DEFAULT_MAX_HEADER_BYTES",
    "array_from_image",
    "check_json_object",
    "decode",
    "encode",
    "image_from_array",
    "peek_request_id",
]

DEFAULT_MAX_HEADER_BYTES: Final = 1 << 20
_MAX_ID: Final = (1 << 63) - 1

_RequestId = typing.NewType("_RequestId", int)  # stands for int in ``request_id`` fields
_Decoder = Callable[[Any, str], Any]
_Encoder = Callable[[Any], Any] | None  # None: the value is its own JSON


def _fail(path: str, expected: str, value: object) -> RemoteProtocolError:
    return RemoteProtocolError(f"field {path!r} must be {expected}, got {repr(value)[:60]}")


def _scalar(expected: str, *kinds: type[Any]) -> _Decoder:
    exact, others = kinds[0], kinds[1:]

    def decode_scalar(value: Any, path: str) -> Any:
        if type(value) is exact:
            return value
        if type(value) not in others:
            raise _fail(path, expected, value)
        return exact(value)  # an int for a float

    return decode_scalar


def _request_id(value: Any, path: str) -> int:
    if type(value) is int and 0 <= value <= _MAX_ID:
        return value
    raise _fail(path, "an integer in 0..2**63-1", value)


def _json_object(value: Any, path: str, error: type[Exception] = RemoteProtocolError) -> Any:
    problem = wire.json_problem(value) if type(value) is dict else " is not a JSON object"
    if problem is not None:
        raise error(f"field {path!r}{problem}")
    return value


def _member(members: Mapping[Any, enum.Enum]) -> _Decoder:
    def decode_member(value: Any, path: str) -> enum.Enum:
        try:
            return members[value]
        except (KeyError, TypeError):
            raise _fail(path, f"one of {', '.join(map(repr, members))}", value) from None

    return decode_member


_SIMPLE: Final[Mapping[Any, _Decoder]] = {
    str: _scalar("a string", str),
    int: _scalar("an integer", int),
    float: _scalar("a number", float, int),
    bool: _scalar("true or false", bool),
    _RequestId: _request_id,
}
_LIST: Final = _scalar("a list", list)
_OBJECT: Final = _scalar("a JSON object", dict)


def _codec(tp: Any, path: str) -> tuple[_Decoder, _Encoder]:
    """The decoder and encoder of the field at ``path`` whose resolved type is ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _SIMPLE:
        return _SIMPLE[tp], None
    if len(args) == 2 and args[1] is type(None):  # X | None
        inner, encoder = _codec(args[0], path)
        return _optional(inner), _optional(encoder) if encoder else None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        members = {member.value: member for member in tp}
        return _member(members), operator.attrgetter("value")
    if isinstance(tp, type) and attrs.has(tp):
        plan = _plan(tp, path + ".")
        return lambda value, at: plan.build(_OBJECT(value, at), {}), plan.to_header
    if origin is dict and args == (str, Any):
        return _json_object, lambda value: _json_object(value, path, TypeError)
    if (origin is tuple and args[1:] == (Ellipsis,)) or (origin is dict and args[0] is str):
        item, encoder = _codec(args[-1] if origin is dict else args[0], path + "[]")
        if encoder is None:  # items that are their own JSON (the codec's types all are)
            return functools.partial(_collection, origin, item), None
        if origin is tuple:  # attrs values: lists of their header objects
            return functools.partial(_collection, origin, item), functools.partial(_each, encoder)
    raise TypeError(f"the codec has no rule for fields of type {tp!r}")  # a bug, not input


def _each(encoder: Callable[[Any], Any], values: Sequence[Any]) -> list[Any]:
    return [encoder(value) for value in values]


def _optional(codec: Callable[..., Any]) -> Callable[..., Any]:
    def optional(value: Any, *path: str) -> Any:
        return None if value is None else codec(value, *path)

    return optional


def _collection(origin: type[Any], item: _Decoder, value: Any, path: str) -> Any:
    if origin is dict:
        return {key: item(inner, f"{path}[{key!r}]") for key, inner in _OBJECT(value, path).items()}
    return tuple([item(inner, f"{path}[{i}]") for i, inner in enumerate(_LIST(value, path))])


@final
@attrs.frozen
class _Plan:
    """How one attrs class travels: its header fields, and the field that holds its buffers."""

    cls: type[Any]
    fields: tuple[tuple[str, str, _Decoder, _Encoder, bool], ...]  # name, path, …, required
    type_name: str | None = None
    buffers: str | None = None
    frames: int | None = 0  # how many buffer frames it carries (None: any number)
    omitted_when_none: tuple[str, ...] = ()  # fields whose default is None
    names: tuple[str, ...] = attrs.field(
        init=False, default=attrs.Factory(lambda plan: tuple(f[0] for f in plan.fields), True)
    )
    encoders: tuple[tuple[str, Callable[[Any], Any]], ...] = attrs.field(
        init=False,
        default=attrs.Factory(lambda plan: tuple((f[0], f[3]) for f in plan.fields if f[3]), True),
    )

    def build(self, header: Mapping[str, Any], values: dict[str, Any]) -> Any:
        for name, path, decode, _encode, required in self.fields:
            if name in header:
                values[name] = decode(header[name], path)
            elif required:
                raise RemoteProtocolError(f"required field {path!r} is missing")
        try:
            return self.cls(**values)  # absent fields take their defaults here
        except (TypeError, ValueError) as exc:  # the class's own validators
            raise RemoteProtocolError(f"invalid {self.cls.__name__}: {exc}") from None

    def to_header(self, value: Any) -> dict[str, Any]:
        header = {name: getattr(value, name) for name in self.names}
        for name in self.omitted_when_none:  # the decoder's default: a shorter header
            if header[name] is None:
                del header[name]
        for name, encode in self.encoders:
            if name in header:
                header[name] = encode(header[name])
        return header


def _plan(cls: type[Any], prefix: str = "") -> _Plan:
    # JSONObject names a recursive alias; the header holds a dict of plain JSON values.
    types = typing.get_type_hints(cls, localns={"JSONObject": dict[str, Any]})
    fields, buffers, optional = [], {}, []
    for field in attrs.fields(cls):
        if "buffer" in field.metadata:
            many = field.metadata["buffer"] == "many"
            buffers = {"buffers": field.name, "frames": None if many else 1}
            continue
        tp = types[field.name]
        if field.name == "request_id":  # the envelope's id, bounded in every message
            tp = _RequestId if tp is int else _RequestId | None
        decode, encode = _codec(tp, prefix + field.name)
        required = field.default is attrs.NOTHING
        fields.append((field.name, prefix + field.name, decode, encode, required))
        if field.default is None:
            optional.append(field.name)
    kind = getattr(cls, "TYPE", None)
    type_name = kind.value if kind else None
    return _Plan(cls, tuple(fields), type_name, **buffers, omitted_when_none=tuple(optional))


_CLASS_NAMED: Final[Mapping[str, type[Any]]] = {cls.TYPE.value: cls for cls in MESSAGE_CLASSES}
# A plan is built when its class first travels: building all 26 cost ~5 ms of every import, and
# a process uses a few. Two threads may build one plan at once; the two are equal.
_PLANS: Final[dict[type[Any], _Plan]] = {}
_BY_TYPE: Final[dict[str, _Plan]] = {}


def _plan_named(name: object) -> _Plan | None:
    """The plan of the message type called ``name``; None for an unknown name (not stored)."""
    if type(name) is not str or (cls := _CLASS_NAMED.get(name)) is None:
        return None
    plan = _PLANS[cls] = _BY_TYPE[name] = _plan(cls)
    return plan


def _plan_of_class(cls: type[Any]) -> _Plan | None:
    """The plan of message class ``cls``; None if it is not one."""
    name = getattr(getattr(cls, "TYPE", None), "value", None)
    return _plan_named(name) if type(name) is str and _CLASS_NAMED.get(name) is cls else None


@functools.lru_cache(maxsize=256)  # a stream repeats a handful of layouts
def _array_problem(
    dtype_text: object, shape: tuple[Any, ...], nbytes: int, numeric: bool = True
) -> str | None:
    try:
        wire.check_array(wire.parse_dtype(dtype_text, numeric=numeric), shape, nbytes)
    except RemoteProtocolError as exc:
        return str(exc)
    return None


def _check_arrays(message: Message, error: type[ProtocolError]) -> None:
    """An image's or item's arrays must be what their layouts say (any dtype the wire carries
    for items: their text columns are ``U`` arrays)."""
    if isinstance(message, ImageFrame):
        nbytes = memoryview(message.pixels).nbytes
        if (problem := _array_problem(message.dtype, tuple(message.shape), nbytes)) is not None:
            raise error(f"image {message.image_id!r}: {problem}")
    elif isinstance(message, ItemFrame):
        _check_layouts(f"item {message.image_id!r}", message.arrays, message.buffers, error)
    elif isinstance(message, BatchFrame):
        buffers, total = message.buffers, sum(len(entry.arrays) for entry in message.entries)
        if total != len(buffers):
            shown = f"{total} array layouts and {len(buffers)} buffer frames"
            raise error(f"batch {message.batch_id!r} has {shown}; they must pair up")
        start = 0
        for entry in message.entries:
            what = f"batch {message.batch_id!r}, entry {entry.image_id!r}"
            if entry.kind is None and len(entry.arrays) != 1:
                raise error(f"{what} is an image: it has one array, not {len(entry.arrays)}")
            stop = start + len(entry.arrays)
            _check_layouts(what, entry.arrays, buffers[start:stop], error, entry.kind is None)
            start = stop


def _check_layouts(
    what: str,
    layouts: Sequence[ArrayLayout],
    buffers: Sequence[Buffer],
    error: type[ProtocolError],
    numeric: bool = False,
) -> None:
    if len(layouts) != len(buffers):
        shown = f"{len(layouts)} array layouts and {len(buffers)} buffer frames"
        raise error(f"{what} has {shown}; they must pair up")
    if len({layout.name for layout in layouts}) != len(layouts):
        raise error(f"{what} names an array twice")
    for layout, buffer in zip(layouts, buffers, strict=True):
        nbytes = memoryview(buffer).nbytes
        shape = tuple(layout.shape)
        if (problem := _array_problem(layout.dtype, shape, nbytes, numeric)) is not None:
            raise error(f"{what}, array {layout.name!r}: {problem}")


def decode(
    frames: Sequence[Buffer], *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> Message:
    """Decode one multipart message, or raise :class:`RemoteProtocolError` saying why not.

    Buffer fields hold ``memoryview``\\ s of the given frames (no copy), so keep the frames
    alive as long as the message.
    """
    try:
        if len(frames) == 0:
            raise RemoteProtocolError("empty message: expected a JSON header frame")
        if (size := memoryview(frames[0]).nbytes) > max_header_bytes:
            too_large = f"header of {size} bytes exceeds the limit of {max_header_bytes}"
            raise RemoteProtocolError(too_large, ErrorCode.TOO_LARGE)
        # the header object, and up to MAX_DEPTH levels of metadata in it
        header = wire.load_json(frames[0], lone_surrogates=False, max_levels=wire.MAX_DEPTH + 1)
        if type(header) is not dict:
            raise RemoteProtocolError("header must be a JSON object")
        if (version := header.get("version")) != PROTOCOL_VERSION or type(version) is not int:
            raise RemoteProtocolError(
                f"peer speaks protocol version {version!r}; this side speaks {PROTOCOL_VERSION}. "
                "Install the same major version of zmqruntime on both sides.",
                ErrorCode.UNSUPPORTED_VERSION,
            )
        name = header.get("type")
        plan = _BY_TYPE.get(name) if type(name) is str else None
        if plan is None and (plan := _plan_named(name)) is None:
            raise RemoteProtocolError(f"unknown message type {name!r}", ErrorCode.UNKNOWN_TYPE)
        declared, count = header.get("frames"), len(frames) - 1
        if type(declared) is not int or declared != count:
            raise RemoteProtocolError(f"{name} declares {declared!r} buffer frames, {count} came")
        if plan.frames is not None and count != plan.frames:
            raise RemoteProtocolError(f"{name} carries {plan.frames} buffer frames, not {count}")
        values: dict[str, Any] = {}
        if plan.buffers is not None:
            views = tuple(memoryview(frame) for frame in frames[1:])
            values[plan.buffers] = views if plan.frames is None else views[0]
        message = cast(Message, plan.build(header, values))
        _check_arrays(message, RemoteProtocolError)
        return message
    except ProtocolError:
        raise
    except (ArithmeticError, BufferError, LookupError, MemoryError, TypeError, ValueError) as exc:
        raise RemoteProtocolError(f"undecodable message: {type(exc).__name__}: {exc}") from exc


def encode(message: Message, *, request_id: int | None = None) -> list[Buffer]:
    """Encode a message as ``[header, *buffers]`` ready to send; ``request_id`` replaces the
    message's own."""
    plan = _PLANS.get(type(message))
    if plan is None and (plan := _plan_of_class(type(message))) is None:
        raise LocalProtocolError(f"{type(message).__name__} is not a zmqruntime message")
    header = {"version": PROTOCOL_VERSION, "type": plan.type_name}
    try:
        held: Any = getattr(message, plan.buffers) if plan.buffers is not None else ()
        buffers: list[Buffer] = [held] if plan.frames == 1 else list(held)
        header["frames"] = len(buffers)
        _check_arrays(message, LocalProtocolError)
        header.update(plan.to_header(message))
        if request_id is not None:
            header["request_id"] = request_id
        return [wire.dump_json(header), *buffers]
    except (TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise LocalProtocolError(f"cannot encode {type(message).__name__}: {exc}") from exc


def image_from_array(
    array: numpy.ndarray[Any, Any],
    *,
    image_id: str,
    tracker_key: str = "",
    metadata: JSONObject | None = None,
    ack_to: str | None = None,
) -> ImageFrame:
    """An :class:`ImageFrame` whose pixels are ``array``'s buffer (copied only if strided)."""
    pixels = numpy.asarray(array, order="C")  # ascontiguousarray would make 0-d arrays 1-d
    if wire.dtype_problem(pixels.dtype, numeric=True):
        raise TypeError(f"images must have a numeric dtype the wire carries, not {pixels.dtype}")
    return ImageFrame(
        image_id=image_id,
        dtype=pixels.dtype.str,
        shape=tuple(int(extent) for extent in pixels.shape),
        pixels=cast(Buffer, pixels),
        tracker_key=tracker_key,
        metadata={} if metadata is None else metadata,
        ack_to=ack_to,
    )


def array_from_image(image: ImageFrame) -> numpy.ndarray[Any, Any]:
    """The pixels of a decoded :class:`ImageFrame` as a read-only array, without a copy."""
    return numpy.frombuffer(memoryview(image.pixels), dtype=image.dtype).reshape(image.shape)


def peek_request_id(frames: Sequence[Buffer]) -> int | None:
    """The ``request_id`` of a message that failed to decode, if its header shows one; never
    raises."""
    try:
        if not frames or memoryview(frames[0]).nbytes > DEFAULT_MAX_HEADER_BYTES:
            return None
        return _request_id(wire.load_json(frames[0]).get("request_id"), "request_id")
    except Exception:  # hostile input: any failure just means "no id to answer"
        return None
