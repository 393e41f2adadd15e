"""A small W3C WebDriver (classic, HTTP) client, for WebKitWebDriver: WebKitGTK speaks no BiDi yet.

`with open_webdriver_session(url, capabilities) as session:` creates a session (POST /session) and deletes it
after the block; `session.command(method, path, body)` sends one command under the session and returns its
`value`, raising `WebDriverError` with the driver's error and message.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

COMMAND_TIMEOUT_S = 60


class WebDriverError(Exception):
    """The driver answered a command with an error."""


def request(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    """The `value` of the driver's answer to `method url` with the JSON `body`."""
    data = None if body is None else json.dumps(body).encode()
    http = urllib.request.Request(url, method=method, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(http, timeout=COMMAND_TIMEOUT_S) as response:
            return json.loads(response.read())["value"]
    except urllib.error.HTTPError as exc:
        value = json.loads(exc.read())["value"]
        raise WebDriverError(f"{method} {url}: {value.get('error')}: {value.get('message')}") from exc


@dataclass(frozen=True)
class WebDriverSession:
    base: str  # http://host:port/session/<id>

    def command(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return request(method, f"{self.base}{path}", body)

    def execute(self, script: str, *args: Any) -> Any:
        """The value of the function body `script` run in the page with `args` (a promise it returns is awaited)."""
        return self.command("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str) -> str:
        """The id of the first element `css` matches."""
        found: dict[str, str] = self.command("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(found.values()))


@contextlib.contextmanager
def open_webdriver_session(url: str, capabilities: dict[str, Any]) -> Iterator[WebDriverSession]:
    """A new session on the driver at `url` (http://host:port), deleted after the block."""
    created = request("POST", f"{url}/session", {"capabilities": {"alwaysMatch": capabilities}})
    session = WebDriverSession(f"{url}/session/{created['sessionId']}")
    try:
        yield session
    finally:
        with contextlib.suppress(WebDriverError, OSError):  # the browser may be gone already
            session.command("DELETE", "")
