"""Items a viewer takes besides images: :class:`Shapes`, :class:`Points` and :class:`Labels`,
frozen values named as napari names its layers' data, and checked when they are made: a value
that exists is one a viewer can draw. Their wire form is :mod:`zmqruntime.streaming.item_wire`.

Bounds: at most :data:`MAX_POINTS` points, :data:`MAX_SHAPES` shapes and :data:`MAX_VERTICES`
vertices per item, :data:`MAX_FEATURES` feature columns; coordinates and labels images have
:data:`MIN_DIMS` to :data:`MAX_DIMS` dimensions. Breaking a rule raises
:class:`~zmqruntime.errors.InvalidItem` (a ``ValueError``) saying which.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Final, TypeAlias, final

import attrs
import numpy

from zmqruntime.core import wire
from zmqruntime.core.vocabulary import ItemKind
from zmqruntime.errors import InvalidItem

__all__ = [
    "ITEM_KINDS",
    "MAX_DIMS",
    "MAX_FEATURES",
    "MAX_FEATURE_NAME",
    "MAX_POINTS",
    "MAX_SHAPES",
    "MAX_VERTICES",
    "MIN_DIMS",
    "ImageOrItem",
    "Item",
    "ItemKind",
    "Labels",
    "Points",
    "ShapeType",
    "Shapes",
]

MAX_POINTS: Final = 1_000_000
"""Points in one :class:`Points` item."""
MAX_SHAPES: Final = 100_000
"""Shapes in one :class:`Shapes` item."""
MAX_VERTICES: Final = 1_000_000
"""Vertices of all the shapes of one :class:`Shapes` item together."""
MAX_FEATURES: Final = 64
"""Feature columns of one item."""
MAX_FEATURE_NAME: Final = 128
"""Characters of a feature's name (at least 1)."""
MIN_DIMS: Final = 2
"""Fewest dimensions of a coordinate (D of an NxD array) and of a labels image."""
MAX_DIMS: Final = 6
"""Most dimensions of a coordinate and of a labels image."""

_FEATURE_KINDS: Final = "biufU"
_Array: TypeAlias = numpy.ndarray[Any, Any]


class ShapeType(enum.Enum):
    """A shape's kind, as napari's Shapes layer names it, with the vertices it takes: a line 2
    (its ends), a rectangle or an ellipse 4 (corners of its box) or 2 (a rectangle's opposite
    corners; an ellipse's centre and radii), a path (a polyline) 2 or more, a polygon 3 or more.
    """

    RECTANGLE = "rectangle"
    ELLIPSE = "ellipse"
    LINE = "line"
    PATH = "path"
    POLYGON = "polygon"


_EXACT: Final = {  # the vertex counts these shape types take
    ShapeType.RECTANGLE: (2, 4),
    ShapeType.ELLIPSE: (2, 4),
    ShapeType.LINE: (2,),
}
_AT_LEAST: Final = {ShapeType.PATH: 2, ShapeType.POLYGON: 3}
_CODES: Final = {kind: code for code, kind in enumerate(ShapeType)}


def _same_array(left: _Array, right: _Array) -> bool:
    """Bit-exact equality: dtype, shape and bytes."""
    return bool(
        left.dtype == right.dtype
        and left.shape == right.shape
        and left.tobytes() == right.tobytes()
    )


def _same_features(left: Mapping[str, _Array], right: Mapping[str, _Array]) -> bool:
    return left.keys() == right.keys() and all(_same_array(left[k], right[k]) for k in left)


_ARRAY_EQ: Final = attrs.cmp_using(eq=_same_array)
_FEATURES_EQ: Final = attrs.cmp_using(eq=_same_features)


def _floats(data: Any) -> _Array:
    array = numpy.asarray(data)
    return array.astype(numpy.float64) if array.dtype.kind in "biu" else array


def _columns(features: Mapping[str, Any] | None) -> dict[str, _Array]:
    columns = {}
    for name, values in (features or {}).items():
        column = numpy.asarray(values)
        if column.dtype.kind == "O" and all(type(value) is str for value in column.flat):
            column = column.astype(str)  # text columns of a pandas table
        columns[name] = column
    return columns


def _check_coordinates(kind: str, data: Any, what: str, limit: int) -> None:
    if not isinstance(data, numpy.ndarray) or data.ndim != 2:
        got = f"{data.ndim}-D array" if isinstance(data, numpy.ndarray) else type(data).__name__
        raise InvalidItem(f"{kind}: coordinates must be an NxD array, not a {got}")
    count, dims = data.shape
    if not MIN_DIMS <= dims <= MAX_DIMS:
        raise InvalidItem(
            f"{kind}: coordinates have {dims} dimensions, not {MIN_DIMS} to {MAX_DIMS}"
        )
    if data.dtype.kind != "f" or wire.dtype_problem(data.dtype) is not None:
        raise InvalidItem(f"{kind}: coordinates must be floats (float16/32/64), not {data.dtype}")
    if count > limit:
        raise InvalidItem(f"{kind}: {count} {what} exceed the limit of {limit} per item")
    if not (finite := numpy.isfinite(data)).all():
        bad = int(data.shape[0] - numpy.count_nonzero(finite.all(axis=1)))
        raise InvalidItem(f"{kind}: {bad} of {count} {what} have NaN or infinite coordinates")


def _check_features(kind: str, features: Any, count: int, what: str) -> None:
    if not isinstance(features, Mapping):
        raise InvalidItem(f"{kind}: features must be a mapping of name to column")
    if len(features) > MAX_FEATURES:
        raise InvalidItem(f"{kind}: {len(features)} features exceed the limit of {MAX_FEATURES}")
    for name, column in features.items():
        if type(name) is not str or not 1 <= len(name) <= MAX_FEATURE_NAME:
            raise InvalidItem(f"{kind}: a feature name must be 1 to {MAX_FEATURE_NAME} characters")
        if not isinstance(column, numpy.ndarray) or column.shape != (count,):
            shape = getattr(column, "shape", type(column).__name__)
            raise InvalidItem(
                f"{kind}: feature {name!r} must hold one value per {what} ({count}), has {shape}"
            )
        if column.dtype.kind not in _FEATURE_KINDS or wire.dtype_problem(column.dtype):
            raise InvalidItem(
                f"{kind}: feature {name!r} must be numbers, booleans or text, not {column.dtype}"
            )


@final
@attrs.frozen(kw_only=True)
class Points:
    """N points of D dimensions (napari's Points ``data``, an NxD float array) with one value
    per point in each ``features`` column (napari's ``features``). Arrays are shared, not
    copied: do not change them while the item is in flight."""

    KIND: ClassVar[ItemKind] = ItemKind.POINTS
    data: _Array = attrs.field(eq=_ARRAY_EQ, hash=False)
    features: Mapping[str, _Array] = attrs.field(factory=dict, eq=_FEATURES_EQ, hash=False)

    def __attrs_post_init__(self) -> None:
        _check_coordinates("points", self.data, "points", MAX_POINTS)
        _check_features("points", self.features, self.data.shape[0], "point")

    @classmethod
    def of(cls, data: Any, features: Mapping[str, Any] | None = None) -> Points:
        """Points from anything numpy makes an NxD array of (integers become float64), and
        feature columns from sequences or arrays (text columns of Python strings included)."""
        return cls(data=_floats(data), features=_columns(features))


@final
@attrs.frozen(kw_only=True)
class Shapes:
    """N shapes of D-dimensional vertices: ``vertices`` holds every shape's vertices one shape
    after another (an MxD float array), ``vertex_counts`` how many each shape has (N ints),
    ``shape_type`` each one's :class:`ShapeType`, ``features`` one value per shape in each
    column. :attr:`data` is napari's list of per-shape arrays."""

    KIND: ClassVar[ItemKind] = ItemKind.SHAPES
    vertices: _Array = attrs.field(eq=_ARRAY_EQ, hash=False)
    vertex_counts: _Array = attrs.field(eq=_ARRAY_EQ, hash=False)
    shape_type: tuple[ShapeType, ...]
    features: Mapping[str, _Array] = attrs.field(factory=dict, eq=_FEATURES_EQ, hash=False)

    def __attrs_post_init__(self) -> None:
        counts, types = self.vertex_counts, self.shape_type
        if (
            not isinstance(counts, numpy.ndarray)
            or counts.ndim != 1
            or counts.dtype.kind not in "iu"
        ):
            raise InvalidItem("shapes: vertex_counts must be a 1-D array of integers")
        if len(types) != len(counts) or not all(type(t) is ShapeType for t in types):
            raise InvalidItem(f"shapes: {len(types)} shape types for {len(counts)} shapes")
        if len(counts) > MAX_SHAPES:
            raise InvalidItem(f"shapes: {len(counts)} shapes exceed the limit of {MAX_SHAPES}")
        _check_coordinates("shapes", self.vertices, "vertices", MAX_VERTICES)
        if (counts < 0).any() or int(counts.sum(dtype=numpy.int64)) != self.vertices.shape[0]:
            raise InvalidItem(
                f"shapes: ragged coordinates: the vertex counts add up to "
                f"{int(counts.sum(dtype=numpy.int64))} (none may be negative), the vertices "
                f"are {self.vertices.shape[0]}"
            )
        _check_vertex_counts(counts, types)
        _check_features("shapes", self.features, len(counts), "shape")

    @classmethod
    def of(
        cls,
        data: Iterable[Any],
        shape_type: str | ShapeType | Sequence[str | ShapeType] = ShapeType.POLYGON,
        features: Mapping[str, Any] | None = None,
    ) -> Shapes:
        """Shapes from napari's form: one MixD array of vertices per shape, and one shape type
        for all or one per shape (names as in :class:`ShapeType`)."""
        arrays = [_floats(shape) for shape in data]
        try:
            if isinstance(shape_type, str | ShapeType):
                types = (ShapeType(shape_type),) * len(arrays)
            else:
                types = tuple(ShapeType(kind) for kind in shape_type)
        except ValueError as exc:
            names = ", ".join(kind.value for kind in ShapeType)
            raise InvalidItem(f"shapes: {exc}; use one of {names}") from None
        for index, array in enumerate(arrays):
            if array.ndim != 2:
                raise InvalidItem(f"shapes: shape {index} is a {array.ndim}-D array, not MixD")
        if len({array.shape[1] for array in arrays}) > 1:
            raise InvalidItem("shapes: every shape's vertices must have the same dimensions")
        dims = arrays[0].shape[1] if arrays else MIN_DIMS
        vertices = numpy.concatenate(arrays) if arrays else numpy.empty((0, dims))
        counts = numpy.array([len(array) for array in arrays], numpy.int64)
        return cls(
            vertices=vertices, vertex_counts=counts, shape_type=types, features=_columns(features)
        )

    @property
    def data(self) -> list[_Array]:
        """napari's ``data``: one MixD array per shape (views of :attr:`vertices`)."""
        ends = numpy.cumsum(self.vertex_counts)[:-1]
        return numpy.split(self.vertices, ends) if len(self.vertex_counts) else []


def _check_vertex_counts(counts: _Array, types: tuple[ShapeType, ...]) -> None:
    codes = numpy.fromiter((_CODES[kind] for kind in types), dtype=numpy.int8, count=len(types))
    for kind, exact in _EXACT.items():
        got = counts[codes == _CODES[kind]]
        if len(bad := got[~numpy.isin(got, exact)]):
            wanted = " or ".join(map(str, exact))
            raise InvalidItem(
                f"shapes: a {kind.value} has {int(bad[0])} vertices; it takes {wanted}"
            )
    for kind, least in _AT_LEAST.items():
        got = counts[codes == _CODES[kind]]
        if len(bad := got[got < least]):
            raise InvalidItem(
                f"shapes: a {kind.value} has {int(bad[0])} vertices; it takes {least} or more"
            )


@final
@attrs.frozen(kw_only=True)
class Labels:
    """A labels image (napari's Labels ``data``): an integer array of 2 to 6 dimensions, each
    pixel the label of the object it belongs to (0: background). Shared, not copied."""

    KIND: ClassVar[ItemKind] = ItemKind.LABELS
    data: _Array = attrs.field(eq=_ARRAY_EQ, hash=False)

    def __attrs_post_init__(self) -> None:
        data = self.data
        if not isinstance(data, numpy.ndarray) or data.dtype.kind not in "iu":
            dtype = getattr(data, "dtype", type(data).__name__)
            raise InvalidItem(f"labels: the image must have an integer dtype, not {dtype}")
        if not MIN_DIMS <= data.ndim <= MAX_DIMS:
            raise InvalidItem(f"labels: the image has {data.ndim} dimensions, not 2 to 6")

    @classmethod
    def of(cls, data: Any) -> Labels:
        """Labels from anything numpy makes an integer array of."""
        return cls(data=numpy.asarray(data))


Item: TypeAlias = Shapes | Points | Labels
"""Any item besides an image."""
ImageOrItem: TypeAlias = _Array | Item
"""What a viewer draws: an image (a numpy array) or an item."""
ITEM_KINDS: Final = tuple(kind.value for kind in ItemKind)
"""Every kind's name: the ``item_kinds`` of a sink that takes them all."""
