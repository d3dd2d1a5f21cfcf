"""Items on the wire: an :class:`~zmqruntime.core.messages.ItemFrame` per item, every array a
raw frame named in the header. Points: ``data``; shapes: ``vertices``, ``vertex_counts`` and
``shape_type`` (a text array); labels: ``data``; each feature column ``features.<name>``.

:func:`item_from_frame` treats the frame as hostile and rebuilds the item through its checks:
what breaks a rule raises :class:`~zmqruntime.errors.InvalidItem`, which a viewer acks as failed.
"""

from __future__ import annotations

from typing import Any, Final, cast

import numpy

from zmqruntime.core.messages import ArrayLayout, ItemFrame, ItemKind
from zmqruntime.errors import InvalidItem
from zmqruntime.protocols import Buffer, JSONObject
from zmqruntime.streaming.items import Item, Labels, Points, Shapes, ShapeType

__all__ = ["frame_from_item", "item_arrays", "item_from_frame"]

FEATURE_PREFIX: Final = "features."
_ARRAYS: Final = {  # the arrays each kind carries besides its features
    ItemKind.POINTS: ("data",),
    ItemKind.SHAPES: ("vertices", "vertex_counts", "shape_type"),
    ItemKind.LABELS: ("data",),
}
_TYPES: Final = {kind.value: kind for kind in ShapeType}
_Array = numpy.ndarray[Any, Any]


def item_arrays(item: Item) -> dict[str, _Array]:
    """The item's arrays by their wire names, features last."""
    if isinstance(item, Shapes):
        names = numpy.array([kind.value for kind in item.shape_type], dtype="<U9")
        arrays = {
            "vertices": item.vertices,
            "vertex_counts": item.vertex_counts,
            "shape_type": names,
        }
    elif isinstance(item, Points | Labels):
        arrays = {"data": item.data}
    else:
        raise TypeError(f"not an item: {type(item).__name__}; send Shapes, Points or Labels")
    features = getattr(item, "features", {})
    return arrays | {FEATURE_PREFIX + name: column for name, column in features.items()}


def frame_from_item(
    item: Item,
    *,
    image_id: str,
    tracker_key: str = "",
    metadata: JSONObject | None = None,
    ack_to: str | None = None,
    copy: bool = False,
) -> ItemFrame:
    """The message that carries ``item``; its arrays' buffers are sent without a copy when
    C-contiguous (and ``copy`` is false)."""
    layouts, buffers = [], []
    for name, array in item_arrays(item).items():
        data = numpy.array(array, order="C") if copy else numpy.asarray(array, order="C")
        layouts.append(ArrayLayout(name=name, dtype=data.dtype.str, shape=data.shape))
        buffers.append(cast(Buffer, data))
    return ItemFrame(
        image_id=image_id,
        kind=item.KIND,
        arrays=tuple(layouts),
        buffers=tuple(buffers),
        tracker_key=tracker_key,
        metadata={} if metadata is None else metadata,
        ack_to=ack_to,
    )


def item_from_frame(frame: ItemFrame) -> Item:
    """The item a decoded frame carries (arrays are read-only views of its buffers), or
    :class:`InvalidItem` saying which rule it breaks."""
    arrays: dict[str, _Array] = {}
    for layout, buffer in zip(frame.arrays, frame.buffers, strict=True):
        array = numpy.frombuffer(memoryview(buffer), dtype=layout.dtype)
        arrays[layout.name] = array.reshape(layout.shape)
    kind = frame.kind.value
    features = {
        name.removeprefix(FEATURE_PREFIX): column
        for name, column in arrays.items()
        if name.startswith(FEATURE_PREFIX)
    }
    named = set(arrays) - {FEATURE_PREFIX + name for name in features}
    if named != set(wanted := _ARRAYS[frame.kind]):
        raise InvalidItem(f"{kind}: carries arrays {sorted(named)}, not {list(wanted)}")
    if frame.kind is ItemKind.POINTS:
        return Points(data=arrays["data"], features=features)
    if frame.kind is ItemKind.LABELS:
        return Labels(data=arrays["data"])
    return Shapes(
        vertices=arrays["vertices"],
        vertex_counts=arrays["vertex_counts"],
        shape_type=_shape_types(arrays["shape_type"]),
        features=features,
    )


def _shape_types(names: _Array) -> tuple[ShapeType, ...]:
    if names.dtype.kind != "U" or names.ndim != 1:
        raise InvalidItem("shapes: shape_type must be a 1-D text array")
    unknown = set(numpy.unique(names).tolist()) - _TYPES.keys()
    if unknown:
        shown = ", ".join(repr(name) for name in sorted(unknown)[:3])
        raise InvalidItem(f"shapes: unknown shape type {shown}; use one of {', '.join(_TYPES)}")
    return tuple(_TYPES[name] for name in names.tolist())
