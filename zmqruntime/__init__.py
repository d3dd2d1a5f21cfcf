"""zmqruntime: a generic ZeroMQ runtime for running work in another process or host.

Tier 1 (this package's top level) is the transport core: addressing, the versioned message
protocol and its sans-IO codec, safe serializers, :class:`ZMQServer` / :class:`ZMQClient`,
queue tracking and the acknowledgement channel. Execution lives in
:mod:`zmqruntime.execution`, image streaming in :mod:`zmqruntime.streaming`.

Names are loaded on first use, so ``import zmqruntime.codec`` stays free of zmq.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "TransportMode": "config",
    "ZMQConfig": "config",
    "AddressInUseError": "errors",
    "ChannelClosed": "errors",
    "ConfigurationError": "errors",
    "ErrorCode": "errors",
    "LocalProtocolError": "errors",
    "ProtocolError": "errors",
    "RemoteError": "errors",
    "RemoteProtocolError": "errors",
    "ServerLost": "errors",
    "TaskCancelled": "errors",
    "TaskFailed": "errors",
    "ZMQRuntimeError": "errors",
    "ZMQTimeoutError": "errors",
    "ImageSink": "protocols",
    "JSONObject": "protocols",
    "JSONValue": "protocols",
    "LaunchSpec": "protocols",
    "TaskContext": "protocols",
    "TaskExecutor": "protocols",
    "TaskSerializer": "protocols",
    "PROTOCOL_VERSION": "messages",
    "Accepted": "messages",
    "Ack": "messages",
    "AckOutcome": "messages",
    "Attach": "messages",
    "Cancel": "messages",
    "Completion": "messages",
    "ControlMessageType": "messages",
    "ErrorReply": "messages",
    "Execute": "messages",
    "ExecutionRecord": "messages",
    "ExecutionStatus": "messages",
    "ImageFrame": "messages",
    "ImageSent": "messages",
    "Message": "messages",
    "MessageFields": "messages",
    "Ping": "messages",
    "Pong": "messages",
    "ProgressEvent": "messages",
    "RecordReply": "messages",
    "ResponseType": "messages",
    "ServerSummary": "messages",
    "Shutdown": "messages",
    "ShutdownReply": "messages",
    "StatusRequest": "messages",
    "StreamMessageType": "messages",
    "SummaryReply": "messages",
    "find_free_ipc_port": "transport",
    "find_free_port_pair": "transport",
    "get_control_port": "transport",
    "get_control_url": "transport",
    "get_default_transport_mode": "transport",
    "get_ipc_socket_path": "transport",
    "get_zmq_transport_url": "transport",
    "is_endpoint_in_use": "transport",
    "is_ipc_socket_in_use": "transport",
    "is_port_in_use": "transport",
    "remove_ipc_socket": "transport",
    "PickleSerializer": "serializers",
    "SafeSerializer": "serializers",
    "ClientCurve": "security",
    "CurveKeyPair": "security",
    "ServerCurve": "security",
    "generate_curve_keypair": "security",
    "load_curve_keypair": "security",
    "load_public_key": "security",
    "write_curve_keypair": "security",
    "SocketPair": "sockets",
    "Peer": "server",
    "ServerStatistics": "server",
    "ZMQServer": "server",
    "ClientStatistics": "client",
    "ZMQClient": "client",
    "GlobalQueueTrackerRegistry": "queue_tracker",
    "QueueTracker": "queue_tracker",
    "TrackerStatistics": "queue_tracker",
    "AckCallbackHandle": "ack",
    "AckChannel": "ack",
    "AckChannelStatistics": "ack",
    "AckSender": "ack",
}

__all__ = ["__version__", *_EXPORTS]  # noqa: PLE0604

if TYPE_CHECKING:
    from zmqruntime.ack import (
        AckCallbackHandle as AckCallbackHandle,
    )
    from zmqruntime.ack import (
        AckChannel as AckChannel,
    )
    from zmqruntime.ack import (
        AckChannelStatistics as AckChannelStatistics,
    )
    from zmqruntime.ack import (
        AckSender as AckSender,
    )
    from zmqruntime.client import (
        ClientStatistics as ClientStatistics,
    )
    from zmqruntime.client import (
        ZMQClient as ZMQClient,
    )
    from zmqruntime.config import (
        TransportMode as TransportMode,
    )
    from zmqruntime.config import (
        ZMQConfig as ZMQConfig,
    )
    from zmqruntime.errors import (
        AddressInUseError as AddressInUseError,
    )
    from zmqruntime.errors import (
        ChannelClosed as ChannelClosed,
    )
    from zmqruntime.errors import (
        ConfigurationError as ConfigurationError,
    )
    from zmqruntime.errors import (
        ErrorCode as ErrorCode,
    )
    from zmqruntime.errors import (
        LocalProtocolError as LocalProtocolError,
    )
    from zmqruntime.errors import (
        ProtocolError as ProtocolError,
    )
    from zmqruntime.errors import (
        RemoteError as RemoteError,
    )
    from zmqruntime.errors import (
        RemoteProtocolError as RemoteProtocolError,
    )
    from zmqruntime.errors import (
        ServerLost as ServerLost,
    )
    from zmqruntime.errors import (
        TaskCancelled as TaskCancelled,
    )
    from zmqruntime.errors import (
        TaskFailed as TaskFailed,
    )
    from zmqruntime.errors import (
        ZMQRuntimeError as ZMQRuntimeError,
    )
    from zmqruntime.errors import (
        ZMQTimeoutError as ZMQTimeoutError,
    )
    from zmqruntime.messages import (
        PROTOCOL_VERSION as PROTOCOL_VERSION,
    )
    from zmqruntime.messages import (
        Accepted as Accepted,
    )
    from zmqruntime.messages import (
        Ack as Ack,
    )
    from zmqruntime.messages import (
        AckOutcome as AckOutcome,
    )
    from zmqruntime.messages import (
        Attach as Attach,
    )
    from zmqruntime.messages import (
        Cancel as Cancel,
    )
    from zmqruntime.messages import (
        Completion as Completion,
    )
    from zmqruntime.messages import (
        ControlMessageType as ControlMessageType,
    )
    from zmqruntime.messages import (
        ErrorReply as ErrorReply,
    )
    from zmqruntime.messages import (
        Execute as Execute,
    )
    from zmqruntime.messages import (
        ExecutionRecord as ExecutionRecord,
    )
    from zmqruntime.messages import (
        ExecutionStatus as ExecutionStatus,
    )
    from zmqruntime.messages import (
        ImageFrame as ImageFrame,
    )
    from zmqruntime.messages import (
        ImageSent as ImageSent,
    )
    from zmqruntime.messages import (
        Message as Message,
    )
    from zmqruntime.messages import (
        MessageFields as MessageFields,
    )
    from zmqruntime.messages import (
        Ping as Ping,
    )
    from zmqruntime.messages import (
        Pong as Pong,
    )
    from zmqruntime.messages import (
        ProgressEvent as ProgressEvent,
    )
    from zmqruntime.messages import (
        RecordReply as RecordReply,
    )
    from zmqruntime.messages import (
        ResponseType as ResponseType,
    )
    from zmqruntime.messages import (
        ServerSummary as ServerSummary,
    )
    from zmqruntime.messages import (
        Shutdown as Shutdown,
    )
    from zmqruntime.messages import (
        ShutdownReply as ShutdownReply,
    )
    from zmqruntime.messages import (
        StatusRequest as StatusRequest,
    )
    from zmqruntime.messages import (
        StreamMessageType as StreamMessageType,
    )
    from zmqruntime.messages import (
        SummaryReply as SummaryReply,
    )
    from zmqruntime.protocols import (
        ImageSink as ImageSink,
    )
    from zmqruntime.protocols import (
        JSONObject as JSONObject,
    )
    from zmqruntime.protocols import (
        JSONValue as JSONValue,
    )
    from zmqruntime.protocols import (
        LaunchSpec as LaunchSpec,
    )
    from zmqruntime.protocols import (
        TaskContext as TaskContext,
    )
    from zmqruntime.protocols import (
        TaskExecutor as TaskExecutor,
    )
    from zmqruntime.protocols import (
        TaskSerializer as TaskSerializer,
    )
    from zmqruntime.queue_tracker import (
        GlobalQueueTrackerRegistry as GlobalQueueTrackerRegistry,
    )
    from zmqruntime.queue_tracker import (
        QueueTracker as QueueTracker,
    )
    from zmqruntime.queue_tracker import (
        TrackerStatistics as TrackerStatistics,
    )
    from zmqruntime.security import (
        ClientCurve as ClientCurve,
    )
    from zmqruntime.security import (
        CurveKeyPair as CurveKeyPair,
    )
    from zmqruntime.security import (
        ServerCurve as ServerCurve,
    )
    from zmqruntime.security import (
        generate_curve_keypair as generate_curve_keypair,
    )
    from zmqruntime.security import (
        load_curve_keypair as load_curve_keypair,
    )
    from zmqruntime.security import (
        load_public_key as load_public_key,
    )
    from zmqruntime.security import (
        write_curve_keypair as write_curve_keypair,
    )
    from zmqruntime.serializers import (
        PickleSerializer as PickleSerializer,
    )
    from zmqruntime.serializers import (
        SafeSerializer as SafeSerializer,
    )
    from zmqruntime.server import (
        Peer as Peer,
    )
    from zmqruntime.server import (
        ServerStatistics as ServerStatistics,
    )
    from zmqruntime.server import (
        ZMQServer as ZMQServer,
    )
    from zmqruntime.sockets import (
        SocketPair as SocketPair,
    )
    from zmqruntime.transport import (
        find_free_ipc_port as find_free_ipc_port,
    )
    from zmqruntime.transport import (
        find_free_port_pair as find_free_port_pair,
    )
    from zmqruntime.transport import (
        get_control_port as get_control_port,
    )
    from zmqruntime.transport import (
        get_control_url as get_control_url,
    )
    from zmqruntime.transport import (
        get_default_transport_mode as get_default_transport_mode,
    )
    from zmqruntime.transport import (
        get_ipc_socket_path as get_ipc_socket_path,
    )
    from zmqruntime.transport import (
        get_zmq_transport_url as get_zmq_transport_url,
    )
    from zmqruntime.transport import (
        is_endpoint_in_use as is_endpoint_in_use,
    )
    from zmqruntime.transport import (
        is_ipc_socket_in_use as is_ipc_socket_in_use,
    )
    from zmqruntime.transport import (
        is_port_in_use as is_port_in_use,
    )
    from zmqruntime.transport import (
        remove_ipc_socket as remove_ipc_socket,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zmqruntime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"zmqruntime.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
