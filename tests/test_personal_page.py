"""A personal link's page shows the student's last feedback cards and their words before the lesson
starts, rendered on the server with every value escaped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from harness import relay_settings, serve_app
from test_links import SECRET, personal_link, started_app

from app.simulator import RealtimeSimulator
from app.store.models import Lesson

HOSTILE = '<img src=x onerror="alert(1)">'


async def add_lesson(state: Any, student_id: str, day: int, feedback: dict[str, Any]) -> None:
    async with state.db.begin() as session:
        session.add(Lesson(id=f"lesson-{day}", student_id=student_id, level="A2",
                           started_at=datetime(2025, 5, day, 9, tzinfo=UTC) + timedelta(minutes=1),
                           model="gpt-realtime-2.1", simulated=True, feedback=feedback))


async def test_the_link_page_shows_the_last_cards_and_words_escaped(simulator: RealtimeSimulator) -> None:
    async with serve_app(relay_settings(simulator.url, lesson_secret=SECRET)) as server:
        state = await started_app(server)
        student_id, _, token = await personal_link(state, name="Ana", level="A2")
        await add_lesson(state, student_id, 5, {
            "summary": "We talked about your school.", "corrections": [],
            "new_words": [{"word": "teacher", "meaning": "a person who teaches"}], "next_step": "Say more."})
        await add_lesson(state, student_id, 12, {
            "summary": f"We talked about your dog Max. {HOSTILE}",
            "corrections": [{"said": f"He have {HOSTILE}", "better": "He has a ball", "why": "has"}],
            "new_words": [{"word": "leash", "meaning": f"a rope {HOSTILE}"}], "next_step": "Practise has."})
        async with httpx.AsyncClient() as http:
            page = await http.get(f"{server.base_url}/", params={"token": token})
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    html = page.text
    assert "Your last lessons" in html
    assert html.index("12 May 2025") < html.index("5 May 2025")
    assert "We talked about your dog Max. &lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html
    assert "<img" not in html
    assert html.index("<strong>leash</strong>") < html.index("<strong>teacher</strong>")
    assert "a rope &lt;img" in html


async def test_a_link_without_lessons_and_the_open_page_show_no_history(simulator: RealtimeSimulator) -> None:
    async with serve_app(relay_settings(simulator.url, lesson_secret=SECRET)) as server:
        state = await started_app(server)
        _, _, token = await personal_link(state, name="Ana", level="A2")
        async with httpx.AsyncClient() as http:
            linked = await http.get(f"{server.base_url}/", params={"token": token})
    async with serve_app(relay_settings(simulator.url)) as server, httpx.AsyncClient() as http:
        await started_app(server)
        open_page = await http.get(f"{server.base_url}/")
    assert linked.status_code == open_page.status_code == 200
    assert "Your last lessons" not in linked.text
    assert "Your last lessons" not in open_page.text
