"""`python -m app`: serve the lesson relay on $PORT, draining open lessons on SIGTERM.

With WEB_CONCURRENCY > 1 this process supervises that many workers (`app.replica`).
"""

from __future__ import annotations

import signal

from app.logging import configure_logging
from app.main import DrainingServer, create_app, exit_cleanly, server_config
from app.replica import run_replica
from app.settings import load_settings
from app.store.runtime import prepare_database


def main() -> None:
    settings = load_settings()
    # Before migrating: a start that waits for another instance's migration says so in the deployment's format.
    configure_logging(settings)
    prepare_database(settings)
    if settings.web_concurrency > 1:
        raise SystemExit(run_replica(settings))
    config = server_config(create_app(settings), settings, host=settings.host, port=settings.port)
    # uvicorn handles SIGTERM (drain, shut down), then raises it again for the handler it found: with
    # the default one the process would die of the signal (status 143) even after a clean drain.
    signal.signal(signal.SIGTERM, exit_cleanly)
    DrainingServer(config, grace_s=settings.shutdown_grace_seconds).run()


if __name__ == "__main__":
    main()
