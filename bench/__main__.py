"""python -m bench — measure the relay against the echo upstream and the naive baseline; print a table.

    .venv/bin/python -m bench                       # the full run behind docs/performance.md
    .venv/bin/python -m bench --quick               # a smoke run: 20 lessons, 5 s, no step search
    .venv/bin/python -m bench --targets direct,relay --lessons 100 --seconds 10 --no-sweep
    git worktree add /tmp/before HEAD~1 && .venv/bin/python -m bench --before /tmp/before --targets before,relay
    .venv/bin/python -m bench --targets relay,relay-unrecorded --no-sweep   # what lesson records cost

Progress goes to stderr; the table to stdout; everything measured to bench/results/bench-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from bench import run_on_uvloop
from bench.idle_polling import add_halt_poll_option, halt_polling
from bench.processes import (
    REPO_ROOT,
    ManagedProcess,
    start_app,
    start_callback_relay,
    start_echo_upstream,
    start_tcp_proxy,
    start_uvicorn,
)
from bench.report import crossing_table, first_audio_table, load_table, targets_check, write_json
from bench.scenarios import (
    REALTIME_TARGETS,
    CrossingReport,
    Endpoint,
    FirstAudioReport,
    Harness,
    LoadReport,
    Target,
    find_p99_crossing,
    measure_first_audio,
    run_load,
)

NAIVE_APPS: Final = {Target.NAIVE: "bench.naive_relay:app", Target.NAIVE_PYDANTIC: "bench.naive_relay:validating_app"}
# The WebSocket settings `python -m app` gives uvicorn, as CLI flags: for the naive relay (--naive-server relay)
# and for the relay under plain uvicorn (bench.candidates).
RELAY_UVICORN_ARGUMENTS: Final = ("--ws-per-message-deflate", "false", "--ws-max-size", "65536")
# A naive relay is started the naive way: uvicorn's defaults (permessage-deflate on when offered).
NAIVE_UVICORN_ARGUMENTS: Final = ()
LESSON_PATH: Final = "/ws/lesson?name=Bench&level=A1"
UPSTREAM_PATH: Final = "/v1/realtime?model=gpt-realtime-bench"
# The proxy's knee lies beyond what the harness's one core can drive: searching it would measure the harness.
SEARCHED_TARGETS: Final = frozenset(
    {Target.RELAY, Target.RELAY_TWO_WORKERS, Target.UNRECORDED, Target.NAIVE, Target.NAIVE_PYDANTIC, Target.BEFORE,
     Target.CALLBACK}
)
# Served as deployed, by `python -m <module>` with this WEB_CONCURRENCY: the uvicorn settings are the app's own.
APP_SERVED: Final = {
    Target.RELAY: ("app", 1),
    Target.RELAY_TWO_WORKERS: ("app", 2),
    Target.BEFORE: ("app", 1),
    Target.UNRECORDED: ("bench.unrecorded_relay", 1),
}
DEFAULT_STEPS: Final = "25,50,75,100,125,150,175,200,250,300,400,500"


def _progress(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def relay_environment(upstream_port: int, results_directory: Path) -> dict[str, str]:
    """The relay's environment: the echo upstream, a fake key, every limit out of the bench's way, and its
    lesson records in a SQLite file of the run's own."""
    return {
        "DATABASE_URL": f"sqlite:///{results_directory.resolve() / 'lessons.db'}",
        "OPENAI_API_KEY": "sk-bench-fake",
        "OPENAI_REALTIME_URL": f"ws://127.0.0.1:{upstream_port}/v1/realtime",
        "LOG_LEVEL": "warning",
        "MAX_SESSIONS": "10000",
        "LESSON_STARTS_PER_MINUTE": "1000000",
        "IDLE_TIMEOUT_SECONDS": "3600",
        "MAX_LESSON_SECONDS": "3500",
        "LESSON_SECRET": "",
        "ALLOWED_ORIGINS": "",
    }


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lessons", type=int, default=150, help="concurrent lessons of the main run (150)")
    parser.add_argument("--seconds", type=float, default=15.0, help="streaming seconds of the main run (15)")
    parser.add_argument(
        "--targets",
        default="direct,proxy,relay,relay-2w,naive",
        help="comma-separated: direct, proxy, relay, relay-2w, relay-unrecorded, naive, naive-pydantic, callback, "
             "before (default: direct, proxy, relay, relay-2w, naive)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="DIR",
        help="a checkout of the relay at another commit, served as target 'before' (before/after a change)",
    )
    parser.add_argument("--quick", action="store_true", help="20 lessons, 5 s, 5 greetings, no step search")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the p99 > 10 ms step search")
    parser.add_argument("--steps", default=DEFAULT_STEPS, help=f"lessons per step of the search ({DEFAULT_STEPS})")
    parser.add_argument("--sweep-seconds", type=float, default=8.0, help="streaming seconds per step (8)")
    parser.add_argument(
        "--budget-minutes", type=float, default=12.0, help="time for the step search, all targets together (12)"
    )
    parser.add_argument("--greetings", type=int, default=20, help="lessons opened one by one to time the greeting")
    parser.add_argument(
        "--compression",
        choices=("deflate", "none"),
        default="deflate",
        help="permessage-deflate offered by the students: deflate like a browser (default), or none",
    )
    parser.add_argument(
        "--uvicorn-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra uvicorn argument for the naive relays, repeatable (e.g. --uvicorn-arg=--loop=asyncio)",
    )
    parser.add_argument(
        "--naive-server",
        choices=("defaults", "relay"),
        default="defaults",
        help="uvicorn flags for the naive relay: uvicorn's defaults, or the relay's (code-only comparison)",
    )
    parser.add_argument(
        "--pin-relay-cpu",
        type=int,
        default=max(os.sched_getaffinity(0)) if len(os.sched_getaffinity(0)) >= 2 else None,
        metavar="CPU",
        help="pin the relay to this CPU and the load generator and echo upstream to the others"
        " (default: the last CPU, when there are at least two)",
    )
    parser.add_argument(
        "--no-pin", dest="pin_relay_cpu", action="store_const", const=None, help="let the scheduler place everything"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="before each load run wait up to this long for other processes to use < 0.25 core (60; 0 = never)",
    )
    add_halt_poll_option(parser)
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "bench" / "results")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.lessons, arguments.seconds, arguments.greetings, arguments.sweep = 20, 5.0, 5, False
        arguments.wait_quiet = min(arguments.wait_quiet, 5.0)
    arguments.targets = [Target(name.strip()) for name in arguments.targets.split(",") if name.strip()]
    arguments.steps = [int(step) for step in arguments.steps.split(",")]
    if Target.BEFORE in arguments.targets and not (arguments.before and (arguments.before / "app").is_dir()):
        parser.error("target 'before' needs --before DIR, a checkout of this repository (git worktree add DIR REF)")
    return arguments


def naive_uvicorn_arguments(arguments: argparse.Namespace) -> tuple[str, ...]:
    own = NAIVE_UVICORN_ARGUMENTS if arguments.naive_server == "defaults" else RELAY_UVICORN_ARGUMENTS
    return (*own, *arguments.uvicorn_arg)


def relay_cpus(target: Target, pin_relay_cpu: int | None, machine_cpus: set[int]) -> set[int] | None:
    """The CPUs a target's server may use: the pinned one, or every CPU for several workers (on a machine of 2
    they share the harness's: a process started from the pinned harness would otherwise inherit its CPUs
    alone); None when nothing is pinned."""
    if pin_relay_cpu is None:
        return None
    return machine_cpus if APP_SERVED.get(target, ("", 1))[1] > 1 else {pin_relay_cpu}


@contextlib.contextmanager
def target_endpoint(
    target: Target, upstream: ManagedProcess, arguments: argparse.Namespace, machine_cpus: set[int]
) -> Iterator[Endpoint]:
    """The target's endpoint; for a relay, its server process runs while the block does."""
    if target is Target.DIRECT:
        yield Endpoint(target, f"ws://127.0.0.1:{upstream.port}{UPSTREAM_PATH}", None)
        return
    served = {
        "environment": relay_environment(upstream.port, arguments.results_dir),
        "log_directory": arguments.results_dir / "logs",
        "working_directory": arguments.before if target is Target.BEFORE else REPO_ROOT,
    }
    relay: ManagedProcess
    if target is Target.PROXY:
        relay = start_tcp_proxy(upstream.port)
    elif target is Target.CALLBACK:
        relay = start_callback_relay(upstream.port)
    elif target in APP_SERVED:
        module, workers = APP_SERVED[target]
        relay = start_app(target.value, module=module, workers=workers, **served)
    else:
        relay = start_uvicorn(target.value, NAIVE_APPS[target], uvicorn_arguments=naive_uvicorn_arguments(arguments),
                              **served)
    try:
        relay.pin(relay_cpus(target, arguments.pin_relay_cpu, machine_cpus))
        path = UPSTREAM_PATH if target in REALTIME_TARGETS else LESSON_PATH
        yield Endpoint(target, f"ws://127.0.0.1:{relay.port}{path}", relay.probe)
    finally:
        relay.stop()
        if relay.process.returncode not in (0, -15):
            _progress(f"{target.value} exited with {relay.process.returncode}; log tail:\n{relay.log_tail()}")


async def run_bench(arguments: argparse.Namespace) -> dict[str, Any]:
    machine_cpus = os.sched_getaffinity(0)
    harness_cpus: set[int] | None = None
    if arguments.pin_relay_cpu is not None:
        harness_cpus = (os.sched_getaffinity(0) - {arguments.pin_relay_cpu}) or None
        if harness_cpus:
            os.sched_setaffinity(0, harness_cpus)
    upstream = start_echo_upstream()
    upstream.pin(harness_cpus)
    harness = Harness(
        upstream_probe=upstream.probe,
        compression=None if arguments.compression == "none" else arguments.compression,
        quiet_wait_seconds=arguments.wait_quiet,
    )
    loads: list[LoadReport] = []
    first_audio: list[FirstAudioReport] = []
    crossings: list[CrossingReport] = []
    sweep_deadline = time.perf_counter() + arguments.budget_minutes * 60
    try:
        for position, target in enumerate(arguments.targets):
            with target_endpoint(target, upstream, arguments, machine_cpus) as endpoint:
                _progress(f"{target.value}: timing the greeting over {arguments.greetings} lessons, one by one")
                first_audio.append(await measure_first_audio(endpoint, harness, samples=arguments.greetings))
                _progress(f"{target.value}: {arguments.lessons} lessons streaming {arguments.seconds:g} s")
                loads.append(await run_load(endpoint, harness, lessons=arguments.lessons, seconds=arguments.seconds))
                if arguments.sweep and target in SEARCHED_TARGETS:
                    searches_left = sum(t in SEARCHED_TARGETS for t in arguments.targets[position:])
                    deadline = time.perf_counter() + (sweep_deadline - time.perf_counter()) / searches_left
                    _progress(f"{target.value}: step search for p99 > 10 ms, steps {arguments.steps}")
                    crossings.append(
                        await find_p99_crossing(
                            endpoint, harness, steps=arguments.steps, seconds=arguments.sweep_seconds, deadline=deadline
                        )
                    )
    finally:
        upstream.stop()
    return {"arguments": dict(vars(arguments)), "loads": loads, "first_audio": first_audio, "crossings": crossings}


def main() -> None:
    arguments = parse_arguments()
    with halt_polling(arguments.halt_poll_ns) as idle_polling:
        record = run_on_uvloop(run_bench(arguments))
    record["idle_polling"] = idle_polling
    sections = [
        idle_polling.line(),
        "",
        "Round trip per 20 ms frame, all lessons streaming (CPU: share of one core; KiB: relay RSS growth per lesson)",
        load_table(record["loads"]),
        "",
        "Time to the first greeting audio byte (lessons opened one at a time)",
        first_audio_table(record["first_audio"]),
    ]
    if record["crossings"]:
        sections += [
            "",
            "Step search: where p99 passes 10 ms (or > 0.1 % lost) in two runs in a row",
            crossing_table(record["crossings"]),
        ]
    checks = targets_check(record["loads"], record["first_audio"], record["crossings"])
    sections += ["", "Targets (issues 6 and 14)", *checks]
    record["arguments"]["targets"] = [target.value for target in arguments.targets]
    record["arguments"]["results_dir"] = str(arguments.results_dir)
    record["arguments"]["before"] = str(arguments.before) if arguments.before else None
    path = write_json(arguments.results_dir, record)
    print("\n".join(sections))
    print(f"\nresults: {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")


if __name__ == "__main__":
    main()
