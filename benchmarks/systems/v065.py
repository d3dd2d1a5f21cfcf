"""The published zmqruntime 0.6.5, in a virtual environment of its own.

It has the same package name as this repository, so it cannot share the interpreter: the
runner creates a venv (once; cached under ``~/.cache/zmqruntime-benchmarks`` or
``$ZMQRUNTIME_BENCH_CACHE``), installs ``zmqruntime==0.6.5`` from PyPI into it with pip, and
runs ``v065_script.py`` there, one subprocess per workload, isolated (``python -I``) and with
``HOME`` pointing at a scratch folder, since 0.6.5 keeps its lock files and IPC sockets under
``~/.zmqruntime``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.plan import Failed, Outcome, Plan, Samples, Skipped

VERSION = "0.6.5"
SCRIPT = Path(__file__).with_name("v065_script.py")
NOTE = "serve_forever sleeps 10 ms between polls (its default)"


def cache_root() -> Path:
    """Where the suite keeps what it builds once per machine."""
    configured = os.environ.get("ZMQRUNTIME_BENCH_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "zmqruntime-benchmarks"


def venv_path() -> Path:
    """The 0.6.5 venv for this interpreter's Python version."""
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    return cache_root() / f"venv-zmqruntime-{VERSION}-{tag}"


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(venv: Path, log: Any) -> Path | Skipped:
    """The venv's interpreter, building the venv first if needed; Skipped if pip cannot."""
    python, marker = _python(venv), venv / ".zmqruntime-bench-ready"
    if marker.exists() and python.exists():
        return python
    if os.environ.get("ZMQRUNTIME_BENCH_NO_BUILD"):
        return Skipped(f"the {VERSION} venv is not built and ZMQRUNTIME_BENCH_NO_BUILD is set")
    log(f"building a venv with zmqruntime=={VERSION} in {venv} (once) ...")
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", f"zmqruntime=={VERSION}"],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Skipped(f"could not build the {VERSION} venv: {exc}")
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
            return Skipped(f"could not build the {VERSION} venv: {' '.join(tail)}")
    marker.write_text(VERSION + "\n")
    return python


class Runner:
    """Runs workloads in the 0.6.5 venv; every call returns an Outcome."""

    def __init__(self, python: Path | Skipped, plan: Plan):
        self.python = python
        self.plan = plan

    def _run(self, workload: str, params: dict[str, Any], timeout: float) -> Outcome:
        if isinstance(self.python, Skipped):
            return self.python
        with tempfile.TemporaryDirectory(prefix="zmqrt-bench-065-") as home:
            env = {"PATH": os.environ.get("PATH", ""), "HOME": home, "LANG": "C.UTF-8"}
            command = [str(self.python), "-I", str(SCRIPT), workload, json.dumps(params)]
            try:
                done = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    env=env,
                    cwd=home,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return Failed(f"0.6.5 {workload} did not finish within {timeout:.0f}s")
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            return Failed(f"0.6.5 {workload} exited {done.returncode}: {tail}")
        result = json.loads(lines[-1])
        return Samples(
            result["values"], items=result.get("items", 1), extra=result.get("extra", {})
        )

    def _timeout(self) -> float:
        return 120.0 if self.plan.quick else 600.0

    def latency(self, transport: str) -> Outcome:
        plan = self.plan
        params = {
            "transport": transport,
            "count": plan.latency_count,
            "warmup": min(plan.warmup, 20),
            "budget": plan.latency_budget,
        }
        return _noted(self._run("latency", params, self._timeout()), NOTE)

    def pipelined(self, clients: int) -> Outcome:
        plan = self.plan
        params = {
            "clients": clients,
            "tasks": plan.slow_pipelined_tasks,
            "warmup": min(plan.warmup, 20),
            "reps": plan.reps,
            "budget": plan.rep_budget,
        }
        outcome = self._run("pipelined", params, self._timeout())
        if isinstance(outcome, Samples):
            return _noted(outcome, f"{outcome.items:,} tasks (slow); {NOTE}")
        return outcome

    def payload(self) -> Outcome:
        plan = self.plan
        params = {
            "bytes": plan.payload_bytes,
            "count": plan.payload_count,
            "warmup": 3,
            "budget": plan.latency_budget,
        }
        note = "payload only, base64 in a JSON request: 0.6.5 returns no result"
        return _noted(self._run("payload", params, self._timeout()), note)

    def stream(self, size: int, window: int) -> Outcome:
        plan = self.plan
        params = {
            "size": size,
            "window": window,
            "frames": plan.frames_small if size <= 512 else plan.frames_large,
            "reps": plan.reps,
            "budget": plan.rep_budget,
        }
        note = "shared memory + JSON on PUB/SUB, PUSH ack per frame; " + NOTE
        return _noted(self._run("stream", params, self._timeout()), note)

    def progress(self, subscribed: bool) -> Outcome:
        if not subscribed:
            return Skipped("its client subscribes to every event when it connects")
        plan = self.plan
        params = {
            "updates": plan.progress_updates,
            "reps": plan.reps,
            "budget": plan.rep_budget,
        }
        note = (
            "wait_for_completion(status_timeout_ms=60000): with its default (1 s) it raised "
            "TimeoutError at 10,000 updates, before every event reached the callback; " + NOTE
        )
        return _noted(self._run("progress", params, self._timeout()), note)


def _noted(outcome: Outcome, note: str) -> Outcome:
    if isinstance(outcome, Samples):
        return Samples(outcome.values, outcome.items, note, outcome.extra)
    return outcome
