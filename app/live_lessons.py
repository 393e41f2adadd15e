"""The lessons this process runs, by lesson id: a page that resumes finds its lesson here.

Each lesson runs as its own task, not inside its first page's connection: it outlives that socket (a page
that reloads or loses its network comes back to the same lesson). The task holds the lesson's place
(MAX_SESSIONS) until the lesson ends, however many sockets it had. The lessons of a link the teacher withdrew are
found here and ended, as are those a teacher ended (`app.link_check`).
"""

from __future__ import annotations

import asyncio

from prometheus_client import Gauge

from app.admission import AdmittedLesson
from app.relay import PageSocket, Relay
from app.withdrawal import Withdrawal


class LiveLessons:
    def __init__(self, lessons_open: Gauge) -> None:
        self._lessons: dict[str, Relay] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lessons_open = lessons_open

    def get(self, lesson_id: str) -> Relay | None:
        """The running lesson `lesson_id`, if it runs here and has not ended."""
        relay = self._lessons.get(lesson_id)
        return None if relay is None or relay.over else relay

    def start(self, relay: Relay, page: PageSocket, admitted: AdmittedLesson, *, replay: bool = False) -> None:
        """Run `relay` from `page` on in its own task; its place (`admitted`) is released when the lesson ends."""
        lesson_id = admitted.start.lesson_id
        self._lessons[lesson_id] = relay
        self._lessons_open.inc()
        task = asyncio.create_task(self._run(lesson_id, relay, page, admitted, replay), name=f"lesson-{lesson_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def running_links(self) -> set[str]:
        """The lesson links of the lessons running here (lessons without one are not listed)."""
        return {link_id for relay in self._lessons.values()
                if not relay.over and (link_id := relay.session.config.link_id) is not None}

    def running_lessons(self) -> set[str]:
        """The ids of the lessons running here, with a link or without."""
        return {lesson_id for lesson_id, relay in self._lessons.items() if not relay.over}

    def withdraw(self, withdrawal: Withdrawal, *, link_id: str | None = None, student_id: str | None = None,
                 lesson_id: str | None = None) -> list[str]:
        """End as `withdrawal` the lessons running here of `link_id`, or of any link of `student_id`, or the lesson
        `lesson_id` (with a link or without): the ids of those told. A lesson already ending on its own is not told:
        it ends as it was going to."""
        told = []
        for running_id, relay in list(self._lessons.items()):
            config = relay.session.config
            if relay.over or relay.session.ending_already:
                continue
            if running_id == lesson_id or (config.link_id is not None and (
                    (link_id is not None and config.link_id == link_id)
                    or (student_id is not None and config.student_id == student_id))):
                relay.withdraw(withdrawal)
                told.append(running_id)
        return told

    async def ended(self) -> None:
        """Return once every lesson running now has ended and given back its place."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _run(self, lesson_id: str, relay: Relay, page: PageSocket, admitted: AdmittedLesson,
                   replay: bool) -> None:
        try:
            await relay.run(page, admitted, replay=replay)
        finally:
            if self._lessons.get(lesson_id) is relay:
                del self._lessons[lesson_id]
            self._lessons_open.dec()
            admitted.release()
