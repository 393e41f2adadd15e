"""Configuration, read once from the environment and validated at start.

This is the only module that reads the environment. Everything else receives a `Settings` (or single
values from it) as arguments, so tests build `Settings(...)` directly.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AnyHttpUrl,
    AnyUrl,
    Field,
    SecretStr,
    UrlConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from app.store.database import DatabaseUrlError, database_url

# The length of an HMAC-SHA256 key that is as strong as the hash.
MIN_SECRET_BYTES = 32
MIN_TEACHER_PASSWORD_CHARS = 8

WebSocketUrl = Annotated[AnyUrl, UrlConstraints(allowed_schemes=["ws", "wss"])]

# The token kinds a price is given for (app.usage prices every one of them).
PRICE_KINDS = ("audio_input", "audio_output", "text_input", "text_output", "cached")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Settings that point the relay at a real upstream: set without a key, they would be ignored for the simulator.
_UPSTREAM_CHOICES = ("openai_realtime_url", "openai_auth_header")


class Settings(BaseSettings):
    """Every setting the service has; the README's configuration table mirrors this class."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    openai_api_key: SecretStr | None = None
    openai_realtime_url: WebSocketUrl = AnyUrl("wss://api.openai.com/v1/realtime")
    openai_realtime_model: str = Field(default="gpt-realtime-2.1", min_length=1)
    openai_realtime_voice: Literal[
        "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"
    ] = "marin"
    openai_transcription_model: str = Field(default="gpt-transcribe", min_length=1)
    # Azure OpenAI authenticates with an `api-key` header instead of a Bearer token.
    openai_auth_header: Literal["bearer", "api-key"] = "bearer"
    target_language: str = Field(default="English", min_length=2, max_length=30, pattern=r"^[A-Za-z ]+$")
    target_language_code: str = Field(default="en", pattern=r"^[a-z]{2}$")
    turn_detection: Literal["server_vad", "semantic_vad"] = "server_vad"
    vad_eagerness: Literal["low", "medium", "high", "auto"] = "low"

    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] | None = None

    upstream_timeout_seconds: float = Field(default=10.0, gt=0, le=120, allow_inf_nan=False)
    # A page that takes no frame for this long has stopped reading: its connection is dropped.
    browser_send_timeout_seconds: float = Field(default=5.0, gt=0, le=60, allow_inf_nan=False)
    # A request (head and body) must have arrived this long after it began, or after the connection opened.
    request_timeout_seconds: float = Field(default=10.0, gt=0, le=120, allow_inf_nan=False)
    max_connections: int = Field(default=500, ge=2)
    max_frame_bytes: int = Field(default=4800, ge=960, le=96_000)
    max_sessions: int = Field(default=50, ge=1)
    # Worker processes of `python -m app`; MAX_SESSIONS and the start rate hold for all of them together.
    web_concurrency: int = Field(default=1, ge=1, le=64)
    # A lesson may outlast the upstream's 60-minute session: the relay rolls over to a new one.
    max_lesson_seconds: float = Field(default=3600, gt=0, le=4 * 3600, allow_inf_nan=False)
    # How long a lesson waits for its page to come back (network loss, reload, redeploy); 0 = not at all.
    resume_grace_seconds: float = Field(default=30, ge=0, le=600, allow_inf_nan=False)
    # An instance that has not marked itself alive for this long was killed: its lessons may be taken over.
    instance_lost_after_seconds: float = Field(default=15, ge=1, le=300, allow_inf_nan=False)
    idle_timeout_seconds: float = Field(default=300, gt=0, allow_inf_nan=False)
    # How often each worker asks the store whether a teacher withdrew the links of its running lessons.
    link_check_seconds: float = Field(default=10, ge=1, le=300, allow_inf_nan=False)
    # How long the lesson's feedback may take after a normal end before the lesson ends without it.
    feedback_timeout_seconds: float = Field(default=20.0, gt=0, le=120, allow_inf_nan=False)
    # A class of 30 behind one school NAT all starting in the same minute, each once more (a reload, a retry).
    lesson_starts_per_minute: int = Field(default=60, ge=1)
    # One student's link: a start, a retry after a failure, a reload and one to spare.
    link_starts_per_minute: int = Field(default=4, ge=1)
    allowed_origins: str = ""
    # The proxies whose X-Forwarded-For names the client (addresses or networks, comma-separated); from any
    # other peer the header is ignored, so a client cannot choose the address its lessons are counted against.
    forwarded_allow_ips: str = "127.0.0.1"
    lesson_secret: SecretStr | None = None
    # When set, GET /metrics and the details of /healthz need `Authorization: Bearer <this>`.
    metrics_token: SecretStr | None = None
    # The teacher's desk (/teacher) and JSON API (/api) are off while this is unset.
    teacher_password: SecretStr | None = None
    # The address students reach the app at, for the lesson links the desk hands out; unset = the request's.
    public_url: AnyHttpUrl | None = None
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=120, allow_inf_nan=False)
    # Railway sets this in every deployment: the process then runs there, and is killed after its draining time.
    railway_deployment_id: str | None = None
    # Railway's draining time (SIGTERM to SIGKILL), when given as this service variable instead of railway.json.
    railway_deployment_draining_seconds: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    # Where lesson records are kept: unset = SQLite file data/lessons.db; postgres(ql)://… = PostgreSQL.
    database_url: SecretStr | None = None
    # Sized for a busy 30-minute lesson at the default prices with room to spare (README: "What a lesson costs").
    max_lesson_cost_usd: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    # What one student's lessons started in the last 24 hours may cost before their link starts no more; 0 = no cap.
    max_student_cost_usd_per_day: float = Field(default=20.0, ge=0, allow_inf_nan=False)
    # Transcripts (the turns) of lessons older than this are deleted, at start and then daily.
    retention_days: int = Field(default=365, ge=1, le=36_500)
    # USD per million tokens, by kind; a JSON object in the environment.
    price_per_million_tokens: dict[str, float] = Field(
        default={"audio_input": 32.0, "audio_output": 64.0, "text_input": 4.0, "text_output": 16.0, "cached": 0.4}
    )

    @field_validator("openai_api_key", "lesson_secret", "database_url", "metrics_token", "teacher_password",
                     "public_url", "railway_deployment_id", "railway_deployment_draining_seconds", mode="before")
    @classmethod
    def _blank_is_absent(cls, value: object) -> object:
        # Railway and docker-compose often set an unused variable to the empty string.
        return None if value == "" else value

    @field_validator("lesson_secret")
    @classmethod
    def _secret_is_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # Links are HMAC-SHA256 signatures: a short secret can be guessed offline from one link.
        if value is not None and len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes; make one with "
                             "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return value

    @field_validator("openai_api_key", "metrics_token")
    @classmethod
    def _token_is_one_word(cls, value: SecretStr | None) -> SecretStr | None:
        # Sent in an HTTP header: a space or a line break pasted with it would fail every lesson, or every scrape.
        if value is not None and not re.fullmatch(r"[!-~]+", value.get_secret_value()):
            raise ValueError("must be printable ASCII without spaces or line breaks (pasted with a line break?)")
        return value

    @field_validator("teacher_password")
    @classmethod
    def _password_can_be_typed(cls, value: SecretStr | None) -> SecretStr | None:
        # Typed at the desk and sent as a Bearer token: a line break or an edge space pasted with it never matches.
        if value is not None:
            password = value.get_secret_value()
            if len(password) < MIN_TEACHER_PASSWORD_CHARS:
                raise ValueError(f"must be at least {MIN_TEACHER_PASSWORD_CHARS} characters")
            if password != password.strip() or not password.isprintable():
                raise ValueError("must not begin or end with a space, nor hold a line break or a control character "
                                 "(pasted with a line break?)")
        return value

    @field_validator("price_per_million_tokens")
    @classmethod
    def _prices_are_complete(cls, value: dict[str, float]) -> dict[str, float]:
        # A misspelt or missing kind would be priced at 0, and the cost limits would never be reached.
        unknown = sorted(set(value) - set(PRICE_KINDS))
        missing = [kind for kind in PRICE_KINDS if kind not in value]
        if unknown or missing:
            raise ValueError(f"needs exactly the kinds {', '.join(PRICE_KINDS)}"
                             + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                             + (f"; missing: {', '.join(missing)}" if missing else ""))
        wrong = [kind for kind, price in value.items() if not 0 <= price < float("inf")]
        if wrong:
            listed = ", ".join(f"{kind}={value[kind]}" for kind in wrong)
            raise ValueError(f"a price is a number of USD, 0 or more: not {listed}")
        return value

    @model_validator(mode="after")
    def _real_upstream_has_a_key(self) -> Settings:
        chosen = [name.upper() for name in _UPSTREAM_CHOICES if name in self.model_fields_set]
        if self.openai_api_key is None and chosen:
            raise PydanticCustomError(
                "upstream_without_key",
                "OPENAI_API_KEY: not set, but {chosen} {verb} a real upstream: set the key, or unset {chosen} "
                "for the built-in simulator",
                {"chosen": " and ".join(chosen), "verb": "chooses" if len(chosen) == 1 else "choose"})
        return self

    @field_validator("host")
    @classmethod
    def _host_is_an_address_or_name(cls, value: str) -> str:
        # Otherwise the server starts, then fails to listen with a line that names no variable.
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
        labels = value.split(".")
        if not all(_HOST_LABEL.fullmatch(label) for label in labels) or all(label.isdigit() for label in labels):
            raise ValueError("is not an IP address or a host name: 0.0.0.0 (every IPv4 interface), :: (every "
                             "interface), 127.0.0.1 or localhost")
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins_are_origins(cls, value: str) -> str:
        # A browser's Origin header is scheme://host[:port]: anything else would never match, and refuse silently.
        for entry in (entry.strip().rstrip("/") for entry in value.split(",") if entry.strip()):
            if entry == "*":
                continue
            parts = urlsplit(entry)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query \
                    or parts.fragment or "@" in parts.netloc:
                raise ValueError(f"{entry!r} is not an origin, like https://school.example.org or "
                                 "http://localhost:3000")
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies_are_addresses(cls, value: str) -> str:
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        for entry in entries:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network, like 10.0.0.1 or 100.64.0.0/10"
                                 ) from None
        return ",".join(entries)

    @field_validator("log_level", "log_format", "openai_realtime_voice", "openai_auth_header", "turn_detection",
                     "vad_eagerness", mode="before")
    @classmethod
    def _lower_choice(cls, value: object) -> object:
        # Every choice is lower case: INFO, JSON or Marin mean the same.
        return value.lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _database_url_supported(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                database_url(value.get_secret_value())
            except DatabaseUrlError as exc:
                # Named once, by the line's `DATABASE_URL:`.
                raise ValueError(str(exc).removeprefix("DATABASE_URL ")) from None
        return value

    @property
    def simulated(self) -> bool:
        """True when no API key is set: the embedded simulator stands in for OpenAI."""
        return self.openai_api_key is None

    @property
    def origin_allowlist(self) -> frozenset[str]:
        # Browsers send the scheme and host in lower case.
        return frozenset(origin.strip().rstrip("/").lower() for origin in self.allowed_origins.split(",")
                         if origin.strip())


# Settings whose names hold one of these are named in errors but their values never echoed.
_SECRET_WORDS = ("api_key", "secret", "password", "database_url", "token")


class ConfigurationError(SystemExit):
    """A bad environment variable: the process stops at start with one line saying which and why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"invalid configuration: {'; '.join(problems)}")
        self.problems = problems


def load_settings() -> Settings:
    """Settings from the environment, or `ConfigurationError` naming each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigurationError([_problem(error) for error in exc.errors()]) from None
    except SettingsError as exc:
        # Raised for values that must be JSON (PRICE_PER_MILLION_TOKENS) before validation starts.
        field = re.search(r'field "(\w+)"', str(exc))
        name = field.group(1).upper() if field else "a variable"
        raise ConfigurationError([f"{name}: not valid JSON"]) from None


def requested_log_format() -> Literal["json", "console"] | None:
    """LOG_FORMAT alone, for when the settings as a whole could not be loaded: `json` or `console` in any case
    (of its name too, as `Settings` reads it), else None (unset, blank or another word)."""
    # Case-insensitive names as pydantic-settings reads them: the last of several spellings wins.
    environment = {name.lower(): value for name, value in os.environ.items()}
    chosen = environment.get("log_format", "").strip().lower()
    if chosen == "json":
        return "json"
    if chosen == "console":
        return "console"
    return None


def _problem(error: ErrorDetails) -> str:
    """One validation error as `NAME='value': why`, the value left out for secrets and for errors that concern
    several variables (their message names them)."""
    if not error["loc"]:
        return error["msg"]
    name = str(error["loc"][0])
    # pydantic opens the message of a validator's ValueError with "Value error, ": the line says what is wrong alone.
    message = error["msg"].removeprefix("Value error, ")
    # Within a JSON value (PRICE_PER_MILLION_TOKENS), where: its key.
    where = "".join(f"[{part!r}]" for part in error["loc"][1:])
    if any(word in name for word in _SECRET_WORDS):
        return f"{name.upper()}{where}: {message}"
    return f"{name.upper()}{where}={error.get('input')!r}: {message}"
