"""The image and its shutdown: the Dockerfile's rules, its install step run for real, the health check, and
a drain that ends before Railway's kill.

There is no container engine on most machines that run these tests, so the Dockerfile is checked by reading
it and by running its dependency step in a fresh virtual environment; the image itself is built only where
docker or podman answers.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import app_stop_grace_s, free_port, process_in_own_group, relay_settings, serve_app

from app import healthcheck
from app.main import (
    CONNECTIONS_CLOSE_SECONDS,
    DrainingServer,
    ExitDeadline,
    create_app,
    drain_lessons,
    server_config,
    shutdown_worst_case_seconds,
)
from app.settings import Settings
from app.simulator import RealtimeSimulator
from app.startup_warnings import RAILWAY_DRAINING_SECONDS

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return instructions


def index_of(instructions: list[Instruction], keyword: str, contains: str) -> int:
    matches = [i for i, each in enumerate(instructions) if each.keyword == keyword and contains in each.arguments]
    assert matches, f"the Dockerfile has no {keyword} with {contains!r}"
    return matches[0]


def dependency_step(instructions: list[Instruction]) -> str:
    return instructions[index_of(instructions, "RUN", "requirements.lock")].arguments


# ---- the Dockerfile ---------------------------------------------------------------------------------------


def test_dependencies_are_installed_from_the_lock_before_the_source_is_copied() -> None:
    instructions = dockerfile()
    user_created = index_of(instructions, "RUN", "useradd")
    lock_copied = index_of(instructions, "COPY", "requirements.lock")
    installed = index_of(instructions, "RUN", "requirements.lock")
    source_copied = index_of(instructions, "COPY", "app")
    assert user_created < lock_copied < installed < source_copied
    # The dependency layer sees nothing but the lock, so a change under app/ keeps it cached.
    copies_before_install = [each.arguments.split()[:-1] for each in instructions[:installed] if each.keyword == "COPY"]
    assert copies_before_install == [["requirements.lock"]]
    assert "--no-deps" in dependency_step(instructions).split()


def test_the_server_runs_as_a_numeric_non_root_user() -> None:
    users = [each.arguments for each in dockerfile() if each.keyword == "USER"]
    assert users, "the Dockerfile sets no USER: the server would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), users[-1]
    assert int(uid) != 0
    assert gid == "" or int(gid) != 0, users[-1]


def test_the_health_check_is_python_asking_the_server_on_its_port() -> None:
    [check] = [each.arguments for each in dockerfile() if each.keyword == "HEALTHCHECK"]
    command = json.loads(check.split(" CMD ", 1)[1])
    assert command == ["python", "-m", "app.healthcheck"]


def test_pip_is_quiet_and_keeps_no_cache_in_the_image() -> None:
    environment = " ".join(each.arguments for each in dockerfile() if each.keyword == "ENV")
    for setting in ("PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_ROOT_USER_ACTION=ignore", "PIP_NO_CACHE_DIR=1"):
        assert setting in environment.split()


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context (its rules: the last matching pattern wins, a
    pattern that matches a folder leaves out all it holds, `**` spans folders)."""
    parts = path.split("/")
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(regex, "/".join(parts[:depth])) for depth in range(1, len(parts) + 1)):
            ignored = not negated
    return ignored


@pytest.mark.parametrize("path", [
    ".env", ".env.production", "app/.env", ".git/HEAD", ".venv/bin/python", "lesson_relay.egg-info/PKG-INFO",
    "build/lib/app/main.py", "dist/lesson_relay-0.1.0.whl", "app/__pycache__/main.cpython-311.pyc",
    "app/store/__pycache__/models.cpython-311.pyc", ".pytest_cache/README.md", ".mypy_cache/3.11/app.json",
    ".ruff_cache/CACHEDIR.TAG", "tests/test_lock.py", "bench/costs.py", "docs/protocol.md", "data/lessons.db",
    "requirements-dev.lock",
])
def test_the_build_context_leaves_out(path: str) -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert dockerignored(path, patterns)


@pytest.mark.parametrize("path", ["requirements.lock", "app/main.py", "app/static/lesson.js",
                                  "app/templates/lesson.html"])
def test_the_build_context_keeps(path: str) -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not dockerignored(path, patterns)
    assert (ROOT / path).exists()


# ---- the dependency step, run ----------------------------------------------------------------------------


@pytest.mark.timeout(600)
async def test_the_dockerfiles_install_step_alone_serves_the_app_from_its_source(
    tmp_path: Path, simulator: RealtimeSimulator
) -> None:
    """The Dockerfile's RUN with the lock, in a fresh environment that sees only the lock; then the source
    as the image copies it, `python -m app` on $PORT, and the image's health check against it."""
    python, context, environment = await asyncio.to_thread(_install_as_the_image_does, tmp_path)
    serving = environment | {"PORT": str(free_port()), "HOST": "127.0.0.1", "LOG_FORMAT": "json",
                             "OPENAI_API_KEY": "sk-test-fake-key", "OPENAI_REALTIME_URL": simulator.url}
    async with process_in_own_group(python, "-m", "app", grace_s=app_stop_grace_s(serving), cwd=context, env=serving,
                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT) as server:
        await _until_logged(server, "Uvicorn running")
        check = await asyncio.create_subprocess_exec(python, "-m", "app.healthcheck", cwd=context, env=serving)
        healthy = await check.wait()
        server.send_signal(signal.SIGTERM)
        exit_code = await server.wait()
    assert healthy == 0
    assert exit_code == 0
    assert (context / "data" / "lessons.db").exists()  # the SQLite default, in the working directory


def _install_as_the_image_does(tmp_path: Path) -> tuple[str, Path, dict[str, str]]:
    """A fresh venv with the Dockerfile's dependency step run in a folder holding only the lock, then the
    source copied next to it: (its python, that folder, the environment to run it with)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    context = tmp_path / "image"
    context.mkdir()
    shutil.copy(ROOT / "requirements.lock", context)
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    environment["PATH"] = f"{venv / 'bin'}{os.pathsep}{environment['PATH']}"
    installed = subprocess.run(["bash", "-c", dependency_step(dockerfile())], cwd=context, env=environment,
                               capture_output=True, text=True)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    shutil.copytree(ROOT / "app", context / "app", ignore=shutil.ignore_patterns("__pycache__"))
    python = str(venv / "bin" / "python")
    unused = subprocess.run([python, "-c", "import watchfiles"], cwd=context, env=environment, capture_output=True)
    assert unused.returncode != 0, "watchfiles is installed: the lock carries uvicorn's [standard] extras"
    return python, context, environment


async def _until_logged(process: asyncio.subprocess.Process, text: str) -> None:
    assert process.stdout is not None
    seen: list[str] = []
    async for raw in process.stdout:
        seen.append(raw.decode(errors="replace"))
        if text in seen[-1]:
            return
    pytest.fail(f"the server exited before logging {text!r}: {''.join(seen)}")


def _container_engine() -> str | None:
    for engine in ("docker", "podman"):
        if shutil.which(engine) and subprocess.run([engine, "info"], capture_output=True).returncode == 0:
            return engine
    return None


@pytest.mark.timeout(1800)
@pytest.mark.skipif(_container_engine() is None, reason="no container engine answers here (docker or podman)")
def test_the_image_builds_and_runs_as_its_user() -> None:
    engine = _container_engine()
    assert engine is not None
    tag = "lesson-relay:test"
    subprocess.run([engine, "build", "--tag", tag, str(ROOT)], check=True)
    inspected = json.loads(subprocess.run([engine, "image", "inspect", tag], check=True, capture_output=True,
                                          text=True).stdout)[0]["Config"]
    assert inspected["User"] == "10001:10001"
    assert inspected["Healthcheck"]["Test"] == ["CMD", "python", "-m", "app.healthcheck"]
    whoami = subprocess.run([engine, "run", "--rm", tag, "python", "-c", "import os, app.main; print(os.getuid())"],
                            check=True, capture_output=True, text=True)
    assert whoami.stdout.strip() == "10001"


# ---- the health check ------------------------------------------------------------------------------------


async def test_the_health_check_passes_while_serving_and_fails_while_draining(
    simulator: RealtimeSimulator, log_stream: io.StringIO
) -> None:
    async with serve_app(relay_settings(simulator.url), log_stream) as relay:
        port = int(relay.base_url.rsplit(":", 1)[1])
        serving = await asyncio.to_thread(healthcheck.probe, port)
        await drain_lessons(relay.app, 1)
        draining = await asyncio.to_thread(healthcheck.probe, port)
    stopped = await asyncio.to_thread(healthcheck.probe, port)
    assert serving is None
    assert draining is not None
    assert "503" in draining
    assert stopped is not None
    assert "refused" in stopped.lower()


# ---- the shutdown fits Railway's drainingSeconds ------------------------------------------------------------


def test_the_worst_case_shutdown_ends_well_before_railways_kill() -> None:
    draining_seconds = json.loads((ROOT / "railway.json").read_text())["deploy"]["drainingSeconds"]
    settings = Settings(openai_api_key="sk-test-fake-key")
    grace = settings.shutdown_grace_seconds
    config = server_config(create_app(settings), settings)
    server = DrainingServer(config, grace_s=grace)
    margin_s = 5
    # Lessons get the grace, then uvicorn its graceful timeout (after its 0.1 s pause); the exit deadline
    # is past both, so it only ever ends a shutdown that hangs beyond them.
    assert grace + 0.1 + config.timeout_graceful_shutdown < server.exit_deadline.seconds
    assert server.exit_deadline.seconds == shutdown_worst_case_seconds(grace)
    assert shutdown_worst_case_seconds(grace) <= draining_seconds - margin_s
    assert config.timeout_graceful_shutdown == CONNECTIONS_CLOSE_SECONDS


def test_the_server_knows_railway_jsons_draining_time() -> None:
    # The image carries no railway.json: the start warning about a grace too long for it uses this copy.
    draining_seconds = json.loads((ROOT / "railway.json").read_text())["deploy"]["drainingSeconds"]
    assert draining_seconds == RAILWAY_DRAINING_SECONDS


def test_a_signal_arms_the_exit_deadline_of_the_served_process() -> None:
    settings = Settings(openai_api_key="sk-test-fake-key")
    server = DrainingServer(server_config(create_app(settings), settings), grace_s=settings.shutdown_grace_seconds)
    server.handle_exit(signal.SIGTERM, None)
    try:
        assert server.should_exit
        assert server.exit_deadline._timer is not None
        assert server.exit_deadline._timer.is_alive()
    finally:
        server.exit_deadline.disarm()


def test_a_shutdown_that_outlasts_its_deadline_ends_the_process() -> None:
    exited = threading.Event()
    codes: list[int] = []

    def exit_process(code: int) -> None:
        codes.append(code)
        exited.set()

    ExitDeadline(0, exit_process=exit_process).arm()
    assert exited.wait(timeout=10)
    assert codes == [1]


def test_a_finished_shutdown_disarms_its_deadline() -> None:
    deadline = ExitDeadline(3600, exit_process=lambda code: pytest.fail(f"exited with {code}"))
    deadline.arm()
    timer = deadline._timer
    assert timer is not None
    deadline.disarm()
    timer.join(timeout=10)
    assert not timer.is_alive()


def test_the_readme_states_railways_health_check_as_railway_json_sets_it() -> None:
    deploy = json.loads((ROOT / "railway.json").read_text())["deploy"]
    readme = (ROOT / "README.md").read_text()
    assert f"health check on `{deploy['healthcheckPath']}`" in readme
    assert f"`healthcheckTimeout` ({deploy['healthcheckTimeout']} s)" in readme
    assert f"`drainingSeconds` of {deploy['drainingSeconds']}" in readme
    # No start command: Railway runs the image's CMD, the one that drains lessons on SIGTERM.
    assert "startCommand" not in deploy
    assert dockerfile()[-1] == Instruction("CMD", '["python", "-m", "app"]')


def test_the_readme_states_the_real_worst_case() -> None:
    readme = (ROOT / "README.md").read_text()
    worst = shutdown_worst_case_seconds(Settings(openai_api_key="sk-test-fake-key").shutdown_grace_seconds)
    assert f"SHUTDOWN_GRACE_SECONDS` + {shutdown_worst_case_seconds(0):g} s" in readme
    assert f"{worst:g} s with the defaults" in readme
