"""Who is the teacher: the password, the desk's session cookie and its CSRF token.

Invariants: the password is compared in constant time and never logged or echoed; the session cookie is
HMAC-signed with a key derived from the password (changing `TEACHER_PASSWORD` signs every desk out);
every form the desk serves carries the session's CSRF token and every POST is checked against it before
anything is read from the form or written. Addresses that keep giving a wrong password (form or Bearer
token) are refused for a while before the password is even compared (sign_in_limit.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import orjson
from pydantic import SecretStr

SESSION_COOKIE = "teacher_session"
SESSION_MAX_AGE_S = 12 * 3600
CSRF_FIELD = "csrf_token"
_SESSION_KEY_LABEL = b"lesson-relay teacher desk session v1"


@dataclass(frozen=True)
class DeskSession:
    """What the desk's cookie holds: whether the teacher signed in, the CSRF token, when it was issued."""

    signed_in: bool
    csrf_token: str
    issued_at: int

    @classmethod
    def new(cls, *, signed_in: bool, now: float) -> DeskSession:
        """A session with a fresh CSRF token (a new one on sign-in, so a token seen before it is worthless)."""
        return cls(signed_in=signed_in, csrf_token=secrets.token_urlsafe(32), issued_at=int(now))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TeacherAuth:
    """The password check and the session cookie's signing, both keyed by `TEACHER_PASSWORD`."""

    def __init__(self, password: SecretStr) -> None:
        secret = password.get_secret_value().encode()
        # Compared as digests, so the comparison takes the same time whatever the candidate's length.
        self._password_digest = hashlib.sha256(secret).digest()
        self._cookie_key = hmac.new(secret, _SESSION_KEY_LABEL, hashlib.sha256).digest()

    def password_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(hashlib.sha256(candidate.encode()).digest(), self._password_digest)

    def encode(self, session: DeskSession) -> str:
        """The cookie value for `session`: `base64url(payload).base64url(hmac)`."""
        payload = orjson.dumps({"s": session.signed_in, "c": session.csrf_token, "t": session.issued_at})
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def decode(self, cookie: str | None, *, now: float) -> DeskSession | None:
        """The session in `cookie`, or None when it is absent, altered, unreadable or older than the max age."""
        if not cookie:
            return None
        try:
            payload_part, signature_part = cookie.split(".")
            payload, signature = _unb64(payload_part), _unb64(signature_part)
        except ValueError:
            return None
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            data = orjson.loads(payload)
            session = DeskSession(signed_in=bool(data["s"]), csrf_token=str(data["c"]), issued_at=int(data["t"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if not 0 <= now - session.issued_at <= SESSION_MAX_AGE_S:
            return None
        return session

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._cookie_key, payload, hashlib.sha256).digest()


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
