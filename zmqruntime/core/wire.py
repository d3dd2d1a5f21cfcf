"""The one wire format of values: strict JSON, and numpy arrays as raw frames.

Message headers and image pixels (:mod:`zmqruntime.core.codec`) and the payloads of the default
:class:`~zmqruntime.SafeSerializer` (:mod:`zmqruntime.core.safe_format`) follow these rules:

* **JSON** is compact UTF-8 and strict: no ``NaN``/``Infinity`` literals, no number that
  overflows a float, nothing before or after the value.
* **A plain JSON value** is ``None``, ``bool``, ``str``, an ``int`` of at most
  :data:`MAX_INT_BITS` bits, a finite ``float``, or a ``list``, ``tuple`` (written as a list) or
  ``dict`` with ``str`` keys of plain values, nested at most :data:`MAX_DEPTH` levels. Exact
  builtin types only: no subclasses, no numpy numbers.
* **An array** travels as its dtype string (e.g. ``'<u2'``), its shape (at most :data:`MAX_NDIM`
  non-negative ints) and one frame of exactly ``prod(shape) * itemsize`` raw bytes in C order.
* **The dtype rule**: bool, signed and unsigned integers, IEEE floats of 2, 4 or 8 bytes,
  complex numbers of 8 or 16 bytes, ``datetime64``/``timedelta64``, byte strings (``S``),
  unicode (``U``) and raw bytes (``V``), of non-zero size. Never object, structured or subarray
  dtypes, and never ``long double``: its size and layout differ between platforms and its
  padding bytes are uninitialised memory. Pixels are numbers: images take only the kinds in
  :data:`NUMERIC_KINDS`.

What breaks these rules on the way in raises :class:`~zmqruntime.errors.RemoteProtocolError`.
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any, Final

import numpy

from zmqruntime.errors import RemoteProtocolError
from zmqruntime.protocols import Buffer

MAX_DEPTH: Final = 100
MAX_INT_BITS: Final = 2048  # below Python's int/str digit limit at any setting
MAX_NDIM: Final = 32  # numpy 1's limit: every peer can rebuild the array
NUMERIC_KINDS: Final = "biufc"

_KINDS: Final = frozenset("biufcmMSUV")
_WIDEST: Final = {"f": 8, "c": 16}  # anything wider is a long double
# Vets a peer's text before numpy parses it: a type code or name, and an optional unit.
_DTYPE_TEXT: Final = re.compile(
    r"[<>|=]?(\?|[A-Za-z][A-Za-z0-9]{0,15})(\[[0-9]{0,12}[A-Za-z]{1,3}\])?"
)


def _finite_float(token: str) -> float:
    value = float(token)
    if value - value != 0.0:  # a NaN or Infinity literal, or a number that overflows a float
        raise RemoteProtocolError(f"number {token[:40]} is not a finite float value")
    return value


_DECODER: Final = json.JSONDecoder(parse_constant=_finite_float, parse_float=_finite_float)
# No cycle reaches them: trees are checked for depth first, headers hold checked JSON.
_UTF8: Final = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, check_circular=False, separators=(",", ":")
)
_ASCII: Final = json.JSONEncoder(allow_nan=False, check_circular=False, separators=(",", ":"))


def load_json(frame: Buffer, *, lone_surrogates: bool = True, max_levels: int = 0) -> Any:
    """The strict JSON value that is all of ``frame``, nested at most ``max_levels`` levels of
    containers when that is given; :class:`RemoteProtocolError` if it is not.

    Without ``lone_surrogates``, a string escaping a lone surrogate (``"\\ud800"``) is refused:
    it has no UTF-8 form, so it could not be sent on.
    """
    try:
        text = str(frame, "utf-8")
        value, end = _DECODER.raw_decode(text)
        if not lone_surrogates and "\\u" in text:
            json.dumps(value, ensure_ascii=False).encode()
    except RecursionError:
        raise RemoteProtocolError("JSON nested too deeply") from None
    except (ValueError, TypeError, BufferError) as exc:  # JSON and Unicode errors included
        raise RemoteProtocolError(f"not strict UTF-8 JSON: {type(exc).__name__}: {exc}") from None
    if end != len(text):
        raise RemoteProtocolError(f"data after its JSON value (at {end})")
    # Python's own limit depends on the stack of the thread that parses; this one does not.
    brackets = text.count("[") + text.count("{") if max_levels else 0
    if brackets > max_levels and _levels(value, max_levels) > max_levels:
        raise RemoteProtocolError(f"JSON nested deeper than {max_levels} levels")
    return value


def _levels(value: Any, limit: int) -> int:
    """How many levels of containers ``value`` nests (a scalar: 0), counted to ``limit + 1``
    at most."""
    levels, layer = 0, [value]
    while levels <= limit and (layer := [n for n in layer if isinstance(n, dict | list)]):
        levels += 1
        below = [node.values() if isinstance(node, dict) else node for node in layer]
        layer = [child for children in below for child in children]
    return levels


def dump_json(value: Any, *, lone_surrogates: bool = False) -> bytes:
    """``value`` (plain JSON) as compact UTF-8 JSON. A string holding a lone surrogate has no
    UTF-8 form: it is escaped with ``lone_surrogates``, else ``UnicodeEncodeError`` is raised."""
    try:
        return _UTF8.encode(value).encode()
    except UnicodeEncodeError:
        if not lone_surrogates:
            raise
        return _ASCII.encode(value).encode()


def json_problem(value: Any, reserved: str | None = None, depth: int = 0) -> str | None:
    """None if ``value`` is plain JSON, else where and why not, as the rest of a path:
    ``"['a'][2] is a builtins.set, not a JSON value"``. A dict key equal to ``reserved`` is a
    problem too; ``depth`` is the nesting ``value`` sits at."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return None
    if kind is int:
        fits = value.bit_length() <= MAX_INT_BITS
        return None if fits else f" is an int of more than {MAX_INT_BITS} bits"
    if kind is float:
        return None if value - value == 0.0 else f" is {value!r}; JSON holds finite numbers"
    if kind is not dict and kind is not list and kind is not tuple:
        return f" is a {kind.__module__}.{kind.__qualname__}, not a JSON value"
    if depth >= MAX_DEPTH:
        return f" nests deeper than {MAX_DEPTH} levels"
    is_dict = kind is dict
    for key, item in value.items() if is_dict else enumerate(value):
        if is_dict and (type(key) is not str or key == reserved):
            return f" has key {key!r}; JSON object keys must be strings"
        leaf = type(item)  # the common leaves inline: this runs once per value sent
        if leaf is str or leaf is bool or item is None or (leaf is float and item - item == 0.0):
            continue
        if leaf is int and item.bit_length() <= MAX_INT_BITS:
            continue
        if (problem := json_problem(item, reserved, depth + 1)) is not None:
            return f"[{key!r}]{problem}"
    return None


def count_nodes(frame: Buffer) -> int:
    """How many values and object keys the JSON text ``frame`` holds at any depth: exact for
    valid JSON, and for any text never below what a parser builds of a prefix before it fails.
    Linear time in 64 KiB steps (other threads run between them); memory: two copies of
    ``frame`` and one step."""
    text = bytes(frame).replace(b"\\\\", b"").replace(b'\\"', b"")  # the rest delimit strings
    nodes, inside, carry = 1, False, b""
    for start in range(0, len(text), 1 << 16):
        parts = text[start : start + (1 << 16)].split(b'"')
        outside = (b"0" if inside else b"") + b"0".join(parts[int(inside) :: 2])
        inside ^= len(parts) % 2 == 0
        step = outside.translate(None, b" \t\n\r")
        whole = carry + step
        nodes += sum(step.count(mark) for mark in (b",", b":", b"[", b"{"))
        nodes -= whole.count(b"[]") + whole.count(b"{}")
        carry = whole[-1:]
    return nodes


def check_json_object(value: object, what: str = "value") -> None:
    """Raise ``TypeError`` naming the first part of ``value`` that is not plain JSON."""
    if (problem := json_problem(value)) is not None:
        raise TypeError(what + problem)


@functools.lru_cache(maxsize=256)
def dtype_problem(dtype: numpy.dtype[Any], *, numeric: bool = False) -> str | None:
    """Why ``dtype`` breaks the dtype rule (with ``numeric``, the rule for pixels), or None."""
    if dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
        return "is not a plain dtype (object, structured and subarray dtypes never travel)"
    if dtype.itemsize == 0:
        return "has no size"
    if dtype.itemsize > _WIDEST.get(dtype.kind, dtype.itemsize):
        return "is a long double: its layout depends on the platform, its padding is undefined"
    return "is not a numeric dtype" if numeric and dtype.kind not in NUMERIC_KINDS else None


def parse_dtype(text: object, *, numeric: bool = False) -> numpy.dtype[Any]:
    """The dtype a peer's ``text`` names, if :func:`dtype_problem` finds none."""
    if type(text) is not str or _DTYPE_TEXT.fullmatch(text) is None:
        raise RemoteProtocolError(f"dtype {repr(text)[:40]} is not a dtype string such as '<u2'")
    return _parse_dtype(text, numeric)


@functools.lru_cache(maxsize=256)  # a stream repeats a handful of dtypes
def _parse_dtype(text: str, numeric: bool) -> numpy.dtype[Any]:
    try:
        dtype = numpy.dtype(text)
    except (TypeError, ValueError, SyntaxError, DeprecationWarning):  # the last under -W error
        raise RemoteProtocolError(f"dtype {text!r} is not a numpy dtype") from None
    if (problem := dtype_problem(dtype, numeric=numeric)) is not None:
        raise RemoteProtocolError(f"dtype {text!r} {problem}")
    return dtype


def check_array(dtype: numpy.dtype[Any], shape: Any, nbytes: int) -> tuple[int, ...]:
    """``shape`` as a tuple, if ``nbytes`` raw bytes make an array of that shape and ``dtype``."""
    extents = tuple(shape) if type(shape) in (list, tuple) and len(shape) <= MAX_NDIM else None
    if extents is None or not all(type(extent) is int and extent >= 0 for extent in extents):
        shown = repr(shape)[:60]
        raise RemoteProtocolError(f"shape must be up to {MAX_NDIM} non-negative ints, not {shown}")
    expected = math.prod(extents) * dtype.itemsize
    if expected != nbytes:
        raise RemoteProtocolError(
            f"an array of dtype {dtype.str} and shape {list(extents)} needs {expected} bytes, "
            f"its frame has {nbytes}"
        )
    if expected == 0:  # no bytes to count: numpy alone knows which empty shapes it can make
        try:
            numpy.empty(extents, dtype)
        except (ValueError, OverflowError) as exc:
            shown = f"shape {list(extents)}: {type(exc).__name__}: {exc}"
            raise RemoteProtocolError(shown) from None
    return extents
