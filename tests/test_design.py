"""The house rules of zmqruntime, checked on the source itself."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import zmqruntime
from zmqruntime import errors

PACKAGE = Path(zmqruntime.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))
EXCEPTION_NAMES = {
    name
    for name, value in vars(errors).items()
    if isinstance(value, type) and issubclass(value, BaseException)
} | {"Exception", "ValueError", "TimeoutError", "OSError", "RuntimeError", "TypeError"}
ALLOWED_BASES = EXCEPTION_NAMES | {"enum.Enum", "Enum", "Protocol", "typing.Protocol"}


def _classes(path: Path) -> list[ast.ClassDef]:
    return [
        node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)
    ]


def _is_exception_or_protocol(node: ast.ClassDef) -> bool:
    names = {ast.unparse(base) for base in node.bases}
    return bool(names & (EXCEPTION_NAMES | {"Protocol", "typing.Protocol"}))


def test_the_package_has_sources() -> None:
    assert len(SOURCES) >= 10


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_class_inherits_from_anything_but_exceptions_enums_and_protocols(path: Path) -> None:
    for node in _classes(path):
        for base in node.bases:
            name = ast.unparse(base)
            assert name in ALLOWED_BASES, f"{path.name}: class {node.name} inherits from {name}"
        assert not node.keywords, f"{path.name}: class {node.name} uses a metaclass or keywords"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_public_class_is_final(path: Path) -> None:
    for node in _classes(path):
        if node.name.startswith("_") or _is_exception_or_protocol(node):
            continue
        if any(ast.unparse(base) in {"enum.Enum", "Enum"} for base in node.bases):
            continue  # an enum with members cannot be subclassed anyway
        decorators = {ast.unparse(d).split("(")[0] for d in node.decorator_list}
        assert decorators & {"final", "typing.final"}, f"{path.name}: {node.name} is not final"


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    # The checks above must be able to fail: run them on a file that breaks both rules.
    bad = tmp_path / "bad.py"
    bad.write_text("class Base:\n    pass\n\nclass Child(Base):\n    pass\n")
    with pytest.raises(AssertionError):
        test_no_class_inherits_from_anything_but_exceptions_enums_and_protocols(bad)
    with pytest.raises(AssertionError):
        test_every_public_class_is_final(bad)


def test_importing_the_codec_does_not_import_zmq() -> None:
    code = "import sys, zmqruntime.codec, zmqruntime.messages; assert 'zmq' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


ORIGINAL_NAMES = [
    "TransportMode",
    "ZMQConfig",
    "ControlMessageType",
    "ResponseType",
    "ExecutionStatus",
    "MessageFields",
    "ZMQServer",
    "ZMQClient",
    "QueueTracker",
    "GlobalQueueTrackerRegistry",
    "get_zmq_transport_url",
    "get_ipc_socket_path",
]


@pytest.mark.parametrize("name", ORIGINAL_NAMES)
def test_the_original_public_names_import_from_the_top_level(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from zmqruntime import {name}", namespace)
    assert namespace[name] is getattr(zmqruntime, name)
    assert name in zmqruntime.__all__


def test_every_exported_name_resolves_and_is_documented() -> None:
    for name in zmqruntime.__all__:
        value = getattr(zmqruntime, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name} has no docstring"
    assert set(dir(zmqruntime)) >= set(zmqruntime.__all__)


def test_every_module_has_a_docstring_and_a_logger_not_print() -> None:
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path.name} has no module docstring"
        calls = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "print"
        ]
        assert not calls, f"{path.name} prints; use logging.getLogger(__name__)"


def test_no_module_uses_a_global_zmq_context() -> None:
    for path in SOURCES:
        assert "Context.instance" not in path.read_text(), f"{path.name} uses Context.instance()"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 500


def test_nothing_unpickles_outside_the_pickle_serializer() -> None:
    for path in SOURCES:
        text = path.read_text()
        if path.name == "serializers.py":
            continue
        assert "pickle.loads" not in text and "recv_pyobj" not in text, path.name


@pytest.mark.parametrize("module", ["zmqruntime.server", "zmqruntime.client", "zmqruntime.ack"])
def test_public_modules_import(module: str) -> None:
    importlib.import_module(module)
