"""python -m bench.candidates — several ways of serving the relay, measured in turn in the same run.

Each candidate is a server (uvicorn, granian, or the naive relay under uvicorn) serving the relay from a
checkout, with extra server arguments. Every round starts each candidate afresh, in an order rotated
from round to round, and runs the same load at it (the bench's `run_load`: N lessons, idle, stream),
so drifts of the shared machine fall on every candidate alike. The table gives, per candidate, the
median and range over the rounds of the relay's CPU per frame round trip — the figure to decide on —
and the medians of p50/p99 and memory per idle lesson.

    .venv/bin/python -m bench.candidates --lessons 150 --seconds 10 --rounds 3 \\
        --candidate 'deployed=app' --candidate 'before=app@/tmp/before' --candidate 'wsproto=uvicorn --ws wsproto' \\
        --candidate 'granian=granian' --candidate 'naive=naive'

A candidate is `LABEL=SERVER[@CHECKOUT] [ARGUMENT …]`: SERVER is `app` (`python -m app`, as deployed; no
arguments), `uvicorn` or `granian` (serving `app.main:app` with the WebSocket limits `python -m app` gives
uvicorn, but not its own WebSocket protocol), `naive` or `naive-pydantic` (the baselines, under uvicorn's
defaults); CHECKOUT is a directory holding another version of this repository (default: this one).
Ratios are to the first candidate unless `--reference LABEL` says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench import run_on_uvloop
from bench.idle_polling import add_halt_poll_option, halt_polling
from bench.processes import REPO_ROOT, ManagedProcess, start_app, start_echo_upstream, start_granian, start_uvicorn
from bench.report import text_table, write_json
from bench.scenarios import Endpoint, Harness, LoadReport, Target, measure_first_audio, run_load

SERVERS: Final = ("app", "uvicorn", "granian", "naive", "naive-pydantic")
NAIVE_APPS: Final = {"naive": "bench.naive_relay:app", "naive-pydantic": "bench.naive_relay:validating_app"}
WARM_UP_LESSONS: Final = 5


@dataclass(frozen=True)
class Candidate:
    label: str
    server: str
    checkout: Path
    arguments: tuple[str, ...]

    @classmethod
    def parse(cls, spec: str) -> Candidate:
        label, separator, rest = spec.partition("=")
        words = shlex.split(rest)
        if not separator or not label or not words:
            raise argparse.ArgumentTypeError(f"candidate {spec!r} is not LABEL=SERVER[@CHECKOUT] [ARGUMENT …]")
        server, _, checkout = words[0].partition("@")
        if server not in SERVERS:
            raise argparse.ArgumentTypeError(f"candidate {label!r}: server {server!r} is not one of {SERVERS}")
        directory = Path(checkout) if checkout else REPO_ROOT
        if not (directory / "app").is_dir():
            raise argparse.ArgumentTypeError(f"candidate {label!r}: {str(directory)!r} holds no app/ to serve")
        return cls(label, server, directory, tuple(words[1:]))


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.candidates", description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidate", dest="candidates", type=Candidate.parse, action="append", required=True,
                        metavar="LABEL=SERVER[@CHECKOUT] [ARG …]", help="a way of serving the relay (repeatable)")
    parser.add_argument("--reference", help="the candidate ratios are given to (default: the first)")
    parser.add_argument("--lessons", type=int, default=150, help="concurrent lessons of each run (150)")
    parser.add_argument("--seconds", type=float, default=10.0, help="streaming seconds of each run (10)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every candidate, in rotated order (3)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="let the scheduler place everything (default: relay on the last CPU, the rest elsewhere)")
    parser.add_argument("--wait-quiet", type=float, default=30.0, metavar="SECONDS",
                        help="before each run wait up to this long for other processes to use < 0.25 core (30)")
    add_halt_poll_option(parser)
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "bench" / "results")
    arguments = parser.parse_args(argv)
    labels = [candidate.label for candidate in arguments.candidates]
    if len(set(labels)) != len(labels):
        parser.error(f"candidate labels must differ: {labels}")
    arguments.reference = arguments.reference or labels[0]
    if arguments.reference not in labels:
        parser.error(f"--reference {arguments.reference!r} is not a candidate's label: {labels}")
    return arguments


@contextlib.contextmanager
def serving(candidate: Candidate, upstream_port: int, results_dir: Path, relay_cpu: int | None) -> Iterator[Endpoint]:
    from bench.__main__ import LESSON_PATH, RELAY_UVICORN_ARGUMENTS, relay_environment

    common: dict[str, Any] = {"environment": relay_environment(upstream_port, results_dir),
                              "log_directory": results_dir / "logs", "working_directory": candidate.checkout}
    name = f"candidate-{candidate.label}"
    relay: ManagedProcess
    if candidate.server == "app":
        relay = start_app(name, workers=1, **common)
    elif candidate.server == "granian":
        relay = start_granian(name, "app.main:app", granian_arguments=candidate.arguments, **common)
    elif candidate.server in NAIVE_APPS:
        relay = start_uvicorn(name, NAIVE_APPS[candidate.server], uvicorn_arguments=candidate.arguments, **common)
    else:
        relay = start_uvicorn(name, "app.main:app", uvicorn_arguments=(*RELAY_UVICORN_ARGUMENTS, *candidate.arguments),
                              **common)
    try:
        if relay_cpu is not None:
            relay.pin({relay_cpu})
        yield Endpoint(Target.RELAY, f"ws://127.0.0.1:{relay.port}{LESSON_PATH}", relay.probe)
    finally:
        relay.stop()


def _progress(message: str) -> None:
    sys.stderr.write(f"[candidates {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


async def run_candidates(arguments: argparse.Namespace) -> dict[str, list[LoadReport]]:
    cpus = os.sched_getaffinity(0)
    relay_cpu = max(cpus) if arguments.pin and len(cpus) >= 2 else None
    if relay_cpu is not None:
        os.sched_setaffinity(0, cpus - {relay_cpu})
    upstream = start_echo_upstream()
    upstream.pin(cpus - {relay_cpu} if relay_cpu is not None else None)
    harness = Harness(upstream_probe=upstream.probe, compression="deflate", quiet_wait_seconds=arguments.wait_quiet)
    runs: dict[str, list[LoadReport]] = {candidate.label: [] for candidate in arguments.candidates}
    try:
        for round_number in range(arguments.rounds):
            shift = round_number % len(arguments.candidates)
            for candidate in arguments.candidates[shift:] + arguments.candidates[:shift]:
                _progress(f"round {round_number + 1}/{arguments.rounds}: {candidate.label}")
                with serving(candidate, upstream.port, arguments.results_dir, relay_cpu) as endpoint:
                    await measure_first_audio(endpoint, harness, samples=WARM_UP_LESSONS)
                    report = await run_load(endpoint, harness, lessons=arguments.lessons, seconds=arguments.seconds)
                runs[candidate.label].append(report)
    finally:
        upstream.stop()
    return runs


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summary_table(runs: dict[str, list[LoadReport]], reference: str) -> str:
    reference_cpu = _median([run.relay_cpu_us_per_frame for run in runs[reference]])
    header = ["candidate", "runs", "us/frame", "range", f"x {reference}", "p50 ms", "p99 ms", "lost",
              "KiB/idle", "other CPU max"]
    rows = []
    for label, reports in runs.items():
        per_frame = [run.relay_cpu_us_per_frame for run in reports if run.relay_cpu_us_per_frame is not None]
        cpu = _median(list(per_frame))
        rows.append([
            label,
            str(len(reports)),
            "-" if cpu is None else f"{cpu:.1f}",
            f"{min(per_frame):.0f}-{max(per_frame):.0f}" if per_frame else "-",
            "-" if cpu is None or not reference_cpu else f"{cpu / reference_cpu:.2f}",
            _format(_median([run.round_trip_p50_ms for run in reports]), ".2f"),
            _format(_median([run.round_trip_p99_ms for run in reports]), ".2f"),
            str(sum(run.frames_lost for run in reports)),
            _format(_median([run.relay_kib_per_idle_lesson for run in reports]), ".0f"),
            _format(max((run.other_cpu_streaming or 0.0 for run in reports), default=None), ".0%"),
        ])
    return text_table(header, rows)


def _format(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    arguments = parse_arguments()
    with halt_polling(arguments.halt_poll_ns) as idle_polling:
        runs = run_on_uvloop(run_candidates(arguments))
    table = summary_table(runs, arguments.reference)
    record = {
        "idle_polling": idle_polling,
        "arguments": {**vars(arguments), "candidates": [vars(candidate) | {"checkout": str(candidate.checkout)}
                                                        for candidate in arguments.candidates],
                      "results_dir": str(arguments.results_dir)},
        "runs": runs,
        "table": table,
    }
    path = write_json(arguments.results_dir, record)
    print(idle_polling.line())
    print(f"{arguments.lessons} lessons, {arguments.seconds:g} s streaming, {arguments.rounds} rounds;"
          " us/frame: relay CPU per frame round trip, median and range over the rounds")
    print(table)
    print(f"\nresults: {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")


if __name__ == "__main__":
    main()
