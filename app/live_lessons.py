"""The lessons this process runs, by lesson id: a page that resumes finds its lesson here.

Each lesson runs as its own task, not inside its first page's connection: it outlives that socket (a page
that reloads or loses its network comes back to the same lesson). The task holds the lesson's place
(MAX_SESSIONS) until the lesson ends, however many sockets it had.
"""

from __future__ import annotations

import asyncio
import contextlib

from app.relay import PageSocket, Relay


class LiveLessons:
    def __init__(self) -> None:
        self._lessons: dict[str, Relay] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, lesson_id: str) -> Relay | None:
        """The running lesson `lesson_id`, if it runs here and has not ended."""
        relay = self._lessons.get(lesson_id)
        return None if relay is None or relay.over else relay

    def start(self, lesson_id: str, relay: Relay, page: PageSocket, *, shutdown: asyncio.Event,
              replaced: asyncio.Event, moved: asyncio.Event, place: contextlib.AsyncExitStack,
              replay: bool = False) -> None:
        """Run `relay` from `page` on in its own task; `place` (the lesson's place, and what else the lesson
        holds while it runs) is let go when the lesson ends."""
        self._lessons[lesson_id] = relay
        task = asyncio.create_task(self._run(lesson_id, relay, page, shutdown, replaced, moved, place, replay),
                                   name=f"lesson-{lesson_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def ended(self) -> None:
        """Return once every lesson running now has ended and given back its place."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _run(self, lesson_id: str, relay: Relay, page: PageSocket, shutdown: asyncio.Event,
                   replaced: asyncio.Event, moved: asyncio.Event, place: contextlib.AsyncExitStack,
                   replay: bool) -> None:
        try:
            await relay.run(page, shutdown, replaced, moved, replay=replay)
        finally:
            if self._lessons.get(lesson_id) is relay:
                del self._lessons[lesson_id]
            await place.aclose()
