"""Several worker processes behind one port, with limits that hold for the whole replica.

`python -m app` with `WEB_CONCURRENCY` = N > 1 runs this supervisor. It binds N listening sockets to the
port with `SO_REUSEPORT` (the kernel spreads new connections over them evenly) and starts N workers,
each serving one socket with uvicorn on its own event loop and core. The supervisor keeps the replica's
lesson places: `MAX_SESSIONS`, the start rates and each lesson's take-overs are counted here, once for all
workers, and a worker asks over its own socket pair before a lesson starts or is taken over (one round trip;
nothing on the audio path). A worker that dies has its places given back (its socket pair closes) and is
replaced. SIGTERM (or SIGINT) is passed to every worker, each drains its own lessons, and the supervisor
exits 0 once all have. The settings' start warnings are logged once, by the supervisor.

Wire format on a worker's socket pair, one JSON object per line: the worker sends
`{"take": client, "lesson": lesson_id, "link": link_id or null, "taken_over": bool}` and reads `{}` (a place is
held) or `{"code": …, "detail": …, "student_message": …}` (refused: `over_capacity`, or `resume_not_yet` for a
lesson taken over too often); `{"give_back": lesson_id}` returns a place and has no answer. Unasked, the
supervisor may send `{"replace": lesson_id}`: a newer start of that lesson's link took its place, and the
worker ends it. A worker on which a page resumes a lesson another worker runs sends `{"hand_over": lesson_id}`
(no answer); the supervisor passes it to the worker holding that lesson, which hands the lesson over through
the store for the page to take it over on its next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

import orjson
import structlog
from prometheus_client import multiprocess

from app.admission import LocalPlaces, ReplaceLesson, Start, ignore_replacement
from app.errors import OverCapacity, ResumeNotYet
from app.logging import configure_logging
from app.main import DrainingServer, create_app, exit_cleanly, server_config, shutdown_worst_case_seconds
from app.settings import Settings, load_settings
from app.startup_warnings import log_settings_at_start

log = structlog.get_logger("lesson_relay")
# Past a worker's own exit deadline, before it is killed.
STOP_MARGIN_S = 1.0
# A worker whose start failed (uvicorn's exit status 3: its app did not start, the database out of reach) is started
# again after a pause that doubles with each failure in a row, rather than at once, every few seconds with a
# traceback, for as long as the database is away. A worker that dies after it started is replaced at once.
START_FAILED_EXIT_CODE = 3
FIRST_RESTART_PAUSE_S = 1.0
LONGEST_RESTART_PAUSE_S = 30.0


class SupervisorPlaces:
    """A worker's view of the replica's places: each lesson start asks the supervisor."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._answer: asyncio.Future[dict[str, Any] | None] | None = None
        self.on_replaced: ReplaceLesson = ignore_replacement
        self.on_handover: ReplaceLesson = ignore_replacement

    async def _open(self) -> asyncio.StreamWriter:
        if self._writer is None:
            reader, self._writer = await asyncio.open_connection(sock=self._channel)
            self._reading = asyncio.create_task(self._read(reader))
        return self._writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Hand each answer to the start waiting for it, and each replacement to the registry."""
        while line := await reader.readline():
            message: dict[str, Any] = orjson.loads(line)
            if "replace" in message:
                self.on_replaced(str(message["replace"]))
            elif "hand_over" in message:
                self.on_handover(str(message["hand_over"]))
            elif self._answer is not None and not self._answer.done():
                self._answer.set_result(message)
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(None)  # the supervisor is gone

    async def take(self, start: Start, now: float) -> None:
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:  # one question at a time: answers come back in order
            writer = await self._open()
            self._answer = asyncio.get_running_loop().create_future()
            if self._reading is not None and self._reading.done():
                self._answer.set_result(None)
            writer.write(orjson.dumps({"take": start.client, "lesson": start.lesson_id, "link": start.link_id,
                                       "taken_over": start.taken_over}) + b"\n")
            refusal = await self._answer
        if refusal is None:
            raise OverCapacity("the replica's supervisor is gone",
                               student_message="The lesson server is restarting. Please try again in a moment.")
        if refusal:
            refused = ResumeNotYet if refusal.get("code") == ResumeNotYet.code else OverCapacity
            raise refused(refusal["detail"], student_message=refusal["student_message"])

    async def request_handover(self, lesson_id: str) -> None:
        writer = await self._open()
        writer.write(orjson.dumps({"hand_over": lesson_id}) + b"\n")

    def give_back(self, start: Start) -> None:
        if self._writer is not None:
            self._writer.write(orjson.dumps({"give_back": start.lesson_id}) + b"\n")

    def close(self) -> None:
        """The worker is done: the supervisor gives back whatever places it still held."""
        if self._writer is not None:
            self._writer.close()
        else:
            self._channel.close()


class PlaceKeeper:
    """The supervisor's side of the workers' channels: the replica's places, and which lessons each worker holds."""

    def __init__(self, places: LocalPlaces) -> None:
        self.places = places
        places.on_replaced = self._tell_replaced
        self._held: dict[int, dict[str, Start]] = {}  # worker → its lessons holding a place, by id
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._served: dict[int, asyncio.Event] = {}

    def serve(self, worker: int, channel: socket.socket) -> asyncio.Task[None]:
        """Answer `worker`'s questions on `channel` until it closes, then give back whatever it held."""
        self._served[worker] = asyncio.Event()
        self._held[worker] = {}
        return asyncio.create_task(self._answer(worker, channel))

    async def _answer(self, worker: int, channel: socket.socket) -> None:
        served = self._served[worker]
        reader, writer = await asyncio.open_connection(sock=channel)
        self._writers[worker] = writer
        try:
            while line := await reader.readline():
                question: dict[str, Any] = orjson.loads(line)
                if "take" in question:
                    link = question.get("link")
                    start = Start(lesson_id=str(question["lesson"]), client=str(question["take"]),
                                  link_id=None if link is None else str(link),
                                  taken_over=question.get("taken_over") is True)
                    writer.write(orjson.dumps(self._take(worker, start)) + b"\n")
                elif "hand_over" in question:
                    self._tell("hand_over", str(question["hand_over"]))
                elif (given := self._held[worker].pop(str(question.get("give_back")), None)) is not None:
                    self.places.give_back(given)
        finally:
            del self._writers[worker]
            for start in self._held.pop(worker).values():
                self.places.give_back(start)
            writer.close()
            served.set()

    async def worker_gone(self, worker: int) -> None:
        """Return once the places of `worker`, whose channel has closed, are given back."""
        await self._served[worker].wait()

    def _take(self, worker: int, start: Start) -> dict[str, str]:
        try:
            self.places.take_now(start, time.monotonic())
        except (OverCapacity, ResumeNotYet) as exc:
            return {"code": exc.code, "detail": exc.detail, "student_message": exc.student_message}
        self._held[worker][start.lesson_id] = start
        return {}

    def _tell_replaced(self, lesson_id: str) -> None:
        """Tell the worker running `lesson_id` to end it: its link started a newer lesson."""
        self._tell("replace", lesson_id)

    def _tell(self, what: str, lesson_id: str) -> None:
        """Tell the worker running `lesson_id` to `replace` (end) it or to `hand_over` it."""
        for worker, lessons in self._held.items():
            if lesson_id in lessons and worker in self._writers:
                self._writers[worker].write(orjson.dumps({what: lesson_id}) + b"\n")


@dataclass
class Worker:
    index: int
    listener: socket.socket
    process: BaseProcess | None = None
    served: asyncio.Task[None] | None = field(default=None, repr=False)


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets bound to the same address with SO_REUSEPORT, so that the kernel spreads connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets


class Supervisor:
    """Starts the workers, keeps the replica's places, replaces a worker that dies, and stops them all."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The workers' metrics live here (prometheus-client's multiprocess mode), so that each worker's
        # /metrics answers for the replica. The variable is read by prometheus-client in each spawned worker.
        self.metrics_dir = tempfile.mkdtemp(prefix="lesson-relay-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        self.keeper = PlaceKeeper(LocalPlaces(settings.max_sessions, settings.lesson_starts_per_minute,
                                              settings.link_starts_per_minute))
        self.workers = [Worker(index, sock) for index, sock in
                        enumerate(listening_sockets(settings.host, settings.port, settings.web_concurrency))]
        self._spawn = multiprocessing.get_context("spawn")
        self._stopping = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        # Once for the replica, here: the workers (and any worker that replaces one) do not log them.
        log_settings_at_start(self.settings,
                              shutdown_worst_case_s=shutdown_worst_case_seconds(self.settings.shutdown_grace_seconds))
        for worker in self.workers:
            await self._start(worker)
        log.info("replica_started", workers=len(self.workers), port=self.settings.port,
                 max_sessions=self.settings.max_sessions)
        watchers = {asyncio.create_task(self._watch(worker)) for worker in self.workers}
        await self._stopping.wait()
        log.info("replica_stopping", workers=len(self.workers))
        for worker in self.workers:
            if worker.process is not None and worker.process.is_alive():
                worker.process.terminate()  # SIGTERM: the worker drains its lessons
        grace_s = shutdown_worst_case_seconds(self.settings.shutdown_grace_seconds) + STOP_MARGIN_S
        _, late = await asyncio.wait(watchers, timeout=grace_s)
        for worker in self.workers:
            if worker.process is not None and worker.process.is_alive():
                worker.process.kill()
        await asyncio.gather(*late, return_exceptions=True)
        exit_codes = [worker.process.exitcode for worker in self.workers if worker.process is not None]
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        log.info("replica_stopped", exit_codes=exit_codes)
        return 0 if all(code == 0 for code in exit_codes) else 1

    async def _start(self, worker: Worker) -> None:
        if worker.listener.fileno() == -1:
            [worker.listener] = listening_sockets(self.settings.host, self.settings.port, 1)
        ours, theirs = socket.socketpair()
        process = self._spawn.Process(target=run_worker, name=f"lesson-relay-worker-{worker.index}",
                                      args=(worker.index, worker.listener, theirs, self.metrics_dir), daemon=False)
        process.start()
        theirs.close()
        worker.process = process
        worker.served = self.keeper.serve(worker.index, ours)

    async def _watch(self, worker: Worker) -> None:
        """Wait for the worker to exit; replace it unless the replica is stopping (after a pause when its start
        failed)."""
        loop = asyncio.get_running_loop()
        pause_s = 0.0
        while True:
            process = worker.process
            assert process is not None
            exited = asyncio.Event()
            loop.add_reader(process.sentinel, exited.set)
            try:
                await exited.wait()
            finally:
                loop.remove_reader(process.sentinel)
            process.join()
            await self.keeper.worker_gone(worker.index)
            if process.pid is not None:
                multiprocess.mark_process_dead(process.pid, self.metrics_dir)  # its open lessons are gone
            if self._stopping.is_set():
                return
            if process.exitcode == START_FAILED_EXIT_CODE:
                pause_s = min(max(pause_s * 2, FIRST_RESTART_PAUSE_S), LONGEST_RESTART_PAUSE_S)
                # The kernel would go on giving its socket a share of new connections, for nobody to accept during
                # the pause: closed, they go to the workers that serve; the next start binds a new one.
                worker.listener.close()
            else:
                pause_s = 0.0
            log.error("worker_exited", worker=worker.index, exit_code=process.exitcode, restarting=True,
                      start_failed=process.exitcode == START_FAILED_EXIT_CODE, restart_in_s=pause_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause_s):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            await self._start(worker)


def run_replica(settings: Settings) -> int:
    """Serve the app with `settings.web_concurrency` workers until SIGTERM; the exit status."""
    configure_logging(settings)
    return asyncio.run(Supervisor(settings).run())


def run_worker(index: int, listener: socket.socket, channel: socket.socket, metrics_dir: str) -> None:
    """One worker: the app on `listener`, asking the supervisor over `channel` for lesson places, its metrics
    kept in `metrics_dir` with the other workers'."""
    settings = load_settings()
    structlog.contextvars.bind_contextvars(worker=index, pid=os.getpid())
    app = create_app(settings, places=SupervisorPlaces(channel), metrics_dir=metrics_dir,
                     logs_settings_at_start=False)
    # uvicorn drains on either signal, then raises it again for these handlers: exit 0 after a clean drain.
    # (Ctrl+C in a terminal reaches the workers directly as well as through the supervisor.)
    signal.signal(signal.SIGINT, exit_cleanly)
    signal.signal(signal.SIGTERM, exit_cleanly)
    DrainingServer(server_config(app, settings), grace_s=settings.shutdown_grace_seconds).run(sockets=[listener])
