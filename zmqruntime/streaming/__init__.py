"""Tier 3: stream numpy images, and :class:`Shapes`, :class:`Points` and :class:`Labels` items,
one by one or as batches, to a viewer process (:class:`ImageSender` to
:class:`StreamingServer`), with an acknowledgement per item and per batch;
:class:`VisualizerProcessManager` launches, health-checks and stops that process;
:class:`StreamingServerWidget` is the napari plugin's dock widget serving one inside napari.

Names load on first use: a viewer process imports only its server and sink.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zmqruntime.lazy import lazy_exports

__all__ = [
    "MAX_BATCH_ITEMS",
    "STANDARD_COMMANDS",
    "BatchSink",
    "CommandSpec",
    "DirectorySink",
    "ImageSender",
    "Labels",
    "NapariSink",
    "Points",
    "QtMainThreadCall",
    "SentBatch",
    "ShapeType",
    "Shapes",
    "StreamMode",
    "StreamingServer",
    "StreamingServerWidget",
    "StreamingStatistics",
    "ViewerCommands",
    "VisualizerProcessManager",
    "on_qt_main_thread",
    "python_module_spec",
    "sink_from_spec",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "zmqruntime.gui_thread": ("QtMainThreadCall", "on_qt_main_thread"),
        "zmqruntime.protocols": ("BatchSink",),
        "zmqruntime.streaming.batches": ("MAX_BATCH_ITEMS", "SentBatch"),
        "zmqruntime.streaming.commands": ("STANDARD_COMMANDS", "ViewerCommands"),
        "zmqruntime.streaming.items": ("Labels", "Points", "Shapes", "ShapeType"),
        "zmqruntime.streaming.napari_plugin": ("StreamingServerWidget",),
        "zmqruntime.streaming.process_manager": (
            "CommandSpec",
            "VisualizerProcessManager",
            "python_module_spec",
        ),
        "zmqruntime.streaming.sender": ("ImageSender",),
        "zmqruntime.streaming.server": ("StreamingServer", "StreamingStatistics", "StreamMode"),
        "zmqruntime.streaming.sinks": ("DirectorySink", "NapariSink", "sink_from_spec"),
    },
)

# For type checkers only: at run time each name is loaded on first use (lazy_exports above).
if TYPE_CHECKING:
    from zmqruntime.gui_thread import QtMainThreadCall, on_qt_main_thread
    from zmqruntime.protocols import BatchSink
    from zmqruntime.streaming.batches import MAX_BATCH_ITEMS, SentBatch
    from zmqruntime.streaming.commands import STANDARD_COMMANDS, ViewerCommands
    from zmqruntime.streaming.items import Labels, Points, Shapes, ShapeType
    from zmqruntime.streaming.napari_plugin import StreamingServerWidget
    from zmqruntime.streaming.process_manager import (
        CommandSpec,
        VisualizerProcessManager,
        python_module_spec,
    )
    from zmqruntime.streaming.sender import ImageSender
    from zmqruntime.streaming.server import StreamingServer, StreamingStatistics, StreamMode
    from zmqruntime.streaming.sinks import DirectorySink, NapariSink, sink_from_spec
