"""A small WebDriver BiDi client (W3C) over the `websockets` sync client, for browsers Playwright cannot drive.

`with open_session(url) as session:` opens a session (`session.new`) and ends it after the block;
`session.command(method, params)` sends one command and
returns its result, raising `BidiError` with the browser's error and message; events the session subscribed to
(`subscribe`) are kept in `events`, in the order they arrived. One reader thread reads the socket: it hands each
reply to the command waiting for it and appends each event, so no event is lost while no command waits.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

COMMAND_TIMEOUT_S = 30


class BidiError(Exception):
    """The browser answered a command with an error, or the session's socket closed before it answered."""


class BidiSession:
    """One BiDi session over an open socket: commands answered in any order, events kept as they come."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._waiting: dict[int, Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, name="bidi-reader", daemon=True)
        self._reader.start()

    def command(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send `method` with `params`; its result once the browser answers (BidiError on an error answer)."""
        reply: Future[dict[str, Any]] = Future()
        with self._lock:
            command_id = next(self._ids)
            self._waiting[command_id] = reply
        try:
            self._socket.send(json.dumps({"id": command_id, "method": method, "params": params or {}}))
        except ConnectionClosed as exc:
            raise BidiError(f"{method}: the BiDi socket is closed") from exc
        message = reply.result(timeout=COMMAND_TIMEOUT_S)
        if message.get("type") == "error":
            raise BidiError(f"{method}: {message.get('error')}: {message.get('message')}")
        result: dict[str, Any] = message["result"]
        return result

    def subscribe(self, *events: str) -> None:
        self.command("session.subscribe", {"events": list(events)})

    def _read(self) -> None:
        try:
            for raw in self._socket:
                message = json.loads(raw)
                if "id" in message and message.get("id") is not None:
                    with self._lock:
                        waiting = self._waiting.pop(message["id"], None)
                    if waiting is not None:
                        waiting.set_result(message)
                elif message.get("type") == "event":
                    self.events.append(message)
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                pending, self._waiting = list(self._waiting.values()), {}
            for waiting in pending:
                waiting.set_exception(BidiError("the BiDi socket closed before the browser answered"))


@contextlib.contextmanager
def open_session(url: str, capabilities: dict[str, Any] | None = None) -> Iterator[BidiSession]:
    """A new session on the browser's BiDi endpoint `url` (ws://host:port/session), ended after the block."""
    with connect(url, max_size=None, open_timeout=COMMAND_TIMEOUT_S) as socket:
        session = BidiSession(socket)
        session.command("session.new", {"capabilities": {"alwaysMatch": capabilities or {}}})
        try:
            yield session
        finally:
            with contextlib.suppress(BidiError, TimeoutError):  # the browser may be gone already
                session.command("session.end")
