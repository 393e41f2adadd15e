"""What one measurement is, for one target (direct, proxy, a relay or a naive relay).

A load run: open N lessons, start-staggered over a ramp; wait until every one got through its greeting
(microphone open); measure the relay idle with N lessons open; start every student streaming (each at
its own phase in the 20 ms period) for the run's seconds while sampling the relay process; stop; wait
for the last echoes; count. The step search repeats load runs at growing N until p99 passes 10 ms.
The greeting measurement opens lessons one at a time and times the first greeting audio byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from bench.processes import ProcessProbe, ProcessSample, cpu_share, machine_busy_seconds, sleep_sampling
from bench.students import BrowserStudent, DirectStudent, LoadClock, Student, StudentResult

P99_LIMIT_MS: Final = 10.0
LOST_LIMIT_FRACTION: Final = 0.001  # a step loses more than 0.1 % of its frames: it is over the limit too
IDLE_SETTLE_SECONDS: Final = 1.0
IDLE_SAMPLE_SECONDS: Final = 2.0
KIB: Final = 1024
NOISY_OTHER_CPU: Final = 0.3  # cores used by other processes while streaming that make a run suspect


class Target(StrEnum):
    DIRECT = "direct"  # students speak the Realtime protocol straight to the echo upstream: the floor
    RELAY = "relay"  # python -m app, the product, one worker pinned to one CPU
    RELAY_TWO_WORKERS = "relay-2w"  # python -m app with WEB_CONCURRENCY=2, not pinned
    UNRECORDED = "relay-unrecorded"  # the product with its lesson records discarded (bench.unrecorded_relay)
    NAIVE = "naive"  # bench.naive_relay:app, the baseline: what the public samples do
    NAIVE_PYDANTIC = "naive-pydantic"  # bench.naive_relay:validating_app, the baseline validating every message
    PROXY = "proxy"  # bench.tcp_proxy between direct students and the upstream: the cost of moving bytes
    CALLBACK = "callback"  # bench.callback_relay: the audio path in the sockets' callbacks, a Python relay's floor
    BEFORE = "before"  # app.main:app served from another checkout (--before DIR): before/after a change


# Targets whose students speak the Realtime protocol (to the upstream, or through the proxy to it).
REALTIME_TARGETS: Final = frozenset({Target.DIRECT, Target.PROXY})


@dataclass(frozen=True)
class Endpoint:
    """Where a target's students connect, how they speak, and which process to watch (None: direct)."""

    target: Target
    url: str
    relay_probe: ProcessProbe | None

    @property
    def student_class(self) -> type[Student]:
        return DirectStudent if self.target in REALTIME_TARGETS else BrowserStudent


@dataclass(frozen=True)
class Harness:
    """How students behave and what else to watch, the same for every target of a run."""

    upstream_probe: ProcessProbe
    compression: str | None  # what the students offer: "deflate" like a browser, or None
    ramp_seconds_per_lesson: float = 0.01
    drain_seconds: float = 2.0
    # Before each load run, wait up to this long for the machine to be quiet (other users' tests).
    quiet_wait_seconds: float = 0.0
    quiet_cpu_limit: float = 0.25  # cores busy with other processes that still count as quiet


async def wait_until_quiet(max_wait_seconds: float, *, cpu_limit: float) -> float:
    """Wait until the machine spent a whole second with at most `cpu_limit` cores busy, or give up.

    Called between runs, when the bench's own processes are idle, so what is busy is someone else.
    Returns the cores busy in the last second measured.
    """
    deadline = time.perf_counter() + max_wait_seconds
    while True:
        before = machine_busy_seconds()
        await asyncio.sleep(1.0)
        busy = machine_busy_seconds() - before
        if busy <= cpu_limit or time.perf_counter() >= deadline:
            return busy


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values; None when there are none."""
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


@dataclass
class LoadReport:
    """The numbers of one load run. Latencies in ms, memory in KiB, CPU as a fraction of one core."""

    target: Target
    lessons: int
    seconds: float
    lessons_ready: int = 0
    frames_sent: int = 0
    frames_echoed: int = 0
    frames_lost: int = 0
    frames_misrouted: int = 0
    frames_duplicated: int = 0
    round_trip_p50_ms: float | None = None
    round_trip_p90_ms: float | None = None
    round_trip_p99_ms: float | None = None
    round_trip_p999_ms: float | None = None
    round_trip_max_ms: float | None = None
    send_lag_p99_ms: float | None = None  # > a few ms: the load generator itself was short of CPU
    relay_cpu_idle: float | None = None
    relay_cpu_streaming: float | None = None
    relay_rss_before_kib: int | None = None
    relay_rss_idle_kib: int | None = None
    relay_rss_streaming_kib: int | None = None
    upstream_cpu_streaming: float | None = None
    load_generator_cpu_streaming: float | None = None
    # Cores busy with anything else on the machine while streaming (other users' tests, browsers…):
    # more than a few percent and the run measured the neighbours too.
    other_cpu_streaming: float | None = None
    other_cpu_before: float | None = None  # cores busy on the machine just before the run (bench idle)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def lost_fraction(self) -> float:
        return self.frames_lost / self.frames_sent if self.frames_sent else 0.0

    @property
    def relay_kib_per_idle_lesson(self) -> float | None:
        if self.relay_rss_idle_kib is None or self.relay_rss_before_kib is None or not self.lessons_ready:
            return None
        return (self.relay_rss_idle_kib - self.relay_rss_before_kib) / self.lessons_ready

    @property
    def relay_kib_per_streaming_lesson(self) -> float | None:
        if self.relay_rss_streaming_kib is None or self.relay_rss_before_kib is None or not self.lessons_ready:
            return None
        return (self.relay_rss_streaming_kib - self.relay_rss_before_kib) / self.lessons_ready

    @property
    def relay_cpu_per_streaming_lesson(self) -> float | None:
        """Fraction of one core per streaming lesson (0.001 = 0.1 % of a core)."""
        if self.relay_cpu_streaming is None or not self.lessons_ready:
            return None
        return self.relay_cpu_streaming / self.lessons_ready

    @property
    def relay_cpu_us_per_frame(self) -> float | None:
        """Relay CPU microseconds per frame round trip (in from the page, up, back, out to the page)."""
        if self.relay_cpu_streaming is None or not self.frames_sent:
            return None
        return self.relay_cpu_streaming * self.seconds / self.frames_sent * 1e6

    @property
    def over_limit(self) -> bool:
        """p99 past 10 ms, frames lost beyond 0.1 %, or lessons that never opened."""
        p99 = self.round_trip_p99_ms
        return (
            p99 is None
            or p99 > P99_LIMIT_MS
            or self.lost_fraction > LOST_LIMIT_FRACTION
            or self.lessons_ready < self.lessons
        )

    def add_students(self, results: list[StudentResult]) -> None:
        round_trips: list[float] = []
        send_lags: list[float] = []
        errors: Counter[str] = Counter()
        for result in results:
            self.lessons_ready += result.ready
            self.frames_sent += result.frames_sent
            self.frames_echoed += result.frames_echoed
            self.frames_misrouted += result.misrouted_frames
            self.frames_duplicated += result.duplicate_frames
            round_trips += result.round_trips_ms
            send_lags += result.send_lag_ms
            errors.update(result.errors)
        self.frames_lost = self.frames_sent - self.frames_echoed
        round_trips.sort()
        send_lags.sort()
        self.round_trip_p50_ms = percentile(round_trips, 0.50)
        self.round_trip_p90_ms = percentile(round_trips, 0.90)
        self.round_trip_p99_ms = percentile(round_trips, 0.99)
        self.round_trip_p999_ms = percentile(round_trips, 0.999)
        self.round_trip_max_ms = round_trips[-1] if round_trips else None
        self.send_lag_p99_ms = percentile(send_lags, 0.99)
        self.errors = dict(errors.most_common(5))


def _kib(sample: ProcessSample) -> int:
    return sample.rss_bytes // KIB


async def _until_all_ready(students: list[Student], tasks: list[asyncio.Task[StudentResult]]) -> None:
    """Return once every student has its microphone open or has given up."""
    for student, task in zip(students, tasks, strict=True):
        mic_open = asyncio.create_task(student.mic_open.wait())
        await asyncio.wait({mic_open, task}, return_when=asyncio.FIRST_COMPLETED)
        mic_open.cancel()


async def run_load(endpoint: Endpoint, harness: Harness, *, lessons: int, seconds: float) -> LoadReport:
    """Open `lessons` lessons on `endpoint`, stream for `seconds`, and report what was measured."""
    report = LoadReport(endpoint.target, lessons, seconds)
    if harness.quiet_wait_seconds > 0:
        report.other_cpu_before = await wait_until_quiet(harness.quiet_wait_seconds, cpu_limit=harness.quiet_cpu_limit)
    relay = endpoint.relay_probe
    if relay is not None:
        report.relay_rss_before_kib = _kib(relay.sample())
    clock = LoadClock(drain_seconds=harness.drain_seconds)
    students = [
        endpoint.student_class(student_id, endpoint.url, clock, compression=harness.compression)
        for student_id in range(lessons)
    ]
    tasks: list[asyncio.Task[StudentResult]] = []
    for student in students:  # start-staggered: the lessons open one by one over the ramp
        tasks.append(asyncio.create_task(student.run()))
        await asyncio.sleep(harness.ramp_seconds_per_lesson)
    await _until_all_ready(students, tasks)

    # Idle: every lesson open, greeting heard, microphone open, no audio flowing.
    await asyncio.sleep(IDLE_SETTLE_SECONDS)
    idle = await sleep_sampling(relay, IDLE_SAMPLE_SECONDS)
    if idle:
        report.relay_cpu_idle = cpu_share(idle[0], idle[-1])
        report.relay_rss_idle_kib = _kib(idle[-1])

    with own_collector_off():
        upstream_before = harness.upstream_probe.sample()
        own_cpu_before, machine_before, wall_before = time.process_time(), machine_busy_seconds(), time.perf_counter()
        clock.stream_started.set()
        streaming = await sleep_sampling(relay, seconds)
        clock.stream_stopped.set()
        upstream_after = harness.upstream_probe.sample()
        own_cpu, machine_busy, wall = (time.process_time() - own_cpu_before, machine_busy_seconds() - machine_before,
                                       time.perf_counter() - wall_before)
        results = list(await asyncio.gather(*tasks))  # the last echoes, read with the collector still off
    report.load_generator_cpu_streaming = own_cpu / wall
    report.upstream_cpu_streaming = cpu_share(upstream_before, upstream_after)
    if streaming:
        report.relay_cpu_streaming = cpu_share(streaming[0], streaming[-1])
        report.relay_rss_streaming_kib = max(_kib(sample) for sample in streaming)
    report.other_cpu_streaming = max(
        0.0,
        machine_busy / wall
        - report.load_generator_cpu_streaming
        - report.upstream_cpu_streaming
        - (report.relay_cpu_streaming or 0.0),
    )

    report.add_students(results)
    return report


@contextlib.contextmanager
def own_collector_off() -> Iterator[None]:
    """The harness's cyclic garbage collector off while its students stream.

    A full collection of the harness's heap (up to 86 ms measured with `bench/gc_pauses`) stops every student
    at once: their echoes are read late and their frames sent late, which would be read as the target's round
    trip. Streaming makes no garbage that needs the collector; what is collected at the start is the setup's.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass
class FirstAudioReport:
    """Time from starting to open a lesson to its first greeting audio byte, lessons opened one at a time."""

    target: Target
    samples_ms: list[float]

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.samples_ms) if self.samples_ms else None

    @property
    def p90_ms(self) -> float | None:
        return percentile(sorted(self.samples_ms), 0.90)


async def measure_first_audio(endpoint: Endpoint, harness: Harness, *, samples: int) -> FirstAudioReport:
    """Open `samples` lessons one after another; each closes once its greeting was heard."""
    clock = LoadClock(drain_seconds=0.0)
    clock.stream_started.set()
    clock.stream_stopped.set()  # no streaming: greeting, then close
    measured: list[float] = []
    for student_id in range(samples):
        student = endpoint.student_class(student_id, endpoint.url, clock, compression=harness.compression)
        result = await student.run()
        if result.greeting_ms is not None:
            measured.append(result.greeting_ms)
    return FirstAudioReport(endpoint.target, measured)


@dataclass
class CrossingReport:
    """The step search: load runs at growing N, and the first N over the limit (None: never within budget)."""

    target: Target
    steps: list[LoadReport]
    first_over_limit: int | None
    last_within_limit: int | None


async def find_p99_crossing(
    endpoint: Endpoint,
    harness: Harness,
    *,
    steps: list[int],
    seconds: float,
    deadline: float,
) -> CrossingReport:
    """Load runs at each N of `steps` until one is over the limit twice in a row, or `deadline` is near."""
    reports: list[LoadReport] = []
    last_within: int | None = None
    for lessons in steps:
        expected = seconds + lessons * harness.ramp_seconds_per_lesson + IDLE_SETTLE_SECONDS + IDLE_SAMPLE_SECONDS
        if time.perf_counter() + expected + harness.drain_seconds > deadline:
            break
        report = await run_load(endpoint, harness, lessons=lessons, seconds=seconds)
        if report.over_limit:
            # Near the knee one run can be thrown over by a stall of the shared machine (neighbours,
            # the hypervisor): a step is over the limit only when a second run is over it too.
            await asyncio.sleep(1.0)
            report = await run_load(endpoint, harness, lessons=lessons, seconds=seconds)
        reports.append(report)
        if report.over_limit:
            return CrossingReport(endpoint.target, reports, lessons, last_within)
        last_within = lessons
        await asyncio.sleep(1.0)  # let the previous lessons' sockets close
    return CrossingReport(endpoint.target, reports, None, last_within)
