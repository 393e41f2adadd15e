"""One accepted Realtime connection: it reads client events, keeps the session and the conversation,
and sends server events in wire order.

Invariants:
- one connection's events are written under one lock, so `sent` is in wire order;
- at most one response is active per connection; it stops being active as its response.done is sent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import parse_qs, urlsplit

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from app.simulator.behaviour import SimulatorBehaviour
from app.simulator.conversation import Conversation, text_tokens
from app.simulator.feedback import is_feedback_request
from app.simulator.responses import ResponseStream, SimulatedResponse, new_response
from app.simulator.session_config import DEFAULT_MODEL, default_session, merge_session
from app.simulator.turns import BYTES_PER_MS, SpeechStarted, SpeechStopped, TurnDetector
from app.simulator.validation import (
    CLIENT_EVENT_KEYS,
    ClientEventError,
    check_type,
    expect_keys,
    invalid_value,
    validate_response_params,
    validate_session,
)
from app.simulator.wire import JsonObject, new_id

log = structlog.get_logger(__name__)

MAX_APPEND_BYTES = 15 * 1024 * 1024
MIN_COMMIT_MS = 100
BETA_HEADER_VALUE = "realtime=v1"


def _type_predicate(event_type: str) -> Callable[[list[JsonObject]], bool]:
    return lambda events: any(event.get("type") == event_type for event in events)


def _duration(seconds: float) -> str:
    """'60 minutes' for 3600, '1 minute' for 60, '5 seconds' for 5: how the expiry message says it."""
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute" + ("s" if minutes != 1 else "")
    return f"{seconds:g} second" + ("s" if seconds != 1 else "")


def _model_of(websocket: ServerConnection) -> str:
    path = websocket.request.path if websocket.request else ""
    return parse_qs(urlsplit(path).query).get("model", [DEFAULT_MODEL])[0]


class SimulatedConnection:
    """One accepted Realtime connection: its state, and everything that crossed it."""

    def __init__(
        self,
        websocket: ServerConnection,
        *,
        number: int,
        behaviour: SimulatorBehaviour,
        record_path: Path | None,
        keep_history: bool,
        routine_level: int = logging.INFO,
    ) -> None:
        """`routine_level`: the level of the lines every connection writes (open, session updated, response done,
        closed)."""
        self.number = number  # 1 for the first connection of a simulator
        self.request_headers = websocket.request.headers if websocket.request else None
        self.received: list[JsonObject] = []
        self.sent: list[JsonObject] = []
        self.input_audio = bytearray()
        self.record_path = record_path
        self.session: JsonObject = default_session(_model_of(websocket), behaviour.session_seconds)
        self._websocket = websocket
        self._behaviour = behaviour
        self._keep_history = keep_history
        self._record: IO[bytes] | None = None
        self._log = log.bind(connection=number)
        self._routine_level = routine_level
        self._send_lock = asyncio.Lock()
        self._received_changed = asyncio.Condition()
        self._sent_changed = asyncio.Condition()
        self._closed = asyncio.Event()
        self._conversation = Conversation()
        self._response: SimulatedResponse | None = None
        self._responses_created = 0
        self._responses = ResponseStream(
            send=self._send, cut=self._cut, conversation=self._conversation, behaviour=behaviour,
            log=self._log, routine_level=routine_level,
        )
        # The input audio buffer and the VAD that watches it.
        self._buffer = bytearray()
        self._turns = TurnDetector()

    # --- public helpers for tests ----------------------------------------------------------------

    # The public API takes `timeout` arguments, as the tests that use it expect (hence the noqa).
    async def wait_for(
        self, predicate: Callable[[list[JsonObject]], bool] | str, timeout: float = 5  # noqa: ASYNC109
    ) -> None:
        """Return once `predicate(received)` holds; a str waits for a client event of that type."""
        test = _type_predicate(predicate) if isinstance(predicate, str) else predicate
        async with asyncio.timeout(timeout), self._received_changed:
            await self._received_changed.wait_for(lambda: test(self.received))

    async def wait_for_sent(
        self, predicate: Callable[[list[JsonObject]], bool] | str, timeout: float = 5  # noqa: ASYNC109
    ) -> None:
        """Return once `predicate(sent)` holds; a str waits for a server event of that type."""
        test = _type_predicate(predicate) if isinstance(predicate, str) else predicate
        async with asyncio.timeout(timeout), self._sent_changed:
            await self._sent_changed.wait_for(lambda: test(self.sent))

    async def wait_closed(self, timeout: float = 5) -> None:  # noqa: ASYNC109
        """Return once the connection is closed and its handler has finished."""
        async with asyncio.timeout(timeout):
            await self._closed.wait()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def expire(self) -> None:
        """End the session as the real API does at `expires_at`: error session_expired, then close 1001.

        The simulator does this by itself `behaviour.session_seconds` after connecting; a test may call it
        at the moment it chooses."""
        message = f"Your session hit the maximum duration of {_duration(self._behaviour.session_seconds)}."
        self._log.info("simulator_session_expired")
        with contextlib.suppress(ConnectionClosed):
            await self._send_error(ClientEventError("session_expired", message), client_event_id=None)
            await self._websocket.close(1001, message)

    def drop(self) -> None:
        """End the connection with no close frame, as a lost network does (the client sees 1006)."""
        self._log.info("simulator_connection_dropped")
        self._websocket.transport.abort()

    @property
    def _item_audio_ms(self) -> dict[str, int]:
        """Assistant audio sent so far per item id (tests script late audio of the newest item)."""
        return self._conversation.item_audio_ms

    # --- the connection's life -------------------------------------------------------------------

    async def serve(self) -> None:
        """Run the connection until the client or the simulator closes it."""
        self._log.log(self._routine_level, "simulator_connection_open", model=self.session["model"])
        expiry: asyncio.Task[None] | None = None
        try:
            if self.record_path is not None:
                self._record = self.record_path.open("wb")
            if self.request_headers is not None and BETA_HEADER_VALUE in self.request_headers.get("OpenAI-Beta", ""):
                # The beta interface was switched off: refuse it after the handshake, like the real API.
                await self._send_error(
                    ClientEventError(
                        "beta_api_shape_disabled",
                        "The Realtime beta API shape has been disabled. Remove the 'OpenAI-Beta: realtime=v1' "
                        "header to use the GA interface.",
                    ),
                    client_event_id=None,
                )
                await self._websocket.close(4000, "beta API shape disabled")
                return
            await self._send({"type": "session.created", "session": self._session_view()})
            expiry = asyncio.create_task(self._expire_after(self._behaviour.session_seconds))
            async for message in self._websocket:
                await self._handle_message(message)
        except ConnectionClosed:
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            await self._abandon_response()
            if self._record is not None:
                self._record.close()
            self._closed.set()
            self._log.log(self._routine_level, "simulator_connection_closed", code=self._websocket.close_code)

    async def _expire_after(self, seconds: float) -> None:
        """A Realtime session lasts at most until `expires_at`."""
        await asyncio.sleep(seconds)
        await self.expire()

    async def _cut(self) -> None:
        """End the connection mid-response, the way behaviour.cut_how says."""
        if self._behaviour.cut_how == "drop":
            self.drop()
        else:
            await self._websocket.close(1011, "simulated upstream failure")

    async def _abandon_response(self) -> None:
        response = self._response
        if response is not None and response.task is not None and not response.task.done():
            response.task.cancel()
            await asyncio.wait({response.task})

    async def _handle_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            await self._send_error(
                ClientEventError("invalid_request", "Binary frames are not supported; send JSON events."), None
            )
            return
        try:
            event = json.loads(message)
        except json.JSONDecodeError as exc:
            await self._send_error(ClientEventError("invalid_json", f"Invalid JSON: {exc.msg}."), None)
            return
        if not isinstance(event, dict):
            await self._send_error(ClientEventError("invalid_json", "Expected a JSON object."), None)
            return
        if self._keep_history:
            self.received.append(event)
        async with self._received_changed:
            self._received_changed.notify_all()
        client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        self._log.debug("simulator_event_in", type=event.get("type"))
        try:
            await self._dispatch(event)
        except ClientEventError as refusal:
            await self._send_error(refusal, client_event_id)

    async def _dispatch(self, event: JsonObject) -> None:
        event_type = event.get("type")
        if not isinstance(event_type, str) or event_type not in CLIENT_EVENT_KEYS:
            raise invalid_value("type", event_type, ", ".join(repr(known) for known in CLIENT_EVENT_KEYS))
        expect_keys(event, CLIENT_EVENT_KEYS[event_type] | {"type", "event_id"}, "")
        if "event_id" in event:
            check_type(event["event_id"], str, "event_id")
        match event_type:
            case "session.update":
                await self._session_update(event)
            case "input_audio_buffer.append":
                await self._append(event)
            case "input_audio_buffer.commit":
                await self._commit(self._turns.speech_item_id or new_id("item"))
            case "input_audio_buffer.clear":
                self._buffer.clear()
                self._turns.end_speech()
                await self._send({"type": "input_audio_buffer.cleared"})
            case "output_audio_buffer.clear":
                raise ClientEventError(
                    "invalid_value", "output_audio_buffer.clear is only supported for WebRTC and SIP.", param="type"
                )
            case "conversation.item.create":
                await self._item_create(event)
            case "conversation.item.retrieve":
                item = self._conversation.retrieve(event)
                await self._send({"type": "conversation.item.retrieved", "item": item})
            case "conversation.item.delete":
                await self._send({"type": "conversation.item.deleted", "item_id": self._conversation.delete(event)})
            case "conversation.item.truncate":
                await self._send({"type": "conversation.item.truncated", **self._conversation.truncate(event)})
            case "response.create":
                await self._response_create(event)
            case "response.cancel":
                await self._response_cancel(event)

    # --- session ---------------------------------------------------------------------------------

    async def _session_update(self, event: JsonObject) -> None:
        if "session" not in event:
            raise ClientEventError(
                "missing_required_parameter", "Missing required parameter: 'session'.", param="session"
            )
        update = validate_session(event["session"])
        if self._behaviour.never_update:
            self._log.info("simulator_session_update_swallowed")
            return
        voice = update.get("audio", {}).get("output", {}).get("voice")
        voice_changes = voice is not None and voice != self.session["audio"]["output"]["voice"]
        if voice_changes and self._conversation.assistant_audio_sent:
            raise ClientEventError(
                "cannot_update_voice",
                "Cannot update a conversation's voice if assistant audio is present.",
                param="session.audio.output.voice",
            )
        self.session = merge_session(self.session, update)
        self._log.log(self._routine_level, "simulator_session_updated", fields=sorted(update))
        await self._send({"type": "session.updated", "session": self._session_view()})

    def _session_view(self) -> JsonObject:
        return copy.deepcopy(self.session)

    def _turn_detection(self) -> JsonObject | None:
        turn_detection: JsonObject | None = self.session["audio"]["input"]["turn_detection"]
        return turn_detection if self._behaviour.vad else None

    # --- input audio, VAD and commits ------------------------------------------------------------

    async def _append(self, event: JsonObject) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise ClientEventError("missing_required_parameter", "Missing required parameter: 'audio'.", param="audio")
        if len(audio) > MAX_APPEND_BYTES * 4 // 3 + 4:
            raise ClientEventError(
                "invalid_value", "Audio too large: an append may carry at most 15 MiB.", param="audio"
            )
        try:
            pcm = base64.b64decode(audio, validate=True)
        except binascii.Error as exc:
            raise ClientEventError(
                "invalid_value", "Invalid 'audio': expected base64-encoded audio.", param="audio"
            ) from exc
        if self._keep_history:
            self.input_audio += pcm
        if self._record is not None:
            self._record.write(pcm)
            self._record.flush()
        self._buffer += pcm
        turn_detection = self._turn_detection()
        if turn_detection is not None:
            await self._detect_speech(pcm, turn_detection)
        else:
            self._turns.skip(pcm)

    async def _detect_speech(self, pcm: bytes, turn_detection: JsonObject) -> None:
        for turn_event in self._turns.feed(pcm, turn_detection):
            match turn_event:
                case SpeechStarted():
                    await self._speech_started(turn_event, turn_detection)
                case SpeechStopped():
                    await self._speech_stopped(turn_event, turn_detection)
        if self._turns.speech_item_id is None:
            # Between turns the server keeps only the prefix padding, so a silent open mic costs nothing.
            keep_bytes = int(turn_detection.get("prefix_padding_ms", 300)) * BYTES_PER_MS
            del self._buffer[: max(0, len(self._buffer) - keep_bytes)]

    async def _speech_started(self, started: SpeechStarted, turn_detection: JsonObject) -> None:
        await self._send({
            "type": "input_audio_buffer.speech_started",
            "audio_start_ms": started.audio_start_ms,
            "item_id": started.item_id,
        })
        # speech_started while the tutor speaks = barge-in: the server cancels the response itself.
        if self._response is not None and turn_detection.get("interrupt_response") is not False:
            await self._cancel_response(self._response, "turn_detected")

    async def _speech_stopped(self, stopped: SpeechStopped, turn_detection: JsonObject) -> None:
        await self._send({
            "type": "input_audio_buffer.speech_stopped",
            "audio_end_ms": stopped.audio_end_ms,
            "item_id": stopped.item_id,
        })
        await self._commit(stopped.item_id)
        if turn_detection.get("create_response") is not False and self._response is None:
            self._start_response({})

    async def _commit(self, item_id: str) -> None:
        buffered_ms = len(self._buffer) / BYTES_PER_MS
        if buffered_ms < MIN_COMMIT_MS:
            raise ClientEventError(
                "input_audio_buffer_commit_empty",
                f"Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms of "
                f"audio, but buffer only has {buffered_ms:.2f}ms of audio.",
            )
        self._buffer.clear()
        self._turns.end_speech()
        previous_item_id = self._conversation.last_item_id()
        await self._send(
            {"type": "input_audio_buffer.committed", "previous_item_id": previous_item_id, "item_id": item_id}
        )
        item: JsonObject = {
            "id": item_id, "type": "message", "role": "user", "status": "completed", "object": "realtime.item",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self._conversation.items[item_id] = item
        self._conversation.count(item_id, audio_ms=int(buffered_ms))
        await self._send({"type": "conversation.item.added", "previous_item_id": previous_item_id, "item": item})
        await self._send({"type": "conversation.item.done", "previous_item_id": previous_item_id, "item": item})
        transcription = self.session["audio"]["input"]["transcription"]
        if transcription is not None:
            await self._transcribe(item, buffered_ms / 1000, str(transcription.get("model") or ""))

    async def _transcribe(self, item: JsonObject, seconds: float, model: str) -> None:
        transcript = f"(I said something for {seconds:.1f} seconds)"
        item["content"][0]["transcript"] = transcript
        await self._send({
            "type": "conversation.item.input_audio_transcription.delta",
            "item_id": item["id"], "content_index": 0, "delta": transcript,
        })
        if model == "whisper-1":
            usage: JsonObject = {"type": "duration", "seconds": round(seconds, 2)}
        else:
            audio_tokens = max(1, round(seconds * 10))
            output_tokens = text_tokens(transcript)
            usage = {
                "type": "tokens", "input_tokens": audio_tokens, "output_tokens": output_tokens,
                "total_tokens": audio_tokens + output_tokens,
                "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
            }
        await self._send({
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item["id"], "content_index": 0, "transcript": transcript, "usage": usage,
        })

    # --- conversation items ----------------------------------------------------------------------

    async def _item_create(self, event: JsonObject) -> None:
        previous_item_id, item = self._conversation.create_item(event)
        await self._send({"type": "conversation.item.added", "previous_item_id": previous_item_id, "item": item})
        await self._send({"type": "conversation.item.done", "previous_item_id": previous_item_id, "item": item})

    # --- responses -------------------------------------------------------------------------------

    async def _response_create(self, event: JsonObject) -> None:
        params = validate_response_params(event["response"]) if event.get("response") is not None else {}
        if self._response is not None:
            raise ClientEventError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._response.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        if self._behaviour.never_create:
            self._log.info("simulator_response_create_swallowed")
            return
        if self._behaviour.feedback_fault == "never" and is_feedback_request(params.get("metadata")):
            self._log.info("simulator_feedback_request_swallowed")
            return
        self._start_response(params)

    async def _response_cancel(self, event: JsonObject) -> None:
        response_id = event.get("response_id")
        response = self._response
        if response is None or (response_id is not None and response_id != response.id):
            raise ClientEventError(
                "response_cancel_not_active", "Cancellation failed: no active response found."
            )
        await self._cancel_response(response, "client_cancelled")

    async def _cancel_response(self, response: SimulatedResponse, reason: str) -> None:
        """Stop `response` and return once its response.done (status cancelled) was sent."""
        response.cancel_reason = reason
        response.cancelled.set()
        if response.task is not None:
            await response.task
    def _start_response(self, params: JsonObject) -> None:
        self._responses_created += 1
        number = self._responses_created
        response = new_response(
            params, self.session, number=number, behaviour=self._behaviour, connection_number=self.number
        )
        # Active from now on, so a second response.create is refused even before response.created.
        self._response = response
        response.task = asyncio.create_task(self._run_response(response), name=f"simulated-{response.id}")

    async def _run_response(self, response: SimulatedResponse) -> None:
        try:
            await self._responses.run(response)
        finally:
            if self._response is response:
                self._response = None

    # --- sending ---------------------------------------------------------------------------------

    async def _send(self, event: JsonObject, *, ends: SimulatedResponse | None = None) -> None:
        """Send one server event (after the configured delay), in order; `ends` = its response.done."""
        async with self._send_lock:
            if self._behaviour.event_delay_ms > 0:
                await asyncio.sleep(self._behaviour.event_delay_ms / 1000)
            event = {"event_id": new_id("event"), **event}
            if ends is not None and self._response is ends:
                # No longer active as its response.done goes out: a response.create may follow at once.
                self._response = None
            self._log.debug("simulator_event_out", type=event["type"])
            await self._websocket.send(json.dumps(event))
            if self._keep_history:
                self.sent.append(event)
        async with self._sent_changed:
            self._sent_changed.notify_all()

    async def _send_error(self, refusal: ClientEventError, client_event_id: str | None) -> None:
        self._log.info("simulator_error_sent", code=refusal.code, param=refusal.param)
        await self._send({
            "type": "error",
            "error": {
                "type": refusal.error_type, "code": refusal.code, "message": refusal.message,
                "param": refusal.param, "event_id": client_event_id,
            },
        })

