"""The Realtime simulator against real sockets: every server event it sends must pass the SDK oracle.

Clients here are plain `websockets` clients; every event read goes through `assert_valid_server_event`
and every well-formed event sent through `assert_valid_client_event`. Tests synchronise on messages,
never on time.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import log_lines, process_in_own_group
from openai import AsyncOpenAI
from realtime_client import (
    API_KEY,
    GA_SESSION,
    MODEL,
    PROMPT,
    RealtimeTestClient,
    of_type,
    realtime_client,
    running,
    silence,
    speech,
)
from sdk_oracle import assert_valid_client_event, assert_valid_server_event
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.logging import configure_logging
from app.settings import Settings
from app.simulator import RealtimeSimulator, SimulatorBehaviour, tutor_facts
from app.simulator.voice import SAMPLE_RATE, Utterance

REPO = Path(__file__).resolve().parent.parent
GREETING_ORDER = [
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    "response.output_audio.delta",  # interleaved with transcript deltas (checked separately)
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]
DELTAS = {"response.output_audio.delta", "response.output_audio_transcript.delta"}
BETA_FIELDS = [
    ("modalities", ["audio", "text"]),
    ("voice", "alloy"),
    ("input_audio_format", "pcm16"),
    ("output_audio_format", "pcm16"),
    ("turn_detection", {"type": "server_vad"}),
    ("input_audio_transcription", {"model": "whisper-1"}),
    ("temperature", 0.8),
    ("max_response_output_tokens", 200),
]


@pytest.fixture
async def simulator() -> AsyncIterator[RealtimeSimulator]:
    """A healthy simulator that streams audio as fast as it can."""
    async with running(SimulatorBehaviour(audio_pace=0)) as started:
        yield started


def collapsed_types(events: list[dict[str, Any]]) -> list[str]:
    """Event types with the run of interleaved audio/transcript deltas folded into one entry."""
    types: list[str] = []
    for event in events:
        kind = "response.output_audio.delta" if event["type"] in DELTAS else event["type"]
        if not types or types[-1] != kind or kind not in DELTAS:
            types.append(kind)
    return types


def audio_of(events: list[dict[str, Any]]) -> np.ndarray:
    pcm = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


# --- connecting --------------------------------------------------------------------------------


async def test_session_created_is_a_full_default_ga_session(simulator: RealtimeSimulator) -> None:
    async with realtime_client(simulator) as client:
        connection = await simulator.next_connection()
        (created,) = client.events
        session = created["session"]
        assert session["type"] == "realtime"
        assert session["id"].startswith("sess_")
        assert session["model"] == MODEL
        assert session["output_modalities"] == ["audio"]
        assert session["audio"]["output"]["voice"] == "alloy"
        assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        assert "student" not in session["instructions"]
        assert time.time() + 3500 < session["expires_at"] <= time.time() + 3600
        assert connection.request_headers["Authorization"] == f"Bearer {API_KEY}"
        assert connection.sent == [created]


async def test_api_key_header_is_accepted_like_azure(simulator: RealtimeSimulator) -> None:
    async with realtime_client(simulator, headers={"api-key": API_KEY}) as client:
        assert client.events[0]["type"] == "session.created"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}])
async def test_missing_credentials_are_refused_with_401(simulator: RealtimeSimulator, headers: dict[str, str]) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"{simulator.url}?model={MODEL}", additional_headers=headers)
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(("status", "error_type"), [(401, "invalid_request_error"), (403, "invalid_request_error"),
                                                    (429, "insufficient_quota"), (500, "server_error")])
async def test_refuse_handshake_answers_the_status_with_an_openai_error_body(status: int, error_type: str) -> None:
    async with running(SimulatorBehaviour(refuse_handshake=status)) as simulator:
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{simulator.url}?model={MODEL}", additional_headers={"Authorization": f"Bearer {API_KEY}"})
        response = refused.value.response
        assert response.status_code == status
        assert response.headers["Content-Type"] == "application/json"
        error = json.loads(response.body)["error"]
        assert error["type"] == error_type
        assert error["message"]
        assert "code" in error
        assert simulator.connections == []


async def test_beta_header_gets_beta_api_shape_disabled_and_close_4000(simulator: RealtimeSimulator) -> None:
    async with connect(
        f"{simulator.url}?model={MODEL}",
        additional_headers={"Authorization": f"Bearer {API_KEY}", "OpenAI-Beta": "realtime=v1"},
    ) as websocket:
        client = RealtimeTestClient(websocket)
        error = await client.receive()
        assert error["type"] == "error"
        assert error["error"]["code"] == "beta_api_shape_disabled"
        with pytest.raises(ConnectionClosed):
            await client.receive()
        assert websocket.close_code == 4000


async def test_next_connection_hands_out_each_connection_once_in_order(simulator: RealtimeSimulator) -> None:
    async with realtime_client(simulator), realtime_client(simulator):
        first, second = await simulator.next_connection(), await simulator.next_connection()
        assert (first.number, second.number) == (1, 2)
        assert simulator.connections == [first, second]
    await first.wait_closed()
    await second.wait_closed()
    assert first.closed
    with pytest.raises(TimeoutError):
        await simulator.next_connection(timeout=0.05)


# --- session.update ----------------------------------------------------------------------------


async def test_session_update_answers_the_whole_effective_session(simulator: RealtimeSimulator) -> None:
    async with realtime_client(simulator) as client:
        updated = (await client.configure())["session"]
        assert updated["instructions"] == PROMPT
        assert updated["audio"]["output"]["voice"] == "marin"
        assert updated["audio"]["input"]["transcription"] == {"model": "gpt-transcribe", "language": "en"}
        assert updated["id"] == client.events[0]["session"]["id"]
        # Only the fields sent change.
        await client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}})
        again = (await client.until("session.updated"))[-1]["session"]
        assert again["instructions"] == "Be brief."
        assert again["audio"] == updated["audio"]


@pytest.mark.parametrize(("field", "value"), BETA_FIELDS)
async def test_beta_session_field_is_refused_and_leaves_the_session_unchanged(
    simulator: RealtimeSimulator, field: str, value: object
) -> None:
    async with realtime_client(simulator) as client:
        connection = await simulator.next_connection()
        before = json.loads(json.dumps(connection.session))
        beta = {"type": "session.update", "event_id": "evt_beta_1",
                "session": {"type": "realtime", "instructions": PROMPT, field: value}}
        with pytest.raises(AssertionError, match=f"session.{field}"):
            assert_valid_client_event(beta)  # the oracle catches it too
        await client.send(beta, conforming=False)
        error = await client.receive()
        assert error["type"] == "error"
        assert error["error"]["message"] == f"Unknown parameter: 'session.{field}'."
        assert error["error"]["param"] == f"session.{field}"
        assert error["error"]["event_id"] == "evt_beta_1"
        assert connection.session == before
        # A response now runs with the default instructions: the silent way to lose the tutor.
        await client.send({"type": "response.create"})
        done = (await client.until("response.done"))[-1]
        assert "Ana" not in done["response"]["output"][0]["content"][0]["transcript"]


async def test_top_level_beta_field_on_the_event_is_refused(simulator: RealtimeSimulator) -> None:
    async with realtime_client(simulator) as client:
        await client.send({"type": "session.update", "event_id": "evt_top", "modalities": ["audio"],
                           "session": {"type": "realtime"}}, conforming=False)
        error = await client.receive()
        assert error["error"]["param"] == "modalities"
        assert error["error"]["event_id"] == "evt_top"


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        ({"instructions": PROMPT}, "missing_required_parameter", "session.type"),
        ({"type": "realtime", "output_modalities": ["audio", "text"]}, "invalid_value", "session.output_modalities"),
        ({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
         "invalid_value", "session.audio.input.format.rate"),
        ({"type": "realtime", "audio": {"output": {"voice": "nova"}}}, "invalid_value", "session.audio.output.voice"),
        ({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "eagerness": "low"}}}},
         "unknown_parameter", "session.audio.input.turn_detection.eagerness"),
    ],
)
async def test_invalid_session_update_is_refused_with_the_offending_param(
    simulator: RealtimeSimulator, session: dict[str, Any], code: str, param: str
) -> None:
    async with realtime_client(simulator) as client:
        await client.send({"type": "session.update", "event_id": "evt_bad", "session": session}, conforming=False)
        error = await client.receive()
        assert (error["type"], error["error"]["code"], error["error"]["param"]) == ("error", code, param)
        assert error["error"]["event_id"] == "evt_bad"


async def test_voice_cannot_change_once_audio_was_produced(simulator: RealtimeSimulator) -> None:
    async with realtime_client(simulator) as client:
        await client.configure()
        await client.send({"type": "response.create"})
        await client.until("response.done")
        await client.send({"type": "session.update", "event_id": "evt_voice",
                           "session": {"type": "realtime", "audio": {"output": {"voice": "cedar"}}}})
        error = await client.receive()
        assert error["error"]["code"] == "cannot_update_voice"


async def test_unknown_client_event_type_is_refused_with_its_event_id(simulator: RealtimeSimulator) -> None:
    async with realtime_client(simulator) as client:
        await client.send({"type": "response.audio.delta", "event_id": "evt_x"}, conforming=False)
        error = await client.receive()
        assert error["error"]["type"] == "invalid_request_error"
        assert error["error"]["code"] == "invalid_value"
        assert error["error"]["param"] == "type"
        assert error["error"]["event_id"] == "evt_x"
        await client.websocket.send("not json")
        assert (await client.receive())["error"]["code"] == "invalid_json"


# --- the greeting ------------------------------------------------------------------------------


async def test_greeting_follows_the_ga_sequence_and_names_the_student() -> None:
    async with running(SimulatorBehaviour()) as simulator, realtime_client(simulator) as client:  # paced, 4x
        await client.configure()
        await client.send({"type": "response.create", "event_id": "evt_greet"})
        events = await client.until("response.done")
        assert collapsed_types(events) == GREETING_ORDER

        created, done = events[0], events[-1]
        assert created["response"]["status"] == "in_progress"
        assert created["response"]["output"] == []
        response_id = created["response"]["id"]
        assert response_id.startswith("resp_")
        item_id = of_type(events, "response.output_item.added")[0]["item"]["id"]
        for event in events:
            if "response_id" in event:
                assert event["response_id"] == response_id
            if "item_id" in event:
                assert event["item_id"] == item_id
        assert of_type(events, "response.content_part.added")[0]["part"]["type"] == "audio"

        # Audio and transcript deltas are interleaved, not one block after the other.
        kinds = [event["type"] for event in events if event["type"] in DELTAS]
        first_audio = kinds.index("response.output_audio.delta")
        last_audio = len(kinds) - 1 - kinds[::-1].index("response.output_audio.delta")
        assert "response.output_audio_transcript.delta" in kinds[first_audio:last_audio]
        assert kinds.count("response.output_audio_transcript.delta") > 5

        transcript = of_type(events, "response.output_audio_transcript.done")[0]["transcript"]
        deltas = "".join(e["delta"] for e in of_type(events, "response.output_audio_transcript.delta"))
        assert deltas == transcript
        assert "Ana" in transcript
        assert "English tutor" in transcript

        response = done["response"]
        assert response["status"] == "completed"
        assert response["status_details"]["type"] == "completed"
        (item,) = response["output"]
        assert item["id"] == item_id
        assert item["status"] == "completed"
        assert item["content"] == [{"type": "output_audio", "transcript": transcript}]
        usage = response["usage"]
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
        assert usage["output_token_details"]["audio_tokens"] > 0
        assert usage["output_token_details"]["text_tokens"] > 0


async def test_greeting_audio_is_voice_like(simulator: RealtimeSimulator) -> None:
    async with realtime_client(simulator) as client:
        await client.configure()
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
    deltas = of_type(events, "response.output_audio.delta")
    assert len(base64.b64decode(deltas[0]["delta"])) == 4800  # 100 ms chunks
    samples = audio_of(events)
    assert len(samples) / SAMPLE_RATE > 2.0

    frames = samples[: len(samples) // 2400 * 2400].reshape(-1, 2400)  # 100 ms frames
    rms = np.sqrt((frames**2).mean(axis=1))
    assert rms.max() > 1000, "not silence"
    assert rms.min() < rms.max() / 10, "energy must dip between words"
    assert rms.std() / rms.mean() > 0.3, "energy must vary over time"

    voiced = frames[rms > rms.max() / 4]
    window = np.hanning(2400)
    dominant = [float(np.argmax(np.abs(np.fft.rfft(frame * window)))) * 10 for frame in voiced]  # 10 Hz bins
    assert len(set(dominant)) >= 4, f"the dominant frequency must move: {sorted(set(dominant))}"
    assert 100 <= float(np.median(dominant)) <= 1200

    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) ** 2
    assert spectrum.max() / spectrum.sum() < 0.2, "a pure tone puts nearly all energy in one bin"


def test_speech_is_deterministic_for_a_text() -> None:
    first, second = Utterance("Hello Ana!"), Utterance("Hello Ana!")
    assert b"".join(first.chunks()) == b"".join(second.chunks())
    assert "".join(word.text for word in first.words) == "Hello Ana!"


def test_tutor_facts_come_from_the_prompt_lines() -> None:
    assert tutor_facts(PROMPT) == ("Ana", "A1", "English")
    assert tutor_facts("The student's name is J. R. Smith.\nThe student's CEFR level is B2.\n")[:2] == (
        "J. R. Smith", "B2",
    )
    assert tutor_facts("no lines here") == (None, "A1", "English")


async def test_greeting_without_a_name_in_the_prompt_is_generic(simulator: RealtimeSimulator) -> None:
    async with realtime_client(simulator) as client:
        await client.send({"type": "response.create"})
        transcript = of_type(await client.until("response.done"), "response.output_audio_transcript.done")
        assert transcript[0]["transcript"] == "Hello! I am your English tutor. How are you today?"


async def test_response_instructions_and_text_only_session_give_text_and_no_audio(
    simulator: RealtimeSimulator,
) -> None:
    async with realtime_client(simulator) as client:
        await client.configure({**GA_SESSION, "output_modalities": ["text"]})
        await client.send({"type": "response.create", "response": {"instructions": "Greet the student now."}})
        events = await client.until("response.done")
        types = {event["type"] for event in events}
        assert not types & {"response.output_audio.delta", "response.output_audio_transcript.delta"}
        assert of_type(events, "response.content_part.added")[0]["part"]["type"] == "text"
        text = of_type(events, "response.output_text.done")[0]["text"]
        assert "Ana" in text
        assert "".join(e["delta"] for e in of_type(events, "response.output_text.delta")) == text
        assert events[-1]["response"]["output"][0]["content"] == [{"type": "output_text", "text": text}]


async def test_second_response_create_while_one_is_active_is_refused() -> None:
    async with running(SimulatorBehaviour(audio_pace=1)) as simulator, realtime_client(simulator) as client:
        await client.configure()
        await client.send({"type": "response.create", "event_id": "evt_first"})
        await client.until("response.output_audio.delta")
        await client.send({"type": "response.create", "event_id": "evt_second"})
        errors = of_type(await client.until("error"), "error")
        assert errors[0]["error"]["code"] == "conversation_already_has_active_response"
        assert errors[0]["error"]["event_id"] == "evt_second"
        await client.send({"type": "response.cancel"})
        await client.until("response.done")


# --- cancel, barge-in, truncate -----------------------------------------------------------------


async def test_response_cancel_ends_the_response_as_client_cancelled() -> None:
    async with running(SimulatorBehaviour(audio_pace=1)) as simulator, realtime_client(simulator) as client:
        await client.configure()
        await client.send({"type": "response.create"})
        await client.until("response.output_audio.delta")
        await client.send({"type": "response.cancel", "event_id": "evt_cancel"})
        events = await client.until("response.done")
        response = events[-1]["response"]
        assert response["status"] == "cancelled"
        assert response["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert response["output"][0]["status"] == "incomplete"
        await client.send({"type": "response.cancel", "event_id": "evt_cancel_again"})
        error = await client.receive()
        assert error["error"]["code"] == "response_cancel_not_active"
        assert error["error"]["event_id"] == "evt_cancel_again"


async def test_barge_in_cancels_the_response_then_truncate_and_student_turn() -> None:
    async with running(SimulatorBehaviour()) as simulator, realtime_client(simulator) as client:
        await client.configure()
        await client.send({"type": "response.create"})
        greeting = await client.until("response.output_audio.delta")
        item_id = greeting[-1]["item_id"]
        heard_ms = len(base64.b64decode(greeting[-1]["delta"])) // 48

        await client.append(speech())
        events = await client.until("response.done")
        assert events.index(of_type(events, "input_audio_buffer.speech_started")[0]) < len(events) - 1
        done = events[-1]["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}

        received_ms = len(audio_of(client.events)) * 2 // 48
        await client.send({"type": "conversation.item.truncate", "event_id": "evt_too_far", "item_id": item_id,
                           "content_index": 0, "audio_end_ms": received_ms + 500})
        refused = await client.until("error")
        assert refused[-1]["error"]["event_id"] == "evt_too_far"
        assert refused[-1]["error"]["param"] == "audio_end_ms"
        await client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                           "audio_end_ms": heard_ms})
        truncated = (await client.until("conversation.item.truncated"))[-1]
        assert (truncated["item_id"], truncated["audio_end_ms"]) == (item_id, heard_ms)

        # The student stops talking: the turn is committed, transcribed and answered.
        await client.append(silence(700))
        turn = await client.until("response.done")
        types = [event["type"] for event in turn]
        order = ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed", "conversation.item.added",
                 "conversation.item.done", "conversation.item.input_audio_transcription.completed",
                 "response.created", "response.done"]
        assert [types.index(kind) for kind in order] == sorted(types.index(kind) for kind in order)
        user_item = of_type(turn, "conversation.item.added")[0]["item"]
        assert user_item["role"] == "user"
        assert user_item["content"][0]["type"] == "input_audio"
        started = of_type(client.events, "input_audio_buffer.speech_started")[0]
        assert of_type(turn, "input_audio_buffer.committed")[0]["item_id"] == started["item_id"] == user_item["id"]
        completed = of_type(turn, "conversation.item.input_audio_transcription.completed")[0]
        assert re.fullmatch(r"\(I said something for \d+\.\d seconds\)", completed["transcript"])
        reply = turn[-1]["response"]
        assert reply["status"] == "completed"
        assert "Ana" in reply["output"][0]["content"][0]["transcript"]


async def test_without_interrupt_response_speech_does_not_cancel() -> None:
    session = json.loads(json.dumps(GA_SESSION))
    session["audio"]["input"]["turn_detection"].update(interrupt_response=False, create_response=False)
    async with running(SimulatorBehaviour(audio_pace=1)) as simulator, realtime_client(simulator) as client:
        await client.configure(session)
        await client.send({"type": "response.create"})
        await client.until("response.output_audio.delta")
        await client.append(speech("Hi"))
        await client.until("input_audio_buffer.speech_started")
        await client.send({"type": "response.cancel"})  # only to end the test quickly
        assert (await client.until("response.done"))[-1]["response"]["status_details"]["reason"] == "client_cancelled"


# The real API's answers to an item it does not have, as its clients report them (README, "How close the simulator
# is to the real API"): each `error` names the client event that caused it by its event_id.
UNKNOWN_ITEM_REFUSALS = {
    "conversation.item.retrieve": (
        "item_retrieve_invalid_item_id", "Error retrieving item: the item with id 'item_nope' does not exist."),
    "conversation.item.truncate": ("item_truncate_invalid_item_id", "Item with item_id not found: item_nope"),
    "conversation.item.delete": (
        "item_delete_invalid_item_id", "Error deleting item: the item with id 'item_nope' does not exist."),
}


@pytest.mark.parametrize("event_type", list(UNKNOWN_ITEM_REFUSALS))
async def test_an_unknown_item_is_refused_with_the_real_api_s_code_for_each_event(
    simulator: RealtimeSimulator, event_type: str
) -> None:
    event = {"type": event_type, "event_id": "evt_unknown", "item_id": "item_nope"}
    if event_type == "conversation.item.truncate":
        event |= {"content_index": 0, "audio_end_ms": 10}
    async with realtime_client(simulator) as client:
        await client.send(event)
        error = (await client.receive())["error"]
        await client.send({"type": "conversation.item.retrieve", "item_id": "item_nope"})  # no event_id given
        unnamed = (await client.receive())["error"]
    code, message = UNKNOWN_ITEM_REFUSALS[event_type]
    assert error == {"type": "invalid_request_error", "code": code, "message": message, "param": None,
                     "event_id": "evt_unknown"}
    assert (unnamed["code"], unnamed["event_id"]) == ("item_retrieve_invalid_item_id", None)


async def test_a_message_without_model_audio_is_not_truncated_and_an_unknown_previous_item_is_refused(
    simulator: RealtimeSimulator,
) -> None:
    async with realtime_client(simulator) as client:
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}
        await client.send({"type": "conversation.item.create", "item": item})
        item_id = (await client.until("conversation.item.done"))[-1]["item"]["id"]
        await client.send({"type": "conversation.item.truncate", "event_id": "evt_t", "item_id": item_id,
                           "content_index": 0, "audio_end_ms": 0})
        not_audio = (await client.receive())["error"]
        await client.send({"type": "conversation.item.create", "event_id": "evt_c", "previous_item_id": "item_nope",
                           "item": item})
        no_previous = (await client.receive())["error"]
    assert not_audio == {"type": "invalid_request_error", "code": "unsupported_content_type",
                         "message": "Only model output audio messages can be truncated", "param": None,
                         "event_id": "evt_t"}
    assert no_previous == {"type": "invalid_request_error", "code": "item_create_invalid_previous_item_id",
                           "message": "Error adding item: the previous item with id 'item_nope' does not exist.",
                           "param": None, "event_id": "evt_c"}


async def test_truncate_beyond_a_finished_items_audio_is_refused(simulator: RealtimeSimulator) -> None:
    async with realtime_client(simulator) as client:
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
        item_id = events[-1]["response"]["output"][0]["id"]
        total_ms = len(audio_of(events)) * 2 // 48
        await client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                           "audio_end_ms": total_ms + 1})
        assert (await client.receive())["error"]["message"].endswith(f"shorter than {total_ms + 1}ms")
        await client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                           "audio_end_ms": total_ms})
        assert (await client.receive())["type"] == "conversation.item.truncated"


# --- the input audio buffer ---------------------------------------------------------------------


async def test_commit_needs_100_ms_and_manual_commit_adds_a_user_item(simulator: RealtimeSimulator) -> None:
    session = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
    async with realtime_client(simulator) as client:
        await client.configure(session)
        await client.append(silence(50))
        await client.send({"type": "input_audio_buffer.commit", "event_id": "evt_commit"})
        error = await client.receive()
        assert error["error"]["code"] == "input_audio_buffer_commit_empty"
        assert error["error"]["event_id"] == "evt_commit"
        await client.append(speech("Yes"))  # no VAD: no speech_started
        await client.send({"type": "input_audio_buffer.commit"})
        events = await client.until("conversation.item.done")
        assert [event["type"] for event in events] == [
            "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
        ]
        await client.send({"type": "input_audio_buffer.clear"})
        assert (await client.receive())["type"] == "input_audio_buffer.cleared"
        connection = await simulator.next_connection()
        assert len(connection.input_audio) == len(silence(50)) + len(speech("Yes"))


async def test_appended_audio_is_recorded_to_the_record_dir_as_it_arrives(tmp_path: Path) -> None:
    async with running(SimulatorBehaviour(audio_pace=0), record_dir=tmp_path) as simulator, \
            realtime_client(simulator) as client:
        connection = await simulator.next_connection()
        await client.append(silence(40) + speech("Hi"))
        await connection.wait_for(lambda received: len(of_type(received, "input_audio_buffer.append")) >= 2)
        await client.send({"type": "input_audio_buffer.clear"})
        await client.until("input_audio_buffer.cleared")  # every append before it was handled
        assert (tmp_path / "connection-1.pcm").read_bytes() == bytes(connection.input_audio)
        assert connection.record_path == tmp_path / "connection-1.pcm"


# --- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "status", "details"),
    [
        (SimulatorBehaviour(response_fault="failed", failed_code="insufficient_quota", audio_pace=0), "failed",
         {"type": "failed", "error": {"type": "insufficient_quota", "code": "insufficient_quota"}}),
        (SimulatorBehaviour(response_fault="failed", audio_pace=0), "failed",
         {"type": "failed", "error": {"type": "server_error", "code": "server_error"}}),
        (SimulatorBehaviour(response_fault="cancelled", audio_pace=0), "cancelled",
         {"type": "cancelled", "reason": "turn_detected"}),
        (SimulatorBehaviour(response_fault="incomplete", audio_pace=0), "incomplete",
         {"type": "incomplete", "reason": "content_filter"}),
    ],
)
async def test_faulty_first_response_has_no_audio_and_the_next_one_is_healthy(
    behaviour: SimulatorBehaviour, status: str, details: dict[str, Any]
) -> None:
    async with running(behaviour) as simulator, realtime_client(simulator) as client:
        await client.configure()
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
        assert [event["type"] for event in events] == ["response.created", "rate_limits.updated", "response.done"]
        response = events[-1]["response"]
        assert response["status"] == status
        assert response["output"] == []
        actual = response["status_details"]
        if "error" in details:
            assert actual["error"]["message"]
            actual = {**actual, "error": {k: v for k, v in actual["error"].items() if k != "message"}}
        assert actual == details
        if status == "failed":
            assert response["usage"]["total_tokens"] == 0
            assert response["usage"]["input_token_details"]["audio_tokens"] == 0
        await client.send({"type": "response.create"})
        retried = (await client.until("response.done"))[-1]["response"]
        assert retried["status"] == "completed"
        assert retried["output"][0]["content"][0]["transcript"].startswith("Hello Ana!")  # still the greeting


async def test_empty_fault_completes_without_audio_or_transcript() -> None:
    async with running(SimulatorBehaviour(response_fault="empty", fault_times=None, audio_pace=0)) as simulator, \
            realtime_client(simulator) as client:
        for _ in range(2):
            await client.send({"type": "response.create"})
            events = await client.until("response.done")
            assert not {event["type"] for event in events} & (DELTAS | {"response.content_part.added"})
            response = events[-1]["response"]
            assert response["status"] == "completed"
            assert response["output"][0]["content"] == []


async def test_cut_after_deltas_closes_1011_mid_greeting() -> None:
    async with running(SimulatorBehaviour(cut_after_deltas=3, audio_pace=0)) as simulator, \
            realtime_client(simulator) as client:
        await client.send({"type": "response.create"})
        with pytest.raises(ConnectionClosed):
            await client.until("response.done")
        assert client.websocket.close_code == 1011
        assert len(of_type(client.events, "response.output_audio.delta")) == 3
        connection = await simulator.next_connection()
        await connection.wait_closed()


async def test_never_update_and_never_create_stay_silent() -> None:
    async with running(SimulatorBehaviour(never_update=True, never_create=True)) as simulator, \
            realtime_client(simulator) as client:
        await client.send({"type": "session.update", "session": GA_SESSION})
        await client.send({"type": "response.create"})
        # Events are handled in order: the next answer is to the clear, so the others got none.
        await client.send({"type": "input_audio_buffer.clear"})
        assert (await client.receive())["type"] == "input_audio_buffer.cleared"
        connection = await simulator.next_connection()
        assert [event["type"] for event in connection.sent] == ["session.created", "input_audio_buffer.cleared"]
        assert [event["type"] for event in connection.received][:2] == ["session.update", "response.create"]


async def test_event_delay_keeps_the_order() -> None:
    async with running(SimulatorBehaviour(event_delay_ms=1, audio_pace=0)) as slow, realtime_client(slow) as client:
        await client.configure()
        await client.send({"type": "response.create"})
        assert collapsed_types(await client.until("response.done")) == GREETING_ORDER


async def test_conversation_items_can_be_created_retrieved_and_deleted(simulator: RealtimeSimulator) -> None:
    async with realtime_client(simulator) as client:
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}
        await client.send({"type": "conversation.item.create", "item": item})
        added, done = await client.receive(), await client.receive()
        assert (added["type"], done["type"]) == ("conversation.item.added", "conversation.item.done")
        item_id = added["item"]["id"]
        await client.send({"type": "conversation.item.retrieve", "item_id": item_id})
        assert (await client.receive())["item"]["content"] == item["content"]
        await client.send({"type": "conversation.item.delete", "item_id": item_id})
        assert (await client.receive()) | {"event_id": ""} == {
            "type": "conversation.item.deleted", "item_id": item_id, "event_id": "",
        }
        await client.send({"type": "conversation.item.retrieve", "event_id": "evt_gone", "item_id": item_id})
        assert (await client.receive())["error"]["event_id"] == "evt_gone"
        await client.send({"type": "output_audio_buffer.clear"})
        assert (await client.receive())["type"] == "error"  # WebRTC/SIP only


async def test_semantic_vad_and_whisper_transcription_report_duration_usage(simulator: RealtimeSimulator) -> None:
    session = {"type": "realtime", "audio": {"input": {
        "turn_detection": {"type": "semantic_vad", "eagerness": "high", "create_response": False},
        "transcription": {"model": "whisper-1"},
    }}}
    async with realtime_client(simulator) as client:
        await client.configure(session)
        await client.append(speech("Good morning") + silence(600))
        events = await client.until("conversation.item.input_audio_transcription.completed")
        assert of_type(events, "input_audio_buffer.speech_stopped")
        assert events[-1]["usage"]["type"] == "duration"
        assert events[-1]["usage"]["seconds"] > 0.5
        connection = await simulator.next_connection()
        await client.send({"type": "input_audio_buffer.clear"})
        await client.until("input_audio_buffer.cleared")
        assert not of_type(connection.sent, "response.created")  # create_response: false


# --- the standalone command and the SDK's own client ---------------------------------------------


async def test_standalone_command_serves_and_records(tmp_path: Path) -> None:
    async with process_in_own_group(
        sys.executable, "-m", "app.simulator", "--port", "0", "--record-dir", str(tmp_path),
        "--fault", "failed", "--fault-times", "always", "--failed-code", "insufficient_quota", "--audio-pace", "0",
        grace_s=10, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    ) as process:
        assert process.stdout is not None
        url = None
        async with asyncio.timeout(30):
            while url is None:
                line = (await process.stdout.readline()).decode()
                assert line, "the simulator exited before printing its URL"
                found = re.search(r"listening on (ws://\S+/v1/realtime)", line)
                url = found.group(1) if found else None
        async with connect(f"{url}?model={MODEL}", additional_headers={"Authorization": f"Bearer {API_KEY}"},
                           max_size=None) as websocket:
            client = RealtimeTestClient(websocket)
            assert (await client.receive())["type"] == "session.created"
            await client.append(silence(100))
            await client.send({"type": "response.create"})
            done = (await client.until("response.done"))[-1]
            assert done["response"]["status_details"]["error"]["code"] == "insufficient_quota"
        assert (tmp_path / "connection-1.pcm").read_bytes() == silence(100)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await process.wait() == 0


async def test_the_sdk_client_talks_to_the_simulator(simulator: RealtimeSimulator) -> None:
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=simulator.url.removesuffix("/realtime"))
    async with client.realtime.connect(model=MODEL) as connection:
        await connection.session.update(session=GA_SESSION)  # type: ignore[arg-type]
        await connection.response.create()
        types = []
        async for event in connection:
            types.append(event.type)
            if event.type == "response.done":
                assert event.response.status == "completed"
                break
    assert types[:2] == ["session.created", "session.updated"]
    assert "response.output_audio.delta" in types


# --- the oracle itself --------------------------------------------------------------------------


def test_oracle_accepts_ga_events_and_allowed_extras() -> None:
    assert_valid_client_event({"type": "session.update", "event_id": "e", "session": GA_SESSION})
    assert_valid_server_event({"type": "response.output_audio_transcript.delta", "event_id": "event_1",
                               "response_id": "resp_1", "item_id": "item_1", "output_index": 0,
                               "content_index": 0, "delta": "Hi", "obfuscation": "abc"})


@pytest.mark.parametrize(
    ("check", "event", "message"),
    [
        (assert_valid_client_event,
         {"type": "session.update", "session": {"type": "realtime", "modalities": ["audio"]}}, "session.modalities"),
        (assert_valid_client_event,
         {"type": "session.update", "modalities": ["audio"], "session": {"type": "realtime"}}, "modalities"),
        (assert_valid_client_event, {"type": "response.create", "response": {"voice": "alloy"}}, "response.voice"),
        (assert_valid_client_event, {"type": "session.create"}, "not a valid GA client event"),
        (assert_valid_server_event, {"type": "response.audio.delta", "event_id": "e", "response_id": "r",
                                     "item_id": "i", "output_index": 0, "content_index": 0, "delta": ""},
         "not a valid GA server event"),
        (assert_valid_server_event, {"type": "conversation.item.input_audio_transcription.completed",
                                     "event_id": "e", "item_id": "i", "content_index": 0, "transcript": "x"},
         "usage"),
        (assert_valid_server_event, {"type": "response.output_audio.delta", "event_id": "e", "response_id": "r",
                                     "item_id": "i", "output_index": 0, "content_index": 0, "delta": "",
                                     "obfuscation": "x"}, "obfuscation"),
        (assert_valid_server_event, {"type": "session.created", "event_id": "e",
                                     "session": {"type": "realtime", "voice": "alloy"}}, "session.voice"),
        (assert_valid_server_event, {"type": "session.created", "event_id": "e",
                                     "session": {"type": "realtime", "object": "realtime.sesion", "id": "s"}},
         "session resource fields"),
    ],
)
def test_oracle_rejects_beta_shapes_unknown_fields_and_wrong_types(
    check: Callable[[dict[str, Any]], object], event: dict[str, Any], message: str
) -> None:
    with pytest.raises(AssertionError, match=re.escape(message)):
        check(event)


def test_the_oracle_also_imports_as_tests_sdk_oracle_from_the_repository_root() -> None:
    # Under pytest, tests/ is on sys.path (`from sdk_oracle import ...`); scripts run from the root
    # (and `python -m pytest`) have the root on sys.path instead.
    probe = "from tests.sdk_oracle import assert_valid_client_event as check; check({'type': 'response.create'})"
    assert subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=False).returncode == 0


# --- its log -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("quiet", "routine_level"), [(False, "info"), (True, "debug")])
async def test_a_quiet_simulator_writes_each_connections_routine_lines_at_debug(quiet: bool,
                                                                                 routine_level: str) -> None:
    # Embedded in the app (quiet), four lines a lesson and one a response would repeat the relay's own.
    stream = io.StringIO()
    configure_logging(Settings(log_level="debug", log_format="json"), stream)
    async with RealtimeSimulator(SimulatorBehaviour(audio_pace=0), quiet=quiet) as simulator:
        async with realtime_client(simulator) as client:
            connection = await simulator.next_connection()
            await client.configure()
            await client.send({"type": "response.create"})
            await client.until("response.done")
        await connection.wait_closed()
    routine = {"simulator_connection_open", "simulator_session_updated", "simulator_response_done",
               "simulator_connection_closed"}
    levels = {line["event"]: line["level"] for line in log_lines(stream) if line["event"] in routine}
    assert levels == dict.fromkeys(routine, routine_level)
    assert {line["level"] for line in log_lines(stream) if line["event"] == "simulator_started"} == {"info"}
