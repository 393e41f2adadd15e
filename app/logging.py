"""structlog set-up: one event per line, JSON in production, readable columns in a terminal.

Invariants: log lines carry event names and small fields, never audio and never a secret. The
redaction processor is a last line of defence should a secret reach a log field through an
exception message.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, NoReturn, TextIO

import structlog

from app.settings import ConfigurationError, Settings, requested_log_format

REDACTED = "[redacted]"
# The most a log line quotes of what a client chose (a request header, an address it wrote in X-Forwarded-For):
# enough to recognise it (an address is at most 45 characters), never the 8 KiB a header line may hold.
MAX_QUOTED_CHARS = 100


def quoted(value: str) -> str:
    """`value`, sent by a client, as a log line (or a record) may quote it: at most `MAX_QUOTED_CHARS`, ending in
    an ellipsis when cut."""
    if len(value) <= MAX_QUOTED_CHARS:
        return value
    return value[:MAX_QUOTED_CHARS - 1] + "\u2026"


def _redactor(secrets: Iterable[str]) -> structlog.types.Processor:
    needles = tuple(secret for secret in secrets if secret)

    def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in event_dict.items():
            if isinstance(value, str) and any(needle in value for needle in needles):
                for needle in needles:
                    value = value.replace(needle, REDACTED)
                event_dict[key] = value
        return event_dict

    return redact


class _PathsWithoutQueries(logging.Filter):
    """uvicorn's access lines and WebSocket lines print each request's path with its query, which carries a
    lesson link's token and the student's name: only the path reaches the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_path_only(arg) for arg in record.args)
        return True


class _LessonSocketsQuiet(logging.Filter):
    """uvicorn writes three info lines for every lesson socket (its handshake's answer, "connection open",
    "connection closed"): a script retrying refused starts would write thousands a second. The relay's own
    lines (`lesson_started`, `lesson_refused`, `lesson_ended`) say more, so at info level these are left out;
    at debug level they all pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        if record.msg in _SOCKET_STATE_LINES:
            return False
        if isinstance(record.msg, str) and record.msg.startswith(_HANDSHAKE_LINE) and isinstance(record.args, tuple):
            return not any(isinstance(arg, str) and arg.partition("?")[0] == _LESSON_SOCKET_PATH for arg in record.args)
        return True


_LESSON_SOCKET_PATH = "/ws/lesson"
# What websockets' server protocol logs for every connection, through uvicorn's logger.
_SOCKET_STATE_LINES = frozenset({"connection open", "connection closed"})
# How uvicorn's lines about a WebSocket's handshake begin: accepted, 403, or another status.
_HANDSHAKE_LINE = '%s - "WebSocket %s"'


def _path_only(value: object) -> object:
    if isinstance(value, str) and value.startswith("/") and "?" in value:
        return value.partition("?")[0]
    return value


def chosen_format(log_format: str | None, stream: TextIO) -> str:
    """`log_format` (LOG_FORMAT), or when it is unset `console` on a terminal and `json` elsewhere (a platform's
    log collector)."""
    return log_format or ("console" if stream.isatty() else "json")


def stop_on_configuration_error(error: ConfigurationError, stream: TextIO | None = None) -> NoReturn:
    """Stop the start on a bad configuration (`stop_at_start`): in JSON a `configuration_invalid` line with its
    `problems` listed."""
    stop_at_start(error, "configuration_invalid", requested_log_format(), stream, problems=error.problems)


def stop_at_start(stop: SystemExit, event: str, log_format: str | None, stream: TextIO | None = None,
                  **fields: Any) -> NoReturn:
    """Stop a start that cannot go on, in the format the log would have had (exit status 1 either way).

    In JSON: one `event` line at level error on `stream` (stdout, where every line goes), `stop`'s message and
    `fields` in it, since a platform parses and levels JSON lines only. In the console format: `stop` raised, whose
    plain line Python prints on stderr.
    """
    stream = stream or sys.stdout
    if chosen_format(log_format, stream) != "json":
        raise stop
    event_dict: MutableMapping[str, Any] = {"event": event, "message": str(stop.code), **fields}
    for processor in (structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True)):
        event_dict = processor(None, "error", event_dict)
    stream.write(json.dumps(event_dict) + "\n")
    stream.flush()
    raise SystemExit(1)


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Route structlog and the standard library (uvicorn's own lines) to `stream` (stdout) in one format."""
    stream = stream or sys.stdout
    level = getattr(logging, settings.log_level.upper())
    log_format = chosen_format(settings.log_format, stream)
    secrets = [s.get_secret_value() for s in (settings.openai_api_key, settings.lesson_secret, settings.metrics_token,
                                              settings.teacher_password) if s]
    # `format_exc_info` is shared so records from the standard library (uvicorn's "Exception in ASGI
    # application") carry a traceback string too, and it runs before the redactor so tracebacks are redacted.
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redactor(secrets),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per line (print() makes two when unbuffered): the workers of a replica share one stdout.
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.addFilter(_PathsWithoutQueries())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer,
        ])
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    uvicorn_lines = logging.getLogger("uvicorn.error")
    uvicorn_lines.filters[:] = [existing for existing in uvicorn_lines.filters
                              if not isinstance(existing, _LessonSocketsQuiet)]
    if level > logging.DEBUG:
        uvicorn_lines.addFilter(_LessonSocketsQuiet())
    # websockets (and uvicorn's use of it) log every frame, payload included, at debug, and aiosqlite every
    # statement with its parameters (a student's name, a transcript): never wanted.
    for name in ("websockets", "uvicorn.error", "aiosqlite"):
        logging.getLogger(name).setLevel(max(level, logging.INFO))
    # The embedded simulator's server (the only websockets server here: uvicorn's sockets log through its own
    # logger) writes "connection open" and "connection closed" for every lesson, and prose about listening and
    # closing that `simulator_started` / `simulator_stopped` already say: at debug level only, never its frames.
    logging.getLogger("websockets.server").setLevel(logging.INFO if level == logging.DEBUG
                                                    else max(level, logging.WARNING))
    # Alembic says at every start, in prose, which dialect it found and each step it runs: the store logs
    # `database_migrated` with the revisions instead; its warnings still come through, its steps at debug.
    logging.getLogger("alembic").setLevel(level if level == logging.DEBUG else max(level, logging.WARNING))
