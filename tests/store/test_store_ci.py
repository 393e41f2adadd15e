"""The PostgreSQL half of the store tests may skip on a developer's machine, never in CI."""

from __future__ import annotations

import pytest
from databases import postgresql_unavailable


def test_without_postgresql_a_developer_s_run_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="need a local PostgreSQL: pg_ctl not found"):
        postgresql_unavailable("pg_ctl not found")


def test_without_postgresql_a_ci_run_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cannot run in CI: pg_ctl not found"):
        postgresql_unavailable("pg_ctl not found")
