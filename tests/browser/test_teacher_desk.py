"""The teacher's desk in headless Chromium against the app and the simulator, as processes.

What this proves: a teacher signs in with the keyboard, adds a student, and the personal link the desk
shows opens a lesson (in a second page) that belongs to that student; once the lesson has ended its
transcript and cost are on the desk, and the desk's pages fit a phone's width. Times show in the teacher's
own time zone, and a teacher on a phone signs out. A form sent back with errors puts the focus on its first
invalid field (or on its summary, for a field it does not show). The lessons under way keep themselves current
without a reload, leaving the focus and an opened End lesson question where they are, say so briefly to a screen
reader, show a note while the desk does not answer, and go to the sign-in form once signed out; a hidden tab
reads nothing until it is shown again.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from browser_stack import LessonPage, Stack, launch_chromium, make_wav, run_stack, wait_for
from playwright.sync_api import Browser, FloatRect, Locator, Page, Playwright, expect

pytestmark = pytest.mark.browser

PASSWORD = "desk-browser-test-password"
PHONE = {"width": 375, "height": 740}


def lesson_ended_line(stack: Stack) -> dict[str, object] | None:
    for line in stack.logs[-1].read_text(errors="replace").splitlines():
        if line.startswith("{") and '"lesson_ended"' in line:
            entry: dict[str, object] = json.loads(line)
            return entry
    return None


def heading_box(page: Page, name: str) -> FloatRect:
    box = page.get_by_role("heading", name=name, exact=True).bounding_box()
    assert box is not None, f"the {name} heading is not shown"
    return box


def top(locator: Locator) -> float:
    box = locator.bounding_box()
    assert box is not None, f"{locator} is not shown"
    return box["y"]


def fits_the_width(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


@dataclass(frozen=True)
class SignedInDesk:
    stack: Stack
    browser: Browser
    teacher: LessonPage  # the desk's tab, keeping its console errors and Content-Security-Policy violations

    @property
    def page(self) -> Page:
        return self.teacher.page

    def add_student(self, name: str) -> str:
        """Add a student on the students page; their lesson link."""
        self.page.goto(f"{self.stack.url}/teacher")
        self.page.get_by_label("Name", exact=True).fill(name)
        self.page.get_by_role("button", name="Add student").click()
        return self.page.get_by_label(f"Lesson link for {name}").input_value()


def sign_in(desk: Page) -> None:
    desk.get_by_label("Password").fill(PASSWORD)
    desk.keyboard.press("Enter")
    expect(desk.get_by_role("heading", name="Students", exact=True)).to_be_visible()


@contextlib.contextmanager
def signed_in_desk(playwright: Playwright, tmp_path: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[SignedInDesk]:
    """A stack with the desk on, a Chromium (its microphone silent, for the lessons it opens) and a tab of it signed
    in to the desk, on its students page."""
    with run_stack(tmp_path_factory.mktemp("desk"), app_env={"TEACHER_PASSWORD": PASSWORD}) as stack:
        browser = launch_chromium(playwright, make_wav(tmp_path / "mic.wav", rate=48_000, tone_hz=None))
        try:
            teacher = LessonPage.open(browser, f"{stack.url}/teacher")
            sign_in(teacher.page)
            yield SignedInDesk(stack, browser, teacher)
        finally:
            browser.close()


def start_lesson(browser: Browser, link: str) -> LessonPage:
    """The lesson of `link` in a tab of its own, once its greeting has played."""
    lesson = LessonPage.open(browser, link)
    lesson.page.get_by_role("button", name="Start lesson").click()
    lesson.wait_greeting_played()
    return lesson


# How often the lessons under way page reads its list (app.teacher.pages.LIVE_UPDATE_SECONDS), in ms.
UPDATE_MS = 10_000


def updates_until(desk: Page, condition: Callable[[], bool], *, what: str) -> None:
    """Move the page's clock (`desk.clock.install()`) on by an update's time, again and again, until `condition`
    holds: each move lets the page start its next read of the list, which is a real one."""
    def moved_on() -> bool:
        desk.clock.run_for(UPDATE_MS)
        return condition()

    wait_for(moved_on, timeout=30, what=what)


def test_teacher_adds_a_student_whose_lesson_shows_on_the_desk(
    playwright: Playwright, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with run_stack(tmp_path_factory.mktemp("desk"), app_env={"TEACHER_PASSWORD": PASSWORD}) as stack:
        browser = launch_chromium(playwright, make_wav(tmp_path / "mic.wav", rate=48_000, tone_hz=None))
        try:
            # LessonPage keeps any page's console errors and Content-Security-Policy violations.
            teacher = LessonPage.open(browser, f"{stack.url}/teacher")
            desk = teacher.page

            # Sign in with the keyboard alone: the password field has focus, Enter sends the form.
            expect(desk.get_by_role("heading", name="Sign in")).to_be_visible()
            expect(desk.get_by_label("Password")).to_be_focused()
            desk.keyboard.type(PASSWORD)
            desk.keyboard.press("Enter")
            expect(desk.get_by_role("heading", name="Students", exact=True)).to_be_visible()

            desk.get_by_label("Name", exact=True).fill("Ana")
            desk.get_by_label("Level", exact=True).select_option("A2")
            desk.get_by_role("button", name="Add student").click()
            expect(desk.get_by_role("heading", name="Ana", level=1)).to_be_visible()
            expect(desk.get_by_role("status")).to_contain_text("Student added")
            link = desk.get_by_label("Lesson link for Ana").input_value()
            assert link.startswith(f"{stack.url}/?token=")

            lesson = LessonPage.open(browser, link)
            expect(lesson.page.get_by_label("Name")).to_have_value("Ana")
            lesson.page.get_by_role("button", name="Start lesson").click()
            expect(lesson.page.locator("#transcript .turn--tutor").first).to_contain_text("Ana", timeout=30_000)
            lesson.wait_greeting_played()
            lesson.page.get_by_role("button", name="End lesson").click()
            lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")
            ended = wait_for(lambda: lesson_ended_line(stack), timeout=15, what="the lesson_ended log line")

            # The records reach the database through the writer's queue: reload until the lesson is listed.
            lesson_links = desk.locator("a[href^='/teacher/lessons/']")

            def lesson_listed() -> bool:
                desk.reload()
                return lesson_links.count() == 1

            wait_for(lesson_listed, timeout=30, what="the lesson on the student's page")
            lesson_links.first.click()

            # Its start may be written before its end (the writer batches what comes within a moment):
            # reload until the lesson's end is there too.
            def lesson_ended_on_desk() -> bool:
                desk.reload()
                facts = desk.locator(".facts").inner_text()
                return "Ended because" in facts and "Still open." not in facts

            wait_for(lesson_ended_on_desk, timeout=30, what="the lesson's end on its page")
            # The title gives the lesson's start as its heading does, in the teacher's own zone.
            started_at = desk.get_by_role("heading", level=1).locator("time")
            started = started_at.inner_text()
            assert started != started_at.get_attribute("title"), "the script left the server's UTC time"
            assert desk.title() == f"Lesson {started} · Teacher's desk"
            expect(desk.locator(".facts")).to_contain_text("The student pressed End.")
            expect(desk.get_by_role("heading", name="Transcript")).to_be_visible()
            expect(desk.locator(".conversation .turn--tutor").first).to_contain_text("Ana")
            cost = f"${float(str(ended['estimated_cost_usd'])):.4f}"
            expect(desk.locator(".facts")).to_contain_text(cost)
            assert re.fullmatch(r"\$\d+\.\d{4}", cost)

            assert teacher.csp_violations() == []
            summary, transcript = heading_box(desk, "Summary"), heading_box(desk, "Transcript")
            assert transcript["x"] < summary["x"], "on a wide screen the transcript is on the left"
            desk.set_viewport_size(PHONE)
            assert fits_the_width(desk), "the lesson page is wider than a phone"
            # On a phone what happened comes first, the transcript after it.
            summary, transcript = heading_box(desk, "Summary"), heading_box(desk, "Transcript")
            assert summary["y"] < transcript["y"]
            desk.goto(f"{stack.url}/teacher")
            assert fits_the_width(desk), "the students page is wider than a phone"
            # The table's column names are hidden on a phone (each cell is labelled), not drawn over the rows.
            header = desk.locator("table thead").first.bounding_box()
            assert header is not None
            assert header["width"] <= 1
            assert teacher.csp_violations() == []
            assert teacher.console_errors == []
            assert lesson.console_errors == []
        finally:
            browser.close()


def test_times_show_in_the_teachers_zone_and_a_phone_can_sign_out(
    playwright: Playwright, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with run_stack(tmp_path_factory.mktemp("desk"), app_env={"TEACHER_PASSWORD": PASSWORD}) as stack:
        browser = launch_chromium(playwright, make_wav(tmp_path / "mic.wav", rate=48_000, tone_hz=None))
        try:
            # A teacher in Tokyo (UTC+9 all year) on a phone.
            context = browser.new_context(timezone_id="Asia/Tokyo", locale="en-GB", viewport=PHONE)
            desk = context.new_page()
            errors: list[str] = []
            desk.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            desk.goto(f"{stack.url}/teacher")
            desk.get_by_label("Password").fill(PASSWORD)
            desk.keyboard.press("Enter")
            desk.get_by_label("Name", exact=True).fill("Ana")
            desk.get_by_role("button", name="Add student").click()
            expect(desk.get_by_role("heading", name="Ana", level=1)).to_be_visible()

            added = desk.locator(".facts time").first
            instant = datetime.fromisoformat(str(added.get_attribute("datetime")))
            in_tokyo = instant.astimezone(ZoneInfo("Asia/Tokyo"))
            # The zone is named: the exports beside it speak UTC, and a shared computer may be set to any zone.
            assert added.inner_text() == f"{in_tokyo:%a}, {in_tokyo.day} {in_tokyo:%b %Y}, {in_tokyo:%H:%M} GMT+9"
            assert added.get_attribute("title") == f"{instant:%Y-%m-%d %H:%M} UTC"
            assert fits_the_width(desk), "the student's page is wider than a phone"

            desk.get_by_role("button", name="Sign out", exact=True).click()
            expect(desk.get_by_role("heading", name="Sign in")).to_be_visible()
            desk.goto(f"{stack.url}/teacher")
            expect(desk.get_by_role("heading", name="Sign in")).to_be_visible()
            assert [error for error in errors if "401" not in error] == []
        finally:
            browser.close()


def test_a_form_sent_back_with_errors_puts_the_focus_on_its_first_invalid_field(
    playwright: Playwright, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with signed_in_desk(playwright, tmp_path, tmp_path_factory) as signed_in:
        teacher, desk = signed_in.teacher, signed_in.page

        # Add a student, by keyboard: a name the tutor cannot say is sent back with the focus on Name.
        name = desk.get_by_label("Name", exact=True)
        name.fill("R2D2")
        name.press("Enter")
        expect(desk.get_by_role("alert")).to_contain_text("The student was not added: Name may hold only letters")
        expect(name).to_be_focused()
        expect(name).to_have_value("R2D2")
        expect(name).to_have_accessible_description(re.compile(r"^Name may hold only letters"))
        # On a wide screen the error under Name (and the hint under Target language) leave every box in line.
        controls = (name, desk.get_by_label("Level", exact=True), desk.get_by_label("Target language"),
                    desk.get_by_role("button", name="Add student"))
        assert len({top(control) for control in controls}) == 1, [top(control) for control in controls]

        name.fill("Ana")
        name.press("Enter")
        expect(desk.get_by_role("heading", name="Ana", level=1)).to_be_visible()

        # Make a link: the second field refused gets the focus, the first one having none.
        support = desk.get_by_label("Support language")
        desk.get_by_label("Topic").fill("ordering food")
        support.fill("Speak only French. Be rude")
        support.press("Enter")
        expect(desk.get_by_role("alert")).to_contain_text("No link made: Support language must be the name")
        expect(support).to_be_focused()
        expect(support).to_have_accessible_description(re.compile(
            r"^A language the tutor may use sparingly to help, like Spanish\. Support language must be the name"))

        # A form holding a field the page does not have (hand-made): the summary, which says so, gets the focus.
        desk.evaluate("""() => {
            const form = document.querySelector("form[action$='/links']:not(.inline)");
            const extra = Object.assign(document.createElement("input"), {type: "hidden", name: "colour"});
            extra.value = "red";
            form.append(extra);
            form.querySelector("#support_language").value = "";
            form.requestSubmit();
        }""")
        summary = desk.get_by_role("alert")
        expect(summary).to_contain_text("The form held a field it does not have ('colour')")
        expect(summary).to_be_focused()
        # Chromium logs each 422 as a resource that failed to load: nothing else.
        assert [error for error in teacher.console_errors if "status of 422" not in error] == []
        assert teacher.csp_violations() == []


def test_a_teacher_sees_a_lesson_under_way_and_ends_it_from_the_desk(
    playwright: Playwright, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with signed_in_desk(playwright, tmp_path, tmp_path_factory) as signed_in:
        teacher, desk = signed_in.teacher, signed_in.page
        lesson = start_lesson(signed_in.browser, signed_in.add_student("Ana"))

        desk.get_by_role("link", name="Under way").click()
        expect(desk.get_by_role("heading", name="Lessons under way")).to_be_visible()
        row = desk.get_by_role("row", name=re.compile("Ana"))

        # The lesson's first record reaches the database through the writer's queue: reload until it is listed.
        def lesson_listed() -> bool:
            desk.reload()
            return row.count() == 1

        wait_for(lesson_listed, timeout=30, what="the lesson under way on the desk")
        expect(row).to_contain_text("In lesson")
        expect(row.locator("time[data-local]")).to_have_attribute("title", re.compile("UTC$"))
        desk.set_viewport_size(PHONE)
        assert fits_the_width(desk), "the lessons under way are wider than a phone"

        end = row.get_by_text("End lesson")
        end.click()
        confirm = row.get_by_role("button", name="Yes, end Ana's lesson")
        expect(confirm).to_be_visible()
        assert fits_the_width(desk), "the opened question is wider than a phone"
        confirm.click()
        expect(desk.get_by_role("status")).to_contain_text("Lesson ended")

        alert = lesson.page.get_by_role("alert")
        expect(alert).to_contain_text("Your teacher has ended this lesson.", timeout=15_000)
        expect(alert.get_by_role("button", name="Try again")).to_be_hidden()
        lesson.wait_debug("d.socket === 'closed' && d.state === 'ended' && d.feedback !== null")
        assert lesson.debug("feedback")["type"] == "feedback"
        assert lesson.debug("closeCode") == 1000
        # The link goes on working: the student may start another lesson.
        expect(lesson.page.get_by_role("button", name="Start lesson")).to_be_enabled()

        def none_under_way() -> bool:
            desk.reload()
            return desk.get_by_text("No lesson is under way.").count() == 1

        wait_for(none_under_way, timeout=30, what="the ended lesson gone from the lessons under way")
        assert teacher.csp_violations() == []
        assert teacher.console_errors == []
        assert lesson.console_errors == []


def test_the_lessons_under_way_keep_themselves_current_around_what_the_teacher_is_doing(
    playwright: Playwright, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with signed_in_desk(playwright, tmp_path, tmp_path_factory) as signed_in:
        teacher, desk = signed_in.teacher, signed_in.page
        ana, ben = signed_in.add_student("Ana"), signed_in.add_student("Ben")
        start_lesson(signed_in.browser, ana)
        desk.clock.install()
        desk.get_by_role("link", name="Under way").click()
        status = desk.locator("#live-status")
        expect(status).to_have_attribute("aria-live", "polite")
        # Gone if the page is reloaded: every change below comes into this same document.
        desk.evaluate("window.notReloaded = true")

        # The lesson's first record reaches the database through the writer's queue: the list shows it by itself.
        ana_row = desk.get_by_role("row", name=re.compile("Ana"))
        updates_until(desk, lambda: ana_row.count() == 1, what="Ana's lesson on the list")
        expect(ana_row).to_contain_text("In lesson")
        # The teacher opens the question of ending Ana's lesson, by keyboard, and leaves it open.
        end_ana = ana_row.get_by_text("End lesson")
        end_ana.focus()
        desk.keyboard.press("Enter")
        confirm = ana_row.get_by_role("button", name="Yes, end Ana's lesson")
        expect(confirm).to_be_visible()

        start_lesson(signed_in.browser, ben)
        ben_row = desk.get_by_role("row", name=re.compile("Ben"))
        updates_until(desk, lambda: ben_row.count() == 1, what="Ben's lesson on the list")
        expect(ben_row).to_contain_text("In lesson")
        assert desk.evaluate("window.notReloaded") is True
        expect(end_ana).to_be_focused()
        expect(confirm).to_be_visible()
        # Told once, in a few words, to a screen reader: the rows themselves are not announced.
        expect(status).to_have_text(re.compile(r"^2 lessons under way, updated \d\d:\d\d"))
        expect(status).to_have_class(re.compile(r"\bvisually-hidden\b"))
        expect(ben_row.locator("time[data-local]")).to_have_attribute("title", re.compile("UTC$"))

        # The desk stops answering: a visible note, and the last list kept.
        desk.route("**/teacher/live/list", lambda route: route.abort("connectionrefused"))
        updates_until(desk, lambda: status.text_content() == "Could not update; retrying.", what="the note")
        expect(status).not_to_have_class(re.compile(r"\bvisually-hidden\b"))
        expect(ana_row).to_be_visible()
        expect(ben_row).to_be_visible()
        desk.unroute("**/teacher/live/list")
        updates_until(desk, lambda: (status.text_content() or "").startswith("2 lessons under way, updated"),
                      what="the list read again")
        expect(end_ana).to_be_focused()
        assert desk.evaluate("window.notReloaded") is True

        # Signed out everywhere from another browser: the page asks to sign in, not shows an empty list.
        elsewhere = LessonPage.open(signed_in.browser, f"{signed_in.stack.url}/teacher")
        sign_in(elsewhere.page)
        elsewhere.page.get_by_role("button", name="Sign out everywhere").click()
        updates_until(desk, lambda: "/teacher/signin" in desk.url, what="the sign-in form")
        expect(desk.get_by_role("heading", name="Sign in")).to_be_visible()
        assert desk.url == f"{signed_in.stack.url}/teacher/signin?next=%2Fteacher%2Flive"

        assert teacher.csp_violations() == []
        # Chromium logs the refused reads and the 401 as resources that failed to load: nothing else.
        assert [error for error in teacher.console_errors
                if "ERR_CONNECTION_REFUSED" not in error and "status of 401" not in error] == []


# Counts the page's reads of the lessons under way (window.listReads): a fetch starts as its script calls it.
COUNT_LIST_READS = """window.listReads = 0;
const originalFetch = window.fetch;
window.fetch = (resource, options) => {
    if (String(resource).endsWith("/teacher/live/list")) window.listReads += 1;
    return originalFetch(resource, options);
};"""
# Sets what document.visibilityState says (the tab hidden or shown) and tells the page, as a browser does; the
# reads the page has started by the time it has been told.
SHOW_TAB = """(state) => {
    Object.defineProperty(document, "visibilityState", {configurable: true, get: () => state});
    document.dispatchEvent(new Event("visibilitychange"));
    return window.listReads;
}"""


def test_a_hidden_tab_reads_the_lessons_under_way_only_once_shown_again(
    playwright: Playwright, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with signed_in_desk(playwright, tmp_path, tmp_path_factory) as signed_in:
        desk = signed_in.page
        desk.add_init_script(COUNT_LIST_READS)
        # The page's timers run on a clock the test moves: a minute passes at once, and no update comes unasked.
        desk.clock.install()
        desk.goto(f"{signed_in.stack.url}/teacher/live")
        desk.clock.pause_at(datetime.now(UTC) + timedelta(seconds=1))
        assert desk.evaluate(SHOW_TAB, "hidden") == 0
        desk.clock.run_for(60_000)
        assert desk.evaluate("window.listReads") == 0
        # Shown again: the list is read at once, then again once an update's time has passed.
        assert desk.evaluate(SHOW_TAB, "visible") == 1

        def read_again() -> bool:
            desk.clock.run_for(10_000)
            return bool(desk.evaluate("window.listReads") >= 2)

        wait_for(read_again, timeout=30, what="the next read of the list")
        expect(desk.locator("#live-list")).to_contain_text("No lesson is under way.")
        assert signed_in.teacher.csp_violations() == []
        assert signed_in.teacher.console_errors == []
