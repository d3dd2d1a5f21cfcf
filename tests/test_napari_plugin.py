"""The napari plugin: its manifest and entry point, and its widget in a real napari window under
Xvfb, serving an ImageSender in this process (tests/napari_plugin_window.py drives the window).

Skipped only where napari (with npe2) is not installed: ``pip install 'zmqruntime[napari]'``.
"""

from __future__ import annotations

import importlib
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy
import pytest

npe2 = pytest.importorskip("npe2")
pytest.importorskip("napari")

from tests.test_napari_sink import display  # noqa: E402, F401 - the X display fixture
from zmqruntime import TransportMode, ZMQConfig, ZMQTimeoutError  # noqa: E402
from zmqruntime.core.client import ZMQClient  # noqa: E402
from zmqruntime.core.endpoint import Endpoint  # noqa: E402
from zmqruntime.core.messages import Shutdown  # noqa: E402
from zmqruntime.core.transport import find_free_port_pair, get_ipc_socket_path  # noqa: E402
from zmqruntime.streaming import ImageSender, napari_plugin  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = Path(napari_plugin.__file__).with_name("napari.yaml")
WIDGET = "Streaming server (zmqruntime)"


def _entry_point() -> metadata.EntryPoint:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (name, value), *others = project["entry-points"]["napari.manifest"].items()
    assert not others
    return metadata.EntryPoint(name=name, value=value, group="napari.manifest")


def _installed_entry_points() -> list[metadata.EntryPoint]:
    """The napari.manifest entry points of the installed zmqruntime (none in a venv installed
    before the plugin existed; the window test then registers the manifest file itself)."""
    return list(metadata.distribution("zmqruntime").entry_points.select(group="napari.manifest"))


def test_the_manifest_is_valid_and_the_entry_point_finds_it() -> None:
    manifest = npe2.PluginManifest.from_file(MANIFEST)  # npe2's schema validation
    manifest.validate_imports()  # every python_name imports (npe2 validate does both)
    assert manifest.name == "zmqruntime"  # npe2 requires the package's name
    (widget,) = manifest.contributions.widgets
    assert f"{widget.display_name} ({manifest.display_name})" == WIDGET  # napari's menu entry
    (command,) = [c for c in manifest.contributions.commands if c.id == widget.command]
    module, _, name = command.python_name.partition(":")
    assert getattr(importlib.import_module(module), name) is napari_plugin.streaming_server_widget
    # The entry point names a file inside the package (flit ships every file in it): resolve it
    # as npe2 does, module path + file name.
    entry = _entry_point()
    module, _, name = entry.value.partition(":")
    found = resources.files(module) / name
    assert Path(str(found)) == MANIFEST
    assert npe2.PluginManifest.from_file(Path(str(found))) == manifest
    installed = _installed_entry_points()
    if installed:  # a venv installed from this tree (CI): napari's own discovery finds it
        assert installed == [entry]
        assert npe2.PluginManifest.from_distribution("zmqruntime") == manifest


def test_importing_the_plugin_module_imports_no_gui() -> None:
    code = (
        "import sys, zmqruntime.streaming.napari_plugin; "
        "assert not {'napari', 'qtpy', 'PyQt6', 'superqt'} & set(sys.modules), sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=ROOT)


class _Window:
    """The child napari process: one JSON command line in, one JSON line out."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.selector = selectors.DefaultSelector()
        assert process.stdout is not None
        self.selector.register(process.stdout, selectors.EVENT_READ)
        self.pending = b""

    def read(self, timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            assert left > 0 and self.selector.select(left), "the napari window did not answer"
            chunk = os.read(self.process.stdout.fileno(), 65536)
            assert chunk, "the napari window exited"
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        assert line.startswith(b"{"), f"the napari window wrote {line!r}"
        return dict(json.loads(line))

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        self.process.stdin.flush()
        return self.read()


@pytest.fixture
def window(display: str, tmp_path: Path) -> Iterator[_Window]:  # noqa: F811
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    env.pop("WAYLAND_DISPLAY", None)
    errors = (tmp_path / "stderr.txt").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.napari_plugin_window", str(MANIFEST)],
        env=env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errors,
    )
    try:
        yield _Window(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        errors.close()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


def _port(address: str) -> int:
    return Endpoint.parse(address.split(maxsplit=1)[0], config=ZMQConfig()).port


def _free(port: int) -> bool:
    """Whether a server could bind ``port`` (as libzmq does: connections in TIME_WAIT don't
    count, a listening socket does)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_plugin_widget_serves_a_sender_in_another_process(
    window: _Window, tmp_path: Path
) -> None:
    opened = window.read()
    assert WIDGET in opened["menu"], opened
    found_by = "entry point" if _installed_entry_points() else "manifest file"
    assert opened["found_by"] == found_by, opened
    assert opened["status"] == "stopped", opened
    config = ZMQConfig()  # the widget's: this user's runtime folder (HOME is a temporary one)

    # TCP on any free port: a sender of the same user just works (credentials of the folder).
    started = window.ask(do="start", transport="TCP", port=0)
    assert started["status"] == "serving" and started["error"] == "—", started
    port = _port(started["address"])
    ramp = numpy.arange(32 * 32, dtype=numpy.uint16).reshape(32, 32)
    tcp = Endpoint.of(port=port, transport_mode=TransportMode.TCP, config=config)
    with ImageSender.to(tcp) as sender:
        for _ in range(3):
            sender.send(ramp, {"name": "plugin"})
        sender.send(numpy.zeros(5, numpy.uint8), {"name": "flat"})  # napari wants 2-D at least
        sender.wait_all_acked(timeout=60)
        assert sender.tracker is not None
        acks = sender.tracker.statistics()
    assert (acks.processed, acks.failed) == (3, 1)
    seen = window.ask(do="look", until={"received": "4", "failed": "1"})
    assert (seen["received"], seen["processed"], seen["failed"]) == ("4", "3", "1"), seen
    assert seen["rate_max"] > 0, seen
    assert "at least 2 dimensions" in seen["error"], seen
    assert seen["layers"] == {"plugin": [[32, 32], float(ramp.mean())]}, seen

    # Stop while the GUI is busy and an image waits for it: the waiting sink call is let go
    # (acked failed), so the main thread never waits for the sink thread (or a timeout).
    with ImageSender.to(tcp) as sender:
        assert window.ask(do="hold") == {"holding": True}
        sender.send(ramp, {"name": "late"})
        with pytest.raises(ZMQTimeoutError):  # the main thread is held: it cannot be shown
            sender.wait_all_acked(timeout=0.5)
        stopped = window.ask(do="stop")
        sender.wait_all_acked(timeout=30)
        assert sender.tracker is not None
        assert sender.tracker.statistics().failed == 1
    assert stopped["status"] == "stopped" and stopped["received"] == "5", stopped
    assert stopped["seconds"] < 5, stopped  # the sink's own timeout (30 s) was not waited for
    assert stopped["threads_left"] == [], stopped
    assert _free(port) and _free(config.control_port(port))  # its sockets are closed

    # A port in use: the error in the widget, which stays usable.
    busy = find_free_port_pair(config)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", busy))
        holder.listen()
        refused = window.ask(do="start", transport="TCP", port=busy)
    assert refused["status"] == "stopped", refused
    assert "already in use" in refused["error"], refused
    assert refused["threads_left"] == [], refused

    # A client's shutdown request (an admin: this user) stops it; the widget notices.
    started = window.ask(do="start", transport="TCP", port=0)
    port = _port(started["address"])
    endpoint = Endpoint.of(port=port, transport_mode=TransportMode.TCP, config=config)
    with ZMQClient(endpoint).connect() as client:
        client.request(Shutdown(request_id=0), timeout=10)
    seen = window.ask(do="look", until={"status": "stopped"})
    assert seen["status"] == "stopped" and "shut down" in seen["error"], seen
    assert seen["threads_left"] == [] and _free(port), seen

    # IPC; napari's x on the dock closes the server, and so does closing napari.
    for ending in ("undock", "quit"):
        started = window.ask(do="start", transport="IPC", port=0)
        assert started["status"] == "serving", started
        port = _port(started["address"])
        ipc = Endpoint.of(port=port, transport_mode=TransportMode.IPC, config=config)
        with ImageSender.to(ipc) as sender:
            sender.send(numpy.full((8, 8), 7, numpy.uint8), {"name": "ipc"})
            sender.wait_all_acked(timeout=60)
            assert sender.tracker is not None
            assert sender.tracker.statistics().processed == 1
        socket_file = get_ipc_socket_path(port, config)
        assert socket_file is not None and socket_file.exists()
        if ending == "undock":
            undocked = window.ask(do="undock")
            assert undocked == {"docks": [], "threads_left": []}, undocked
            assert not socket_file.exists()
            reopened = window.ask(do="reopen")
            assert reopened["status"] == "stopped", reopened
    closed = window.ask(do="quit")
    assert closed == {"closed": True, "threads_left": []}, closed
    assert window.process.wait(timeout=30) == 0
    assert not socket_file.exists()
    # The tracebacks are the viewer's logs of the two failed images; the port in use: one line.
    errors = (tmp_path / "stderr.txt").read_text()
    assert errors.count("Traceback") == errors.count("sink failed on image") == 2, errors[-3000:]
    assert "napari streaming server could not start: tcp://127.0.0.1" in errors, errors[-3000:]
