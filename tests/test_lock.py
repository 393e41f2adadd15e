"""The lock files agree with pyproject.toml, so a commit always installs, tests and ships the same versions.

`requirements-dev.lock` is what CI and the README's test command install; `requirements.lock` is what the
image installs. Both are written by `bash .ci/lock`: a dependency added to pyproject.toml without rerunning
it fails here.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
REGENERATE = "pyproject.toml and the locks disagree: run `bash .ci/lock` and commit both lock files"


def read_lock(path: Path) -> dict[NormalizedName, Requirement]:
    """Each pinned line of a lock (`name==version ; marker  # via …`) by normalised name."""
    pins: dict[NormalizedName, Requirement] = {}
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        requirement = Requirement(text)
        assert [spec.operator for spec in requirement.specifier] == ["=="], f"{path.name}: {line!r} is not a pin"
        pins[canonicalize_name(requirement.name)] = requirement
    return pins


def pinned_version(requirement: Requirement) -> str:
    return next(iter(requirement.specifier)).version


def project_requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in extras:
        declared += project["optional-dependencies"][extra]
    return [Requirement(text) for text in declared]


def unmet(requirements: list[Requirement], pins: dict[NormalizedName, Requirement]) -> list[str]:
    """The declared requirements that the lock does not pin at an allowed version."""
    problems = []
    for requirement in requirements:
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement} is not in the lock")
        elif not requirement.specifier.contains(pinned_version(pin), prereleases=True):
            problems.append(f"{requirement} but the lock pins {pin}")
    return problems


def test_every_runtime_dependency_is_pinned_in_the_image_lock() -> None:
    assert unmet(project_requirements(), read_lock(RUNTIME_LOCK)) == [], REGENERATE


def test_every_runtime_and_dev_dependency_is_pinned_in_the_dev_lock() -> None:
    assert unmet(project_requirements("dev"), read_lock(DEV_LOCK)) == [], REGENERATE


def test_the_image_runs_the_versions_ci_tests() -> None:
    runtime, dev = read_lock(RUNTIME_LOCK), read_lock(DEV_LOCK)
    differing = {name: (str(pin), str(dev.get(name))) for name, pin in runtime.items() if dev.get(name) != pin}
    assert differing == {}, REGENERATE


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=lambda path: path.name)
def test_the_lock_says_how_to_regenerate_it(lock: Path) -> None:
    assert "bash .ci/lock" in lock.read_text().splitlines()[0]


def test_the_image_lock_carries_no_extras_the_app_does_not_use() -> None:
    # uvicorn[standard] would bring a file watcher (reload) and a YAML parser (log config files).
    pins = read_lock(RUNTIME_LOCK)
    assert {"watchfiles", "pyyaml"} & pins.keys() == set()
    assert {"uvloop", "httptools", "websockets"} <= pins.keys()
