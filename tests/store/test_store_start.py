"""Which database the app uses, and what a start does when it cannot be reached."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import sys
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory
from harness import REPO_ROOT, serve_app
from sqlalchemy import text

from app.main import create_app
from app.settings import ConfigurationError, Settings, load_settings
from app.store.database import (
    DatabaseUnavailable,
    DatabaseUrlError,
    alembic_config,
    create_engine,
    database_url,
    migrate,
    redact,
)


@pytest.mark.parametrize(("raw", "expected"), [
    (None, "sqlite+aiosqlite:///data/lessons.db"),
    ("", "sqlite+aiosqlite:///data/lessons.db"),
    ("sqlite:////srv/lessons.db", "sqlite+aiosqlite:////srv/lessons.db"),
    ("postgres://u:pw@db.railway.internal:5432/railway", "postgresql+asyncpg://u:pw@db.railway.internal:5432/railway"),
    ("postgresql://u@localhost/lessons", "postgresql+asyncpg://u@localhost/lessons"),
    ("postgresql+asyncpg://u@localhost/lessons", "postgresql+asyncpg://u@localhost/lessons"),
    # libpq's sslmode, in the URLs most hosts hand out, is asyncpg's ssl.
    ("postgres://u:pw@db.example.com:5432/x?sslmode=require", "postgresql+asyncpg://u:pw@db.example.com:5432/x?ssl=require"),
    ("postgresql://u@h/x?sslmode=verify-full&application_name=relay",
     "postgresql+asyncpg://u@h/x?application_name=relay&ssl=verify-full"),
])
def test_database_url_picks_the_async_driver(raw: str | None, expected: str) -> None:
    assert database_url(raw).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize(("raw", "problem"), [
    ("mysql://u:pw@localhost/lessons", "scheme 'mysql' is not supported"),
    ("sqlite://", "names no SQLite file"),
    ("not a url", "is not a database URL"),
    ("postgresql://u@h/x?sslmode=required", "sslmode 'required' is not one of disable, allow, prefer, require"),
    ("postgresql://u:pw@h:54a32/x", "has a port that is not a number"),
])
def test_an_unsupported_database_url_is_refused(raw: str, problem: str) -> None:
    with pytest.raises(DatabaseUrlError, match=problem):
        database_url(raw)


def test_a_bad_database_url_stops_the_start_without_echoing_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://teacher:hunter2-pass@localhost/lessons")
    with pytest.raises(ConfigurationError) as stopped:
        load_settings()
    assert "DATABASE_URL" in str(stopped.value)
    assert "not supported" in str(stopped.value)
    assert "hunter2-pass" not in str(stopped.value)


async def test_a_postgresql_url_with_sslmode_connects(postgres_server: str) -> None:
    engine = create_engine(database_url(f"{postgres_server}/postgres?sslmode=disable"))
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT 1")) == 1
    finally:
        await engine.dispose()


def test_redact_hides_the_password() -> None:
    assert redact("postgresql://teacher:hunter2-pass@db:5432/x") == "postgresql://teacher:***@db:5432/x"
    assert redact("postgresql://teacher:hunter2-pass@db:54a32/x") == "<unreadable URL>"


def test_a_database_url_with_a_bad_port_stops_the_start_naming_it_once_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://teacher:hunter2-pass@db:54a32/lessons")
    with pytest.raises(ConfigurationError) as stopped:
        load_settings()
    assert str(stopped.value) == ("invalid configuration: DATABASE_URL: has a port that is not a number: "
                                  "postgresql://user:password@host:5432/database")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_an_unreachable_database_stops_the_start_with_one_line_naming_it() -> None:
    port = _closed_port()
    url = f"postgresql://teacher:hunter2-pass@127.0.0.1:{port}/lessons"
    log_stream = io.StringIO()
    app = create_app(Settings(database_url=url, log_format="json"), log_stream=log_stream)
    with pytest.raises(DatabaseUnavailable):
        async with app.router.lifespan_context(app):
            pytest.fail("the app started without its database")
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    [failure] = [line for line in lines if line["event"] == "database_unavailable"]
    assert failure["level"] == "error"
    assert failure["url"] == f"postgresql+asyncpg://teacher:***@127.0.0.1:{port}/lessons"
    assert "hunter2-pass" not in log_stream.getvalue()


async def test_without_database_url_the_first_start_creates_data_lessons_db(tmp_path: Path) -> None:
    # conftest runs every test in its own folder: the working directory here is tmp_path.
    async with serve_app(Settings(log_format="json"), io.StringIO()) as server, httpx.AsyncClient() as client:
        assert (await client.get(f"{server.base_url}/healthz")).status_code == 200
    assert (tmp_path / "data" / "lessons.db").is_file()


async def test_a_migration_is_logged_once_as_an_event_with_its_revisions() -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    starts = []
    for _ in range(2):
        log_stream = io.StringIO()
        async with serve_app(Settings(log_format="json", log_level="info"), log_stream) as server, \
                httpx.AsyncClient() as client:
            assert (await client.get(f"{server.base_url}/healthz")).status_code == 200
        starts.append([json.loads(line) for line in log_stream.getvalue().splitlines()])
    first, second = ([line for line in lines if line["event"] == "database_migrated"] for lines in starts)
    assert [(line["from_revision"], line["to_revision"]) for line in first] == [(None, head)]
    assert second == []
    # Alembic's own prose (the dialect it found, each step it ran) stays out of the log at info.
    assert [line["event"] for lines in starts for line in lines if line["event"].startswith(("Context impl",
                                                                                            "Running upgrade"))] == []


async def test_a_sqlite_folder_this_user_cannot_write_is_named_with_the_remedy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As on Railway, a volume mounted as root's under a server that runs as user 10001. Whoever runs the tests may
    # be root, whom no permission stops: the check itself is asked to say no.
    folder = tmp_path / "data"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: real_access(path, mode) and Path(path) != folder)
    engine = create_engine(database_url(f"sqlite:///{folder / 'lessons.db'}"))
    with pytest.raises(DatabaseUnavailable) as stopped:
        await migrate(engine)
    await engine.dispose()
    assert str(stopped.value) == (
        f"database sqlite+aiosqlite:///{folder / 'lessons.db'} cannot be reached: {folder} is not writable by this "
        f"user (uid {os.getuid()}): a volume mounted as root's? On Railway, set RAILWAY_RUN_UID=0")


async def _start_without_database(tmp_path: Path, log_format: str) -> tuple[int | None, str, str, int]:
    """`python -m app` against a PostgreSQL that is not there: its exit status, stdout, stderr and the port."""
    port = _closed_port()
    url = f"postgresql://teacher:hunter2-pass@127.0.0.1:{port}/lessons"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", cwd=tmp_path,
        env={"DATABASE_URL": url, "PORT": str(_closed_port()), "HOST": "127.0.0.1", "LOG_FORMAT": log_format,
             "PATH": "", "PYTHONPATH": str(REPO_ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode(), port


async def test_python_m_app_stops_with_one_json_line_when_the_database_is_unreachable(tmp_path: Path) -> None:
    # On a platform only a JSON line is parsed and levelled: an operator searching the errors finds it.
    status, out, err, port = await _start_without_database(tmp_path, "json")
    assert status == 1
    assert err == ""
    [line] = out.splitlines()
    logged = json.loads(line)
    assert (logged["event"], logged["level"]) == ("database_unavailable", "error")
    assert logged["url"] == f"postgresql+asyncpg://teacher:***@127.0.0.1:{port}/lessons"
    assert logged["message"].startswith(
        f"DATABASE_URL: database postgresql+asyncpg://teacher:***@127.0.0.1:{port}/lessons cannot be reached: ")
    assert "cannot be reached" in logged["error"]
    assert "hunter2-pass" not in line


async def test_python_m_app_stops_with_a_clear_line_when_the_database_is_unreachable(tmp_path: Path) -> None:
    status, out, err, port = await _start_without_database(tmp_path, "console")
    assert status == 1
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith(
        f"DATABASE_URL: database postgresql+asyncpg://teacher:***@127.0.0.1:{port}/lessons cannot be reached: ")
    assert "hunter2-pass" not in line


def test_retention_days_must_be_at_least_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().retention_days == 365
    monkeypatch.setenv("RETENTION_DAYS", "0")
    with pytest.raises(ConfigurationError, match="RETENTION_DAYS='0'"):
        load_settings()
