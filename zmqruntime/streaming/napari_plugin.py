"""The napari plugin (extra ``zmqruntime[napari]``): a dock widget, **Plugins → Streaming server
(zmqruntime)**, that starts and stops a :class:`StreamingServer` with a :class:`NapariSink`
inside the running napari, and shows what it received, the rate and the last error.

napari finds it through the ``napari.manifest`` entry point (``zmqruntime.streaming:napari.yaml``)
and calls :func:`streaming_server_widget` for the dock's ``QWidget``. Qt and napari are imported
when the widget is built, never by ``import zmqruntime.streaming``.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Final, final

import attrs

from zmqruntime.config import TransportMode, ZMQConfig, check_seconds, checked
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.transport import get_default_transport_mode
from zmqruntime.errors import ConfigurationError
from zmqruntime.gui_thread import QtMainThreadCall, on_qt_main_thread
from zmqruntime.streaming.server import StreamingServer, StreamingStatistics
from zmqruntime.streaming.sinks import NapariSink

if TYPE_CHECKING:
    import napari.viewer

__all__ = ["StreamingServerWidget", "streaming_server_widget"]

logger = logging.getLogger(__name__)

_COUNTERS: Final = ("received", "processed", "failed", "skipped", "backlog")
_NOTHING: Final = "—"
_TITLES: Final = {"processed": "Shown", "backlog": "Waiting", "error": "Last error"}


def _in_napari(func: Callable[..., None], *args: Any) -> None:
    func(*args)


@final
@attrs.define(eq=False)
class _OnMainThread:
    """A sink (``NapariSink``) called on the Qt main thread through one closable adapter, its
    items too: closing the adapter releases a sink thread waiting for the main thread at once,
    so a server can be closed *from* the main thread without waiting for a timeout."""

    sink: Any
    call: QtMainThreadCall

    @property
    def item_kinds(self) -> Collection[str]:
        """The item kinds the sink takes (none for an image-only sink)."""
        kinds: Collection[str] = getattr(self.sink, "item_kinds", ())
        return kinds

    def __call__(self, image: Any, metadata: Mapping[str, Any], /) -> None:
        self.call(_in_napari, self.sink, image, metadata)

    def take_item(self, item: Any, metadata: Mapping[str, Any], /) -> None:
        self.call(_in_napari, self.sink.take_item, item, metadata)

    def take_batch(self, items: Any, metadatas: Any, batch_metadata: Any, /) -> None:
        self.call(_in_napari, self.sink.take_batch, items, metadatas, batch_metadata)

    def commands(self) -> Mapping[str, Any]:
        """The sink's commands (they reach napari's thread through the sink itself)."""
        commands: Mapping[str, Any] = self.sink.commands()
        return commands

    def close(self) -> None:
        self.call.close()
        self.sink.close()


def _describe(record: logging.LogRecord) -> str:
    text = record.getMessage()
    error = record.exc_info[1] if record.exc_info else None
    return f"{text}: {type(error).__name__}: {error}" if error is not None else text


@final
@attrs.define(eq=False)
class StreamingServerWidget:
    """A napari dock widget that serves a :class:`StreamingServer` showing into ``viewer``.

    The user picks a transport (TCP on ``config.bind_host``, or IPC) and a port (0: any free
    one; the address bound is shown) and presses *Start*; senders of the same user connect as
    to any viewer (TCP credentials from the runtime folder, IPC by the 0700 socket folder).
    A timer on the main thread shows, every ``poll_interval`` seconds, the counts of
    :meth:`StreamingServer.statistics`, the receiving rate over the last ``rate_window``
    seconds, and the last error: a start that failed (a port in use, a bad port), or the last
    warning or error the viewer's threads logged (a sink failure, a refused item; heard by a
    filter on the logger of :mod:`zmqruntime.streaming.server`, so it shows what that logger
    lets through: WARNING and up unless the application silenced it).

    Sink calls run on the Qt main thread, so the main thread never waits for the sink thread:
    *Stop* (and :meth:`close`) first releases a sink call waiting for the main thread (that
    item is acked failed, those still queued skipped), then closes the server, joining its
    threads, in a few milliseconds (bounded by ``config.close_timeout`` per thread if one is
    stuck). Starting binds on the main thread: milliseconds, nothing remote is waited for.
    Closing the widget (napari's *x* on the dock), the window or the application closes the
    server too; a client's shutdown request stops it and the widget says so.

    :attr:`native` builds the Qt widget on first access (main thread); the widget keeps this
    object alive. ``viewer.window.add_dock_widget(StreamingServerWidget(viewer).native)`` docks
    one by hand, with another ``config`` (e.g. ``bind_host``) if wanted.
    """

    viewer: napari.viewer.Viewer
    config: ZMQConfig = attrs.field(factory=ZMQConfig)
    poll_interval: float = attrs.field(default=0.25, validator=checked(check_seconds))
    rate_window: float = attrs.field(default=2.0, validator=checked(check_seconds))
    _native: Any = attrs.field(default=None, init=False, repr=False)
    _parts: dict[str, Any] = attrs.field(factory=dict, init=False, repr=False)
    _timer: Any = attrs.field(default=None, init=False, repr=False)
    _app: Any = attrs.field(default=None, init=False, repr=False)  # its aboutToQuit closes us
    _server: StreamingServer | None = attrs.field(default=None, init=False)
    _sink: _OnMainThread | None = attrs.field(default=None, init=False, repr=False)
    _listening: bool = attrs.field(default=False, init=False, repr=False)
    _threads: frozenset[str] = attrs.field(default=frozenset(), init=False, repr=False)
    _samples: collections.deque[tuple[float, int]] = attrs.field(
        factory=collections.deque, init=False, repr=False
    )
    _final: StreamingStatistics | None = attrs.field(default=None, init=False, repr=False)
    _error: str = attrs.field(default="", init=False)
    _docked: bool = attrs.field(default=False, init=False, repr=False)
    _closed: bool = attrs.field(default=False, init=False)

    @property
    def native(self) -> Any:
        """The Qt widget (a plain ``QWidget``), built on first access on the main thread."""
        if self._native is None:
            self._native = self._build()
        return self._native

    @property
    def server(self) -> StreamingServer | None:
        """The running server, or None."""
        return self._server

    @property
    def last_error(self) -> str:
        """The error shown (empty when there is none)."""
        return self._error

    def start(self, port: int | None = None, transport: TransportMode | None = None) -> bool:
        """Start serving on ``port`` with ``transport`` (default: the widget's choice); True
        if it serves. A failure is shown (and logged at WARNING), not raised. Main thread."""
        if self._server is not None or self._closed:
            return self._server is not None
        parts = self._parts
        if port is None:
            port = int(parts["port"].value()) if parts else self.config.default_port
        if transport is None:
            transport = TransportMode(parts["transport"].currentData()) if parts else None
        sink = _OnMainThread(NapariSink(self.viewer), on_qt_main_thread(_in_napari))
        server = None
        try:
            endpoint = Endpoint.of(port=port, transport_mode=transport, config=self.config)
            server = StreamingServer.bind(endpoint, sink)
            server.start()
        except Exception as exc:
            sink.close()
            if server is not None:
                server.close()
            self._error = f"could not start: {exc}"
            logger.warning("the napari streaming server %s", self._error)
            self._refresh()
            return False
        self._server, self._sink, self._error = server, sink, ""
        self._samples.clear()
        self._listen(server.port_number)
        logger.info("napari streaming server on %s", server.server.sockets.data_url)
        self._refresh()
        return True

    def stop(self) -> None:
        """Close the server (idempotent; main thread) and show its final counts."""
        self._shutdown()
        if self._parts:
            self._refresh()

    def close(self) -> None:
        """Close the server and stop polling; the widget stays as it is (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._shutdown()
        if self._timer is not None:
            self._timer.stop()
        if self._app is not None:
            self._app.aboutToQuit.disconnect(self.close)

    # --- internals (main thread) ------------------------------------------------------------

    def _shutdown(self) -> None:
        server, sink = self._server, self._sink
        self._server = self._sink = None
        if self._listening:
            logging.getLogger(StreamingServer.__module__).removeFilter(self._heard)
            self._listening = False
        if sink is not None:
            sink.close()  # a sink call waiting for this thread gives up now
        if server is not None:
            self._final = server.statistics()
            server.close()

    def _listen(self, port: int) -> None:
        """Hear the warnings and errors the server's threads log (``_heard``): a filter on the
        viewer module's logger, which changes nothing about where its records go."""
        self._threads = frozenset({f"zmqruntime-sink-{port}", f"zmqruntime-viewer-{port}"})
        logging.getLogger(StreamingServer.__module__).addFilter(self._heard)
        self._listening = True

    def _heard(self, record: logging.LogRecord) -> bool:
        """The log filter (any thread): keep the text of this server's warnings; pass all."""
        if record.levelno >= logging.WARNING and record.threadName in self._threads:
            self._error = _describe(record)
        return True

    def _build(self) -> Any:
        from qtpy.QtCore import QCoreApplication, QTimer  # noqa: PLC0415 - optional extra
        from qtpy.QtWidgets import (  # noqa: PLC0415 - optional extra
            QComboBox,
            QFormLayout,
            QHBoxLayout,
            QLabel,
            QPushButton,
            QSpinBox,
            QWidget,
        )

        root = QWidget()
        root.setObjectName("zmqruntime-streaming-server")
        form = QFormLayout(root)
        parts = self._parts
        parts["transport"] = transport = QComboBox()
        modes = [TransportMode.TCP]
        if get_default_transport_mode() is TransportMode.IPC:
            modes.append(TransportMode.IPC)
        for mode in modes:
            transport.addItem(mode.name, mode.value)
        transport.setCurrentIndex(transport.findData(get_default_transport_mode().value))
        parts["port"] = port = QSpinBox()
        port.setRange(0, 65535 - self.config.control_port_offset)
        port.setSpecialValueText("any free")
        port.setValue(self.config.default_port)
        port.setToolTip(
            f"the data port; the control port is {self.config.control_port_offset} above"
        )
        buttons = QHBoxLayout()
        for name, action in (("start", self.start), ("stop", self.stop)):
            parts[name] = button = QPushButton(name.capitalize())
            button.clicked.connect(lambda _checked=False, act=action: act())
            buttons.addWidget(button)
        form.addRow("Transport", transport)
        form.addRow("Port", port)
        form.addRow(buttons)
        for name in ("status", "address", *_COUNTERS, "rate", "error"):
            parts[name] = label = QLabel(_NOTHING)
            label.setWordWrap(name in ("address", "error"))
            form.addRow(_TITLES.get(name, name.capitalize()), label)
        for name, widget in parts.items():
            widget.setObjectName(name)
        # The widget keeps this object alive: its connections to lambdas hold it, and go with it.
        root.destroyed.connect(lambda _object=None, owner=self: owner.close())
        self._app = QCoreApplication.instance()
        if self._app is not None:
            self._app.aboutToQuit.connect(self.close)
        self._timer = timer = QTimer()
        timer.setInterval(int(self.poll_interval * 1000))
        timer.timeout.connect(self._tick)
        timer.start()
        self._native = root
        self._refresh()
        return root

    def _tick(self) -> None:
        """Timer: follow the dock, notice a server stopped by a client, show the counts."""
        if self._closed or self._native is None:
            return
        if self._native.parent() is not None:
            self._docked = True
        elif self._docked:  # napari's x on the dock: the widget left its dock for good
            self.close()
            self._native.deleteLater()
            return
        server = self._server
        if server is not None and not server.server.is_running:
            self._shutdown()
            self._error = "stopped: a client asked the viewer to shut down"
        self._refresh()

    def _refresh(self) -> None:
        parts = self._parts
        if not parts or self._closed:
            return
        server = self._server
        stats = server.statistics() if server is not None else self._final
        running = server is not None
        parts["start"].setEnabled(not running)
        parts["stop"].setEnabled(running)
        parts["transport"].setEnabled(not running)
        parts["port"].setEnabled(not running)
        parts["status"].setText("serving" if running else "stopped")
        address = _NOTHING
        if server is not None:
            pair = server.server.sockets
            address = f"{pair.data_url} (control {pair.control_url})"
        parts["address"].setText(address)
        for name in _COUNTERS:
            parts[name].setText(str(getattr(stats, name)) if stats is not None else _NOTHING)
        parts["rate"].setText(f"{self._rate(stats):.1f} items/s" if running else _NOTHING)
        parts["error"].setText(self._error or _NOTHING)

    def _rate(self, stats: StreamingStatistics | None) -> float:
        """Items received per second over the last ``rate_window`` seconds."""
        if stats is None:
            return 0.0
        now = time.monotonic()
        samples = self._samples
        samples.append((now, stats.received))
        while len(samples) > 2 and samples[1][0] <= now - self.rate_window:
            samples.popleft()
        (then, before), (_, received) = samples[0], samples[-1]
        return (received - before) / (now - then) if now > then else 0.0


def streaming_server_widget(viewer: napari.viewer.Viewer | None = None) -> Any:
    """The plugin's widget command: a :class:`StreamingServerWidget`'s ``QWidget`` for
    ``viewer`` (by default napari's current viewer, which is how napari calls it)."""
    if viewer is None:
        import napari  # noqa: PLC0415 - optional extra

        viewer = napari.current_viewer()
        if viewer is None:
            raise ConfigurationError("no napari viewer is open to stream into; open one first")
    return StreamingServerWidget(viewer).native
