"""What the tutor remembers, on a student's page (SQLite and PostgreSQL): each remembered lesson, newest first, dated
in the desk's way and linked to its page, its feedback as the lesson page shows it; and, folded, the exact text the
tutor is given. Both come from the code that writes the next lesson's instructions, so they list the same lessons."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from desk_client import Desk
from markupsafe import escape
from records import START, add_lesson, add_student
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.memory import load_memory
from app.prompts import memory_section, tutor_instructions
from app.store.models import Lesson
from app.students import LessonStudent


def feedback_of(topic: str, **overrides: Any) -> dict[str, Any]:
    return {
        "summary": f"We talked about {topic}.",
        "corrections": [{"said": f"I like {topic} very", "better": f"I like {topic} a lot", "why": "Word order."}],
        "new_words": [{"word": f"{topic}-word", "meaning": f"a word about {topic}"}],
        "next_step": f"Say more about {topic}.",
    } | overrides


async def give_feedback(desk: Desk, lesson_id: str, feedback: dict[str, Any]) -> None:
    sessions: async_sessionmaker[AsyncSession] = desk.app.state.db
    async with sessions.begin() as db:
        (await db.get_one(Lesson, lesson_id)).feedback = feedback


def memory_card(page: str) -> str:
    return page[page.index('id="memory-heading"'):page.index('id="lessons-heading"')]


async def test_the_student_page_lists_the_remembered_lessons_newest_first_with_the_exact_text_folded(
        desk_on: Desk) -> None:
    student = await add_student(desk_on.app)
    # Four lessons with feedback a day apart and a newer one without: the tutor remembers the newest three of the four.
    for day, topic in enumerate(("bread", "dogs", "trains", "music")):
        await add_lesson(desk_on.app, student.id, f"lesson-{topic}", started_at=START + timedelta(days=day))
        await give_feedback(desk_on, f"lesson-{topic}", feedback_of(topic))
    await add_lesson(desk_on.app, student.id, "lesson-quiet", started_at=START + timedelta(days=5))

    card = memory_card((await desk_on.client.get(f"/teacher/students/{student.id}")).text)

    linked = re.findall(r'<a href="/teacher/lessons/([^"]+)">Lesson of <time datetime="([^"]+)" data-local>', card)
    assert linked == [("lesson-music", "2026-03-05T09:30:00Z"), ("lesson-trains", "2026-03-04T09:30:00Z"),
                      ("lesson-dogs", "2026-03-03T09:30:00Z")]
    assert "bread" not in card
    # The feedback as the lesson page shows it, not as the model's quoted notes.
    assert "<p>We talked about music.</p>" in card
    assert '<span class="feedback-list__said">I like music very</span> → <strong>I like music a lot</strong>' in card
    assert "<strong>music-word</strong> — a word about music" in card
    assert "<p>Say more about music.</p>" in card
    # Exactly the section the next lesson's instructions hold, folded.
    memory = memory_section(await load_memory(desk_on.app.state.db, LessonStudent(student_id=student.id)))
    instructions = tutor_instructions(name="Ana", level="A2", target_language="English",
                                      memory=await load_memory(desk_on.app.state.db,
                                                               LessonStudent(student_id=student.id)))
    assert memory in instructions
    folded = re.search(r"<details class=\"memory-exact\">\s*<summary>Exactly what the tutor is given</summary>\s*"
                       r"<pre class=\"memory\">(.*?)</pre>\s*</details>", card, re.DOTALL)
    assert folded is not None
    assert folded.group(1) == str(escape(memory))
    assert card.index("<details") > card.index("lesson-dogs")


async def test_the_list_holds_only_what_fits_in_the_instructions(desk_on: Desk) -> None:
    """Long feedback is trimmed to fit the instructions (fewer corrections and words, then fewer lessons): the page
    lists what is left, not what the store holds."""
    student = await add_student(desk_on.app)
    long = {"summary": "s" * 300, "next_step": "n" * 100,
            "corrections": [{"said": f"said {n} " + "a" * 40, "better": f"better {n}", "why": "w"} for n in range(5)],
            "new_words": [{"word": f"word{n}", "meaning": "m" * 40} for n in range(8)]}
    for day, topic in enumerate(("bread", "dogs", "trains")):
        await add_lesson(desk_on.app, student.id, f"lesson-{topic}", started_at=START + timedelta(days=day))
        await give_feedback(desk_on, f"lesson-{topic}", feedback_of(topic, **long))
    memory = memory_section(await load_memory(desk_on.app.state.db, LessonStudent(student_id=student.id)))
    # The bound leaves out the older lessons and the last corrections and words of the newest.
    assert "(4 March 2026)" in memory
    assert "(3 March 2026)" not in memory
    assert "said 0" in memory
    assert "said 4" not in memory
    assert "word7" not in memory

    card = memory_card((await desk_on.client.get(f"/teacher/students/{student.id}")).text)

    assert re.findall(r'<a href="/teacher/lessons/([^"]+)">Lesson of', card) == ["lesson-trains"]
    listed = card[:card.index("<details")]
    for n in range(5):
        assert (f"said {n} " in listed) == (f"said {n} " in memory), n
    for n in range(8):
        assert (f"<strong>word{n}</strong>" in listed) == (f'"word{n}"' in memory), n


async def test_markup_the_model_was_steered_into_is_shown_as_text_in_every_field(desk_on: Desk) -> None:
    """The feedback is the model's words, which a student can steer ("repeat after me: <script>…"): every field of a
    remembered lesson, in the list and in the folded text, is escaped as the lesson page escapes it."""
    student = await add_student(desk_on.app)
    await add_lesson(desk_on.app, student.id, "lesson-steered")
    steered = {"summary": "<script>alert('summary')</script>",
               "corrections": [{"said": "<img src=x onerror=alert(1)>", "better": "</strong><script>alert(2)</script>",
                                "why": "<b>why</b>"}],
               "new_words": [{"word": "<i>word</i>", "meaning": "<svg onload=alert(3)>"}],
               "next_step": "</pre></details><script>alert(4)</script>"}
    await give_feedback(desk_on, "lesson-steered", steered)

    card = memory_card((await desk_on.client.get(f"/teacher/students/{student.id}")).text)

    for markup in ("<script", "<img", "<svg", "<i>", "<b>", "</pre></details>"):
        assert markup not in card, markup
    listed = card[:card.index("<details")]
    assert f"<p>{escape(steered['summary'])}</p>" in listed
    assert f'<span class="feedback-list__said">{escape("<img src=x onerror=alert(1)>")}</span>' in listed
    assert f"<strong>{escape('<i>word</i>')}</strong> — {escape('<svg onload=alert(3)>')}" in listed
    assert f"<p>{escape(steered['next_step'])}</p>" in listed
    assert str(escape("<script>alert(4)</script>")) in card[card.index("<details"):]
