"""Stacks: images that are the planes of one n-D layer (a time-lapse, a z-stack), each naming
its place in its metadata as ``{"stack": {"axis": "t", "index": 5}}``.

A sink keeps each stack in a buffer that grows by doubling (so appending N planes copies
O(N) planes in all) and shows a view of its first planes; planes not yet received are zeros.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, final

import attrs
import numpy

__all__ = ["MAX_STACK_BYTES", "StackPlace", "Stacks"]

MAX_STACK_BYTES: Final = 2 << 30
"""Default bytes of all of a sink's stacks' buffers together."""
MAX_STACK_GAP: Final = 1024
"""Planes a new plane may lie beyond the end of its stack (so one message cannot make a
sender-chosen stack huge at once)."""
_MAX_AXIS_NAME: Final = 64


@final
@attrs.frozen
class StackPlace:
    """Where an image goes in its stack: the stack's axis name and the plane's index."""

    axis: str
    index: int

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> StackPlace | None:
        """The place ``metadata["stack"]`` names; None without one. ``ValueError`` saying what
        is wrong when it is not ``{"axis": <1 to 64 characters>, "index": <whole number ≥ 0>}``."""
        place = metadata.get("stack")
        if place is None:
            return None
        axis = place.get("axis") if isinstance(place, Mapping) else None
        index = place.get("index") if isinstance(place, Mapping) else None
        if not isinstance(axis, str) or not 0 < len(axis) <= _MAX_AXIS_NAME:
            raise ValueError(f'metadata["stack"]["axis"] must be 1 to 64 characters, not {axis!r}')
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f'metadata["stack"]["index"] must be a whole number ≥ 0: {index!r}')
        return cls(axis, index)


@final
@attrs.define(eq=False)
class Stacks:
    """The buffers of a sink's stacks, by layer name, at most ``max_bytes`` of them in all.
    Not thread-safe: a sink uses it from the one thread that draws (napari's Qt thread)."""

    max_bytes: int = MAX_STACK_BYTES
    _buffers: dict[str, numpy.ndarray[Any, Any]] = attrs.field(factory=dict, init=False)

    def place(
        self,
        name: str,
        shown: numpy.ndarray[Any, Any] | None,
        plane: numpy.ndarray[Any, Any],
        index: int,
    ) -> numpy.ndarray[Any, Any]:
        """The stack ``name`` with ``plane`` at ``index``: a view of its buffer, at least
        ``index + 1`` planes long. ``shown`` is what the layer shows now: a stack whose layer
        shows something else (replaced, removed: None) starts again. ``ValueError`` for a
        plane of another shape or dtype than the stack's, more than :data:`MAX_STACK_GAP`
        planes beyond its end, or stacks past ``max_bytes`` in all."""
        buffer = self._buffers.get(name)
        if buffer is None or shown is None or shown.base is not buffer:
            buffer, length = None, 0
        else:
            length = shown.shape[0]
            if buffer.shape[1:] != plane.shape or buffer.dtype != plane.dtype:
                raise ValueError(
                    f"the stack {name!r} holds {buffer.shape[1:]} {buffer.dtype} planes, not "
                    f"{plane.shape} {plane.dtype}; give this one another layer name"
                )
        needed = max(length, index + 1)
        if index > length + MAX_STACK_GAP:
            raise ValueError(
                f"plane {index} of the stack {name!r} lies more than {MAX_STACK_GAP} planes "
                f"beyond its end ({length} planes)"
            )
        others = sum(b.nbytes for key, b in self._buffers.items() if key != name)
        most = max(0, self.max_bytes - others) // max(1, plane.nbytes)
        if needed > most:
            raise ValueError(
                f"plane {index} of the stack {name!r} would make it {needed} planes of "
                f"{plane.nbytes} bytes, past the limit of {self.max_bytes} bytes for all "
                "stacks (NapariSink(max_stack_bytes=...))"
            )
        if buffer is None or needed > buffer.shape[0]:
            capacity = max(needed, min(2 * length, most))
            grown = numpy.zeros((capacity, *plane.shape), plane.dtype)
            if buffer is not None:
                grown[:length] = buffer[:length]
            buffer = self._buffers[name] = grown
        buffer[index] = plane
        return buffer[:needed]

    def keep_only(self, names: Iterable[str]) -> None:
        """Forget the buffers of stacks whose layer is gone."""
        alive = set(names)
        for name in [name for name in self._buffers if name not in alive]:
            del self._buffers[name]
