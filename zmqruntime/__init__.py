"""zmqruntime: a generic ZeroMQ runtime for running work in another process or host.

Tiers: :mod:`zmqruntime.core` is the transport, :mod:`zmqruntime.execution` runs tasks,
:mod:`zmqruntime.streaming` sends images to viewers, :mod:`zmqruntime.cli` is the command line;
extension points are the Protocols in :mod:`zmqruntime.protocols`.

This top level holds the seed's names and the headline classes; everything else is imported
from its module. Names load on first use, so ``import zmqruntime.core.codec`` stays free of zmq.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zmqruntime.lazy import lazy_exports

__version__ = "0.1.0"

__all__ = [
    "AckChannel",
    "AddressInUseError",
    "ClientCurve",
    "ConfigurationError",
    "ControlMessageType",
    "CurveKeyPair",
    "Endpoint",
    "ExecutionClient",
    "ExecutionRecord",
    "ExecutionServer",
    "ExecutionStatus",
    "GlobalQueueTrackerRegistry",
    "ImageSender",
    "ImageSink",
    "LaunchSpec",
    "MessageFields",
    "PickleSerializer",
    "ProtocolError",
    "QueueTracker",
    "RemoteError",
    "RequestHandler",
    "ResponseType",
    "SafeSerializer",
    "ServerCurve",
    "ServerLost",
    "SocketPair",
    "StreamingServer",
    "TaskCancelled",
    "TaskContext",
    "TaskExecutor",
    "TaskFailed",
    "TaskSerializer",
    "TransportMode",
    "WorkerBackend",
    "WorkerPool",
    "ZMQClient",
    "ZMQConfig",
    "ZMQRuntimeError",
    "ZMQServer",
    "ZMQTimeoutError",
    "__version__",
    "generate_curve_keypair",
    "get_ipc_socket_path",
    "get_zmq_transport_url",
    "on_qt_main_thread",
]

# Where each name lives; __getattr__ imports the module the first time a name is asked for.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "zmqruntime.config": ("TransportMode", "ZMQConfig"),
    "zmqruntime.errors": (
        "AddressInUseError",
        "ConfigurationError",
        "ProtocolError",
        "RemoteError",
        "ServerLost",
        "TaskCancelled",
        "TaskFailed",
        "ZMQRuntimeError",
        "ZMQTimeoutError",
    ),
    "zmqruntime.protocols": (
        "ImageSink",
        "LaunchSpec",
        "RequestHandler",
        "TaskContext",
        "TaskExecutor",
        "TaskSerializer",
        "WorkerBackend",
    ),
    "zmqruntime.core.messages": (
        "ControlMessageType",
        "ExecutionRecord",
        "ExecutionStatus",
        "MessageFields",
        "ResponseType",
    ),
    "zmqruntime.core.transport": ("get_ipc_socket_path", "get_zmq_transport_url"),
    "zmqruntime.core.serializers": ("PickleSerializer", "SafeSerializer"),
    "zmqruntime.core.security": (
        "ClientCurve",
        "CurveKeyPair",
        "ServerCurve",
        "generate_curve_keypair",
    ),
    "zmqruntime.core.endpoint": ("Endpoint",),
    "zmqruntime.core.sockets": ("SocketPair",),
    "zmqruntime.core.server": ("ZMQServer",),
    "zmqruntime.core.client": ("ZMQClient",),
    "zmqruntime.core.queue_tracker": ("GlobalQueueTrackerRegistry", "QueueTracker"),
    "zmqruntime.core.ack": ("AckChannel",),
    "zmqruntime.execution": ("ExecutionClient", "ExecutionServer", "WorkerPool"),
    "zmqruntime.streaming": ("ImageSender", "StreamingServer"),
    "zmqruntime.gui_thread": ("on_qt_main_thread",),
}
__getattr__, __dir__ = lazy_exports(
    __name__,
    _EXPORTS,
    "; names beyond the headline ones are imported from their module "
    "(zmqruntime.core.*, zmqruntime.execution, ...)",
)

# For type checkers only: at run time each name is loaded on first use (lazy_exports above).
if TYPE_CHECKING:
    from zmqruntime.config import TransportMode, ZMQConfig
    from zmqruntime.core.ack import AckChannel
    from zmqruntime.core.client import ZMQClient
    from zmqruntime.core.endpoint import Endpoint
    from zmqruntime.core.messages import (
        ControlMessageType,
        ExecutionRecord,
        ExecutionStatus,
        MessageFields,
        ResponseType,
    )
    from zmqruntime.core.queue_tracker import GlobalQueueTrackerRegistry, QueueTracker
    from zmqruntime.core.security import (
        ClientCurve,
        CurveKeyPair,
        ServerCurve,
        generate_curve_keypair,
    )
    from zmqruntime.core.serializers import PickleSerializer, SafeSerializer
    from zmqruntime.core.server import ZMQServer
    from zmqruntime.core.sockets import SocketPair
    from zmqruntime.core.transport import get_ipc_socket_path, get_zmq_transport_url
    from zmqruntime.errors import (
        AddressInUseError,
        ConfigurationError,
        ProtocolError,
        RemoteError,
        ServerLost,
        TaskCancelled,
        TaskFailed,
        ZMQRuntimeError,
        ZMQTimeoutError,
    )
    from zmqruntime.execution import ExecutionClient, ExecutionServer, WorkerPool
    from zmqruntime.gui_thread import on_qt_main_thread
    from zmqruntime.protocols import (
        ImageSink,
        LaunchSpec,
        RequestHandler,
        TaskContext,
        TaskExecutor,
        TaskSerializer,
        WorkerBackend,
    )
    from zmqruntime.streaming import ImageSender, StreamingServer
