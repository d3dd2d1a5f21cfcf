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
    code = (
        "import sys, zmqruntime.core.codec, zmqruntime.core.messages; "
        "assert 'zmq' not in sys.modules"
    )
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
    assert len(path.read_text().splitlines()) <= 400, "split it by concept"


def test_nothing_unpickles_outside_the_pickle_serializer() -> None:
    for path in SOURCES:
        text = path.read_text()
        if path.name == "serializers.py":
            continue
        assert "pickle.loads" not in text and "recv_pyobj" not in text, path.name


@pytest.mark.parametrize(
    "module", ["zmqruntime.core.server", "zmqruntime.core.client", "zmqruntime.core.ack"]
)
def test_public_modules_import(module: str) -> None:
    importlib.import_module(module)


# --- the layout: tiers that import one way, no cycles ------------------------------------

_TIERS = {"base": 0, "core": 1, "execution": 2, "streaming": 2, "cli": 3}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _tier(module: str) -> str:
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in _TIERS:
        return parts[1]
    return "base"  # protocols, errors, config (and the package's own __init__/__main__)


def _imports(path: Path) -> set[str]:
    """Every zmqruntime module ``path`` imports, at any depth of the file."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for block in [n for n in ast.walk(tree) if isinstance(n, ast.If)]:
        if ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            block.body = []  # imports for type checkers only never run
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("zmqruntime")
        ):
            found.add(node.module)
            for alias in node.names:  # ``from zmqruntime.core import codec`` imports a module
                candidate = f"{node.module}.{alias.name}"
                if _known_module(candidate):
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("zmqruntime"))
    return found


def _known_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (PACKAGE.parent / relative).with_suffix(".py").exists() or (
        PACKAGE.parent / relative / "__init__.py"
    ).exists()


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in SOURCES}
    return {
        name: {target for target in _imports(path) if target in modules and target != name}
        for name, path in modules.items()
    }


def _check_direction(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in graph.items():
        if module in ("zmqruntime", "zmqruntime.__main__"):
            continue  # the curated facade and ``python -m zmqruntime`` sit above the tiers
        for target in targets:
            if target == "zmqruntime":
                continue  # only ``__version__``: defined before the package imports anything
            mine, theirs = _tier(module), _tier(target)
            if _TIERS[theirs] > _TIERS[mine] or (_TIERS[theirs] == _TIERS[mine] and mine != theirs):
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    return wrong


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_tiers_import_one_way() -> None:
    assert _check_direction(_import_graph()) == []


def test_no_import_cycle() -> None:
    graph = _import_graph()
    # A package's __init__ importing its own modules is how packages work, not a cycle.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    assert _find_cycle(graph) is None


def test_the_layout_rules_catch_violations() -> None:
    bad = {"zmqruntime.core.client": {"zmqruntime.execution.server"}}
    assert _check_direction(bad) == [
        "zmqruntime.core.client (core) imports zmqruntime.execution.server (execution)"
    ]
    assert _check_direction({"zmqruntime.streaming.sinks": {"zmqruntime.execution.pool"}})
    assert _find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_the_top_level_is_curated() -> None:
    assert len(zmqruntime.__all__) <= 45
    exported = {name for names in zmqruntime._EXPORTS.values() for name in names}
    assert exported | {"__version__"} == set(zmqruntime.__all__)
