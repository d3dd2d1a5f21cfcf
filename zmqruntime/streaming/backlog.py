"""What a viewer holds between receiving and acknowledging: the messages in its queue
(images, items, batches; and commands, held apart from the backlog), their size, item count
and stream, and what latest-frame mode (:class:`StreamMode`) replaces; and the viewer's
:class:`StreamingStatistics`."""

from __future__ import annotations

import collections
import enum
import logging
from typing import TypeAlias, cast, final

import attrs

from zmqruntime.core.messages import BatchFrame, CommandFrame, ImageFrame, ItemFrame

__all__ = [
    "Frame",
    "Queued",
    "StreamMode",
    "StreamingStatistics",
    "item_count",
    "pixel_bytes",
    "stream_of",
    "take_next",
]

logger = logging.getLogger(__name__)


class StreamMode(enum.Enum):
    """How a viewer treats images that arrive faster than its sink shows them."""

    ALL = "all"
    """Show every image, in order."""
    LATEST = "latest"
    """Live view: per stream (tracker key), show only the newest waiting image; the others
    are acknowledged as skipped, so trackers stay exact."""


@final
@attrs.frozen(kw_only=True)
class StreamingStatistics:
    """What a viewer has done with the images it received. ``backlog``/``backlog_bytes``: images
    (and their pixel bytes) received and not yet acknowledged, the one in the sink included;
    ``peak_*`` their highest values since the start."""

    received: int
    processed: int
    skipped: int
    failed: int
    waiting: int
    backlog: int
    backlog_bytes: int
    peak_backlog: int
    peak_backlog_bytes: int


Frame: TypeAlias = ImageFrame | ItemFrame | BatchFrame
Queued: TypeAlias = Frame | CommandFrame


def pixel_bytes(frame: Frame) -> int:
    """The bytes of the arrays the message carries."""
    if isinstance(frame, ImageFrame):
        return memoryview(frame.pixels).nbytes
    return sum(memoryview(buffer).nbytes for buffer in frame.buffers)


def stream_of(frame: Frame) -> tuple[str, str]:
    """What a newer frame replaces in latest-frame mode: the same stream's same kind (a
    batch: a whole older batch)."""
    if isinstance(frame, BatchFrame):
        return frame.tracker_key, "batch"
    return frame.tracker_key, frame.kind.value if isinstance(frame, ItemFrame) else "image"


def item_count(frame: Frame) -> int:
    """Images and items in the message."""
    return len(frame.entries) if isinstance(frame, BatchFrame) else 1


def take_next(waiting: collections.deque[Queued], mode: StreamMode) -> tuple[Queued, list[Frame]]:
    """Take the next image, item or command to show out of ``waiting`` and, in latest-frame
    mode, the older frames of its stream that it replaces (taken out too, to be acknowledged
    as skipped): those up to the next command, never past one."""
    first = waiting.popleft()
    if mode is StreamMode.ALL or isinstance(first, CommandFrame):
        return first, []
    key = stream_of(first)
    cut = next((i for i, f in enumerate(waiting) if isinstance(f, CommandFrame)), len(waiting))
    same: list[Frame] = [first]
    rest: list[Frame] = []
    for _ in range(cut):  # none of these is a command
        frame = cast(Frame, waiting.popleft())
        (same if stream_of(frame) == key else rest).append(frame)
    waiting.extendleft(reversed(rest))
    return same[-1], same[:-1]
