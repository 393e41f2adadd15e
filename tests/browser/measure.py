"""Measure the lesson page's audio path in headless Chromium; prints figures, asserts nothing.

    .venv/bin/python tests/browser/measure.py [--latency-runs 5]

- capture frame: bytes and milliseconds of audio per binary frame, and frames per second sent;
- resampler quality: a 13 kHz tone captured by a 48 kHz (and a 44.1 kHz) AudioContext must not fold
  back below 12 kHz; the level of its 11 kHz alias, and of the loudest component anywhere in the
  recorded 24 kHz band, relative to a 1 kHz tone of equal amplitude through the same path;
- playback start latency: from the greeting's first binary frame arriving in the page to its first
  sample reaching the output (AudioContext.getOutputTimestamp), and the context's output latency.

The resampler is measured with Chromium's echo cancellation, noise suppression and auto gain off
(`processing=False`), so the figure is the capture worklet's filter; the same measurement with them
on, as in a lesson, is printed too (the noise suppressor treats a steady tone as noise).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from browser_stack import (
    SAMPLE_RATE,
    LessonPage,
    Stack,
    launch_chromium,
    make_wav,
    run_stack,
    spectrum_db,
    wait_recording,
)
from playwright.sync_api import Playwright, sync_playwright

RECORD_S = 3.0


def record_tone(playwright: Playwright, stack: Stack, workdir: Path, tone_hz: float, rate: int,
                processing: bool) -> np.ndarray:
    """The last second of what the upstream received while the microphone played `tone_hz`."""
    wav = make_wav(workdir / f"tone-{tone_hz:.0f}-{rate}.wav", rate=rate, tone_hz=tone_hz)
    browser = launch_chromium(playwright, wav)
    try:
        lesson = LessonPage.open(browser, stack.url, context_rate=rate, processing=processing)
        before = stack.recordings()
        lesson.start("Ana")
        samples = wait_recording(stack, before, seconds=RECORD_S)
        lesson.page.get_by_role("button", name="End lesson").click()
        return samples[-SAMPLE_RATE:]
    finally:
        browser.close()


def level_at(samples: np.ndarray, hz: float) -> float:
    freqs, levels = spectrum_db(samples)
    near = np.abs(freqs - hz) <= 3
    return float(levels[near].max())


def measure_resampler(playwright: Playwright, stack: Stack, workdir: Path) -> None:
    for rate, processing in ((48_000, False), (44_100, False), (48_000, True)):
        reference = level_at(record_tone(playwright, stack, workdir, 1_000, rate, processing), 1_000)
        high = record_tone(playwright, stack, workdir, 13_000, rate, processing)
        freqs, levels = spectrum_db(high)
        band = freqs > 50  # ignore DC and hum-range leftovers of the processing
        loudest = int(np.argmax(np.where(band, levels, -np.inf)))
        print(f"resampler @ {rate} Hz context, processing {'on' if processing else 'off'}: "
              f"1 kHz tone {reference:.1f} dBFS; "
              f"13 kHz tone → 11 kHz alias {level_at(high, 11_000) - reference:.1f} dB, "
              f"loudest component {levels[loudest] - reference:.1f} dB at {freqs[loudest]:.0f} Hz "
              f"(relative to the 1 kHz tone)")


def measure_capture_and_latency(playwright: Playwright, stack: Stack, workdir: Path, runs: int) -> None:
    wav = make_wav(workdir / "silence.wav", rate=48_000, tone_hz=None)
    latencies: list[float] = []
    browser = launch_chromium(playwright, wav)
    try:
        for run in range(runs):
            lesson = LessonPage.open(browser, stack.url)
            lesson.start("Ana")
            item_id = lesson.wait_greeting_played()
            latencies.append(lesson.debug("startLatencyMs")[item_id])
            if run == 0:
                frames_before, started = lesson.debug("framesSent"), time.monotonic()
                lesson.wait_debug(f"d.framesSent >= {frames_before + 100}")
                per_second = (lesson.debug("framesSent") - frames_before) / (time.monotonic() - started)
                frame_bytes = lesson.debug("frameBytes")
                print(f"capture frame: {frame_bytes} bytes = {frame_bytes / 2 / SAMPLE_RATE * 1000:.0f} ms of "
                      f"PCM16 24 kHz; {per_second:.1f} frames/s sent; "
                      f"context rate {lesson.debug('contextRate')} Hz; "
                      f"context output latency {lesson.debug('outputLatencyMs'):.1f} ms")
            lesson.page.get_by_role("button", name="End lesson").click()
            lesson.wait_debug("d.socket === 'closed'")
            lesson.page.close()
    finally:
        browser.close()
    print(f"playback start latency (first binary frame arrives → its first sample at the output), {runs} greetings: "
          f"median {statistics.median(latencies):.1f} ms, min {min(latencies):.1f}, max {max(latencies):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-runs", type=int, default=5)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        workdir = Path(tmp)
        with run_stack(workdir) as stack:
            measure_capture_and_latency(playwright, stack, workdir, arguments.latency_runs)
            measure_resampler(playwright, stack, workdir)


if __name__ == "__main__":
    main()
