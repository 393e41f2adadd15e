"""Signed-in desk sessions kept in the store (`teacher_sessions`), so that the server can end one.

A sign-in writes a row named by the SHA-256 of a random id that only the session's signed cookie holds;
every desk request looks that row up by its primary key (one indexed read); sign-out deletes it, so a copy
of the cookie is worthless afterwards ("sign out everywhere" deletes them all). A row lives as long as its
cookie (`SESSION_MAX_AGE_S`); each sign-in deletes the rows that have expired, so they cannot pile up. A
cookie signed before `TEACHER_PASSWORD` changed fails its signature check before the store is asked. When
the store does not answer, the check fails closed (`DeskSessionsUnavailable`): the desk is not opened
unchecked.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime, timedelta
from typing import cast

import structlog
from sqlalchemy import CursorResult, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.store.database import STORE_ERRORS, error_reason
from app.store.models import TeacherSession
from app.store.queries import LOOKUP_TIMEOUT_S
from app.teacher.auth import SESSION_MAX_AGE_S

log = structlog.get_logger("lesson_relay")


class DeskSessionsUnavailable(Exception):
    """The store did not answer while a desk session was started, checked or ended (the reason is logged)."""


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


async def start(sessions: async_sessionmaker[AsyncSession], session_id: str, now: datetime) -> None:
    """Record the session `session_id` signed in at `now` (aware), and delete every session that has expired."""
    try:
        async with asyncio.timeout(LOOKUP_TIMEOUT_S), sessions.begin() as db:
            await db.execute(delete(TeacherSession).where(TeacherSession.expires_at <= now))
            db.add(TeacherSession(id_digest=_digest(session_id),
                                  expires_at=now + timedelta(seconds=SESSION_MAX_AGE_S)))
    except STORE_ERRORS as exc:
        raise _unavailable("start", exc) from exc


async def is_open(sessions: async_sessionmaker[AsyncSession], session_id: str, now: datetime) -> bool:
    """True while the session is recorded and unexpired: not signed out, not past its max age."""
    try:
        async with asyncio.timeout(LOOKUP_TIMEOUT_S), sessions() as db:
            expires_at = await db.scalar(
                select(TeacherSession.expires_at).where(TeacherSession.id_digest == _digest(session_id)))
    except STORE_ERRORS as exc:
        raise _unavailable("check", exc) from exc
    return expires_at is not None and expires_at > now


async def end(sessions: async_sessionmaker[AsyncSession], session_id: str) -> None:
    """Sign the session out: its cookie, and every copy of it, no longer opens the desk (ending it twice is fine)."""
    try:
        async with asyncio.timeout(LOOKUP_TIMEOUT_S), sessions.begin() as db:
            await db.execute(delete(TeacherSession).where(TeacherSession.id_digest == _digest(session_id)))
    except STORE_ERRORS as exc:
        raise _unavailable("end", exc) from exc


async def end_all(sessions: async_sessionmaker[AsyncSession]) -> int:
    """Sign every browser out (how many sessions were open, expired ones included, is returned)."""
    try:
        async with asyncio.timeout(LOOKUP_TIMEOUT_S), sessions.begin() as db:
            ended = cast(CursorResult[tuple[()]], await db.execute(delete(TeacherSession)))
    except STORE_ERRORS as exc:
        raise _unavailable("end_all", exc) from exc
    return ended.rowcount


def _unavailable(action: str, exc: BaseException) -> DeskSessionsUnavailable:
    reason = error_reason(exc)
    log.error("desk_session_unavailable", action=action, error=reason,
              message="the store did not answer while a desk session was read or written: the request is refused")
    return DeskSessionsUnavailable(f"the desk session could not be read or written: {reason}")
