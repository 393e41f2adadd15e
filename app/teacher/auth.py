"""Who is the teacher: the password, the desk's session cookie and its CSRF token, the known-browser cookie, the
API token.

Invariants: the password is compared in constant time and never logged or echoed; the cookies are
HMAC-signed with keys derived from the password (changing `TEACHER_PASSWORD` signs every desk out and makes
every browser unknown again); a signed-in session's cookie names its row in the store, which sign-out deletes
(desk_sessions.py); every form the desk serves carries the session's CSRF token and every POST is checked
against it before anything is read from the form or written. Wrong passwords (form or Bearer token) are
counted, and refused for a while once too many, before the password is even compared (sign_in_limit.py): a
browser that signed in before is counted by itself, the others by their address. The API token is derived from
the password too, and is as long as a key: nobody guesses it, so it is never counted nor held up by others'
wrong guesses, and scripts that use it keep working whatever is typed at their address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import SecretStr

SESSION_COOKIE = "teacher_session"
SESSION_MAX_AGE_S = 12 * 3600
CSRF_FIELD = "csrf_token"
# A browser that signed in once is known for half a year (the school year's longest break), renewed at each sign-in.
KNOWN_BROWSER_COOKIE = "teacher_browser"
KNOWN_BROWSER_MAX_AGE_S = 183 * 86400
_SESSION_KEY_LABEL = b"lesson-relay teacher desk session v2"
_KNOWN_BROWSER_KEY_LABEL = b"lesson-relay teacher desk known browser v1"
_API_TOKEN_LABEL = b"lesson-relay teacher api token v1"
# Says what the token is where it is pasted (a script, a secret store); it adds nothing to its strength.
API_TOKEN_PREFIX = "lrt_"


@dataclass(frozen=True)
class DeskSession:
    """What the desk's cookie holds: the CSRF token, when it was issued and, once the teacher signed in, the id
    of the session's row in the store (`session_id`; None before sign-in)."""

    session_id: str | None
    csrf_token: str
    issued_at: int

    @property
    def signed_in(self) -> bool:
        return self.session_id is not None

    @classmethod
    def new(cls, *, signed_in: bool, now: float) -> DeskSession:
        """A session with a fresh CSRF token (a new one on sign-in, so a token seen before it is worthless) and,
        when `signed_in`, a fresh id for its row in the store."""
        return cls(session_id=secrets.token_urlsafe(32) if signed_in else None,
                   csrf_token=secrets.token_urlsafe(32), issued_at=int(now))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TeacherAuth:
    """The password check and the cookies' signing, all keyed by `TEACHER_PASSWORD`."""

    def __init__(self, password: SecretStr) -> None:
        secret = password.get_secret_value().encode()
        # Compared as digests, so the comparison takes the same time whatever the candidate's length.
        self._password_digest = hashlib.sha256(secret).digest()
        self._cookie_key = hmac.new(secret, _SESSION_KEY_LABEL, hashlib.sha256).digest()
        # A key of its own, so neither cookie can pass for the other.
        self._known_browser_key = hmac.new(secret, _KNOWN_BROWSER_KEY_LABEL, hashlib.sha256).digest()
        self.api_token = API_TOKEN_PREFIX + _b64(hmac.new(secret, _API_TOKEN_LABEL, hashlib.sha256).digest())
        self._api_token_digest = hashlib.sha256(self.api_token.encode()).digest()

    def password_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(hashlib.sha256(candidate.encode()).digest(), self._password_digest)

    def api_token_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(hashlib.sha256(candidate.encode()).digest(), self._api_token_digest)

    def encode(self, session: DeskSession) -> str:
        """The cookie value for `session`: `base64url(payload).base64url(hmac)`."""
        return _seal(self._cookie_key, {"i": session.session_id, "c": session.csrf_token, "t": session.issued_at})

    def decode(self, cookie: str | None, *, now: float) -> DeskSession | None:
        """The session in `cookie`, or None when it is absent, altered, unreadable or older than the max age.

        Whether a signed-in session is still open (not signed out) is the store's to say: `desk_sessions`."""
        data = _open(self._cookie_key, cookie)
        if data is None:
            return None
        try:
            session_id = data["i"]
            session = DeskSession(session_id=None if session_id is None else str(session_id),
                                  csrf_token=str(data["c"]), issued_at=int(data["t"]))
        except (KeyError, TypeError, ValueError):
            return None
        if not 0 <= now - session.issued_at <= SESSION_MAX_AGE_S:
            return None
        return session

    def encode_known_browser(self, browser_id: str, *, now: float) -> str:
        """The known-browser cookie's value: `browser_id` proven to have signed in with the password at `now`."""
        return _seal(self._known_browser_key, {"b": browser_id, "t": int(now)})

    def decode_known_browser(self, cookie: str | None, *, now: float) -> str | None:
        """The browser's id in `cookie`, or None when it is absent, altered, unreadable, older than its max age,
        or signed with another password."""
        data = _open(self._known_browser_key, cookie)
        if data is None:
            return None
        try:
            browser_id, issued_at = str(data["b"]), int(data["t"])
        except (KeyError, TypeError, ValueError):
            return None
        if not browser_id or not 0 <= now - issued_at <= KNOWN_BROWSER_MAX_AGE_S:
            return None
        return browser_id


def _seal(key: bytes, data: dict[str, object]) -> str:
    payload = orjson.dumps(data)
    return f"{_b64(payload)}.{_b64(hmac.new(key, payload, hashlib.sha256).digest())}"


def _open(key: bytes, cookie: str | None) -> dict[str, Any] | None:
    """The object a cookie sealed with `key` holds, or None when it is absent, altered or not an object."""
    if not cookie:
        return None
    try:
        payload_part, signature_part = cookie.split(".")
        payload, signature = _unb64(payload_part), _unb64(signature_part)
    except ValueError:
        return None
    if not hmac.compare_digest(signature, hmac.new(key, payload, hashlib.sha256).digest()):
        return None
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def csrf_matches(session: DeskSession | None, submitted: str | None) -> bool:
    """True when the form's CSRF token is the session's (both present)."""
    if session is None or not submitted:
        return False
    return hmac.compare_digest(session.csrf_token.encode(), submitted.encode())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
