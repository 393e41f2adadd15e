"""How late the worker's event loop runs: how long every lesson's audio waits behind other work.

A timer due every `INTERVAL_S` on the loop's own clock; how late it fires is observed into
`lesson_relay_event_loop_lag_seconds`. Timers that fire late mean a full core (more streaming lessons than
it carries, or a stall): a lag of `LATE_S` or more is also logged, `event_loop_late`, at most one line every
10 s with the count held back. No task: the probe lives on the loop's timer, as the lessons' deadlines do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from app.pacing import LogThrottle

INTERVAL_S = 0.5
LATE_S = 0.1

log = structlog.get_logger("lesson_relay")


class LoopLagProbe:
    """Observes the lag of a timer re-armed every `interval_s` on the running loop, from `start` until `stop`."""

    def __init__(self, observe: Callable[[float], None], *, interval_s: float = INTERVAL_S,
                 late_s: float = LATE_S) -> None:
        self.observe = observe
        self.interval_s = interval_s
        self.late_s = late_s
        self._throttle = LogThrottle()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.interval_s
        self._timer = self._loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        lag_s = max(0.0, now - self._due)
        self.observe(lag_s)
        if lag_s >= self.late_s and (held_back := self._throttle.allow(now)) is not None:
            log.warning("event_loop_late", lag_s=round(lag_s, 3), held_back=held_back,
                        message="this worker's event loop was held up (a full core, or a stall): every "
                        "lesson's audio waited as long")
        self._arm()
