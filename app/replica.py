"""Several worker processes behind one port, with limits that hold for the whole replica.

`python -m app` with `WEB_CONCURRENCY` = N > 1 runs this supervisor. It binds N listening sockets to the
port with `SO_REUSEPORT` (the kernel spreads new connections over them evenly) and starts N workers,
each serving one socket with uvicorn on its own event loop and core. The supervisor keeps the replica's
lesson places: `MAX_SESSIONS` and `LESSON_STARTS_PER_MINUTE` are counted here, once for all workers, and
a worker asks over its own socket pair before a lesson starts (one round trip per lesson start; nothing
on the audio path). A worker that dies has its places given back (its socket pair closes) and is
replaced. SIGTERM (or SIGINT) is passed to every worker, each drains its own lessons, and the supervisor
exits 0 once all have.

Wire format on a worker's socket pair, one JSON object per line: the worker sends `{"take": client}` and
reads `{}` (a place is held) or `{"detail": …, "student_message": …}` (refused); `{"give_back": true}`
returns a place and has no answer.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

import orjson
import structlog

from app.admission import LocalPlaces
from app.errors import OverCapacity
from app.logging import configure_logging
from app.main import DrainingServer, create_app, exit_cleanly, server_config, shutdown_worst_case_seconds
from app.settings import Settings, load_settings

log = structlog.get_logger("lesson_relay")
# Past a worker's own exit deadline, before it is killed.
STOP_MARGIN_S = 1.0


class SupervisorPlaces:
    """A worker's view of the replica's places: each lesson start asks the supervisor."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock: asyncio.Lock | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(sock=self._channel)
        return self._streams

    async def take(self, client: str, now: float) -> None:
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:  # one question at a time: answers come back in order
            reader, writer = await self._open()
            writer.write(orjson.dumps({"take": client}) + b"\n")
            answer = await reader.readline()
        if not answer:
            raise OverCapacity("the replica's supervisor is gone",
                               student_message="The lesson server is restarting. Please try again in a moment.")
        refusal = orjson.loads(answer)
        if refusal:
            raise OverCapacity(refusal["detail"], student_message=refusal["student_message"])

    def give_back(self) -> None:
        if self._streams is not None:
            self._streams[1].write(b'{"give_back":true}\n')

    def close(self) -> None:
        """The worker is done: the supervisor gives back whatever places it still held."""
        if self._streams is not None:
            self._streams[1].close()
        else:
            self._channel.close()


class PlaceKeeper:
    """The supervisor's side of the workers' channels: the replica's places, and how many each worker holds."""

    def __init__(self, places: LocalPlaces) -> None:
        self.places = places
        self._held: dict[int, int] = {}
        self._served: dict[int, asyncio.Event] = {}

    def serve(self, worker: int, channel: socket.socket) -> asyncio.Task[None]:
        """Answer `worker`'s questions on `channel` until it closes, then give back whatever it held."""
        self._served[worker] = asyncio.Event()
        self._held[worker] = 0
        return asyncio.create_task(self._answer(worker, channel))

    async def _answer(self, worker: int, channel: socket.socket) -> None:
        served = self._served[worker]
        reader, writer = await asyncio.open_connection(sock=channel)
        try:
            while line := await reader.readline():
                question: dict[str, Any] = orjson.loads(line)
                if "take" in question:
                    writer.write(orjson.dumps(self._take(worker, str(question["take"]))) + b"\n")
                elif question.get("give_back") and self._held[worker]:
                    self._held[worker] -= 1
                    self.places.give_back()
        finally:
            for _ in range(self._held.pop(worker)):
                self.places.give_back()
            writer.close()
            served.set()

    async def worker_gone(self, worker: int) -> None:
        """Return once the places of `worker`, whose channel has closed, are given back."""
        await self._served[worker].wait()

    def _take(self, worker: int, client: str) -> dict[str, str]:
        try:
            self.places.take_now(client, time.monotonic())
        except OverCapacity as exc:
            return {"detail": exc.detail, "student_message": exc.student_message}
        self._held[worker] += 1
        return {}


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
        self.keeper = PlaceKeeper(LocalPlaces(settings.max_sessions, settings.lesson_starts_per_minute))
        self.workers = [Worker(index, sock) for index, sock in
                        enumerate(listening_sockets(settings.host, settings.port, settings.web_concurrency))]
        self._spawn = multiprocessing.get_context("spawn")
        self._stopping = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
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
        log.info("replica_stopped", exit_codes=exit_codes)
        return 0 if all(code == 0 for code in exit_codes) else 1

    async def _start(self, worker: Worker) -> None:
        ours, theirs = socket.socketpair()
        process = self._spawn.Process(target=run_worker, name=f"lesson-relay-worker-{worker.index}",
                                      args=(worker.index, worker.listener, theirs), daemon=False)
        process.start()
        theirs.close()
        worker.process = process
        worker.served = self.keeper.serve(worker.index, ours)

    async def _watch(self, worker: Worker) -> None:
        """Wait for the worker to exit; replace it unless the replica is stopping."""
        loop = asyncio.get_running_loop()
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
            if self._stopping.is_set():
                return
            log.error("worker_exited", worker=worker.index, exit_code=process.exitcode, restarting=True)
            await self._start(worker)


def run_replica(settings: Settings) -> int:
    """Serve the app with `settings.web_concurrency` workers until SIGTERM; the exit status."""
    configure_logging(settings)
    return asyncio.run(Supervisor(settings).run())


def run_worker(index: int, listener: socket.socket, channel: socket.socket) -> None:
    """One worker: the app on `listener`, asking the supervisor over `channel` for lesson places."""
    settings = load_settings()
    structlog.contextvars.bind_contextvars(worker=index, pid=os.getpid())
    app = create_app(settings, places=SupervisorPlaces(channel))
    # uvicorn drains on either signal, then raises it again for these handlers: exit 0 after a clean drain.
    # (Ctrl+C in a terminal reaches the workers directly as well as through the supervisor.)
    signal.signal(signal.SIGINT, exit_cleanly)
    signal.signal(signal.SIGTERM, exit_cleanly)
    DrainingServer(server_config(app, settings), grace_s=settings.shutdown_grace_seconds).run(sockets=[listener])
