"""Write the Sphinx inventories (objects.inv, version 2) that intersphinx reads offline.

The build machines reach only the package index, never docs.python.org or the other projects'
sites, so ``conf.py`` points intersphinx at the small files in ``_inventories/`` that this
script writes: the external names these pages and the docstrings refer to (as Sphinx spells
them in signatures, e.g. ``concurrent.futures._base.Future``), each with its real address on
the project's published documentation. Run ``python docs/make_inventories.py`` after adding a
reference to a name that is not listed; ``tests/test_docs.py`` checks the files match.
"""

from __future__ import annotations

import zlib
from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "_inventories"

_PY_BUILTIN_TYPES = (
    "bool bytearray bytes dict float frozenset int list memoryview object set str tuple type"
)
_PY_EXCEPTIONS = (
    "BaseException Exception KeyboardInterrupt KeyError OSError RuntimeError TimeoutError "
    "TypeError ValueError"
)

#: project -> [(name, role, page#anchor)], relative to the project's address in conf.py
NAMES: dict[str, list[tuple[str, str, str]]] = {
    "python": [
        *(
            (name, "py:class", f"library/functions.html#{name}")
            for name in _PY_BUILTIN_TYPES.split()
        ),
        *(
            (name, "py:exception", f"library/exceptions.html#{name}")
            for name in _PY_EXCEPTIONS.split()
        ),
        ("None", "py:data", "library/constants.html#None"),
        *(
            (
                f"collections.abc.{name}",
                "py:class",
                f"library/collections.abc.html#collections.abc.{name}",
            )
            for name in (
                "Awaitable",
                "Buffer",
                "Callable",
                "Iterable",
                "Iterator",
                "Mapping",
                "Sequence",
            )
        ),
        (
            "typing_extensions.Buffer",
            "py:class",
            "library/collections.abc.html#collections.abc.Buffer",
        ),
        *(
            (f"collections.{name}", "py:class", f"library/collections.html#collections.{name}")
            for name in ("Counter", "OrderedDict", "deque")
        ),
        ("argparse.ArgumentParser", "py:class", "library/argparse.html#argparse.ArgumentParser"),
        ("argparse.Namespace", "py:class", "library/argparse.html#argparse.Namespace"),
        (
            "asyncio.AbstractEventLoop",
            "py:class",
            "library/asyncio-eventloop.html#asyncio.AbstractEventLoop",
        ),
        (
            "asyncio.events.AbstractEventLoop",
            "py:class",
            "library/asyncio-eventloop.html#asyncio.AbstractEventLoop",
        ),
        ("asyncio.wrap_future", "py:function", "library/asyncio-future.html#asyncio.wrap_future"),
        (
            "concurrent.futures.Executor",
            "py:class",
            "library/concurrent.futures.html#concurrent.futures.Executor",
        ),
        (
            "concurrent.futures._base.Executor",
            "py:class",
            "library/concurrent.futures.html#concurrent.futures.Executor",
        ),
        (
            "concurrent.futures.Future",
            "py:class",
            "library/concurrent.futures.html#concurrent.futures.Future",
        ),
        (
            "concurrent.futures._base.Future",
            "py:class",
            "library/concurrent.futures.html#concurrent.futures.Future",
        ),
        (
            "concurrent.futures.ProcessPoolExecutor",
            "py:class",
            "library/concurrent.futures.html#concurrent.futures.ProcessPoolExecutor",
        ),
        (
            "concurrent.futures.wait",
            "py:function",
            "library/concurrent.futures.html#concurrent.futures.wait",
        ),
        ("itertools.count", "py:function", "library/itertools.html#itertools.count"),
        ("logging", "py:module", "library/logging.html#module-logging"),
        ("os.PathLike", "py:class", "library/os.html#os.PathLike"),
        ("pathlib.Path", "py:class", "library/pathlib.html#pathlib.Path"),
        ("pickle", "py:module", "library/pickle.html#module-pickle"),
        ("pickle.PickleBuffer", "py:class", "library/pickle.html#pickle.PickleBuffer"),
        ("socket.socket", "py:class", "library/socket.html#socket.socket"),
        ("sqlite3", "py:module", "library/sqlite3.html#module-sqlite3"),
        ("sqlite3.Connection", "py:class", "library/sqlite3.html#sqlite3.Connection"),
        ("threading.Event", "py:class", "library/threading.html#threading.Event"),
        ("threading.Lock", "py:class", "library/threading.html#threading.Lock"),
        ("_thread.allocate_lock", "py:class", "library/threading.html#threading.Lock"),
        ("threading.Thread", "py:class", "library/threading.html#threading.Thread"),
        ("typing.Protocol", "py:class", "library/typing.html#typing.Protocol"),
    ],
    "numpy": [
        ("numpy.ndarray", "py:class", "reference/generated/numpy.ndarray.html#numpy.ndarray"),
        ("numpy.dtype", "py:class", "reference/generated/numpy.dtype.html#numpy.dtype"),
        ("numpy.save", "py:function", "reference/generated/numpy.save.html#numpy.save"),
        ("numpy.uint16", "py:class", "reference/arrays.scalars.html#numpy.uint16"),
    ],
    "pyzmq": [
        ("zmq.Context", "py:class", "api/zmq.html#zmq.Context"),
        ("zmq.sugar.context.Context", "py:class", "api/zmq.html#zmq.Context"),
        ("zmq.Socket", "py:class", "api/zmq.html#zmq.Socket"),
        ("zmq.sugar.socket.Socket", "py:class", "api/zmq.html#zmq.Socket"),
        ("zmq.Frame", "py:class", "api/zmq.html#zmq.Frame"),
        ("zmq.sugar.frame.Frame", "py:class", "api/zmq.html#zmq.Frame"),
        ("zmq.Poller", "py:class", "api/zmq.html#zmq.Poller"),
        (
            "zmq.auth.thread.ThreadAuthenticator",
            "py:class",
            "api/zmq.auth.thread.html#zmq.auth.thread.ThreadAuthenticator",
        ),
        (
            "zmq.auth.base.Authenticator",
            "py:class",
            "api/zmq.auth.html#zmq.auth.base.Authenticator",
        ),
        ("zmq.ZMQError", "py:exception", "api/zmq.html#zmq.ZMQError"),
    ],
    "attrs": [
        ("attrs.define", "py:function", "api.html#attrs.define"),
        ("attrs.frozen", "py:function", "api.html#attrs.frozen"),
        ("attrs.field", "py:function", "api.html#attrs.field"),
        ("attrs.evolve", "py:function", "api.html#attrs.evolve"),
    ],
    "napari": [
        ("napari.Viewer", "py:class", "api/napari.Viewer.html#napari.Viewer"),
        ("napari.viewer.Viewer", "py:class", "api/napari.Viewer.html#napari.Viewer"),
        (
            "napari.components.ViewerModel",
            "py:class",
            "api/napari.components.ViewerModel.html#napari.components.ViewerModel",
        ),
    ],
    "distributed": [
        ("distributed.Client", "py:class", "api.html#distributed.Client"),
        ("distributed.LocalCluster", "py:class", "api.html#distributed.LocalCluster"),
    ],
}

PROJECTS = {
    "python": ("Python", "3"),
    "numpy": ("NumPy", "stable"),
    "pyzmq": ("PyZMQ", "latest"),
    "attrs": ("attrs", "stable"),
    "napari": ("napari", "stable"),
    "distributed": ("Dask.distributed", "stable"),
}


def render(key: str) -> bytes:
    """The inventory file of one project, byte for byte."""
    project, version = PROJECTS[key]
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    ).encode()
    lines = "".join(f"{name} {role} 1 {uri} -\n" for name, role, uri in sorted(NAMES[key]))
    return header + zlib.compress(lines.encode(), 9)


def main() -> None:
    FOLDER.mkdir(exist_ok=True)
    for key in NAMES:
        (FOLDER / f"{key}.inv").write_bytes(render(key))


if __name__ == "__main__":
    main()
