"""``on_qt_main_thread``: sinks, request handlers and progress callbacks run on the Qt main
thread of a real Qt application under Xvfb, served by real viewers, servers and clients.

The Qt scenarios run once per module in a child process (tests/gui_thread_scenarios.py), whose
main thread runs the event loop as a GUI's does; each test checks one part of what it saw.
Skipped where superqt or Xvfb is missing (CI installs the ``napari`` extra and Xvfb).
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

import pytest

pytest.importorskip("superqt")

from zmqruntime import ConfigurationError
from zmqruntime.gui_thread import on_qt_main_thread

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """An X display: the one set, or a private Xvfb for this module."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("no X display and no Xvfb (CI installs the xvfb package)")
    read_end, write_end = os.pipe()
    command = [xvfb, "-displayfd", str(write_end), "-screen", "0", "640x480x24", "-nolisten", "tcp"]
    process = subprocess.Popen(
        command, pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
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


@pytest.fixture(scope="module")
def seen(display: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the scenarios observed in a real Qt application (one child process)."""
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    env.pop("WAYLAND_DISPLAY", None)
    folder = tmp_path_factory.mktemp("gui")
    finished = subprocess.run(
        [sys.executable, "-m", "tests.gui_thread_scenarios", str(folder)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    result: dict[str, Any] = json.loads(finished.stdout.strip().splitlines()[-1])
    return result


def scenario(seen: dict[str, Any], name: str) -> dict[str, Any]:
    part: dict[str, Any] = seen[name]
    assert "error" not in part, part["error"]
    return part


def test_a_sink_runs_on_the_main_thread_and_its_images_are_acked_processed(seen) -> None:
    streaming = scenario(seen, "streaming")
    assert streaming["shown"] == [[0, True], [1, True], [2, True]]  # in order, main thread
    assert streaming["processed"] == 3


def test_an_exception_in_the_wrapped_sink_is_a_failed_ack_with_its_message(seen) -> None:
    streaming = scenario(seen, "streaming")
    assert streaming["failed"] == 1
    assert streaming["errors"] == ["ValueError: well C07 cannot be drawn"]


def test_progress_callbacks_run_on_the_main_thread_and_their_errors_are_logged(seen) -> None:
    execution = scenario(seen, "execution")
    assert execution["result"] == "done"
    kinds = [kind for kind, _ in execution["events"]]
    assert "ProgressEvent" in kinds and kinds[-1] == "Completion"
    assert all(main for _, main in execution["events"])
    [line] = execution["logged"]  # the completion's callback raised: logged once, with it
    assert line.startswith("ERROR ") and line.endswith("the progress bar is gone")


def test_the_default_adapter_drives_a_progress_bar_on_the_main_thread(seen) -> None:
    """``client.on_progress(on_qt_main_thread(update_progress_bar))``, as the issue writes it:
    every call ran on the main thread (the callback asserts it) and the bar reached 100."""
    bar = scenario(seen, "progress_bar")
    assert bar["result"] == "done"
    assert bar["threads"] == ["MainThread"] and bar["calls"] >= 12  # 10 steps, a Completion
    assert bar["value"] == 100


def test_a_request_handler_answers_from_the_main_thread(seen) -> None:
    execution = scenario(seen, "execution")
    assert execution["reply"] == {"layers": ["dapi"], "main": True}
    assert execution["failed"].endswith("KeyError: 'no such layer'")


def test_on_the_main_thread_the_call_runs_directly(seen) -> None:
    assert seen["direct"] == [7, True]  # a 0.01 s timeout: a posted call could not make it
    assert seen["direct_error"] == "ValueError: raised on the main thread"


def test_without_a_qt_application_a_call_says_what_to_do(seen) -> None:
    assert seen["no_app"].startswith("ConfigurationError: no Qt application is running")
    assert "create a QApplication" in seen["no_app"]


def test_a_call_the_busy_main_thread_never_started_times_out_and_never_runs(seen) -> None:
    timeouts = scenario(seen, "timeouts")
    assert timeouts["not_started"].startswith("ZMQTimeoutError: ")
    assert "did not start within 0.2s" in timeouts["not_started"]
    assert "withdrawn, it will not run" in timeouts["not_started"]
    assert "withdrawn call" not in timeouts["ran"]  # the main thread got free, and skipped it


def test_a_started_call_that_times_out_finishes_on_the_main_thread_logged(seen) -> None:
    timeouts = scenario(seen, "timeouts")
    assert "did not finish within 0.2s; it goes on there" in timeouts["started"]
    assert "slow" in timeouts["ran"]
    assert any(
        line.startswith("WARNING ") and "slow finished" in line for line in timeouts["logged"]
    )


def test_calls_that_do_not_wait_are_bounded_and_drops_are_logged(seen) -> None:
    timeouts = scenario(seen, "timeouts")
    assert timeouts["bounded"] == [None] * 5  # none blocked the caller
    assert [r for r in timeouts["ran"] if r.startswith("queued")] == ["queued 0", "queued 1"]
    dropped = [line for line in timeouts["logged"] if "dropp" in line]
    assert len(dropped) == 2 and "3 calls were dropped" in dropped[1], dropped


def test_close_releases_a_waiting_caller_at_once_and_refuses_further_calls(seen) -> None:
    closing = scenario(seen, "closing")
    assert closing["released"]
    assert closing["waiting"]["error"].startswith("ChannelClosed: ")
    assert "closed before the main thread ran it" in closing["waiting"]["error"]
    assert closing["after"].startswith("ChannelClosed: ") and "is closed" in closing["after"]


def test_threads_calling_at_once_each_get_their_own_answers(seen) -> None:
    assert scenario(seen, "concurrent") == {"right": True, "callers": 8}


def test_nothing_is_left_behind(seen) -> None:
    assert seen["worker_done"]
    assert seen["threads"] == ["MainThread"]
    assert seen["qobjects_left"] == 0  # every posted call was delivered, withdrawn ones too


def test_bad_settings_and_a_missing_qt_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ({"timeout": 0}, {"timeout": float("nan")}, {"max_queued": 0}):
        with pytest.raises(ConfigurationError):
            on_qt_main_thread(print, **bad)
    monkeypatch.setitem(sys.modules, "superqt.utils", None)
    with pytest.raises(ImportError, match=r"pip install 'zmqruntime\[napari\]'"):
        on_qt_main_thread(print)


def test_importing_zmqruntime_imports_no_qt() -> None:
    code = (
        "import sys, zmqruntime, zmqruntime.streaming\n"
        "assert zmqruntime.on_qt_main_thread is zmqruntime.streaming.on_qt_main_thread\n"
        "qt = [m for m in sys.modules if m.split('.')[0] in ('qtpy', 'superqt', 'PyQt6')]\n"
        "assert not qt, qt\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=ROOT)
