"""Viewer commands through real viewers: ordered with the sender's items (a ``clear`` after N
images clears all N, also in latest-frame mode), the standard set on a headless napari
ViewerModel and on a DirectorySink, an application's own commands, unknown and failing
commands answered with the reason while the viewer lives on, and the bounds at their edges.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy
import pytest
import zmq

from tests.test_streaming import wait_until
from zmqruntime import (
    AckChannel,
    ConfigurationError,
    RemoteError,
    ServerLost,
    TransportMode,
    ZMQClient,
    ZMQConfig,
    ZMQTimeoutError,
)
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import CommandFrame, CommandReply, Message
from zmqruntime.core.serializers import SafeSerializer
from zmqruntime.core.transport import find_free_port_pair
from zmqruntime.errors import ErrorCode
from zmqruntime.streaming import (
    DirectorySink,
    ImageSender,
    NapariSink,
    StreamingServer,
    StreamMode,
    ViewerCommands,
)
from zmqruntime.streaming.commands import (
    COMMAND_REPLIES,
    MAX_COMMAND_BYTES,
    MAX_COMMAND_SENDERS,
    MAX_PENDING_COMMANDS,
    MAX_REPLY_BYTES,
)
from zmqruntime.streaming.server import ACK_COPIES
from zmqruntime.streaming.sink_commands import png_bytes

napari_components = pytest.importorskip("napari.components")

WAIT = 10.0
NULL = (b"null",)  # the safe serializer's frames of None
Image = numpy.ndarray[Any, Any]


class GatedLayers:
    """A sink with layers by name that holds its first image until ``gate`` is set, so what
    is sent meanwhile waits in the viewer; it notes every call in ``log``."""

    def __init__(self) -> None:
        self.layers: dict[str, Image] = {}
        self.log: list[str] = []
        self.gate = threading.Event()
        self.gate_reached = threading.Event()

    def __call__(self, image: Image, metadata: Mapping[str, Any], /) -> None:
        if not self.gate.is_set():
            self.gate_reached.set()
            assert self.gate.wait(WAIT), "the test never opened the gate"
        name = str(metadata["name"])
        self.layers[name] = image
        self.log.append(name)

    def commands(self) -> dict[str, Any]:
        def clear(args: Any) -> list[str]:
            gone = sorted(self.layers)
            self.layers.clear()
            self.log.append("clear")
            return gone

        def note(args: Any) -> Any:
            self.log.append(f"note {args}")
            return args

        return {"clear": clear, "layers": lambda args: sorted(self.layers), "note": note}


def _at(port: int, config: ZMQConfig, mode: TransportMode = TransportMode.IPC) -> Endpoint:
    return Endpoint.of(port=port, transport_mode=mode, config=config)


@pytest.fixture
def gated(config: ZMQConfig) -> Iterator[tuple[GatedLayers, StreamingServer, ImageSender]]:
    sink = GatedLayers()
    with (
        StreamingServer.bind(_at(0, config), sink) as viewer,
        ImageSender.to(_at(viewer.port_number, config)) as sender,
    ):
        try:
            yield sink, viewer, sender
        finally:
            sink.gate.set()


def _image(value: int = 0) -> Image:
    return numpy.full((4, 4), value, numpy.uint8)


# --- ordering --------------------------------------------------------------------------------


def test_a_clear_after_n_images_clears_all_n_though_they_were_still_queued(
    gated: tuple[GatedLayers, StreamingServer, ImageSender],
) -> None:
    sink, viewer, sender = gated
    for index in range(10):
        sender.send(_image(index), {"name": f"layer {index}"})
    cleared = sender.command_async("clear")
    assert sink.gate_reached.wait(WAIT)
    # The viewer has it (9 images and the command wait for the sink) and does not run it yet.
    wait_until(lambda: cleared.done() or viewer.statistics().waiting == 10, "the command queued")
    assert not cleared.done()
    sink.gate.set()
    assert cleared.result(WAIT) == sorted(f"layer {index}" for index in range(10))
    assert sender.command("layers") == []
    assert sink.log == [*(f"layer {index}" for index in range(10)), "clear"]
    sender.wait_all_acked(timeout=WAIT)
    assert viewer.statistics().processed == 10  # commands are not counted as images


def test_commands_run_in_the_order_sent_between_images(
    gated: tuple[GatedLayers, StreamingServer, ImageSender],
) -> None:
    sink, _, sender = gated
    futures = []
    for index in range(3):
        sender.send(_image(), {"name": f"a{index}"})
        futures.append(sender.command_async("note", index))
    sink.gate.set()
    assert [future.result(WAIT) for future in futures] == [0, 1, 2]
    assert sink.log == ["a0", "note 0", "a1", "note 1", "a2", "note 2"]


def test_in_latest_frame_mode_a_newer_frame_does_not_jump_over_a_command(
    config: ZMQConfig,
) -> None:
    sink = GatedLayers()
    with (
        StreamingServer.bind(_at(0, config), sink, mode=StreamMode.LATEST) as viewer,
        ImageSender.to(_at(viewer.port_number, config), tracker_key="live") as sender,
    ):
        sender.send(_image(), {"name": "first"})
        assert sink.gate_reached.wait(WAIT)
        sender.send(_image(), {"name": "before"})
        sender.send(_image(), {"name": "skipped"})
        sender.send(_image(), {"name": "latest before"})
        noted = sender.command_async("note", "here")
        sender.send(_image(), {"name": "after"})
        wait_until(lambda: viewer.statistics().waiting == 5, "5 frames and commands queued")
        sink.gate.set()
        assert noted.result(WAIT) == "here"
        sender.wait_all_acked(timeout=WAIT)
    assert sink.log == ["first", "latest before", "note here", "after"]


# --- the standard set on napari and on files -------------------------------------------------


def test_a_headless_napari_viewer_answers_layers_set_display_and_clear(config: ZMQConfig) -> None:
    napari_viewer = napari_components.ViewerModel()
    with (
        StreamingServer.bind(_at(0, config), NapariSink(napari_viewer)) as viewer,
        ImageSender.to(_at(viewer.port_number, config)) as sender,
    ):
        for name in ("dapi", "gfp", "keep"):
            sender.send(numpy.arange(16, dtype=numpy.uint16).reshape(4, 4), {"name": name})
        layers = sender.command("layers")
        assert [layer["name"] for layer in layers] == ["dapi", "gfp", "keep"]
        assert layers[0]["type"] == "image" and layers[0]["shape"] == [4, 4]
        assert layers[0]["dtype"] == "<u2"
        shown = sender.command(
            "set_display",
            {"layer": "gfp", "contrast_limits": [2, 9], "colormap": "green", "visible": False},
        )
        assert shown["contrast_limits"] == [2.0, 9.0] and shown["colormap"] == "green"
        gfp = napari_viewer.layers["gfp"]
        assert not gfp.visible and gfp.colormap.name == "green"
        with pytest.raises(RemoteError, match="no layer 'nope'; the layers are: dapi, gfp, keep"):
            sender.command("set_display", {"layer": "nope", "visible": True})
        with pytest.raises(RemoteError, match=r"set_display takes layer, .*; not shininess"):
            sender.command("set_display", {"layer": "gfp", "shininess": 3})
        assert sender.command("clear", {"layers": ["dapi", "gfp", "absent"]}) == ["dapi", "gfp"]
        assert [layer.name for layer in napari_viewer.layers] == ["keep"]
        assert sender.command("clear") == ["keep"]
        assert len(napari_viewer.layers) == 0
        with pytest.raises(RemoteError, match="ViewerModel has no canvas to take a screenshot"):
            sender.command("screenshot")
        with pytest.raises(RemoteError, match="ViewerModel has no window to close"):
            sender.command("close")
        sender.send(_image(), {"name": "still alive"})
        sender.wait_all_acked(timeout=WAIT)
    assert [layer.name for layer in napari_viewer.layers] == ["still alive"]


def test_a_directory_sink_lists_what_it_wrote_and_refuses_the_rest(
    config: ZMQConfig, tmp_path: Path
) -> None:
    with (
        StreamingServer.bind(_at(0, config), DirectorySink(tmp_path / "out")) as viewer,
        ImageSender.to(_at(viewer.port_number, config)) as sender,
    ):
        assert sender.command("layers") == []
        sender.send(_image())
        sender.send(_image())
        assert sender.command("layers") == [{"name": "image-000000"}, {"name": "image-000001"}]
        with pytest.raises(RemoteError, match="never deletes files") as refused:
            sender.command("clear")
        assert refused.value.code is ErrorCode.HANDLER_FAILED
        assert refused.value.error_type == "ValueError"
        with pytest.raises(RemoteError, match="has no screen"):
            sender.command("screenshot")
    assert len(list((tmp_path / "out").glob("*.npy"))) == 2


def test_png_bytes_is_a_png_of_the_pixels() -> None:
    pixels = numpy.zeros((3, 5, 4), numpy.uint8)
    pixels[:, 3:] = 255
    png = png_bytes(pixels)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png.endswith(b"IEND\xaeB`\x82")
    qtgui = pytest.importorskip("qtpy.QtGui")
    image = qtgui.QImage.fromData(png, "PNG")
    assert (image.width(), image.height()) == (5, 3)
    assert qtgui.QColor(image.pixel(0, 0)).red() == 0
    assert qtgui.QColor(image.pixel(4, 2)).red() == 255
    with pytest.raises(ValueError, match="a PNG needs"):
        png_bytes(numpy.zeros((2, 2, 2), numpy.uint8))


# --- the application's own, unknown and failing commands -------------------------------------


def test_application_commands_win_and_unknown_or_failing_ones_say_why(
    config: ZMQConfig,
) -> None:
    sink = GatedLayers()
    sink.gate.set()

    def boom(args: Any) -> None:
        raise RuntimeError(f"cannot {args}")

    handlers = {
        "stats": lambda args: {"mean": float(numpy.mean(args)), "twice": args * 2},
        "layers": lambda args: "the application's",
        "boom": boom,
        "unencodable": lambda args: object(),
        "lone": lambda args: boom("\ud800"),
    }
    with (
        StreamingServer.bind(_at(0, config), sink, commands=handlers) as viewer,
        ImageSender.to(_at(viewer.port_number, config)) as sender,
    ):
        reply = sender.command("stats", numpy.arange(4, dtype=numpy.int32))
        assert reply["mean"] == 1.5
        numpy.testing.assert_array_equal(reply["twice"], [0, 2, 4, 6])
        assert sender.command("layers") == "the application's"
        with pytest.raises(RemoteError) as unknown:
            sender.command("zoom", 2)
        assert unknown.value.code is ErrorCode.NOT_FOUND
        assert unknown.value.detail == (
            "this viewer has no command 'zoom'; known commands: boom, clear, layers, lone, "
            "note, stats, unencodable"
        )
        with pytest.raises(RemoteError, match="RuntimeError: cannot fly") as failed:
            sender.command("boom", "fly")
        assert failed.value.code is ErrorCode.HANDLER_FAILED
        assert "raise RuntimeError" in (failed.value.remote_traceback or "")
        with pytest.raises(RemoteError, match="TypeError"):
            sender.command("unencodable")
        # A reply whose text cannot be encoded (a lone surrogate, as from a peer's arguments)
        # is answered in ASCII, and never ends the sink thread.
        with pytest.raises(RemoteError, match="could not be encoded") as garbled:
            sender.command("lone")
        assert garbled.value.code is ErrorCode.HANDLER_FAILED
        sender.send(_image(), {"name": "alive"})
        sender.wait_all_acked(timeout=WAIT)
        assert sink.log[-1] == "alive"
        assert "commands" in sender.client.ping().capabilities


def test_a_sender_with_ack_to_sends_its_commands_in_order_too(
    config: ZMQConfig,
) -> None:
    sink = GatedLayers()
    sink.gate.set()
    with (
        StreamingServer.bind(_at(0, config), sink) as viewer,
        AckChannel.bind(_at(0, config)) as channel,
        ImageSender.to(_at(viewer.port_number, config), ack_to=channel.address) as sender,
    ):
        sender.send(_image(), {"name": "one"})
        assert sender.command("layers") == ["one"]
        sender.wait_all_acked(timeout=WAIT)


# --- bounds ----------------------------------------------------------------------------------


def _listening_client(
    config: ZMQConfig, port: int, replies: list[Message], got: threading.Event
) -> ZMQClient:
    def on_message(message: Message) -> None:
        replies.append(message)
        got.set()

    client = ZMQClient(_at(port, config), data_socket_type=zmq.PUSH, on_message=on_message)
    client.connect()
    assert client.call(COMMAND_REPLIES, {"prefix": "raw"}, timeout=WAIT) is True
    return client


def _payload_of_size(size: int) -> tuple[Any, ...]:
    """Safe-serializer frames of a bytes value whose frames take exactly ``size`` bytes."""
    serializer, length = SafeSerializer(), size
    for _ in range(5):
        frames = serializer.dumps(b"x" * length)
        total = sum(memoryview(frame).nbytes for frame in frames)
        if total == size:
            return tuple(frames)
        length += size - total
    raise AssertionError("no payload of that size")


def test_command_arguments_are_bounded_at_one_mib_on_both_sides(config: ZMQConfig) -> None:
    sink = GatedLayers()
    sink.gate.set()
    replies: list[Message] = []
    got = threading.Event()
    with StreamingServer.bind(_at(0, config), sink) as viewer:
        client = _listening_client(config, viewer.port_number, replies, got)
        try:
            for number, extra in enumerate((0, 1)):
                got.clear()
                payload = _payload_of_size(MAX_COMMAND_BYTES + extra)
                frame = CommandFrame(command_id=number, reply_to="raw", name="note")
                client.send_data(CommandFrame(**{**_fields(frame), "payload": payload}))
                assert got.wait(WAIT)
            at_limit, past = replies
            assert isinstance(at_limit, CommandReply) and at_limit.code is None
            assert isinstance(past, CommandReply) and past.code is ErrorCode.TOO_LARGE
            assert f"limited to {MAX_COMMAND_BYTES}" in past.message
        finally:
            client.close()
        with ImageSender.to(_at(viewer.port_number, config)) as sender:
            size = sum(memoryview(f).nbytes for f in _payload_of_size(MAX_COMMAND_BYTES))
            assert size == MAX_COMMAND_BYTES
            length = len(SafeSerializer().loads(_payload_of_size(MAX_COMMAND_BYTES)))  # type: ignore[arg-type]
            assert sender.command("note", b"x" * length, timeout=WAIT) == b"x" * length
            with pytest.raises(ValueError, match=f"the limit is {MAX_COMMAND_BYTES}"):
                sender.command("note", b"x" * (length + 1))


def _fields(frame: CommandFrame) -> dict[str, Any]:
    return {
        "command_id": frame.command_id,
        "reply_to": frame.reply_to,
        "name": frame.name,
        "serializer": frame.serializer,
    }


def test_a_viewer_holds_64_commands_and_refuses_the_65th_as_busy(
    gated: tuple[GatedLayers, StreamingServer, ImageSender], config: ZMQConfig
) -> None:
    sink, viewer, sender = gated
    sender.send(_image(), {"name": "held"})
    assert sink.gate_reached.wait(WAIT)
    held = [sender.command_async("note", index) for index in range(MAX_PENDING_COMMANDS)]
    with pytest.raises(ZMQTimeoutError, match=r"64 commands to .* are still unanswered"):
        sender.command_async("note", "one too many for this sender")
    replies: list[Message] = []
    got = threading.Event()
    other = _listening_client(config, viewer.port_number, replies, got)
    try:
        other.send_data(CommandFrame(command_id=7, reply_to="raw", name="note"))
        assert got.wait(WAIT)
        (busy,) = replies
        assert isinstance(busy, CommandReply) and busy.code is ErrorCode.REFUSED
        assert busy.message == "64 commands are waiting in this viewer; retry later"
        sink.gate.set()
        assert [future.result(WAIT) for future in held] == list(range(MAX_PENDING_COMMANDS))
    finally:
        other.close()
    assert sink.log[0] == "held" and len(sink.log) == 1 + MAX_PENDING_COMMANDS


def test_a_reply_past_its_bound_is_refused_and_the_default_is_256_mib(config: ZMQConfig) -> None:
    assert MAX_REPLY_BYTES == 256 << 20
    sink = GatedLayers()
    sink.gate.set()
    limit = sum(memoryview(frame).nbytes for frame in _payload_of_size(1000))
    commands = ViewerCommands({"echo": lambda args: args}, max_reply_bytes=limit)
    with (
        StreamingServer.bind(_at(0, config), sink, commands=commands) as viewer,
        ImageSender.to(_at(viewer.port_number, config)) as sender,
    ):
        length = len(SafeSerializer().loads(_payload_of_size(1000)))  # type: ignore[arg-type]
        assert sender.command("echo", b"y" * length) == b"y" * length
        with pytest.raises(RemoteError, match=f"is limited to {limit}") as refused:
            sender.command("echo", b"y" * (length + 1))
        assert refused.value.code is ErrorCode.TOO_LARGE


def test_a_command_the_viewer_never_answers_times_out_and_is_forgotten(
    gated: tuple[GatedLayers, StreamingServer, ImageSender],
) -> None:
    sink, _, sender = gated
    sender.send(_image(), {"name": "held"})
    assert sink.gate_reached.wait(WAIT)
    with pytest.raises(ZMQTimeoutError, match=r"no reply to command 'note' .* within 0\.2s"):
        sender.command("note", 1, timeout=0.2)
    late = sender.command_async("note", 2, timeout=0.2)
    with pytest.raises(ZMQTimeoutError):
        late.result(WAIT)
    sink.gate.set()  # the commands still run, in order: their replies come late, and are dropped
    assert sender.command("note", 3) == 3
    assert sink.log == ["held", "note 1", "note 2", "note 3"]


def test_an_unreachable_viewer_fails_the_command_in_time(config: ZMQConfig) -> None:
    nowhere = _at(find_free_port_pair(config), config, TransportMode.TCP)
    with ImageSender.to(nowhere) as sender, pytest.raises(ZMQTimeoutError):
        sender.command("layers", timeout=0.3)


def test_futures_of_commands_are_concurrent_futures(
    gated: tuple[GatedLayers, StreamingServer, ImageSender],
) -> None:
    sink, _, sender = gated
    sink.gate.set()
    future = sender.command_async("note", "x")
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(WAIT) == "x"


def test_a_hostile_command_is_answered_with_the_reason_and_the_viewer_goes_on(
    gated: tuple[GatedLayers, StreamingServer, ImageSender], config: ZMQConfig
) -> None:
    sink, viewer, sender = gated
    sink.gate.set()
    replies: list[Message] = []
    got = threading.Event()
    client = _listening_client(config, viewer.port_number, replies, got)
    attacks = [
        CommandFrame(command_id=1, reply_to="raw", name="note", serializer="pickle"),
        CommandFrame(command_id=2, reply_to="raw", name="note", payload=(b"\xff{",)),
        # An unknown sender's command runs (in order), but its reply has nowhere to go.
        CommandFrame(command_id=3, reply_to="nobody", name="note", payload=(b"null",)),
        CommandFrame(command_id=4, reply_to="raw", name="note", payload=(b"[1]",)),
    ]
    try:
        for attack in attacks:
            client.send_data(attack)
        wait_until(lambda: len(replies) == 3, "three replies")
    finally:
        client.close()
    refused, malformed, fine = replies
    assert isinstance(refused, CommandReply) and refused.code is ErrorCode.REFUSED
    assert "serialized with 'pickle' but this server uses 'safe'" in refused.message
    assert isinstance(malformed, CommandReply) and malformed.code is ErrorCode.MALFORMED
    assert malformed.message.startswith("bad arguments:")
    assert isinstance(fine, CommandReply) and (fine.command_id, fine.code) == (4, None)
    assert sink.log == ["note None", "note [1]"]
    assert sender.command("layers") == []  # and honest senders are served


def test_a_lost_viewer_fails_the_commands_waiting_for_it(
    gated: tuple[GatedLayers, StreamingServer, ImageSender],
) -> None:
    sink, viewer, sender = gated
    sender.send(_image(), {"name": "held"})
    assert sink.gate_reached.wait(WAIT)
    waiting = sender.command_async("note", 1, timeout=WAIT)
    viewer.server.close()  # its connections break; the sink is still busy
    with pytest.raises(ServerLost, match="may or may not have run"):
        waiting.result(WAIT)


def test_a_viewer_remembers_the_connections_of_1024_senders(
    gated: tuple[GatedLayers, StreamingServer, ImageSender], config: ZMQConfig
) -> None:
    sink, viewer, _ = gated
    sink.gate.set()
    replies: list[Message] = []
    got = threading.Event()
    client = _listening_client(config, viewer.port_number, replies, got)  # names "raw" first
    try:
        for number in range(1, MAX_COMMAND_SENDERS):  # 1,024 in all: every one is known
            client.call(COMMAND_REPLIES, {"prefix": f"sender {number}"}, timeout=WAIT)
        for prefix in ("raw", f"sender {MAX_COMMAND_SENDERS - 1}"):
            client.send_data(CommandFrame(command_id=0, reply_to=prefix, name="note", payload=NULL))
        wait_until(lambda: len(replies) == 2, "both replies")
        client.call(COMMAND_REPLIES, {"prefix": "one past"}, timeout=WAIT)  # "raw" is forgotten
        for command_id, prefix in enumerate(("raw", "one past"), 1):
            client.send_data(
                CommandFrame(command_id=command_id, reply_to=prefix, name="note", payload=NULL)
            )
        wait_until(lambda: len(replies) == 3, "the reply to the sender still known")
    finally:
        client.close()
    # Run in order, answered in order: had "raw"'s reply gone out, it would have come first.
    assert [reply.command_id for reply in replies if isinstance(reply, CommandReply)] == [0, 0, 2]
    assert sink.log.count("note None") == 4  # all ran


def test_a_sender_prefix_is_at_most_256_characters(
    gated: tuple[GatedLayers, StreamingServer, ImageSender], config: ZMQConfig
) -> None:
    _sink, viewer, _ = gated
    client = _listening_client(config, viewer.port_number, [], threading.Event())
    try:
        for request in (COMMAND_REPLIES, ACK_COPIES):
            assert client.call(request, {"prefix": "p" * 256}, timeout=WAIT) is True
            with pytest.raises(RemoteError, match="1 to 256 characters"):
                client.call(request, {"prefix": "p" * 257}, timeout=WAIT)
    finally:
        client.close()


@pytest.mark.parametrize("field", ["max_pending", "max_payload_bytes", "max_reply_bytes"])
def test_viewer_command_bounds_must_be_whole_numbers_of_one_or_more(field: str) -> None:
    assert getattr(ViewerCommands(**{field: 1}), field) == 1
    for wrong in (0, -1, 1.5, True):
        with pytest.raises(ConfigurationError):
            ViewerCommands(**{field: wrong})
