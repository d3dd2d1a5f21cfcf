"""The ``zmqruntime`` command line (also ``python -m zmqruntime``): :func:`main` runs it.

Subcommands are registered in one table, :data:`zmqruntime.cli.parser.COMMANDS`; their
handlers live in :mod:`zmqruntime.cli.commands` (an execution server's) and
:mod:`zmqruntime.cli.tools` (viewer, keys, demo). Every error a person can cause — nothing
listening, a wrong port, bad or too deep JSON, an unknown executor path, a value out of range —
ends in one line on stderr (``zmqruntime: …``) and a non-zero exit code, never a traceback; so
does a bug in here (``--log-level debug`` adds its traceback). Output uses rich (the ``cli``
extra) when it is installed and plain text otherwise; ``--json`` gives machine-readable output.
The exit codes are listed in ``zmqruntime --help``.
"""

from __future__ import annotations

import logging

from zmqruntime.cli import address, display
from zmqruntime.cli.display import CLIError
from zmqruntime.cli.parser import build_parser

__all__ = ["CLIError", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = None
    try:
        args = display.parse_args(build_parser(), argv)
        logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
        return int(args.handler(args))
    except (Exception, KeyboardInterrupt) as exc:
        where = address.where(args) if args is not None and "port" in args else None  # demo: None
        return display.report(exc, where)
