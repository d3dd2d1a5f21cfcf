"""The documentation site: every public name in the API reference, a clean build, the offline
inventories up to date, and a source distribution that carries the docs and the tests.

The build is Sphinx's own (``sphinx-build -W``, warnings as errors), in a subprocess; with
``ZMQRUNTIME_DOCS_HTML`` set (``.ci/run`` sets it after its docs step) the tests read that
build instead of making their own. Without the ``docs`` extra (the 3.10 and 3.13 suites) the
build and sdist tests are skipped; the default suite has it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import subprocess
import sys
import tarfile
import types
import zlib
from pathlib import Path

import pytest

import zmqruntime

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API_PAGES = sorted((DOCS / "api").glob("*.rst"))


def load(path: Path) -> types.ModuleType:
    """A module of docs/ (not a package), imported from its file."""
    spec = importlib.util.spec_from_file_location(f"_docs_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def public_modules() -> dict[str, list[str]]:
    """Every module of the package that has an ``__all__``, and its names."""
    names = ["zmqruntime"] + [
        info.name for info in pkgutil.walk_packages(zmqruntime.__path__, "zmqruntime.")
    ]
    found = {}
    for name in names:
        module = importlib.import_module(name)
        if hasattr(module, "__all__"):
            found[name] = list(module.__all__)
    return found


def documented_modules() -> list[str]:
    modules = []
    for page in API_PAGES:
        for line in page.read_text().splitlines():
            if line.startswith(".. api-module::"):
                modules.append(line.split("::", 1)[1].strip())
    return modules


def test_every_module_with_an_all_has_a_section_in_the_api_reference() -> None:
    documented = documented_modules()
    missing = sorted(set(public_modules()) - set(documented))
    assert not missing, f"add `.. api-module:: NAME` to a page of docs/api/ for {missing}"
    assert len(documented) == len(set(documented)), "a module is documented twice"


def inventory(html: Path) -> set[str]:
    """The Python names in a built site's objects.inv."""
    data = (html / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = data.index(b"\n", header_end) + 1
    lines = zlib.decompress(data[header_end:]).decode().splitlines()
    return {line.split(" ", 1)[0] for line in lines if line.split(" ")[1].startswith("py:")}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sphinx", reason="the docs need the docs extra")
    pytest.importorskip("myst_parser", reason="the docs need the docs extra")
    given = os.environ.get("ZMQRUNTIME_DOCS_HTML")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("html")
    doctrees = tmp_path_factory.mktemp("doctrees")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    command += ["-d", str(doctrees), str(DOCS), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"the docs build failed:\n{done.stderr[-4000:]}"
    return out


def test_every_name_of_every_all_is_in_the_built_api_reference(built: Path) -> None:
    home_of = load(DOCS / "_ext" / "api_module.py").home_of
    names = inventory(built)
    missing = [
        f"{module}.{name}"
        for module, exported in public_modules().items()
        for name in exported
        if f"{home_of(module, name)}.{name}" not in names
    ]
    assert not missing, f"not in the API reference: {missing}"


def test_the_rule_catches_a_name_missing_from_the_reference(built: Path) -> None:
    names = inventory(built)
    assert "zmqruntime.execution.server.ExecutionServer" in names
    assert "zmqruntime.execution.server.NoSuchName" not in names


def test_every_page_is_built(built: Path) -> None:
    pages = [p for p in DOCS.rglob("*.md") if "_build" not in p.parts] + API_PAGES
    for page in pages:
        html = built / page.relative_to(DOCS).with_suffix(".html")
        assert html.is_file(), f"{page} was not built (is it in a toctree?)"
    assert (built / "_images" / "contact-sheet.png").is_file()


def test_the_offline_inventories_are_what_make_inventories_writes() -> None:
    script = load(DOCS / "make_inventories.py")
    for key in script.NAMES:
        written = DOCS / "_inventories" / f"{key}.inv"
        assert written.read_bytes() == script.render(key), (
            f"{written} is stale: run python docs/make_inventories.py"
        )


def test_the_source_distribution_carries_tests_docs_benchmarks_and_changelog(
    tmp_path: Path,
) -> None:
    sdist = pytest.importorskip("flit_core.sdist", reason="needs flit_core (the docs extra)")
    built_at = Path(sdist.SdistBuilder.from_ini_path(ROOT / "pyproject.toml").build(tmp_path))
    with tarfile.open(built_at) as archive:
        files = {member.split("/", 1)[1] for member in archive.getnames() if "/" in member}
    for expected in (
        "CHANGELOG.md",
        "README.md",
        "tests/test_docs.py",
        "tests/data/contact-sheet.png",
        "docs/conf.py",
        "docs/index.md",
        "docs/api/core.rst",
        "docs/_inventories/python.inv",
        "benchmarks/__main__.py",
        "zmqruntime/__init__.py",
    ):
        assert expected in files, f"the sdist lacks {expected}"
    junk = [f for f in files if "__pycache__" in f or f.endswith(".pyc") or "_build/" in f]
    assert not junk, f"the sdist carries build output: {junk[:5]}"
