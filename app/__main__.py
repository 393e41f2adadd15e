"""`python -m app`: serve the lesson relay on $PORT, draining open lessons on SIGTERM."""

from __future__ import annotations

import signal
from types import FrameType

from app.main import DrainingServer, create_app, server_config
from app.settings import load_settings
from app.store.runtime import prepare_database


def main() -> None:
    settings = load_settings()
    prepare_database(settings)
    config = server_config(create_app(settings), settings, host=settings.host, port=settings.port)
    # uvicorn handles SIGTERM (drain, shut down), then raises it again for the handler it found: with
    # the default one the process would die of the signal (status 143) even after a clean drain.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    DrainingServer(config, grace_s=settings.shutdown_grace_seconds).run()


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    main()
