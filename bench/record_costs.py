"""python -m bench.record_costs — what keeping lesson records costs the relay's process, against its audio.

Records are made at turn boundaries, never per audio frame, and the load bench's students stream without
taking turns: its `relay` / `relay-unrecorded` pair can only show that streaming costs the same. This
measures the two costs records add, each alone, in CPU time of this process:

- on the audio path: the lesson machine's recorder numbering a tutor turn and making its `TurnFinished`
  record at the transcript's `done` and its `UsageSoFar` at the response's `done`, and the shell handing
  the records to the writer's queue (`put`);
- in the writer task (same process, same event loop as the lessons): writing records to the database,
  one transaction per record (what a quiet relay does) and in batches (what a busy one does).

and sets them against the audio path's CPU per 20 ms frame round trip (`--us-per-frame`, the load bench's
`us/frame` for `relay`) for a conversation that changes turns every `--seconds-per-turn`.

    .venv/bin/python -m bench.record_costs [--database-url postgresql://…] [--us-per-frame 74]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app import protocol
from app.recorder import LessonRecorder
from app.records import LessonEnded, LessonRecord, LessonStarted, TurnFinished, UsageSoFar
from app.settings import Settings
from app.store.database import create_engine, database_url, migrate, redact
from app.store.writer import LINGER_S, RecordWriter
from app.usage import LessonUsage
from bench import run_on_uvloop

FRAMES_PER_SECOND = 50  # 20 ms frames
TURNS = 20_000
LESSONS = 200
TURNS_PER_LESSON = 20
# Turns alternate: a tutor turn makes a TurnFinished and a UsageSoFar (its response's), a student turn one.
RECORDS_PER_TURN = 1.5
START = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
PRICES = Settings().price_per_million_tokens
RESPONSE_USAGE = protocol.Usage.model_validate({
    "input_tokens": 420, "output_tokens": 340, "input_token_details": {"text_tokens": 20, "audio_tokens": 400},
    "output_token_details": {"text_tokens": 40, "audio_tokens": 300}})


def turn_boundary_cost_us(url: str) -> float:
    """CPU per turn of what records add on the audio path: the machine numbering the turn when its first
    audio arrives, making the `TurnFinished` record at the transcript's done and the `UsageSoFar` at the
    response's done, and the shell's `put` of both."""
    recorder = LessonRecorder("bench", START)
    recorder.started(0.0, level="A1", model="m", simulated=True, student_id=None, link_id=None,
                     browser_key_hash=None, student_name="Bench")
    writer = RecordWriter(create_engine(database_url(url)), capacity=2 * TURNS + 10)
    item_ids = [f"item_{turn}" for turn in range(TURNS)]
    text = "That is a good question, let us look at it together."
    usage = LessonUsage()
    started = time.process_time()
    for turn, item_id in enumerate(item_ids):
        recorder.tutor_turn_seq(item_id, float(turn))
        writer.put(recorder.tutor_done(item_id, text, turn + 3.0).record)
        usage.add(RESPONSE_USAGE)
        writer.put(recorder.usage(usage.tokens_by_kind(), usage.cost_usd(PRICES)).record)
    elapsed = time.process_time() - started
    assert writer.queue.qsize() == 2 * TURNS, "every turn made its two records"
    return elapsed / TURNS * 1e6


def lesson_records(lesson: int) -> list[LessonRecord]:
    lesson_id = f"bench-{lesson}"
    records: list[LessonRecord] = [LessonStarted(lesson_id=lesson_id, started_at=START, level="A1", model="m",
                                                 simulated=True, student_name="Bench")]
    for seq in range(1, TURNS_PER_LESSON + 1):
        at = START + timedelta(seconds=seq * 4)
        records.append(TurnFinished(lesson_id=lesson_id, seq=seq, role="tutor" if seq % 2 else "student",
                                    text="That is a good question, let us look at it together.",
                                    started_at=at, ended_at=at + timedelta(seconds=3)))
        if seq % 2:
            records.append(UsageSoFar(lesson_id=lesson_id, audio_input_tokens=seq * 100, text_input_tokens=seq * 20,
                                      cached_tokens=0, audio_output_tokens=seq * 300, text_output_tokens=seq * 40,
                                      estimated_cost_usd=seq * 0.01))
    records.append(LessonEnded(lesson_id=lesson_id, ended_at=START + timedelta(minutes=2), end_reason="idle",
                               duration_s=120.0, audio_input_tokens=1, text_input_tokens=1, cached_tokens=0,
                               audio_output_tokens=1, text_output_tokens=1, estimated_cost_usd=0.01))
    return records


async def writer_cost_us(url: str, *, batched: bool) -> float:
    """CPU of this process per record written by the RecordWriter to `url`."""
    engine = create_engine(database_url(url))
    await migrate(engine)
    # linger_s=0: one record per transaction when they come one at a time, as on a quiet relay.
    writer = RecordWriter(engine, capacity=LESSONS * 2 * (TURNS_PER_LESSON + 2) + 10, linger_s=0)
    writer.start()
    records = [record for lesson in range(LESSONS) for record in lesson_records(lesson)]
    tag = "b" if batched else "s"
    records = [_retag(record, tag) for record in records]
    started = time.process_time()
    if batched:
        for record in records:
            writer.put(record)
        await writer.flushed()
    else:
        for record in records:
            writer.put(record)
            await writer.flushed()
    elapsed = time.process_time() - started
    assert (writer.written, writer.dropped) == (len(records), 0)
    await writer.stop(grace_s=5)
    await engine.dispose()
    return elapsed / len(records) * 1e6


def _retag(record: LessonRecord, tag: str) -> LessonRecord:
    return replace(record, lesson_id=f"{tag}-{record.lesson_id}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.record_costs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None,
                        help="the database to write to (default: a temporary SQLite file)")
    parser.add_argument("--us-per-frame", type=float, default=74.0,
                        help="the relay's CPU per 20 ms frame round trip, from the load bench (74)")
    parser.add_argument("--seconds-per-turn", type=float, default=4.0,
                        help="how often the conversation changes turns (4)")
    parser.add_argument("--lessons", type=int, default=100, help="lessons at once, for the batches they make (100)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = arguments.database_url or f"sqlite:///{Path(folder) / 'lessons.db'}"
        boundary = turn_boundary_cost_us(url)
        single = run_on_uvloop(writer_cost_us(url, batched=False))
        batched = run_on_uvloop(writer_cost_us(url, batched=True))
    audio_per_turn = arguments.us_per_frame * FRAMES_PER_SECOND * arguments.seconds_per_turn
    print(f"database: {redact(database_url(url))}")
    print(f"{'turn boundary on the audio path (machine + records + put)':<58} {boundary:8.1f} us")
    print(f"{'writer, one record per transaction':<58} {single:8.1f} us per record")
    print(f"{'writer, batched':<58} {batched:8.1f} us per record")
    print(f"{'audio path CPU per turn':<58} {audio_per_turn:8.0f} us "
          f"({arguments.us_per_frame:g} us/frame x {FRAMES_PER_SECOND}/s x {arguments.seconds_per_turn:g} s)")
    print(f"{f'records cost, quiet relay ({RECORDS_PER_TURN:g} per turn, each alone)':<58} "
          f"{(boundary + RECORDS_PER_TURN * single) / audio_per_turn:8.2%} of the audio path")
    print(f"{'records cost, every record batched':<58} "
          f"{(boundary + RECORDS_PER_TURN * batched) / audio_per_turn:8.2%} of the audio path")
    # A transaction costs about (single - batched) whatever it holds; the writer's linger gathers the
    # records the lessons make meanwhile into one.
    per_batch = max(1.0, arguments.lessons * RECORDS_PER_TURN / arguments.seconds_per_turn * LINGER_S)
    per_record = (single - batched) / per_batch + batched
    print(f"{f'records cost at {arguments.lessons} lessons ({per_batch:.1f} records per transaction)':<58} "
          f"{(boundary + RECORDS_PER_TURN * per_record) / audio_per_turn:8.2%} of the audio path")


if __name__ == "__main__":
    main()
