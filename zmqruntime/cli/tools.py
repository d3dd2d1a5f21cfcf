"""The commands that need no execution server: ``view`` (a viewer process), ``keygen`` (CURVE
keys) and ``demo``. Each takes the parsed options and returns the exit code."""

from __future__ import annotations

import argparse
from pathlib import Path

from zmqruntime.cli import address, display
from zmqruntime.cli.display import CLIError, answer, write

__all__ = ["cmd_demo", "cmd_keygen", "cmd_view"]


def cmd_view(args: argparse.Namespace) -> int:
    """Run a viewer that hands what it receives to ``--sink``; a line says when it is ready."""
    from zmqruntime.streaming import StreamingServer  # noqa: PLC0415 - lazy
    from zmqruntime.streaming.__main__ import serve_viewer  # noqa: PLC0415 - lazy
    from zmqruntime.streaming.sinks import sink_from_spec  # noqa: PLC0415 - lazy

    kind, _, folder = args.sink.partition(":")
    if not (kind == "napari" or (kind == "npy" and folder)):
        raise CLIError(f"--sink must be npy:DIR or napari, not {args.sink!r}")
    if kind == "napari":
        display.check_napari()
    else:
        display.writable_folder(Path(folder), "--sink")
    try:
        sink = sink_from_spec(args.sink)
    except ValueError as exc:  # napari that cannot be imported
        raise CLIError(str(exc)) from None
    server = StreamingServer.bind(address.endpoint(args, client=False), sink)

    def ready() -> None:
        where = f"port {server.port_number} ({address.mode(args).value})"  # right for --port 0
        write(f"viewing {args.sink} on {where}; Ctrl-C stops")

    serve_viewer(server, ready)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a CURVE key pair (refusing to replace one without ``--force``)."""
    from zmqruntime.core.security import write_curve_keypair  # noqa: PLC0415 - lazy

    paths = [Path(args.directory, f"{args.name}{suffix}") for suffix in (".key", ".key_secret")]
    existing = [path for path in paths if path.exists() or path.is_symlink()]
    if existing and not args.force:
        raise CLIError(f"{existing[0]} already exists; --force replaces the key pair")
    try:
        public, secret = write_curve_keypair(Path(args.directory), args.name)
    except OSError as exc:
        raise CLIError(f"cannot write keys into {args.directory}: {exc}") from None
    human = f"public key: {public}\nsecret key: {secret} (keep it private)"
    answer(args, {"public": str(public), "secret": str(secret)}, human)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the end-to-end demo."""
    from zmqruntime.cli.demo import run_demo  # noqa: PLC0415 - lazy

    return run_demo(tasks=args.tasks, out=Path(args.out), use_napari=args.napari)
