"""HTTP and WebSocket routes: the page, the health check, and the lesson socket.

The lesson route admits or refuses a lesson (origin, parameters, lesson link checked against the
store, the student's daily budget, capacity, start rate), then starts its `Relay` in its own task, which
outlives the socket. A socket with `resume=<token>` is attached to its running lesson, or takes over a
lesson another instance handed over. A refusal always reaches the page as an `error` frame followed by
the close code of the cause, and no upstream session is opened for it.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import structlog
from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates

from app import messages
from app.addresses import limit_key
from app.admission import AdmittedLesson, LessonRegistry, Start, StartRateLimiter, origin_allowed
from app.budget import DailyBudget
from app.continuity import CarriedOver, TranscriptLine
from app.errors import (
    DailyBudgetReached,
    InvalidRequest,
    LessonError,
    OverCapacity,
    ResumeElsewhere,
    ResumeNotYet,
    ResumeRefused,
    StoreUnavailable,
)
from app.lesson_config import LessonConfig
from app.live_lessons import LiveLessons
from app.logging import quoted
from app.memory import RememberedLesson, StudentHistory, load_memory, student_history
from app.metrics import LessonMetrics, bearer_allowed
from app.pacing import LogThrottles
from app.prompts import feedback_instructions, tutor_instructions
from app.records import LessonEnded, LessonEventHappened, LessonStarted, RecordSink
from app.relay import PageSocket, Relay
from app.resume import (
    RefusedResumes,
    ResumeClaim,
    ResumeLookups,
    ended_refusal,
    make_resume_token,
    resume_expiry,
    verify_resume_token,
)
from app.session import LessonSession
from app.settings import Settings
from app.store.database import STORE_ERRORS, error_reason
from app.store.handover import HANDED_OFF, TakenOverLesson, give_back_lesson, take_over_lesson
from app.store.queries import LOOKUP_TIMEOUT_S
from app.students import LessonStudent, linked_student, student_for_request
from app.transport import current_page_connection
from app.upstream import RealtimeClient, realtime_url

router = APIRouter()
log = structlog.get_logger("lesson_relay")

RefusalLevel = Literal["warning", "info"]


@dataclass
class Upstream:
    """Where lessons connect: OpenAI (or a compatible server), or the embedded simulator."""

    url: str
    api_key: str


def _state(request: Request | WebSocket) -> Any:
    return request.app.state


@router.get("/", response_class=HTMLResponse)
async def lesson_page(request: Request, token: str = "") -> HTMLResponse:
    settings: Settings = _state(request).settings
    templates: Jinja2Templates = _state(request).templates
    name, level, locked = "", "A1", False
    target_language = settings.target_language
    history: StudentHistory | None = None
    if token or settings.lesson_secret is not None:
        try:
            if not token:
                raise InvalidRequest("no lesson link token", student_message="This lesson needs a link from "
                                                                             "your teacher.")
            student = await linked_student(token, link_secret=_state(request).link_secret,
                                           sessions=_state(request).db)
        except (InvalidRequest, StoreUnavailable) as exc:
            return templates.TemplateResponse(request, "link_required.html", {"problem": exc.student_message},
                                              status_code=503 if isinstance(exc, StoreUnavailable) else 403)
        name, level, locked = student.name, student.level, True
        target_language = student.target_language or settings.target_language
        history = await student_history(_state(request).db, student.student_id)
    page = templates.TemplateResponse(request, "lesson.html", {
        "simulated": settings.simulated,
        "transcript_language_code": language_code_of(target_language, settings),
        "levels": messages.LEVELS,
        "level": level,
        "name": name,
        "token": token,
        "locked": locked,
        "target_language": target_language,
        "max_frame_bytes": settings.max_frame_bytes,
        "history": history,
    })
    if locked:
        # A personal page holds the student's name and their last lessons' feedback: never kept by a shared
        # computer's cache or a school's proxy (the desk's pages are not either).
        page.headers["Cache-Control"] = "no-store"
    return page


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    """Ready or draining, for anyone; how many lessons the server (all its workers) has open and whether it is
    simulated, only for the holder of METRICS_TOKEN."""
    state = _state(request)
    registry: LessonRegistry = state.lessons
    draining = registry.draining.is_set()
    body: dict[str, Any] = {"status": "draining" if draining else "ok"}
    if state.settings.metrics_token is not None and bearer_allowed(request, state.settings):
        metrics: LessonMetrics = state.metrics
        body |= {"open_lessons": metrics.open_lessons(), "simulated": state.settings.simulated}
    return JSONResponse(body, status_code=503 if draining else 200)


async def lesson_socket(websocket: WebSocket) -> None:
    state = _state(websocket)
    settings: Settings = state.settings
    lesson_id = uuid.uuid4().hex[:12]
    client = websocket.client.host if websocket.client else "unknown"
    lesson_log = log.bind(lesson_id=lesson_id, client=client)
    metrics: LessonMetrics = state.metrics

    origin = websocket.headers.get("origin")
    if origin is not None and not origin_allowed(origin, websocket.headers.get("host"), settings.origin_allowlist):
        # Cross-site WebSocket hijacking: refuse the handshake itself (HTTP 403).
        _log_refusal(websocket, lesson_log, "warning", "lesson_refused", "origin_not_allowed", origin=quoted(origin))
        metrics.refused("origin_not_allowed")
        await websocket.close(code=1008)
        return

    await websocket.accept()
    resume_token = websocket.query_params.get("resume")
    if resume_token is not None:
        await _resume(websocket, resume_token, replay=websocket.query_params.get("replay") == "1", client=client)
        return
    registry: LessonRegistry = state.lessons
    student = LessonStudent()
    try:
        request = _parse(websocket)
        budget: DailyBudget = state.daily_budget
        # A student this worker found at their day's cap is refused before their link's row is read.
        request, student = await student_for_request(
            request, lesson_secret_set=settings.lesson_secret is not None, link_secret=state.link_secret,
            sessions=state.db,
            check_claim=lambda claim: budget.refuse_remembered(claim.student_id, time.monotonic()))
        # Before the lesson takes a place: a refused start must not replace the link's live lesson.
        await budget.check(state.db, student, now=datetime.now(UTC), clock=time.monotonic())
        start = Start(lesson_id=lesson_id, client=limit_key(client), link_id=student.link_id)
        admitted = await registry.admit(start, time.monotonic())
    except (InvalidRequest, OverCapacity, StoreUnavailable, DailyBudgetReached) as exc:
        metrics.refused(exc.code)
        if student.student_id is not None and isinstance(exc, OverCapacity | DailyBudgetReached):
            # A known student turned away for capacity, start rate or their day's budget: their teacher sees it,
            # once a minute for each cause however often it is retried. A start refused from the budget's memory
            # is refused before its student is loaded and is not kept: the start that found the cap was.
            recorded: StartRateLimiter = state.refusals_recorded
            cause, now = f"{student.student_id}:{exc.code}", time.monotonic()
            if recorded.allows(cause, now):
                recorded.record(cause, now)
                _record_refusal(state.records, lesson_id, request, settings, student, exc)
        await _refuse(websocket, exc, lesson_log, settings.browser_send_timeout_seconds)
        return
    try:
        # What the tutor remembers is read before the lesson is built; without it the lesson goes on.
        memory = await load_memory(state.db, student, lesson_log=lesson_log)
        if memory:
            lesson_log.info("student_remembered", lessons=len(memory))
        started_at = datetime.now(UTC)
        claim = ResumeClaim(lesson_id=lesson_id, name=request.name, level=request.level, support=request.support,
                            topic=request.topic, expires_at=resume_expiry(started_at, settings),
                            link_id=student.link_id)
        config = _lesson_config(lesson_id, request, settings, student, memory, started_at=started_at,
                                resume_token=make_resume_token(state.link_secret, claim))
    except BaseException:
        admitted.release()
        raise
    await _run_lesson(websocket, config, lesson_log, admitted)


# A plain Starlette route: the socket lives as long as its lesson, and FastAPI's per-request dependency
# machinery (three exit stacks, the solved dependencies) would be held for all of it.
router.add_websocket_route("/ws/lesson", lesson_socket)


async def _run_lesson(websocket: WebSocket, config: LessonConfig, lesson_log: structlog.typing.FilteringBoundLogger,
                      admitted: AdmittedLesson, *, replay: bool = False) -> None:
    """Start the lesson in its own task with this socket as its page (the task releases its place when the
    lesson ends); return once the lesson is done with this socket."""
    state = _state(websocket)
    settings: Settings = state.settings
    metrics: LessonMetrics = state.metrics
    upstream: Upstream = state.upstream
    url = realtime_url(upstream.url, settings.openai_realtime_model)

    async def connect_upstream() -> RealtimeClient:
        return await RealtimeClient.connect(
            url=url, api_key=upstream.api_key, auth_scheme=settings.openai_auth_header,
            open_timeout_s=settings.upstream_timeout_seconds,
        )

    relay = Relay(LessonSession(config), connect_upstream=connect_upstream, log=lesson_log, records=state.records,
                  metrics=metrics, send_timeout_s=settings.browser_send_timeout_seconds,
                  on_over=functools.partial(_remember_end, state.refused_resumes, settings))
    page = PageSocket(websocket, current_page_connection())
    live: LiveLessons = state.live_lessons
    live.start(relay, page, admitted, replay=replay)
    await page.done


def _remember_end(refused: RefusedResumes, settings: Settings, session: LessonSession) -> None:
    """A lesson that ended here: its resumes are refused from then on as the records will refuse them (with its
    feedback if it ended with it), not only once its end is written there; until then the records still show it
    open on this instance. One handed off goes on elsewhere: its resumes take it over from the records."""
    config = session.config
    if session.ended_reason is None or session.ended_reason == HANDED_OFF:
        return
    refusal = ended_refusal(config.lesson_id, session.ended_reason, session.ended_with)
    refused.remember(config.lesson_id, refusal, link=None if config.link_id is None else (
        config.link_id, resume_expiry(config.started_at, settings)))


async def _resume(websocket: WebSocket, token: str, *, replay: bool, client: str) -> None:
    """Attach this socket to its lesson: running here, or handed over by an instance that restarted."""
    state = _state(websocket)
    settings: Settings = state.settings
    registry: LessonRegistry = state.lessons
    metrics: LessonMetrics = state.metrics
    resume_log = log.bind(client=client)
    try:
        if registry.draining.is_set():
            raise ResumeNotYet("this instance is draining",
                               student_message="The lesson server is restarting. Reconnecting…")
        claim = verify_resume_token(token, state.link_secret, now=time.time())
        resume_log = resume_log.bind(lesson_id=claim.lesson_id)
        relay = state.live_lessons.get(claim.lesson_id)
        if relay is not None:
            _count_resume(state.page_resumes, claim.lesson_id)
            page = PageSocket(websocket, current_page_connection())
            relay.attach(page, replay=replay)
            await page.done
            return
        # A lesson refused for good stays so: its token, repeated, is refused without a write to the store.
        refused: RefusedResumes = state.refused_resumes
        refused.refuse_remembered(claim.lesson_id)
        # A take-over spends no start of the client or the link (a class gets its lessons back after a redeploy):
        # it is bounded as a resume is.
        _count_resume(state.page_resumes, claim.lesson_id)
        # Resumes of it at the same moment (a burst of sockets with its token) share one look-up in the store, held
        # until the lesson taken over runs here: those that waited then find it running at their next attempt.
        lookups: ResumeLookups = state.resume_lookups
        try:
            config, admitted = await lookups.look_up(
                claim.lesson_id, lambda: _take_over_here(state, claim, token, client=client, resume_log=resume_log))
        except ResumeRefused as exc:
            refused.remember(claim.lesson_id, exc,
                             link=None if claim.link_id is None else (claim.link_id, claim.expires_at))
            raise
    except (ResumeRefused, ResumeNotYet, OverCapacity, StoreUnavailable) as exc:
        if isinstance(exc, ResumeElsewhere):
            # Another worker of this replica runs it: it hands the lesson over for the page's next attempt.
            await registry.request_handover(claim.lesson_id)
        metrics.refused(exc.code)
        await _refuse_resume(websocket, exc, resume_log, settings.browser_send_timeout_seconds)
        return
    # No wait from here until the lesson runs (LiveLessons.start): a resume of it finds it there, not in the store.
    await _run_lesson(websocket, config, resume_log, admitted, replay=replay)


def _count_resume(resumes: StartRateLimiter, lesson_id: str) -> None:
    """Count a resume of `lesson_id`, or raise `ResumeNotYet` past RESUMES_PER_LESSON_PER_MINUTE. Each resume is a
    page away and back in the lesson's records and log, a take-over also a new upstream session: a script repeating
    its token is held to what a page on a failing network does, and tries again as that page would."""
    if not resumes.allows(lesson_id, time.monotonic()):
        raise ResumeNotYet(f"lesson {lesson_id!r} was resumed {resumes.per_minute} times in a minute",
                           student_message="Reconnecting to your lesson…")
    resumes.record(lesson_id, time.monotonic())


async def _take_over_here(state: Any, claim: ResumeClaim, token: str, *, client: str,
                          resume_log: structlog.typing.FilteringBoundLogger) -> tuple[LessonConfig, AdmittedLesson]:
    """Take the lesson over from the store and give it a place here: its config and place, or why not."""
    settings: Settings = state.settings
    registry: LessonRegistry = state.lessons
    taken = await _take_over(state, claim)
    student = LessonStudent(student_id=taken.student_id, link_id=taken.link_id, target_language=taken.target_language)
    try:
        admitted = await registry.admit(Start(lesson_id=claim.lesson_id, client=limit_key(client),
                                              link_id=taken.link_id, taken_over=True), time.monotonic())
    except (OverCapacity, ResumeNotYet):
        await _give_back(state, claim.lesson_id, resume_log)
        raise
    try:
        memory = await load_memory(state.db, student, lesson_log=resume_log)
        request = messages.LessonRequest(name=claim.name, level=taken.level, support=claim.support,
                                         topic=claim.topic)
        # The greeting was heard if a tutor turn was heard whole: a greeting the hand-over cut is given again.
        greeted = any(turn.role == "tutor" and not turn.cut for turn in taken.turns)
        config = _lesson_config(
            claim.lesson_id, request, settings, student, memory, started_at=taken.started_at, resume_token=token,
            carried=CarriedOver(
                elapsed_s=(datetime.now(UTC) - taken.started_at).total_seconds(),
                turns=[TranscriptLine(turn.seq, turn.role, f"turn-{turn.seq}", turn.text, cut=turn.cut)
                       for turn in taken.turns],
                tokens=taken.tokens, greeted=greeted,
                from_lost_instance=taken.from_lost_instance),
        )
    except BaseException:
        admitted.release()
        # Claimed here but never run: kept claimed, every resume would be refused until this instance is gone.
        await _give_back(state, claim.lesson_id, resume_log)
        raise
    return config, admitted


async def _take_over(state: Any, claim: ResumeClaim) -> TakenOverLesson:
    lesson_id = claim.lesson_id
    try:
        async with asyncio.timeout(LOOKUP_TIMEOUT_S):
            return await take_over_lesson(state.db, lesson_id, instance_id=state.instance_id,
                                          timing=state.instance_timing, now=datetime.now(UTC), link_id=claim.link_id)
    except STORE_ERRORS as exc:
        raise StoreUnavailable(f"lesson {lesson_id!r} not taken over: the store did not answer "
                               f"({type(exc).__name__}: {str(exc)[:200]})",
                               student_message="Your lesson cannot be reached just now. Reconnecting…") from exc


async def _give_back(state: Any, lesson_id: str, resume_log: structlog.typing.FilteringBoundLogger) -> None:
    """Hand a lesson taken over here, but refused a place or not built, back to the store for the page's next
    attempt."""
    try:
        async with asyncio.timeout(LOOKUP_TIMEOUT_S):
            await give_back_lesson(state.db, lesson_id, instance_id=state.instance_id, now=datetime.now(UTC))
    except STORE_ERRORS as exc:
        # Then it stays claimed by this instance: it ends as instance_lost once this instance is gone.
        resume_log.warning("lesson_not_given_back", error=error_reason(exc))


def _parse(websocket: WebSocket) -> messages.LessonRequest:
    """The validated lesson request, or `InvalidRequest` naming the bad parameter."""
    try:
        return messages.parse_lesson_request(dict(websocket.query_params))
    except messages.InvalidLessonRequest as exc:
        # What a student typed as their name stays out of the log, even refused: the detail names the parameter.
        detail = "name: not accepted as a name" if exc.parameter == "name" else str(exc)
        raise InvalidRequest(detail, student_message=exc.student_message) from exc


def _record_refusal(records: RecordSink, lesson_id: str, request: messages.LessonRequest, settings: Settings,
                    student: LessonStudent, exc: LessonError) -> None:
    """A refused start is kept as a lesson of no length whose end_reason is the refusal's code."""
    now = datetime.now(UTC)
    records.put(LessonStarted(lesson_id=lesson_id, started_at=now, level=request.level,
                              model=settings.openai_realtime_model, simulated=settings.simulated,
                              student_id=student.student_id, link_id=student.link_id, student_name=request.name))
    records.put(LessonEventHappened(lesson_id=lesson_id, at=now, kind="refused",
                                    detail={"code": exc.code, "detail": exc.detail}))
    records.put(LessonEnded(lesson_id=lesson_id, ended_at=now, end_reason=exc.code, duration_s=0.0,
                            audio_input_tokens=0, text_input_tokens=0, cached_tokens=0, cached_audio_tokens=0,
                            cached_text_tokens=0, audio_output_tokens=0, text_output_tokens=0, responses=0,
                            estimated_cost_usd=0.0))


def language_code_of(target_language: str, settings: Settings) -> str | None:
    """The ISO-639-1 code of `target_language`: TARGET_LANGUAGE_CODE for the app's own language; None for another
    one a teacher set for a student, which is kept by its name alone."""
    return settings.target_language_code if target_language.casefold() == settings.target_language.casefold() else None


def _lesson_config(lesson_id: str, request: messages.LessonRequest, settings: Settings, student: LessonStudent,
                   memory: Sequence[RememberedLesson], *, started_at: datetime, resume_token: str,
                   carried: CarriedOver | None = None) -> LessonConfig:
    # A student the teacher set another language for is taught it; the transcription then finds the language
    # itself, since TARGET_LANGUAGE_CODE names the app's.
    target_language = student.target_language or settings.target_language
    language_code = language_code_of(target_language, settings)
    return LessonConfig(
        lesson_id=lesson_id,
        name=request.name,
        level=request.level,
        instructions=functools.partial(
            tutor_instructions, name=request.name, level=request.level, target_language=target_language,
            support_language=request.support, topic=request.topic, memory=memory,
        ),
        simulated=settings.simulated,
        voice=settings.openai_realtime_voice,
        transcription_model=settings.openai_transcription_model,
        language_code=language_code,
        turn_detection=settings.turn_detection,
        vad_eagerness=settings.vad_eagerness,
        max_frame_bytes=settings.max_frame_bytes,
        upstream_timeout_s=settings.upstream_timeout_seconds,
        max_lesson_s=settings.max_lesson_seconds,
        idle_timeout_s=settings.idle_timeout_seconds,
        feedback_instructions=functools.partial(
            feedback_instructions, name=request.name, level=request.level, target_language=target_language,
            support_language=request.support,
        ),
        feedback_timeout_s=settings.feedback_timeout_seconds,
        prices_per_million=settings.price_per_million_tokens,
        max_cost_usd=settings.max_lesson_cost_usd,
        model=settings.openai_realtime_model,
        started_at=started_at,
        student_id=student.student_id,
        link_id=student.link_id,
        browser_key_hash=student.browser_key_hash,
        resume_token=resume_token,
        resume_grace_s=settings.resume_grace_seconds,
        carried=carried,
    )


async def _refuse(websocket: WebSocket, exc: LessonError, lesson_log: structlog.typing.FilteringBoundLogger,
                  send_timeout_s: float) -> None:
    """Tell the page why in plain words, close, and drop the connection at once: a refused lesson waits on
    nothing from its client (not even the answer to the close frame)."""
    _log_refusal(websocket, lesson_log, "warning", "lesson_refused", exc.code, detail=exc.detail)
    frame = messages.error(code=exc.code, message=exc.student_message, fatal=True)
    try:
        async with asyncio.timeout(send_timeout_s):
            await websocket.send_text(orjson.dumps(frame).decode())
            await websocket.send_text(orjson.dumps(messages.status("ended", exc.code)).decode())
            await websocket.close(exc.close_code, exc.code)
    except (TimeoutError, WebSocketDisconnect, RuntimeError, OSError):
        _log_refusal(websocket, lesson_log, "info", "refusal_not_delivered", exc.code)
    page = current_page_connection()
    if page is not None:
        page.close_within(0)


async def _refuse_resume(websocket: WebSocket, exc: LessonError, resume_log: structlog.typing.FilteringBoundLogger,
                         send_timeout_s: float) -> None:
    """A refused resume: for good (1008, `status ended`: the page starts a new lesson; a lesson that ended with its
    feedback sends it and `status ended` with its end reason, 1000), or for now (1013, not fatal: the page tries
    again within its grace)."""
    final = isinstance(exc, ResumeRefused)
    if final:
        _log_refusal(websocket, resume_log, "warning", "resume_refused", exc.code, detail=exc.detail)
    else:
        _log_refusal(websocket, resume_log, "info", "resume_not_yet", exc.code, detail=exc.detail)
    ended_with = exc.ended_with if isinstance(exc, ResumeRefused) else None
    try:
        async with asyncio.timeout(send_timeout_s):
            if ended_with is not None:
                # The lesson ended with its feedback while its page was away: the page gets what a page there got,
                # its teacher's words if its teacher ended it, the feedback and the end.
                reason, feedback = ended_with
                if exc.code == reason:  # withdrawn: its code is the end reason
                    await websocket.send_text(orjson.dumps(messages.error(code=exc.code, message=exc.student_message,
                                                                          fatal=True)).decode())
                await websocket.send_text(orjson.dumps(messages.feedback(feedback)).decode())
                await websocket.send_text(orjson.dumps(messages.status("ended", reason)).decode())
                await websocket.close(1000, reason)
            else:
                await websocket.send_text(orjson.dumps(messages.error(code=exc.code, message=exc.student_message,
                                                                      fatal=final)).decode())
                if final:
                    await websocket.send_text(orjson.dumps(messages.status("ended", exc.code)).decode())
                await websocket.close(exc.close_code if final else 1013, exc.code)
    except (TimeoutError, WebSocketDisconnect, RuntimeError, OSError):
        _log_refusal(websocket, resume_log, "info", "refusal_not_delivered", exc.code)
    page = current_page_connection()
    if page is not None:
        page.close_within(0)


def _log_refusal(websocket: WebSocket, bound_log: structlog.typing.FilteringBoundLogger, level: RefusalLevel,
                 event: str, code: str, **fields: Any) -> None:
    """One line per `event` and `code` every 10 s, with `not_logged_since` (how many were not logged): one script
    retrying a refused start or resume would otherwise fill the log and hide every other line. The first refusal
    held back arms a timer that logs the count when its interval ends, so the last ones of a flood are counted too."""
    throttles: LogThrottles = _state(websocket).refusal_log
    kind = f"{event}:{code}"
    not_logged = throttles.allow(kind, time.monotonic())
    if not_logged is not None:
        getattr(bound_log, level)(event, code=code, **fields, not_logged_since=not_logged)
    elif throttles.held_back(kind) == 1:
        asyncio.get_running_loop().call_later(throttles.interval_s, _log_held_back, throttles, level, event, code)


def _log_held_back(throttles: LogThrottles, level: RefusalLevel, event: str, code: str) -> None:
    """The count of refusals held back in the interval just ended, on a line of its own (of no one client)."""
    not_logged = throttles.allow(f"{event}:{code}", time.monotonic())
    if not_logged:
        getattr(log, level)(event, code=code, not_logged_since=not_logged)
