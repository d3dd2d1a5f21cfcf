"""Sans-IO encoding of :mod:`zmqruntime.core.messages` to multipart frames, and back.

A message is ``[header, *buffers]``: the header is a UTF-8 JSON object holding the protocol
``version``, the message ``type``, the number of buffer ``frames`` that follow, and the
message's fields; buffers (task payloads, pixels) follow as raw frames and are never copied
by the codec.

:func:`decode` treats its input as hostile: anything that is not a valid message raises
:class:`~zmqruntime.RemoteProtocolError` (and nothing else), with an :class:`ErrorCode` saying
which rule was broken. :func:`encode` raises :class:`~zmqruntime.LocalProtocolError` for a
message that could not be sent (a field that is not JSON, an image whose pixels do not match
its shape). This module imports neither zmq nor threading; the socket layers drive it.
"""

from __future__ import annotations

import enum
import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar, cast, final

import attrs
import numpy

from zmqruntime.core import messages
from zmqruntime.core.messages import MESSAGE_CLASSES, PROTOCOL_VERSION, ImageFrame, Message
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
MAX_IMAGE_DIMENSIONS: Final = 32
_MAX_ID = (1 << 63) - 1
_MAX_ARRAY_BYTES: Final = int(numpy.iinfo(numpy.intp).max)

_Decoder = Callable[[Any, str], Any]
_Encoder = Callable[[Any], Any]
_T = TypeVar("_T")


def _fail(path: str, expected: str, value: object) -> RemoteProtocolError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return RemoteProtocolError(f"field {path!r} must be {expected}, got {shown}")


def _decode_str(value: Any, path: str) -> str:
    if type(value) is not str:
        raise _fail(path, "a string", value)
    return value


def _decode_int(value: Any, path: str) -> int:
    if type(value) is not int:
        raise _fail(path, "an integer", value)
    return value


def _decode_float(value: Any, path: str) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise _fail(path, "a number", value)


def _decode_bool(value: Any, path: str) -> bool:
    if type(value) is not bool:
        raise _fail(path, "true or false", value)
    return value


def _decode_json_object(value: Any, path: str) -> JSONObject:
    if type(value) is not dict:
        raise _fail(path, "a JSON object", value)
    return cast(JSONObject, value)


def _identity(value: Any) -> Any:
    return value


def _optional(decoder: _Decoder, encoder: _Encoder) -> tuple[_Decoder, _Encoder]:
    def decode_optional(value: Any, path: str) -> Any:
        return None if value is None else decoder(value, path)

    def encode_optional(value: Any) -> Any:
        return None if value is None else encoder(value)

    return decode_optional, encode_optional


def _tuple_of(decoder: _Decoder) -> _Decoder:
    def decode_tuple(value: Any, path: str) -> tuple[Any, ...]:
        if type(value) is not list:
            raise _fail(path, "a list", value)
        return tuple(decoder(item, f"{path}[{i}]") for i, item in enumerate(value))

    return decode_tuple


def _dict_of(decoder: _Decoder) -> _Decoder:
    def decode_dict(value: Any, path: str) -> dict[str, Any]:
        if type(value) is not dict:
            raise _fail(path, "a JSON object", value)
        return {key: decoder(item, f"{path}[{key!r}]") for key, item in value.items()}

    return decode_dict


def _enum_codec(enum_type: type[enum.Enum]) -> tuple[_Decoder, _Encoder]:
    by_value = {member.value: member for member in enum_type}
    allowed = ", ".join(repr(v) for v in by_value)

    def decode_enum(value: Any, path: str) -> enum.Enum:
        try:
            return by_value[value]
        except (KeyError, TypeError):
            raise _fail(path, f"one of {allowed}", value) from None

    def encode_enum(value: enum.Enum) -> Any:
        return value.value

    return decode_enum, encode_enum


@final
@attrs.frozen
class _Field:
    name: str
    decode: _Decoder
    encode: _Encoder
    required: bool
    default: Any


@final
@attrs.frozen
class _Spec:
    cls: type[Any]
    type_name: str | None
    fields: tuple[_Field, ...]
    buffer_field: str | None
    many_buffers: bool


_SIMPLE: Final[Mapping[str, tuple[_Decoder, _Encoder]]] = {
    "str": (_decode_str, _identity),
    "int": (_decode_int, _identity),
    "float": (_decode_float, _identity),
    "bool": (_decode_bool, _identity),
    "JSONObject": (_decode_json_object, _identity),
    "tuple[str, ...]": (_tuple_of(_decode_str), list),
    "tuple[int, ...]": (_tuple_of(_decode_int), list),
    "dict[str, str]": (_dict_of(_decode_str), dict),
    "dict[str, int]": (_dict_of(_decode_int), dict),
    "dict[str, tuple[str, ...]]": (_dict_of(_tuple_of(_decode_str)), dict),
}


def _field_codec(annotation: str) -> tuple[_Decoder, _Encoder]:
    """Build the decoder/encoder pair for a field from its annotation string."""
    if annotation.endswith(" | None"):
        return _optional(*_field_codec(annotation.removesuffix(" | None")))
    if annotation in _SIMPLE:
        return _SIMPLE[annotation]
    target = ErrorCode if annotation == "ErrorCode" else getattr(messages, annotation, None)
    if isinstance(target, type) and issubclass(target, enum.Enum):
        return _enum_codec(target)
    if isinstance(target, type) and attrs.has(target):
        spec = _compile(target)
        return _nested_decoder(spec), _nested_encoder(spec)
    raise TypeError(f"codec cannot handle field annotation {annotation!r}")  # a bug here


def _compile(cls: type[Any]) -> _Spec:
    fields: list[_Field] = []
    buffer_field: str | None = None
    many = False
    for field in attrs.fields(cls):
        kind = field.metadata.get("buffer")
        if kind is not None:
            buffer_field, many = field.name, kind == "many"
            continue
        decoder, encoder = _field_codec(str(field.type))
        required = field.default is attrs.NOTHING
        default = field.default
        fields.append(_Field(field.name, decoder, encoder, required, default))
    type_enum = getattr(cls, "TYPE", None)
    type_name = type_enum.value if isinstance(type_enum, enum.Enum) else None
    return _Spec(cls, type_name, tuple(fields), buffer_field, many)


def _default_value(field: _Field) -> Any:
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return default.factory()
    return default


def _decode_fields(spec: _Spec, header: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field in spec.fields:
        if field.name in header:
            values[field.name] = field.decode(header[field.name], prefix + field.name)
        elif field.required:
            raise RemoteProtocolError(f"required field {prefix + field.name!r} is missing")
        else:
            values[field.name] = _default_value(field)
    return values


def _encode_fields(spec: _Spec, message: Any, into: dict[str, Any]) -> dict[str, Any]:
    for field in spec.fields:
        into[field.name] = field.encode(getattr(message, field.name))
    return into


def _nested_decoder(spec: _Spec) -> _Decoder:
    def decode_nested(value: Any, path: str) -> Any:
        if type(value) is not dict:
            raise _fail(path, "a JSON object", value)
        return spec.cls(**_decode_fields(spec, value, path + "."))

    return decode_nested


def _nested_encoder(spec: _Spec) -> _Encoder:
    def encode_nested(value: Any) -> Any:
        return _encode_fields(spec, value, {})

    return encode_nested


_SPECS: Final[Mapping[type[Any], _Spec]] = {cls: _compile(cls) for cls in MESSAGE_CLASSES}
_BY_TYPE: Final[Mapping[str, _Spec]] = {
    spec.type_name: spec for spec in _SPECS.values() if spec.type_name is not None
}


def _image_problem(dtype_text: str, shape: Sequence[int], nbytes: int) -> str | None:
    """What is wrong with an image's declared dtype/shape against its pixel bytes, if anything."""
    if type(dtype_text) is not str:
        return f"dtype must be a dtype string such as '<u2', not {dtype_text!r}"
    try:
        key = tuple(shape)
        hash(key)
    except TypeError:
        return _check_image(dtype_text, shape, nbytes)
    # A stream repeats a handful of layouts: checking one costs a numpy dtype parse.
    return _cached_image_check(dtype_text, key, nbytes)


def _check_image(dtype_text: str, shape: Sequence[int], nbytes: int) -> str | None:
    try:
        dtype = numpy.dtype(dtype_text)
    except (TypeError, ValueError, SyntaxError, DeprecationWarning):  # the last under -W error
        return f"dtype {dtype_text!r} is not a numpy dtype"
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        return f"dtype {dtype_text!r} is not a plain numeric dtype"
    if len(shape) > MAX_IMAGE_DIMENSIONS:
        return f"shape has {len(shape)} dimensions, more than {MAX_IMAGE_DIMENSIONS}"
    if any(extent < 0 for extent in shape):
        return f"shape {tuple(shape)} has a negative extent"
    if math.prod(extent for extent in shape if extent) * dtype.itemsize > _MAX_ARRAY_BYTES:
        return f"shape {tuple(shape)} is too large for a numpy array"
    expected = math.prod(shape) * dtype.itemsize
    if expected != nbytes:
        return f"shape {tuple(shape)} of {dtype.str} needs {expected} bytes, pixels hold {nbytes}"
    return None


_cached_image_check: Final = functools.lru_cache(maxsize=256)(_check_image)


def _check_decoded(message: Message) -> None:
    request_id = getattr(message, "request_id", None)
    if request_id is not None and not 0 <= request_id <= _MAX_ID:
        raise RemoteProtocolError(f"request_id {request_id} is outside 0..2**63-1")
    if isinstance(message, ImageFrame):
        problem = _image_problem(message.dtype, message.shape, memoryview(message.pixels).nbytes)
        if problem is not None:
            raise RemoteProtocolError(f"image {message.image_id!r}: {problem}")


def decode(
    frames: Sequence[Buffer], *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> Message:
    """Decode one multipart message, or raise :class:`RemoteProtocolError` saying why not.

    Buffer fields hold ``memoryview``\\ s of the given frames (no copy), so keep the frames
    alive as long as the message.
    """
    try:
        return _decode(frames, max_header_bytes)
    except ProtocolError:
        raise
    except (RecursionError, MemoryError, ValueError, TypeError, KeyError) as exc:
        raise RemoteProtocolError(f"undecodable message: {type(exc).__name__}: {exc}") from exc


def _reject_constant(token: str) -> Any:
    raise RemoteProtocolError(f"header holds {token}; strict JSON carries only finite numbers")


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise RemoteProtocolError(f"header number {token[:40]} does not fit a float")
    return value


_STRICT_JSON: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _decode(frames: Sequence[Buffer], max_header_bytes: int) -> Message:
    if len(frames) == 0:
        raise RemoteProtocolError("empty message: expected a JSON header frame")
    header_view = memoryview(frames[0])
    if header_view.nbytes > max_header_bytes:
        raise RemoteProtocolError(
            f"header of {header_view.nbytes} bytes exceeds the limit of {max_header_bytes}",
            ErrorCode.TOO_LARGE,
        )
    try:
        text = header_view.tobytes().decode()
        header = _STRICT_JSON.decode(text)
        if "\\u" in text:  # escapes can smuggle in lone surrogates, which no peer can re-send
            json.dumps(header, ensure_ascii=False).encode()
    except (UnicodeError, json.JSONDecodeError) as exc:
        raise RemoteProtocolError(f"header is not UTF-8 JSON: {exc}") from None
    if type(header) is not dict:
        raise RemoteProtocolError("header must be a JSON object")
    version = header.get("version")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise RemoteProtocolError(
            f"peer speaks protocol version {version!r}; this side speaks {PROTOCOL_VERSION}. "
            "Install the same major version of zmqruntime on both sides.",
            ErrorCode.UNSUPPORTED_VERSION,
        )
    type_name = header.get("type")
    spec = _BY_TYPE.get(type_name) if type(type_name) is str else None
    if spec is None:
        raise RemoteProtocolError(f"unknown message type {type_name!r}", ErrorCode.UNKNOWN_TYPE)
    declared = header.get("frames")
    if type(declared) is not int or declared != len(frames) - 1:
        raise RemoteProtocolError(
            f"{type_name} header declares {declared!r} buffer frames, {len(frames) - 1} arrived"
        )
    values = _decode_fields(spec, header, "")
    if spec.buffer_field is not None:
        views = tuple(memoryview(frame) for frame in frames[1:])
        if spec.many_buffers:
            values[spec.buffer_field] = views
        elif len(views) == 1:
            values[spec.buffer_field] = views[0]
        else:
            raise RemoteProtocolError(f"{type_name} carries exactly 1 buffer frame, not {declared}")
    elif declared:
        raise RemoteProtocolError(f"{type_name} carries no buffer frames, {declared} arrived")
    message = cast(Message, spec.cls(**values))
    _check_decoded(message)
    return message


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(message: Message, *, request_id: int | None = None) -> list[Buffer]:
    """Encode a message as ``[header, *buffers]`` ready to send.

    ``request_id`` replaces the message's own (clients stamp their ids this way without
    building a new message).
    """
    spec = _SPECS.get(type(message))
    if spec is None:
        raise LocalProtocolError(f"{type(message).__name__} is not a zmqruntime message")
    buffers: list[Buffer]
    if spec.buffer_field is None:
        buffers = []
    elif spec.many_buffers:
        buffers = list(getattr(message, spec.buffer_field))
    else:
        buffers = [getattr(message, spec.buffer_field)]
    if isinstance(message, ImageFrame):
        try:
            nbytes = memoryview(message.pixels).nbytes
        except (TypeError, ValueError) as exc:
            raise LocalProtocolError(f"image {message.image_id!r}: pixels: {exc}") from exc
        problem = _image_problem(message.dtype, message.shape, nbytes)
        if problem is not None:
            raise LocalProtocolError(f"image {message.image_id!r}: {problem}")
    header: dict[str, Any] = {"version": PROTOCOL_VERSION, "type": spec.type_name}
    header["frames"] = len(buffers)
    try:
        _encode_fields(spec, message, header)
        if request_id is not None:
            header["request_id"] = request_id
        text = _ENCODER.encode(header)
        encoded = text.encode()  # UnicodeEncodeError (a ValueError) for lone surrogates
    except (TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise LocalProtocolError(f"cannot encode {type(message).__name__}: {exc}") from exc
    return [encoded, *buffers]


def check_json_object(value: Mapping[str, Any], what: str = "value") -> None:
    """Raise ``TypeError`` naming the first part of ``value`` that JSON cannot carry.

    Used where user data enters a message (progress fields, image metadata, labels), so the
    caller hears about a bad value where it made it, not on a server loop.
    """
    _check_json(value, what, 0)


def _check_json(value: Any, path: str, depth: int) -> None:
    if depth > 100:
        raise TypeError(f"{path} nests deeper than 100 levels")
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return
    if kind is float:
        if not math.isfinite(value):
            raise TypeError(f"{path} is {value!r}; JSON headers carry only finite numbers")
        return
    if kind in (list, tuple):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]", depth + 1)
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"{path} has key {key!r}; JSON object keys must be strings")
            _check_json(item, f"{path}[{key!r}]", depth + 1)
        return
    raise TypeError(
        f"{path} is a {kind.__module__}.{kind.__qualname__}, not a JSON value "
        "(None, bool, int, float, str, list, dict with str keys)"
    )


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
    if pixels.dtype.kind not in "biufc" or pixels.dtype.fields is not None:
        raise TypeError(f"images must have a plain numeric dtype, not {pixels.dtype}")
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
    pixels = numpy.frombuffer(memoryview(image.pixels), dtype=numpy.dtype(image.dtype))
    return pixels.reshape(image.shape)


def peek_request_id(frames: Sequence[Buffer]) -> int | None:
    """The ``request_id`` of a message that failed to decode, if its header shows one.

    Lets a server address its error reply to the request that caused it; never raises.
    """
    try:
        if not frames or memoryview(frames[0]).nbytes > DEFAULT_MAX_HEADER_BYTES:
            return None
        header = json.loads(memoryview(frames[0]).tobytes())
        request_id = header.get("request_id") if type(header) is dict else None
    except Exception:  # hostile input: any failure just means "no id to answer"
        return None
    if type(request_id) is int and 0 <= request_id <= _MAX_ID:
        return request_id
    return None
