"""`python -m app`: serve the lesson relay on $PORT, draining open lessons on SIGTERM.

With WEB_CONCURRENCY > 1 this process supervises that many workers (`app.replica`).
"""

from __future__ import annotations

import os
import signal
import sys

import structlog

from app.logging import configure_logging, stop_on_configuration_error
from app.main import DrainingServer, create_app, exit_cleanly, server_config
from app.replica import run_replica
from app.settings import ConfigurationError, load_settings
from app.store.runtime import prepare_database

log = structlog.get_logger("lesson_relay")


def stop_before_serving() -> None:
    """SIGTERM during the start, before any lesson can run: log one line and exit at once (status 0).

    A migration under way, or waiting up to 300 s for another instance's, is not waited for: its transaction is
    the database's to roll back (PostgreSQL's ends with the connection, SQLite's with the process), exactly as
    after the platform's kill. Without a handler, Python as the image's PID 1 would ignore SIGTERM meanwhile.
    """
    log.info("stopped_before_serving", signal="SIGTERM",
             message="stopped before serving (while the database was prepared): no lesson had started")
    sys.stdout.flush()
    os._exit(0)


def main() -> None:
    try:
        settings = load_settings()
    except ConfigurationError as error:
        stop_on_configuration_error(error)
    # Before migrating: a start that waits for another instance's migration says so in the deployment's format.
    configure_logging(settings)
    # Until the server's own handlers replace it (uvicorn's, or the supervisor's with WEB_CONCURRENCY > 1). The
    # migration's event loop takes the signal while it runs, and puts back the default handler when it closes.
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_before_serving())
    prepare_database(settings, on_sigterm=stop_before_serving)
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_before_serving())
    if settings.web_concurrency > 1:
        raise SystemExit(run_replica(settings))
    config = server_config(create_app(settings), settings, host=settings.host, port=settings.port)
    # uvicorn handles SIGTERM (drain, shut down), then raises it again for the handler it found: with
    # the default one the process would die of the signal (status 143) even after a clean drain.
    signal.signal(signal.SIGTERM, exit_cleanly)
    DrainingServer(config, grace_s=settings.shutdown_grace_seconds).run()


if __name__ == "__main__":
    main()
