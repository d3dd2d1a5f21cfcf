"""The napari plugin in a real napari window, driven as a user drives it, for
tests/test_napari_plugin.py.

Run as ``python -m tests.napari_plugin_window MANIFEST`` under an X display. It opens napari, the
widget through napari's Plugins menu (the plugin is found by its entry point, or registered from
``MANIFEST`` where the installed metadata predates it), then obeys one JSON command per stdin
line and answers each with one JSON line on stdout:

* ``{"do": "start", "transport": "TCP", "port": 0}``: choose, press Start; the labels after it.
* ``{"do": "look", "until": {"received": "4"}}``: the labels once they show that (or after 20 s),
  the highest rate shown so far, the layers, the mean of each layer.
* ``{"do": "stop"}``: press Stop; the labels, the time it took, the threads left.
* ``{"do": "undock"}``: napari's *x* on the dock (``remove_dock_widget``); the threads left
  once none is (or after 20 s). ``{"do": "reopen"}``: the menu entry again; the labels.
* ``{"do": "hold"}``: answer ``{"holding": true}``, then block the main thread (a busy GUI)
  until the next command arrives, and obey that one before the event loop runs again.
* ``{"do": "quit"}``: close the window with the server running; once napari's loop has
  returned, the threads left. Then the process exits.

Threads left are those started since the widget opened (none may survive a stop or a close).
"""

from __future__ import annotations

import gc
import json
import os
import select
import sys
import threading
import time
from typing import Any

import napari
import npe2
import numpy
import zmq.utils.garbage
from qtpy.QtCore import QSocketNotifier, QTimer
from qtpy.QtWidgets import QComboBox, QLabel, QPushButton, QSpinBox

NAME = "Streaming server (zmqruntime)"
LABELS = ("status", "address", "received", "processed", "failed", "skipped", "rate", "error")
DEADLINE = 20.0


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> int:
    """Open napari and the widget, then obey the test's commands."""
    plugins = npe2.PluginManager.instance()
    plugins.discover()  # what napari does: the entry point of the installed package
    try:
        plugins.get_manifest("zmqruntime")
        found_by = "entry point"
    except KeyError:
        plugins.register(npe2.PluginManifest.from_file(sys.argv[1]))
        found_by = "manifest file"
    viewer = napari.Viewer(show=True, title="zmqruntime plugin test")
    menu = [action.text() for action in viewer.window.plugins_menu.actions()]
    opened: dict[str, Any] = {}

    def open_widget() -> None:
        for action in viewer.window.plugins_menu.actions():
            if action.text() == NAME:
                action.trigger()
        gc.collect()  # only the widget itself keeps the plugin's object alive
        opened["widget"] = viewer.window.dock_widgets[NAME]

    open_widget()
    baseline = set(threading.enumerate())
    seen = {"rate": 0.0}

    def find(kind: type[Any], name: str) -> Any:
        return opened["widget"].findChild(kind, name)

    def label(name: str) -> str:
        return str(find(QLabel, name).text())

    def labels() -> dict[str, str]:
        return {name: label(name) for name in LABELS}

    def threads_left() -> list[str]:
        return sorted(
            thread.name
            for thread in threading.enumerate()
            if thread not in baseline
            and not isinstance(thread, zmq.utils.garbage.GarbageCollectorThread)
        )

    def sample() -> None:  # the highest rate the widget has shown
        rate = label("rate").split()[0]
        if rate.replace(".", "").isdigit():
            seen["rate"] = max(seen["rate"], float(rate))

    sampler = QTimer()
    sampler.timeout.connect(sample)
    sampler.start(50)

    def click(name: str) -> float:
        began = time.monotonic()
        find(QPushButton, name).click()
        return time.monotonic() - began

    def look(until: dict[str, str], deadline: float) -> None:
        if any(label(k) != v for k, v in until.items()) and time.monotonic() < deadline:
            QTimer.singleShot(50, lambda: look(until, deadline))
            return
        layers = {
            layer.name: [list(layer.data.shape), float(numpy.mean(layer.data))]
            for layer in viewer.layers
        }
        _say(
            {**labels(), "rate_max": seen["rate"], "layers": layers, "threads_left": threads_left()}
        )

    def settle(deadline: float) -> None:
        if threads_left() and time.monotonic() < deadline:
            QTimer.singleShot(50, lambda: settle(deadline))
            return
        _say({"docks": list(viewer.window.dock_widgets), "threads_left": threads_left()})

    def obey(command: dict[str, Any]) -> None:
        action = command["do"]
        if action == "start":
            combo = find(QComboBox, "transport")
            combo.setCurrentIndex(combo.findText(command["transport"]))
            find(QSpinBox, "port").setValue(command["port"])
            seconds = click("start")
            _say({**labels(), "seconds": seconds, "threads_left": threads_left()})
        elif action == "look":
            look(command.get("until", {}), time.monotonic() + DEADLINE)
        elif action == "stop":
            seconds = click("stop")
            _say({**labels(), "seconds": seconds, "threads_left": threads_left()})
        elif action == "undock":
            sampler.stop()
            viewer.window.remove_dock_widget(opened["widget"])
            settle(time.monotonic() + DEADLINE)
        elif action == "reopen":
            open_widget()
            sampler.start(50)
            _say(labels())
        elif action == "hold":  # a busy GUI: the main thread takes the next command itself
            _say({"holding": True})
            line = next_line(DEADLINE)
            if line is not None:
                obey(json.loads(line))
        elif action == "quit":
            sampler.stop()
            viewer.close()

    pending = bytearray()
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)  # the notifier may fire for a line "hold" already took

    def next_line(timeout: float) -> bytes | None:
        """The next command line, read on this thread, blocking it (at most ``timeout``)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stdin], [], [], left)[0]:
                return None
            chunk = os.read(stdin, 65536)
            if not chunk:
                return None
            pending.extend(chunk)
        line, _, rest = bytes(pending).partition(b"\n")
        pending[:] = rest
        return line

    def read() -> None:
        try:
            chunk = os.read(stdin, 65536)
        except BlockingIOError:
            return
        if not chunk:  # the test is gone
            notifier.setEnabled(False)
            viewer.close()
            return
        pending.extend(chunk)
        while b"\n" in pending and (line := next_line(0)) is not None:
            obey(json.loads(line))

    notifier = QSocketNotifier(sys.stdin.fileno(), QSocketNotifier.Type.Read)
    notifier.activated.connect(read)
    _say({"found_by": found_by, "menu": menu, **labels()})
    napari.run()
    notifier.setEnabled(False)
    _say({"closed": True, "threads_left": threads_left()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
