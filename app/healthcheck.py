"""`python -m app.healthcheck`: the image's HEALTHCHECK (the slim image has no curl).

Asks the server in this container, on loopback and $PORT, for /healthz: exit 0 when it answers 200, exit 1
with one line saying why otherwise (not listening, or 503 while it drains for a restart).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from app.settings import load_settings


def probe(port: int, *, timeout_s: float = 4.0) -> str | None:
    """None when http://127.0.0.1:`port`/healthz answers 200, else why not."""
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status: int = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        return f"{url}: {exc}"
    return None if status == 200 else f"{url} answered {status}"


def main() -> int:
    problem = probe(load_settings().port)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
