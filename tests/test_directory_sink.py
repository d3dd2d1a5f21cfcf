"""DirectorySink under contention and failure, with real processes: several writers on one
folder never overwrite each other, a reader never sees pixels without their sidecar, and a
failed write (a full disk, simulated with RLIMIT_FSIZE in a child) raises the OS error, leaves
no file behind and is acknowledged as failed with that error.

Child processes run this module: ``python -m tests.test_directory_sink <command> <args…>``.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy
import pytest

from zmqruntime import AckChannel, GlobalQueueTrackerRegistry, TransportMode, ZMQConfig
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import Ack
from zmqruntime.streaming import DirectorySink, ImageSender, StreamingServer

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0
FILE_LIMIT = 1 << 20  # RLIMIT_FSIZE of the "full disk" children: larger files fail with EFBIG
SMALL = numpy.arange(64, dtype=numpy.uint16).reshape(8, 8)
TOO_LARGE = numpy.zeros(FILE_LIMIT, numpy.uint8)  # its header makes its .npy too large

Spawn = Callable[..., "subprocess.Popen[str]"]

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX resource limits")


def names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start ``python -m tests.test_directory_sink ARGS``; kills what is left at teardown."""
    started: list[subprocess.Popen[str]] = []
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }

    def start(*args: object) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.test_directory_sink", *map(str, args)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
            process.communicate(timeout=WAIT)


def read_line(process: subprocess.Popen[str]) -> str:
    """The next line the child prints, waiting at most WAIT seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], WAIT)
    assert ready, "the child said nothing"
    line = process.stdout.readline()
    assert line, f"the child ended (exit code {process.wait(WAIT)})"
    return line.strip()


def finish(process: subprocess.Popen[str]) -> str:
    output, _ = process.communicate(timeout=WAIT)
    assert process.returncode == 0, output
    return output


def value(writer: int, number: int) -> int:
    return writer * 100_000 + number


def start_writers(
    spawn: Spawn, folder: Path, count: int, writers: int
) -> list[subprocess.Popen[str]]:
    """Writer children that each write ``count`` images, started together."""
    children = [spawn("write", folder, writer, count) for writer in range(writers)]
    for child in children:
        assert read_line(child) == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    return children


def test_two_writer_processes_on_one_folder_never_overwrite(spawn: Spawn, tmp_path: Path) -> None:
    count = 150
    for child in start_writers(spawn, tmp_path, count, writers=2):
        assert finish(child).split() == ["done"]
    files = names(tmp_path)
    assert len(files) == 2 * 2 * count, "an item was overwritten or a file was left behind"
    seen = set()
    for name in files:
        stem, suffix = name.rsplit(".", 1)
        if suffix == "npy":
            meta = json.loads((tmp_path / f"{stem}.json").read_text())["metadata"]
            pixels = numpy.load(tmp_path / name)
            assert (pixels == value(meta["writer"], meta["i"])).all()
            seen.add((meta["writer"], meta["i"]))
    assert seen == {(writer, number) for writer in range(2) for number in range(count)}


def test_a_reader_never_sees_pixels_without_their_sidecar(spawn: Spawn, tmp_path: Path) -> None:
    (writer,) = start_writers(spawn, tmp_path, 300, writers=1)
    checked: set[str] = set()
    overlapped = False  # a scan found some items but not all: it ran while the writer wrote
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        done = writer.poll() is not None  # one more scan after the writer ended
        for name in os.listdir(tmp_path):
            if name.endswith(".npy") and not name.startswith(".") and name not in checked:
                stem = name.removesuffix(".npy")
                assert (tmp_path / f"{stem}.json").exists(), f"{name} without its sidecar"
                meta = json.loads((tmp_path / f"{stem}.json").read_text())["metadata"]
                assert (numpy.load(tmp_path / name) == value(0, meta["i"])).all()
                checked.add(name)
        overlapped = overlapped or 0 < len(checked) < 300
        if done:
            break
    assert finish(writer).split() == ["done"]
    assert len(checked) == 300 and overlapped


@pytest.mark.parametrize(
    "image",
    [
        numpy.arange(6, dtype=">f8").reshape(2, 3, order="F"),
        numpy.arange(24, dtype=numpy.int16).reshape(4, 6)[::2, 1::2],
        numpy.array([1 + 2j, 3j], numpy.complex64),
        numpy.zeros((0, 3), numpy.float16),
        numpy.array(7, numpy.uint32),
    ],
    ids=["fortran-big-endian", "strided", "complex", "empty", "scalar"],
)
def test_files_load_back_as_the_image(tmp_path: Path, image: numpy.ndarray[Any, Any]) -> None:
    DirectorySink(tmp_path)(image, {})
    loaded = numpy.load(tmp_path / "image-000000.npy")
    assert loaded.dtype == image.dtype and loaded.shape == image.shape
    assert (loaded == image).all()
    sidecar = json.loads((tmp_path / "image-000000.json").read_text())
    assert sidecar == {"dtype": image.dtype.str, "shape": list(image.shape), "metadata": {}}


def test_a_foreign_file_is_never_overwritten(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    sink(SMALL, {"n": 0})
    (tmp_path / "image-000001.npy").write_bytes(b"pixels of another program")
    (tmp_path / "image-000002.json").write_bytes(b"a sidecar of another program")
    sink(SMALL + 1, {"n": 1})
    assert (tmp_path / "image-000001.npy").read_bytes() == b"pixels of another program"
    assert (tmp_path / "image-000002.json").read_bytes() == b"a sidecar of another program"
    assert names(tmp_path) == [
        "image-000000.json",
        "image-000000.npy",
        "image-000001.npy",
        "image-000002.json",
        "image-000003.json",
        "image-000003.npy",
    ]
    assert (numpy.load(tmp_path / "image-000003.npy") == SMALL + 1).all()
    assert json.loads((tmp_path / "image-000003.json").read_text())["metadata"] == {"n": 1}


def test_a_prefix_with_a_dot_keeps_every_item(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path, prefix="plate.1")
    for number in range(2):
        sink(SMALL + number, {"n": number})
    assert names(tmp_path) == [f"plate.1-{n:06d}.{s}" for n in range(2) for s in ("json", "npy")]
    assert (numpy.load(tmp_path / "plate.1-000001.npy") == SMALL + 1).all()
    DirectorySink(tmp_path, prefix="plate.1")(SMALL, {"n": 2})  # numbering goes on
    assert (tmp_path / "plate.1-000002.npy").exists()


def test_a_full_disk_raises_the_os_error_and_leaves_nothing(spawn: Spawn, tmp_path: Path) -> None:
    results = [json.loads(line) for line in finish(spawn("full", tmp_path)).splitlines()]
    too_large = [OSError.__name__, errno.EFBIG, f"[Errno {errno.EFBIG}] {os.strerror(errno.EFBIG)}"]
    # Pixels past the limit, then a sidecar past it, fail; the writes around them work.
    assert results == [None, too_large, too_large, None]
    assert names(tmp_path) == [f"image-{n:06d}.{s}" for n in range(2) for s in ("json", "npy")]
    assert (numpy.load(tmp_path / "image-000001.npy") == SMALL + 3).all()
    assert json.loads((tmp_path / "image-000001.json").read_text())["metadata"] == {"n": 3}


def test_a_full_disk_is_acknowledged_as_failed_with_the_os_error(
    spawn: Spawn, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    acks = [json.loads(line) for line in finish(spawn("viewer", folder, tmp_path)).splitlines()]
    assert sorted(acks) == [
        ["failed", f"OSError: [Errno {errno.EFBIG}] {os.strerror(errno.EFBIG)}"],
        ["processed", ""],
    ]
    assert names(folder) == ["image-000000.json", "image-000000.npy"]


# --- the children ---------------------------------------------------------------------------


def _write(folder: str, writer: str, count: str) -> None:
    sink = DirectorySink(Path(folder))
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "go"
    for number in range(int(count)):
        sink(
            numpy.full((4, 4), value(int(writer), number), numpy.int64),
            {"writer": int(writer), "i": number},
        )
    print("done", flush=True)


def _fill_disk() -> None:
    """Make every file larger than FILE_LIMIT fail with EFBIG, as a full disk would."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, resource.RLIM_INFINITY))


def _full(folder: str) -> None:
    sink = DirectorySink(Path(folder))
    _fill_disk()
    calls: list[tuple[numpy.ndarray[Any, Any], dict[str, Any]]] = [
        (SMALL, {"n": 0}),
        (TOO_LARGE, {"n": 1}),
        (SMALL, {"n": 2, "notes": "x" * FILE_LIMIT}),
        (SMALL + 3, {"n": 3}),
    ]
    for image, metadata in calls:
        try:
            sink(image, metadata)
        except Exception as exc:
            print(json.dumps([type(exc).__name__, getattr(exc, "errno", None), str(exc)]))
        else:
            print(json.dumps(None))


def _viewer(folder: str, ipc_root: str) -> None:
    _fill_disk()
    config = ZMQConfig(ipc_root=ipc_root)
    acks: list[Ack] = []
    two = threading.Event()

    def remember(ack: Ack) -> None:
        acks.append(ack)
        if len(acks) == 2:
            two.set()

    registry = GlobalQueueTrackerRegistry()
    at = Endpoint.of(port=0, transport_mode=TransportMode.IPC, config=config)
    with (
        AckChannel.bind(at, registry=registry) as channel,
        StreamingServer.bind(at, DirectorySink(Path(folder))) as viewer,
        ImageSender.to(
            Endpoint.of(viewer.port_number, transport_mode=TransportMode.IPC, config=config),
            ack_to=channel.address,
            tracker_key="disk",
        ) as sender,
    ):
        channel.add_callback(remember)
        sender.send(SMALL)
        sender.send(TOO_LARGE)
        assert two.wait(WAIT)
    for ack in acks:
        print(json.dumps([ack.outcome.value, ack.error]))


CHILDREN: dict[str, Callable[..., None]] = {"write": _write, "full": _full, "viewer": _viewer}

if __name__ == "__main__":
    CHILDREN[sys.argv[1]](*sys.argv[2:])
