"""The napari sink: layer logic against a real ViewerModel, and a real window under Xvfb.

Skipped only where napari is not installed (``pip install 'zmqruntime[napari]'``); CI
installs it, and Xvfb for the window test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy
import pytest

napari = pytest.importorskip("napari")

from napari.components import ViewerModel  # noqa: E402

from zmqruntime import TransportMode  # noqa: E402
from zmqruntime.core.endpoint import Endpoint  # noqa: E402
from zmqruntime.core.transport import find_free_port_pair  # noqa: E402
from zmqruntime.errors import ChannelClosed  # noqa: E402
from zmqruntime.streaming import (  # noqa: E402
    ImageSender,
    Labels,
    NapariSink,
    Points,
    Shapes,
    StreamingServer,
    VisualizerProcessManager,
    python_module_spec,
)


def test_images_become_layers_named_from_metadata_and_update_in_place() -> None:
    viewer = ViewerModel()
    sink = NapariSink(viewer)
    first = numpy.zeros((4, 5), numpy.uint16)
    sink(first, {"name": "dapi"})
    layer = viewer.layers["dapi"]
    second = numpy.ones((4, 5), numpy.uint16)
    sink(second, {"name": "dapi"})
    assert viewer.layers["dapi"] is layer  # updated in place, not a new layer
    numpy.testing.assert_array_equal(layer.data, second)
    sink(numpy.zeros((2, 2), numpy.float32), {})
    sink(numpy.zeros((3, 3), numpy.uint8), {"channel": "x"})
    assert [item.name for item in viewer.layers] == ["dapi", "stream"]
    custom = NapariSink(ViewerModel(), name_key="channel", default_name="other")
    custom(numpy.zeros((2, 2)), {"channel": "gfp"})
    custom(numpy.zeros((2, 2)), {})
    assert [item.name for item in custom.viewer.layers] == ["gfp", "other"]


def test_items_become_shapes_points_and_labels_layers_replaced_in_place() -> None:
    viewer = ViewerModel()
    sink = NapariSink(viewer)
    sink(numpy.zeros((8, 8), numpy.uint8), {"name": "cells"})
    triangle = [[0, 0], [0, 4], [4, 4]]
    shapes = Shapes.of([triangle, [[1, 1], [5, 5]]], ["polygon", "path"], {"area": [8.0, 0.0]})
    sink.take_item(shapes, {"name": "outlines"})
    sink.take_item(Points.of([[1, 2], [3, 4], [5, 6]], {"label": ["a", "b", "c"]}), {})
    labels = numpy.arange(64, dtype=numpy.int32).reshape(8, 8)
    sink.take_item(Labels.of(labels), {"name": "masks"})
    assert [(layer.name, type(layer).__name__) for layer in viewer.layers] == [
        ("cells", "Image"),
        ("outlines", "Shapes"),
        ("points", "Points"),
        ("masks", "Labels"),
    ]
    outlines = viewer.layers["outlines"]
    assert outlines.shape_type == ["polygon", "path"]
    assert outlines.features["area"].tolist() == [8.0, 0.0]
    numpy.testing.assert_array_equal(outlines.data[0], triangle)
    assert viewer.layers["points"].features["label"].tolist() == ["a", "b", "c"]
    masks = viewer.layers["masks"]
    numpy.testing.assert_array_equal(masks.data, labels)

    sink.take_item(Points.of([[9, 9]]), {"name": "outlines"})  # another kind, same place
    sink.take_item(Labels.of(labels * 2), {"name": "masks"})  # labels: in place
    sink.take_item(Labels.of(labels), {"name": "cells"})  # an image's name: replaced
    assert [(layer.name, type(layer).__name__) for layer in viewer.layers] == [
        ("cells", "Labels"),
        ("outlines", "Points"),
        ("points", "Points"),
        ("masks", "Labels"),
    ]
    assert viewer.layers["masks"] is masks
    assert int(masks.data.max()) == 126


def test_a_stream_fills_a_headless_viewer(config) -> None:
    viewer = ViewerModel()
    with (
        StreamingServer.bind(
            Endpoint.of(port=0, transport_mode=TransportMode.IPC, config=config), NapariSink(viewer)
        ) as server,
        ImageSender.to(
            Endpoint.of(port=server.port_number, transport_mode=TransportMode.IPC, config=config)
        ) as sender,
    ):
        for channel in ("a", "b", "a"):
            sender.send(numpy.full((16, 16), ord(channel), numpy.uint8), {"name": channel})
        sender.wait_all_acked(timeout=30)
    assert [layer.name for layer in viewer.layers] == ["a", "b"]
    assert int(viewer.layers["a"].data[0, 0]) == ord("a")


@pytest.fixture
def display() -> Iterator[str]:
    """An X display: the one set, or a private Xvfb started for the test."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("no X display and no Xvfb (CI installs the xvfb package)")
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [xvfb, "-displayfd", str(write_end), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end) as numbers:
            number = numbers.readline().strip()  # Xvfb writes it once it accepts clients
        assert number, "Xvfb did not start"
        yield f":{number}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_stream_shows_in_a_real_napari_window(display: str, tmp_path: Path) -> None:
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    env.pop("WAYLAND_DISPLAY", None)
    finished = subprocess.run(
        [sys.executable, "-m", "tests.napari_window", str(tmp_path)],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    assert "error" not in result, result
    assert result["acked"] == [29, 29]  # 5 alone, 3 in a batch and the batch, 20 planes
    assert result["layers"] == [
        *["live", "outlines", "nuclei", "masks", "dapi", "gfp", "rfp", "timelapse"]
    ]
    assert result["stack"] == {"shape": [20, 16, 16], "planes": list(range(20)), "axis": "t"}
    assert result["batch"] == {
        "dapi": ["blue", [0, 500]],
        "gfp": ["green", [10, 300]],
        "rfp": ["red", [20, 200]],
    }
    assert result["items"] == {
        "outlines": {
            "type": "Shapes",
            "shape": None,
            "shape_type": ["rectangle"],
            "features": {"cell": ["a"]},
            "max": None,
        },
        "nuclei": {
            "type": "Points",
            "shape": [2, 2],
            "shape_type": None,
            "features": {"id": [1, 2]},
            "max": None,
        },
        "masks": {
            "type": "Labels",
            "shape": [64, 64],
            "shape_type": None,
            "features": {},
            "max": 3,
        },
    }
    assert result["shape"] == [64, 64]
    assert result["right"] > result["left"] + 100, result  # dark left half, bright right half
    # Through viewer commands: a screenshot shows the same, as an array and as a PNG.
    shot = result["command_shot"]
    assert shot["shape"][2] == 4 and shot["right"] > shot["left"] + 100, result
    assert result["png"] == {"signature": True, "size": shot["shape"][:2]}
    assert result["command_layers"] == result["layers"]
    assert result["cleared"] == [*result["layers"], "extra 0", "extra 1", "extra 2"]
    assert result["after_clear"] == []  # and the window closed on a "close" command


def test_the_ready_made_viewer_runs_napari_in_its_main_thread(display: str, config) -> None:
    port = find_free_port_pair(config)
    env = {"DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    spec = python_module_spec(
        "zmqruntime.streaming",
        "--port",
        str(port),
        "--transport",
        "tcp",
        "--sink",
        "napari",
        "--ipc-root",  # its credentials live in the runtime folder of the client's config
        str(config.ipc_root),
        env=env,
    )
    manager = VisualizerProcessManager(
        spec, Endpoint.of(port=port, transport_mode=TransportMode.TCP, config=config)
    )
    manager.start(timeout=90)
    try:
        with ImageSender.to(
            Endpoint.of(port=port, transport_mode=TransportMode.TCP, config=config)
        ) as sender:
            sender.send(numpy.ones((32, 32), numpy.uint16), {"name": "tile"})
            sender.wait_all_acked(timeout=60)
            assert sender.tracker is not None
            assert sender.tracker.statistics().processed == 1  # shown, not failed
    finally:
        code = manager.stop(timeout=30)
    assert code == 0  # the shutdown request closed the window and the process


def test_a_batch_of_three_channels_lands_with_its_display_settings_in_one_call() -> None:
    viewer = ViewerModel()
    sink = NapariSink(viewer)
    calls: list[object] = []

    def invoke(update: Any) -> None:  # stands for on_qt_main_thread: counts the GUI calls
        calls.append(update)
        update()

    sink._invoke = invoke
    channels = [numpy.full((2, 6, 6), 100 * (n + 1), numpy.uint16) for n in range(3)]
    batch = {
        "name": "site",
        "display": {"blending": "additive"},
        "layers": {
            "dapi": {"colormap": "blue", "contrast_limits": [0, 500]},
            "gfp": {"colormap": "green", "contrast_limits": [50, 250]},
        },
        "axis_labels": ["z", "y", "x"],
    }
    metas = [{"name": "dapi"}, {"name": "gfp"}, {"display": {"colormap": "magenta", "gamma": 0.5}}]
    sink.take_batch(channels, metas, batch)
    assert len(calls) == 1  # the whole batch in one call on the GUI thread
    layers = {layer.name: layer for layer in viewer.layers}
    assert list(layers) == ["dapi", "gfp", "site-2"]
    assert [layer.colormap.name for layer in layers.values()] == ["blue", "green", "magenta"]
    assert list(layers["dapi"].contrast_limits) == [0, 500]
    assert list(layers["gfp"].contrast_limits) == [50, 250]
    assert layers["site-2"].gamma == 0.5
    assert {layer.blending for layer in layers.values()} == {"additive"}
    assert tuple(viewer.dims.axis_labels) == ("z", "y", "x")
    numpy.testing.assert_array_equal(layers["gfp"].data, channels[1])
    sink.take_batch([channels[0] * 0], [{"name": "dapi"}], batch)  # updated in place
    assert viewer.layers["dapi"] is layers["dapi"] and len(calls) == 2
    bad = [({"layers": {"dapi": {"colour": "red"}}}, "unknown display setting 'colour'")]
    bad += [({"display": {"contrast_limits": [5, 1]}}, "low < high")]
    bad += [({"axis_labels": "zyx"}, "axis_labels must be a list")]
    for batch_metadata, message in bad:
        with pytest.raises(ValueError, match=message):
            sink.take_batch(channels, metas, batch_metadata)
    points = Points.of([[1, 1]])
    with pytest.raises(ValueError, match="unknown display setting 'colormap'"):
        sink.take_batch([points], [{"display": {"colormap": "red"}}], {})
    assert len(calls) == 2  # nothing drawn for a refused batch


def test_a_batch_reaches_napari_through_a_real_viewer(config: Any, no_thread_leak: None) -> None:
    viewer = ViewerModel()
    at = Endpoint.of(port=0, transport_mode=TransportMode.IPC, config=config)
    with StreamingServer.bind(at, NapariSink(viewer)) as server:
        to = Endpoint.of(server.port_number, transport_mode=TransportMode.IPC, config=config)
        with ImageSender.to(to) as sender:
            sender.send_batch(
                [numpy.zeros((4, 4), numpy.uint8), Points.of([[1, 1]])],
                {"layers": {"cells": {"colormap": "red"}}},
                item_metadata=[{"name": "cells"}, {"name": "spots"}],
            )
            sender.wait_all_acked(10)
            assert sender.tracker is not None and sender.tracker.get_progress() == (3, 3)
    assert viewer.layers["cells"].colormap.name == "red"
    assert type(viewer.layers["spots"]).__name__ == "Points"


# --- stacks: planes of one n-D layer -------------------------------------------------------


def plane(value: int, shape: tuple[int, ...] = (4, 5), dtype: Any = numpy.uint16) -> Any:
    return numpy.full(shape, value, dtype)


def at(index: int, axis: str = "t", **more: Any) -> dict[str, Any]:
    return {"name": "movie", "stack": {"axis": axis, "index": index}, **more}


def test_a_time_stack_builds_one_layer_grown_as_planes_arrive() -> None:
    viewer = ViewerModel()
    sink = NapariSink(viewer)
    for index in (0, 1, 4, 2):  # out of order, with a gap: plane 3 is zeros until it comes
        sink(plane(index + 1), at(index))
    layer = viewer.layers["movie"]
    assert len(viewer.layers) == 1 and layer.data.shape == (5, 4, 5)
    assert [int(p.max()) for p in layer.data] == [1, 2, 3, 0, 5]
    assert viewer.dims.axis_labels[0] == "t"
    for index in range(5, 20):
        sink(plane(index + 1), at(index))
    assert viewer.layers["movie"] is layer  # the same layer, grown in place
    assert [int(p.max()) for p in layer.data] == [1, 2, 3, 0, *range(5, 21)]
    sink(plane(7, (2, 2)), {"name": "still"})  # other images are untouched by stacks
    assert viewer.layers["still"].data.shape == (2, 2)


def test_a_stack_whose_layer_is_gone_starts_again_and_forgets_its_planes() -> None:
    viewer = ViewerModel()
    sink = NapariSink(viewer)
    for index in range(3):
        sink(plane(9), at(index))
    viewer.layers.remove("movie")
    sink(plane(1), at(1))
    assert [int(p.max()) for p in viewer.layers["movie"].data] == [0, 1]
    sink(plane(2), at(0, name="other"))
    viewer.layers.remove("movie")
    sink(plane(3), at(0, name="other"))  # a draw forgets the buffers of removed stacks
    assert sink._stacks._buffers.keys() == {"other"}


@pytest.mark.parametrize(
    ("stack", "why"),
    [
        ({"axis": "", "index": 0}, "axis"),
        ({"axis": "t" * 65, "index": 0}, "axis"),
        ({"axis": 3, "index": 0}, "axis"),
        ({"axis": "t", "index": -1}, "index"),
        ({"axis": "t", "index": True}, "index"),
        ({"axis": "t", "index": 1.0}, "index"),
        ("t=1", "axis"),
    ],
)
def test_a_malformed_stack_place_is_refused_before_anything_is_drawn(stack: Any, why: str) -> None:
    viewer = ViewerModel()
    with pytest.raises(ValueError, match=why):
        NapariSink(viewer)(plane(1), {"name": "movie", "stack": stack})
    assert len(viewer.layers) == 0
    NapariSink(viewer)(plane(1), at(0, axis="t" * 64))  # 64 characters: the limit


def test_a_plane_of_another_shape_or_dtype_or_past_the_bytes_is_refused() -> None:
    viewer = ViewerModel()
    sink = NapariSink(viewer, max_stack_bytes=3 * plane(0).nbytes)
    sink(plane(1), at(0))
    with pytest.raises(ValueError, match="holds"):
        sink(plane(1, (5, 4)), at(1))
    with pytest.raises(ValueError, match="holds"):
        sink(plane(1, dtype=numpy.uint8), at(1))
    sink(plane(3), at(2))  # 3 planes: exactly the limit
    with pytest.raises(ValueError, match="past the limit"):
        sink(plane(4), at(3))
    assert viewer.layers["movie"].data.shape == (3, 4, 5)


def test_a_malformed_stack_is_acked_failed_through_a_real_viewer(config: Any) -> None:
    viewer = ViewerModel()
    with (
        StreamingServer.bind(
            Endpoint.of(port=0, transport_mode=TransportMode.IPC, config=config),
            NapariSink(viewer),
        ) as server,
        ImageSender.to(
            Endpoint.of(port=server.port_number, transport_mode=TransportMode.IPC, config=config)
        ) as sender,
    ):
        sender.send(plane(1), {"name": "movie", "stack": {"axis": "t", "index": -3}})
        sender.send(plane(2), at(0))
        sender.wait_all_acked(30)
        assert sender.tracker is not None
        failed = sender.tracker.statistics()
        assert (failed.processed, failed.failed) == (1, 1)
    assert viewer.layers["movie"].data.shape == (1, 4, 5)


def test_stacks_are_bounded_together_and_a_plane_far_beyond_the_end_is_refused() -> None:
    far = NapariSink(ViewerModel())
    far(plane(1), at(1024))  # 1,024 planes beyond an empty stack's end: the limit
    with pytest.raises(ValueError, match="beyond its end"):
        far(plane(1), at(1025, name="other"))
    viewer = ViewerModel()
    sink = NapariSink(viewer, max_stack_bytes=4 * plane(0).nbytes)
    sink(plane(1), at(0, name="a"))
    sink(plane(1), at(1, name="a"))
    sink(plane(1), at(1, name="b"))  # 2 + 2 planes: all four the stacks may hold
    with pytest.raises(ValueError, match="for all stacks"):
        sink(plane(1), at(0, name="c"))


def test_a_closed_sink_refuses_even_before_its_first_image() -> None:
    sink = NapariSink(ViewerModel())
    sink.close()
    with pytest.raises(ChannelClosed):
        sink(plane(1), {"name": "late"})
