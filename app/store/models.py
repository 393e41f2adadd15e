"""The lesson records as SQLAlchemy 2 declarative models (the contract: docs in the store schema).

Ids are text (uuid4 hex, or the relay's lesson_id); every timestamp is timezone-aware UTC, also on
SQLite, which keeps no zone: `UtcDateTime` stores UTC and hands back aware datetimes. Deleting a student
deletes their links, lessons, turns and events through ON DELETE CASCADE (SQLite enforces it only with
`PRAGMA foreign_keys=ON`, which `app.store.database` sets on every connection). Never audio, never a key.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names, so migrations can name what they alter on PostgreSQL and SQLite alike.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

LEVELS = ("A1", "A2", "B1", "B2", "C1", "C2")
ROLES = ("tutor", "student")


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database (SQLite returns naive values: they are UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: lesson records keep timezone-aware UTC times")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime, dict[str, Any]: JSON}


class Student(Base):
    __tablename__ = "students"
    __table_args__ = (CheckConstraint(f"level IN {LEVELS!r}", name="level"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    level: Mapped[str] = mapped_column(String(2))
    target_language: Mapped[str | None] = mapped_column(String(60))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    archived_at: Mapped[datetime | None]
    # sha256 hex of the open page's localStorage key: the same browser is the same student.
    browser_key_hash: Mapped[str | None] = mapped_column(String(64), unique=True)

    links: Mapped[list[Link]] = relationship(back_populates="student", cascade="all, delete-orphan",
                                             passive_deletes=True)
    lessons: Mapped[list[Lesson]] = relationship(back_populates="student", cascade="all, delete-orphan",
                                                 passive_deletes=True)


class Link(Base):
    __tablename__ = "links"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    student_id: Mapped[str] = mapped_column(ForeignKey("students.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    topic: Mapped[str | None] = mapped_column(Text)
    support_language: Mapped[str | None] = mapped_column(String(60))

    student: Mapped[Student] = relationship(back_populates="links")


class Lesson(Base):
    __tablename__ = "lessons"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    student_id: Mapped[str | None] = mapped_column(ForeignKey("students.id", ondelete="CASCADE"), index=True)
    link_id: Mapped[str | None] = mapped_column(String(32))
    level: Mapped[str] = mapped_column(String(2))
    started_at: Mapped[datetime] = mapped_column(index=True)
    # Indexed: the lessons under way (NULL) and those handed off just now are what the desk and the sweep look for.
    ended_at: Mapped[datetime | None] = mapped_column(index=True)
    # When a teacher ended the lesson from the desk or the API: the worker running it ends it at its next check
    # (`app.link_check`), a page taking it over is refused.
    end_requested_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(String(100))
    duration_s: Mapped[float | None] = mapped_column(Float)
    model: Mapped[str] = mapped_column(String(200))
    simulated: Mapped[bool] = mapped_column(Boolean)
    audio_input_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    text_input_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Of cached_tokens, those taken off the audio input and off the text input (they are priced apart), so a
    # take-over re-prices the lesson exactly. NULL until its first response, and for lessons recorded before 0006.
    cached_audio_tokens: Mapped[int | None] = mapped_column(Integer)
    cached_text_tokens: Mapped[int | None] = mapped_column(Integer)
    audio_output_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    text_output_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The responses the lesson had, so a take-over goes on counting them. NULL until its first response, and for
    # lessons recorded before 0009.
    responses: Mapped[int | None] = mapped_column(Integer)
    estimated_cost_usd: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    feedback: Mapped[dict[str, Any] | None]
    # The instance (one app process) running the lesson: only it may end the lesson's row, and when it stops
    # answering (`instances.seen_at` grows old) another may take the lesson over.
    instance_id: Mapped[str | None] = mapped_column(String(32), index=True)

    student: Mapped[Student | None] = relationship(back_populates="lessons")
    turns: Mapped[list[Turn]] = relationship(back_populates="lesson", cascade="all, delete-orphan",
                                             passive_deletes=True, order_by="Turn.seq")
    events: Mapped[list[LessonEvent]] = relationship(back_populates="lesson", cascade="all, delete-orphan",
                                                     passive_deletes=True, order_by="LessonEvent.id")


class Turn(Base):
    __tablename__ = "turns"
    __table_args__ = (
        UniqueConstraint("lesson_id", "seq"),
        CheckConstraint(f"role IN {ROLES!r}", name="role"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    lesson_id: Mapped[str] = mapped_column(ForeignKey("lessons.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(7))
    text: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime]
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    heard_ms: Mapped[int | None] = mapped_column(Integer)
    # A tutor turn cut short: the words of `text` the student heard (what the page showed, marked "Cut off"),
    # while `text` keeps all the tutor said. NULL for a whole turn, and for a cut turn recorded before 0005.
    heard_text: Mapped[str | None] = mapped_column(Text)

    lesson: Mapped[Lesson] = relationship(back_populates="turns")


class LessonEvent(Base):
    __tablename__ = "lesson_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    lesson_id: Mapped[str] = mapped_column(ForeignKey("lessons.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(index=True)
    # e.g. response_incomplete, response_failed, greeting_retry, greeting_failed, upstream_error, refused
    kind: Mapped[str] = mapped_column(String(60))
    # status, status_details, code, message … as the upstream said them
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    lesson: Mapped[Lesson] = relationship(back_populates="events")


class Instance(Base):
    """One running app process that keeps lessons: it marks itself alive every few seconds while it runs."""

    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    started_at: Mapped[datetime]
    seen_at: Mapped[datetime] = mapped_column(index=True)


class AppSecret(Base):
    """Secrets the app generates for itself, e.g. the lesson-link secret when LESSON_SECRET is unset."""

    __tablename__ = "app_secrets"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class SignInFailure(Base):
    """A wrong password from `client` (an address, or `browser:<id>` for a known browser; desk form or API
    token), counted by the desk's sign-in limit across every worker and replica (app/teacher/sign_in_limit.py);
    rows older than the limit's window are pruned."""

    __tablename__ = "sign_in_failures"
    __table_args__ = (Index("ix_sign_in_failures_client_at", "client", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(index=True)


class TeacherSession(Base):
    """A signed-in desk session (app/teacher/desk_sessions.py): its cookie names it, every desk request checks it
    is here, sign-out deletes it. Kept as the SHA-256 of the id the cookie holds; rows past `expires_at` are
    pruned at each sign-in."""

    __tablename__ = "teacher_sessions"

    id_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
