"""Who may start a lesson, and how many run at once.

`LessonRegistry` holds a place for each lesson this process runs and drains them on shutdown; the
places themselves (`MAX_SESSIONS`, `LESSON_STARTS_PER_MINUTE` per client address, and for a lesson link
`LINK_STARTS_PER_MINUTE` and one live lesson) are counted for the whole replica by a `Places`:
`LocalPlaces` when the replica is this one process, the supervisor's (see `app.replica`) when it has
several workers. `origin_allowed` refuses cross-site WebSocket handshakes. All are plain objects driven
by the route, with the time passed in.

A lesson link opens one live lesson at a time: a second start **replaces** the first, which ends telling
its page so. Refusing it instead would lock the student out whenever the first lesson's page vanished
without closing (a crashed tab, a phone that lost its network) until the server noticed, up to a minute;
replacing lets the student who has the link in front of them now carry on, while the link's start rate
bounds what a link shared by mistake can spend.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol
from urllib.parse import urlsplit

from app.errors import OverCapacity, ResumeNotYet

# How often one lesson may be taken over (each a new upstream session) in the whole replica, and resumed on one
# worker: the lesson page, retrying after 0.5, 1, 2, 4 s, comes back a few times a minute on the worst network.
RESUMES_PER_LESSON_PER_MINUTE = 30


@dataclass(frozen=True, slots=True)
class Start:
    """A lesson asking for a place: its id, the client address it came from as the start rate counts it
    (`app.addresses.limit_key`), and its lesson link if any. A lesson `taken_over` from the records (after a
    redeploy, or from another worker) already started: it holds a place but spends none of the start rates, so
    that a class behind one address gets its lessons back after a redeploy; its take-overs are bounded per lesson."""

    lesson_id: str
    client: str
    link_id: str | None = None
    taken_over: bool = False


ReplaceLesson = Callable[[str], None]


def ignore_replacement(lesson_id: str) -> None:
    """Until a registry listens, there is no lesson to end."""


class Places(Protocol):
    """The replica's lesson places: capacity, the start rates and one live lesson per link, for every worker."""

    # Set by the registry: called with the id of a lesson that a newer start of its link replaces.
    on_replaced: ReplaceLesson
    # Set by the registry: called with the id of a lesson this worker runs that a page resumes on another.
    on_handover: ReplaceLesson

    async def request_handover(self, lesson_id: str) -> None:
        """A page resumes `lesson_id` here, but another worker of the replica runs it: ask that one to hand
        it over (the page tries again meanwhile)."""

    async def take(self, start: Start, now: float) -> None:
        """Hold a place for `start`, or raise `OverCapacity` (or, for a lesson taken over too often, `ResumeNotYet`)
        saying why not."""

    def give_back(self, start: Start) -> None:
        """A lesson that held a place has ended."""


class LocalPlaces:
    """The places of a replica that is one process: `MAX_SESSIONS`, the start rates, the take-overs of each
    lesson and the links' live lessons, counted here.

    Every limit is checked before any is spent, so a refusal (over capacity, or too many starts from the
    address or the link) spends none of the client's or the link's starts. A start that replaces its link's
    live lesson takes over that lesson's place, so a reload is never refused for capacity.
    """

    def __init__(self, max_lessons: int, starts_per_minute: int, link_starts_per_minute: int = 4) -> None:
        self.max_lessons = max_lessons
        self.limiter = StartRateLimiter(starts_per_minute)
        self.link_limiter = StartRateLimiter(link_starts_per_minute)
        self.take_over_limiter = StartRateLimiter(RESUMES_PER_LESSON_PER_MINUTE)
        self.taken = 0
        self.on_replaced: ReplaceLesson = ignore_replacement
        self.on_handover: ReplaceLesson = ignore_replacement
        self._link_lessons: dict[str, str] = {}  # link id → the id of its live lesson

    def take_now(self, start: Start, now: float) -> None:
        link = start.link_id
        replaced = self._link_lessons.get(link) if link is not None else None
        if self.taken - (replaced is not None) >= self.max_lessons:
            raise OverCapacity(f"{self.taken} lessons open, MAX_SESSIONS is {self.max_lessons}")
        if start.taken_over:
            self._check_take_over_rate(start, now)
        else:
            self._check_start_rates(start, now)
        self.taken += 1
        if link is not None:
            self._link_lessons[link] = start.lesson_id
        if replaced is not None:
            self.on_replaced(replaced)

    def _check_start_rates(self, start: Start, now: float) -> None:
        """Spend one of the client's and the link's starts of the minute, or raise `OverCapacity` spending none."""
        link = start.link_id
        if not self.limiter.allows(start.client, now):
            raise OverCapacity(
                f"client {start.client!r} started more than {self.limiter.per_minute} lessons in a minute",
                student_message="Too many lessons were started from here just now. Please wait a minute and try again.",
            )
        if link is not None and not self.link_limiter.allows(link, now):
            raise OverCapacity(
                f"link {link!r} started more than {self.link_limiter.per_minute} lessons in a minute",
                student_message="This lesson link was used to start a lesson several times just now. "
                                "Please wait a minute and try again.",
            )
        self.limiter.record(start.client, now)
        if link is not None:
            self.link_limiter.record(link, now)

    def _check_take_over_rate(self, start: Start, now: float) -> None:
        """Spend one of the lesson's take-overs of the minute, or raise `ResumeNotYet`: a script moving one lesson
        between the workers of a replica would start a new upstream session at each move."""
        if not self.take_over_limiter.allows(start.lesson_id, now):
            raise ResumeNotYet(
                f"lesson {start.lesson_id!r} was taken over {self.take_over_limiter.per_minute} times in a minute",
                student_message="Reconnecting to your lesson…")
        self.take_over_limiter.record(start.lesson_id, now)

    async def take(self, start: Start, now: float) -> None:
        self.take_now(start, now)

    async def request_handover(self, lesson_id: str) -> None:
        """One process: a lesson it runs is found in its own registry of live lessons, never asked for."""

    def give_back(self, start: Start) -> None:
        self.taken -= 1
        if start.link_id is not None and self._link_lessons.get(start.link_id) == start.lesson_id:
            del self._link_lessons[start.link_id]


class LessonSignal(StrEnum):
    """What the registry tells a lesson it admitted, while the lesson runs."""

    SHUTDOWN = "shutdown"  # this process drains: hand the lesson over
    REPLACED = "replaced"  # a newer start of its lesson link replaces it
    MOVED = "moved"  # a page resumes it on another worker of the replica: hand it over


LessonListener = Callable[[LessonSignal], None]


class AdmittedLesson:
    """One lesson's place in the registry, held until `release`. The lesson `listen`s for its signals; those
    that came before it listened are told then. A callback, not an `asyncio.Event` and a task waiting on it
    per signal: a lesson holds one small object instead of some 4 KiB."""

    __slots__ = ("_listener", "_pending", "_registry", "start")

    def __init__(self, registry: LessonRegistry, start: Start) -> None:
        self.start = start
        self._registry = registry
        self._listener: LessonListener | None = None
        self._pending: list[LessonSignal] = []

    def listen(self, listener: LessonListener) -> None:
        self._listener = listener
        pending, self._pending = self._pending, []
        for signal in pending:
            listener(signal)

    def tell(self, signal: LessonSignal) -> None:
        if self._listener is None:
            self._pending.append(signal)
        else:
            self._listener(signal)

    def release(self) -> None:
        """Give the place back (again: nothing more)."""
        self._listener = None
        self._registry.release(self)


class LessonRegistry:
    """This process's open lessons, each holding one of the replica's places, and the drain signal."""

    def __init__(self, places: Places) -> None:
        self.places = places
        places.on_replaced = self._replace
        places.on_handover = self._hand_over
        self.draining = asyncio.Event()
        self._open: set[AdmittedLesson] = set()
        # Lesson id → its place, for the signals; a lesson taken over again here while its old place is still
        # being let go has two places for a moment, and the newer one is told.
        self._by_lesson: dict[str, AdmittedLesson] = {}
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    @property
    def open_lessons(self) -> int:
        return len(self._open)

    async def admit(self, start: Start, now: float) -> AdmittedLesson:
        """A lesson place for `start`, held until it is released, or `OverCapacity` (also while draining)."""
        if self.draining.is_set():
            raise OverCapacity("server is draining for shutdown",
                               student_message="The lesson server is restarting. Please try again in a moment.")
        await self.places.take(start, now)
        admitted = self._by_lesson[start.lesson_id] = AdmittedLesson(self, start)
        self._open.add(admitted)
        self._all_closed.clear()
        return admitted

    def release(self, admitted: AdmittedLesson) -> None:
        if admitted not in self._open:
            return
        self._open.remove(admitted)
        if self._by_lesson.get(admitted.start.lesson_id) is admitted:
            del self._by_lesson[admitted.start.lesson_id]
        self.places.give_back(admitted.start)
        if not self._open:
            self._all_closed.set()

    async def request_handover(self, lesson_id: str) -> None:
        """Ask the worker of this replica that runs `lesson_id` to hand it over."""
        await self.places.request_handover(lesson_id)

    def _hand_over(self, lesson_id: str) -> None:
        if (admitted := self._by_lesson.get(lesson_id)) is not None:
            admitted.tell(LessonSignal.MOVED)

    def _replace(self, lesson_id: str) -> None:
        if (admitted := self._by_lesson.get(lesson_id)) is not None:
            admitted.tell(LessonSignal.REPLACED)

    async def drain(self, grace_s: float) -> bool:
        """Tell every open lesson to end, then wait up to `grace_s` for them; True if all ended."""
        self.draining.set()
        for admitted in list(self._open):
            admitted.tell(LessonSignal.SHUTDOWN)
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

    def allows(self, client: str, now: float) -> bool:
        """Whether `client` may start a lesson at `now`; spends nothing (see `record`)."""
        if len(self._starts) > self._MAX_CLIENTS_BEFORE_SWEEP:
            self._sweep(now)
        starts = self._starts.get(client)
        if starts is None:
            return True
        while starts and starts[0] <= now - self.WINDOW_S:
            starts.popleft()
        return len(starts) < self.per_minute

    def record(self, client: str, now: float) -> None:
        """Count a start of `client` at `now`."""
        self._starts.setdefault(client, deque()).append(now)

    def _sweep(self, now: float) -> None:
        for client in [c for c, starts in self._starts.items() if not starts or starts[-1] <= now - self.WINDOW_S]:
            del self._starts[client]


def origin_allowed(origin: str | None, host: str | None, allowlist: frozenset[str]) -> bool:
    """Same-origin handshakes, listed origins, and non-browser clients (no Origin header) pass."""
    if origin is None:
        return True
    # An origin is scheme://host[:port]: its scheme and host have no case (RFC 6454 serialises them lower-case),
    # its port is digits. The allowlist is kept lower-case.
    origin = origin.rstrip("/").lower()
    if "*" in allowlist or origin in allowlist:
        return True
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()
