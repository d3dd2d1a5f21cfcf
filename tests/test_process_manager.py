"""VisualizerProcessManager with real child processes: the ready-made viewer
(``python -m zmqruntime.streaming``) is launched, streamed to and stopped; stubborn, broken
and foreign processes are handled as the issue says; a launched viewer exits when its
launcher dies.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import numpy
import pytest

from zmqruntime import (
    AckChannel,
    AddressInUseError,
    TransportMode,
    ZMQConfig,
    ZMQTimeoutError,
)
from zmqruntime.core.credentials import runtime_directory
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.lifeline import LIFELINE_ENV, READY, open_lifeline
from zmqruntime.core.transport import find_free_ipc_port, find_free_port_pair, is_endpoint_in_use
from zmqruntime.errors import ProcessLaunchError
from zmqruntime.streaming import (
    CommandSpec,
    ImageSender,
    VisualizerProcessManager,
    python_module_spec,
)

WAIT = 10.0
SCRIPTS = Path(__file__).with_name("viewer_scripts.py")


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``predicate`` in short bounded waits until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        pause.wait(0.01)


def free_port(mode: TransportMode, config: ZMQConfig) -> int:
    if mode is TransportMode.TCP:
        return find_free_port_pair(config)
    return find_free_ipc_port(config)


def viewer_spec(port: int, mode: TransportMode, config: ZMQConfig, sink_dir: Path) -> CommandSpec:
    return python_module_spec(
        "zmqruntime.streaming",
        "--port",
        str(port),
        "--transport",
        mode.value,
        "--ipc-root",
        str(config.ipc_root),
        "--sink",
        f"npy:{sink_dir}",
    )


def script_spec(command: str, *args: str) -> CommandSpec:
    return CommandSpec((sys.executable, str(SCRIPTS), command, *args))


def process_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (gone, or a zombie nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def kill_if_alive(pid: int | None) -> None:
    if pid is not None and not process_gone(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def managed(manager: VisualizerProcessManager) -> Iterator[VisualizerProcessManager]:
    """Stop the manager at the end whatever happens, and kill its child if stop() failed."""
    pids: list[int] = []
    try:
        yield manager
    finally:
        if manager.pid is not None:
            pids.append(manager.pid)
        try:
            manager.stop(timeout=2.0)
        finally:
            for pid in pids:
                kill_if_alive(pid)


def socket_files(config: ZMQConfig) -> list[str]:
    folder = config.ipc_directory()
    return sorted(path.name for path in folder.glob("*")) if folder.exists() else []


# --- the graceful path ----------------------------------------------------------------------


def test_launch_stream_and_stop_the_ready_made_viewer(
    tmp_path: Path, transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    port = free_port(transport_mode, config)
    frames = tmp_path / "frames"
    manager = VisualizerProcessManager(
        viewer_spec(port, transport_mode, config, frames),
        Endpoint.of(port=port, transport_mode=transport_mode, config=config),
    )
    assert not manager.is_running() and manager.pid is None
    # Logs left by a launcher that was killed go at the next launch; a live one's stay.
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait(WAIT)
    logs = runtime_directory(config, create=True)
    stale, live = logs / f"child-{gone.pid}-x.log", logs / f"child-{os.getpid()}-y.log"
    stale.touch()
    live.touch()
    with managed(manager):
        assert manager.start(timeout=30) is manager
        assert manager.start(timeout=30) is manager  # idempotent
        assert not manager.attached
        pid = manager.pid
        assert pid is not None
        assert manager.is_running()
        pong = manager.ping(WAIT)
        assert (pong.role, pong.pid) == ("viewer", pid)
        assert manager.log_path is not None and Path(manager.log_path).parent == logs
        assert Path(manager.log_path).exists()
        assert not stale.exists() and live.exists()
        live.unlink()

        count = 12
        with ImageSender.to(
            Endpoint.of(port=port, transport_mode=transport_mode, config=config)
        ) as sender:
            for number in range(count):
                image = (numpy.arange(20).reshape(4, 5) * number).astype(">i4")
                sender.send(image[:, ::2], {"n": number})
            sender.wait_all_acked(WAIT)
            assert sender.tracker is not None
            assert sender.tracker.get_progress() == (count, count)
        for number in range(count):
            stored = numpy.load(frames / f"image-{number:06d}.npy")
            expected = (numpy.arange(20).reshape(4, 5) * number)[:, ::2]
            assert stored.dtype.str == ">i4" and (stored == expected).all()
        assert len(list(frames.glob("*.json"))) == count

        assert manager.stop(timeout=WAIT) == 0  # the shutdown request sufficed
        assert manager.stop() is None  # nothing left to stop
        assert manager.pid is None and manager.log_path is None
        assert not manager.is_running()
        assert process_gone(pid)
    # Nothing is left holding the address.
    assert not is_endpoint_in_use(port, transport_mode, config=config)
    if transport_mode is TransportMode.IPC:
        assert socket_files(config) == []


def test_context_manager_starts_and_stops_without_waiting_out_linger(
    tmp_path: Path, config: ZMQConfig, no_thread_leak: None
) -> None:
    """Health probes that go unanswered (before the viewer is up) must not each wait out
    ``config.linger`` when they are closed: start() takes viewer start-up time, not 10 s."""
    slow_linger = attrs.evolve(config, linger=10.0)
    port = free_port(TransportMode.TCP, config)
    spec = viewer_spec(port, TransportMode.TCP, config, tmp_path / "frames")
    manager = VisualizerProcessManager(
        spec, Endpoint.of(port=port, transport_mode=TransportMode.TCP, config=slow_linger)
    )
    started = time.monotonic()
    with managed(manager), manager:
        ready = time.monotonic() - started
        pid = manager.pid
        assert pid is not None and manager.ping(WAIT).role == "viewer"
    assert ready < 6.0, f"start() took {ready:.1f}s"
    assert manager.pid is None
    assert process_gone(pid)


def test_a_viewer_killed_from_outside_is_noticed_and_replaced(
    tmp_path: Path, transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    port = free_port(transport_mode, config)
    spec = viewer_spec(port, transport_mode, config, tmp_path / "frames")
    first = VisualizerProcessManager(
        spec, Endpoint.of(port=port, transport_mode=transport_mode, config=config)
    )
    with managed(first):
        first.start(timeout=30)
        pid = first.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not first.is_running(), "the manager to notice the dead viewer")
        assert first.stop(timeout=WAIT) == -signal.SIGKILL
    # A hard kill leaves stale IPC socket files behind; the next launch replaces them.
    second = VisualizerProcessManager(
        spec, Endpoint.of(port=port, transport_mode=transport_mode, config=config)
    )
    with managed(second):
        second.start(timeout=30)
        assert not second.attached and second.pid not in (None, pid)
        with ImageSender.to(
            Endpoint.of(port=port, transport_mode=transport_mode, config=config)
        ) as sender:
            sender.send(numpy.zeros((2, 2), numpy.uint8))
            sender.wait_all_acked(WAIT)
        assert second.stop(timeout=WAIT) == 0


# --- stubborn, broken and slow children -----------------------------------------------------


def test_a_child_that_ignores_shutdown_and_sigterm_is_killed(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    port = free_port(transport_mode, config)
    spec = script_spec("stubborn", str(port), transport_mode.value, str(config.ipc_root))
    manager = VisualizerProcessManager(
        spec, Endpoint.of(port=port, transport_mode=transport_mode, config=config)
    )
    with managed(manager):
        manager.start(timeout=30)
        pid = manager.pid
        assert pid is not None
        log_path = manager.log_path
        assert log_path is not None
        started = time.monotonic()
        code = manager.stop(timeout=1.0)
        elapsed = time.monotonic() - started
        assert not Path(log_path).exists()  # the child's log went with it
    assert code == -signal.SIGKILL
    # shutdown request, then 1 s for it to act, 1 s after SIGTERM, then SIGKILL.
    assert 2.0 <= elapsed < 8.0, elapsed
    assert process_gone(pid)


def test_a_command_that_exits_at_once_is_reported_with_its_stderr(
    config: ZMQConfig, no_thread_leak: None
) -> None:
    port = free_port(TransportMode.TCP, config)
    code = "import sys; sys.stderr.write('no display: cannot open viewer\\n'); sys.exit(3)"
    spec = CommandSpec((sys.executable, "-c", code))
    manager = VisualizerProcessManager(
        spec, Endpoint.of(port=port, transport_mode=TransportMode.TCP, config=config)
    )
    started = time.monotonic()
    with managed(manager), pytest.raises(ProcessLaunchError) as caught:
        manager.start(timeout=30)
    assert time.monotonic() - started < 15  # reported as an exit, not as the 30 s timeout
    assert caught.value.exit_code == 3
    assert "no display: cannot open viewer" in caught.value.stderr_tail
    assert "no display: cannot open viewer" in str(caught.value)
    assert "code 3" in str(caught.value)
    assert manager.pid is None and not manager.is_running()


def test_a_viewer_that_fails_on_its_arguments_is_reported(
    tmp_path: Path, config: ZMQConfig, no_thread_leak: None
) -> None:
    port = free_port(TransportMode.TCP, config)
    spec = python_module_spec("zmqruntime.streaming", "--port", str(port), "--sink", "tiff:x")
    manager = VisualizerProcessManager(
        spec, Endpoint.of(port=port, transport_mode=TransportMode.TCP, config=config)
    )
    with managed(manager), pytest.raises(ProcessLaunchError) as caught:
        manager.start(timeout=30)
    assert caught.value.exit_code == 2
    assert "unknown sink" in caught.value.stderr_tail


def test_a_command_that_cannot_be_run_is_a_launch_error(
    tmp_path: Path, config: ZMQConfig, no_thread_leak: None
) -> None:
    port = free_port(TransportMode.TCP, config)
    spec = CommandSpec((str(tmp_path / "no-such-program"),))
    manager = VisualizerProcessManager(
        spec, Endpoint.of(port=port, transport_mode=TransportMode.TCP, config=config)
    )
    with managed(manager), pytest.raises(ProcessLaunchError, match="no-such-program"):
        manager.start(timeout=5)
    assert manager.pid is None


def test_a_child_that_never_serves_times_out_and_is_stopped(
    config: ZMQConfig, no_thread_leak: None
) -> None:
    port = free_port(TransportMode.TCP, config)
    spec = CommandSpec((sys.executable, "-c", "import threading; threading.Event().wait()"))
    manager = VisualizerProcessManager(
        spec, Endpoint.of(port=port, transport_mode=TransportMode.TCP, config=config)
    )
    started = time.monotonic()
    with managed(manager), pytest.raises(ZMQTimeoutError, match="did not answer") as caught:
        manager.start(timeout=1.0)
    # 1 s of probes, up to 2 s for the shutdown request nobody answers, then SIGTERM at once
    # (no graceful wait of close_timeout for a child that never took the request).
    assert time.monotonic() - started < 7.0
    assert f"port {port}" in str(caught.value)
    assert manager.pid is None  # the child was stopped again (SIGTERM ends it)


# --- attaching and refusing -----------------------------------------------------------------


def test_a_second_manager_on_the_same_port_attaches(
    tmp_path: Path, transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    port = free_port(transport_mode, config)
    spec = viewer_spec(port, transport_mode, config, tmp_path / "frames")
    first = VisualizerProcessManager(
        spec, Endpoint.of(port=port, transport_mode=transport_mode, config=config)
    )
    second = VisualizerProcessManager(
        spec, Endpoint.of(port=port, transport_mode=transport_mode, config=config)
    )
    with managed(first), managed(second):
        first.start(timeout=30)
        viewer_pid = first.pid
        second.start(timeout=30)
        assert second.attached and not first.attached
        assert second.pid is None
        assert second.is_running()
        assert second.ping(WAIT).pid == viewer_pid
        assert second.stop(timeout=WAIT) is None  # never stops what it did not start
        assert not second.attached and not second.is_running()
        assert first.ping(WAIT).pid == viewer_pid  # the viewer still answers
        assert first.is_running()
        assert first.stop(timeout=WAIT) == 0
    assert viewer_pid is not None and process_gone(viewer_pid)


def test_a_server_of_another_role_on_the_port_is_refused(
    tmp_path: Path, transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    with AckChannel.bind(
        Endpoint.of(port=0, transport_mode=transport_mode, config=config)
    ) as channel:
        port = channel.port_number
        manager = VisualizerProcessManager(
            viewer_spec(port, transport_mode, config, tmp_path / "frames"),
            Endpoint.of(port=port, transport_mode=transport_mode, config=config),
        )
        try:
            with pytest.raises(AddressInUseError, match="'ack' server"):
                manager.start(timeout=30)
        finally:
            kill_if_alive(manager.pid)  # only if it wrongly launched; no stop(): a refused
            # start must leave nothing behind (no_thread_leak checks its probe client)
        assert manager.pid is None and not manager.attached
        assert channel.server.is_running  # untouched


def test_a_port_held_by_something_else_is_refused(
    tmp_path: Path, config: ZMQConfig, no_thread_leak: None
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        manager = VisualizerProcessManager(
            viewer_spec(port, TransportMode.TCP, config, tmp_path / "frames"),
            Endpoint.of(port=port, transport_mode=TransportMode.TCP, config=config),
        )
        try:
            with pytest.raises(AddressInUseError, match="does not answer"):
                manager.start(timeout=30)
        finally:
            kill_if_alive(manager.pid)
        assert manager.pid is None


# --- lifeline -------------------------------------------------------------------------------


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to end (pidfd where available)."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        try:
            fd = pidfd_open(pid)
        except ProcessLookupError:
            return True
        try:
            readable, _, _ = select.select([fd], [], [], timeout)
            return bool(readable) or process_gone(pid)
        finally:
            os.close(fd)
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not process_gone(pid):
        if time.monotonic() > deadline:
            return False
        pause.wait(0.02)
    return True


def test_the_viewer_exits_when_its_launcher_dies(
    tmp_path: Path, transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    port = free_port(transport_mode, config)
    launcher = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPTS),
            "launcher",
            str(port),
            transport_mode.value,
            str(config.ipc_root),
            str(tmp_path / "frames"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    viewer_pid: int | None = None
    try:
        assert launcher.stdout is not None
        line = launcher.stdout.readline()  # blocks until the launcher reports (or dies)
        if not line.startswith("pid "):
            launcher.kill()
            pytest.fail(f"launcher failed: {line!r} {launcher.communicate()[1]}")
        viewer_pid = int(line.split()[1])
        assert not process_gone(viewer_pid)
        with ImageSender.to(
            Endpoint.of(port=port, transport_mode=transport_mode, config=config)
        ) as sender:
            sender.send(numpy.ones((2, 2), numpy.uint8))
            sender.wait_all_acked(WAIT)

        launcher.send_signal(signal.SIGKILL)
        launcher.wait(WAIT)
        assert launcher.returncode == -signal.SIGKILL
        assert wait_for_exit(viewer_pid, WAIT), "the viewer outlived its launcher"
        # Its launcher could not remove the viewer's log: it is in the runtime folder.
        left = list(runtime_directory(config).glob(f"child-{launcher.pid}-*.log"))
        assert len(left) == 1, left
        left[0].unlink()
        # It stopped the orderly way: its sockets are gone too.
        if transport_mode is TransportMode.IPC:
            wait_until(lambda: socket_files(config) == [], "the viewer's IPC files removed")
        assert not is_endpoint_in_use(port, transport_mode, config=config)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.communicate()
        kill_if_alive(viewer_pid)


# --- readiness by event ---------------------------------------------------------------------

STARTUP_SCRIPTS = Path(__file__).with_name("startup_scripts.py")


def test_a_child_reports_ready_on_its_lifeline_which_ends_when_it_does() -> None:
    lifeline = open_lifeline()
    if lifeline is None:
        pytest.skip("lifelines are POSIX only")
    child_end, launcher_end = lifeline
    try:
        child = subprocess.Popen(
            [sys.executable, str(STARTUP_SCRIPTS), "ready"],
            env={**os.environ, LIFELINE_ENV: str(child_end)},
            pass_fds=(child_end,),
        )
        os.close(child_end)
        assert select.select([launcher_end], [], [], WAIT)[0], "no READY from the child"
        assert os.read(launcher_end, 64) == READY
        assert child.wait(WAIT) == 0
        assert select.select([launcher_end], [], [], WAIT)[0]
        assert os.read(launcher_end, 64) == b""  # end-of-file: the child is gone
    finally:
        os.close(launcher_end)


def test_a_child_that_reported_ready_is_waited_for_beyond_one_probe(
    config: ZMQConfig, no_thread_leak: None
) -> None:
    # A viewer busy loading its GUI may answer its first ping late. Once it said it serves,
    # the manager waits for that answer (until the start timeout), not a quarter second.
    if os.name != "posix":
        pytest.skip("lifelines are POSIX only")
    port = free_port(TransportMode.IPC, config)
    spec = CommandSpec(
        (sys.executable, str(STARTUP_SCRIPTS), "slow_pong", str(port), str(config.ipc_root), "0.8")
    )
    endpoint = Endpoint.of(port=port, transport_mode=TransportMode.IPC, config=config)
    with managed(VisualizerProcessManager(spec, endpoint)) as manager:
        manager.start(timeout=WAIT)
        assert manager.pid is not None and not manager.attached
        assert manager.stop(timeout=WAIT) == 0
