"""A lesson's turns and events on SQLite and PostgreSQL: its page, exports and API answer hold the newest of each, and
the others are read a page at a time, through the API (`limit`, `offset`, `next_offset`) and on the desk."""

from __future__ import annotations

import json
import re

import pytest
from desk_client import PASSWORD, Desk
from records import add_lesson, add_student

from app.teacher import pages, queries

BEARER = {"Authorization": f"Bearer {PASSWORD}"}
EVENTS = tuple(("upstream_error", {"message": f"failure {number}"}) for number in range(7))
TURNS = tuple(("tutor" if number % 2 == 0 else "student", f"line {number}") for number in range(7))
BAD_PAGES = ({"limit": 0}, {"limit": 501}, {"limit": "all"}, {"offset": -1}, {"offset": 10**30}, {"offset": "x"})
BAD_PAGE_FIELDS = ["limit", "limit", "limit", "offset", "offset", "offset"]


def _numbers(text: str, word: str) -> list[int]:
    """The numbers of the turns ("line N") or events ("failure N") in `text`, each once, in order."""
    return [int(number) for number in dict.fromkeys(re.findall(rf"{word} (\d+)", text))]


async def test_the_api_pages_through_every_event_of_a_lesson_in_order(desk_on: Desk) -> None:
    """The lesson object holds its newest events; the older ones were counted but could not be read."""
    ana = await add_student(desk_on.app)
    await add_lesson(desk_on.app, ana.id, "piled", events=EVENTS)
    path = "/api/lessons/piled/events"

    answers = [(await desk_on.client.get(path, params={"limit": 3, "offset": offset}, headers=BEARER)).json()
               for offset in (0, 3, 6)]
    default = (await desk_on.client.get(path, headers=BEARER)).json()
    past_the_end = (await desk_on.client.get(path, params={"offset": 7}, headers=BEARER)).json()

    assert [[event["detail"]["message"] for event in answer["events"]] for answer in answers] == [
        ["failure 0", "failure 1", "failure 2"], ["failure 3", "failure 4", "failure 5"], ["failure 6"]]
    assert [answer["next_offset"] for answer in answers] == [3, 6, None]
    assert set(answers[0]["events"][0]) == {"kind", "at", "detail"}
    assert answers[0]["events"][0]["at"] == "2026-03-02T09:30:01+00:00"
    assert ([event["detail"]["message"] for event in default["events"]], default["next_offset"]) == (
        [f"failure {number}" for number in range(7)], None)
    assert past_the_end == {"events": [], "next_offset": None}


async def test_the_api_pages_through_every_turn_of_a_lesson_in_order(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app)
    await add_lesson(desk_on.app, ana.id, "long", turns=TURNS, heard_texts={2: "line"})
    path = "/api/lessons/long/turns"

    answers = [(await desk_on.client.get(path, params={"limit": 4, "offset": offset}, headers=BEARER)).json()
               for offset in (0, 4)]

    assert [[turn["seq"] for turn in answer["turns"]] for answer in answers] == [[0, 1, 2, 3], [4, 5, 6]]
    assert [answer["next_offset"] for answer in answers] == [4, None]
    assert answers[0]["turns"][2] == {
        "seq": 2, "role": "tutor", "text": "line 2", "started_at": "2026-03-02T09:30:20+00:00",
        "ended_at": "2026-03-02T09:30:25+00:00", "interrupted": True, "heard_ms": 1200, "heard_text": "line"}


@pytest.mark.parametrize("listed", ["events", "turns"])
async def test_a_bad_page_of_turns_or_events_is_422_naming_the_parameter_and_an_unknown_lesson_404(
        desk_on: Desk, listed: str) -> None:
    ana = await add_student(desk_on.app)
    await add_lesson(desk_on.app, ana.id, "lesson", turns=TURNS, events=EVENTS)

    refused = [await desk_on.client.get(f"/api/lessons/lesson/{listed}", params=params, headers=BEARER)
               for params in BAD_PAGES]
    unknown = await desk_on.client.get(f"/api/lessons/nope/{listed}", headers=BEARER)
    unsigned = await desk_on.client.get(f"/api/lessons/lesson/{listed}")

    assert [(answer.status_code, answer.json()["field"]) for answer in refused] == [
        (422, field) for field in BAD_PAGE_FIELDS]
    assert (unknown.status_code, unknown.json()) == (404, {"error": "no lesson with id 'nope'"})
    assert unsigned.status_code == 401


async def test_a_lesson_shows_and_exports_its_last_turns_and_counts_the_earlier_ones(
        desk_on: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page that keeps speaking makes thousands of turns an hour: the lesson's page, exports and API answer never
    load them all."""
    monkeypatch.setattr(queries, "TURNS_SHOWN", 3)
    ana = await add_student(desk_on.app)
    await add_lesson(desk_on.app, ana.id, "long", turns=TURNS[:5])
    await add_lesson(desk_on.app, ana.id, "short", turns=TURNS[:3])

    page = (await desk_on.client.get("/teacher/lessons/long")).text
    markdown = (await desk_on.client.get("/teacher/lessons/long/export", params={"format": "md"})).text
    exported = json.loads((await desk_on.client.get("/teacher/lessons/long/export?format=json")).text)
    answered = (await desk_on.client.get("/api/lessons/long", headers=BEARER)).json()
    whole = (await desk_on.client.get("/teacher/lessons/short")).text
    whole_answered = (await desk_on.client.get("/api/lessons/short", headers=BEARER)).json()

    note = "The last 3 of its 5 turns are shown; 2 earlier ones are left out."
    assert _numbers(page, "line") == [2, 3, 4]
    assert note in page
    assert 'href="/teacher/lessons/long/transcript?page=1"' in page
    assert note in markdown
    assert _numbers(markdown, "line") == [2, 3, 4]
    for lesson in (exported, answered):
        assert [turn["seq"] for turn in lesson["turns"]] == [2, 3, 4]
        assert lesson["turns_left_out"] == 2
    assert _numbers(whole, "line") == [0, 1, 2]
    assert "left out" not in whole
    assert "/transcript" not in whole
    assert (len(whole_answered["turns"]), whole_answered["turns_left_out"]) == (3, 0)


async def test_the_lesson_page_links_to_the_page_of_its_older_events_and_the_desk_pages_through_them(
        desk_on: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queries, "EVENTS_SHOWN", 2)
    monkeypatch.setattr(pages, "EVENTS_PER_PAGE", 2)
    ana = await add_student(desk_on.app)
    await add_lesson(desk_on.app, ana.id, "piled", events=EVENTS)

    lesson_page = (await desk_on.client.get("/teacher/lessons/piled")).text
    event_pages = [(await desk_on.client.get("/teacher/lessons/piled/events", params={"page": page})).text
                   for page in (1, 2, 3, 4)]
    first = (await desk_on.client.get("/teacher/lessons/piled/events")).text

    # Events 0 to 4 are left out: the page holding the newest of them, 4, is the third.
    assert _numbers(lesson_page, "failure") == [5, 6]
    assert 'href="/teacher/lessons/piled/events?page=3"' in lesson_page
    assert [_numbers(page, "failure") for page in event_pages] == [[0, 1], [2, 3], [4, 5], [6]]
    assert "Page 3 of 4" in event_pages[2]
    assert 'href="/teacher/lessons/piled/events?page=2" rel="prev"' in event_pages[2]
    assert 'href="/teacher/lessons/piled/events?page=4" rel="next"' in event_pages[2]
    assert 'rel="prev"' not in event_pages[0]
    assert 'rel="next"' not in event_pages[3]
    assert first == event_pages[0]


async def test_the_desk_pages_through_a_whole_transcript(desk_on: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "TURNS_PER_PAGE", 3)
    ana = await add_student(desk_on.app)
    await add_lesson(desk_on.app, ana.id, "long", turns=TURNS)

    transcript_pages = [(await desk_on.client.get("/teacher/lessons/long/transcript", params={"page": page})).text
                        for page in (1, 2, 3)]

    assert [_numbers(page, "line") for page in transcript_pages] == [[0, 1, 2], [3, 4, 5], [6]]
    assert "Turns 4\u20136, in order" in transcript_pages[1]
    assert 'href="/teacher/lessons/long/transcript?page=3" rel="next"' in transcript_pages[1]


@pytest.mark.parametrize("listed", ["events", "transcript"])
async def test_a_bad_page_of_a_lessons_events_or_transcript_is_named_and_one_past_the_last_a_404_page(
        desk_on: Desk, listed: str) -> None:
    ana = await add_student(desk_on.app)
    await add_lesson(desk_on.app, ana.id, "lesson", turns=TURNS, events=EVENTS)
    await add_lesson(desk_on.app, ana.id, "empty")
    path = f"/teacher/lessons/lesson/{listed}"

    refused = [await desk_on.client.get(path, params={"page": page}) for page in ("0", "-1", "x")]
    past_the_last = await desk_on.client.get(path, params={"page": 2})
    empty = await desk_on.client.get(f"/teacher/lessons/empty/{listed}")
    unknown = await desk_on.client.get(f"/teacher/lessons/nope/{listed}")

    assert [answer.status_code for answer in refused] == [422, 422, 422]
    assert all("page:" in answer.text for answer in refused)
    assert past_the_last.status_code == 404
    assert "There are 7 " in past_the_last.text
    assert empty.status_code == 200
    assert unknown.status_code == 404
