"""The benchmark suite still runs end to end: ``python -m benchmarks --quick``.

Only completeness is checked, never speed: every workload/system row the suite promises is in
the JSON, either measured or skipped with a reason that was also printed, and nothing raised.
CURVE rows (workload 9) are measured when libzmq has CURVE. The predecessor's (0.6.5) rows run
only if its cached virtual environment already exists (a full ``python -m benchmarks`` builds
it) or ``ZMQRUNTIME_BENCH_V065=1`` asks for them (then the venv is built if need be: a 105 MB
download); otherwise they are skipped, and the test touches neither the network nor the home
folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from benchmarks.plan import Plan, row_keys
from benchmarks.systems import v065

REPO = Path(__file__).resolve().parents[1]
V065_VENV = v065.venv_path()
"""The predecessor's cached venv, found before the session moves ``HOME`` (conftest.py)."""
V065_ASKED = os.environ.get("ZMQRUNTIME_BENCH_V065") == "1"


def v065_options() -> tuple[list[str], dict[str, str]]:
    """The suite's options and environment for the predecessor's rows: the cached venv when it
    exists or is asked for, else no build (its rows are skipped)."""
    ready = (V065_VENV / ".zmqruntime-bench-ready").exists()
    if ready or V065_ASKED:
        return ["--v065-venv", str(V065_VENV)], {}
    return [], {"ZMQRUNTIME_BENCH_NO_BUILD": "1"}


@pytest.mark.timeout(600)
def test_quick_suite_reports_every_row(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    options, environment = v065_options()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(results), *options],
        cwd=REPO,
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    document = json.loads(results.read_text())
    assert document["meta"]["mode"] == "quick"
    rows = {(row["key"], row["system"]): row for row in document["rows"]}
    for key in row_keys(Plan.quick_plan()):
        assert key in rows, f"no row for {key}"
        row = rows[key]
        assert row["error"] is None, f"{key}: {row['error']}"
        if row["skipped"] is None:
            assert row["samples"] > 0 and row["median"] > 0, key
        else:
            assert row["skipped"].strip(), f"{key}: skipped without a reason"
            assert f"skipped: {row['skipped']}" in done.stdout, key
    curve = [key for key in rows if key[0].startswith("9-curve-")]
    assert len(curve) == 10, f"CURVE rows (workload 9) missing: {sorted(curve)}"
    if zmq.has("curve"):
        assert all(rows[key]["skipped"] is None for key in curve), "CURVE rows not measured"
        assert "CURVE cost, zmqruntime: " in done.stdout, "no CURVE cost lines"
    assert "| workload | system | median | p99 |" in done.stdout
    assert document["targets"], "the targets of the issue were not evaluated"
