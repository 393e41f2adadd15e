"""Real databases for the store tests: a SQLite file, and a throw-away PostgreSQL cluster.

Every store test runs on both (`store_url` is parametrised). The cluster is Debian's PostgreSQL
(`pg_ctl` under /usr/lib/postgresql/<version>/bin, or $PG_CTL), started once per test session on a free
local port and removed at the end; each test gets its own database in it. initdb refuses to run as
root, so as root the cluster runs as the `postgres` system user (Debian's package creates it). Without
`pg_ctl` the PostgreSQL half skips with the reason; with CI=true that is a failure instead, so CI can
never pass without having tested PostgreSQL.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL store tests cannot run in CI: {reason}")
    pytest.skip(f"PostgreSQL store tests need a local PostgreSQL: {reason}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL (without a database) of a throw-away PostgreSQL cluster on 127.0.0.1."""
    pg_ctl = find_pg_ctl()
    if pg_ctl is None or not pg_ctl.exists():
        _unavailable("pg_ctl not found (install Debian's postgresql, or set PG_CTL)")
    assert pg_ctl is not None
    initdb = pg_ctl.parent / "initdb"
    workdir = Path(tempfile.mkdtemp(prefix="lesson-relay-pg-"))
    owner = _cluster_owner()
    if owner is not None:
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
    data, port = workdir / "data", _free_port()
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
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(f"{server}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield f"{server}/{name}"
    admin = await asyncpg.connect(f"{server}/postgres")
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
