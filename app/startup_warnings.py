"""Warnings logged at start about settings that work but leave something open or undercut another setting.

A setting that cannot work stops the start (`app.settings`); these start, and say once what the operator
would want to know before it matters.
"""

from __future__ import annotations

import structlog

from app.settings import Settings

log = structlog.get_logger("lesson_relay")


def warn_about_settings(settings: Settings) -> None:
    """Log one warning for each risky combination of `settings`."""
    if not settings.simulated:
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
