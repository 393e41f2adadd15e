"""The HTTP side of the Realtime handshake, and the server that accepts connections on a local port."""

from __future__ import annotations

import asyncio
import http
import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from app.simulator.behaviour import SimulatorBehaviour
from app.simulator.connection import MAX_APPEND_BYTES, SimulatedConnection

log = structlog.get_logger(__name__)

HEALTHY = SimulatorBehaviour()

# What a refused handshake answers, like api.openai.com does: (error type, code, message).
HANDSHAKE_ERRORS: dict[int, tuple[str, str | None, str]] = {
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory",
          "Country, region, or territory not supported"),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("insufficient_quota", "insufficient_quota",
          "You exceeded your current quota, please check your plan and billing details."),
    500: ("server_error", "server_error", "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", "service_unavailable", "The engine is currently overloaded, please try again later."),
}
# What a failed response says in status_details.error, by code: (error type, message).

def _json_response(
    connection: ServerConnection, status: int, error_type: str, code: str | None, message: str
) -> Response:
    body = json.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}})
    response = connection.respond(status, body)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


class RealtimeSimulator:
    """A Realtime server on a local port; `async with RealtimeSimulator() as simulator: simulator.url`."""

    def __init__(
        self,
        behaviour: SimulatorBehaviour = HEALTHY,
        *,
        record_dir: Path | None = None,
        keep_history: bool = True,
        quiet: bool = False,
    ) -> None:
        """`record_dir`: write each connection's appended audio to DIR/connection-<n>.pcm (n from 1).
        `keep_history=False` keeps no `received`/`sent`/`input_audio` (for the long-running demo).
        `quiet=True` logs each connection's routine lines (open, session updated, response done, closed) at debug
        level: embedded in the app, the relay's own lines about its upstream say as much."""
        self.behaviour = behaviour
        self.record_dir = record_dir
        self.keep_history = keep_history
        self._routine_level = logging.DEBUG if quiet else logging.INFO
        self.connections: list[SimulatedConnection] = []
        self._handed_out = 0
        self._new_connection = asyncio.Condition()
        self._server: Server | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """ws://HOST:PORT/v1/realtime, once started."""
        if self._url is None:
            raise RuntimeError("the simulator is not started; call start() first")
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (0 = any free port); `url` says where."""
        if self.record_dir is not None:
            self.record_dir.mkdir(parents=True, exist_ok=True)
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            compression=None,
            max_size=2 * MAX_APPEND_BYTES,
        )
        bound_host, bound_port = self._server.sockets[0].getsockname()[:2]
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        self._url = f"ws://{url_host}:{bound_port}/v1/realtime"
        log.info("simulator_started", url=self._url, behaviour=self.behaviour)

    async def stop(self) -> None:
        """Close every connection (1001) and stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            log.info("simulator_stopped")

    async def __aenter__(self) -> RealtimeSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def next_connection(self, timeout: float = 5) -> SimulatedConnection:  # noqa: ASYNC109
        """The next accepted connection not yet handed out by this method (waits for it)."""
        async with asyncio.timeout(timeout), self._new_connection:
            await self._new_connection.wait_for(lambda: len(self.connections) > self._handed_out)
        self._handed_out += 1
        return self.connections[self._handed_out - 1]

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """The HTTP side of the handshake: path, refusals and authentication."""
        path = urlsplit(request.path).path.rstrip("/")
        if not path.endswith("/v1/realtime"):
            return _json_response(connection, 404, "invalid_request_error", "not_found", f"Unknown path {path!r}.")
        status = self.behaviour.refuse_handshake
        if status is not None:
            error_type, code, message = HANDSHAKE_ERRORS.get(
                status, ("server_error", None, f"{http.HTTPStatus(status).phrase}.")
            )
            log.info("simulator_handshake_refused", status=status)
            return _json_response(connection, status, error_type, code, message)
        bearer = request.headers.get("Authorization", "")
        has_bearer = bearer.startswith("Bearer ") and bearer.removeprefix("Bearer ").strip() != ""
        if not has_bearer and not request.headers.get("api-key", "").strip():
            return _json_response(
                connection, 401, "invalid_request_error", None,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        return None

    async def _handle(self, websocket: ServerConnection) -> None:
        number = len(self.connections) + 1
        record_path = self.record_dir / f"connection-{number}.pcm" if self.record_dir is not None else None
        connection = SimulatedConnection(
            websocket, number=number, behaviour=self.behaviour, record_path=record_path,
            keep_history=self.keep_history, routine_level=self._routine_level,
        )
        self.connections.append(connection)
        async with self._new_connection:
            self._new_connection.notify_all()
        await connection.serve()

