"""The greeting is heard in full, over real sockets: a page with late audio output and a noisy room.

The page here is simulated in real time the way a browser with Bluetooth headphones behaves: its audio
output starts 1.5 s after the greeting's audio arrived, it reports what it has played every 100 ms once
the output runs, and its microphone streams loud room noise every 20 ms from the first moment. Time is
only the page's own clock (its output and its microphone run in real time); the test synchronises on
messages.
"""

from __future__ import annotations

import asyncio
import io
import math
import struct
import time
from typing import Any

from harness import LessonClient, log_lines, open_lesson, relay_settings, serve_app

from app.heard import PLAYED_TOLERANCE_MS
from app.simulator import RealtimeSimulator

OUTPUT_DELAY_S = 1.5
REPORT_EVERY_S = 0.1
FRAME_S = 0.02
FRAME_SAMPLES = round(24_000 * FRAME_S)
# 20 ms of a loud 300 Hz tone: speech to the simulator's VAD, and a barge-in if it were relayed.
NOISE = struct.pack(f"<{FRAME_SAMPLES}h", *(round(20_000 * math.sin(2 * math.pi * 300 * n / 24_000))
                                            for n in range(FRAME_SAMPLES)))
# What the microphone sends once the page has reported the greeting played: quiet, and recognisable upstream.
AFTER_REPORT = b"\x01\x00" * FRAME_SAMPLES


async def microphone(page: LessonClient, greeting_reported: asyncio.Event, stop: asyncio.Event) -> None:
    """A microphone in a noisy room: a frame every 20 ms, noise until the greeting was reported played."""
    while not stop.is_set():
        await page.ws.send(AFTER_REPORT if greeting_reported.is_set() else NOISE)
        await asyncio.sleep(FRAME_S)  # the microphone's own pace, not a synchronisation


async def late_output(page: LessonClient, greeting_reported: asyncio.Event) -> dict[str, Any]:
    """Receive the greeting and report its playback as an output that starts OUTPUT_DELAY_S late; returns its
    `audio.done`. The report that the greeting was played is the last thing sent before the event is set."""
    start = await page.until_type("audio.start")
    output_starts_at = time.monotonic() + OUTPUT_DELAY_S
    done = await page.until_type("audio.done")
    duration_ms = done["duration_ms"]
    while True:
        await asyncio.sleep(REPORT_EVERY_S)  # the playback worklet's reporting pace
        played_ms = math.floor((time.monotonic() - output_starts_at) * 1000)
        if played_ms <= 0:
            continue
        # A report this close to the end counts as the whole item (rounding), so it is the final one.
        if played_ms >= duration_ms - PLAYED_TOLERANCE_MS:
            greeting_reported.set()
            await page.send_json({"type": "playback", "item_id": start["item_id"], "played_ms": duration_ms})
            return done
        await page.send_json({"type": "playback", "item_id": start["item_id"], "played_ms": played_ms})


async def test_a_page_whose_output_starts_late_in_a_noisy_room_hears_the_whole_greeting(
    simulator_with: Any, log_stream: io.StringIO
) -> None:
    async with simulator_with(audio_pace=0) as simulator, \
            serve_app(relay_settings(simulator.url), log_stream) as relay, \
            open_lesson(relay.lesson_url(name="Ana")) as page:
        assert isinstance(simulator, RealtimeSimulator)
        greeting_reported, stop = asyncio.Event(), asyncio.Event()
        noise = asyncio.create_task(microphone(page, greeting_reported, stop))
        try:
            done = await late_output(page, greeting_reported)
            await page.until(lambda m: m["type"] == "status" and m["state"] == "listening")
            upstream = await simulator.next_connection()
            await upstream.wait_for("input_audio_buffer.append")
        finally:
            stop.set()
            await noise
        await page.send_json({"type": "end"})
        await page.drain_until_closed()
    await upstream.wait_closed()
    assert page.ws.close_code == 1000
    # No microphone frame sent before the greeting was reported played reached the upstream.
    relayed = bytes(upstream.input_audio)
    assert relayed
    assert relayed == AFTER_REPORT * (len(relayed) // len(AFTER_REPORT))
    assert not [e for e in upstream.sent if e["type"] == "input_audio_buffer.speech_started"]
    # The greeting was heard in full: all of it reached the page, nothing interrupted or truncated it.
    assert done["duration_ms"] > 1000 * OUTPUT_DELAY_S
    assert len(page.audio) // 48 == done["duration_ms"]
    assert not [m for m in page.messages if m["type"] == "audio.interrupt"]
    assert not [e for e in upstream.received if e["type"] == "conversation.item.truncate"]
    # The greeting, then the lesson's feedback after End: no other response was made.
    greeting, feedback = [e for e in upstream.sent if e["type"] == "response.done"]
    assert greeting["response"]["status"] == "completed"
    assert feedback["response"]["metadata"] == {"purpose": "feedback"}
    lines = log_lines(log_stream)
    [opened] = [line for line in lines if line["event"] == "microphone_open"]
    assert opened["because"] == "played"
    assert opened["discarded_frames"] > OUTPUT_DELAY_S / FRAME_S
    assert not [line for line in lines if line["event"] == "barge_in"]
