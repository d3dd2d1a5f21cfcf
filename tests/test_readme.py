"""The code blocks of the README and of every docs/**/*.md page run as written (so the docs
cannot rot).

Each block runs alone, in a fresh module, with the home folder (where IPC sockets live by
default) and the temp folder pointed at the test's temporary folder.
"""

from __future__ import annotations

import re
import sys
import tempfile
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted(path for path in (ROOT / "docs").rglob("*.md") if "_build" not in path.parts)


def python_blocks(path: Path) -> list[str]:
    """The ```python blocks of a Markdown file, in order."""
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


BLOCKS = python_blocks(README)
DOC_BLOCKS = [
    pytest.param(path, index, id=f"{path.relative_to(ROOT / 'docs').as_posix()}-{index}")
    for path in DOCS
    for index in range(len(python_blocks(path)))
]


def run_block(source: str, name: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if "from distributed import" in source:
        pytest.importorskip("distributed", reason="the Dask example needs the dask extra")
    if "from napari" in source:
        pytest.importorskip("napari", reason="the napari example needs the napari extra")
    monkeypatch.setenv("HOME", str(home))  # IPC sockets go under a private home
    monkeypatch.setenv("USERPROFILE", str(home))
    monkeypatch.setattr(tempfile, "tempdir", str(home))  # and its tempfile.mkdtemp() folders
    module = types.ModuleType(re.sub(r"\W", "_", name))  # a real module: dataclasses need one
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, name, "exec"), module.__dict__)


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 2


def test_every_tutorial_and_how_to_has_a_python_example() -> None:
    pages = [*(ROOT / "docs" / "tutorials").glob("*.md"), *(ROOT / "docs" / "how-to").glob("*.md")]
    assert len(pages) >= 9
    for page in pages:
        assert python_blocks(page), f"{page.name} has no Python example"


def test_the_migration_guide_has_an_example_per_hook() -> None:
    guide = ROOT / "docs" / "migrating.md"
    assert guide in DOCS
    blocks = "\n".join(python_blocks(guide))
    for hook in (
        "execute_task",
        "serialize_task",
        "display_image",
        "get_launch_command",
        "GlobalAckListener",
        "reset_for_new_batch",
        "MessageFields",
        "ControlMessageType",
        "ExecutionStatus",
    ):
        assert hook in blocks, f"no example in docs/migrating.md mentions {hook}"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_block(BLOCKS[index], f"README.md block {index}", tmp_path, monkeypatch)


@pytest.mark.parametrize(("path", "index"), DOC_BLOCKS)
def test_docs_block_runs(
    path: Path, index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = python_blocks(path)[index]
    name = path.relative_to(ROOT).as_posix()
    run_block(source, f"{name} block {index}", tmp_path, monkeypatch)
