"""The printed table and the JSON record of a bench run."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from bench.processes import REPO_ROOT
from bench.scenarios import NOISY_OTHER_CPU, CrossingReport, FirstAudioReport, LoadReport, Target


def machine() -> dict[str, Any]:
    """What the numbers came from."""
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    app_changed = subprocess.run(
        ["git", "status", "--porcelain", "--", "app"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {
            name: metadata.version(name)
            for name in ("uvicorn", "websockets", "fastapi", "pydantic", "uvloop", "orjson")
        },
        "git_commit": commit,
        "app_uncommitted_changes": bool(app_changed),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def text_table(header: Sequence[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def load_table(reports: list[LoadReport]) -> str:
    header = [
        "target", "lessons", "ready", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "sent", "lost",
        "relay CPU", "CPU/lesson", "us/frame", "KiB/idle", "KiB/stream",
        "upstr CPU", "gen CPU", "other CPU", "gen lag p99",
    ]  # fmt: skip
    rows = [
        [
            report.target.value,
            str(report.lessons),
            str(report.lessons_ready),
            _ms(report.round_trip_p50_ms),
            _ms(report.round_trip_p99_ms),
            _ms(report.round_trip_p999_ms),
            _ms(report.round_trip_max_ms),
            str(report.frames_sent),
            str(report.frames_lost),
            _number(report.relay_cpu_streaming, ".0%"),
            _number(report.relay_cpu_per_streaming_lesson, ".2%"),
            _number(report.relay_cpu_us_per_frame, ".0f"),
            _number(report.relay_kib_per_idle_lesson, ".0f"),
            _number(report.relay_kib_per_streaming_lesson, ".0f"),
            _number(report.upstream_cpu_streaming, ".0%"),
            _number(report.load_generator_cpu_streaming, ".0%"),
            _number(report.other_cpu_streaming, ".0%"),
            _ms(report.send_lag_p99_ms),
        ]
        for report in reports
    ]
    return text_table(header, rows)


def first_audio_table(reports: list[FirstAudioReport]) -> str:
    direct = next((report.median_ms for report in reports if report.target is Target.DIRECT), None)
    rows = [
        [
            report.target.value,
            str(len(report.samples_ms)),
            _ms(report.median_ms),
            _ms(report.p90_ms),
            _ms(None if direct is None or report.median_ms is None else report.median_ms - direct),
        ]
        for report in reports
    ]
    return text_table(["target", "lessons", "median ms", "p90 ms", "+ over direct"], rows)


def crossing_table(reports: list[CrossingReport]) -> str:
    rows = []
    for crossing in reports:
        steps = ", ".join(
            f"{step.lessons}:{_ms(step.round_trip_p99_ms)}/{step.frames_lost}"
            + ("*" if (step.other_cpu_streaming or 0.0) > NOISY_OTHER_CPU else "")
            for step in crossing.steps
        )
        rows.append(
            [
                crossing.target.value,
                str(crossing.last_within_limit or "-"),
                str(crossing.first_over_limit or "not within budget"),
                steps,
            ]
        )
    return text_table(["target", "last N within", "first N over", "steps (N:p99 ms/lost, * = noisy)"], rows)


def targets_check(
    loads: list[LoadReport], first_audio: list[FirstAudioReport], crossings: list[CrossingReport]
) -> list[str]:
    """The issue's four targets, each with the measured numbers and whether it holds."""

    def by_target(items: Sequence[Any], target: Target) -> Any:
        return next((item for item in items if item.target is target), None)

    lines: list[str] = []
    noisy = [report for report in loads if (report.other_cpu_streaming or 0.0) > NOISY_OTHER_CPU]
    if noisy:
        runs = ", ".join(f"{report.target.value} ({report.other_cpu_streaming:.0%})" for report in noisy)
        lines.append(
            f"[WARN] other processes used more than {NOISY_OTHER_CPU:.0%} of a core during: {runs};"
            " those latencies measure the neighbours too: re-run on a quiet machine"
        )
    direct, relay, naive = (by_target(loads, target) for target in (Target.DIRECT, Target.RELAY, Target.NAIVE))
    if relay and naive and relay.relay_cpu_us_per_frame and naive.relay_cpu_us_per_frame:
        ratio = relay.relay_cpu_us_per_frame / naive.relay_cpu_us_per_frame
        lines.append(
            f"[{'PASS' if ratio <= 0.5 else 'FAIL'}] relay CPU per frame {relay.relay_cpu_us_per_frame:.0f} us"
            f" = {ratio:.2f}x naive {naive.relay_cpu_us_per_frame:.0f} us (target <= 0.5x)"
        )
    if direct and relay and direct.round_trip_p99_ms and relay.round_trip_p99_ms:
        ratio = relay.round_trip_p99_ms / direct.round_trip_p99_ms
        holds = ratio <= 1.5 and relay.frames_lost == 0 and relay.lessons_ready == relay.lessons
        lines.append(
            f"[{'PASS' if holds else 'FAIL'}] at {relay.lessons} lessons relay p99 {relay.round_trip_p99_ms:.2f} ms"
            f" = {ratio:.2f}x direct {direct.round_trip_p99_ms:.2f} ms (target <= 1.5x), lost {relay.frames_lost}"
        )
    relay_crossing, naive_crossing = by_target(crossings, Target.RELAY), by_target(crossings, Target.NAIVE)
    if relay_crossing and naive_crossing:
        relay_n, naive_n = relay_crossing.first_over_limit, naive_crossing.first_over_limit
        if naive_n is None:
            lines.append("[ ?? ] the naive relay never crossed 10 ms within the budget: raise --budget or --steps")
        else:
            relay_at_least = relay_n if relay_n is not None else relay_crossing.last_within_limit or 0
            holds = relay_at_least >= 2 * naive_n
            relay_text = f"at {relay_n}" if relay_n is not None else f"not up to {relay_crossing.last_within_limit}"
            lines.append(
                f"[{'PASS' if holds else 'FAIL'}] p99 crosses 10 ms: relay {relay_text} lessons,"
                f" naive at {naive_n} (target relay >= 2x naive)"
            )
    if relay_crossing and naive_crossing and (below := _cpu_below_knees(relay_crossing, naive_crossing)):
        lessons, relay_us, naive_us = below
        saturated = f"; at {naive.lessons} naive used {naive.relay_cpu_streaming:.0%} of its core" \
            if naive and naive.relay_cpu_streaming is not None else ""
        lines.append(
            f"[INFO] relay CPU per frame at {lessons} lessons, the most both carried within the p99 limit:"
            f" {relay_us:.0f} us = {relay_us / naive_us:.2f}x naive {naive_us:.0f} us{saturated}"
        )
    two = by_target(loads, Target.RELAY_TWO_WORKERS)
    if relay and two and relay.relay_cpu_us_per_frame and two.relay_cpu_us_per_frame:
        two_crossing = by_target(crossings, Target.RELAY_TWO_WORKERS)
        knees = ""
        if relay_crossing and two_crossing:
            knees = (f"; p99 passes 10 ms at {two_crossing.first_over_limit or '-'} lessons"
                     f" (one worker: {relay_crossing.first_over_limit or '-'})")
        lines.append(
            f"[INFO] two workers: CPU per frame {two.relay_cpu_us_per_frame:.0f} us"
            f" (one worker {relay.relay_cpu_us_per_frame:.0f} us){knees}; free on every CPU, one of them the harness's"
        )
    if relay and relay.relay_kib_per_idle_lesson is not None:
        kib = relay.relay_kib_per_idle_lesson
        lines.append(f"[{'PASS' if kib <= 64 else 'FAIL'}] relay memory {kib:.0f} KiB per idle lesson (target <= 64)")
    direct_first, relay_first = by_target(first_audio, Target.DIRECT), by_target(first_audio, Target.RELAY)
    if direct_first and relay_first and direct_first.median_ms and relay_first.median_ms:
        extra = relay_first.median_ms - direct_first.median_ms
        lines.append(
            f"[{'PASS' if extra <= 5 else 'FAIL'}] first greeting byte: relay {relay_first.median_ms:.2f} ms,"
            f" upstream's own {direct_first.median_ms:.2f} ms (+{extra:.2f} ms, target <= +5 ms)"
        )
    return lines


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {item.name: _jsonable(getattr(value, item.name)) for item in dataclasses.fields(value)}
        for name in dir(type(value)):  # derived numbers too
            if isinstance(getattr(type(value), name, None), property):
                data[name] = getattr(value, name)
        return data
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return value


def write_json(results_directory: Path, record: dict[str, Any]) -> Path:
    """bench/results/<UTC time>.json with everything measured, the machine and the command line."""
    results_directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = results_directory / f"bench-{stamp}.json"
    payload = {"command": sys.argv, "machine": machine(), **_jsonable(record)}
    path.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    return path


def _cpu_below_knees(relay: CrossingReport, naive: CrossingReport) -> tuple[int, float, float] | None:
    """(lessons, relay µs, naive µs) per frame at the largest step both carried within the limit: CPU per frame read
    past a relay's knee is no cost per frame (an overloaded relay reads several frames at once, late)."""
    relay_within = {step.lessons: step.relay_cpu_us_per_frame for step in relay.steps if not step.over_limit}
    for step in sorted(naive.steps, key=lambda step: step.lessons, reverse=True):
        relay_us, naive_us = relay_within.get(step.lessons), step.relay_cpu_us_per_frame
        if not step.over_limit and relay_us and naive_us:
            return step.lessons, relay_us, naive_us
    return None
