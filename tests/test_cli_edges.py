"""The command line's rough edges of issue 16, each as a real command in a subprocess against
real servers: the console script imports executors from the current folder, a server lost
during ``submit --wait`` is named as lost, Ctrl-C cancels the task and prints its id, a unique
id prefix stands for the id, ``view`` says when it is ready, a missing napari is one line like
every error, errors name options (not Python settings), timeouts are checked as typed, help is
plain text with every argument explained, and nothing listening over IPC is known at once.

Helpers and conventions are those of tests/test_cli.py (no sleeping: deadlines and polling of
the command line; IPC and the runtime folder under the test's temporary folder).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import zmqruntime
from tests.test_cli import (
    DEFAULT_MODE,
    EXIT_WITHIN,
    POSIX_ONLY,
    RUN_TIMEOUT,
    Background,
    Endpoint,
    _shared_bytecode_cache,  # noqa: F401 - the module's children share one bytecode cache
    as_json,
    assert_one_line_error,
    background,
    cli_command,
    cli_env,
    execution_server,
    run_all,
    run_cli,
    submit_id,
    wait_for_progress,
    wait_for_status,
    wait_for_summary,
)
from zmqruntime.config import TransportMode
from zmqruntime.core.transport import get_ipc_socket_path
from zmqruntime.execution import ExecutionClient

COMMANDS = ("serve", "submit", "status", "cancel", "ping", "shutdown", "view", "keygen", "demo")
WAITING = json.dumps({"op": "wait", "limit": 30})
IPC_ONLY = pytest.mark.skipif(DEFAULT_MODE is not TransportMode.IPC, reason="IPC is POSIX")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    """One ``zmqruntime serve`` (one worker thread) for the tests that do not stop it."""
    with execution_server(DEFAULT_MODE, tmp_path_factory.mktemp("edges")) as running:
        yield running


# A process started in the background by a shell without job control (a CI script's `&`)
# inherits SIGINT ignored, and Python then leaves it ignored: the command line under test
# gets Python's own Ctrl-C handler back first, as it has when a person runs it.
_CTRL_C_AS_AT_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'zmqruntime'; runpy.run_module('zmqruntime', run_name='__main__')"
)


def waiting_submit(server: Background) -> subprocess.Popen[str]:
    """``submit --wait`` of a task that runs until cancelled, in the background."""
    command = cli_command("submit", WAITING, "--wait", *server.endpoint.args)
    return subprocess.Popen(
        [sys.executable, "-c", _CTRL_C_AS_AT_A_TERMINAL, *command[3:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=server.cwd,
    )


def finish(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Its stdout and stderr once it exits (killed if it does not within EXIT_WITHIN)."""
    try:
        return process.communicate(timeout=EXIT_WITHIN)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def last_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


# --- serve: the current folder is importable, also from the console script -------------------


def test_the_console_script_imports_executors_from_the_current_folder(tmp_path: Path) -> None:
    """``zmqruntime serve --executor mytasks:run`` in the folder of mytasks.py: the console
    script (here: a script in another folder, as a console script is) found no ``mytasks``."""
    (tmp_path / "mytasks.py").write_text("def run(task, context):\n    return ['ran', task]\n")
    launcher = tmp_path / "bin" / "zmqruntime-script.py"
    launcher.parent.mkdir()
    launcher.write_text("import sys\nfrom zmqruntime.cli import main\nsys.exit(main())\n")
    endpoint = Endpoint.free(DEFAULT_MODE, tmp_path)
    argv = [sys.executable, str(launcher), "serve", "--executor", "mytasks:run", *endpoint.args]
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=cli_env(), cwd=tmp_path)
    served = Background(process, endpoint, out, err)
    try:
        served.wait_ready("execution")
        assert as_json(served.run("submit", "7", "--wait", "--json")) == ["ran", 7]
        assert served.run("shutdown").returncode == 0
        assert served.wait_exit() == 0
    finally:
        served.kill()


# --- submit --wait: a lost server, Ctrl-C ------------------------------------------------------


@POSIX_ONLY
def test_a_server_killed_during_submit_wait_is_reported_as_lost(tmp_path: Path) -> None:
    with execution_server(DEFAULT_MODE, tmp_path) as running:
        waiting = waiting_submit(running)
        try:
            wait_for_summary(running, "running", 1)
            running.process.kill()
            running.wait_exit()
        finally:
            _out, err = finish(waiting)
    assert waiting.returncode == 3, err
    line = last_line(err)
    assert line.startswith(f"zmqruntime: lost the server on port {running.endpoint.port} "), line
    assert "while waiting for task" in line
    assert re.search(r"zmqruntime status [0-9a-f]{32}$", line), line
    assert "is one running there" not in line


@POSIX_ONLY
def test_ctrl_c_during_submit_wait_cancels_the_task_and_prints_its_id(server: Background) -> None:
    waiting = waiting_submit(server)
    try:
        running = wait_for_summary(server, "running", 1)
        (execution_id,) = [i for ids in running["engine"].values() for i in ids]
        wait_for_progress(server, execution_id, "waiting for cancel")
        waiting.send_signal(signal.SIGINT)
    finally:
        out, err = finish(waiting)
    assert waiting.returncode == 130, err
    assert out == ""
    assert last_line(err) == (
        f"zmqruntime: interrupted; task {execution_id} cancelled "
        f"(see: zmqruntime status {execution_id})"
    )
    assert wait_for_status(server, execution_id, "cancelled", "failed")["status"] == "cancelled"


def test_help_says_ctrl_c_cancels_a_waited_task(tmp_path: Path) -> None:
    result = run_cli("submit", "--help", cwd=tmp_path)
    assert "Ctrl-C cancels the task" in " ".join(result.stdout.split())


# --- a unique id prefix ------------------------------------------------------------------------


def test_a_unique_id_prefix_stands_for_the_id(server: Background) -> None:
    running = submit_id(server, {"op": "wait", "limit": 30})
    wait_for_progress(server, running, "waiting for cancel")
    assert as_json(server.run("status", running[:8], "--json"))["execution_id"] == running
    human = server.run("status", running[:8])
    assert running in human.stdout, human.stdout
    cancelled = server.run("cancel", running[:8])
    assert cancelled.stdout.strip() == f"{running}: cancelled", cancelled.stderr
    assert wait_for_status(server, running, "cancelled", "failed")["status"] == "cancelled"
    finished = submit_id(server, {"op": "echo", "value": 1})  # found in the server's listing
    wait_for_status(server, finished, "complete")
    assert as_json(server.run("status", finished[:8], "--json"))["status"] == "complete"
    answer = as_json(server.run("cancel", finished[:6], "--json"))
    assert answer == {"execution_id": finished, "cancelled": False}


def test_status_list_shows_the_records_filtered_and_paged(server: Background) -> None:
    tag = ("--label", "test=listing")  # the server may hold other tests' executions
    done = [submit_id(server, {"op": "echo", "value": n}, *tag) for n in range(3)]
    for execution_id in done:
        wait_for_status(server, execution_id, "complete")
    listed = as_json(server.run("status", "--list", *tag, "--state", "complete", "--json"))
    assert [r["execution_id"] for r in listed["records"]] == done
    assert listed["next_after"] is None
    first = as_json(server.run("status", "--list", *tag, "--limit", "2", "--json"))
    assert [r["execution_id"] for r in first["records"]] == done[:2]
    after = ("--after", first["next_after"])
    rest = as_json(server.run("status", "--list", *tag, *after, "--json"))
    assert [r["execution_id"] for r in rest["records"]] == done[2:]
    human = server.run("status", "--list", done[1][:8])
    assert done[1] in human.stdout and done[0] not in human.stdout, human.stdout
    assert "complete test=listing" in human.stdout, human.stdout
    none = as_json(server.run("status", "--list", *tag, "--state", "running", "--json"))
    assert none == {"records": [], "next_after": None}


def test_an_ambiguous_or_short_prefix_is_refused(server: Background) -> None:
    at = zmqruntime.Endpoint.of(
        port=server.endpoint.port,
        transport_mode=server.endpoint.mode,
        config=server.endpoint.config,
    )
    with ExecutionClient.to(at) as client:  # two ids of one prefix, from Python
        for last in "12":
            execution_id = f"abcdef0{last}" + "0" * 24
            client.submit({"op": "echo", "value": 1}, execution_id=execution_id).result(30.0)
    ambiguous, short, unknown = run_all(
        [
            ["status", "abcdef0", *server.endpoint.args],
            ["cancel", "abc", *server.endpoint.args],
            ["status", "fedcba98", *server.endpoint.args],
        ],
        server.cwd,
    )
    line = assert_one_line_error(ambiguous, 2, "several execution ids start with 'abcdef0'")
    assert "give more" in line and "abcdef01" in line and "abcdef02" in line
    assert_one_line_error(short, 4, "the server refused", "'abc'")
    assert_one_line_error(unknown, 4, "the server refused", "'fedcba98'")


# --- view ----------------------------------------------------------------------------------------


def test_view_says_when_it_is_ready(tmp_path: Path) -> None:
    endpoint = Endpoint.free(DEFAULT_MODE, tmp_path)
    sink = f"npy:{tmp_path / 'images'}"
    with background("view", "--sink", sink, endpoint=endpoint, name="view") as viewer:
        viewer.wait_ready("viewer")
        out, err = viewer.output()
        where = f"port {endpoint.port} ({endpoint.mode.value})"
        assert out == f"viewing {sink} on {where}; Ctrl-C stops\n"
        assert err == ""
        assert viewer.run("shutdown").returncode == 0
        assert viewer.wait_exit() == 0


def test_view_without_napari_is_the_usual_one_line_error(tmp_path: Path) -> None:
    """napari that cannot be imported (a stand-in package that raises ImportError, as a missing
    or broken install does) was a log line of another format."""
    stub = tmp_path / "stub" / "napari"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError(\"No module named 'napari'\")\n")
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join((str(stub.parent), env["PYTHONPATH"]))
    env["DISPLAY"] = ":0"  # a display is named: the check of napari's import decides
    result = run_cli("view", "--sink", "napari", "--port", "0", "--tcp", cwd=tmp_path, env=env)
    assert_one_line_error(result, 2, "the napari sink needs: pip install 'zmqruntime[napari]'")
    assert result.stdout == ""


# --- errors name the command line's options ----------------------------------------------------


def test_errors_name_options_not_python_settings(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    deep = tmp_path / ("d" * 100)
    serve = ["serve", "--executor", "tests.executors:echo", "--ipc", "--port", "5000"]
    workers, processes, file_root, long_root = run_all(
        [
            ["serve", "--executor", "tests.executors:echo", "--workers", "0"],
            ["serve", "--executor", "tests.executors:echo", "--processes", "-1"],
            [*serve, "--ipc-root", str(a_file)],
            [*serve, "--ipc-root", str(deep)],
        ],
        tmp_path,
    )
    assert_one_line_error(workers, 2, "argument --workers: want a whole number of 1 or more: '0'")
    assert_one_line_error(processes, 2, "argument --processes: want a whole number of 1 or")
    for result in (file_root, long_root):
        line = assert_one_line_error(result, 2, "--ipc-root")
        assert "ZMQConfig" not in line and "ipc_root" not in line, line
    assert "writable folder" in file_root.stderr
    assert "shorter folder" in long_root.stderr


# --- timeouts are checked as they are typed ------------------------------------------------------


def test_timeouts_that_cannot_work_are_refused_at_once(tmp_path: Path) -> None:
    cases = [
        ["ping", "--timeout", "-1"],
        ["ping", "--timeout=-1"],
        ["ping", "--timeout=-inf"],
        ["status", "--timeout", "0"],
        ["submit", "1", "--wait", "--wait-timeout", "-5"],
        ["submit", "1", "--wait", "--wait-timeout", "nan"],
    ]
    for args, result in zip(cases, run_all(cases, tmp_path), strict=True):
        option = "--wait-timeout" if "--wait-timeout" in args else "--timeout"
        assert_one_line_error(result, 2, f"argument {option}: want seconds above 0")
        assert result.stdout == "", args


# --- help ----------------------------------------------------------------------------------------


def arguments_without_help(text: str) -> list[str]:
    """The argument lines of an argparse help text with no explanation next to or below them."""
    lines = text.splitlines()
    missing = []
    for number, line in enumerate(lines):
        if re.match(r"^  \S", line) and not re.search(r"\S {2,}\S", line.strip()):
            following = lines[number + 1] if number + 1 < len(lines) else ""
            if not following.startswith("    "):
                missing.append(line.strip())
    return missing


def test_help_is_plain_text_and_explains_every_argument(tmp_path: Path) -> None:
    helps = run_all([["--help"], *[[command, "--help"] for command in COMMANDS]], tmp_path)
    for args, result in zip([["--help"], *COMMANDS], helps, strict=True):
        assert result.returncode == 0, result.stderr
        for markup in ("``", ":mod:", ":class:", ":func:", ":data:"):
            assert markup not in result.stdout, (args, result.stdout)
        assert arguments_without_help(result.stdout) == [], (args, result.stdout)
    ping = " ".join(helps[1 + COMMANDS.index("ping")].stdout.split())
    assert "the control port is the data port + 1000" in ping
    default = "IPC (POSIX)" if DEFAULT_MODE is TransportMode.IPC else "TCP"
    assert f"use {default} (the default here)" in ping
    assert ping.count("the default here") == 1
    serve = " ".join(helps[1 + COMMANDS.index("serve")].stdout.split())
    assert "current folder" in serve


def test_the_help_check_finds_an_argument_without_help() -> None:
    text = "options:\n  -h, --help  show help\n  --bare\n  --explained\n        below\n"
    assert arguments_without_help(text) == ["--bare"]


# --- nothing listening over IPC is known at once -------------------------------------------------


@IPC_ONLY
def test_nothing_listening_over_ipc_is_known_without_waiting(tmp_path: Path) -> None:
    """A missing socket file, or one a dead server left, answers at once: with --timeout 600
    the command would otherwise outlive RUN_TIMEOUT and fail this test."""
    missing = Endpoint.free(TransportMode.IPC, tmp_path)
    stale = Endpoint.free(TransportMode.IPC, tmp_path / "stale")
    path = get_ipc_socket_path(stale.port + 1000, stale.config)
    assert path is not None
    path.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # closed without unlink: the file a killed server leaves
    slow = ["--timeout", "600"]
    commands = [
        ["ping", *missing.args, *slow],
        ["status", *missing.args, *slow],
        ["submit", "1", "--wait", *missing.args, *slow],
        ["cancel", "0" * 32, *missing.args, *slow],
        ["shutdown", *missing.args, *slow],
        ["ping", *stale.args, *slow],
    ]
    results = run_all(commands, tmp_path)
    for args, result in zip(commands, results, strict=True):
        line = assert_one_line_error(result, 3, "no zmqruntime server on port", "nothing listens")
        assert str(missing.root if result is not results[-1] else path) in line, line
        assert result.stdout == "", args
    assert RUN_TIMEOUT < 600
