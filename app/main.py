"""create_app(settings) → the FastAPI application: routes, static files, templates and lifespan.

The lifespan configures logging, opens the lesson records' database (migrating it to the newest schema;
a database out of reach stops the start), starts the embedded Realtime simulator when no API key is set
(the lesson then works offline end to end, over real sockets, through the same code path), checks every
LINK_CHECK_SECONDS for lessons a teacher withdrew (`app.link_check`), and on shutdown drains open lessons:
each is told the server is restarting and closed cleanly.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import structlog
import uvicorn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.addresses import BoundedClientAddress
from app.admission import RESUMES_PER_LESSON_PER_MINUTE, LessonRegistry, LocalPlaces, Places, StartRateLimiter
from app.budget import DailyBudget
from app.link_check import check_withdrawn_links
from app.live_lessons import LiveLessons
from app.logging import configure_logging
from app.loop_lag import LoopLagProbe
from app.metrics import LessonMetrics, metrics_router
from app.pacing import LogThrottles
from app.records import RecordSink
from app.resume import RefusedResumes, ResumeLookups
from app.routes import Upstream, router
from app.security_headers import SecurityHeaders, server_error
from app.settings import Settings, load_settings
from app.simulator import RealtimeSimulator
from app.startup_warnings import log_settings_at_start
from app.store.runtime import open_store
from app.teacher import install as install_teacher_desk
from app.transport import TransportLimits, protocol_options

HERE = Path(__file__).parent
# The simulator checks that a key is sent, like OpenAI does; this one never leaves the machine.
SIMULATOR_KEY = "simulator-local-key"
# The shutdown after SIGTERM, bounded so that it ends before the platform's kill (Railway's drainingSeconds):
# lessons get SHUTDOWN_GRACE_SECONDS to close, then uvicorn gives the connections still open (a page that
# never answers the close handshake) CONNECTIONS_CLOSE_SECONDS before cancelling them, and whatever still
# runs EXIT_AFTER_GRACE_SECONDS after the grace (a hung close, the simulator's stop) ends with the process.
CONNECTIONS_CLOSE_SECONDS = 2
EXIT_AFTER_GRACE_SECONDS = 5

log = structlog.get_logger("lesson_relay")


def create_app(
    settings: Settings | None = None, *, log_stream: TextIO | None = None, places: Places | None = None,
    record_sink: RecordSink | None = None, metrics_dir: str | None = None, logs_settings_at_start: bool = True,
    served_by_uvicorn_cli: bool = False,
) -> FastAPI:
    """The application for `settings` (read from the environment when omitted), logging to `log_stream`.

    `places` counts the replica's lesson places, and `metrics_dir` holds its metrics; by default this
    process is the whole replica. Lessons hand their records to `record_sink`, by default the store's
    writer (the bench's baseline passes one that discards). The upstream and the settings' start warnings
    are logged once per replica: by this app unless `logs_settings_at_start` is False (a worker: its
    supervisor logs them). `served_by_uvicorn_cli`: started as `uvicorn app.main:app`, which an operator is
    warned of once.
    """
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings, log_stream)
        store = await open_store(settings, on_records_dropped=app.state.metrics.records_lost,
                                 on_records_retried=app.state.metrics.records_write_retries.inc,
                                 on_lessons_lost=app.state.metrics.lessons_lost)
        app.state.db = store.sessions
        app.state.records = store.records if record_sink is None else record_sink
        app.state.link_secret = store.link_secret
        app.state.instance_id, app.state.instance_timing = store.instance_id, store.instance_timing
        simulator: RealtimeSimulator | None = None
        if settings.simulated:
            simulator = RealtimeSimulator(keep_history=False, quiet=True)
            await simulator.start("127.0.0.1", 0)
            app.state.upstream = Upstream(url=simulator.url, api_key=SIMULATOR_KEY)
        else:
            assert settings.openai_api_key is not None
            app.state.upstream = Upstream(url=str(settings.openai_realtime_url),
                                          api_key=settings.openai_api_key.get_secret_value())
        if logs_settings_at_start:
            log_settings_at_start(settings,
                                  shutdown_worst_case_s=shutdown_worst_case_seconds(settings.shutdown_grace_seconds))
        if served_by_uvicorn_cli:
            log.warning("served_without_drain_or_guards", message="served by `uvicorn app.main:app`: SIGTERM "
                        "cuts open lessons instead of draining them, and the page's sockets go without the "
                        "connection guards; deploy with `python -m app`")
        loop_lag = LoopLagProbe(app.state.metrics.loop_lag_seconds.observe)
        loop_lag.start()
        link_check = asyncio.create_task(
            check_withdrawn_links(store.sessions, app.state.live_lessons, app.state.refused_resumes,
                                  every_s=settings.link_check_seconds),
            name="link-check")
        try:
            yield
        finally:
            link_check.cancel()
            await drain_lessons(app, settings.shutdown_grace_seconds)
            loop_lag.stop()
            if simulator is not None:
                await simulator.stop()
            await store.close()

    app = FastAPI(title="lesson relay", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.lessons = LessonRegistry(
        places or LocalPlaces(settings.max_sessions, settings.lesson_starts_per_minute,
                              settings.link_starts_per_minute))
    app.state.metrics = LessonMetrics(shared_dir=metrics_dir)
    app.state.live_lessons = LiveLessons(app.state.metrics.lessons_open)
    # One refused start of a student per cause and minute is kept on the desk: a script retrying a refused link
    # must not write a lesson row per attempt.
    app.state.refusals_recorded = StartRateLimiter(per_minute=1)
    app.state.daily_budget = DailyBudget(settings.max_student_cost_usd_per_day)
    app.state.refused_resumes = RefusedResumes()
    app.state.resume_lookups = ResumeLookups()
    app.state.refusal_log = LogThrottles()
    app.state.page_resumes = StartRateLimiter(per_minute=RESUMES_PER_LESSON_PER_MINUTE)
    app.state.templates = Jinja2Templates(directory=HERE / "templates")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(router)
    app.include_router(metrics_router)
    install_teacher_desk(app, settings)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(BoundedClientAddress)
    app.add_exception_handler(Exception, server_error)
    return app


async def drain_lessons(app: FastAPI, grace_s: float) -> None:
    """Stop admitting lessons, tell the open ones, and wait up to `grace_s` for them to close."""
    registry: LessonRegistry = app.state.lessons
    if registry.draining.is_set():
        return
    open_before = registry.open_lessons
    log.info("draining", open_lessons=open_before, grace_s=grace_s)
    all_closed = await registry.drain(grace_s)
    log.info("drained", open_lessons_before=open_before, all_closed=all_closed,
             still_open=registry.open_lessons)


def server_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for serving `app`: WebSocket limits, keepalive, proxy headers, shutdown."""
    options: dict[str, Any] = {
        "log_config": None,  # app.logging owns the format
        # Frames a little over MAX_FRAME_BYTES get an error frame; far over it, close 1009.
        "ws_max_size": max(65_536, 4 * settings.max_frame_bytes),
        # PCM speech compresses poorly (to ~0.8), and a compressed connection costs ~50 KiB of zlib windows and
        # 9-18 µs of CPU per relayed frame (docs/performance.md, "permessage-deflate").
        "ws_per_message_deflate": False,
        # Keepalive on the page's leg: idle proxies must not cut a lesson during a long pause.
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
        # Railway (and most hosts) put a proxy in front: the client address is in X-Forwarded-For, believed
        # only from FORWARDED_ALLOW_IPS (uvicorn then takes the rightmost address that is not a trusted proxy).
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        # Lessons are drained before this starts (DrainingServer): only stragglers are left.
        "timeout_graceful_shutdown": CONNECTIONS_CLOSE_SECONDS,
        **protocol_options(TransportLimits(request_timeout_s=settings.request_timeout_seconds,
                                           max_connections=settings.max_connections)),
    }
    return uvicorn.Config(app, **(options | overrides))


def shutdown_worst_case_seconds(grace_s: float) -> float:
    """The longest `python -m app` can take to exit after SIGTERM with SHUTDOWN_GRACE_SECONDS = `grace_s`."""
    return grace_s + EXIT_AFTER_GRACE_SECONDS


class ExitDeadline:
    """Ends the process `seconds` after `arm()` if it is still running then (a thread: a stuck loop cannot stop it)."""

    def __init__(self, seconds: float, *, exit_process: Callable[[int], object] = os._exit) -> None:
        self.seconds = seconds
        self._exit_process = exit_process
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        """Start counting (once: a second signal does not move the deadline)."""
        if self._timer is None:
            self._timer = threading.Timer(self.seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        log.error("shutdown_deadline_exceeded", after_s=self.seconds,
                  message="the shutdown outlasted its deadline: exiting with whatever is still open")
        self._exit_process(1)


class DrainingServer(uvicorn.Server):
    """uvicorn, but SIGTERM first drains the lessons (uvicorn alone would cut them with close 1012), and the
    process is gone `shutdown_worst_case_seconds(grace_s)` after the signal at the latest."""

    def __init__(self, config: uvicorn.Config, *, grace_s: float) -> None:
        super().__init__(config)
        self.grace_s = grace_s
        self.exit_deadline = ExitDeadline(shutdown_worst_case_seconds(grace_s))

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.exit_deadline.arm()
        super().handle_exit(sig, frame)

    def run(self, sockets: Any = None) -> None:
        try:
            super().run(sockets=sockets)
        finally:
            self.exit_deadline.disarm()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        # What the process holds once started (modules, the app, the store's and pydantic's machinery, some
        # 130 000 objects) lives as long as it does: frozen, a full collection scans only the lessons' objects.
        # Unfrozen, one at 150 lessons stalled every lesson's audio for 85-110 ms (docs/performance.md).
        gc.collect()
        gc.freeze()
        log.info("startup_heap_frozen", objects=gc.get_freeze_count())

    async def shutdown(self, sockets: Any = None) -> None:
        app = self.config.app
        if isinstance(app, FastAPI):
            await drain_lessons(app, self.grace_s)
        await super().shutdown(sockets=sockets)


def exit_cleanly(signum: int, frame: FrameType | None) -> None:
    """A signal handler: the process exits with status 0 (uvicorn re-raises the signal once it has shut down)."""
    raise SystemExit(0)


def __getattr__(name: str) -> Any:
    # `uvicorn app.main:app` reads the environment only when the attribute is asked for.
    if name == "app":
        application = create_app(served_by_uvicorn_cli=True)
        globals()["app"] = application
        return application
    raise AttributeError(name)

