"""python -m bench.costs — what each step a relayed 20 ms frame goes through costs on this machine, alone.

The load bench gives the relay's CPU per frame round trip as a whole; this splits the Python-level part
of it into its steps, each timed in a loop with nothing else running: the WebSocket framing of the four
messages (websockets' sans-I/O protocol, as uvicorn and the naive relay use it, and `app.ws_frames`, as the relay
frames a whole message), the base64 and JSON
work on the two legs, and one asyncio task wake-up. Whatever the load bench measures beyond the sum of
these and the `proxy` target's floor is the plumbing between them (ASGI, queues, the relay's pumps).
"""

from __future__ import annotations

import asyncio
import base64
import time
import timeit
from collections.abc import Callable

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from app import protocol
from app.ws_frames import WHOLE_BINARY, WHOLE_TEXT, client_frame, server_frame, split_frames
from bench import run_on_uvloop
from bench.markers import FRAME_BYTES

LOOPS = 20_000


def _open_pair() -> tuple[ServerProtocol, ClientProtocol]:
    """A server and a client protocol past their opening handshake, with nothing on the wire."""
    server = ServerProtocol(max_size=65_536)
    client = ClientProtocol(parse_uri("ws://relay.test/"), max_size=None)
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    [request] = server.events_received()
    assert isinstance(request, Request)
    server.send_response(server.accept(request))
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()
    return server, client


def _parsing(side: Protocol, wire: bytes) -> Callable[[], object]:
    """A step that feeds `wire` to `side` and takes the frames it parsed."""

    def parse() -> object:
        side.receive_data(wire)
        return side.events_received()

    return parse


def _serialising(side: Protocol, send: Callable[[bytes], None], data: bytes) -> Callable[[], object]:
    """A step that sends `data` with `send` (a method of `side`) and takes the bytes to write."""

    def serialise() -> object:
        send(data)
        return side.data_to_send()

    return serialise


class _OpenSocket:
    """A connection open between messages that takes every whole message `split_frames` gives it."""

    taken = b""

    def between_messages(self) -> bool:
        return True

    def whole_message(self, text: bool, payload: bytes) -> bool:
        self.taken = payload
        return True

    def parse_frames(self, data: bytes) -> bool:
        raise AssertionError("only whole messages are timed")

    def stop_splitting(self) -> None:
        raise AssertionError("only whole messages are timed")


def _splitting(wire: bytes, *, masked: bool) -> Callable[[], object]:
    """A step that splits `wire` and takes the message in it."""
    socket = _OpenSocket()

    def split() -> object:
        split_frames(socket, wire, masked=masked, max_size=len(wire))
        return socket.taken

    return split


def step_costs() -> list[tuple[str, Callable[[], object]]]:
    page_server, upstream_client = _open_pair()
    pcm = bytes(range(256)) * (FRAME_BYTES // 256) + bytes(FRAME_BYTES % 256)
    page_frame = Frame(Opcode.BINARY, pcm).serialize(mask=True, extensions=[])
    delta_base64 = base64.b64encode(pcm).decode()
    delta_event = orjson.dumps({
        "type": "response.output_audio.delta", "event_id": "event_1", "response_id": "resp_1", "item_id": "item_1",
        "output_index": 0, "content_index": 0, "delta": delta_base64,
    })
    delta_frame = Frame(Opcode.TEXT, delta_event).serialize(mask=False, extensions=[])
    append = protocol.audio_append(pcm)

    return [
        ("websockets: parse the page's binary frame (masked)", _parsing(page_server, page_frame)),
        ("websockets: serialise the binary frame to the page", _serialising(page_server, page_server.send_binary, pcm)),
        ("websockets: parse the upstream's text frame", _parsing(upstream_client, delta_frame)),
        ("websockets: serialise the append upstream (masked)", _serialising(upstream_client, upstream_client.send_text,
                                                                            append)),
        ("app.ws_frames: split the page's binary frame (masked)", _splitting(page_frame, masked=True)),
        ("app.ws_frames: frame the binary message to the page", lambda: server_frame(WHOLE_BINARY, pcm)),
        ("app.ws_frames: split the upstream's text frame", _splitting(delta_frame, masked=False)),
        ("app.ws_frames: frame the append upstream (masked)", lambda: client_frame(WHOLE_TEXT, append)),
        ("serialise input_audio_buffer.append (base64 + JSON)", lambda: protocol.audio_append(pcm)),
        ("orjson.loads of the audio delta event", lambda: orjson.loads(delta_event)),
        ("base64-decode the delta", lambda: protocol.decode_audio(delta_base64)),
    ]


async def _task_wake_up_cost(loops: int) -> float:
    """Seconds per wake-up of a task parked on a future, net of the loop turn that runs it."""
    loop = asyncio.get_running_loop()
    parked: asyncio.Future[None] = loop.create_future()
    woken = 0

    async def sleeper() -> None:
        nonlocal parked, woken
        while woken < loops:
            parked = loop.create_future()
            await parked
            woken += 1

    task = asyncio.ensure_future(sleeper())
    await asyncio.sleep(0)
    started = time.perf_counter()
    while woken < loops:
        parked.set_result(None)
        await asyncio.sleep(0)
    with_wake_ups = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(loops):
        await asyncio.sleep(0)
    bare_turns = time.perf_counter() - started
    await task
    return (with_wake_ups - bare_turns) / loops


def main() -> None:
    rows = [(name, min(timeit.repeat(step, number=LOOPS, repeat=5)) / LOOPS) for name, step in step_costs()]
    rows.append(("one asyncio task wake-up", run_on_uvloop(_task_wake_up_cost(LOOPS))))
    width = max(len(name) for name, _ in rows)
    print(f"{'step (one 20 ms frame, 960 B of PCM16)':<{width}}  us")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds * 1e6:5.2f}")
    for framer in ("websockets", "app.ws_frames"):
        framing = sum(seconds for name, seconds in rows if name.startswith(framer))
        print(f"{f'all four WebSocket messages of one relayed frame, {framer}':<{width}}  {framing * 1e6:5.2f}")


if __name__ == "__main__":
    main()
