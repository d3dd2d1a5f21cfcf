"""Execution ids at the command line: a unique prefix of at least :data:`MIN_PREFIX` characters
stands for a whole id wherever a command takes one.

Servers resolve whole ids only, so the command line resolves a prefix the server does not know
from what it can list: the executions the server runs now (its summary) and the ids this user
submitted with ``zmqruntime submit`` — the last :data:`LOG_LIMIT`, kept in
``submitted-ids.log`` in the runtime folder (under ``--ipc-root``, else the home folder).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from zmqruntime.cli.display import CLIError
from zmqruntime.config import ZMQConfig
from zmqruntime.errors import ConfigurationError, ErrorCode, RemoteError

if TYPE_CHECKING:
    from zmqruntime.execution import ExecutionClient

__all__ = ["LOG_LIMIT", "MIN_PREFIX", "ask", "remember", "resolve"]

MIN_PREFIX = 4
"""The shortest prefix that is resolved."""
LOG_LIMIT = 1000
"""Submitted ids the log keeps (it is cut back to these once it holds twice as many)."""
_LOG_NAME = "submitted-ids.log"
_LINE_BYTES = 33  # a uuid4 hex id and its newline: every id ``submit`` makes
_T = TypeVar("_T")
logger = logging.getLogger(__name__)


def _log(config: ZMQConfig, *, create: bool) -> Path:
    from zmqruntime.core.credentials import runtime_directory  # noqa: PLC0415 - lazy: --help

    return runtime_directory(config, create=create) / _LOG_NAME


def remember(config: ZMQConfig, execution_id: str) -> None:
    """Add ``execution_id`` to this user's log of submitted ids; a log that cannot be written
    is skipped (logged at debug level), never an error."""
    try:
        path = _log(config, create=True)
        with path.open("a", encoding="utf-8") as log:  # one short append: whole lines
            log.write(execution_id + "\n")
        if path.stat().st_size > 2 * LOG_LIMIT * _LINE_BYTES:
            kept = path.read_text(encoding="utf-8").splitlines()[-LOG_LIMIT:]
            temporary = path.with_name(f".{_LOG_NAME}.{os.getpid()}")
            temporary.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
            os.replace(temporary, path)
    except (OSError, ValueError, ConfigurationError) as exc:
        logger.debug("cannot log the submitted id %s: %s", execution_id, exc)


def _submitted(config: ZMQConfig) -> list[str]:
    try:
        with _log(config, create=False).open(encoding="utf-8", errors="replace") as log:
            return log.read(4 * LOG_LIMIT * _LINE_BYTES).split()
    except OSError:
        return []


def resolve(client: ExecutionClient, prefix: str, timeout: float) -> str | None:
    """The one id starting with ``prefix`` among the server's running executions and the ids
    this user submitted; None when there is none or ``prefix`` is shorter than
    :data:`MIN_PREFIX`. Raises :class:`CLIError` when there are several."""
    if len(prefix) < MIN_PREFIX:
        return None
    running = client.summary(timeout=timeout).engine.values()
    known = {*_submitted(client.client.config), *(i for ids in running for i in ids)}
    matches = sorted(i for i in known if i.startswith(prefix))
    if len(matches) > 1:
        shown = ", ".join(matches[:3]) + (", ..." if len(matches) > 3 else "")
        raise CLIError(f"{len(matches)} execution ids start with {prefix!r} ({shown}); give more")
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
