"""One rule for a test tool that is not installed (a browser, PostgreSQL): on a developer machine the tests that
need it skip with the reason; in CI (`CI=true`, as CI services set it) they fail, because `.ci/run` installs
every tool and a green CI run must have run every test."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def tool_unavailable(tests: str, needs: str, reason: str) -> NoReturn:
    """Skip the calling test (fail it in CI): `tests` need `needs`, missing because of `reason`."""
    if in_ci():
        pytest.fail(f"{tests} cannot run in CI: {reason}")
    pytest.skip(f"{tests} need {needs}: {reason}")
