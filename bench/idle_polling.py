"""How long an idle virtual CPU polls before it halts, for the length of a bench run.

On a KVM-style guest whose idle driver is ``haltpoll``, an idle vCPU polls for up to ``guest_halt_poll_ns``
before it halts, and a halted vCPU runs again only once the host schedules its thread. With that at 0 (as some
hosts ship it) every wake-up of an idle CPU waits for the host. A relayed frame crosses cores four times (students
→ relay → upstream → relay → students), a direct one never: a relay that leaves its core idle between frames then
reads several milliseconds at p99 that no code of its own spent — the byte-forwarding `proxy`, idle the most, the
worst of all. So, like tuning the CPU governor before a benchmark, the bench sets the kernel's own default
(200 µs) for its run, restores what was there afterwards, and reports both; ``--halt-poll-ns keep`` measures the
machine as it is. Polling is idle time: no process's CPU time includes it.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

HALT_POLL_PARAMETER: Final = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
KERNEL_DEFAULT_NS: Final = 200_000  # drivers/cpuidle/governors/haltpoll.c


@dataclass
class IdlePolling:
    """What the run found and used: `before` and `during` in ns, None where the machine has no such setting."""

    parameter: str
    before: int | None
    during: int | None
    note: str

    def line(self) -> str:
        return f"idle vCPU halt polling ({self.parameter}): {self.note}"


def _read(parameter: Path) -> int | None:
    try:
        return int(parameter.read_text().strip())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def halt_polling(wanted_ns: int | None, parameter: Path = HALT_POLL_PARAMETER) -> Iterator[IdlePolling]:
    """Set the halt-poll time to `wanted_ns` (None: leave it) until the block ends, then put back what was there."""
    before = _read(parameter)
    if before is None:
        yield IdlePolling(str(parameter), None, None, "no haltpoll idle driver here: nothing to set")
        return
    if wanted_ns is None or wanted_ns == before:
        yield IdlePolling(str(parameter), before, before, f"{before} ns, as the machine had it")
        return
    try:
        parameter.write_text(str(wanted_ns))
    except OSError as exc:
        yield IdlePolling(str(parameter), before, before,
                          f"{before} ns, as the machine had it: could not set {wanted_ns} ({exc.strerror or exc})")
        return
    try:
        yield IdlePolling(str(parameter), before, wanted_ns, f"{wanted_ns} ns for this run ({before} before, restored)")
    finally:
        parameter.write_text(str(before))


def _halt_poll_ns(text: str) -> int | None:
    if text == "keep":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a number of nanoseconds or 'keep': {text!r}")
    return int(text)


def add_halt_poll_option(parser: argparse.ArgumentParser) -> None:
    """`--halt-poll-ns NS|keep`, read into `halt_poll_ns` (None for keep) for `halt_polling`."""
    parser.add_argument(
        "--halt-poll-ns",
        type=_halt_poll_ns,
        default=KERNEL_DEFAULT_NS,
        metavar="NS|keep",
        help=f"how long an idle vCPU polls before it halts, during the run, where the haltpoll idle driver is and the"
        f" bench may set it (default {KERNEL_DEFAULT_NS}, the kernel's default; 'keep': as the machine has it)",
    )
