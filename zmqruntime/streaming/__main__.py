"""``python -m zmqruntime.streaming``: a ready-made viewer process.

Receives images on ``--port`` and hands them to the sink named by ``--sink`` (``npy:DIR``
writes ``.npy`` files with JSON sidecars; ``napari`` opens a napari window), acknowledging
each one. It stops on a shutdown request, SIGINT/SIGTERM, or when the process that launched
it through :class:`~zmqruntime.streaming.VisualizerProcessManager` dies.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.lifecycle import stop_on_signals
from zmqruntime.core.lifeline import report_ready, watch_lifeline
from zmqruntime.core.security import curve_from_folder
from zmqruntime.streaming.server import StreamingServer, StreamMode
from zmqruntime.streaming.sinks import NapariSink, sink_from_spec

_WINDOW_CHECK_MS = 200  # how often the Qt loop looks whether the viewer was told to stop
_WAKE_SECONDS = 0.5  # how often the main thread looks up from waiting, to run signal handlers


def main(argv: list[str] | None = None) -> int:
    """Run the viewer until it is told to stop; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m zmqruntime.streaming", description=__doc__)
    parser.add_argument("--port", type=int, default=None, help="data port (default 7777)")
    parser.add_argument("--host", default=None, help="interface a TCP viewer binds")
    parser.add_argument("--transport", choices=["tcp", "ipc"], default=None)
    parser.add_argument("--ipc-root", default=None, help="folder for IPC sockets")
    parser.add_argument("--keys", metavar="DIR", help="CURVE keys: server.key_secret, *.key")
    parser.add_argument("--insecure", action="store_true", help="TCP without credentials")
    parser.add_argument("--sink", default="npy:zmqruntime-images", help="npy:DIR or napari")
    parser.add_argument("--mode", choices=[m.value for m in StreamMode], default="all")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s: %(message)s")
    try:
        sink = sink_from_spec(args.sink)
    except ValueError as exc:
        logging.getLogger(__name__).error("%s", exc)
        return 2
    transport = None if args.transport is None else TransportMode(args.transport)
    config = ZMQConfig(ipc_root=args.ipc_root)
    curve = None if args.keys is None else curve_from_folder(args.keys, server=True)
    endpoint = Endpoint.of(
        args.port,
        host=args.host,
        transport_mode=transport,
        config=config,
        curve=curve,
        insecure=args.insecure,
    )
    serve_viewer(StreamingServer.bind(endpoint, sink, mode=StreamMode(args.mode)))
    return 0


def serve_viewer(server: StreamingServer, ready: Callable[[], None] | None = None) -> None:
    """Serve until a shutdown request, SIGINT/SIGTERM or the launcher's end (a napari sink: in
    the Qt loop), calling ``ready()`` once bound (and telling a launcher on the lifeline); then
    close."""
    server.start()
    try:
        watch_lifeline(server.request_stop)
        report_ready()
        if ready is not None:
            ready()
        if isinstance(server.sink, NapariSink):
            _serve_with_napari(server, server.sink)
            return
        with stop_on_signals(lambda _signum: server.request_stop()):
            while not server.server.wait_stopped(_WAKE_SECONDS):
                pass  # signal handlers run in this thread between waits
    finally:
        server.close()


def _serve_with_napari(server: StreamingServer, sink: NapariSink) -> None:
    """Qt owns the main thread: serving goes on in the background; the window quits when
    serving ends."""
    import napari  # noqa: PLC0415 - optional extra
    from qtpy.QtCore import QTimer  # noqa: PLC0415 - optional extra

    timer = QTimer()

    def close_when_stopped() -> None:
        if not server.server.is_running:
            timer.stop()
            for viewer in list(napari.Viewer._instances):
                viewer.close()

    timer.timeout.connect(close_when_stopped)
    timer.start(_WINDOW_CHECK_MS)
    try:
        napari.run()
    finally:
        sink.close()  # first: a call waiting for the closed window would hold close()


if __name__ == "__main__":
    sys.exit(main())
