"""`python -m app`: serve the lesson relay on $PORT, draining open lessons on SIGTERM."""

from __future__ import annotations

import uvicorn

from app.main import DrainingServer, create_app
from app.settings import load_settings


def main() -> None:
    settings = load_settings()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # app.logging owns the format
        # Frames a little over MAX_FRAME_BYTES get an error frame; far over it, close 1009.
        ws_max_size=max(65_536, 4 * settings.max_frame_bytes),
        ws_per_message_deflate=False,
        proxy_headers=True,
        forwarded_allow_ips="*",
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )
    DrainingServer(config, grace_s=settings.shutdown_grace_seconds).run()


if __name__ == "__main__":
    main()
