"""Responses: from response.create to response.done, with the event sequence the GA API sends.

A response in the conversation sends response.created, rate_limits.updated, response.output_item.added,
conversation.item.added, response.content_part.added, the deltas (audio with its transcript in step, or
text), their dones, response.output_item.done, conversation.item.done and response.done carrying the
output and usage. An out-of-band response (`conversation: "none"`) sends the same minus the
conversation.item events, its item never joins the conversation, and it does not move the tutor on to
its next line; a feedback request (metadata purpose "feedback") answers with the lesson's feedback JSON.
Faults replace the message with a failed, cancelled or incomplete response.done.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from websockets.exceptions import ConnectionClosed

from app.simulator.behaviour import ResponseFault, SimulatorBehaviour
from app.simulator.conversation import Conversation, text_tokens
from app.simulator.feedback import feedback_text, is_feedback_request, not_feedback_text
from app.simulator.turns import BYTES_PER_MS
from app.simulator.tutor import tutor_text
from app.simulator.voice import BYTES_PER_SAMPLE, CHUNK_SAMPLES, SAMPLE_RATE, Utterance
from app.simulator.wire import JsonObject, new_id

# What a failed response says in status_details.error, by code: (error type, message).
FAILED_RESPONSE_ERRORS: dict[str, tuple[str, str]] = {
    "insufficient_quota": ("insufficient_quota",
                           "You exceeded your current quota, please check your plan and billing details."),
    "rate_limit_exceeded": ("rate_limit_exceeded", "Rate limit reached for tokens per min."),
    "server_error": ("server_error", "The server had an error while processing your request."),
}


@dataclass
class SimulatedResponse:
    """One response from response.created to response.done."""

    id: str
    number: int
    fault: ResponseFault
    instructions: str
    facts: str  # where tutor_facts() looks for the student's name, level and language
    output_modalities: list[str]
    voice: str | JsonObject
    in_conversation: bool
    metadata: JsonObject | None
    feedback: bool  # the lesson's feedback was asked for (metadata purpose "feedback")
    cut_after_deltas: int | None  # the connection ends after this many of its output deltas
    cancel_reason: str | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


def new_response(
    params: JsonObject, session: JsonObject, *, number: int, behaviour: SimulatorBehaviour, connection_number: int
) -> SimulatedResponse:
    """The `number`-th response of a connection, as a validated response.create's `params` ask for it,
    with the session's defaults and the faults `behaviour` gives it."""
    audio_output = params.get("audio", {}).get("output", {})
    metadata = params.get("metadata")
    feedback = is_feedback_request(metadata)
    fault = behaviour.fault_for(number)
    if feedback and behaviour.feedback_fault == "failed":
        fault = "failed"
    return SimulatedResponse(
        id=new_id("resp"),
        number=number,
        fault=fault,
        instructions=str(params.get("instructions") or session["instructions"]),
        # Response-level instructions may omit the student's lines; the session's still name them.
        facts=f"{params.get('instructions') or ''}\n{session['instructions']}",
        output_modalities=list(params.get("output_modalities") or session["output_modalities"]),
        voice=audio_output.get("voice", session["audio"]["output"]["voice"]),
        in_conversation=params.get("conversation", "auto") != "none",
        metadata=metadata,
        feedback=feedback,
        cut_after_deltas=behaviour.cuts(connection_number, number),
    )


def token_usage(*, input_text: int, input_audio: int, cached: int, output_text: int, output_audio: int) -> JsonObject:
    """A response.done `usage` object."""
    cached_text = min(cached, input_text)
    return {
        "total_tokens": input_text + input_audio + output_text + output_audio,
        "input_tokens": input_text + input_audio,
        "output_tokens": output_text + output_audio,
        "input_token_details": {
            "text_tokens": input_text,
            "audio_tokens": input_audio,
            "image_tokens": 0,
            "cached_tokens": cached,
            "cached_tokens_details": {
                "text_tokens": cached_text, "audio_tokens": cached - cached_text, "image_tokens": 0,
            },
        },
        "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
    }


def rate_limits() -> list[JsonObject]:
    """What rate_limits.updated reports after each response.created."""
    return [
        {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
        {"name": "tokens", "limit": 40000, "remaining": 38790, "reset_seconds": 1.815},
    ]


class ConnectionCut(Exception):
    """The simulator ended the connection on purpose (cut_after_deltas); the response stops here."""


class SendEvent(Protocol):
    """The connection's ordered sender; `ends` marks the response.done that ends `ends`."""

    async def __call__(self, event: JsonObject, *, ends: SimulatedResponse | None = None) -> None: ...


class ResponseStream:
    """Plays responses out on one connection: each run() sends one response's events, in order."""

    def __init__(
        self,
        *,
        send: SendEvent,
        cut: Callable[[], Awaitable[None]],
        conversation: Conversation,
        behaviour: SimulatorBehaviour,
        log: structlog.typing.FilteringBoundLogger,
        routine_level: int = logging.INFO,
    ) -> None:
        self._send = send
        self._cut = cut
        self._conversation = conversation
        self._behaviour = behaviour
        self._log = log
        self._routine_level = routine_level  # of simulator_response_done, written for every response

    async def run(self, response: SimulatedResponse) -> None:
        """Send `response` from response.created to response.done (or until the socket closes)."""
        try:
            created = self._response_object(response, "in_progress", [])
            await self._send({"type": "response.created", "response": created})
            await self._send({"type": "rate_limits.updated", "rate_limits": rate_limits()})
            match response.fault:
                case "failed":
                    error_type, message = FAILED_RESPONSE_ERRORS.get(
                        self._behaviour.failed_code, ("invalid_request_error", "The response failed.")
                    )
                    details = {
                        "type": "failed",
                        "error": {"type": error_type, "code": self._behaviour.failed_code, "message": message},
                    }
                    zero = token_usage(input_text=0, input_audio=0, cached=0, output_text=0, output_audio=0)
                    await self._finish(response, "failed", [], details, zero)
                case "cancelled":
                    await self._finish(response, "cancelled", [], {"type": "cancelled", "reason": "turn_detected"},
                                       self._usage_for(response, "", 0))
                case "incomplete":
                    await self._finish(response, "incomplete", [], {"type": "incomplete", "reason": "content_filter"},
                                       self._usage_for(response, "", 0))
                case "empty" | "none":
                    if response.feedback and self._behaviour.feedback_delay_ms > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(response.cancelled.wait(), self._behaviour.feedback_delay_ms / 1000)
                    await self._stream_message(response)
        except (ConnectionClosed, ConnectionCut):
            self._log.info("simulator_response_abandoned", response_id=response.id)

    def _response_object(
        self, response: SimulatedResponse, status: str, output: list[JsonObject], *,
        status_details: JsonObject | None = None, usage: JsonObject | None = None,
    ) -> JsonObject:
        return {
            "object": "realtime.response",
            "id": response.id,
            "status": status,
            "status_details": status_details,
            "output": output,
            "conversation_id": self._conversation.id if response.in_conversation else None,
            "output_modalities": response.output_modalities,
            "max_output_tokens": "inf",
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE}, "voice": response.voice}},
            "usage": usage,
            "metadata": response.metadata,
        }

    async def _finish(
        self, response: SimulatedResponse, status: str, output: list[JsonObject],
        status_details: JsonObject, usage: JsonObject,
    ) -> None:
        event = {
            "type": "response.done",
            "response": self._response_object(response, status, output, status_details=status_details, usage=usage),
        }
        self._conversation.previous_input_tokens = int(usage["input_tokens"])
        self._log.log(self._routine_level, "simulator_response_done", response_id=response.id, status=status,
                      details=status_details)
        await self._send(event, ends=response)

    def _usage_for(self, response: SimulatedResponse, text: str, audio_ms: int) -> JsonObject:
        conversation = self._conversation
        input_text = text_tokens(response.instructions) + conversation.text_tokens
        input_audio = conversation.audio_ms // 100  # about 10 input audio tokens a second
        previous = conversation.previous_input_tokens
        cached = previous // 64 * 64 if previous >= 1024 else 0
        return token_usage(
            input_text=input_text, input_audio=input_audio, cached=min(cached, input_text + input_audio),
            output_text=text_tokens(text) if text else 0, output_audio=audio_ms // 50,
        )

    async def _stream_message(self, response: SimulatedResponse) -> None:
        """The assistant message of a response: item, content part, deltas, dones, response.done."""
        conversation = self._conversation
        item_id = new_id("item")
        text_only = response.output_modalities == ["text"]
        item: JsonObject = {
            "id": item_id, "type": "message", "role": "assistant", "status": "in_progress",
            "object": "realtime.item", "content": [],
        }
        previous_item_id = conversation.last_item_id()
        await self._send({"type": "response.output_item.added", "response_id": response.id, "output_index": 0,
                          "item": copy.deepcopy(item)})
        if response.in_conversation:
            conversation.items[item_id] = item
            await self._send({"type": "conversation.item.added", "previous_item_id": previous_item_id,
                              "item": copy.deepcopy(item)})
        text = self._text_for(response)
        cut_off = response.feedback and self._behaviour.feedback_fault == "incomplete"
        if cut_off:
            text = text[: len(text) // 2]  # as far as max_output_tokens let the model write
        audio_ms = 0
        if text and text_only:
            spoken = await self._stream_text(response, item_id, text)
            item["content"] = [{"type": "output_text", "text": spoken}]
        elif text:
            spoken, audio_ms = await self._stream_audio(response, item_id, text)
            item["content"] = [{"type": "output_audio", "transcript": spoken}]
        else:
            spoken = ""
        cancelled = response.cancel_reason is not None
        usage = self._usage_for(response, spoken, audio_ms)  # before this item joins the context
        item["status"] = "incomplete" if cancelled or cut_off else "completed"
        await self._send({"type": "response.output_item.done", "response_id": response.id, "output_index": 0,
                          "item": copy.deepcopy(item)})
        if response.in_conversation:
            if item_id in conversation.items:  # an item deleted while it was being said adds nothing
                # Assistant audio costs about twice as many tokens as the student's.
                conversation.count(item_id, text_tokens=text_tokens(spoken) if spoken else 0,
                                   audio_ms=audio_ms * 2, spoken=bool(spoken))
            await self._send({"type": "conversation.item.done", "previous_item_id": previous_item_id,
                              "item": copy.deepcopy(item)})
        if cancelled:
            await self._finish(response, "cancelled", [item], {"type": "cancelled", "reason": response.cancel_reason},
                               usage)
        elif cut_off:
            await self._finish(response, "incomplete", [item], {"type": "incomplete", "reason": "max_output_tokens"},
                               usage)
        else:
            await self._finish(response, "completed", [item], {"type": "completed"}, usage)

    def _text_for(self, response: SimulatedResponse) -> str:
        if response.fault == "empty":
            return ""
        if not response.feedback:
            return tutor_text(response.facts, self._conversation.turns_spoken)
        if self._behaviour.feedback_fault == "invalid_json":
            return not_feedback_text(response.facts)
        # With no `input`, an out-of-band response sees the whole default conversation, as the model has it.
        return feedback_text(self._conversation.context_items(), response.facts)

    async def _stream_text(self, response: SimulatedResponse, item_id: str, text: str) -> str:
        where = {"response_id": response.id, "item_id": item_id, "output_index": 0, "content_index": 0}
        await self._send({"type": "response.content_part.added", **where, "part": {"type": "text", "text": ""}})
        written: list[str] = []
        for deltas, word in enumerate(Utterance(text).words, start=1):
            if response.cancel_reason is not None:
                break
            written.append(word.text)
            await self._send({"type": "response.output_text.delta", **where, "delta": word.text})
            await self._cut_if_due(response, deltas)
        text = "".join(written).strip()
        await self._send({"type": "response.output_text.done", **where, "text": text})
        await self._send({"type": "response.content_part.done", **where, "part": {"type": "text", "text": text}})
        return text

    async def _stream_audio(self, response: SimulatedResponse, item_id: str, text: str) -> tuple[str, int]:
        """Audio and transcript deltas in step, paced; returns (transcript spoken, audio ms sent)."""
        conversation = self._conversation
        where = {"response_id": response.id, "item_id": item_id, "output_index": 0, "content_index": 0}
        await self._send({"type": "response.content_part.added", **where, "part": {"type": "audio", "transcript": ""}})
        utterance = Utterance(text)
        words = list(utterance.words)
        spoken: list[str] = []
        audio_bytes = 0
        started = time.monotonic()
        seconds_per_chunk = CHUNK_SAMPLES / SAMPLE_RATE
        conversation.item_audio_ms[item_id] = 0
        said = conversation.item_words[item_id] = []
        for deltas, chunk in enumerate(utterance.chunks(), start=1):
            if response.cancel_reason is not None:
                break
            await self._send({"type": "response.output_audio.delta", **where,
                              "delta": base64.b64encode(chunk).decode("ascii")})
            conversation.assistant_audio_sent = True
            audio_bytes += len(chunk)
            conversation.item_audio_ms[item_id] = audio_bytes // BYTES_PER_MS
            await self._cut_if_due(response, deltas)
            # A word's transcript goes out with the audio chunk its first syllable starts in.
            chunk_end_sample = audio_bytes // BYTES_PER_SAMPLE
            while words and words[0].start_sample < chunk_end_sample:
                word = words.pop(0)
                spoken.append(word.text)
                said.append((word.start_sample * 1000 // SAMPLE_RATE, word.text))
                await self._send({"type": "response.output_audio_transcript.delta", **where, "delta": word.text})
            if self._behaviour.audio_pace > 0:
                deadline = started + deltas * seconds_per_chunk / self._behaviour.audio_pace
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(response.cancelled.wait(), max(0.0, deadline - time.monotonic()))
            else:
                await asyncio.sleep(0)  # let cancels and other connections in
        if response.cancel_reason is None:
            for word in words:
                spoken.append(word.text)
                said.append((word.start_sample * 1000 // SAMPLE_RATE, word.text))
                await self._send({"type": "response.output_audio_transcript.delta", **where, "delta": word.text})
        transcript = "".join(spoken).strip()
        await self._send({"type": "response.output_audio.done", **where})
        await self._send({"type": "response.output_audio_transcript.done", **where, "transcript": transcript})
        await self._send({"type": "response.content_part.done", **where,
                          "part": {"type": "audio", "transcript": transcript}})
        return transcript, audio_bytes // BYTES_PER_MS

    async def _cut_if_due(self, response: SimulatedResponse, deltas: int) -> None:
        """End the connection when `response` has sent as many deltas as the behaviour's cut allows."""
        if deltas == response.cut_after_deltas:
            self._log.info("simulator_cut", deltas=deltas, how=self._behaviour.cut_how)
            await self._cut()
            raise ConnectionCut
