"""The two messages of execution listings (:meth:`ExecutionClient.list
<zmqruntime.ExecutionClient.list>`): :mod:`zmqruntime.core.messages` re-exports them with the
others."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar, Final, final

import attrs

from zmqruntime.core.vocabulary import (
    ControlMessageType,
    ExecutionRecord,
    ExecutionStatus,
    ResponseType,
)

__all__ = ["MAX_LISTED", "ListRequest", "RecordList"]

MAX_LISTED: Final = 1_000
"""Records in one page of a listing, at most."""


@final
@attrs.frozen(kw_only=True)
class ListRequest:
    """Asks an execution server for the records it holds, oldest submission first: those with
    one of ``statuses`` (all when empty), every one of ``labels``, an id starting with
    ``prefix``, submitted after the execution ``after`` (the last of the previous page), at
    most ``limit`` (1 to :data:`MAX_LISTED`). A client that is not an admin sees its own."""

    TYPE: ClassVar[ControlMessageType] = ControlMessageType.LIST
    request_id: int
    statuses: tuple[ExecutionStatus, ...] = ()
    labels: dict[str, str] = attrs.field(factory=dict)
    prefix: str = ""
    after: str | None = None
    limit: int = attrs.field(
        default=100, validator=[attrs.validators.ge(1), attrs.validators.le(MAX_LISTED)]
    )

    @classmethod
    def query(
        cls,
        *,
        status: Iterable[ExecutionStatus] = (),
        labels: Mapping[str, str] | None = None,
        prefix: str = "",
        after: str | None = None,
        limit: int = 100,
    ) -> ListRequest:
        """The request of ``ExecutionClient.list``'s keywords (either client's)."""
        return cls(
            request_id=0,
            statuses=tuple(status),
            labels=dict(labels or {}),
            prefix=prefix,
            after=after,
            limit=limit,
        )


@final
@attrs.frozen(kw_only=True)
class RecordList:
    """Answers :class:`ListRequest`: one page of records, and the id to ask for the next page
    after (``next_after``; None: this was the last)."""

    TYPE: ClassVar[ResponseType] = ResponseType.RECORDS
    request_id: int
    records: tuple[ExecutionRecord, ...] = ()
    next_after: str | None = None
