"""Who may start a lesson, and how many run at once.

`LessonRegistry` counts open lessons against `MAX_SESSIONS` and drains them on shutdown;
`StartRateLimiter` bounds lesson starts per client; `origin_allowed` refuses cross-site WebSocket
handshakes. All are plain objects driven by the route, with the time passed in.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from app.errors import OverCapacity


class LessonRegistry:
    """Open lessons, the capacity limit and the drain signal shared by every lesson's relay."""

    def __init__(self, max_lessons: int) -> None:
        self.max_lessons = max_lessons
        self.draining = asyncio.Event()
        self._open = 0
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    @property
    def open_lessons(self) -> int:
        return self._open

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one lesson place for the block, or raise `OverCapacity` (also while draining)."""
        if self.draining.is_set():
            raise OverCapacity("server is draining for shutdown",
                               student_message="The lesson server is restarting. Please try again in a moment.")
        if self._open >= self.max_lessons:
            raise OverCapacity(f"{self._open} lessons open, MAX_SESSIONS is {self.max_lessons}")
        self._open += 1
        self._all_closed.clear()
        try:
            yield
        finally:
            self._open -= 1
            if self._open == 0:
                self._all_closed.set()

    async def drain(self, grace_s: float) -> bool:
        """Tell every open lesson to end, then wait up to `grace_s` for them; True if all ended."""
        self.draining.set()
        try:
            async with asyncio.timeout(grace_s):
                await self._all_closed.wait()
        except TimeoutError:
            return False
        return True


class StartRateLimiter:
    """At most `per_minute` lesson starts per client in any sliding 60-second window."""

    WINDOW_S = 60.0
    # Forget clients that have not started a lesson for a window, so the table stays small.
    _MAX_CLIENTS_BEFORE_SWEEP = 10_000

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._starts: dict[str, deque[float]] = {}

    def allow(self, client: str, now: float) -> bool:
        if len(self._starts) > self._MAX_CLIENTS_BEFORE_SWEEP:
            self._sweep(now)
        starts = self._starts.setdefault(client, deque())
        while starts and starts[0] <= now - self.WINDOW_S:
            starts.popleft()
        if len(starts) >= self.per_minute:
            return False
        starts.append(now)
        return True

    def _sweep(self, now: float) -> None:
        for client in [c for c, starts in self._starts.items() if not starts or starts[-1] <= now - self.WINDOW_S]:
            del self._starts[client]


def origin_allowed(origin: str | None, host: str | None, allowlist: frozenset[str]) -> bool:
    """Same-origin handshakes, listed origins, and non-browser clients (no Origin header) pass."""
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if "*" in allowlist or origin in allowlist:
        return True
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()
