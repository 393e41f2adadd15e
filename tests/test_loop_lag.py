"""The event loop's lag: a probe on the loop's timer, observed and, when a core is full, logged."""

from __future__ import annotations

import asyncio
import time

from structlog.testing import capture_logs

from app.loop_lag import LoopLagProbe

INTERVAL_S = 0.01
BLOCKED_S = 0.15


async def test_a_loop_blocked_by_other_work_is_observed_late_and_logged_once() -> None:
    late_lags: list[float] = []
    twice_late = asyncio.Event()

    def observe(lag_s: float) -> None:
        if lag_s >= BLOCKED_S - INTERVAL_S:
            late_lags.append(lag_s)
            if len(late_lags) == 2:
                twice_late.set()

    probe = LoopLagProbe(observe, interval_s=INTERVAL_S, late_s=0.1)
    with capture_logs() as logs:
        probe.start()
        loop = asyncio.get_running_loop()
        # Work that holds the loop, as a full core does: twice, the second while the first line is throttled.
        loop.call_soon(time.sleep, BLOCKED_S)
        loop.call_later(BLOCKED_S + INTERVAL_S, time.sleep, BLOCKED_S)
        await asyncio.wait_for(twice_late.wait(), 5)
        probe.stop()
    warnings = [entry for entry in logs if entry["event"] == "event_loop_late"]
    assert len(warnings) == 1  # the second stall is held back, and counted in the next line
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["lag_s"] >= 0.1


async def test_a_stopped_probe_observes_nothing_more() -> None:
    lags: list[float] = []
    fired = asyncio.Event()

    def observe(lag_s: float) -> None:
        lags.append(lag_s)
        fired.set()

    probe = LoopLagProbe(observe, interval_s=INTERVAL_S)
    probe.start()
    await asyncio.wait_for(fired.wait(), 5)
    probe.stop()
    observed = len(lags)
    # Timers fire in the order they are due: a timer the probe had left would fire before this sleep ends.
    await asyncio.sleep(5 * INTERVAL_S)
    assert len(lags) == observed
