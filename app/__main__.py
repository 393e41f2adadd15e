"""`python -m app`: serve the lesson relay on $PORT, draining open lessons on SIGTERM."""

from __future__ import annotations

from app.main import DrainingServer, create_app, server_config
from app.settings import load_settings


def main() -> None:
    settings = load_settings()
    config = server_config(create_app(settings), settings, host=settings.host, port=settings.port)
    DrainingServer(config, grace_s=settings.shutdown_grace_seconds).run()


if __name__ == "__main__":
    main()
