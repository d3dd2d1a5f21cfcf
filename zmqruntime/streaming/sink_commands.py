"""The standard viewer commands (:data:`~zmqruntime.streaming.commands.STANDARD_COMMANDS`) as the
shipped sinks answer them: a napari viewer's (on its Qt thread) and a folder's (which refuses
what files cannot do, saying why)."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy

from zmqruntime.protocols import CommandHandler

__all__ = [
    "DISPLAY_SETTINGS",
    "describe_layer",
    "directory_commands",
    "napari_commands",
    "png_bytes",
]

DISPLAY_SETTINGS: Final = ("colormap", "contrast_limits", "gamma", "opacity", "visible")
"""What ``set_display`` may set on a layer (``colormap``, ``contrast_limits`` and ``gamma``
only where napari's layer type has them: images)."""

Invoke = Callable[[Callable[[], Any]], Any]
"""Runs a call where the viewer may be touched (napari's Qt thread) and returns its result."""


def _mapping(args: Any, command: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """``args`` as a dict with only ``allowed`` keys (None: empty); ``ValueError`` otherwise."""
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise ValueError(f"{command} takes a mapping of {', '.join(allowed)}, not {args!r}")
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ValueError(f"{command} takes {', '.join(allowed)}; not {', '.join(unknown)}")
    return args


def _layer_names(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValueError(f'clear takes {{"layers": [names]}}, not {value!r}')
    return value


def describe_layer(layer: Any) -> dict[str, Any]:
    """What ``layers`` says of one napari layer: JSON values only."""
    kind = type(layer).__name__.lower()
    data = layer.data
    shape = [len(data)] if kind == "shapes" else [int(n) for n in numpy.shape(data)]
    entry: dict[str, Any] = {
        "name": layer.name,
        "type": kind,
        "shape": shape,
        "visible": bool(layer.visible),
        "opacity": float(layer.opacity),
    }
    if kind == "image":
        entry["dtype"] = numpy.asarray(data).dtype.str
        entry["contrast_limits"] = [float(limit) for limit in layer.contrast_limits]
        entry["colormap"] = str(layer.colormap.name)
        entry["gamma"] = float(layer.gamma)
    return entry


def png_bytes(pixels: numpy.ndarray[Any, Any]) -> bytes:
    """An 8-bit RGB or RGBA (HxWx3 or HxWx4) or grey (HxW) array as a PNG file's bytes."""
    rgba = numpy.ascontiguousarray(pixels, dtype=numpy.uint8)
    channels = 1 if rgba.ndim == 2 else rgba.shape[2]
    color = {1: 0, 3: 2, 4: 6}.get(channels)
    if color is None or rgba.ndim not in (2, 3):
        raise ValueError(f"a PNG needs HxW, HxWx3 or HxWx4 pixels, not {rgba.shape}")
    height, width = rgba.shape[:2]
    rows = rgba.reshape(height, width * channels)
    raw = numpy.hstack([numpy.zeros((height, 1), numpy.uint8), rows]).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(raw, 6)),
            chunk(b"IEND", b""),
        ]
    )


def napari_commands(viewer: Any, invoke: Invoke) -> dict[str, CommandHandler]:
    """The standard commands on a napari ``viewer`` (a ``napari.Viewer``, or a headless
    ``ViewerModel``, which has no screenshot and no window to close), each run by ``invoke``:

    * ``clear``: ``None`` removes every layer, ``{"layers": [names]}`` those (names not there
      are passed over); returns the names removed.
    * ``layers``: a list of ``{"name", "type", "shape", "visible", "opacity"}`` per layer,
      bottom to top, images also with ``dtype``, ``contrast_limits``, ``colormap``, ``gamma``.
    * ``screenshot``: ``{"format": "png"}`` (the default: PNG bytes) or ``"array"`` (an
      HxWx4 uint8 array), ``"canvas_only"`` (default True).
    * ``set_display``: ``{"layer": name, <setting>: value, ...}`` with the settings of
      :data:`DISPLAY_SETTINGS`; returns the layer as ``layers`` describes it.
    * ``close``: closes the viewer's window.
    """

    def clear(args: Any) -> list[str]:
        wanted = _mapping(args, "clear", ("layers",)).get("layers")
        names = None if wanted is None else set(_layer_names(wanted))

        def run() -> list[str]:
            gone = [layer.name for layer in viewer.layers if names is None or layer.name in names]
            for name in gone:
                viewer.layers.remove(name)
            return gone

        return list(invoke(run))

    def layers(args: Any) -> list[dict[str, Any]]:
        _mapping(args, "layers", ())
        return list(invoke(lambda: [describe_layer(layer) for layer in viewer.layers]))

    def screenshot(args: Any) -> bytes | numpy.ndarray[Any, Any]:
        options = _mapping(args, "screenshot", ("format", "canvas_only"))
        form = options.get("format", "png")
        if form not in ("png", "array"):
            raise ValueError(f'screenshot formats are "png" and "array", not {form!r}')
        if not callable(getattr(viewer, "screenshot", None)):
            raise ValueError(f"a {type(viewer).__name__} has no canvas to take a screenshot of")
        canvas_only = bool(options.get("canvas_only", True))
        shot = invoke(lambda: viewer.screenshot(canvas_only=canvas_only, flash=False))
        pixels = numpy.asarray(shot)
        return png_bytes(pixels) if form == "png" else pixels

    def set_display(args: Any) -> dict[str, Any]:
        settings = dict(_mapping(args, "set_display", ("layer", *DISPLAY_SETTINGS)))
        name = settings.pop("layer", None)
        if not isinstance(name, str):
            raise ValueError('set_display needs {"layer": "<name>", ...}')

        def run() -> dict[str, Any]:
            if name not in viewer.layers:
                known = ", ".join(layer.name for layer in viewer.layers) or "none"
                raise KeyError(f"no layer {name!r}; the layers are: {known}")
            layer = viewer.layers[name]
            for key, value in settings.items():
                if not hasattr(layer, key):
                    raise ValueError(f"a {type(layer).__name__} layer has no {key}")
                setattr(layer, key, tuple(value) if key == "contrast_limits" else value)
            return describe_layer(layer)

        return dict(invoke(run))

    def close(args: Any) -> None:
        _mapping(args, "close", ())
        if getattr(viewer, "window", None) is None:
            raise ValueError(f"a {type(viewer).__name__} has no window to close")
        invoke(viewer.close)

    return {
        "clear": clear,
        "layers": layers,
        "screenshot": screenshot,
        "set_display": set_display,
        "close": close,
    }


def directory_commands(directory: Path, prefix: str) -> dict[str, CommandHandler]:
    """The standard commands on a folder of ``<prefix>-<n>.npy`` files: ``layers`` lists the
    items written (``{"name": "<prefix>-<n>"}``, in order); the others are refused with the
    reason: files are never deleted, and have no screen, display settings or window."""

    def layers(args: Any) -> list[dict[str, Any]]:
        _mapping(args, "layers", ())
        head = f"{prefix}-"
        names = os.listdir(directory) if directory.is_dir() else []
        stems = (name[:-4] for name in names if name.startswith(head) and name.endswith(".npy"))
        numbered = sorted(stem for stem in stems if stem[len(head) :].isdecimal())
        return [{"name": stem} for stem in numbered]

    def refuse(why: str) -> CommandHandler:
        def refused(args: Any) -> None:
            raise ValueError(f"a DirectorySink {why}")

        return refused

    return {
        "layers": layers,
        "clear": refuse("never deletes files: remove them from the folder yourself"),
        "screenshot": refuse("has no screen: read the .npy files it wrote"),
        "set_display": refuse("writes arrays, not their display: send settings as metadata"),
        "close": refuse("has no window to close: shut the viewer down instead"),
    }
