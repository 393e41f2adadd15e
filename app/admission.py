"""Who may start a lesson, and how many run at once.

`LessonRegistry` holds a place for each lesson this process runs and drains them on shutdown; the
places themselves (`MAX_SESSIONS`, and `LESSON_STARTS_PER_MINUTE` per client) are counted for the whole
replica by a `Places`: `LocalPlaces` when the replica is this one process, the supervisor's (see
`app.replica`) when it has several workers. `origin_allowed` refuses cross-site WebSocket handshakes.
All are plain objects driven by the route, with the time passed in.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol
from urllib.parse import urlsplit

from app.errors import OverCapacity


class Places(Protocol):
    """The replica's lesson places: capacity and the start rate per client, for every worker together."""

    async def take(self, client: str, now: float) -> None:
        """Hold a place for a lesson of `client`, or raise `OverCapacity` saying why not."""

    def give_back(self) -> None:
        """A lesson that held a place has ended."""


class LocalPlaces:
    """The places of a replica that is one process: `MAX_SESSIONS` and the start rate, counted here.

    Capacity is checked before the start rate, so a refusal over capacity spends none of the client's starts.
    """

    def __init__(self, max_lessons: int, starts_per_minute: int) -> None:
        self.max_lessons = max_lessons
        self.limiter = StartRateLimiter(starts_per_minute)
        self.taken = 0

    def take_now(self, client: str, now: float) -> None:
        if self.taken >= self.max_lessons:
            raise OverCapacity(f"{self.taken} lessons open, MAX_SESSIONS is {self.max_lessons}")
        if not self.limiter.allow(client, now):
            raise OverCapacity(
                f"client {client!r} started more than {self.limiter.per_minute} lessons in a minute",
                student_message="Too many lessons were started from here just now. Please wait a minute and try again.",
            )
        self.taken += 1

    async def take(self, client: str, now: float) -> None:
        self.take_now(client, now)

    def give_back(self) -> None:
        self.taken -= 1


class LessonRegistry:
    """This process's open lessons, each holding one of the replica's places, and the drain signal."""

    def __init__(self, places: Places) -> None:
        self.places = places
        self.draining = asyncio.Event()
        self._open = 0
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    @property
    def open_lessons(self) -> int:
        return self._open

    @asynccontextmanager
    async def admit(self, client: str, now: float) -> AsyncIterator[None]:
        """Hold one lesson place for the block, or raise `OverCapacity` (also while draining)."""
        if self.draining.is_set():
            raise OverCapacity("server is draining for shutdown",
                               student_message="The lesson server is restarting. Please try again in a moment.")
        await self.places.take(client, now)
        self._open += 1
        self._all_closed.clear()
        try:
            yield
        finally:
            self._open -= 1
            self.places.give_back()
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
