"""Prometheus metrics: what an operator watches without reading logs, served at GET /metrics.

Counting happens where the shells already handle the lesson machine's `Log` actions: `LessonMetrics.observe`
looks the event name up once per logged event (a lesson started, a response done, a greeting retried),
never per audio frame. Each app owns its `CollectorRegistry`, so several apps in one process (the tests)
never share counts. With several workers (`WEB_CONCURRENCY`) the supervisor gives them one directory
for prometheus-client's multiprocess mode, and every worker's /metrics answers for the whole replica.
With `METRICS_TOKEN` set, /metrics (and the details of /healthz) need `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from app.actions import Log
from app.settings import Settings

# Token kinds as the prices name them; `cached` is the part of the input served from the cache.
_INPUT_KINDS = {"text_tokens": "text_input", "audio_tokens": "audio_input", "cached_tokens": "cached"}
_OUTPUT_KINDS = {"text_tokens": "text_output", "audio_tokens": "audio_output"}
# The labels of counters whose values are a closed set, each exported at 0 from the start: a series that appears
# only with its first count is no increase to Prometheus (`increase()` needs two samples), so an alert on the
# first dropped record or failed greeting would never fire.
_CLOSED_LABELS: dict[str, tuple[str, ...]] = {
    "greetings": ("heard", "retried", "failed"),
    "records_dropped": ("queue_full", "database_unavailable", "refused", "shutdown"),
    "resumes": ("page", "taken_over"),
    "upstream_lost": ("upstream_closed", "session_expired", "server_error", "roll_over"),
    "taken_over": ("true", "false"),
}


class LessonMetrics:
    """The relay's metrics in their own registry; `observe` counts the machine's logged events."""

    def __init__(self, shared_dir: str | None = None) -> None:
        """`shared_dir`: the replica's multiprocess directory, when this process is one of several workers
        (prometheus-client then keeps every value there, as PROMETHEUS_MULTIPROC_DIR told it at import)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.shared_dir = shared_dir
        registry = self.registry
        # Raised and lowered by `LiveLessons` around each running lesson; summed over live workers.
        self.lessons_open = Gauge("lesson_relay_lessons_open", "Lessons open now.", multiprocess_mode="livesum",
                                  registry=registry)
        self.lessons_started = Counter("lesson_relay_lessons_started", "Lessons started.", registry=registry)
        self.lessons_ended = Counter("lesson_relay_lessons_ended", "Lessons ended, by reason.", ["reason"],
                                     registry=registry)
        self.greetings = Counter("lesson_relay_greetings", "Greetings: heard, retried or failed.", ["outcome"],
                                 registry=registry)
        self.responses = Counter("lesson_relay_responses", "Upstream responses done, by status.", ["status"],
                                 registry=registry)
        self.feedback = Counter("lesson_relay_feedback", "Lesson feedback at a normal end: given, or why not.",
                                ["outcome"], registry=registry)
        self.refusals = Counter(
            "lesson_relay_refusals",
            "Lessons refused before they started, and resumes refused (for good, or for now: resume_not_yet), "
            "by the code the page got.", ["code"], registry=registry)
        self.upstream_connect_seconds = Histogram(
            "lesson_relay_upstream_connect_seconds", "Time to open the upstream Realtime session.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0), registry=registry)
        self.first_audio_seconds = Histogram(
            "lesson_relay_first_audio_seconds", "From the page's socket opening to the greeting's first audio.",
            buckets=(0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0), registry=registry)
        self.loop_lag_seconds = Histogram(
            "lesson_relay_event_loop_lag_seconds", "How late the event loop ran a timer due every 0.5 s: every "
            "lesson's audio waited as long.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0), registry=registry)
        self.tokens = Counter("lesson_relay_tokens", "Tokens used by upstream responses, by kind.", ["kind"],
                              registry=registry)
        self.records_dropped = Counter("lesson_relay_records_dropped", "Lesson records the writer dropped, by cause.",
                                       ["cause"], registry=registry)
        # Rises with the first batch the database fails to take, minutes before records are dropped.
        self.records_write_retries = Counter(
            "lesson_relay_records_write_retries", "Batches of lesson records the database did not take, tried again.",
            registry=registry)
        self.cost_usd = Counter("lesson_relay_estimated_cost_usd", "Estimated upstream cost in USD.",
                                registry=registry)
        self.resumes = Counter("lesson_relay_resumes", "Sockets that resumed a lesson: here, or taken over from "
                               "an instance that handed it over.", ["kind"], registry=registry)
        self.upstream_lost = Counter("lesson_relay_upstream_lost", "Upstream sessions lost or rolled over and "
                                     "replaced, by why.", ["why"], registry=registry)
        self.handed_off = Counter("lesson_relay_lessons_handed_off", "Lessons handed over on a redeploy.",
                                  registry=registry)
        self.taken_over = Counter("lesson_relay_lessons_taken_over", "Lessons taken over from another instance: "
                                  "handed over, or left by a lost instance.", ["from_lost_instance"], registry=registry)
        self.lessons_lost_with_instance = Counter(
            "lesson_relay_lessons_lost_with_instance", "Lessons ended as instance_lost: their instance was killed "
            "and no page took them over.", registry=registry)
        self._handlers: dict[str, Callable[[Mapping[str, Any]], None]] = {
            "lesson_started": lambda fields: self.lessons_started.inc(),
            "lesson_ended": lambda fields: self.lessons_ended.labels(reason=str(fields.get("reason"))).inc(),
            "microphone_open": lambda fields: self.greetings.labels(outcome="heard").inc(),
            "greeting_retry": lambda fields: self.greetings.labels(outcome="retried").inc(),
            "greeting_failed": lambda fields: self.greetings.labels(outcome="failed").inc(),
            "greeting_audio_started": lambda fields: self.first_audio_seconds.observe(fields["after_s"]),
            "response_done": self._response_done,
            "feedback_given": lambda fields: self.feedback.labels(outcome="given").inc(),
            "feedback_unavailable": lambda fields: self.feedback.labels(outcome=str(fields.get("reason"))).inc(),
            "page_back": lambda fields: self.resumes.labels(kind="page").inc(),
            "lesson_taken_over": self._taken_over,
            "upstream_lost": lambda fields: self.upstream_lost.labels(why=str(fields.get("why"))).inc(),
            "lesson_handed_off": lambda fields: self.handed_off.inc(),
        }
        for attribute, values in _CLOSED_LABELS.items():
            counter: Counter = getattr(self, attribute)
            for value in values:
                counter.labels(value)

    def observe(self, action: Log) -> None:
        """Count one logged event of a lesson, if it is one the metrics follow."""
        handler = self._handlers.get(action.event)
        if handler is not None:
            handler(action.fields)

    def records_lost(self, cause: str, count: int) -> None:
        self.records_dropped.labels(cause=cause).inc(count)

    def refused(self, code: str) -> None:
        self.refusals.labels(code=code).inc()

    def lessons_lost(self, count: int) -> None:
        """Count the lessons a sweep of the store ended as `instance_lost` (`app.store.instances`)."""
        self.lessons_lost_with_instance.inc(count)

    def exposition(self) -> bytes:
        """The text /metrics serves: this process's metrics, or the whole replica's when it has workers."""
        if self.shared_dir is None:
            return generate_latest(self.registry)
        replica = CollectorRegistry()
        MultiProcessCollector(replica, path=self.shared_dir)
        return generate_latest(replica)

    def open_lessons(self) -> int:
        """Lessons open now on the whole replica, every worker's (what `lesson_relay_lessons_open` says)."""
        registry = self.registry
        if self.shared_dir is not None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.shared_dir)
        return int(registry.get_sample_value("lesson_relay_lessons_open") or 0)

    def _taken_over(self, fields: Mapping[str, Any]) -> None:
        self.resumes.labels(kind="taken_over").inc()
        from_lost_instance = "true" if fields.get("from_lost_instance") else "false"
        self.taken_over.labels(from_lost_instance=from_lost_instance).inc()

    def _response_done(self, fields: Mapping[str, Any]) -> None:
        self.responses.labels(status=str(fields.get("status"))).inc()
        usage = fields.get("usage") or {}
        for details, kinds in (("input_token_details", _INPUT_KINDS), ("output_token_details", _OUTPUT_KINDS)):
            counts = usage.get(details) or {}
            for field, kind in kinds.items():
                if count := counts.get(field):
                    self.tokens.labels(kind=kind).inc(count)
        if cost := fields.get("estimated_cost_usd"):
            self.cost_usd.inc(cost)


def bearer_allowed(request: Request, settings: Settings) -> bool:
    """True when METRICS_TOKEN is unset or the request carries it as its Bearer token."""
    if settings.metrics_token is None:
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.metrics_token.get_secret_value()
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode())


metrics_router = APIRouter()


@metrics_router.get("/metrics")
async def metrics_endpoint(request: Request) -> Response:
    if not bearer_allowed(request, request.app.state.settings):
        return Response("a Bearer token (METRICS_TOKEN) is required\n", status_code=401,
                        media_type="text/plain", headers={"WWW-Authenticate": "Bearer"})
    metrics: LessonMetrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
