"""Batches: several images and items sent as one message (:class:`~zmqruntime.core.messages.
BatchFrame`) with the batch's own metadata, shown by the viewer at once and acknowledged item
by item and as a whole.

The sender side builds the message (:func:`batch_frame`) and checks that it fits the viewer
(:func:`check_fits`, against the limits the viewer reports to the :data:`VIEWER_LIMITS`
request). The viewer side (:func:`show_batch`) checks every entry before its sink sees any:
one entry that is not a valid image or item, or of a kind the sink does not take, fails the
whole batch, and nothing of it is shown. A batch-aware sink (:class:`~zmqruntime.protocols.
BatchSink`) gets it in one ``take_batch`` call; any other sink is called per item, in order,
with the batch's metadata merged under the item's own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeAlias, cast, final

import attrs
import numpy

from zmqruntime.core import codec, wire
from zmqruntime.core.messages import (
    MAX_BATCH_ITEMS,
    AckOutcome,
    ArrayLayout,
    BatchEntry,
    BatchFrame,
    ImageFrame,
    ItemFrame,
)
from zmqruntime.errors import ConfigurationError, InvalidItem, RemoteError
from zmqruntime.protocols import Buffer, ImageSink, ItemSink, JSONObject
from zmqruntime.streaming.item_wire import frame_from_item, item_from_frame
from zmqruntime.streaming.items import Item, Labels, Points, Shapes

if TYPE_CHECKING:
    from zmqruntime.core.client import ZMQClient  # the viewer imports this module, not the client

__all__ = [
    "MAX_BATCH_ITEMS",
    "VIEWER_LIMITS",
    "SentBatch",
    "acks_for",
    "batch_frame",
    "batch_metadata",
    "check_fits",
    "show_batch",
    "viewer_limits",
]

logger = logging.getLogger(__name__)

VIEWER_LIMITS: Final = "zmqruntime.viewer_limits"
"""The built-in request by which a sender learns, before its first batch, how large a batch
the viewer takes: the reply is ``{"backlog_limit": int, "backlog_bytes": int,
"max_batch_items": int}``."""
ENTRY_DEPTH: Final = 2
"""How much deeper an item's metadata sits in a batch's header than a batch's metadata (in
the list of entries, in its entry): it may nest :data:`~zmqruntime.core.wire.MAX_DEPTH` - 2
levels."""
PIXELS: Final = "pixels"
"""The name of an image entry's one array."""

Acked: TypeAlias = tuple[str, AckOutcome, str]
"""The id an ack is for, its outcome and the error text."""
_Array: TypeAlias = numpy.ndarray[Any, Any]


@final
@attrs.frozen
class SentBatch:
    """What :meth:`~zmqruntime.streaming.ImageSender.send_batch` sent: the batch's own id and
    its items' ids, in order; each is acknowledged (and tracked) on its own."""

    batch_id: str
    item_ids: tuple[str, ...]


def batch_frame(
    items: Sequence[_Array | Item],
    metadata: JSONObject,
    item_metadata: Sequence[JSONObject],
    ids: Sequence[str],
    *,
    tracker_key: str = "",
    ack_to: str | None = None,
    copy: bool = False,
) -> BatchFrame:
    """The message that carries ``items`` (arrays or items; their buffers are sent without a
    copy when C-contiguous and ``copy`` is false) under ``ids``: each item's, then the batch's;
    ``TypeError`` for an array the wire cannot carry, ``ValueError`` for an empty batch or one
    of more than :data:`MAX_BATCH_ITEMS`."""
    if not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH_ITEMS} items, not {len(items)}")
    *item_ids, batch_id = ids
    entries, buffers = [], list[Buffer]()
    for item, meta, image_id in zip(items, item_metadata, item_ids, strict=True):
        if isinstance(item, Shapes | Points | Labels):
            frame = frame_from_item(item, image_id=image_id, copy=copy)
            entries.append(
                BatchEntry(image_id=image_id, kind=item.KIND, arrays=frame.arrays, metadata=meta)
            )
            buffers += frame.buffers
            continue
        image = codec.image_from_array(
            numpy.array(item, copy=True) if copy else item, image_id=image_id
        )
        layout = ArrayLayout(name=PIXELS, dtype=image.dtype, shape=image.shape)
        entries.append(BatchEntry(image_id=image_id, arrays=(layout,), metadata=meta))
        buffers.append(image.pixels)
    return BatchFrame(
        batch_id=batch_id,
        entries=tuple(entries),
        buffers=tuple(buffers),
        tracker_key=tracker_key,
        metadata=metadata,
        ack_to=ack_to,
    )


def batch_metadata(
    count: int, metadata: Any, item_metadata: Sequence[Mapping[str, Any]] | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The batch's and each item's metadata as checked JSON objects (sender side)."""
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(
            "send_batch(items, metadata): metadata is the batch's own mapping; per-item "
            "metadata goes in item_metadata=[...] (send_batch(images, metadatas) changed)"
        )
    metas = [{}] * count if item_metadata is None else [dict(meta) for meta in item_metadata]
    if len(metas) != count:
        raise ValueError(f"{count} items but {len(metas)} metadata mappings")
    meta = dict(metadata) if metadata else {}
    codec.check_json_object(meta, "metadata")
    for index, checked in enumerate(metas):
        # An item's metadata sits 2 levels deeper in the header than the batch's.
        if checked and (problem := wire.json_problem(checked, depth=ENTRY_DEPTH)) is not None:
            raise TypeError(f"item_metadata[{index}]{problem}")
    return meta, metas


def viewer_limits(client: ZMQClient, timeout: float) -> Any:
    """Ask the viewer for its :data:`VIEWER_LIMITS` (raises like ``ZMQClient.call``, and
    ``ConfigurationError`` for a viewer that does not know the request)."""
    try:
        return client.call(VIEWER_LIMITS, timeout=timeout)
    except RemoteError as exc:
        viewer = client.endpoint.data_url
        raise ConfigurationError(
            f"the viewer at {viewer} takes no batches: {exc}; upgrade it"
        ) from exc


def batch_bytes(frame: BatchFrame) -> int:
    """The bytes of all the batch's arrays."""
    return sum(memoryview(buffer).nbytes for buffer in frame.buffers)


def _too_large(frame: BatchFrame, limits: Mapping[str, Any]) -> str | None:
    count, size = len(frame.entries), batch_bytes(frame)
    if count > limits["backlog_limit"]:
        return f"{count} items exceed the viewer's backlog_limit of {limits['backlog_limit']}"
    if size > limits["backlog_bytes"]:
        return f"{size} bytes exceed the viewer's backlog_bytes of {limits['backlog_bytes']}"
    return None


def check_fits(frame: BatchFrame, limits: Any, viewer: str) -> None:
    """Raise ``ValueError`` if the batch does not fit the viewer's backlog (``limits``: its
    reply to :data:`VIEWER_LIMITS`)."""
    keys = ("backlog_limit", "backlog_bytes")
    if not isinstance(limits, dict) or not all(type(limits.get(key)) is int for key in keys):
        raise ValueError(f"the viewer at {viewer} reported no usable limits: {limits!r:.200}")
    if (problem := _too_large(frame, limits)) is not None:
        raise ValueError(f"batch refused: {problem} at {viewer}; send it as smaller batches")


def acks_for(
    frame: ImageFrame | ItemFrame | BatchFrame, outcome: AckOutcome, error: str
) -> list[Acked]:
    """The same outcome for every id of a message: one, or a batch's items and then itself."""
    if isinstance(frame, BatchFrame):
        ids = [entry.image_id for entry in frame.entries] + [frame.batch_id]
        return [(image_id, outcome, error) for image_id in ids]
    return [(frame.image_id, outcome, error)]


def _value(sink: ImageSink, entry: BatchEntry, buffers: Sequence[Buffer], whole: bool) -> Any:
    """The entry's image (a read-only array) or item, checked; ``InvalidItem`` if the sink
    cannot take it (``whole``: the sink takes the batch in one call)."""
    if entry.kind is None:
        (layout,) = entry.arrays
        return numpy.frombuffer(memoryview(buffers[0]), dtype=layout.dtype).reshape(layout.shape)
    kind = entry.kind.value
    takes = whole or callable(getattr(sink, "take_item", None))
    if kind not in getattr(sink, "item_kinds", ()) or not takes:
        raise InvalidItem(
            f"this viewer's sink ({type(sink).__name__}) takes no {kind} items: give the viewer "
            f"a sink with {'' if whole else 'take_item() and '}{kind!r} in its item_kinds"
        )
    message = ItemFrame(
        image_id=entry.image_id, kind=entry.kind, arrays=entry.arrays, buffers=tuple(buffers)
    )
    return item_from_frame(message)


def _refused(frame: BatchFrame, index: int, reason: str) -> list[Acked]:
    bad = frame.entries[index].image_id
    logger.warning("viewer refused batch %r: item %r: %s", frame.batch_id, bad, reason)
    whole = f"batch {frame.batch_id!r} was not shown: its item {index} ({bad!r}) failed: {reason}"
    return [
        (entry.image_id, AckOutcome.FAILED, reason if number == index else whole)
        for number, entry in enumerate(frame.entries)
    ] + [(frame.batch_id, AckOutcome.FAILED, whole)]


def show_batch(sink: ImageSink, frame: BatchFrame, limits: Mapping[str, int]) -> list[Acked]:
    """Check the batch, hand it to ``sink`` and return its acks: each item's, then the batch's
    (sink thread). ``limits``: the viewer's ``backlog_limit`` and ``backlog_bytes``."""
    if (problem := _too_large(frame, limits)) is not None:
        error = f"batch refused: {problem}; send it as smaller batches"
        logger.warning("viewer refused batch %r: %s", frame.batch_id, problem)
        return acks_for(frame, AckOutcome.FAILED, error)
    take_batch = getattr(sink, "take_batch", None)
    whole = callable(take_batch)
    values, start = [], 0
    for index, entry in enumerate(frame.entries):
        stop = start + len(entry.arrays)
        try:
            values.append(_value(sink, entry, frame.buffers[start:stop], whole))
        except Exception as exc:  # InvalidItem, or anything else hostile input may cause
            return _refused(frame, index, f"{type(exc).__name__}: {exc}")
        start = stop
    if take_batch is not None and whole:
        try:
            take_batch(values, [entry.metadata for entry in frame.entries], frame.metadata)
        except Exception as exc:
            logger.exception("sink failed on batch %r", frame.batch_id)
            return acks_for(frame, AckOutcome.FAILED, f"{type(exc).__name__}: {exc}")
        return acks_for(frame, AckOutcome.PROCESSED, "")
    acked = [
        _show_one(sink, value, {**frame.metadata, **entry.metadata}, entry.image_id)
        for value, entry in zip(values, frame.entries, strict=True)
    ]
    failed = [error for _, outcome, error in acked if outcome is AckOutcome.FAILED]
    if not failed:
        return [*acked, (frame.batch_id, AckOutcome.PROCESSED, "")]
    error = f"{len(failed)} of {len(acked)} items failed; the first: {failed[0]}"
    return [*acked, (frame.batch_id, AckOutcome.FAILED, error)]


def _show_one(sink: ImageSink, value: Any, metadata: JSONObject, image_id: str) -> Acked:
    try:
        if isinstance(value, numpy.ndarray):
            sink(value, metadata)
        else:
            cast(ItemSink, sink).take_item(value, metadata)  # checked by _value
    except Exception as exc:
        logger.exception("sink failed on batch item %r", image_id)
        return image_id, AckOutcome.FAILED, f"{type(exc).__name__}: {exc}"
    return image_id, AckOutcome.PROCESSED, ""
