"""python -m bench.withdrawal_check — what each worker's check for withdrawn and teacher-ended lessons costs.

Every `LINK_CHECK_SECONDS` each worker asks the store, in one query by primary keys, which of its running
lessons' links a teacher revoked (or whose student they archived or deleted) and which of its lessons a teacher
ended (`app.store.queries.withdrawn_lessons`). This fills a store with `--students` students, each with a link
and `--lessons-each` ended lessons, opens `--running` lessons on them (one per student, as one worker runs),
revokes one link and asks one lesson's end, then times the check as a worker makes it: wall time per check
(median and p99 over `--checks` checks), this process's CPU time per check (what the worker's event loop and
the database driver spend, threads included), and what it found.

    .venv/bin/python -m bench.withdrawal_check [--database-url postgresql://…] [--running 150]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import async_sessionmaker

from app.store.database import create_engine, database_url, migrate, redact
from app.store.models import Lesson, Link, Student
from app.store.queries import withdrawn_lessons
from bench import run_on_uvloop


async def check_times_ms(url: str, *, students: int, lessons_each: int, running: int,
                         checks: int) -> tuple[list[float], float, int, int]:
    """Each check's wall time in ms, the CPU time of one check in ms, and how many links and lessons the last
    check found withdrawn or ended."""
    engine = create_engine(database_url(url))
    await migrate(engine)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        for number in range(students):
            student_id, link_id = f"student{number:06d}", f"link{number:06d}"
            session.add(Student(id=student_id, name=f"Student {number}", level="B1"))
            session.add(Link(id=link_id, student_id=student_id, created_at=now))
            session.add_all(Lesson(id=f"l{number:06d}x{lesson:03d}", student_id=student_id, link_id=link_id,
                                   level="B1", model="m", simulated=True, started_at=now - timedelta(days=lesson),
                                   ended_at=now - timedelta(days=lesson), end_reason="student_ended")
                            for lesson in range(lessons_each))
    link_ids = [f"link{number:06d}" for number in range(running)]
    lesson_ids = [f"l{number:06d}x000" for number in range(running)]
    async with sessions.begin() as session:
        revoked = await session.get(Link, link_ids[0])
        assert revoked is not None
        revoked.revoked_at = now
        ended = await session.get(Lesson, lesson_ids[-1])
        assert ended is not None
        ended.end_requested_at = now
    times = []
    cpu_started = time.process_time()
    for _ in range(checks):
        started = time.perf_counter()
        found = await withdrawn_lessons(sessions, link_ids=link_ids, lesson_ids=lesson_ids)
        times.append((time.perf_counter() - started) * 1000)
    cpu_ms = (time.process_time() - cpu_started) * 1000 / checks
    await engine.dispose()
    return times, cpu_ms, len(found.links), len(found.ended_lessons)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.withdrawal_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None, help="an empty database (default: a temporary SQLite file)")
    parser.add_argument("--students", type=int, default=2000)
    parser.add_argument("--lessons-each", type=int, default=20)
    parser.add_argument("--running", type=int, default=150, help="the lessons one worker runs")
    parser.add_argument("--checks", type=int, default=200)
    arguments = parser.parse_args()
    if not 1 <= arguments.running <= arguments.students:
        parser.error("--running must be from 1 to --students")
    with tempfile.TemporaryDirectory() as folder:
        url = arguments.database_url or f"sqlite:///{Path(folder) / 'lessons.db'}"
        times, cpu_ms, links, lessons = run_on_uvloop(check_times_ms(
            url, students=arguments.students, lessons_each=arguments.lessons_each, running=arguments.running,
            checks=arguments.checks))
    p99 = statistics.quantiles(times, n=100)[98]
    print(f"database: {redact(database_url(url))}")
    print(f"{arguments.students} students, {arguments.students * arguments.lessons_each} lessons in the store; "
          f"one worker running {arguments.running}")
    print(f"check: median {statistics.median(times):.2f} ms, p99 {p99:.2f} ms over {len(times)} checks, "
          f"{cpu_ms:.2f} ms of CPU each; found {links} link(s) withdrawn and {lessons} lesson(s) ended")


if __name__ == "__main__":
    main()
