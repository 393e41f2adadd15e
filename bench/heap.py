"""Heap per idle lesson: what a lesson the relay holds is made of, by the line that allocated it.

    .venv/bin/python -m bench.heap [--lessons 150] [--top 30] [--by line|app]

The relay is served in this process (uvicorn, port 0, the bench's relay environment, its lesson records in
a SQLite file of its own) against the echo upstream in its own process; the students run in a child
process, so that nothing of theirs is counted. After 20 lessons opened and closed one by one (imports,
caches and pools warm), `tracemalloc` takes a snapshot, N students open a lesson each and get through the
greeting as the page does (its `playback` report sent), and a second snapshot is taken with them idle. The
difference, divided by N, is a lesson's Python heap: the bench's `KiB/idle` is the same lessons' resident
memory, which also counts the allocator's free lists and the kernel's socket buffers.

`--by line` (the default) attributes each allocation to the line that made it; `--by app` to the last line
of `app/` on its stack, which tells which of the relay's own steps holds memory that a library allocated.
It measures and prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import linecache
import multiprocessing
import tempfile
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from app.settings import Settings
from bench.__main__ import relay_environment
from bench.processes import REPO_ROOT, app_served_here, running, start_echo_upstream
from bench.students import past_the_greeting

WARM_UP_LESSONS = 20
TRACEBACK_DEPTH = 25
SETTLE_SECONDS = 2.0
STUDENTS_TIMEOUT_SECONDS = 300.0


async def _greeted_student(port: int) -> ClientConnection:
    """A lesson opened and through its greeting, as the page gets there: `playback` reported, `listening`."""
    page = await connect(f"ws://127.0.0.1:{port}/ws/lesson?name=Bench&level=A1", max_size=None)
    await past_the_greeting(page)
    return page


async def _students(port: int, count: int, ready: Event, release: Event) -> None:
    lessons = [await _greeted_student(port) for _ in range(count)]
    ready.set()
    await asyncio.to_thread(release.wait)
    for ws in lessons:
        await ws.close()


def _hold_students(port: int, count: int, ready: Event, release: Event) -> None:
    asyncio.run(_students(port, count, ready, release))


class Students:
    """`count` greeted students in a child process, held open until `release()`."""

    def __init__(self, port: int, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._ready, self._release = context.Event(), context.Event()
        self._process = context.Process(target=_hold_students, args=(port, count, self._ready, self._release))

    async def start(self) -> None:
        self._process.start()
        if not await asyncio.to_thread(self._ready.wait, STUDENTS_TIMEOUT_SECONDS):
            self._process.kill()
            raise RuntimeError(f"the students were not all greeted within {STUDENTS_TIMEOUT_SECONDS:g} s")

    async def release(self) -> None:
        self._release.set()
        await asyncio.to_thread(self._process.join, STUDENTS_TIMEOUT_SECONDS)


@dataclass(frozen=True, slots=True)
class Site:
    where: str
    bytes_per_lesson: float
    objects_per_lesson: float


@dataclass(frozen=True, slots=True)
class HeapPerLesson:
    lessons: int
    total_bytes: float
    sites: list[Site]
    objects_by_type: list[tuple[str, float]]


def _line(frame: tracemalloc.Frame) -> str:
    path = Path(frame.filename)
    shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else Path(path.parent.name, path.name)
    return f"{shown}:{frame.lineno}  {linecache.getline(frame.filename, frame.lineno).strip()[:80]}"


def _site(traceback: tracemalloc.Traceback, by: str) -> str:
    if by == "app":
        own = [frame for frame in traceback if f"{REPO_ROOT}/app/" in frame.filename]
        if own:
            return _line(own[-1])
    return _line(traceback[-1])


def _objects_by_type() -> collections.Counter[str]:
    return collections.Counter(type(item).__name__ for item in gc.get_objects())


async def measure(lessons: int, by: str) -> HeapPerLesson:
    upstream = start_echo_upstream()
    with running(upstream), tempfile.TemporaryDirectory() as results:
        settings = Settings.model_validate(
            {name.lower(): value for name, value in relay_environment(upstream.port, Path(results)).items()})
        async with app_served_here(settings) as port:
            warm_up = Students(port, WARM_UP_LESSONS)
            await warm_up.start()
            await warm_up.release()
            await asyncio.sleep(SETTLE_SECONDS)
            gc.collect()
            types_before = _objects_by_type()
            tracemalloc.start(TRACEBACK_DEPTH)
            before = tracemalloc.take_snapshot()
            held = Students(port, lessons)
            await held.start()
            await asyncio.sleep(SETTLE_SECONDS)
            gc.collect()
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            types_after = _objects_by_type()
            await held.release()
    ignored = [tracemalloc.Filter(False, tracemalloc.__file__)]
    growth = after.filter_traces(ignored).compare_to(before.filter_traces(ignored), "traceback")
    size: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for stat in growth:
        where = _site(stat.traceback, by)
        size[where] += stat.size_diff
        count[where] += stat.count_diff
    types_after.subtract(types_before)
    return HeapPerLesson(
        lessons=lessons,
        total_bytes=sum(stat.size_diff for stat in growth) / lessons,
        sites=[Site(where, total / lessons, count[where] / lessons) for where, total in size.most_common()],
        objects_by_type=[(name, grown / lessons) for name, grown in types_after.most_common() if grown > 0],
    )


def report(heap: HeapPerLesson, top: int) -> str:
    lines = [f"Python heap per idle lesson: {heap.total_bytes / 1024:.1f} KiB ({heap.lessons} lessons)", "",
             f"{'bytes':>7}  {'objects':>7}  allocated at"]
    lines += [f"{site.bytes_per_lesson:7.0f}  {site.objects_per_lesson:7.1f}  {site.where}"
              for site in heap.sites[:top]]
    lines += ["", "Objects the collector tracks, per lesson: " + ", ".join(
        f"{name} {grown:.1f}" for name, grown in heap.objects_by_type[:top] if grown >= 0.5)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.heap", description=__doc__.splitlines()[0])
    parser.add_argument("--lessons", type=int, default=150, help="idle lessons held while measuring (150)")
    parser.add_argument("--top", type=int, default=30, help="allocation sites shown (30)")
    parser.add_argument("--by", choices=("line", "app"), default="line",
                        help="attribute to the allocating line, or to the last line of app/ on its stack")
    arguments = parser.parse_args(argv)
    print(report(asyncio.run(measure(arguments.lessons, arguments.by)), arguments.top))


if __name__ == "__main__":
    main()
