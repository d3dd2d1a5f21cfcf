"""Ready-made :class:`~zmqruntime.ImageSink`\\ s, which also take shapes, points and labels
items (:class:`~zmqruntime.protocols.ItemSink`): a folder of ``.npy`` files, and napari (the
optional extra ``zmqruntime[napari]``, imported only when used)."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, final

import attrs
import numpy

from zmqruntime.errors import ChannelClosed
from zmqruntime.gui_thread import QtMainThreadCall, on_qt_main_thread
from zmqruntime.protocols import CommandHandler
from zmqruntime.streaming.display import apply_display, axis_labels, layer_display
from zmqruntime.streaming.item_wire import item_arrays
from zmqruntime.streaming.items import ITEM_KINDS, ImageOrItem, Item, Labels, Points, Shapes
from zmqruntime.streaming.sink_commands import directory_commands, napari_commands
from zmqruntime.streaming.stacks import MAX_STACK_BYTES, StackPlace, Stacks

__all__ = ["DirectorySink", "NapariSink", "sink_from_spec"]


@final
@attrs.define(eq=False)
class DirectorySink:
    """Writes each image as ``<prefix>-<n>.npy`` with its metadata in ``<prefix>-<n>.json``.

    An item is written the same way: its sidecar also holds its ``kind`` and, in ``arrays``,
    each of its arrays (by wire name: ``data``; ``vertices``, ``vertex_counts``,
    ``shape_type``; ``features.<name>``) with its dtype, shape and ``suffix``: the array is in
    ``<prefix>-<n><suffix>``, the first one (``data`` or ``vertices``) in ``<prefix>-<n>.npy``.

    Never overwrites, also with several sinks in several processes on one folder: both files
    are written under hidden temporary names, then published with hard links, which fail if the
    name exists (the sink then takes the next number); numbering starts after the files already
    there. The sidecar is published first and ``<prefix>-<n>.npy`` last, so a reader that takes
    each ``.npy`` finds its complete ``.json`` (and an item's other arrays) beside it; a
    ``.json`` alone is an item still being written: skip it.
    A writer killed mid-write may leave a hidden ``.part`` file or a lone ``.json``, never a
    wrong item. The folder's filesystem must support hard links (FAT does not). Files are not
    fsynced: they survive a crash of the process, not of the machine.
    """

    directory: Path = attrs.field(converter=Path)
    prefix: str = "image"
    item_kinds: ClassVar[tuple[str, ...]] = ITEM_KINDS
    _next: int = attrs.field(default=-1, init=False)  # -1: the folder is not scanned yet

    def __call__(self, image: numpy.ndarray[Any, Any], metadata: Mapping[str, Any], /) -> None:
        """Write one image and its metadata sidecar under the next free number (any thread).

        Raises the ``OSError`` of a failed write (a full disk, a read-only folder), leaving no
        file behind, so a viewer acks the image as failed with the OS error text; ``TypeError``
        for metadata JSON cannot encode.
        """
        self._write_image(image, metadata, {})

    def _write_image(
        self, image: numpy.ndarray[Any, Any], metadata: Mapping[str, Any], more: dict[str, Any]
    ) -> None:
        pixels = numpy.asarray(image, order="C")
        sidecar = {"dtype": pixels.dtype.str, "shape": list(pixels.shape), **more}
        self._write(sidecar, metadata, [pixels])

    def take_batch(
        self,
        items: Sequence[ImageOrItem],
        metadatas: Sequence[Mapping[str, Any]],
        batch_metadata: Mapping[str, Any],
        /,
    ) -> None:
        """Write a batch's images and items in order, as :meth:`__call__` and
        :meth:`take_item` do, each sidecar also holding ``"batch": {"index": i, "size": n,
        "metadata": <the batch's>}``. A failed write raises; the items written before stay."""
        for index, (item, metadata) in enumerate(zip(items, metadatas, strict=True)):
            batch = {"index": index, "size": len(items), "metadata": dict(batch_metadata)}
            if isinstance(item, numpy.ndarray):
                self._write_image(item, metadata, {"batch": batch})
            else:
                self._write_item(item, metadata, {"batch": batch})

    def take_item(self, item: Item, metadata: Mapping[str, Any], /) -> None:
        """Write one item's arrays and its sidecar under the next free number, as
        :meth:`__call__` writes an image."""
        self._write_item(item, metadata, {})

    def _write_item(self, item: Item, metadata: Mapping[str, Any], more: dict[str, Any]) -> None:
        arrays = {
            name: numpy.asarray(array, order="C") for name, array in item_arrays(item).items()
        }
        layouts = {
            name: {
                "dtype": array.dtype.str,
                "shape": list(array.shape),
                "suffix": ".npy" if index == 0 else f".{index}.npy",
            }
            for index, (name, array) in enumerate(arrays.items())
        }
        sidecar = {"kind": item.KIND.value, "arrays": layouts, **more}
        self._write(sidecar, metadata, list(arrays.values()))

    def _write(
        self,
        sidecar: dict[str, Any],
        metadata: Mapping[str, Any],
        arrays: list[numpy.ndarray[Any, Any]],
    ) -> None:
        text = json.dumps({**sidecar, "metadata": dict(metadata)}, indent=1).encode()
        if self._next < 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._next = self._first_free()
        token = f".{self.prefix}-{uuid.uuid4().hex}"
        parts = [self.directory / f"{token}.json.part"]
        parts += [self.directory / f"{token}.{index}.npy.part" for index in range(len(arrays))]
        try:
            for path, array in zip(parts[1:], arrays, strict=True):
                with open(path, "xb") as handle:
                    header = numpy.lib.format.header_data_from_array_1_0(array)
                    numpy.lib.format.write_array_header_1_0(handle, header)
                    handle.write(array.reshape(-1).view(numpy.uint8).data)  # numpy.save hides errno
            with open(parts[0], "xb") as handle:
                handle.write(text)
            self._publish(parts)
        finally:
            for path in parts:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        """Nothing to release; present so viewers can close every sink the same way."""

    def commands(self) -> Mapping[str, CommandHandler]:
        """``layers`` (the items written); ``clear``, ``screenshot``, ``set_display`` and
        ``close`` refused with the reason (:func:`~.sink_commands.directory_commands`)."""
        return directory_commands(self.directory, self.prefix)

    def _first_free(self) -> int:
        head = f"{self.prefix}-"
        ours = (name[len(head) :] for name in os.listdir(self.directory) if name.startswith(head))
        split = (rest.partition(".") for rest in ours)
        taken = (int(n) for n, _, suffix in split if n.isdecimal() and suffix in ("npy", "json"))
        return 1 + max(taken, default=-1)

    def _publish(self, parts: list[Path]) -> None:
        """Link the sidecar, then an item's further arrays, then ``.npy``, to the first number
        where every name is free."""
        suffixes = [".json", *(f".{index}.npy" for index in range(1, len(parts) - 1)), ".npy"]
        order = [parts[0], *parts[2:], parts[1]]
        while True:
            stem = self.directory / f"{self.prefix}-{self._next:06d}"
            self._next += 1
            done: list[str] = []
            try:
                for part, suffix in zip(order, suffixes, strict=True):
                    os.link(part, f"{stem}{suffix}")
                    done.append(f"{stem}{suffix}")
                return
            except BaseException as exc:
                for name in reversed(done):
                    os.unlink(name)
                if not isinstance(exc, FileExistsError):
                    raise


@final
@attrs.define(eq=False)
class NapariSink:
    """Shows images in a napari viewer: one layer per name, updated in place; and items as
    napari Shapes, Points and Labels layers (shape types and features kept), a new item
    replacing the layer of its name in the same place (a labels item updates it in place).

    The layer name comes from ``metadata[name_key]`` (``default_name`` when absent; for an
    item, its kind: ``"shapes"``, ...). An image whose metadata names a place in a stack
    (``{"stack": {"axis": "t", "index": 5}}``) becomes that plane of one n-D layer, grown as
    needed, its first axis labelled with the stack's axis (:mod:`~.stacks`). Calls are
    marshalled onto napari's Qt thread and wait until the layer is updated, so the ack means
    "displayed". ``viewer`` may be a ``napari.Viewer`` or a headless
    ``napari.components.ViewerModel`` (then the update runs in the caller's thread).
    """

    viewer: Any
    name_key: str = "name"
    default_name: str = "stream"
    timeout: float = 30.0
    max_stack_bytes: int = MAX_STACK_BYTES
    """Bytes of all stacks' planes together (see :mod:`~zmqruntime.streaming.stacks`)."""
    item_kinds: ClassVar[tuple[str, ...]] = ITEM_KINDS
    _stacks: Stacks = attrs.field(init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _invoke: Callable[[Callable[[], Any]], Any] | None = attrs.field(default=None, init=False)

    @_stacks.default
    def _make_stacks(self) -> Stacks:
        return Stacks(self.max_stack_bytes)

    def __call__(self, image: numpy.ndarray[Any, Any], metadata: Mapping[str, Any], /) -> None:
        """Show ``image`` in the layer its metadata names (a plane of it, for a stack)."""
        name = str(metadata.get(self.name_key, self.default_name))
        self._run(self._image(name, numpy.asarray(image), metadata))

    def take_item(self, item: Item, metadata: Mapping[str, Any], /) -> None:
        """Show ``item`` as the napari layer of its kind that its metadata names."""
        self._run(self._item(str(metadata.get(self.name_key, item.KIND.value)), item))

    def take_batch(
        self,
        items: Sequence[ImageOrItem],
        metadatas: Sequence[Mapping[str, Any]],
        batch_metadata: Mapping[str, Any],
        /,
    ) -> None:
        """Show a batch in one call on napari's Qt thread: each image or item in the layer its
        metadata names (default: ``<batch name>-<index>``, the batch's name from its metadata
        or ``default_name``), with the display settings of :mod:`zmqruntime.streaming.display`
        (colormap, contrast limits, ... per layer; axis labels). Settings are checked first:
        a bad one raises ``ValueError`` and nothing is drawn."""
        base = str(batch_metadata.get(self.name_key, self.default_name))
        updates = []
        for index, (item, metadata) in enumerate(zip(items, metadatas, strict=True)):
            name = str(metadata.get(self.name_key, f"{base}-{index}"))
            image = isinstance(item, numpy.ndarray)
            settings = layer_display(batch_metadata, metadata, name, image)
            if isinstance(item, numpy.ndarray):
                update = self._image(name, item, metadata)
            else:
                update = self._item(name, item)
            updates.append((name, update, settings))
        labels = axis_labels(batch_metadata)

        def draw() -> None:
            for name, update, settings in updates:
                update()
                apply_display(self.viewer.layers[name], settings)
            if labels is not None:
                ndim = self.viewer.dims.ndim
                self.viewer.dims.axis_labels = ([""] * ndim + labels)[-ndim:]

        self._run(draw)

    def _image(
        self, name: str, data: numpy.ndarray[Any, Any], metadata: Mapping[str, Any]
    ) -> Callable[[], None]:
        place = StackPlace.of(metadata)  # a malformed one raises here, before the GUI thread
        if place is None:
            return self._place(name, "Image", lambda: self.viewer.add_image(data, name=name), data)
        viewer, stacks = self.viewer, self._stacks

        def stack() -> None:
            layers = viewer.layers
            old = layers[name] if name in layers else None  # noqa: SIM401 - a napari LayerList
            shown = old.data if old is not None and type(old).__name__ == "Image" else None
            planes = stacks.place(name, shown, data, place.index)
            self._place(name, "Image", lambda: viewer.add_image(planes, name=name), planes)()
            axes = list(viewer.dims.axis_labels)
            axes[len(axes) - planes.ndim] = place.axis
            viewer.dims.axis_labels = axes
            stacks.keep_only(layer.name for layer in layers)

        return stack

    def _item(self, name: str, item: Item) -> Callable[[], None]:
        viewer = self.viewer

        def add() -> None:
            if isinstance(item, Labels):
                viewer.add_labels(numpy.array(item.data), name=name)
                return
            features = {key: numpy.array(column) for key, column in item.features.items()}
            if isinstance(item, Points):
                viewer.add_points(numpy.array(item.data), features=features or None, name=name)
            elif isinstance(item, Shapes):
                viewer.add_shapes(
                    item.data or None,
                    ndim=item.vertices.shape[1],
                    shape_type=[kind.value for kind in item.shape_type] or "polygon",
                    features=features or None,
                    name=name,
                )

        data = numpy.array(item.data) if isinstance(item, Labels) else None
        return self._place(name, type(item).__name__, add, data)

    def _place(
        self, name: str, layer_type: str, add: Callable[[], None], data: Any
    ) -> Callable[[], None]:
        """What updates the layer ``name`` in place with ``data`` if it is a ``layer_type``
        layer and ``data`` is given, else adds one with ``add()`` in its place (to run on
        napari's Qt thread)."""

        def update() -> None:
            layers = self.viewer.layers
            old = layers[name] if name in layers else None  # noqa: SIM401 - a napari LayerList
            if old is not None and data is not None and type(old).__name__ == layer_type:
                old.data = data
                return
            if old is not None:
                index = layers.index(old)
                layers.remove(old)
            add()
            if old is not None:
                layers.move(len(layers) - 1, index)

        return update

    def _run(self, call: Callable[[], Any]) -> Any:
        """``call()`` on napari's Qt thread (in this one for a headless viewer): its result.
        ``ChannelClosed`` once the sink is closed."""
        with self._lock:
            if self._closed:
                raise ChannelClosed("this NapariSink is closed")
            if self._invoke is None:
                windowed = getattr(self.viewer, "window", None) is not None
                self._invoke = on_qt_main_thread(_call, timeout=self.timeout) if windowed else _call
            invoke = self._invoke
        return invoke(call)

    def commands(self) -> Mapping[str, CommandHandler]:
        """``clear``, ``layers``, ``screenshot``, ``set_display`` and ``close``, each run on
        napari's Qt thread (:func:`~.sink_commands.napari_commands` says what they take)."""
        return napari_commands(self.viewer, self._run)

    def close(self) -> None:
        """Release a call still waiting for the Qt thread and refuse later ones; leave the
        viewer open: it belongs to the application."""
        with self._lock:
            self._closed = True
            invoke = self._invoke
        if isinstance(invoke, QtMainThreadCall):
            invoke.close()


def _call(call: Callable[[], Any]) -> Any:
    return call()


def sink_from_spec(spec: str) -> Callable[..., None]:
    """A sink from a command-line spec: ``npy:DIR``, or ``napari`` (opens a window: needs the
    ``napari`` extra and a display); ``ValueError`` for anything else."""
    kind, _, argument = spec.partition(":")
    if kind == "npy" and argument:
        return DirectorySink(Path(argument))
    if kind == "napari":
        try:
            import napari  # noqa: PLC0415 - optional extra
        except ImportError as exc:
            raise ValueError("the napari sink needs: pip install 'zmqruntime[napari]'") from exc
        return NapariSink(napari.Viewer(title=argument or "zmqruntime"))
    raise ValueError(f"unknown sink {spec!r}: use npy:DIR or napari")
