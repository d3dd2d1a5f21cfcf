"""The command line: ``zmqruntime serve | submit | status | view | demo``."""

from zmqruntime.cli.main import main

__all__ = ["main"]
