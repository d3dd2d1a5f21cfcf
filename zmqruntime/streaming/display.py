"""Display settings a batch carries for the layers it draws, named as napari names its layers'
attributes, read from the batch's and each item's metadata:

* ``batch_metadata["display"]``: settings for every layer of the batch;
* ``batch_metadata["layers"][name]``: settings for the layer ``name``;
* ``item_metadata["display"]``: settings for that item's layer (these win, then the layer's,
  then the batch's);
* ``batch_metadata["axis_labels"]``: the viewer's axis names (a list of strings).

Image layers take :data:`IMAGE_SETTINGS`, the others :data:`LAYER_SETTINGS`. Anything else
raises ``ValueError`` naming it, before anything is drawn.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["IMAGE_SETTINGS", "LAYER_SETTINGS", "apply_display", "axis_labels", "layer_display"]

logger = logging.getLogger(__name__)

LAYER_SETTINGS: Final = frozenset({"opacity", "blending", "visible"})
"""What every layer takes: opacity (0 to 1), blending (napari's mode name), visible."""
IMAGE_SETTINGS: Final = LAYER_SETTINGS | {"colormap", "contrast_limits", "gamma"}
"""What an image layer takes besides: colormap (a napari colormap name), contrast_limits
(``[low, high]``, low < high), gamma (> 0)."""


def _settings(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping of display settings, not {value!r:.80}")
    return dict(value)


def _check(name: str, key: str, value: Any) -> None:
    number = (int, float)
    if key == "contrast_limits":
        ok = (
            isinstance(value, list | tuple)
            and len(value) == 2
            and all(isinstance(v, number) and math.isfinite(v) for v in value)
            and value[0] < value[1]
        )
        wanted = "[low, high] with low < high"
    elif key in ("opacity", "gamma"):
        ok = isinstance(value, number) and not isinstance(value, bool)
        ok = ok and (0 <= value <= 1 if key == "opacity" else 0 < value < math.inf)
        wanted = "a number from 0 to 1" if key == "opacity" else "a positive number"
    elif key == "visible":
        ok, wanted = isinstance(value, bool), "true or false"
    else:  # colormap, blending: napari's names
        ok, wanted = isinstance(value, str) and bool(value), "a name"
    if not ok:
        raise ValueError(
            f"layer {name!r}: display setting {key!r} must be {wanted}, not {value!r:.80}"
        )


def layer_display(
    batch_metadata: Mapping[str, Any], metadata: Mapping[str, Any], name: str, image: bool
) -> dict[str, Any]:
    """The checked display settings of the layer ``name`` (``image``: an image layer)."""
    layers = _settings(batch_metadata.get("layers"), "the batch's 'layers'")
    settings = {
        **_settings(batch_metadata.get("display"), "the batch's 'display'"),
        **_settings(layers.get(name), f"the batch's 'layers'[{name!r}]"),
        **_settings(metadata.get("display"), f"the 'display' of layer {name!r}"),
    }
    allowed = IMAGE_SETTINGS if image else LAYER_SETTINGS
    for key, value in settings.items():
        if key not in allowed:
            raise ValueError(
                f"layer {name!r}: unknown display setting {key!r}; use {', '.join(sorted(allowed))}"
            )
        _check(name, key, value)
    return settings


def axis_labels(batch_metadata: Mapping[str, Any]) -> list[str] | None:
    """The batch's checked ``axis_labels``, if any."""
    labels = batch_metadata.get("axis_labels")
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ValueError(f"axis_labels must be a list of strings, not {labels!r:.80}")
    return list(labels)


def apply_display(layer: Any, settings: Mapping[str, Any]) -> None:
    """Set the settings on a napari layer (napari's Qt thread); contrast limits last, so a new
    colormap or gamma does not reset them."""
    for key in sorted(settings, key=lambda key: key == "contrast_limits"):
        setattr(layer, key, list(settings[key]) if key == "contrast_limits" else settings[key])
