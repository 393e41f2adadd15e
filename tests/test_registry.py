"""The registry's side of a running lesson: its place, and the signals it is told (drain, replaced, moved)."""

from __future__ import annotations

import asyncio

import pytest

from app.admission import LessonRegistry, LessonSignal, LocalPlaces, Start
from app.errors import OverCapacity


def registry_of(max_lessons: int = 5) -> tuple[LessonRegistry, LocalPlaces]:
    places = LocalPlaces(max_lessons=max_lessons, starts_per_minute=100)
    return LessonRegistry(places), places


async def test_a_signal_that_came_before_the_lesson_listened_is_told_when_it_listens() -> None:
    registry, _ = registry_of()
    admitted = await registry.admit(Start("L1", "10.0.0.1"), now=0.0)
    draining = asyncio.create_task(registry.drain(grace_s=5.0))
    await asyncio.sleep(0)  # the drain tells every admitted lesson, which is not listening yet
    heard: list[LessonSignal] = []
    admitted.listen(heard.append)
    assert heard == [LessonSignal.SHUTDOWN]
    assert not draining.done()
    admitted.release()
    assert await draining is True


async def test_each_signal_reaches_only_its_own_lesson() -> None:
    registry, places = registry_of()
    first = await registry.admit(Start("L1", "10.0.0.1", "link-1"), now=0.0)
    second = await registry.admit(Start("L2", "10.0.0.2"), now=0.0)
    heard: dict[str, list[LessonSignal]] = {"L1": [], "L2": []}
    first.listen(heard["L1"].append)
    second.listen(heard["L2"].append)

    await registry.admit(Start("L3", "10.0.0.1", "link-1"), now=1.0)  # the same link again replaces L1
    places.on_handover("L2")  # a page resumed L2 on another worker
    places.on_handover("unknown")  # a lesson not run here: nobody is told

    assert heard == {"L1": [LessonSignal.REPLACED], "L2": [LessonSignal.MOVED]}


async def test_a_place_is_given_back_once_however_often_it_is_released() -> None:
    registry, places = registry_of(max_lessons=1)
    admitted = await registry.admit(Start("L1", "10.0.0.1"), now=0.0)
    with pytest.raises(OverCapacity, match="MAX_SESSIONS"):
        await registry.admit(Start("L2", "10.0.0.2"), now=0.0)
    admitted.release()
    admitted.release()
    assert (registry.open_lessons, places.taken) == (0, 0)
    await registry.admit(Start("L3", "10.0.0.3"), now=0.0)
    assert (registry.open_lessons, places.taken) == (1, 1)


async def test_a_released_lesson_is_told_nothing_more() -> None:
    registry, _ = registry_of()
    admitted = await registry.admit(Start("L1", "10.0.0.1"), now=0.0)
    heard: list[LessonSignal] = []
    admitted.listen(heard.append)
    admitted.release()
    assert await registry.drain(grace_s=1.0) is True
    assert heard == []


async def test_a_draining_registry_admits_nobody() -> None:
    registry, _ = registry_of()
    assert await registry.drain(grace_s=1.0) is True
    with pytest.raises(OverCapacity, match="draining"):
        await registry.admit(Start("L1", "10.0.0.1"), now=0.0)


async def test_a_lesson_admitted_again_before_its_old_place_is_let_go_keeps_both_apart() -> None:
    registry, places = registry_of()
    old = await registry.admit(Start("L1", "10.0.0.1"), now=0.0)
    new = await registry.admit(Start("L1", "10.0.0.1"), now=1.0)  # taken over here while the old one closes
    heard: list[LessonSignal] = []
    new.listen(heard.append)
    old.release()
    assert (registry.open_lessons, places.taken) == (1, 1)
    places.on_handover("L1")
    assert heard == [LessonSignal.MOVED]
    new.release()
    assert (registry.open_lessons, places.taken) == (0, 0)
