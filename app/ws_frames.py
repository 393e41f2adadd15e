"""The WebSocket frame a lesson's sockets carry nearly always, framed and parsed here in a few operations: a whole
(unfragmented), uncompressed text or binary message (RFC 6455, section 5.2).

websockets' sans-I/O protocol stays the owner of each connection's state. Every other frame (ping, pong, close, a
fragment, reserved bits set, a mask where none belongs or none where one must be, a frame over the size limit) is fed
to it, exactly that frame's bytes, so its buffer is empty between frames and it judges the frame as if it had parsed
the whole stream; a whole message is taken here only while the connection is open between messages. websockets'
own per-frame parser and serialiser cost about 4 and 1 to 2 µs a message (`python -m bench.costs`).
"""

from __future__ import annotations

import os
import struct
from typing import Protocol

try:  # websockets' C implementation, as websockets itself picks it
    from websockets.speedups import apply_mask
except ImportError:
    from websockets.utils import apply_mask

WHOLE_TEXT = 0x81  # FIN, no reserved bits, opcode 1
WHOLE_BINARY = 0x82  # FIN, no reserved bits, opcode 2
_WHOLE = (WHOLE_TEXT, WHOLE_BINARY)
_MASK_BIT = 0x80
_HEAD_16 = struct.Struct("!BBH").pack
_HEAD_64 = struct.Struct("!BBQ").pack


def _head(first: int, length: int, mask_bit: int) -> bytes:
    if length < 126:
        return bytes((first, mask_bit | length))
    if length < 65536:
        return _HEAD_16(first, mask_bit | 126, length)
    return _HEAD_64(first, mask_bit | 127, length)


def server_frame(first: int, payload: bytes) -> bytes:
    """A frame as a server sends it (unmasked); `first`: `WHOLE_TEXT` or `WHOLE_BINARY`."""
    return _head(first, len(payload), 0) + payload


def client_frame(first: int, payload: bytes) -> bytes:
    """A frame as a client sends it: masked with a fresh random key, as websockets masks."""
    mask = os.urandom(4)
    return _head(first, len(payload), _MASK_BIT) + mask + apply_mask(payload, mask)


class FramedSocket(Protocol):
    """The side of a connection that `split_frames` hands each frame to."""

    def between_messages(self) -> bool:
        """True while the connection is open and no fragmented message is under way: a whole message is taken here."""

    def whole_message(self, text: bool, payload: bytes) -> bool:
        """A whole text or binary message; False: stop reading (the connection failed on it)."""

    def parse_frames(self, data: bytes) -> bool:
        """Frames (or the rest of the stream) for websockets to parse; False: stop reading."""

    def stop_splitting(self) -> None:
        """From now on every byte read goes to websockets."""


def split_frames(socket: FramedSocket, buffer: bytes, *, masked: bool, max_size: int) -> bytes:
    """Hand each complete frame of `buffer` to `socket`; return the incomplete frame at its end. From a frame over
    `max_size` on (not buffered here), and once the connection failed on a frame, websockets takes every byte."""
    position, size = 0, len(buffer)
    mask_bit = _MASK_BIT if masked else 0
    while size - position >= 2:
        first, second = buffer[position], buffer[position + 1]
        length = second & 0x7F
        start = position + 2
        if length == 126:
            if size - position < 4:
                break
            length = int.from_bytes(buffer[start:start + 2])
            start += 2
        elif length == 127:
            if size - position < 10:
                break
            length = int.from_bytes(buffer[start:start + 8])
            start += 8
        if length > max_size:
            socket.stop_splitting()
            socket.parse_frames(buffer[position:])
            return b""
        if second & _MASK_BIT:
            start += 4
        end = start + length
        if end > size:
            break
        if first in _WHOLE and second & _MASK_BIT == mask_bit and socket.between_messages():
            payload = apply_mask(buffer[start:end], buffer[start - 4:start]) if masked else buffer[start:end]
            going_on = socket.whole_message(first == WHOLE_TEXT, payload)
        else:
            going_on = socket.parse_frames(buffer[position:end])
        if not going_on:  # the connection failed: whatever follows is websockets' to discard
            socket.stop_splitting()
            return b""
        position = end
    return buffer[position:] if position else buffer
