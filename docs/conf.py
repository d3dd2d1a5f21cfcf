"""Sphinx configuration: MyST pages, the API reference from the docstrings, offline intersphinx.

Build (what ``.ci/run`` runs): ``sphinx-build -W --keep-going -b html docs OUT``, with OUT a
folder outside docs/ (or docs/_build, which git ignores).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the checkout's zmqruntime, installed or not
sys.path.insert(0, str(HERE / "_ext"))

import zmqruntime  # noqa: E402

project = "zmqruntime"
author = "zmqruntime developers"
copyright = "zmqruntime developers"
release = version = zmqruntime.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "api_module",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "**/_build"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# The API reference: each public module's names, documented where they are defined.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_class_signature = "mixed"
python_maximum_signature_line_length = 96
add_module_names = False
# A reference that does not resolve fails the build on the hand-written pages (a renamed
# function breaks it); in docstrings it shows as plain code (see _ext/api_module.py).
nitpicky = True

# Intersphinx without the network. CI and this project's machines reach only the package
# index, so the projects' own objects.inv files cannot be downloaded at build time (and a
# build that waits for them, or warns, is not reproducible). The inventories used are small
# local files in _inventories/, written by `python docs/make_inventories.py` from the list of
# external names these pages and docstrings refer to, each with its real URL on the project's
# site: links go to the real pages, and the build needs nothing but the checkout.
INVENTORIES = HERE / "_inventories"
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", str(INVENTORIES / "python.inv")),
    "numpy": ("https://numpy.org/doc/stable/", str(INVENTORIES / "numpy.inv")),
    "pyzmq": ("https://pyzmq.readthedocs.io/en/latest/", str(INVENTORIES / "pyzmq.inv")),
    "attrs": ("https://www.attrs.org/en/stable/", str(INVENTORIES / "attrs.inv")),
    "napari": ("https://napari.org/stable/", str(INVENTORIES / "napari.inv")),
    "distributed": (
        "https://distributed.dask.org/en/stable/",
        str(INVENTORIES / "distributed.inv"),
    ),
}
intersphinx_timeout = 5
intersphinx_disabled_reftypes = ["std:doc"]

html_theme = "alabaster"
html_title = f"zmqruntime {release}"
html_static_path: list[str] = []
