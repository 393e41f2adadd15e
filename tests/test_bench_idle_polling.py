"""The bench's idle halt-poll setting: set for the run, put back afterwards whatever happens, reported as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import parse_arguments
from bench.candidates import parse_arguments as parse_candidates_arguments
from bench.idle_polling import KERNEL_DEFAULT_NS, halt_polling


@pytest.fixture
def parameter(tmp_path: Path) -> Path:
    path = tmp_path / "guest_halt_poll_ns"
    path.write_text("0\n")
    return path


def test_set_for_the_run_and_restored(parameter: Path) -> None:
    with halt_polling(KERNEL_DEFAULT_NS, parameter) as idle:
        assert parameter.read_text() == str(KERNEL_DEFAULT_NS)
        assert (idle.before, idle.during) == (0, KERNEL_DEFAULT_NS)
        assert "200000 ns for this run (0 before, restored)" in idle.line()
    assert parameter.read_text() == "0"


def test_restored_when_the_run_fails(parameter: Path) -> None:
    with pytest.raises(RuntimeError), halt_polling(50_000, parameter):
        raise RuntimeError("the bench failed")
    assert parameter.read_text() == "0"


def test_keep_leaves_the_machine_alone(parameter: Path) -> None:
    with halt_polling(None, parameter) as idle:
        assert parameter.read_text() == "0\n"
    assert (idle.before, idle.during) == (0, 0)
    assert "as the machine had it" in idle.note
    assert parameter.read_text() == "0\n"


def test_no_haltpoll_driver(tmp_path: Path) -> None:
    with halt_polling(KERNEL_DEFAULT_NS, tmp_path / "absent") as idle:
        assert (idle.before, idle.during) == (None, None)
    assert "no haltpoll idle driver" in idle.note
    assert not (tmp_path / "absent").exists()


def test_a_setting_that_cannot_be_written_is_reported(parameter: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Path, text: str) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_text", refuse)  # not root: sysfs refuses the write
    with halt_polling(KERNEL_DEFAULT_NS, parameter) as idle:
        assert idle.during == 0
    assert "could not set 200000 (Permission denied)" in idle.note
    monkeypatch.undo()
    assert parameter.read_text() == "0\n"


def test_the_option_reads_keep_and_numbers() -> None:
    assert parse_arguments([]).halt_poll_ns == KERNEL_DEFAULT_NS
    assert parse_arguments(["--halt-poll-ns", "keep"]).halt_poll_ns is None
    assert parse_arguments(["--halt-poll-ns", "0"]).halt_poll_ns == 0
    with pytest.raises(SystemExit):
        parse_arguments(["--halt-poll-ns", "-5"])


def test_the_candidates_runner_takes_the_same_option() -> None:
    assert parse_candidates_arguments(["--candidate", "now=app"]).halt_poll_ns == KERNEL_DEFAULT_NS
    assert parse_candidates_arguments(["--candidate", "now=app", "--halt-poll-ns", "keep"]).halt_poll_ns is None
