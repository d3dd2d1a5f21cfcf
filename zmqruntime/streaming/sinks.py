"""Ready-made :class:`~zmqruntime.ImageSink`\\ s: a folder of ``.npy`` files, and napari (the
optional extra ``zmqruntime[napari]``, imported only when used)."""

from __future__ import annotations

import json
import os
import threading
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

    Files appear atomically (written under a temporary name, then renamed), so a reader never
    sees half an image. Numbering continues after the files already in the folder.
    """

    directory: Path = attrs.field(converter=Path)
    prefix: str = "image"
    _next: int | None = attrs.field(default=None, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def __call__(self, image: numpy.ndarray[Any, Any], metadata: Mapping[str, Any], /) -> None:
        """Write one image and its metadata sidecar."""
        with self._lock:
            if self._next is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                taken = [
                    int(path.stem.rsplit("-", 1)[1])
                    for path in self.directory.glob(f"{self.prefix}-*.npy")
                    if path.stem.rsplit("-", 1)[1].isdigit()
                ]
                self._next = max(taken, default=-1) + 1
            number = self._next
            self._next += 1
        stem = self.directory / f"{self.prefix}-{number:06d}"
        sidecar = {"dtype": image.dtype.str, "shape": list(image.shape), "metadata": dict(metadata)}
        text = json.dumps(sidecar, indent=1).encode()
        _write_atomically(stem.with_suffix(".npy"), lambda handle: numpy.save(handle, image))
        _write_atomically(stem.with_suffix(".json"), lambda handle: handle.write(text))

    def close(self) -> None:
        """Nothing to release; present so viewers can close every sink the same way."""


def _write_atomically(path: Path, write: Callable[[Any], object]) -> None:
    temporary = path.with_name(f".{path.name}.part")
    with open(temporary, "wb") as handle:
        write(handle)
    os.replace(temporary, path)


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
