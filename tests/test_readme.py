"""The README's code blocks run as written (so the docs cannot rot)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if "from distributed import" in BLOCKS[index]:
        pytest.importorskip("distributed", reason="the Dask example needs the dask extra")
    monkeypatch.setenv("HOME", str(tmp_path))  # IPC sockets go under a private home
    monkeypatch.setenv("USERPROFILE", str(tmp_path))
    module = types.ModuleType(f"readme_block_{index}")  # a real module: dataclasses need one
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), module.__dict__)
