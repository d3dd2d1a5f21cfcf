"""The ``zmqruntime`` command line, end to end: every command as a real subprocess
(``python -m zmqruntime …``) against real servers on real sockets, TCP and IPC.

Servers and viewers run as background subprocesses; a test waits for one by running
``zmqruntime ping`` until it answers (with a deadline), never by sleeping, and kills whatever
it started. IPC sockets live under the test's temporary folder (``--ipc-root``), so nothing
touches ``~/.zmqruntime``. Every person-made error must end in one ``zmqruntime: …`` line on
stderr, no traceback, and the documented exit code (1 task failed, 2 usage, 3 nothing
answered, 4 refused, 5 ``--wait`` gave up).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy
import pytest
import zmq.auth

from zmqruntime import TransportMode, ZMQConfig
from zmqruntime.cli.display import Bars
from zmqruntime.core.endpoint import Endpoint as ServerEndpoint
from zmqruntime.core.transport import find_free_ipc_port, find_free_port_pair
from zmqruntime.streaming import ImageSender

REPO = Path(__file__).resolve().parent.parent
COMMANDS = (
    "serve",
    "submit",
    "status",
    "cancel",
    "ping",
    "shutdown",
    "view",
    "keygen",
    "ls",
    "scan",
    "stop",
    "demo",
)
RUN_TIMEOUT = 60.0
"""Longest one CLI command may take before the test fails (it should take about a second)."""
READY_WITHIN = 30.0
EXIT_WITHIN = 20.0
EXECUTION_ID = re.compile(r"^[0-9a-f]{32}$")
TRANSPORTS = [
    pytest.param(TransportMode.TCP, id="tcp"),
    pytest.param(
        TransportMode.IPC,
        id="ipc",
        marks=pytest.mark.skipif(os.name == "nt", reason="IPC needs Unix domain sockets"),
    ),
]
DEFAULT_MODE = TransportMode.TCP if os.name == "nt" else TransportMode.IPC
POSIX_ONLY = pytest.mark.skipif(os.name == "nt", reason="signals to a child process are POSIX")


# --- running the command line -----------------------------------------------------------------


_BYTECODE: list[Path] = []
"""A bytecode cache the children share (set per module by ``_shared_bytecode_cache``)."""


@pytest.fixture(scope="module", autouse=True)
def _shared_bytecode_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Children compile zmqruntime once, into a temporary folder, not each time they start
    (under PYTHONDONTWRITEBYTECODE each start would compile it again: ~0.4 s a command)."""
    _BYTECODE[:] = [tmp_path_factory.mktemp("pycache")]
    yield
    _BYTECODE.clear()


def cli_env() -> dict[str, str]:
    """The environment of every child: the repository importable (``tests.executors``) and a
    wide terminal, so rich draws tables on one line per row."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["COLUMNS"] = "120"
    if _BYTECODE:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(_BYTECODE[0])
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "zmqruntime", *args]


def run_cli(
    *args: str, cwd: Path, timeout: float = RUN_TIMEOUT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one command to its end; its exit code, stdout and stderr."""
    return subprocess.run(
        cli_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env() if env is None else env,
        cwd=cwd,
        check=False,
    )


def run_all(commands: Sequence[Sequence[str]], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    """Run several commands at once (each waits on a timeout) and collect them in order."""
    processes = [
        subprocess.Popen(
            cli_command(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            cwd=cwd,
        )
        for args in commands
    ]
    results = []
    try:
        for args, process in zip(commands, processes, strict=True):
            stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
            results.append(subprocess.CompletedProcess(args, process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, *fragments: str
) -> str:
    """The command failed with ``code`` and said so in exactly one line naming ``fragments``."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zmqruntime: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return json.loads(result.stdout)


def row(text: str, label: str) -> str:
    """The one line of a table (rich box or plain lines) whose row is ``label``."""
    found = [line for line in text.splitlines() if re.match(rf"^\W*{re.escape(label)} ", line)]
    assert len(found) == 1, f"want one row {label!r} in:\n{text}"
    return found[0]


def table_value(text: str, label: str) -> str:
    """The value in the row ``label`` of a two-column table (rich box or plain lines)."""
    found = re.findall(rf"^\W*{re.escape(label)}\W+(\S.*?)\W*$", text, re.MULTILINE)
    assert len(found) == 1, f"want one row {label!r} in:\n{text}"
    return str(found[0])


# --- endpoints and background processes ---------------------------------------------------------


@attrs.frozen
class Endpoint:
    """Where a server listens, as the command line's options."""

    mode: TransportMode
    port: int
    root: Path

    @classmethod
    def free(cls, mode: TransportMode, root: Path) -> Endpoint:
        config = ZMQConfig(ipc_root=root)
        if mode is TransportMode.TCP:
            return cls(mode, find_free_port_pair(config), root)
        return cls(mode, find_free_ipc_port(config), root)

    @property
    def args(self) -> list[str]:
        return ["--port", str(self.port), f"--{self.mode.value}", "--ipc-root", str(self.root)]

    @property
    def config(self) -> ZMQConfig:
        return ZMQConfig(ipc_root=self.root)


@attrs.frozen
class Background:
    """A command running in the background (a server or a viewer), output in files."""

    process: subprocess.Popen[bytes]
    endpoint: Endpoint
    stdout: Path
    stderr: Path

    @property
    def cwd(self) -> Path:
        return self.endpoint.root

    def run(self, *args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run ``zmqruntime ARGS`` against this server."""
        return run_cli(*args, *self.endpoint.args, cwd=self.cwd, timeout=timeout)

    def output(self) -> tuple[str, str]:
        return self.stdout.read_text(), self.stderr.read_text()

    def wait_ready(self, role: str) -> dict[str, Any]:
        """Ping until it answers as ``role`` (its pong), failing after READY_WITHIN."""
        deadline = time.monotonic() + READY_WITHIN
        while True:
            code = self.process.poll()
            if code is not None:
                pytest.fail(f"{role} server exited with {code} before answering: {self.output()}")
            answer = self.run("ping", "--json", "--timeout", "3")
            if answer.returncode == 0:
                pong: dict[str, Any] = json.loads(answer.stdout)
                assert pong["role"] == role, pong
                assert pong["pid"] == self.process.pid, pong
                return pong
            assert answer.returncode == 3, answer.stderr
            if time.monotonic() > deadline:
                pytest.fail(f"no {role} server answered within {READY_WITHIN}s: {self.output()}")

    def wait_exit(self, timeout: float = EXIT_WITHIN) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {timeout}s after it was told to stop: {self.output()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(EXIT_WITHIN)


@contextlib.contextmanager
def background(*args: str, endpoint: Endpoint, name: str) -> Iterator[Background]:
    """Start ``zmqruntime ARGS <endpoint>``; killed on the way out if it is still running."""
    stdout, stderr = endpoint.root / f"{name}.out", endpoint.root / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            cli_command(*args, *endpoint.args),
            stdout=out,
            stderr=err,
            env=cli_env(),
            cwd=endpoint.root,
        )
    running = Background(process, endpoint, stdout, stderr)
    try:
        yield running
    finally:
        running.kill()


@contextlib.contextmanager
def execution_server(
    mode: TransportMode, root: Path, *extra: str, executor: str = "tests.executors:dispatch"
) -> Iterator[Background]:
    """A ready ``zmqruntime serve`` subprocess on a free port."""
    endpoint = Endpoint.free(mode, root)
    with background("serve", "--executor", executor, *extra, endpoint=endpoint, name="serve") as s:
        s.wait_ready("execution")
        yield s


def submit_id(server: Background, task: dict[str, Any], *options: str) -> str:
    """``submit TASK`` without waiting: the execution id it prints."""
    result = server.run("submit", json.dumps(task), *options)
    assert result.returncode == 0, result.stderr
    execution_id = result.stdout.strip()
    assert EXECUTION_ID.match(execution_id), result.stdout
    return execution_id


def record(server: Background, execution_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = as_json(server.run("status", execution_id, "--json"))
    assert answer["execution_id"] == execution_id
    return answer


def wait_for_status(server: Background, execution_id: str, *wanted: str) -> dict[str, Any]:
    """Ask ``status ID --json`` until the status is one of ``wanted`` (READY_WITHIN at most)."""
    deadline = time.monotonic() + READY_WITHIN
    while True:
        answer = record(server, execution_id)
        if answer["status"] in wanted:
            return answer
        if time.monotonic() > deadline:
            pytest.fail(f"{execution_id} never became {wanted}: {answer}")


def wait_for_progress(server: Background, execution_id: str, message: str) -> dict[str, Any]:
    """Ask until the execution runs and has reported ``message`` (it is in its loop now)."""
    deadline = time.monotonic() + READY_WITHIN
    while True:
        answer = record(server, execution_id)
        progress = answer["progress"]
        if answer["status"] == "running" and progress and progress["message"] == message:
            return answer
        if answer["status"] not in ("queued", "running") or time.monotonic() > deadline:
            pytest.fail(f"{execution_id} never reported {message!r} while running: {answer}")


def summary(server: Background) -> dict[str, Any]:
    answer: dict[str, Any] = as_json(server.run("status", "--json"))
    return answer


def wait_for_summary(server: Background, key: str, value: int) -> dict[str, Any]:
    deadline = time.monotonic() + READY_WITHIN
    while True:
        answer = summary(server)
        if answer[key] == value:
            return answer
        if time.monotonic() > deadline:
            pytest.fail(f"summary never had {key}={value}: {answer}")


# --- one execution server, shared by the commands that do not stop it --------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    """``zmqruntime serve --executor tests.executors:dispatch`` (one worker thread), IPC on
    POSIX; ``test_every_command_over_each_transport`` covers TCP."""
    root = tmp_path_factory.mktemp("cli")
    with execution_server(DEFAULT_MODE, root) as running:
        yield running
        code = running.process.poll()  # no test may stop it, and nothing may crash it
        assert code is None, f"the shared server exited with {code}: {running.output()}"


def test_serve_announces_the_port_it_serves(server: Background) -> None:
    out, err = server.output()
    where = f"port {server.endpoint.port} ({server.endpoint.mode.value})"
    assert out == f"serving tests.executors:dispatch on {where}; Ctrl-C stops\n"
    assert err == ""


def test_ping_names_the_role(server: Background) -> None:
    human = server.run("ping")
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith(f"execution server, pid {server.process.pid}, zmqruntime ")
    assert "capabilities: execute, status, cancel" in human.stdout
    pong = as_json(server.run("ping", "--json"))
    assert pong["role"] == "execution"
    assert pong["pid"] == server.process.pid
    assert {"execute", "status", "cancel", "progress", "shutdown"} <= set(pong["capabilities"])
    assert pong["uptime"] > 0


def test_submit_prints_the_execution_id(server: Background) -> None:
    execution_id = submit_id(server, {"op": "echo", "value": 41})
    assert wait_for_status(server, execution_id, "complete", "failed")["status"] == "complete"
    as_id = as_json(server.run("submit", '{"op": "echo", "value": 42}', "--json"))
    assert EXECUTION_ID.match(as_id["execution_id"]), as_id
    assert as_id["execution_id"] != execution_id


def test_submit_wait_prints_only_the_result_on_stdout(server: Background) -> None:
    value = {"plate": "A1", "wells": [1, 2, 3], "nested": {"ok": True}}
    result = server.run("submit", json.dumps({"op": "echo", "value": value}), "--wait")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == value  # the progress bar went to stderr
    quiet = server.run("submit", json.dumps({"op": "pid"}), "--wait", "--json")
    assert quiet.returncode == 0, quiet.stderr
    assert json.loads(quiet.stdout) == server.process.pid  # a worker thread of the server
    assert quiet.stderr == ""


def test_submit_wait_of_a_failing_task_shows_the_remote_traceback(server: Background) -> None:
    result = server.run("submit", '{"op": "fail", "why": "on purpose"}', "--wait")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" in result.stderr  # the remote one, on purpose
    assert "explode_on_purpose" in result.stderr
    assert "tests/executors.py" in result.stderr.replace(os.sep, "/")
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("zmqruntime: task failed: ValueError: exploded on purpose"), last


def test_submit_wait_gives_up_after_wait_timeout(server: Background) -> None:
    task = json.dumps({"op": "wait", "limit": 30})
    line = assert_one_line_error(
        server.run("submit", task, "--wait", "--json", "--wait-timeout", "0.5"),
        5,
        "did not finish within 0.5s; it is still running",
    )
    execution_id = re.findall(r"zmqruntime status ([0-9a-f]{32})", line)[0]
    assert record(server, execution_id)["status"] in ("queued", "running")
    assert server.run("cancel", execution_id).returncode == 0
    assert wait_for_status(server, execution_id, "cancelled", "failed")["status"] == "cancelled"


def test_status_summary_counts_what_happened(server: Background) -> None:
    before = summary(server)
    assert server.run("submit", '{"op": "echo", "value": 1}', "--wait").returncode == 0
    assert server.run("submit", '{"op": "fail"}', "--wait", "--json").returncode == 1
    waiting = submit_id(server, {"op": "wait", "limit": 30})
    wait_for_progress(server, waiting, "waiting for cancel")
    assert server.run("cancel", waiting).returncode == 0
    wait_for_status(server, waiting, "cancelled", "failed")
    after = summary(server)
    grew = {key: after["counts"][key] - before["counts"][key] for key in after["counts"]}
    assert grew == {
        "queued": 0,
        "running": 0,
        "complete": 1,
        "failed": 1,
        "cancelled": 1,
        "interrupted": 0,
    }
    assert (after["queued"], after["running"], after["workers"]) == (0, 0, 1)
    assert after["uptime"] > before["uptime"]

    human = server.run("status")
    assert human.returncode == 0, human.stderr
    assert "execution server" in human.stdout
    for key in ("queued", "running"):
        assert table_value(human.stdout, key) == str(after[key])  # one row each, no repeat
    for key in ("complete", "failed", "cancelled"):
        assert table_value(human.stdout, key) == str(after["counts"][key])
    assert table_value(human.stdout, "workers") == "1"


def test_status_of_one_execution_shows_its_labels(server: Background) -> None:
    execution_id = submit_id(
        server, {"op": "echo", "value": 7}, "--label", "plate=A1", "--label", "note=x=y"
    )
    done = wait_for_status(server, execution_id, "complete", "failed")
    assert done["status"] == "complete"
    assert done["labels"] == {"plate": "A1", "note": "x=y"}
    assert done["finished_at"] >= done["started_at"] >= done["submitted_at"] > 0
    human = server.run("status", execution_id)
    assert human.returncode == 0, human.stderr
    assert table_value(human.stdout, "id") == execution_id  # whole, on one line
    assert table_value(human.stdout, "status") == "complete"
    assert table_value(human.stdout, "label plate") == "A1"
    assert table_value(human.stdout, "label note") == "x=y"


def test_cancel_a_long_running_task(server: Background) -> None:
    execution_id = submit_id(server, {"op": "wait", "limit": 30}, "--label", "kind=long")
    wait_for_progress(server, execution_id, "waiting for cancel")
    cancelled = server.run("cancel", execution_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"{execution_id}: cancelled"
    final = wait_for_status(server, execution_id, "cancelled", "failed", "complete")
    assert final["status"] == "cancelled", final  # it saw ctx.cancelled; not its 30 s limit
    assert final["labels"] == {"kind": "long"}
    # The one worker is free again at once.
    after = server.run("submit", '{"op": "echo", "value": "next"}', "--wait", "--json")
    assert json.loads(after.stdout) == "next"


def test_cancel_of_a_finished_task_says_so(server: Background) -> None:
    execution_id = submit_id(server, {"op": "echo", "value": 0})
    wait_for_status(server, execution_id, "complete")
    human = server.run("cancel", execution_id)
    assert human.returncode == 0, human.stderr
    assert human.stdout.strip() == f"{execution_id}: already finished; nothing to cancel"
    answer = as_json(server.run("cancel", execution_id, "--json"))
    assert answer == {"execution_id": execution_id, "cancelled": False}


def test_mistakes_against_a_live_server_are_one_line(server: Background) -> None:
    """Bad input is usage (2) even though a server answers; an unknown id is refused (4)."""
    unknown = "0" * 32
    results = run_all(
        [
            ["submit", '{"op": ', *server.endpoint.args],
            ["submit", "{}", "--label", "no-equals-sign", *server.endpoint.args],
            ["submit", "{}", "--label", "=value", *server.endpoint.args],
            ["status", unknown, *server.endpoint.args],
            ["cancel", unknown, *server.endpoint.args],
            ["serve", "--executor", "tests.executors:echo", *server.endpoint.args],
        ],
        server.cwd,
    )
    bad_json, no_sep, no_key, status, cancel, taken = results
    assert_one_line_error(bad_json, 2, "TASK_JSON is not valid JSON")
    assert_one_line_error(no_sep, 2, "--label takes key=value, not 'no-equals-sign'")
    assert_one_line_error(no_key, 2, "--label takes key=value, not '=value'")
    assert_one_line_error(status, 4, "the server refused", unknown)
    assert_one_line_error(cancel, 4, "the server refused", unknown)
    assert_one_line_error(taken, 2, "already")
    assert taken.stdout == ""  # no "serving …" line for a server that never served
    assert server.process.poll() is None  # and the one serving there is unharmed


# --- servers of their own: stopping, process workers ------------------------------------------


@pytest.mark.parametrize("mode", TRANSPORTS)
def test_every_command_over_each_transport(mode: TransportMode, tmp_path: Path) -> None:
    """ping, submit, submit --wait, status, status ID, cancel ID, then shutdown stops it."""
    with execution_server(mode, tmp_path, "--workers", "2") as running:
        assert running.output()[0].startswith(
            f"serving tests.executors:dispatch on port {running.endpoint.port} ({mode.value})"
        )
        assert running.run("ping").stdout.startswith("execution server, pid ")
        if mode is TransportMode.TCP:  # another runtime folder is another user's credentials
            stranger = [*running.endpoint.args[:-1], str(tmp_path / "stranger")]
            refused = run_cli("status", *stranger, "--timeout", "3", cwd=tmp_path)
            line = assert_one_line_error(refused, 3, "refused this client's credentials")
            assert "b'" not in line, line
        waiting = submit_id(running, {"op": "wait", "limit": 30})
        assert as_json(running.run("submit", '{"op": "echo", "value": [1]}', "--wait")) == [1]
        wait_for_progress(running, waiting, "waiting for cancel")
        state = summary(running)
        assert (state["running"], state["workers"], state["counts"]["complete"]) == (1, 2, 1)
        assert running.run("cancel", waiting).stdout.strip() == f"{waiting}: cancelled"
        assert wait_for_status(running, waiting, "cancelled", "failed")["status"] == "cancelled"
        answer = running.run("shutdown")
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.strip() == (
            f"shutdown requested on port {running.endpoint.port} ({mode.value})"
        )
        assert running.wait_exit() == 0
        assert running.output()[1] == ""
        assert_one_line_error(running.run("ping", "--timeout", "0.5"), 3, "no zmqruntime server")


@pytest.mark.parametrize(
    "stop",
    [
        "shutdown --force",
        pytest.param("SIGINT", marks=POSIX_ONLY),  # Ctrl-C
        pytest.param("SIGTERM", marks=POSIX_ONLY),
    ],
)
def test_stopping_a_busy_server_cancels_its_work(stop: str, tmp_path: Path) -> None:
    """The server exits 0, and a client waiting on a running task hears it was cancelled."""
    with execution_server(DEFAULT_MODE, tmp_path) as running:
        task = '{"op": "wait", "limit": 30}'
        waiting = subprocess.Popen(
            cli_command("submit", task, "--wait", *running.endpoint.args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            cwd=tmp_path,
        )
        try:
            wait_for_summary(running, "running", 1)
            if stop == "shutdown --force":
                answer = running.run("shutdown", "--force", "--json")
                assert as_json(answer) == {"shutdown": True}
            else:
                running.process.send_signal(getattr(signal, stop))
            assert running.wait_exit() == 0
            out, err = waiting.communicate(timeout=EXIT_WITHIN)
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait()
        assert waiting.returncode == 1, (out, err)
        assert out == ""
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert re.fullmatch(r"zmqruntime: task [0-9a-f]{32} was cancelled", last), err
        assert "Traceback" not in running.output()[1]


def test_serve_with_worker_processes(tmp_path: Path) -> None:
    with execution_server(DEFAULT_MODE, tmp_path, "--processes", "2") as running:
        pid = as_json(running.run("submit", '{"op": "pid"}', "--wait", "--json"))
        assert isinstance(pid, int)
        assert pid != running.process.pid  # ran in a worker process, not in the server
        assert summary(running)["workers"] == 2
        # A task that ignores cancellation is stopped by ending its worker process.
        stubborn = submit_id(running, {"op": "ignore"})
        wait_for_progress(running, stubborn, "ignoring cancellation")
        assert running.run("cancel", stubborn).returncode == 0
        assert wait_for_status(running, stubborn, "cancelled", "failed")["status"] == "cancelled"
        again = as_json(running.run("submit", '{"op": "echo", "value": 3}', "--wait", "--json"))
        assert again == 3
        assert running.run("shutdown").returncode == 0
        assert running.wait_exit() == 0


# --- person-made errors without any server -----------------------------------------------------


@pytest.mark.parametrize("mode", TRANSPORTS)
def test_nothing_listening_is_exit_3(mode: TransportMode, tmp_path: Path) -> None:
    endpoint = Endpoint.free(mode, tmp_path)
    quick = [*endpoint.args, "--timeout", "0.5"]
    commands = [
        ["ping", *quick],
        ["ping", "--json", *quick],
        ["status", *quick],
        ["status", "0" * 32, *quick],
        ["submit", '{"op": "echo"}', *quick],
        ["submit", '{"op": "echo"}', "--wait", *quick],
        ["cancel", "0" * 32, *quick],
        ["shutdown", *quick],
    ]
    for args, result in zip(commands, run_all(commands, tmp_path), strict=True):
        line = assert_one_line_error(result, 3, "no zmqruntime server")
        assert f"port {endpoint.port} ({mode.value})" in line, (args, line)
        assert result.stdout == "", args


@pytest.mark.parametrize(
    ("executor", "message"),
    [
        ("no_such_package.tasks:run", "cannot import 'no_such_package.tasks'"),
        ("tests.executors:no_such_function", "'tests.executors' has no callable named"),
        ("tests.executors:WAIT_LIMIT", "has no callable named 'WAIT_LIMIT'"),
        ("tests.executors", "--executor must look like package.module:function"),
        ("tests.executors:", "--executor must look like package.module:function"),
        (":dispatch", "--executor must look like package.module:function"),
    ],
    ids=[
        "no-module",
        "no-function",
        "not-callable",
        "no-colon",
        "no-function-name",
        "no-module-name",
    ],
)
def test_serve_with_a_bad_executor_is_exit_2(executor: str, message: str, tmp_path: Path) -> None:
    endpoint = Endpoint.free(DEFAULT_MODE, tmp_path)
    result = run_cli("serve", "--executor", executor, *endpoint.args, cwd=tmp_path)
    assert_one_line_error(result, 2, message)
    assert result.stdout == ""


def test_serve_with_bad_worker_counts_is_exit_2(tmp_path: Path) -> None:
    endpoint = Endpoint.free(DEFAULT_MODE, tmp_path)
    serve = ["serve", "--executor", "tests.executors:echo", *endpoint.args]
    both, zero, negative = run_all(
        [
            [*serve, "--workers", "2", "--processes", "2"],
            [*serve, "--workers", "0"],
            [*serve, "--processes", "-1"],
        ],
        tmp_path,
    )
    assert_one_line_error(both, 2, "give --workers or --processes, not both")
    assert_one_line_error(zero, 2, "argument --workers: want a whole number of 1 or more: '0'")
    assert_one_line_error(negative, 2, "argument --processes: want a whole number of 1 or more")


def test_usage_mistakes_are_exit_2(tmp_path: Path) -> None:
    unknown, no_task, no_executor, bad_sink, no_tasks = run_all(
        [
            ["frobnicate"],
            ["submit"],
            ["serve"],
            ["view", "--sink", "tiff:somewhere", "--port", "7777", "--ipc-root", str(tmp_path)],
            ["demo", "--tasks", "0", "--out", str(tmp_path / "demo")],
        ],
        tmp_path,
    )
    assert_one_line_error(unknown, 2, "invalid choice: 'frobnicate'", "(see: zmqruntime --help)")
    assert_one_line_error(no_task, 2, "required: TASK_JSON (see: zmqruntime submit --help)")
    assert_one_line_error(no_executor, 2, "the following arguments are required: --executor")
    assert_one_line_error(bad_sink, 2, "--sink must be npy:DIR or napari, not 'tiff:somewhere'")
    assert_one_line_error(no_tasks, 2, "--tasks must be 1 to 1000, not 0")
    assert not (tmp_path / "demo").exists()


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


def test_keygen_into_a_file_is_exit_2(a_file: Path, tmp_path: Path) -> None:
    result = run_cli("keygen", str(a_file / "keys"), cwd=tmp_path)
    assert_one_line_error(result, 2, f"cannot write keys into {a_file / 'keys'}")


# --- no traceback, ever: every bad input is one line and exit code 2 --------------------------

DEEPEST = 100
"""How deep lists and objects may nest in a task (SafeSerializer's limit)."""
INT_DIGITS = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
WEEK = 7 * 24 * 3600
"""The longest --timeout or --wait-timeout."""


def nested(depth: int, kind: str) -> str:
    """JSON of ``depth`` nested lists or objects around a 1."""
    if kind == "list":
        return "[" * depth + "1" + "]" * depth
    return '{"a": ' * depth + "1" + "}" * depth


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Each once printed a traceback (exit 1) or hung: deep or huge JSON, a task deeper than the
    serializer takes, a bad log level, timeouts out of range, text that is not UTF-8."""
    nobody = ["--port", "1", "--tcp", "--timeout", "0.3"]  # nothing listens, none is reached
    cases: list[tuple[list[str], str]] = [
        (["submit", nested(60_000, "list"), *nobody], "TASK_JSON nests too deeply to read"),
        (["submit", nested(10_000, "dict"), *nobody], "TASK_JSON nests too deeply to read"),
        (["submit", "7" * 5000, *nobody], f"TASK_JSON has an integer over {INT_DIGITS} digits"),
        (["submit", nested(DEEPEST + 1, "list"), *nobody], "TASK_JSON cannot be sent"),
        (["submit", nested(DEEPEST + 1, "dict"), *nobody], f"deeper than {DEEPEST}"),
        (["--log-level", "bogus", "ping"], "argument --log-level: want one of debug, info,"),
        (["ping", "--timeout", "-1"], "argument --timeout: want seconds above 0, at most"),
        (["ping", "--timeout", "0"], "argument --timeout"),
        (["ping", "--timeout", "nan"], "argument --timeout"),
        (["ping", "--timeout", "inf"], "argument --timeout"),
        (["ping", "--timeout", "1e300"], "argument --timeout"),
        (["submit", "1", "--wait-timeout", f"{WEEK}.001", *nobody], "argument --wait-timeout"),
        (["ping", "--port", "many"], "argument --port: invalid int value: 'many'"),
        (["ping", "--port", "70000"], "port must be a whole number in 0..65535, got 70000"),
        (["ping", "--tcp", "--ipc"], "argument --ipc: not allowed with argument --tcp"),
        (["ping", "two\nlines"], "unrecognized arguments: two lines"),
        (["ping", "--host", "\udcff", *nobody], "argument --host: '\\udcff' is not UTF-8 text"),
        (["submit", "1", "--label", "a=\udcff", *nobody], "argument --label"),
        (["keygen", str(tmp_path / "keys"), "--name", ""], "want a file name without slashes"),
        (["keygen", str(tmp_path / "keys"), "--name", "../up"], "without slashes: '../up'"),
    ]
    commands = [args for args, _says in cases]
    for (args, says), result in zip(cases, run_all(commands, tmp_path), strict=True):
        assert_one_line_error(result, 2, says)
        assert result.stdout == "", args
    assert not (tmp_path / "keys").exists()
    assert not (tmp_path / "up.key").exists()


def test_values_at_their_limits_pass_the_checks(tmp_path: Path) -> None:
    """The other side of each edge above: the command gets as far as looking for a server."""
    nobody = ["--port", "1", "--tcp", "--timeout", "0.3"]
    edges = [
        ["submit", nested(DEEPEST, "list"), *nobody],
        ["submit", nested(DEEPEST, "dict"), *nobody],
        ["submit", "7" * INT_DIGITS, *nobody],
        ["submit", "1", "--wait-timeout", str(WEEK), *nobody],
        ["--log-level", "ERROR", "ping", "--port", "1", "--tcp", "--timeout", "1e-3"],
    ]
    for args, result in zip(edges, run_all(edges, tmp_path), strict=True):
        assert_one_line_error(result, 3, "no zmqruntime server answered on port 1 (tcp)")
        assert args  # each reached the network: its input passed every check


def test_bad_places_are_one_line_and_exit_2(a_file: Path, tmp_path: Path) -> None:
    """An executor module that cannot load, an address that cannot be bound, output folders
    that cannot be written."""
    (tmp_path / "raises_at_import.py").write_text("raise RuntimeError('broken on purpose')\n")
    (tmp_path / "not_python.py").write_text("x = (\n")
    serve = ["serve", "--port", "0", "--tcp", "--executor"]
    cases: list[tuple[list[str], str]] = [
        ([*serve, "raises_at_import:run"], "'raises_at_import': RuntimeError: broken on purpose"),
        ([*serve, "not_python:run"], "cannot import 'not_python': SyntaxError:"),
        (  # TEST-NET-1 (RFC 5737) is no address of this machine: binding fails here, no traffic
            ["--log-level", "error", *serve, "tests.executors:echo", "--host", "192.0.2.1"],
            "Cannot assign requested address",
        ),
        (["view", "--sink", f"npy:{a_file / 'images'}", "--port", "0"], "--sink: cannot create"),
    ]
    if importlib.util.find_spec("PIL") is not None:  # else the demo stops sooner, for Pillow
        # 1000 tasks, the most a demo runs, pass their check and stop at the folder.
        cases.append((["demo", "--tasks", "1000", "--out", str(a_file)], "--out: cannot create"))
    cases.append((["demo", "--tasks", "1001", "--out", str(a_file)], "--tasks must be 1 to 1000"))
    commands = [args for args, _says in cases]
    for (args, says), result in zip(cases, run_all(commands, tmp_path), strict=True):
        assert_one_line_error(result, 2, says)
        assert result.stdout == "", args


@pytest.mark.skipif(sys.platform != "linux", reason="only Linux can lack a display")
def test_napari_without_a_display_is_exit_2(tmp_path: Path) -> None:
    """Qt aborted the process (SIGABRT) when napari had no display."""
    env = {k: v for k, v in cli_env().items() if k not in {"DISPLAY", "WAYLAND_DISPLAY"}}
    env.pop("QT_QPA_PLATFORM", None)
    result = run_cli("view", "--sink", "napari", "--port", "0", "--tcp", cwd=tmp_path, env=env)
    assert_one_line_error(result, 2, "napari")


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    assert run_cli("keygen", str(folder), cwd=tmp_path).returncode == 0
    secret = folder / "zmqruntime.key_secret"
    first = secret.read_bytes()
    again = run_cli("keygen", str(folder), cwd=tmp_path)
    assert_one_line_error(again, 2, f"{folder / 'zmqruntime.key'} already exists; --force")
    assert secret.read_bytes() == first  # untouched
    (folder / "zmqruntime.key").unlink()  # the secret alone is enough to refuse
    refused = run_cli("keygen", str(folder), cwd=tmp_path)
    assert_one_line_error(refused, 2, f"{secret} already exists")
    forced = run_cli("keygen", str(folder), "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert secret.read_bytes() != first
    assert (
        zmq.auth.load_certificate(folder / "zmqruntime.key")[0]
        == (zmq.auth.load_certificate(secret)[0])
    )


def test_an_internal_error_is_one_line_and_exit_70(tmp_path: Path) -> None:
    """A bug in a command (here: a handler that raises) names the error in one line, exit 70;
    --log-level debug adds the traceback."""
    script = (
        "import sys, zmqruntime.cli\n"
        "cli = sys.modules['zmqruntime.cli.parser']\n"
        "def broken(args):\n"
        "    raise LookupError('a bug on purpose')\n"
        "cli.COMMANDS['ping'] = (broken, *cli.COMMANDS['ping'][1:])\n"
        "sys.exit(zmqruntime.cli.main(sys.argv[1:]))\n"
    )
    quiet, loud = (
        subprocess.run(
            [sys.executable, "-c", script, *level, "ping"],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env=cli_env(),
            cwd=tmp_path,
            check=False,
        )
        for level in ([], ["--log-level", "debug"])
    )
    line = assert_one_line_error(quiet, 70, "internal error: LookupError: a bug on purpose")
    assert "--log-level debug" in line
    assert loud.returncode == 70, loud.stderr
    assert "Traceback" in loud.stderr and "a bug on purpose" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1] == line


def test_labels_and_errors_are_shown_as_text_not_markup(server: Background) -> None:
    """Rich markup in a label or an error message is shown as it is (it raised MarkupError)."""
    execution_id = submit_id(server, {"op": "[/]"}, "--label", "x=[/]", "--label", "y=[bold]")
    wait_for_status(server, execution_id, "failed")
    shown = server.run("status", execution_id)
    assert shown.returncode == 0, shown.stderr
    assert "[/]" in row(shown.stdout, "label x")
    assert "[bold]" in row(shown.stdout, "label y")
    assert "unknown op '[/]'" in row(shown.stdout, "error")


# --- help ------------------------------------------------------------------------------------


def test_help_lists_every_command(tmp_path: Path) -> None:
    results = run_all([["--help"], *[[command, "--help"] for command in COMMANDS]], tmp_path)
    main_help = results[0]
    assert main_help.returncode == 0, main_help.stderr
    listed = re.findall(r"^ {4}(\w+) +\S", main_help.stdout, re.MULTILINE)
    assert listed == list(COMMANDS), main_help.stdout
    assert "Exit codes: 0 success, 1 the task failed" in main_help.stdout
    assert "70 an" in main_help.stdout  # internal error
    for command, result in zip(COMMANDS, results[1:], strict=True):
        assert result.returncode == 0, (command, result.stderr)
        assert result.stdout.startswith(f"usage: zmqruntime {command}"), result.stdout


def test_console_script_runs(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("zmqruntime.exe" if os.name == "nt" else "zmqruntime")
    if not script.exists():
        pytest.skip(f"the console script is not installed next to {sys.executable}")
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert all(command in result.stdout for command in COMMANDS)


# --- view --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", TRANSPORTS)
def test_view_writes_streamed_images(
    mode: TransportMode, tmp_path: Path, no_thread_leak: None
) -> None:
    endpoint = Endpoint.free(mode, tmp_path)
    folder = tmp_path / "images"
    with background("view", "--sink", f"npy:{folder}", endpoint=endpoint, name="view") as viewer:
        pong = viewer.wait_ready("viewer")
        assert "images" in pong["capabilities"]
        images = [numpy.arange(64 * 48, dtype=numpy.uint16).reshape(64, 48) * n for n in (1, 2, 3)]
        with ImageSender.to(
            ServerEndpoint.of(port=endpoint.port, transport_mode=mode, config=endpoint.config)
        ) as sender:
            for number, image in enumerate(images):
                sender.send(image, {"number": number, "name": f"tile {number}"})
            sender.wait_all_acked(timeout=20)
        written = sorted(folder.glob("image-*.npy"))
        assert [path.name for path in written] == [f"image-{n:06d}.npy" for n in range(3)]
        for number, (path, image) in enumerate(zip(written, images, strict=True)):
            numpy.testing.assert_array_equal(numpy.load(path), image)
            sidecar = json.loads(path.with_suffix(".json").read_text())
            assert sidecar["metadata"] == {"number": number, "name": f"tile {number}"}
        # A viewer is not an execution server: asking it for status is refused, in one line.
        assert_one_line_error(viewer.run("status"), 4, "a viewer does not accept 'status'")
        assert viewer.run("shutdown").returncode == 0
        assert viewer.wait_exit() == 0


# --- keygen ----------------------------------------------------------------------------------


def test_keygen_writes_a_key_pair(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    human, machine = run_all(
        [
            ["keygen", str(folder)],
            ["keygen", str(tmp_path / "other"), "--name", "viewer", "--json"],
        ],
        tmp_path,
    )
    assert human.returncode == 0, human.stderr
    public, secret = folder / "zmqruntime.key", folder / "zmqruntime.key_secret"
    assert f"public key: {public}" in human.stdout
    assert f"secret key: {secret}" in human.stdout
    if os.name == "posix":
        assert secret.stat().st_mode & 0o777 == 0o600
    public_key, no_secret = zmq.auth.load_certificate(public)
    same_public, secret_key = zmq.auth.load_certificate(secret)
    assert no_secret is None
    assert public_key == same_public
    assert secret_key is not None and len(secret_key) == 40
    paths = as_json(machine)
    assert paths == {
        "public": str(tmp_path / "other" / "viewer.key"),
        "secret": str(tmp_path / "other" / "viewer.key_secret"),
    }
    assert all(Path(path).is_file() for path in paths.values())
    assert zmq.auth.load_certificate(paths["secret"])[1] != secret_key  # a fresh pair each time


# --- demo --------------------------------------------------------------------------------------


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image", reason="the demo needs the demo extra")
    out = tmp_path / "demo"
    result = run_cli("demo", "--tasks", "6", "--out", str(out), cwd=tmp_path, timeout=120)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    table = result.stdout
    count = {label: int(table_value(table, label)) for label in _DEMO_COUNTS}
    assert count["tasks complete"] + count["tasks failed"] + count["tasks cancelled"] == 6, table
    assert count["tasks failed"] == 0, table
    assert count["tasks cancelled"] <= 1, table  # the one cancelled on purpose, unless too late
    assert count["images acked"] == count["images sent"], table
    assert table_value(table, "server, viewer exit codes") == "0, 0"

    frames = sorted((out / "frames").glob("image-*.npy"))
    assert len(frames) in (5, 6), frames
    assert len(frames) == count["images sent"]
    assert count["tasks complete"] <= len(frames)
    for path in frames:
        image = numpy.load(path)
        assert image.shape == (256, 256) and image.dtype == numpy.uint16
        assert image.max() > image.min()
    sheet = out / "contact-sheet.png"
    assert "contact sheet" in table  # its path may wrap in a narrow terminal
    with image_module.open(sheet) as png:
        assert png.format == "PNG"
        assert png.size[0] > 256 and png.size[1] > 256
        png.load()


_DEMO_COUNTS = (
    "tasks complete",
    "tasks failed",
    "tasks cancelled",
    "images sent",
    "images acked",
)


def test_progress_notes_are_shown_as_text_not_markup(capfd: pytest.CaptureFixture[str]) -> None:
    """A task's progress message is data: '[/]' in it raised MarkupError in the bars (rich)."""
    pytest.importorskip("rich", reason="plain lines have no markup")
    bars = Bars().start()
    bars.update("task", 0.5, "[/] [bold]")
    bars.finish()
    assert "[/] [bold]" in capfd.readouterr().err


def _ping_until_up(server: Background, *options: str) -> dict[str, Any]:
    deadline = time.monotonic() + READY_WITHIN
    while (answer := server.run("ping", "--json", "--timeout", "3", *options)).returncode:
        assert server.process.poll() is None, server.output()
        assert time.monotonic() < deadline, answer.stderr
    pong: dict[str, Any] = json.loads(answer.stdout)
    return pong


def test_keys_and_insecure_choose_how_tcp_authenticates(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    for name in ("server", "client"):
        assert run_cli("keygen", str(keys), "--name", name, cwd=tmp_path).returncode == 0
    serve = ("serve", "--executor", "tests.executors:dispatch")
    endpoint = Endpoint.free(TransportMode.TCP, tmp_path)
    with background(*serve, "--keys", str(keys), endpoint=endpoint, name="curve") as server:
        assert _ping_until_up(server, "--keys", str(keys))["role"] == "execution"
        plain = server.run("ping", "--timeout", "2")  # this user's own credentials: not CURVE
        assert plain.returncode == 3 and "handshake failed" in plain.stderr, plain.stderr
        assert server.run("shutdown", "--keys", str(keys)).returncode == 0
        assert server.wait_exit() == 0
    missing = run_cli("ping", *endpoint.args, "--keys", str(tmp_path), cwd=tmp_path)
    assert_one_line_error(missing, 2, "zmqruntime keygen")
    endpoint = Endpoint.free(TransportMode.TCP, tmp_path)
    with background(*serve, "--insecure", endpoint=endpoint, name="open") as server:
        assert _ping_until_up(server, "--insecure")["role"] == "execution"
        assert "insecure=True" in server.output()[1]  # the warning
