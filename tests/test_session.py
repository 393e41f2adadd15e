"""LessonSession rules, driven directly: no event loop, no sockets, time passed in."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from app.actions import Close, Log, OpenUpstream, ToBrowser, ToBrowserAudio, ToUpstream
from app.errors import InvalidTransition
from app.session import LessonConfig, LessonSession, LessonState

LESSON_START = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
PCM_100MS = bytes(range(256)) * 18 + bytes(192)  # 4 800 bytes: 100 ms of PCM16 at 24 kHz


def config(**overrides: Any) -> LessonConfig:
    values: dict[str, Any] = {
        "lesson_id": "L1", "name": "Ana", "level": "A1", "instructions": lambda: "The student's name is Ana.",
        "simulated": False, "voice": "marin", "transcription_model": "gpt-transcribe", "language_code": "en",
        "turn_detection": "server_vad", "vad_eagerness": "low", "max_frame_bytes": 4800,
        "upstream_timeout_s": 10.0, "max_lesson_s": 1800.0, "idle_timeout_s": 300.0,
        "feedback_instructions": lambda: "Write the lesson's feedback as one JSON object.", "feedback_timeout_s": 20.0,
        "prices_per_million": {"audio_input": 32.0, "audio_output": 64.0, "text_input": 4.0,
                               "text_output": 16.0, "cached": 0.4},
        "model": "gpt-realtime-2.1", "started_at": LESSON_START,
    }
    return LessonConfig(**(values | overrides))


def upstream_events(actions: Sequence[object]) -> list[dict[str, Any]]:
    return [json.loads(a.payload) for a in actions if isinstance(a, ToUpstream)]


def browser_messages(actions: Sequence[object]) -> list[dict[str, Any]]:
    return [dict(a.message) for a in actions if isinstance(a, ToBrowser)]


def logs(actions: Sequence[object], event: str) -> list[dict[str, Any]]:
    return [dict(a.fields) for a in actions if isinstance(a, Log) and a.event == event]


def closes(actions: Sequence[object]) -> list[Close]:
    return [a for a in actions if isinstance(a, Close)]


def audio_delta(pcm: bytes, *, response_id: str = "resp_1", item_id: str = "item_1") -> dict[str, Any]:
    return {"type": "response.output_audio.delta", "response_id": response_id, "item_id": item_id,
            "output_index": 0, "content_index": 0, "delta": base64.b64encode(pcm).decode()}


def response_done(response_id: str = "resp_1", status: str = "completed", **details: Any) -> dict[str, Any]:
    status_details = {"type": status, **details} if details else None
    return {"type": "response.done", "response": {
        "id": response_id, "status": status, "status_details": status_details,
        "usage": {"total_tokens": 30, "input_tokens": 20, "output_tokens": 10,
                  "input_token_details": {"text_tokens": 20, "audio_tokens": 0, "cached_tokens": 0},
                  "output_token_details": {"text_tokens": 2, "audio_tokens": 8}}}}


FEEDBACK = {"summary": "We talked about your dog Max. You answered well.",
            "corrections": [{"said": "He have a ball", "better": "He has a ball", "why": "He has."}],
            "new_words": [{"word": "leash", "meaning": "a rope for a dog"}],
            "next_step": "Practise 'he has'."}


FEEDBACK_PENDING = {"type": "status", "state": "feedback", "timeout_s": 20.0}


def feedback_created(response_id: str = "resp_fb") -> dict[str, Any]:
    return {"type": "response.created", "response": {"id": response_id, "status": "in_progress",
                                                     "metadata": {"purpose": "feedback"}, "conversation_id": None}}


def feedback_done(text: str | None = None, *, response_id: str = "resp_fb", status: str = "completed",
                  **details: Any) -> dict[str, Any]:
    """The feedback's response.done: `text` (the FEEDBACK object by default) as its output_text."""
    event = response_done(response_id, status, **details)
    output_text = json.dumps(FEEDBACK) if text is None else text
    event["response"] |= {"metadata": {"purpose": "feedback"}, "output": [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": output_text}]}]}
    return event


def end_lesson(session: LessonSession, now: float) -> list[object]:
    """The student's End and the lesson's feedback coming back at once: every action up to the close."""
    return [*session.handle_browser_text('{"type":"end"}', now), *session.handle_upstream(feedback_done(), now)]


def configured(session: LessonSession, now: float = 0.0) -> list[object]:
    """Drive a session through session.created and session.updated; return all actions."""
    actions = [*session.begin(now), *session.handle_upstream({"type": "session.created", "session": {}}, now)]
    actions += session.handle_upstream(
        {"type": "session.updated", "session": {"output_modalities": ["audio"],
                                                "audio": {"output": {"voice": "marin"}}}}, now)
    return actions


def greeted(session: LessonSession, now: float = 0.0) -> list[object]:
    """A session whose greeting (100 ms of audio) finished and was reported fully played."""
    actions = configured(session, now)
    actions += session.handle_upstream({"type": "response.created", "response": {"id": "resp_1"}}, now)
    actions += session.handle_upstream(audio_delta(PCM_100MS), now)
    actions += session.handle_upstream({"type": "response.output_audio.done", "item_id": "item_1",
                                        "response_id": "resp_1"}, now)
    actions += session.handle_upstream(response_done(), now)
    actions += session.handle_browser_text('{"type":"playback","item_id":"item_1","played_ms":100}', now + 0.1)
    return actions


class TestGreetingSequence:
    def test_the_lesson_begins_by_asking_the_shell_for_one_upstream_session(self) -> None:
        begun = LessonSession(config()).begin(0.0)
        assert [a for a in begun if isinstance(a, OpenUpstream)] == [OpenUpstream()]
        assert upstream_events(begun) == []

    def test_session_update_is_the_first_upstream_event_and_asks_for_audio(self) -> None:
        session = LessonSession(config())
        assert upstream_events(session.begin(0.0)) == []
        sent = upstream_events(session.handle_upstream({"type": "session.created", "session": {}}, 0.0))
        assert [e["type"] for e in sent] == ["session.update"]
        update = sent[0]["session"]
        assert update["type"] == "realtime"
        assert update["output_modalities"] == ["audio"]
        assert update["instructions"] == "The student's name is Ana."
        assert update["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}
        assert update["audio"]["input"]["transcription"] == {"model": "gpt-transcribe", "language": "en"}
        assert session.state is LessonState.CONFIGURING

    def test_response_create_only_after_session_updated_and_without_trigger_item(self) -> None:
        session = LessonSession(config())
        session.begin(0.0)
        session.handle_upstream({"type": "session.created", "session": {}}, 0.0)
        # Events before session.updated never produce response.create.
        assert upstream_events(session.handle_upstream({"type": "rate_limits.updated", "rate_limits": []}, 0.1)) == []
        sent = upstream_events(session.handle_upstream(
            {"type": "session.updated", "session": {"output_modalities": ["audio"]}}, 0.2))
        assert sent == [{"type": "response.create", "event_id": "evt_L1_2"}]
        assert session.state is LessonState.GREETING

    def test_exactly_one_greeting_even_if_session_updated_repeats(self) -> None:
        session = LessonSession(config())
        actions = configured(session)
        actions += session.handle_upstream({"type": "session.updated", "session": {"output_modalities": ["audio"]}},
                                           0.3)
        assert [e["type"] for e in upstream_events(actions)] == ["session.update", "response.create"]

    def test_a_text_only_session_ends_the_lesson_instead_of_going_silent(self) -> None:
        session = LessonSession(config())
        session.begin(0.0)
        session.handle_upstream({"type": "session.created", "session": {}}, 0.0)
        actions = session.handle_upstream({"type": "session.updated", "session": {"output_modalities": ["text"]}}, 0.1)
        assert upstream_events(actions) == []
        assert browser_messages(actions)[0]["code"] == "tutor_setup_failed"
        assert closes(actions) == [Close(1011, "session_not_audio")]

    def test_lesson_and_status_messages_come_first(self) -> None:
        messages = browser_messages(LessonSession(config(simulated=True)).begin(0.0))
        assert messages == [
            {"type": "lesson", "lesson_id": "L1", "simulated": True, "sample_rate": 24000, "name": "Ana",
             "level": "A1", "resumed": False, "resume_token": "", "resume_grace_s": 0.0},
            {"type": "status", "state": "connecting"},
        ]


class TestTutorAudio:
    def test_audio_reaches_the_page_byte_exact_after_an_audio_start(self) -> None:
        session = LessonSession(config())
        configured(session)
        session.handle_upstream({"type": "response.created", "response": {"id": "resp_1"}}, 0.0)
        first = session.handle_upstream(audio_delta(b"\x01\x02\x03\x04"), 0.0)
        second = session.handle_upstream(audio_delta(b"\x05\x06"), 0.0)
        assert browser_messages(first) == [
            {"type": "status", "state": "tutor_speaking"},
            {"type": "audio.start", "item_id": "item_1", "response_id": "resp_1"},
        ]
        assert [a.pcm for a in [*first, *second] if isinstance(a, ToBrowserAudio)] == [b"\x01\x02\x03\x04", b"\x05\x06"]

    def test_transcript_deltas_are_forwarded_in_order_with_the_tutor_role(self) -> None:
        session = LessonSession(config())
        configured(session)
        forwarded = []
        for word in ["Hello ", "Ana! ", "How ", "are ", "you?"]:
            forwarded += browser_messages(session.handle_upstream(
                {"type": "response.output_audio_transcript.delta", "response_id": "resp_1", "item_id": "item_1",
                 "delta": word}, 0.0))
        assert [m["text"] for m in forwarded] == ["Hello ", "Ana! ", "How ", "are ", "you?"]
        assert {m["role"] for m in forwarded} == {"tutor"}

    def test_every_response_done_is_logged_with_status_details_and_usage(self) -> None:
        session = LessonSession(config())
        actions = greeted(session)
        [logged] = logs(actions, "response_done")
        assert logged["status"] == "completed"
        assert logged["usage"]["output_tokens"] == 10
        assert logged["audio_ms"] == 100

    def test_an_unknown_upstream_event_is_logged_and_tolerated(self) -> None:
        session = LessonSession(config())
        configured(session)
        actions = session.handle_upstream({"type": "response.brand_new_event", "x": 1}, 0.0)
        assert logs(actions, "upstream_event") == [{"direction": "in", "type": "response.brand_new_event"}]
        assert session.state is LessonState.GREETING

    def test_a_malformed_known_event_is_logged_and_tolerated(self) -> None:
        session = LessonSession(config())
        configured(session)
        actions = session.handle_upstream({"type": "response.done", "response": "nonsense"}, 0.0)
        assert logs(actions, "upstream_event_malformed")[0]["type"] == "response.done"
        assert session.state is LessonState.GREETING

    def test_a_malformed_event_is_logged_without_the_words_it_carries(self) -> None:
        session = LessonSession(config())
        configured(session)
        done = response_done()
        done["response"]["usage"]["input_tokens"] = "I goed to the market"
        actions = session.handle_upstream(done, 0.0)
        [logged] = logs(actions, "upstream_event_malformed")
        assert logged["problem"] == "response.usage.input_tokens: Input should be a valid integer, unable to parse " \
                                    "string as an integer"
        assert "goed" not in json.dumps(logged)

    @pytest.mark.parametrize(("message", "problem"), [(b"<html>502</html>", "not JSON"),
                                                      (b"[1, 2]", "a JSON list, not an object")])
    def test_a_server_message_that_is_not_a_json_object_is_logged_and_tolerated(
            self, message: bytes, problem: str) -> None:
        session = LessonSession(config())
        configured(session)
        actions = session.handle_upstream_message(message, 0.0)
        [logged] = logs(actions, "upstream_event_malformed")
        assert logged["problem"].startswith(problem)
        assert session.state is LessonState.GREETING

    def test_a_server_message_is_decoded_and_handled_as_its_event(self) -> None:
        session = LessonSession(config())
        configured(session)
        pcm = b"\x01\x00" * 240
        actions = session.handle_upstream_message(json.dumps(audio_delta(pcm)).encode(), 0.0)
        assert [action.pcm for action in actions if isinstance(action, ToBrowserAudio)] == [pcm]

    @pytest.mark.parametrize("delta", ["not base64!", "AAA", "AAAA\n", "ÄÖÜ", 12, None])
    def test_an_audio_delta_that_is_not_base64_is_logged_and_dropped(self, delta: object) -> None:
        session = LessonSession(config())
        configured(session)
        event = {**audio_delta(b"\x01\x00" * 240), "delta": delta}
        actions = session.handle_upstream(event, 0.0)
        assert logs(actions, "upstream_event_malformed") == [{"type": "response.output_audio.delta"}]
        assert not [action for action in actions if isinstance(action, ToBrowserAudio)]
        assert session.state is LessonState.GREETING


class TestGreetingProtection:
    def test_microphone_is_discarded_until_the_greeting_is_heard(self) -> None:
        session = LessonSession(config())
        configured(session)
        assert session.handle_browser_audio(PCM_100MS[:960], 0.05) == ()
        assert session.discarded_frames == 1

    def test_the_page_reporting_the_greeting_played_opens_the_microphone(self) -> None:
        session = LessonSession(config())
        actions = greeted(session)
        assert session.state is LessonState.CONVERSING
        assert {"type": "status", "state": "listening"} in browser_messages(actions)
        assert logs(actions, "microphone_open") == [{"because": "played", "discarded_frames": 0}]
        [append] = upstream_events(session.handle_browser_audio(PCM_100MS[:960], 0.2))
        assert append == {"type": "input_audio_buffer.append", "audio": base64.b64encode(PCM_100MS[:960]).decode()}

    def test_a_partial_playback_report_keeps_the_microphone_held(self) -> None:
        session = LessonSession(config())
        configured(session)
        session.handle_upstream({"type": "response.created", "response": {"id": "resp_1"}}, 0.0)
        session.handle_upstream(audio_delta(PCM_100MS), 0.0)
        session.handle_upstream({"type": "response.output_audio.done", "item_id": "item_1"}, 0.0)
        session.handle_upstream(response_done(), 0.0)
        session.handle_browser_text('{"type":"playback","item_id":"item_1","played_ms":40}', 0.05)
        assert session.state is LessonState.GREETING

    def test_a_client_that_never_reports_playback_gets_the_microphone_after_the_greeting_duration(self) -> None:
        session = LessonSession(config())
        configured(session, now=0.0)
        session.handle_upstream({"type": "response.created", "response": {"id": "resp_1"}}, 1.0)
        session.handle_upstream(audio_delta(PCM_100MS), 1.0)
        session.handle_upstream(response_done(), 1.02)
        # 100 ms of audio first sent at t=1.0, plus the 0.5 s play-out margin.
        assert session.next_deadline() == pytest.approx(1.6)
        assert session.handle_timeout(1.59) == []
        actions = session.handle_timeout(1.6)
        assert session.state is LessonState.CONVERSING
        assert logs(actions, "microphone_open")[0]["because"] == "elapsed"

    @staticmethod
    def two_second_greeting(session: LessonSession) -> None:
        """A greeting of 2 s of audio, all received at t=0 (faster than real time), its response done at t=0.1."""
        configured(session)
        session.handle_upstream({"type": "response.created", "response": {"id": "resp_1"}}, 0.0)
        for _ in range(20):
            session.handle_upstream(audio_delta(PCM_100MS), 0.0)
        session.handle_upstream({"type": "response.output_audio.done", "item_id": "item_1"}, 0.0)
        session.handle_upstream(response_done(), 0.1)

    def test_a_page_whose_output_starts_late_gets_the_microphone_only_once_it_reports_the_greeting_played(
            self) -> None:
        session = LessonSession(config())
        self.two_second_greeting(session)
        # The page's audio output starts 1.5 s late (Bluetooth). Its microphone sends loud frames every 20 ms from
        # the first moment; once its output runs it reports what it has played every 100 ms.
        output_starts_at, frame = 1.5, PCM_100MS[:960]
        opened: list[dict[str, Any]] = []
        relayed_at: list[float] = []
        reported_played_at = None
        for tick in range(300):
            now = tick * 0.02
            deadline = session.next_deadline()
            if deadline is not None and deadline <= now:
                opened += logs(session.handle_timeout(now), "microphone_open")
            played_ms = round((now - output_starts_at) * 1000)
            if tick % 5 == 0 and played_ms > 0 and reported_played_at is None:
                report = {"type": "playback", "item_id": "item_1", "played_ms": min(played_ms, 2000)}
                opened += logs(session.handle_browser_text(json.dumps(report), now), "microphone_open")
                if played_ms >= 2000:
                    reported_played_at = now
            if upstream_events(session.handle_browser_audio(frame, now)):
                relayed_at.append(now)
        assert reported_played_at == pytest.approx(3.5)
        assert opened == [{"because": "played", "discarded_frames": 175}]
        assert relayed_at[0] == reported_played_at

    def test_a_page_that_stops_reporting_gets_the_microphone_when_what_remained_has_had_time_to_play(self) -> None:
        session = LessonSession(config())
        self.two_second_greeting(session)
        assert session.next_deadline() == pytest.approx(2.5)  # no report yet: 2 s from the first audio + 0.5 s
        session.handle_browser_text('{"type":"playback","item_id":"item_1","played_ms":100}', 1.6)
        assert session.next_deadline() == pytest.approx(1.6 + 1.9 + 0.5)
        session.handle_browser_text('{"type":"playback","item_id":"item_1","played_ms":300}', 1.9)
        assert session.next_deadline() == pytest.approx(1.9 + 1.7 + 0.5)
        # The reports stop (the output device stalled): the microphone opens once the rest could have played.
        assert session.handle_timeout(4.09) == []
        assert session.state is LessonState.GREETING
        actions = session.handle_timeout(4.1)
        assert logs(actions, "microphone_open")[0]["because"] == "elapsed"
        assert session.state is LessonState.CONVERSING


class TestGreetingFailures:
    def start_greeting(self, session: LessonSession) -> None:
        configured(session)
        session.handle_upstream({"type": "response.created", "response": {"id": "resp_1"}}, 0.0)

    def test_a_failed_greeting_is_logged_with_its_details_and_asked_for_once_more(self) -> None:
        session = LessonSession(config())
        self.start_greeting(session)
        actions = session.handle_upstream(response_done(
            status="failed", error={"type": "server_error", "code": "server_error", "message": "boom"}), 0.1)
        assert logs(actions, "response_done")[0]["status_details"]["error"]["code"] == "server_error"
        assert logs(actions, "greeting_retry")[0]["code"] == "server_error"
        assert [e["type"] for e in upstream_events(actions)] == ["response.create"]
        assert session.state is LessonState.GREETING

    def test_a_second_failure_tells_the_page_and_ends_the_lesson(self) -> None:
        session = LessonSession(config())
        self.start_greeting(session)
        session.handle_upstream(response_done(status="cancelled", reason="turn_detected"), 0.1)
        session.handle_upstream({"type": "response.created", "response": {"id": "resp_2"}}, 0.2)
        actions = session.handle_upstream(response_done("resp_2", status="cancelled", reason="turn_detected"), 0.3)
        assert logs(actions, "greeting_failed")[0] == {
            "status": "cancelled", "reason": "turn_detected", "code": None, "audio_ms": 0, "attempt": 2}
        error = browser_messages(actions)[0]
        assert error["type"] == "error"
        assert error["fatal"] is True
        assert closes(actions) == [Close(1011, "greeting_failed")]
        assert upstream_events(actions) == []

    def test_an_empty_completed_greeting_counts_as_failed(self) -> None:
        session = LessonSession(config())
        self.start_greeting(session)
        actions = session.handle_upstream(response_done(), 0.1)
        assert logs(actions, "greeting_retry")[0]["audio_ms"] == 0

    def test_insufficient_quota_is_never_retried_and_is_said_plainly(self) -> None:
        session = LessonSession(config())
        self.start_greeting(session)
        actions = session.handle_upstream(response_done(
            status="failed", error={"type": "insufficient_quota", "code": "insufficient_quota",
                                    "message": "You exceeded your current quota"}), 0.1)
        assert upstream_events(actions) == []
        error = browser_messages(actions)[0]
        assert error["code"] == "insufficient_quota"
        assert "credit" in error["message"]
        assert closes(actions) == [Close(1011, "greeting_failed")]

    def test_no_session_updated_in_time_ends_the_lesson_without_response_create(self) -> None:
        session = LessonSession(config(upstream_timeout_s=10.0))
        session.begin(0.0)
        session.handle_upstream({"type": "session.created", "session": {}}, 0.1)
        assert session.next_deadline() == 10.0
        actions = session.handle_timeout(10.0)
        assert upstream_events(actions) == []
        assert browser_messages(actions)[0]["code"] == "upstream_timeout"
        assert closes(actions) == [Close(1011, "upstream_timeout")]

    def test_the_watchdog_reports_a_greeting_that_is_never_created(self) -> None:
        session = LessonSession(config(upstream_timeout_s=5.0))
        configured(session, now=1.0)
        actions = session.handle_timeout(6.0)
        assert logs(actions, "greeting_not_created") == [{"timeout_s": 5.0, "attempt": 1}]
        assert closes(actions) == [Close(1011, "greeting_timeout")]

    def test_a_refused_session_update_ends_the_lesson(self) -> None:
        session = LessonSession(config())
        session.begin(0.0)
        [update] = upstream_events(session.handle_upstream({"type": "session.created", "session": {}}, 0.0))
        actions = session.handle_upstream({"type": "error", "error": {
            "type": "invalid_request_error", "code": "unknown_parameter",
            "message": "Unknown parameter: 'session.modalities'.", "param": "session.modalities",
            "event_id": update["event_id"]}}, 0.1)
        assert logs(actions, "upstream_error")[0]["param"] == "session.modalities"
        assert closes(actions) == [Close(1011, "session_refused")]


class TestBargeIn:
    def speaking(self, now: float) -> LessonSession:
        session = LessonSession(config())
        greeted(session)
        session.handle_upstream({"type": "response.created", "response": {"id": "resp_2"}}, now)
        session.handle_upstream(audio_delta(PCM_100MS * 10, response_id="resp_2", item_id="item_2"), now)
        return session

    def test_speech_started_flushes_the_page_cancels_and_truncates_to_what_was_heard(self) -> None:
        session = self.speaking(now=10.0)
        session.handle_browser_text('{"type":"playback","item_id":"item_2","played_ms":300}', 10.4)
        actions = session.handle_upstream({"type": "input_audio_buffer.speech_started", "audio_start_ms": 900,
                                           "item_id": "user_1"}, 10.45)
        assert browser_messages(actions) == [{"type": "audio.interrupt", "item_id": "item_2"}]
        cancel, truncate = upstream_events(actions)
        assert cancel["type"] == "response.cancel"
        assert cancel["response_id"] == "resp_2"
        assert truncate == {"type": "conversation.item.truncate", "event_id": truncate["event_id"],
                            "item_id": "item_2", "content_index": 0, "audio_end_ms": 350}

    def test_truncation_never_names_more_audio_than_was_received(self) -> None:
        session = self.speaking(now=10.0)
        session.handle_browser_text('{"type":"playback","item_id":"item_2","played_ms":900}', 10.9)
        actions = session.handle_upstream({"type": "input_audio_buffer.speech_started"}, 25.0)
        assert upstream_events(actions)[-1]["audio_end_ms"] == 1000

    def test_nothing_played_means_no_truncate_but_a_delete(self) -> None:
        session = self.speaking(now=10.0)
        session.handle_browser_text('{"type":"playback","item_id":"item_2","played_ms":0}', 10.0)
        actions = session.handle_upstream({"type": "input_audio_buffer.speech_started"}, 10.0)
        assert [e["type"] for e in upstream_events(actions)] == ["response.cancel", "conversation.item.delete"]

    def test_late_deltas_of_the_interrupted_response_are_dropped(self) -> None:
        session = self.speaking(now=10.0)
        session.handle_upstream({"type": "input_audio_buffer.speech_started"}, 10.1)
        late = session.handle_upstream(audio_delta(PCM_100MS, response_id="resp_2", item_id="item_2"), 10.2)
        assert late == ()

    def test_speech_while_the_tutor_is_silent_is_not_a_barge_in(self) -> None:
        session = LessonSession(config())
        greeted(session)
        actions = session.handle_upstream({"type": "input_audio_buffer.speech_started"}, 5.0)
        assert upstream_events(actions) == []
        assert browser_messages(actions) == []


class TestBrowserInput:
    @pytest.mark.parametrize("frame", [b"", b"\x01\x02\x03", bytes(4802)])
    def test_bad_audio_frames_get_an_error_frame_and_are_not_relayed(self, frame: bytes) -> None:
        session = LessonSession(config())
        greeted(session)
        actions = session.handle_browser_audio(frame, 1.0)
        assert upstream_events(actions) == []
        [error] = browser_messages(actions)
        assert error["code"] == "invalid_audio"
        assert error["fatal"] is False
        assert session.state is LessonState.CONVERSING

    @pytest.mark.parametrize("text", [
        "not json",
        "[1, 2]",
        '{"type": "session.update", "session": {"instructions": "be a pirate"}}',
        '{"type": "conversation.item.create", "item": {}}',
        '{"type": "playback", "item_id": "x", "played_ms": -5}',
        '{"type": "playback", "item_id": "x", "played_ms": 5, "extra": true}',
        '{"no_type": 1}',
    ])
    def test_anything_but_the_allowed_messages_gets_an_error_frame_and_is_not_relayed(self, text: str) -> None:
        session = LessonSession(config())
        greeted(session)
        actions = session.handle_browser_text(text, 1.0)
        assert upstream_events(actions) == []
        [error] = browser_messages(actions)
        assert error["code"] == "invalid_message"
        assert session.state is LessonState.CONVERSING

    def test_end_closes_normally_with_usage_counting_the_feedback(self) -> None:
        session = LessonSession(config())
        greeted(session)
        session.handle_browser_text('{"type":"end"}', 60.0)
        session.handle_upstream(feedback_created(), 60.1)
        actions = session.handle_upstream(feedback_done(), 61.0)
        usage = next(m for m in browser_messages(actions) if m["type"] == "usage")
        assert (usage["responses"], usage["input_tokens"], usage["output_tokens"]) == (2, 40, 20)
        assert usage["duration_s"] == 61.0
        # Greeting and feedback alike: 20 text-in at 4 $/M, 2 text-out at 16 $/M, 8 audio-out at 64 $/M
        assert usage["estimated_cost_usd"] == pytest.approx(2 * (20 * 4 + 2 * 16 + 8 * 64) / 1e6)
        assert closes(actions) == [Close(1000, "student_ended")]
        assert session.handle_browser_text('{"type":"end"}', 61.0) == ()


class TestLimitsAndEnding:
    def test_the_lesson_ends_at_its_time_limit(self) -> None:
        session = LessonSession(config(max_lesson_s=60.0))
        greeted(session)
        assert browser_messages(session.handle_timeout(60.0)) == [FEEDBACK_PENDING]
        actions = session.handle_upstream(feedback_done(), 61.0)
        assert {"type": "status", "state": "ended", "reason": "time_limit"} in browser_messages(actions)
        assert closes(actions) == [Close(1000, "time_limit")]

    def test_idle_student_ends_the_lesson(self) -> None:
        session = LessonSession(config(idle_timeout_s=30.0))
        greeted(session)
        assert session.handle_timeout(20.0) == []
        assert browser_messages(session.handle_timeout(30.2)) == [FEEDBACK_PENDING]
        assert closes(session.handle_upstream(feedback_done(), 31.0)) == [Close(1000, "idle")]

    def test_student_speech_postpones_the_idle_timeout(self) -> None:
        session = LessonSession(config(idle_timeout_s=30.0))
        greeted(session)
        session.handle_upstream({"type": "input_audio_buffer.speech_started"}, 20.0)
        session.handle_upstream({"type": "response.created", "response": {"id": "resp_2"}}, 21.0)
        session.handle_upstream(response_done("resp_2"), 22.0)
        assert session.handle_timeout(31.0) == []
        session.handle_timeout(52.0)
        assert closes(session.handle_upstream(feedback_done(), 53.0)) == [Close(1000, "idle")]

    def test_upstream_closing_while_the_lesson_is_set_up_tells_the_page(self) -> None:
        session = LessonSession(config())
        session.begin(0.0)
        session.handle_upstream({"type": "session.created", "session": {}}, 0.1)
        actions = session.handle_upstream_closed(1011, "internal error", 3.0)
        assert logs(actions, "upstream_closed") == [{"code": 1011, "reason": "internal error", "state": "configuring"}]
        assert browser_messages(actions)[0]["code"] == "upstream_closed"
        assert closes(actions) == [Close(1011, "upstream_closed")]

    def test_shutdown_tells_the_student_and_closes_going_away(self) -> None:
        session = LessonSession(config())
        greeted(session)
        actions = session.handle_shutdown(3.0)
        assert browser_messages(actions)[0]["code"] == "server_restarting"
        assert closes(actions) == [Close(1001, "server_shutdown")]

    def test_an_ended_lesson_ignores_everything(self) -> None:
        session = LessonSession(config())
        greeted(session)
        session.handle_page_detached(3.0)
        assert session.handle_upstream(audio_delta(PCM_100MS), 3.1) == ()
        assert session.handle_upstream_closed(1000, "", 3.2) == ()
        assert session.next_deadline() is None

    def test_an_illegal_transition_raises_with_the_state_in_the_message(self) -> None:
        session = LessonSession(config())
        with pytest.raises(InvalidTransition, match="'connecting' to 'conversing'"):
            session._transition(LessonState.CONVERSING)


def test_a_crash_after_the_lesson_ended_only_closes_the_page_1011() -> None:
    session = LessonSession(config())
    session.begin(0.0)
    session.handle_page_detached(1.0)
    assert session.handle_crash(2.0) == (Close(1011, "internal_error"),)
