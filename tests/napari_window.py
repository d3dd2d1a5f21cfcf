"""Streams two images, then a shapes, a points and a labels item, then a batch of 3 channels,
into a real napari window and reports what the screen shows.

Run as ``python -m tests.napari_window IPC_ROOT`` under an X display (Xvfb in CI). Prints one
JSON line: the layers napari has, and the mean brightness of the left and right halves of a
canvas screenshot. The image is dark on the left and bright on the right, so a working
pipeline shows exactly that; the items lie outside the measured band, and it reports their
layers' types, shape types, features and sizes. Then it asks the viewer through commands for
its layers and a screenshot (as an array and as PNG bytes: their size and brightness), sends
three more images and a ``clear`` and reports what ``clear`` removed and the layers left, and
closes the window with a ``close`` command.
"""

from __future__ import annotations

import json
import struct
import sys
import threading
from typing import Any

import napari
import numpy

from zmqruntime import TransportMode, ZMQConfig, on_qt_main_thread
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.streaming import ImageSender, Labels, NapariSink, Points, Shapes, StreamingServer

BATCH_NAMES = ("dapi", "gfp", "rfp")
BATCH = {  # a batch of 3 small channels in the top left corner, outside the measured band
    "layers": {
        "dapi": {"colormap": "blue", "contrast_limits": [0, 500]},
        "gfp": {"colormap": "green", "contrast_limits": [10, 300]},
        "rfp": {"colormap": "red", "contrast_limits": [20, 200]},
    }
}


STACK_PLANES = 20


def main() -> int:
    """Open the window, stream, measure, quit."""
    config = ZMQConfig(ipc_root=sys.argv[1])
    viewer = napari.Viewer(show=True, title="zmqruntime test")
    image = numpy.zeros((64, 64), numpy.uint8)
    image[:, 32:] = 255
    result: dict[str, object] = {}
    # An application's own command touches napari on its Qt thread through the adapter.
    reset_view = on_qt_main_thread(lambda args: viewer.reset_view())
    server = StreamingServer.bind(
        Endpoint.of(port=0, transport_mode=TransportMode.IPC, config=config),
        NapariSink(viewer),
        commands={"reset_view": reset_view},
    ).start()

    def stream() -> None:
        try:
            with ImageSender.to(
                Endpoint.of(
                    port=server.port_number, transport_mode=TransportMode.IPC, config=config
                )
            ) as sender:
                sender.send(numpy.zeros((8, 8), numpy.uint8), {"name": "live"})
                sender.send(image, {"name": "live"})  # the same layer, updated in place
                box = [[52, 10], [52, 20], [60, 20], [60, 10]]
                sender.send(Shapes.of([box], "rectangle", {"cell": ["a"]}), {"name": "outlines"})
                sender.send(Points.of([[60, 30], [62, 40]], {"id": [1, 2]}), {"name": "nuclei"})
                masks = numpy.zeros((64, 64), numpy.uint16)
                masks[:4, :4] = 3
                sender.send(Labels.of(masks), {"name": "masks"})
                channels = [numpy.full((4, 4), 50 * n, numpy.uint16) for n in (1, 2, 3)]
                sender.send_batch(channels, BATCH, item_metadata=[{"name": n} for n in BATCH_NAMES])
                for index in range(STACK_PLANES):  # a time-lapse: one layer, not 20
                    plane = numpy.full((16, 16), index, numpy.uint8)
                    place = {"axis": "t", "index": index}
                    sender.send(plane, {"name": "timelapse", "stack": place})
                sender.wait_all_acked(timeout=60)
                result["acked"] = sender.tracker.get_progress() if sender.tracker else None
                on_qt_main_thread(measure)()  # Qt work belongs on the main thread
                command(sender)
        except Exception as exc:  # reported to the test, which fails on it
            result["error"] = repr(exc)
            on_qt_main_thread(viewer.close)()

    def command(sender: ImageSender) -> None:
        sender.command("reset_view")
        shot = sender.command("screenshot", {"format": "array"})
        result["command_shot"] = {"shape": list(shot.shape), **halves(shot)}
        png = sender.command("screenshot")
        width, height = struct.unpack(">II", png[16:24])
        result["png"] = {"signature": png[:8] == b"\x89PNG\r\n\x1a\n", "size": [height, width]}
        result["command_layers"] = [layer["name"] for layer in sender.command("layers")]
        for index in range(3):
            sender.send(numpy.full((8, 8), index, numpy.uint8), {"name": f"extra {index}"})
        result["cleared"] = sender.command("clear")
        result["after_clear"] = sender.command("layers")
        sender.command_async("close")  # the window closes; the reply may not get out

    def halves(shot: Any) -> dict[str, float]:
        gray = numpy.asarray(shot)[..., :3].mean(axis=-1)
        middle = gray[gray.shape[0] // 4 : 3 * gray.shape[0] // 4]
        return {
            "left": float(middle[:, : middle.shape[1] // 3].mean()),
            "right": float(middle[:, 2 * middle.shape[1] // 3 :].mean()),
        }

    def measure() -> None:
        viewer.reset_view()
        shot = numpy.asarray(viewer.screenshot(canvas_only=True, flash=False))
        result["layers"] = [layer.name for layer in viewer.layers]
        result["shape"] = (
            list(viewer.layers["live"].data.shape) if "live" in viewer.layers else None
        )
        result["items"] = {
            layer.name: {
                "type": type(layer).__name__,
                "shape": list(numpy.shape(layer.data)) if layer.name != "outlines" else None,
                "shape_type": getattr(layer, "shape_type", None),
                "features": layer.features.to_dict("list"),
                "max": int(numpy.max(layer.data)) if layer.name == "masks" else None,
            }
            for layer in viewer.layers
            if type(layer).__name__ != "Image"
        }
        result["batch"] = {
            name: [viewer.layers[name].colormap.name, list(viewer.layers[name].contrast_limits)]
            for name in BATCH_NAMES
            if name in viewer.layers
        }
        if "timelapse" in viewer.layers:
            stack = numpy.asarray(viewer.layers["timelapse"].data)
            result["stack"] = {
                "shape": list(stack.shape),
                "planes": [int(plane.max()) for plane in stack],
                "axis": viewer.dims.axis_labels[viewer.dims.ndim - stack.ndim],
            }
        result.update(halves(shot))

    threading.Thread(target=stream, daemon=True).start()
    napari.run()
    server.close()
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
