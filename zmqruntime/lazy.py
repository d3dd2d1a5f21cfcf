"""Names a package exports but imports only when first asked for (PEP 562).

``import zmqruntime.streaming`` then costs nothing beyond the package itself, and a process
that needs one piece (the viewer: the server and a sink) loads only that piece's modules.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, tuple[str, ...]], hint: str = ""
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, which exports the names listed
    per module in ``exports``. A name is imported from its module on first use and then kept
    in the package; others raise AttributeError, followed by ``hint`` (so ``from package
    import submodule`` still imports the submodule)."""
    module_of = {name: module for module, names in exports.items() for name in names}

    def get_attribute(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}{hint}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def names() -> list[str]:
        return sorted({*vars(sys.modules[package]), *module_of})

    return get_attribute, names
