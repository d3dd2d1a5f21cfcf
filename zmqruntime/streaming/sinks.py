"""Ready-made :class:`~zmqruntime.ImageSink`\\ s: a folder of ``.npy`` files, and napari (the
optional extra ``zmqruntime[napari]``, imported only when used)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast, final

import attrs
import numpy

__all__ = ["DirectorySink", "NapariSink", "sink_from_spec"]


@final
@attrs.define(eq=False)
class DirectorySink:
    """Writes each image as ``<prefix>-<n>.npy`` with its metadata in ``<prefix>-<n>.json``.

    Never overwrites, also with several sinks in several processes on one folder: both files
    are written under hidden temporary names, then published with hard links, which fail if the
    name exists (the sink then takes the next number); numbering starts after the files already
    there. The sidecar is published first, so a reader that takes each ``.npy`` finds its
    complete ``.json`` beside it; a ``.json`` alone is an item still being written: skip it.
    A writer killed mid-write may leave a hidden ``.part`` file or a lone ``.json``, never a
    wrong item. The folder's filesystem must support hard links (FAT does not). Files are not
    fsynced: they survive a crash of the process, not of the machine.
    """

    directory: Path = attrs.field(converter=Path)
    prefix: str = "image"
    _next: int = attrs.field(default=-1, init=False)  # -1: the folder is not scanned yet

    def __call__(self, image: numpy.ndarray[Any, Any], metadata: Mapping[str, Any], /) -> None:
        """Write one image and its metadata sidecar under the next free number (any thread).

        Raises the ``OSError`` of a failed write (a full disk, a read-only folder), leaving no
        file behind, so a viewer acks the image as failed with the OS error text; ``TypeError``
        for metadata JSON cannot encode.
        """
        pixels = numpy.asarray(image, order="C")
        sidecar = {
            "dtype": pixels.dtype.str,
            "shape": list(pixels.shape),
            "metadata": dict(metadata),
        }
        text = json.dumps(sidecar, indent=1).encode()
        if self._next < 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._next = self._first_free()
        token = f".{self.prefix}-{uuid.uuid4().hex}"
        parts = (self.directory / f"{token}.json.part", self.directory / f"{token}.npy.part")
        try:
            with open(parts[1], "xb") as handle:
                header = numpy.lib.format.header_data_from_array_1_0(pixels)
                numpy.lib.format.write_array_header_1_0(handle, header)
                handle.write(pixels.reshape(-1).view(numpy.uint8).data)  # numpy.save hides errno
            with open(parts[0], "xb") as handle:
                handle.write(text)
            self._publish(*parts)
        finally:
            for path in parts:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        """Nothing to release; present so viewers can close every sink the same way."""

    def _first_free(self) -> int:
        head = f"{self.prefix}-"
        ours = (name[len(head) :] for name in os.listdir(self.directory) if name.startswith(head))
        split = (rest.partition(".") for rest in ours)
        taken = (int(n) for n, _, suffix in split if n.isdecimal() and suffix in ("npy", "json"))
        return 1 + max(taken, default=-1)

    def _publish(self, sidecar: Path, pixels: Path) -> None:
        """Link the sidecar, then the pixels, to the first number where both names are free."""
        while True:
            stem = self.directory / f"{self.prefix}-{self._next:06d}"
            self._next += 1
            try:
                os.link(sidecar, f"{stem}.json")
            except FileExistsError:
                continue
            try:
                os.link(pixels, f"{stem}.npy")
                return
            except BaseException as exc:
                os.unlink(f"{stem}.json")
                if not isinstance(exc, FileExistsError):
                    raise


@final
@attrs.define(eq=False)
class NapariSink:
    """Shows images in a napari viewer: one layer per name, updated in place.

    The layer name comes from ``metadata[name_key]`` (``default_name`` when absent). Calls
    are marshalled onto napari's Qt thread and wait until the layer is updated, so the ack
    means "displayed". ``viewer`` may be a ``napari.Viewer`` or a headless
    ``napari.components.ViewerModel`` (then the update runs in the caller's thread).
    """

    viewer: Any
    name_key: str = "name"
    default_name: str = "stream"
    timeout: float = 30.0
    _invoke: Callable[[Callable[[], None]], None] | None = attrs.field(default=None, init=False)

    def __call__(self, image: numpy.ndarray[Any, Any], metadata: Mapping[str, Any], /) -> None:
        """Show ``image`` in the layer its metadata names."""
        name = str(metadata.get(self.name_key, self.default_name))
        data = numpy.asarray(image)

        def update() -> None:
            if name in self.viewer.layers:
                self.viewer.layers[name].data = data
            else:
                self.viewer.add_image(data, name=name)

        if self._invoke is None:
            self._invoke = _invoker(self.viewer, self.timeout)
        self._invoke(update)

    def close(self) -> None:
        """Leave the viewer open: it belongs to the application."""


def _invoker(viewer: Any, timeout: float) -> Callable[[Callable[[], None]], None]:
    """Run a callable on the Qt main thread and wait for it, or directly without a window."""
    if getattr(viewer, "window", None) is None:
        return _call
    from superqt.utils import ensure_main_thread  # noqa: PLC0415 - optional extra

    runner = ensure_main_thread(_call, await_return=True, timeout=int(timeout * 1000))
    return cast(Callable[[Callable[[], None]], None], runner)


def _call(call: Callable[[], None]) -> None:
    call()


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
