"""Real databases for the store tests: a SQLite file, and a throw-away PostgreSQL cluster.

Every store test runs on both (`store_url` is parametrised). The cluster is Debian's PostgreSQL
(`pg_ctl` under /usr/lib/postgresql/<version>/bin, or $PG_CTL), started once per test session on a free
local port and removed at the end; each test gets its own database in it. initdb refuses to run as
root, so as root the cluster runs as the `postgres` system user (Debian's package creates it). Without
`pg_ctl` the PostgreSQL half skips with the reason; with CI=true that is a failure instead, so CI can
never pass without having tested PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import NoReturn

import asyncpg
import pytest
from ci import tool_unavailable
from harness import free_port
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

PG_USER = "postgres"


def find_pg_ctl() -> Path | None:
    if os.environ.get("PG_CTL"):
        return Path(os.environ["PG_CTL"])
    found = shutil.which("pg_ctl")
    if found:
        return Path(found)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0)
    return Path(candidates[-1]) if candidates else None


def _cluster_owner() -> pwd.struct_passwd | None:
    """The system user who runs the cluster when we are root (initdb refuses root), else None: ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        pytest.fail(f"running as root and there is no {PG_USER!r} system user to own the test cluster "
                    "(Debian's postgresql package creates it)")


def _as_cluster_owner(command: list[str]) -> list[str]:
    return command if _cluster_owner() is None else ["runuser", "-u", PG_USER, "--", *command]


def postgresql_unavailable(reason: str) -> NoReturn:
    tool_unavailable("PostgreSQL store tests", "a local PostgreSQL", reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL (without a database) of a throw-away PostgreSQL cluster on 127.0.0.1."""
    pg_ctl = find_pg_ctl()
    if pg_ctl is None or not pg_ctl.exists():
        postgresql_unavailable("pg_ctl not found (install Debian's postgresql, or set PG_CTL)")
    initdb = pg_ctl.parent / "initdb"
    workdir = Path(tempfile.mkdtemp(prefix="lesson-relay-pg-"))
    owner = _cluster_owner()
    if owner is not None:
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
    data, port = workdir / "data", free_port()
    log = workdir / "server.log"
    subprocess.run(_as_cluster_owner([str(initdb), "-D", str(data), "-A", "trust", "-U", PG_USER, "--no-sync",
                                      "-E", "UTF8"]), check=True, capture_output=True)
    options = f"-p {port} -h 127.0.0.1 -k {workdir} -F -c fsync=off -c full_page_writes=off"
    started = subprocess.run(_as_cluster_owner([str(pg_ctl), "-D", str(data), "-o", options, "-l", str(log),
                                                "-w", "-t", "60", "start"]), capture_output=True, text=True)
    if started.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.fail(f"the test PostgreSQL did not start: {started.stdout}{started.stderr}")
    try:
        yield f"postgresql://{PG_USER}@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_cluster_owner([str(pg_ctl), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database's URL: a SQLite file, then (second run) a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lessons.db'}"
        return
    server: str = request.getfixturevalue("postgres_server")
    name = await _create_database(server)
    yield f"{server}/{name}"
    await _drop_database(server, name)


async def _create_database(server: str) -> str:
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(f"{server}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def _drop_database(server: str, name: str) -> None:
    admin = await asyncpg.connect(f"{server}/postgres")
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


class CuttableProxy:
    """A TCP forwarder to the test PostgreSQL that can be cut (open connections closed, new ones refused
    at once) and restored: the database going away and coming back, as a network outage looks."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.cut_off = False
        # Set when a connection is refused while cut: someone tried the database during the outage.
        self.refused = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        self.cut_off = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.cut_off = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            self.refused.set()
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


@pytest.fixture
async def postgres_url(postgres_server: str) -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database's URL."""
    name = await _create_database(postgres_server)
    yield f"{postgres_server}/{name}"
    await _drop_database(postgres_server, name)


# What PostgreSQL says while it restarts, as asyncpg's own `CannotConnectNowError`.
STARTING_UP = "the database system is starting up"

Refusal = Callable[[], Exception]


def drivers_own_refusal() -> Exception:
    return asyncpg.exceptions.CannotConnectNowError(STARTING_UP)


def sqlalchemys_refusal() -> Exception:
    return OperationalError("connect", None, asyncpg.exceptions.CannotConnectNowError(STARTING_UP))


@pytest.fixture(params=[drivers_own_refusal, sqlalchemys_refusal], ids=["drivers_own_error", "sqlalchemy_error"])
def refusal(request: pytest.FixtureRequest) -> Refusal:
    """A connection refused while PostgreSQL restarts: as the driver raises it, and as SQLAlchemy wraps it."""
    return request.param  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def connections_refused(engine: AsyncEngine, error: Callable[[], Exception]) -> AsyncIterator[None]:
    """While the block runs, every new connection of `engine` fails with `error()`, raised where SQLAlchemy calls
    the driver's connect (its `do_connect` hook); the pooled connections are closed first, so every call connects.
    asyncpg's own `CannotConnectNowError` there is PostgreSQL restarting ("the database system is starting up"), as
    asyncpg raises it and SQLAlchemy 2.0 passes it on, unwrapped."""
    def refuse(*_: object) -> None:
        raise error()

    event.listen(engine.sync_engine, "do_connect", refuse)
    try:
        await engine.dispose()
        yield
    finally:
        event.remove(engine.sync_engine, "do_connect", refuse)


@pytest.fixture
async def postgres_behind_proxy(postgres_server: str) -> AsyncIterator[tuple[str, CuttableProxy]]:
    """A fresh PostgreSQL database reached through a `CuttableProxy`: (its URL via the proxy, the proxy)."""
    name = await _create_database(postgres_server)
    proxy = CuttableProxy("127.0.0.1", int(postgres_server.rsplit(":", 1)[1]))
    await proxy.start()
    yield f"postgresql://{PG_USER}@127.0.0.1:{proxy.port}/{name}", proxy
    await proxy.stop()
    await _drop_database(postgres_server, name)


@contextlib.contextmanager
def statements_run(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL statements `engine` runs while the block runs, in order (the list fills as they run)."""
    statements: list[str] = []

    def ran(connection: object, cursor: object, statement: str, *rest: object) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", ran)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", ran)
