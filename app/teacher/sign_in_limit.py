"""The sign-in limit: at most `max_failures` wrong passwords per client in any sliding window, counted in the
store (`sign_in_failures`) so that it holds across every worker and replica of a deployment.

A client is its address (an IPv6 address's /64, see `app.addresses`), except a browser that signed in to
the desk before, proven by its known-browser cookie (signed with the password: only a browser that knew it
holds one): its attempts are counted by themselves. A school's network shares one address, so anyone on it
can use up that address's failures; a teacher's browser that has signed in there before is not held up by
them, and is still limited on its own if someone guesses from it.

An attempt is written as a failure and committed before it is counted, and its password is compared only
when the count (its own row included) is within the limit. Of attempts running in parallel on any workers,
the one counted later sees every row committed before it, so no more than `max_failures` wrong passwords
are ever compared in a window. An attempt over the limit is removed again (it was refused, it guessed
nothing), and so is one whose password proves right: a right password clears only its own attempt, never
another client's failures. Every attempt also prunes a few rows that have left the window, so a scan from
many addresses cannot grow the table forever. When the store does not answer, the attempt is refused
(`SignInUnavailable`), never let through unchecked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.addresses import limit_key
from app.store.database import STORE_ERRORS, error_reason
from app.store.models import SignInFailure
from app.store.queries import LOOKUP_TIMEOUT_S

log = structlog.get_logger("lesson_relay")

# Expired rows each attempt removes: more than the one row it adds, so expired rows cannot pile up.
PRUNE_PER_ATTEMPT = 20


class SignInUnavailable(Exception):
    """The store did not answer while the sign-in limit was checked: the attempt is refused (the reason is logged)."""


@dataclass(frozen=True)
class SignInAttempt:
    """An attempt counted against `client`: refused while `wait_s` > 0, else its password may be compared."""

    failure_id: int
    client: str
    wait_s: float

    @property
    def refused(self) -> bool:
        return self.wait_s > 0

    @property
    def retry_after(self) -> str:
        """The `Retry-After` header of a refusal: whole seconds, rounded up past the wait."""
        return str(int(self.wait_s) + 1)


class SignInLimiter:
    """At most `max_failures` wrong passwords per client address in any sliding `window_s`, in the store."""

    def __init__(self, *, max_failures: int = 5, window_s: float = 300.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s

    async def attempt(self, sessions: async_sessionmaker[AsyncSession], client: str, now: datetime, *,
                      known_browser: str | None = None) -> SignInAttempt:
        """Count an attempt by `client` (its address) at `now` (timezone-aware): against `known_browser` when
        the attempt comes with a known-browser cookie's id, else against the address.

        Refused (`wait_s` > 0: the seconds until it may try again) when that count already has `max_failures`
        in the window; compare nothing then. Otherwise compare the password: a wrong one stays counted, a
        right one is `passed`. `SignInUnavailable` when the store does not answer.
        """
        window_start = now - timedelta(seconds=self.window_s)
        # Browser ids are URL-safe base64, never an address: the two counts cannot meet.
        counted_as = f"browser:{known_browser}" if known_browser else limit_key(client)
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                failure_id = await self._write(sessions, counted_as, now, window_start)
                others = await self._count(sessions, counted_as, failure_id, window_start)
        except STORE_ERRORS as exc:
            raise _unavailable(client, exc) from exc
        wait_s = self._wait_s(others, now)
        if wait_s > 0:
            await self._forget(sessions, client, failure_id)
        return SignInAttempt(failure_id=failure_id, client=client, wait_s=wait_s)

    async def passed(self, sessions: async_sessionmaker[AsyncSession], attempt: SignInAttempt) -> None:
        """The attempt's password was right: it no longer counts (this client's earlier failures still do)."""
        await self._forget(sessions, attempt.client, attempt.failure_id)

    async def _write(self, sessions: async_sessionmaker[AsyncSession], client: str, now: datetime,
                     window_start: datetime) -> int:
        async with sessions.begin() as db:
            failure = SignInFailure(client=client, at=now)
            db.add(failure)
            # Rows another attempt is pruning right now are skipped (PostgreSQL), so attempts never wait on
            # each other here; SQLite writes one transaction at a time anyway.
            expired = (select(SignInFailure.id).where(SignInFailure.at <= window_start)
                       .order_by(SignInFailure.id).limit(PRUNE_PER_ATTEMPT).with_for_update(skip_locked=True))
            await db.execute(delete(SignInFailure).where(SignInFailure.id.in_(expired))
                             .execution_options(synchronize_session=False))
            await db.flush()
            return failure.id

    async def _count(self, sessions: async_sessionmaker[AsyncSession], client: str, failure_id: int,
                     window_start: datetime) -> Sequence[datetime]:
        """The times of `client`'s other failures in the window, oldest first (a new transaction: it sees
        every attempt committed before it on any worker)."""
        async with sessions() as db:
            return (await db.scalars(
                select(SignInFailure.at)
                .where(SignInFailure.client == client, SignInFailure.at > window_start, SignInFailure.id != failure_id)
                .order_by(SignInFailure.at))).all()

    def _wait_s(self, others: Sequence[datetime], now: datetime) -> float:
        """0 when `others` leave room for this attempt; else the seconds until enough of them leave the window."""
        if len(others) < self.max_failures:
            return 0.0
        # Counted in the window, so it is younger than `window_s`: the wait is above 0.
        freeing = others[len(others) - self.max_failures]
        return (freeing - now).total_seconds() + self.window_s

    async def _forget(self, sessions: async_sessionmaker[AsyncSession], client: str, failure_id: int) -> None:
        """Remove an attempt that guessed nothing wrong; if the store fails now the attempt stays counted as a
        failure (the safe side), which is logged."""
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S), sessions.begin() as db:
                await db.execute(delete(SignInFailure).where(SignInFailure.id == failure_id))
        except STORE_ERRORS as exc:
            log.warning("sign_in_attempt_not_cleared", client=client, error=error_reason(exc),
                        message="the store did not answer: this attempt counts as a wrong password until it "
                        "leaves the window")


def _unavailable(client: str, exc: BaseException) -> SignInUnavailable:
    reason = error_reason(exc)
    log.error("sign_in_limit_unavailable", client=client, error=reason,
              message="the store did not answer while the sign-in limit was checked: the attempt is refused")
    return SignInUnavailable(f"the sign-in limit could not be checked: {reason}")

