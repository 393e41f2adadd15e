"""What is logged once per replica at start: which upstream the lessons use, and a warning for each setting that
works but leaves something open or undercuts another setting.

A setting that cannot work stops the start (`app.settings`); these start, and say once what the operator
would want to know before it matters.
"""

from __future__ import annotations

import structlog

from app.settings import Settings

log = structlog.get_logger("lesson_relay")

# railway.json's deploy.drainingSeconds: how long Railway waits after SIGTERM before it kills the process. The
# image does not carry railway.json, so it is repeated here (tests/test_deploy.py keeps the two equal).
RAILWAY_DRAINING_SECONDS = 20


def log_settings_at_start(settings: Settings, *, shutdown_worst_case_s: float) -> None:
    """Log the upstream the lessons use and one warning for each risky combination of `settings`; the process
    exits at most `shutdown_worst_case_s` after SIGTERM."""
    if settings.simulated:
        # Each worker starts its own simulator, and logs its address (simulator_started).
        log.warning("simulator_mode", message="OPENAI_API_KEY is not set: lessons use the built-in "
                    "Realtime simulator, not OpenAI")
    else:
        log.info("upstream_configured", url=str(settings.openai_realtime_url),
                 model=settings.openai_realtime_model, voice=settings.openai_realtime_voice)
        if settings.lesson_secret is None:
            # A paid key with no links: anyone who can reach the server spends it.
            log.warning("lessons_open_to_anyone", message="OPENAI_API_KEY is set but LESSON_SECRET is not: "
                        "anyone who can reach this server can start paid lessons; set LESSON_SECRET")
        if settings.metrics_token is None:
            log.warning("metrics_open_to_anyone", message="OPENAI_API_KEY is set but METRICS_TOKEN is not: "
                        "/metrics (lesson counts and their costs) answers anyone who can reach this server; "
                        "set METRICS_TOKEN")
    if settings.forwarded_allow_ips == "*":
        # uvicorn then takes the leftmost X-Forwarded-For entry, which the client writes itself.
        log.warning("client_address_chosen_by_client", message="FORWARDED_ALLOW_IPS is *: every client can "
                    "name its own address in X-Forwarded-For and so escape the start and sign-in limits; "
                    "set it to the proxy's addresses or network")
    connections = settings.max_connections * settings.web_concurrency
    if settings.max_sessions > connections:
        # Each lesson holds a connection of its worker: past them all, a start gets HTTP 503 at the handshake,
        # before the page can be told in words that every tutor is busy (over_capacity).
        log.warning("max_sessions_unreachable", max_sessions=settings.max_sessions,
                    max_connections=settings.max_connections, web_concurrency=settings.web_concurrency,
                    message=f"MAX_SESSIONS ({settings.max_sessions}) is more than MAX_CONNECTIONS "
                            f"({settings.max_connections}) x WEB_CONCURRENCY ({settings.web_concurrency}) = "
                            f"{connections} connections, one of which each lesson holds: starts past them are "
                            "refused with HTTP 503 instead of over_capacity; lower MAX_SESSIONS or raise "
                            "MAX_CONNECTIONS")
    if settings.railway_deployment_id is not None:
        _warn_if_railway_kills_the_drain(settings, shutdown_worst_case_s)


def _warn_if_railway_kills_the_drain(settings: Settings, shutdown_worst_case_s: float) -> None:
    # Which of railway.json and the service variable Railway applies when both are set is not documented:
    # the shorter one is assumed.
    draining_s, draining_from = float(RAILWAY_DRAINING_SECONDS), "railway.json's drainingSeconds"
    variable_s = settings.railway_deployment_draining_seconds
    if variable_s is not None and variable_s < draining_s:
        draining_s, draining_from = variable_s, "RAILWAY_DEPLOYMENT_DRAINING_SECONDS"
    if shutdown_worst_case_s <= draining_s:
        return
    grace_s = settings.shutdown_grace_seconds
    most_grace_s = max(0.0, draining_s - (shutdown_worst_case_s - grace_s))
    log.warning("shutdown_outlasts_railway_draining", shutdown_grace_s=grace_s,
                shutdown_worst_case_s=shutdown_worst_case_s, draining_s=draining_s, draining_from=draining_from,
                message=f"SHUTDOWN_GRACE_SECONDS ({grace_s:g}) lets a shutdown take up to {shutdown_worst_case_s:g} s, "
                        f"but Railway kills the process {draining_s:g} s after SIGTERM ({draining_from}): a "
                        f"redeploy may cut lessons mid-drain; set SHUTDOWN_GRACE_SECONDS to at most "
                        f"{most_grace_s:g}, or raise {draining_from}")
