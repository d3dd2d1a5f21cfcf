"""The ``api-module`` directive: one public module of the API reference.

``.. api-module:: zmqruntime.execution.server`` documents the module's docstring and every name
in its ``__all__``: a name is documented in full once, in the module that defines it (its
*home*); a module that re-exports it (a package such as ``zmqruntime.execution``) lists it with
a link there and its docstring's first line. ``tests/test_docs.py`` checks that every module
with an ``__all__`` has a directive and every name of every ``__all__`` is in the built
reference.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import sys
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


def home_of(module_name: str, name: str) -> str:
    """The module where ``module_name.name`` is documented in full."""
    value = getattr(importlib.import_module(module_name), name)
    if not (inspect.isclass(value) or inspect.isfunction(value)):
        return module_name  # constants are documented wherever they are exported
    defined_in = getattr(value, "__module__", None) or ""
    if defined_in.split(".")[0] == "zmqruntime":  # another library's class: documented here
        try:
            defining = importlib.import_module(defined_in)
        except ImportError:
            defining = None
        if defining is not None and name in getattr(defining, "__all__", ()):
            return defined_in
    return module_name


def _directive(value: Any) -> tuple[str, list[str]]:
    if inspect.isclass(value):
        if issubclass(value, BaseException):
            return "autoexception", [":members:"]
        if issubclass(value, enum.Enum):
            return "autoclass", [":members:", ":undoc-members:"]
        return "autoclass", [":members:"]
    if inspect.isfunction(value) or inspect.isbuiltin(value):
        return "autofunction", []
    return "autodata", []


def _summary(value: Any) -> str:
    doc = inspect.getdoc(value) if inspect.isclass(value) or callable(value) else None
    first = (doc or "").strip().split("\n\n")[0].replace("\n", " ")
    return first


class ApiModule(SphinxDirective):
    """``.. api-module:: dotted.module.name``."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        module_name = self.arguments[0]
        module = importlib.import_module(module_name)
        names = list(getattr(module, "__all__", ()))
        lines = [f".. automodule:: {module_name}", ""]
        elsewhere: list[str] = []
        for name in names:
            value = getattr(module, name)
            home = home_of(module_name, name)
            if home != module_name:
                summary = _summary(value)
                elsewhere.append(
                    f"* :py:obj:`{name} <{home}.{name}>`" + (f" — {summary}" if summary else "")
                )
                continue
            directive, options = _directive(value)
            lines.append(f".. {directive}:: {module_name}.{name}")
            lines.extend(f"   {option}" for option in options)
            lines.append("")
        if elsewhere:
            lines.extend(["Exported here, documented where defined:", ""])
            lines.extend(elsewhere)
            lines.append("")
        self.env.note_dependency(module.__file__ or "")
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=module_name), 0, container)
        return container.children


def canonical(target: str) -> str | None:
    """Where a public dotted name of this package is documented, or None.

    ``zmqruntime.ServerLost`` and ``zmqruntime.execution.ServerLost`` are documented as
    ``zmqruntime.errors.ServerLost`` (attributes follow: ``zmqruntime.ExecutionClient.list``).
    """
    parts = target.split(".")
    if parts[0] != "zmqruntime":
        return None
    for cut in range(len(parts) - 1, 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        value = getattr(module, parts[cut], None)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            return None
        home = f"{value.__module__}.{value.__qualname__}"
        return ".".join([home, *parts[cut + 1 :]])
    return None


def resolve_alias(
    app: Sphinx, env: Any, node: Any, contnode: nodes.Element
) -> nodes.Element | None:
    """Resolve a reference to a re-exported name (as docstrings write it) at its home."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    candidates = [target]
    if node.get("py:module"):
        candidates.append(f"{node['py:module']}.{target}")
    if node.get("py:class"):
        candidates.append(f"{node['py:module']}.{node['py:class']}.{target}")
    domain = env.get_domain("py")
    for candidate in candidates:
        home = canonical(candidate)
        if home is None or home == target:
            continue
        found = domain.resolve_any_xref(env, node["refdoc"], app.builder, home, node, contnode)
        if found:
            return found[0][1]
    # A short or misplaced name of this package (``ServerLost``, ``zmqruntime.ChannelClosed``):
    # the one documented object whose name ends with it.
    first = target.split(".")[0]
    if first != "zmqruntime" and first in sys.modules:
        return None  # another library's name
    short = target.removeprefix("zmqruntime.")
    ends = [name for name in domain.objects if name.endswith("." + short)]
    ours = [name for name in ends if name.startswith("zmqruntime.")]
    if len(ours) == 1:
        found = domain.resolve_any_xref(env, node["refdoc"], app.builder, ours[0], node, contnode)
        if found:
            return found[0][1]
    return None


def quiet_in_docstrings(app: Sphinx, domain: Any, node: Any) -> bool | None:
    """Nitpicky for the hand-written pages only: a reference in a docstring (the API pages)
    that does not resolve shows as plain code; one in a guide fails the build."""
    if node.get("refdoc", "").startswith("api/"):
        return True
    return None


def factory_defaults(  # noqa: PLR0917 (the signature of Sphinx's event)
    app: Sphinx, what: str, name: str, obj: Any, options: Any, signature: str | None, ret: Any
) -> tuple[str | None, Any]:
    """An attrs field whose default is built by a factory shows ``= <factory>`` (as a
    dataclass does), not attrs' ``NOTHING`` sentinel."""
    if signature is not None:
        signature = signature.replace("= NOTHING", "= <factory>")
    return signature, ret


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-signature", factory_defaults)
    app.add_directive("api-module", ApiModule)
    app.connect("missing-reference", resolve_alias)
    app.connect("warn-missing-reference", quiet_in_docstrings)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
