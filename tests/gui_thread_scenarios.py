"""Exercises ``on_qt_main_thread`` in a real Qt application, for tests/test_gui_thread.py.

Run as ``python -m tests.gui_thread_scenarios IPC_ROOT`` under an X display (Xvfb in CI). The
main thread runs the Qt event loop, as in a GUI; a worker thread plays the sink, I/O and
request threads. Prints one JSON line: per scenario, what was observed (or its error).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QProgressBar
from superqt.utils._ensure_thread import CallCallable

from zmqruntime import ConfigurationError, TransportMode, ZMQConfig, ZMQTimeoutError
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import Ack, AckOutcome, ProgressEvent
from zmqruntime.errors import ChannelClosed, RemoteError
from zmqruntime.execution import ExecutionClient, ExecutionServer
from zmqruntime.gui_thread import on_qt_main_thread
from zmqruntime.streaming import ImageSender, StreamingServer

WAIT = 20.0
results: dict[str, Any] = {}
records: list[logging.LogRecord] = []


class _Keep(logging.Handler):  # tests may subclass; zmqruntime may not
    def emit(self, record: logging.LogRecord) -> None:
        records.append(record)


def on_main() -> bool:
    return threading.current_thread() is threading.main_thread()


def logged(text: str) -> list[str]:
    return [
        f"{r.levelname} {r.getMessage()} {r.exc_info[1] if r.exc_info else ''}"
        for r in records
        if text in r.getMessage()
    ]


def streaming(config: ZMQConfig) -> dict[str, Any]:
    """A sink that insists on the main thread, behind a real viewer and sender."""
    shown: list[tuple[int, bool]] = []

    def sink(image: numpy.ndarray[Any, Any], metadata: dict[str, Any]) -> None:
        assert on_main(), f"sink called on {threading.current_thread().name}"
        if metadata.get("broken"):
            raise ValueError(f"well {metadata['well']} cannot be drawn")
        shown.append((int(image[0, 0]), on_main()))

    acks: list[Ack] = []
    failure = threading.Event()  # channel callbacks run just after the tracker counts the ack

    def keep(ack: Ack) -> None:
        acks.append(ack)
        if ack.outcome is AckOutcome.FAILED:
            failure.set()

    at = Endpoint.of(port=0, transport_mode=TransportMode.IPC, config=config)
    with StreamingServer.bind(at, on_qt_main_thread(sink, timeout=WAIT)) as viewer:
        to = Endpoint.of(port=viewer.port_number, transport_mode=TransportMode.IPC, config=config)
        with ImageSender.to(to) as sender:
            assert sender.channel is not None and sender.tracker is not None
            sender.channel.add_callback(keep)
            for n in range(3):
                sender.send(numpy.full((8, 8), n, numpy.uint8), {"well": f"B0{n}"})
            sender.send(numpy.zeros((8, 8), numpy.uint8), {"well": "C07", "broken": True})
            sender.wait_all_acked(timeout=WAIT)
            assert failure.wait(WAIT)
            stats = sender.tracker.statistics()
    return {
        "shown": shown,
        "processed": stats.processed,
        "failed": stats.failed,
        "errors": [a.error for a in acks if a.outcome is AckOutcome.FAILED],
    }


def execution(config: ZMQConfig) -> dict[str, Any]:
    """Progress callbacks (wait=False) and request handlers (wait=True) on the main thread."""
    seen = threading.Event()
    events: list[tuple[str, bool]] = []

    def update_progress_bar(event: Any) -> None:
        events.append((type(event).__name__, on_main()))
        seen.set()
        if type(event).__name__ == "Completion":
            raise RuntimeError("the progress bar is gone")

    def run(task: Any, ctx: Any) -> str:
        for step in range(400):  # until the subscription is live (PUB/SUB slow joiner)
            ctx.report_progress(step / 400, "imaging", well="B03")
            if seen.wait(0.05):
                break
        return "done"

    def layers(payload: Any, _peer: Any) -> Any:
        if payload == "boom":
            raise KeyError("no such layer")
        return {"layers": ["dapi"], "main": on_main()}

    handlers = {"layers": on_qt_main_thread(layers, timeout=WAIT)}
    at = Endpoint.of(port=0, transport_mode=TransportMode.IPC, config=config)
    with ExecutionServer.bind(at, run, requests=handlers) as server:
        to = Endpoint.of(port=server.port_number, transport_mode=TransportMode.IPC, config=config)
        with ExecutionClient.to(to) as client:
            client.on_progress(on_qt_main_thread(update_progress_bar, wait=False))
            result = client.submit({}).result(WAIT)
            reply = client.request("layers", None, timeout=WAIT)
            try:
                client.request("layers", "boom", timeout=WAIT)
                failed = "no error"
            except RemoteError as exc:
                failed = str(exc)
    flush()  # the completion's callback has run once this returns
    return {
        "result": result,
        "events": events,
        "reply": reply,
        "failed": failed,
        "logged": logged("the progress bar is gone") + logged("update_progress_bar failed"),
    }


def progress_bar(config: ZMQConfig) -> dict[str, Any]:
    """The issue's form, ``client.on_progress(on_qt_main_thread(update_progress_bar))`` with the
    default adapter (the I/O thread waits for the main thread), driving a real QProgressBar."""
    bar = on_qt_main_thread(QProgressBar)()  # a widget is made on the main thread
    live, finished = threading.Event(), threading.Event()
    threads: list[str] = []

    def update_progress_bar(event: Any) -> None:
        threads.append(threading.current_thread().name)
        assert on_main(), f"progress callback on {threading.current_thread().name}"
        if isinstance(event, ProgressEvent):
            bar.setValue(round((event.fraction or 0.0) * 100))
            live.set()
        else:
            finished.set()  # the Completion: published after every progress event

    def run(_task: Any, ctx: Any) -> str:
        for _ in range(400):  # until the subscription is live (PUB/SUB slow joiner)
            ctx.report_progress(0.0, "waiting for the progress bar")
            if live.wait(0.05):
                break
        for step in range(1, 11):
            ctx.report_progress(step / 10, "imaging", well=f"B{step:02d}")
        return "done"

    at = Endpoint.of(port=0, transport_mode=TransportMode.IPC, config=config)
    with ExecutionServer.bind(at, run) as server:
        to = Endpoint.of(port=server.port_number, transport_mode=TransportMode.IPC, config=config)
        with ExecutionClient.to(to) as client:
            client.on_progress(on_qt_main_thread(update_progress_bar))
            result = client.submit({}).result(WAIT)
            assert finished.wait(WAIT), "the Completion never reached the progress bar"
    value = on_qt_main_thread(bar.value)()
    on_qt_main_thread(bar.deleteLater)()
    return {
        "result": result,
        "value": value,
        "calls": len(threads),
        "threads": sorted(set(threads)),
    }


def timeouts() -> dict[str, Any]:
    """A busy main thread: a call not started is withdrawn, one started finishes late."""
    busy, started, release = threading.Event(), threading.Event(), threading.Event()
    ran: list[str] = []

    def block() -> None:
        busy.set()
        release.wait(WAIT)

    def never(x: int) -> int:
        ran.append("withdrawn call")
        return x

    def slow() -> str:
        started.set()
        release.wait(WAIT)
        ran.append("slow")
        return "late"

    out: dict[str, Any] = {}
    on_qt_main_thread(block, wait=False)()
    assert busy.wait(WAIT)
    out["not_started"] = outcome(lambda: on_qt_main_thread(never, timeout=0.2)(1))
    bounded = on_qt_main_thread(lambda n: ran.append(f"queued {n}"), wait=False, max_queued=2)
    out["bounded"] = [bounded(n) for n in range(5)]  # all return at once; 3 are dropped
    release.set()
    flush()
    release.clear()
    late = on_qt_main_thread(slow, timeout=0.2)
    out["started"] = outcome(late)
    assert started.is_set()
    release.set()
    flush()
    out["ran"] = ran
    out["logged"] = logged("after its caller timed out") + logged("dropp")
    return out


def closing() -> dict[str, Any]:
    """close() releases a caller waiting for a busy main thread at once, and refuses more."""
    busy, release = threading.Event(), threading.Event()
    on_qt_main_thread(lambda: (busy.set(), release.wait(WAIT)), wait=False)()
    assert busy.wait(WAIT)
    adapter = on_qt_main_thread(lambda: "ran", timeout=WAIT)
    waiting: dict[str, str] = {}
    caller = threading.Thread(target=lambda: waiting.update(error=outcome(adapter)))
    caller.start()
    deadline = time.monotonic() + WAIT
    while not adapter._queued and time.monotonic() < deadline:  # until the caller has posted
        release.wait(0.01)
    adapter.close()
    caller.join(2.0)  # well before WAIT: close() woke it
    released_early = not caller.is_alive()
    release.set()
    flush()
    return {"released": released_early, "waiting": waiting, "after": outcome(adapter)}


def concurrent() -> dict[str, Any]:
    """Eight threads calling one adapter at once each get their own answers, in order."""
    adapter = on_qt_main_thread(lambda n: (n, on_main()), timeout=WAIT)
    answers: dict[int, list[Any]] = {}

    def caller(first: int) -> None:
        answers[first] = [adapter(n) for n in range(first, first + 50)]

    threads = [threading.Thread(target=caller, args=(k * 1000,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    right = all(
        answers.get(k * 1000) == [(n, True) for n in range(k * 1000, k * 1000 + 50)]
        for k in range(8)
    )
    return {"right": right, "callers": len(answers)}


def outcome(call: Callable[[], Any]) -> str:
    try:
        return f"returned {call()!r}"
    except (ZMQTimeoutError, ChannelClosed, ConfigurationError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


def flush() -> None:
    """Wait until the main thread has run everything posted before (a call of its own)."""
    assert on_qt_main_thread(lambda: None, timeout=WAIT)() is None


def worker(app: QApplication, config: ZMQConfig) -> None:
    for name, scenario in (
        ("streaming", lambda: streaming(config)),
        ("execution", lambda: execution(config)),
        ("progress_bar", lambda: progress_bar(config)),
        ("timeouts", timeouts),
        ("closing", closing),
        ("concurrent", concurrent),
    ):
        try:
            results[name] = scenario()
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    results["threads"] = sorted(t.name for t in threading.enumerate() if t.name != "worker")
    results["qobjects_left"] = len(CallCallable.instances)
    on_qt_main_thread(app.quit, wait=False)()


def main() -> int:
    """No application yet, then the event loop with the scenarios in a worker thread."""
    logging.getLogger("zmqruntime.gui_thread").addHandler(_Keep())
    config = ZMQConfig(ipc_root=sys.argv[1], request_timeout=5.0, linger=0.5)
    results["no_app"] = outcome(on_qt_main_thread(print))
    app = QApplication([])
    direct = on_qt_main_thread(lambda x: (x, on_main(), threading.get_ident()), timeout=0.01)
    results["direct"] = direct(7)[:2]  # on the main thread: runs at once, no posting
    results["direct_error"] = outcome(on_qt_main_thread(_bad))
    thread = threading.Thread(target=worker, args=(app, config), name="worker", daemon=True)
    QTimer.singleShot(0, thread.start)
    QTimer.singleShot(int(WAIT * 3000), app.quit)  # a deadline, should the worker hang
    app.exec()
    thread.join(WAIT)
    results["worker_done"] = not thread.is_alive()
    sys.stdout.write(json.dumps(results) + "\n")
    return 0


def _bad() -> None:
    raise ValueError("raised on the main thread")


if __name__ == "__main__":
    sys.exit(main())
