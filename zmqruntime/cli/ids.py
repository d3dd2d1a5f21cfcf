"""Execution ids at the command line: a unique prefix of at least :data:`MIN_PREFIX` characters
stands for a whole id wherever a command takes one. The server is asked for the whole text
first; when it knows no such execution, it lists the ids starting with it
(:meth:`ExecutionClient.list <zmqruntime.ExecutionClient.list>`, this user's own unless an
admin), and the one that does stands for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from zmqruntime.cli.display import CLIError
from zmqruntime.errors import ErrorCode, RemoteError

# For annotations only: the execution tier is imported when a command runs (see address.py).
if TYPE_CHECKING:
    from zmqruntime.execution import ExecutionClient

__all__ = ["MIN_PREFIX", "ask", "resolve"]

MIN_PREFIX = 4
"""The shortest prefix that is resolved."""
_T = TypeVar("_T")


def resolve(client: ExecutionClient, prefix: str, timeout: float) -> str | None:
    """The one id the server holds that starts with ``prefix``; None when there is none or
    ``prefix`` is shorter than :data:`MIN_PREFIX`. Raises :class:`CLIError` when there are
    several."""
    if len(prefix) < MIN_PREFIX:
        return None
    matches = [r.execution_id for r in client.list(prefix=prefix, limit=4, timeout=timeout).records]
    if len(matches) > 1:
        shown = ", ".join(matches[:3]) + (", ..." if len(matches) > 3 else "")
        raise CLIError(f"several execution ids start with {prefix!r} ({shown}); give more")
    return matches[0] if matches else None


def ask(
    client: ExecutionClient, text: str, call: Callable[[str], _T], timeout: float
) -> tuple[str, _T]:
    """``call(text)``, or if the server knows no execution ``text``, ``call`` of the one id
    ``text`` is a prefix of (see :func:`resolve`); returns the id used and the answer. The
    server's refusal stands when no id matches."""
    try:
        return text, call(text)
    except RemoteError as exc:
        if exc.code is not ErrorCode.NOT_FOUND:
            raise
        found = resolve(client, text, timeout)
        if found is None or found == text:
            raise
        return found, call(found)
