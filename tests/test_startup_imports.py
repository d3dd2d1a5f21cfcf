"""What a process imports at start-up (issue 17): a viewer and a client load only what they
use. Module sets are checked in fresh interpreters, never times (those are in benchmarks/)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    report = f"{code}; import sys, json; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", report], capture_output=True, text=True, timeout=120, check=True
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_the_packages_alone_import_nothing_heavy() -> None:
    loaded = loaded_after("import zmqruntime.execution, zmqruntime.streaming")
    assert not {"zmq", "numpy", "asyncio"} & loaded
    assert not [name for name in loaded if name.startswith("zmqruntime.core.")]


def test_the_viewer_loads_neither_clients_nor_plugins_nor_asyncio() -> None:
    loaded = loaded_after("import zmqruntime.streaming.__main__")
    unwanted = {
        "asyncio",  # through zmq.utils.monitor or zmq.auth.thread: only a ZAP server needs it
        "zmqruntime.core.client",
        "zmqruntime.streaming.napari_plugin",
        "zmqruntime.streaming.sender",
        "zmqruntime.streaming.process_manager",
        "zmqruntime.execution",
    }
    assert not unwanted & loaded


def test_clients_do_not_import_asyncio_or_psutil() -> None:
    loaded = loaded_after(
        "from zmqruntime.execution import ExecutionClient; "
        "from zmqruntime.streaming import ImageSender"
    )
    assert not {"asyncio", "psutil", "zmqruntime.streaming.napari_plugin"} & loaded


def test_a_tcp_server_that_checks_credentials_starts_without_asyncio(tmp_path: Path) -> None:
    """Its ZAP handler is zmqruntime's thread, not pyzmq's asyncio loop (~17 ms of import)."""
    loaded = loaded_after(
        "from zmqruntime import TransportMode, ZMQConfig; "
        "from zmqruntime.core.endpoint import Endpoint; "
        "from zmqruntime.streaming import StreamingServer; "
        "from zmqruntime.streaming.sinks import sink_from_spec; "
        f"endpoint = Endpoint.of(0, transport_mode=TransportMode.TCP, config=ZMQConfig("
        f"ipc_root={str(tmp_path)!r})); "
        f"server = StreamingServer.bind(endpoint, sink_from_spec({f'npy:{tmp_path}/i'!r})); "
        "server.start(); import threading; "
        "assert 'zmqruntime-zap' in [thread.name for thread in threading.enumerate()]; "
        "server.close()"
    )
    assert "zmqruntime.core.zap" in loaded
    assert "asyncio" not in loaded


def test_a_server_loads_process_workers_and_sqlite_only_when_it_uses_them() -> None:
    loaded = loaded_after(
        "from zmqruntime.execution import ExecutionServer, WorkerPool; "
        "from zmqruntime.execution.history import open_history; "
        "WorkerPool.threads(1).close()"
    )
    assert "zmqruntime.execution.server" in loaded
    assert not {"multiprocessing", "sqlite3", "asyncio"} & loaded


@pytest.mark.parametrize("package", ["zmqruntime.execution", "zmqruntime.streaming"])
def test_every_exported_name_of_a_lazy_package_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        module.nothing_here  # noqa: B018 - the attribute access is the test
