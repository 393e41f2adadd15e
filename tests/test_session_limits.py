"""What one lesson may cost: microphone pacing, tiny frames, the cost cap and rate-limited warnings.

State-machine tests: no event loop, no sockets, time passed in.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import pytest
from test_session import browser_messages, closes, config, end_lesson, greeted, logs, upstream_events

from app.actions import ToUpstream
from app.pacing import (
    BURST_S,
    MAX_PAGE_MESSAGES_PER_S,
    MIN_APPEND_BYTES,
    PACE_FACTOR,
    REAL_TIME_BYTES_PER_S,
    FrameCoalescer,
    TokenBucket,
)
from app.session import LessonSession, LessonState
from app.settings import Settings

FRAME_20MS = b"\x01\x00" * 480


def relayed_audio(actions: Sequence[object]) -> bytes:
    return b"".join(base64.b64decode(event["audio"]) for event in upstream_events(actions)
                    if event["type"] == "input_audio_buffer.append")


def conversing(**overrides: Any) -> LessonSession:
    session = LessonSession(config(**overrides))
    greeted(session, 0.0)
    assert session.state is LessonState.CONVERSING
    return session


class TestMicrophonePacing:
    def test_audio_sent_40_times_faster_than_real_time_is_cut_to_the_pace(self) -> None:
        # The attack: 56 s of audio in 1.4 s, in 100 ms frames, within the messages a page may send.
        session = conversing()
        frame, frames, start, span = b"\x02\x00" * 2400, 560, 1.0, 1.4
        actions: list[object] = []
        for index in range(frames):
            actions += session.handle_browser_audio(frame, start + span * index / frames)
        relayed_s = len(relayed_audio(actions)) / REAL_TIME_BYTES_PER_S
        assert BURST_S <= relayed_s <= BURST_S + PACE_FACTOR * span + 0.1
        # One warning line for the whole flood, and one error frame to the page.
        assert logs(actions, "audio_too_fast") == [{"frame_bytes": 4800, "suppressed": 0}]
        assert [m["code"] for m in browser_messages(actions) if m["type"] == "error"] == ["audio_too_fast"]
        # The frames held back are counted in the log when the lesson ends.
        ended = end_lesson(session, start + span)
        relayed_frames = round(relayed_s * 10)
        assert logs(ended, "audio_too_fast") == [{"suppressed": frames - relayed_frames - 1}]

    def test_a_warning_line_per_interval_while_the_flood_goes_on(self) -> None:
        session = conversing()
        actions: list[object] = []
        for index in range(2500):  # 100 ms of audio every 10 ms for 25 s
            actions += session.handle_browser_audio(b"\x02\x00" * 2400, 1.0 + index * 0.01)
        assert len(logs(actions, "audio_too_fast")) == 3  # at 0 s, 10 s and 20 s of the flood

    def test_a_real_time_microphone_loses_nothing_even_after_a_network_stall(self) -> None:
        session = conversing()
        actions: list[object] = []
        sent = bytearray()
        now = 1.0
        for second in range(120):
            # Every tenth second the network holds the frames back and delivers a second of them at once.
            bunched = second % 10 == 9
            for index in range(50):
                frame = bytes([second % 251, index]) * 480
                sent += frame
                at = now + 0.98 if bunched else now + index * 0.02
                actions += session.handle_browser_audio(frame, at)
            now += 1.0
        assert relayed_audio(actions) == bytes(sent)
        assert logs(actions, "audio_too_fast") == []

    def test_a_microphone_a_little_fast_loses_nothing_and_one_far_too_fast_loses_the_excess(self) -> None:
        for speed, loses in ((1.1, False), (1.5, True)):
            session = conversing()
            actions: list[object] = []
            for index in range(50 * 120):  # 120 s of audio
                actions += session.handle_browser_audio(FRAME_20MS, 1.0 + index * 0.02 / speed)
            relayed_s = len(relayed_audio(actions)) / REAL_TIME_BYTES_PER_S
            if loses:
                assert relayed_s == pytest.approx(BURST_S + PACE_FACTOR * 120 / speed, abs=0.1)
            else:
                assert relayed_s == pytest.approx(120)

    def test_audio_before_the_greeting_was_heard_does_not_spend_the_pace(self) -> None:
        session = LessonSession(config())
        session.begin(0.0)
        for index in range(500):  # 10 s of audio in 0.5 s while the lesson is being set up
            session.handle_browser_audio(FRAME_20MS, index * 0.001)
        greeted(session, 1.0)
        actions: list[object] = []
        for _ in range(50):
            actions += session.handle_browser_audio(FRAME_20MS, 1.2)
        assert len(relayed_audio(actions)) == 50 * len(FRAME_20MS)

    def test_token_bucket_refills_at_its_rate_up_to_its_capacity(self) -> None:
        bucket = TokenBucket(rate=100, capacity=50)
        assert bucket.take(50, 0.0)
        assert not bucket.take(1, 0.0)
        assert bucket.take(10, 0.1)
        assert not bucket.take(1, 0.1)
        assert bucket.take(50, 100.0)
        assert not bucket.take(1, 100.0)


class TestMessageFlood:
    PLAYBACK = '{"type":"playback","item_id":"item_1","played_ms":100}'

    def test_one_message_over_the_limit_in_a_second_ends_the_lesson_in_plain_words(self) -> None:
        session = conversing()
        actions: list[object] = []
        # The greeting's playback report opened a one-second window at 0.1: these fill the next one.
        for index in range(MAX_PAGE_MESSAGES_PER_S):
            at = 2.0 + index * 0.9 / MAX_PAGE_MESSAGES_PER_S
            actions += (session.handle_browser_text(self.PLAYBACK, at) if index % 2
                        else session.handle_browser_audio(FRAME_20MS, at))
        assert closes(actions) == []
        flooded = session.handle_browser_audio(FRAME_20MS, 2.95)
        errors = [m for m in browser_messages(flooded) if m["type"] == "error"]
        assert [(e["code"], e["fatal"]) for e in errors] == [("too_many_messages", True)]
        assert {"type": "status", "state": "ended", "reason": "page_flooded"} in browser_messages(flooded)
        assert logs(flooded, "page_flooded") == [{"limit_per_s": MAX_PAGE_MESSAGES_PER_S, "state": "conversing"}]
        assert [(c.code, c.reason) for c in closes(flooded)] == [(1008, "page_flooded")]
        assert session.state is LessonState.ENDED
        # What the page had already sent changes nothing more.
        assert session.handle_browser_text(self.PLAYBACK, 2.96) == ()
        assert session.handle_browser_audio(FRAME_20MS, 2.97) == ()

    def test_a_page_just_under_the_limit_for_a_minute_goes_on(self) -> None:
        session = conversing()
        actions: list[object] = []
        per_second = MAX_PAGE_MESSAGES_PER_S - 10
        for index in range(per_second * 60):
            actions += session.handle_browser_audio(b"\x02\x00" * 60, 1.0 + index / per_second)
        assert closes(actions) == []
        assert session.state is LessonState.CONVERSING

    def test_a_flood_before_the_greeting_was_heard_ends_the_lesson_too(self) -> None:
        session = LessonSession(config())
        session.begin(0.0)
        actions: list[object] = []
        for _ in range(MAX_PAGE_MESSAGES_PER_S + 1):
            actions += session.handle_browser_text("not json", 0.5)
        assert [(c.code, c.reason) for c in closes(actions)] == [(1008, "page_flooded")]


class TestTinyFrames:
    def test_4_800_two_millisecond_frames_become_960_appends_and_lose_nothing(self) -> None:
        # 2 ms frames at 480 a second: as small as a real-time microphone can send within the message limit.
        session = conversing()
        actions: list[object] = []
        frames = 4_800
        sent = b"".join(index.to_bytes(2, "little") * 48 for index in range(frames))
        for index in range(frames):
            actions += session.handle_browser_audio(sent[index * 96:(index + 1) * 96], 1.0 + 10 * index / frames)
        appends = [a for a in actions if isinstance(a, ToUpstream)]
        assert len(appends) == frames * 96 // MIN_APPEND_BYTES == 960
        assert relayed_audio(actions) == sent

    def test_the_pages_20ms_frames_go_straight_through(self) -> None:
        session = conversing()
        actions = session.handle_browser_audio(FRAME_20MS, 1.0)
        assert relayed_audio(actions) == FRAME_20MS

    def test_coalescer_holds_until_the_minimum_then_sends_everything_held(self) -> None:
        coalescer = FrameCoalescer(min_bytes=8)
        assert coalescer.add(b"ab") is None
        assert coalescer.add(b"cd") is None
        assert coalescer.add(b"efgh") == b"abcdefgh"
        assert coalescer.add(b"0123456789") == b"0123456789"


def usage_done(response_id: str, *, audio_in: int, cached: int, text_in: int, audio_out: int,
               text_out: int) -> dict[str, Any]:
    return {"type": "response.done", "response": {
        "id": response_id, "status": "completed", "status_details": None,
        "usage": {"total_tokens": audio_in + text_in + audio_out + text_out,
                  "input_tokens": audio_in + text_in, "output_tokens": audio_out + text_out,
                  "input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in, "cached_tokens": cached},
                  "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out}}}}


def busy_lesson_responses(*, cached: bool) -> list[dict[str, Any]]:
    """A busy 30-minute lesson, as the README sizes the cost cap: 60 exchanges of 15 s of student and 15 s
    of tutor speech; every response re-reads the conversation so far (10 audio tokens a second, 700 tokens
    of instructions); all of it but the newest turn is cached when `cached`."""
    responses, previous_context = [], 0
    for turn in range(1, 61):
        audio_context = 150 * turn + 150 * (turn - 1)
        responses.append(usage_done(f"resp_{turn + 1}", audio_in=audio_context, text_in=700,
                                    cached=previous_context if cached else 0, audio_out=300, text_out=45))
        previous_context = audio_context + 700
    return responses


class TestCostCap:
    def test_the_lesson_ends_in_plain_words_when_its_cost_reaches_the_cap(self) -> None:
        session = conversing(max_cost_usd=0.01)
        spent = usage_done("resp_2", audio_in=0, cached=0, text_in=0, audio_out=100, text_out=0)  # $0.0064
        first = session.handle_upstream(spent, 5.0)
        assert closes(first) == []
        second = session.handle_upstream({**spent, "response": {**spent["response"], "id": "resp_3"}}, 9.0)
        [close] = closes(second)
        assert (close.code, close.reason) == (1000, "cost_limit")
        [error] = [m for m in browser_messages(second) if m["type"] == "error"]
        assert error["fatal"] is True
        assert error["code"] == "cost_limit"
        assert "ended" in error["message"]
        [reached] = logs(second, "cost_limit_reached")
        assert reached["max_cost_usd"] == 0.01
        assert reached["estimated_cost_usd"] >= 0.01
        assert session.state is LessonState.ENDED

    def test_a_busy_30_minute_lesson_stays_under_the_default_cap_by_a_wide_margin(self) -> None:
        cap = Settings().max_lesson_cost_usd
        session = conversing(max_cost_usd=cap)
        for at, done in enumerate(busy_lesson_responses(cached=True)):
            assert closes(session.handle_upstream(done, 30.0 * at)) == []
        ended = end_lesson(session, 1800.0)
        [summary] = logs(ended, "lesson_ended")
        assert summary["estimated_cost_usd"] < cap / 2

    def test_the_same_lesson_with_its_context_never_cached_is_stopped_at_the_default_cap(self) -> None:
        cap = Settings().max_lesson_cost_usd
        session = conversing(max_cost_usd=cap)
        for at, done in enumerate(busy_lesson_responses(cached=False)):
            actions = session.handle_upstream(done, 30.0 * at)
            if closes(actions):
                break
        assert session.ended_reason == "cost_limit"
        assert logs(actions, "cost_limit_reached")[0]["estimated_cost_usd"] < cap * 1.1


def usage_with_cache(*, text_in: int, audio_in: int, cached_text: int, cached_audio: int, text_out: int,
                     audio_out: int) -> dict[str, Any]:
    """A response's usage as the Realtime API reports it, with its cached input split into text and audio."""
    return {"total_tokens": text_in + audio_in + text_out + audio_out, "input_tokens": text_in + audio_in,
            "output_tokens": text_out + audio_out,
            "input_token_details": {
                "text_tokens": text_in, "audio_tokens": audio_in, "cached_tokens": cached_text + cached_audio,
                "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": cached_audio}},
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out}}


def done_with(response_id: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {"type": "response.done", "response": {"id": response_id, "status": "completed", "usage": usage}}


class TestCostEstimate:
    def test_a_response_reading_a_cached_prefix_is_never_priced_below_zero(self) -> None:
        # Three answers, then one whose input re-reads the first 1 024 tokens from the cache (the simulator's
        # fourth response of a lesson): earlier audio must not be repriced as cached, which made this
        # response's cost negative and ended the lesson with internal_error.
        session = conversing()
        usages = [
            usage_with_cache(text_in=619, audio_in=288, cached_text=0, cached_audio=0, text_out=16, audio_out=101),
            usage_with_cache(text_in=635, audio_in=407, cached_text=0, cached_audio=0, text_out=10, audio_out=73),
            usage_with_cache(text_in=645, audio_in=498, cached_text=645, cached_audio=379, text_out=14, audio_out=100),
        ]
        actions: list[object] = []
        for index, usage in enumerate(usages):
            actions += session.handle_upstream(done_with(f"resp_{index + 2}", usage), 5.0 * (index + 1))
        costs = [line["estimated_cost_usd"] for line in logs(actions, "response_done")]
        assert len(costs) == 3
        assert all(cost > 0 for cost in costs)
        # The fourth response: its new audio and text at the input rates, its cached input at the cached rate.
        assert costs[-1] == pytest.approx((119 * 32 + 1024 * 0.4 + 100 * 64 + 14 * 16) / 1e6, abs=1e-6)

    def test_cached_input_without_its_split_is_taken_off_the_response_s_audio_first(self) -> None:
        session = conversing()
        usage = usage_with_cache(text_in=700, audio_in=300, cached_text=0, cached_audio=0, text_out=0, audio_out=0)
        usage["input_token_details"] = {"text_tokens": 700, "audio_tokens": 300, "cached_tokens": 500}
        [line] = logs(session.handle_upstream(done_with("resp_2", usage), 30.0), "response_done")
        assert line["estimated_cost_usd"] == pytest.approx((500 * 4 + 500 * 0.4) / 1e6, abs=1e-6)


class TestRefusedInputWarnings:
    def test_every_bad_frame_gets_its_error_but_the_log_one_line_per_interval_with_a_count(self) -> None:
        session = conversing()
        actions: list[object] = []
        for index in range(1000):  # over 25 s
            actions += session.handle_browser_text("not json", 1.0 + index * 0.025)
            actions += session.handle_browser_audio(b"\x01", 1.0 + index * 0.025)
        errors = [m for m in browser_messages(actions) if m["type"] == "error"]
        assert len(errors) == 2000
        lines = logs(actions, "browser_input_refused")
        assert len(lines) == 3  # at 0 s, 10 s and 20 s
        assert lines[0]["suppressed"] == 0
        assert all(line["suppressed"] > 0 for line in lines[1:])
        [last] = logs(end_lesson(session, 30.0), "browser_input_refused")
        assert len(lines) + sum(line["suppressed"] for line in [*lines, last]) == 2000

    def test_a_refusal_line_names_what_was_wrong(self) -> None:
        session = conversing()
        [line] = logs(session.handle_browser_text('{"type": "session.update"}', 1.0), "browser_input_refused")
        assert line["code"] == "invalid_message"
        assert "session.update" in line["detail"]
