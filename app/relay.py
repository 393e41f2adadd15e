"""Relay: one lesson's shell, alive as long as the lesson, whichever sockets it has at the moment.

A thin shell around `LessonSession`. The lesson outlives its sockets: its page may leave and come back
(`attach`, a resumed socket replacing any page still attached) and its upstream session is opened, and may be
replaced, when the machine says (`OpenUpstream`). Its tasks run in one TaskGroup: a reader per attached page,
a reader per upstream session, and one per deadline of the machine (on the loop's timer), signal of the
registry (drain, replaced, moved) or withdrawal by the teacher (`withdraw`) when it comes. Each feeds the
machine and carries out the actions it returns, in order, before reading again. A socket's data messages (the
page's frames, the upstream's events) are taken in its socket's callback instead (`_Inbound`): the machine is
stepped and its actions carried out at once, and only when a send must wait does a task finish them, the socket
not read meanwhile. `Record` actions go to the
store's writer without waiting: the audio path never waits for the database. A `Close` action ends the lesson:
the upstream session is closed first, then the page's socket, and the TaskGroup is torn down. Whatever
happens, `finally` closes both, so no upstream session outlives its lesson.

A page that stops reading never holds the lesson: a send that cannot complete within `send_timeout_s` drops
the page's connection (the machine treats it as a page that went away), and closing the page's socket has
the same deadline. The timers therefore fire, and the upstream closes, whatever the page does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from app import messages
from app.actions import NO_ACTIONS, Action, Close, Log, OpenUpstream, ToBrowser, ToBrowserAudio, ToUpstream
from app.admission import AdmittedLesson, LessonSignal
from app.errors import UpstreamClosed, UpstreamError
from app.metrics import LessonMetrics
from app.records import Record, RecordSink
from app.session import LessonSession
from app.transport import PageConnection
from app.upstream import RealtimeClient
from app.withdrawal import Withdrawal

Clock = Callable[[], float]
ConnectUpstream = Callable[[], Awaitable[RealtimeClient]]

# A page replaced by a newer socket of the same lesson is closed with this (private-use) code.
REPLACED_CLOSE_CODE = 4001


class _LessonOver(Exception):
    """Raised by a task once the lesson has been closed, to tear the TaskGroup down."""


def _new_future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


@dataclass(eq=False, slots=True)
class PageSocket:
    """One page socket of a lesson; `done` resolves once the lesson no longer uses it. (A future, not an
    `asyncio.Event`: 150 bytes a socket instead of 860.)"""

    websocket: WebSocket
    connection: PageConnection | None = None
    open: bool = True
    done: asyncio.Future[None] = field(default_factory=_new_future)

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


@dataclass(eq=False, slots=True)
class _Inbound:
    """One socket's data messages, carried out in the order read: at once in the socket's callback while nothing
    waits; once a send must wait, by a task (`finishing`) that also carries out what arrived meanwhile
    (`waiting`), the socket not read until it is done."""

    handle: Callable[[Any, float], Sequence[Action]]
    hold: Callable[[bool], None]
    # None while nothing waits: an idle lesson keeps no deque.
    waiting: deque[Any] | None = None
    finishing: asyncio.Task[None] | None = None

    async def carried_out(self) -> None:
        """Return once every message taken so far has been carried out (or its task has ended)."""
        while (finishing := self.finishing) is not None:
            await asyncio.wait((finishing,))


def _hold_nothing(held: bool) -> None:
    """A page served without `PageConnection`: its pump waits for each message to be carried out instead."""


class Relay:
    """One lesson's shell: owns its upstream session for the lesson's lifetime, and whichever page is attached."""

    def __init__(
        self,
        session: LessonSession,
        *,
        connect_upstream: ConnectUpstream,
        log: structlog.typing.FilteringBoundLogger,
        records: RecordSink,
        metrics: LessonMetrics,
        send_timeout_s: float = 5.0,
        clock: Clock = time.monotonic,
        on_over: Callable[[LessonSession], None] | None = None,
    ) -> None:
        """`on_over`: called with the lesson once it is over, before its sockets are closed."""
        self.session = session
        self.on_over = on_over
        self.connect_upstream = connect_upstream
        self.log = log
        self.records = records
        self.metrics = metrics
        self.send_timeout_s = send_timeout_s
        self.clock = clock
        self.page: PageSocket | None = None
        self.upstream: RealtimeClient | None = None
        self.over = False
        self._tasks: asyncio.TaskGroup | None = None
        self._upstream_closing: set[asyncio.Future[None]] = set()
        # The loop's timer for the machine's earliest deadline (a timer, not a task waiting: 1 KiB a lesson).
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._close_code = 1000
        self._close_reason = ""

    async def run(self, page: PageSocket, admitted: AdmittedLesson, *, replay: bool = False) -> None:
        """Carry the lesson from its first page socket to its end; returns once every socket is closed.
        `admitted` (its place) signals a drain, a newer start of its lesson link or a page resuming it on
        another worker; `replay`: the page asked for the transcript so far (a lesson taken over from
        another instance)."""
        self.page = page
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                await self._carry_out(self.session.begin(self.clock(), replay=replay))
                tasks.create_task(self._pump_page(page))
                admitted.listen(self._signalled)
                # Held open between the lesson's sockets (a page gone for its grace period, an upstream being
                # replaced): only a task ending the lesson (`_LessonOver`) or crashing ends it.
                await _new_future()
        except* _LessonOver:
            pass
        except* Exception as crash:
            await self._end_after_crash(crash)
        finally:
            self.over = True
            if self.on_over is not None:
                self.on_over(self.session)
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            await self._close_all()

    def attach(self, page: PageSocket, *, replay: bool) -> None:
        """A resumed socket of this lesson: it replaces the attached page, if any, and is served until it leaves
        or the lesson ends (`page.done`). `replay`: the page has no transcript (a reload) and gets it all."""
        serving = self._start_task(self._serve_resumed(page, replay))
        if serving is None:
            page.finish()
        else:
            # Cancelled before it first ran (the lesson's last task ended as the page attached), it never took the
            # page: the page is done with all the same, or its socket would wait for the lesson forever.
            serving.add_done_callback(lambda _: page.finish())

    def _start_task(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Run `work` in the lesson's TaskGroup; None (and `work` dropped) once the lesson is ending."""
        if self._tasks is not None and not self.over:
            with contextlib.suppress(RuntimeError):  # the group is being torn down
                return self._tasks.create_task(work)
        work.close()
        return None

    def _signalled(self, signal: LessonSignal) -> None:
        self._start_task(self._carry_out_signal(signal))

    async def _carry_out_signal(self, signal: LessonSignal) -> None:
        session = self.session
        if signal is LessonSignal.SHUTDOWN:
            actions = session.handle_shutdown(self.clock())
        elif signal is LessonSignal.REPLACED:
            actions = session.handle_replaced(self.clock())
        else:
            actions = session.handle_moved(self.clock())
        await self._carry_out(actions)

    def withdraw(self, withdrawal: Withdrawal) -> None:
        """The teacher withdrew the lesson (its link revoked, its student archived or deleted): end it."""
        self._start_task(self._carry_out_withdrawal(withdrawal))

    async def _carry_out_withdrawal(self, withdrawal: Withdrawal) -> None:
        await self._carry_out(self.session.handle_withdrawn(withdrawal, self.clock()))

    async def _serve_resumed(self, page: PageSocket, replay: bool) -> None:
        previous, self.page = self.page, page
        if previous is not None:
            await self._retire(previous)
        await self._carry_out(self.session.handle_page_attached(self.clock(), replay=replay))
        await self._pump_page(page)

    async def _retire(self, page: PageSocket) -> None:
        """The page a newer socket replaced: told in plain words, then closed; it must not come back."""
        page.open = False
        frame = messages.error(code="lesson_resumed_elsewhere", fatal=True,
                               message="This lesson went on in another window or tab.")
        try:
            async with asyncio.timeout(self.send_timeout_s):
                await page.websocket.send_text(orjson.dumps(frame).decode())
                await page.websocket.close(REPLACED_CLOSE_CODE, "resumed_elsewhere")
        except TimeoutError:
            if page.connection is not None:
                page.connection.abort()
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        page.finish()

    async def _end_after_crash(self, crash: ExceptionGroup[Exception]) -> None:
        """A bug raised inside the lesson: log it with its traceback, tell the page, close both sockets 1011."""
        error = crash.exceptions[0] if len(crash.exceptions) == 1 else crash
        self.log.error("lesson_crashed", state=self.session.state.value, exc_info=error)
        # Recorded first: should ending the lesson fail too, `finally` still closes with 1011.
        self._close_code, self._close_reason = 1011, "internal_error"
        with contextlib.suppress(_LessonOver):
            await self._carry_out(self.session.handle_crash(self.clock()))

    # ---- readers ---------------------------------------------------------------------------------

    async def _pump_page(self, page: PageSocket) -> None:
        """The page's disconnect, and what it sent before its messages were delivered to `_take`."""
        connection = page.connection
        inbound = _Inbound(functools.partial(self._page_actions, page),
                           _hold_nothing if connection is None else connection.hold_messages)
        if connection is not None:
            connection.deliver_messages(functools.partial(self._take, inbound))
        try:
            while True:
                try:
                    message = await page.websocket.receive()
                except (WebSocketDisconnect, RuntimeError):
                    message = {"type": "websocket.disconnect"}
                if message["type"] == "websocket.disconnect":
                    await inbound.carried_out()
                    page.open = False
                    page.finish()
                    if self.page is page:
                        # Gone without a goodbye: the machine keeps the lesson for the grace period.
                        self.page = None
                        await self._carry_out(self.session.handle_page_detached(self.clock()))
                    return
                pcm = message.get("bytes")
                self._take(inbound, pcm if pcm is not None else message.get("text") or "")
                await inbound.carried_out()
        finally:
            if connection is not None:
                connection.deliver_messages(None)

    def _page_actions(self, page: PageSocket, message: bytes | str, now: float) -> Sequence[Action]:
        if self.page is not page:
            return NO_ACTIONS  # a replaced page's last frames
        if type(message) is bytes:
            return self.session.handle_browser_audio(message, now)
        return self.session.handle_browser_text(message, now)  # type: ignore[arg-type]

    def _upstream_actions(self, upstream: RealtimeClient, message: bytes, now: float) -> Sequence[Action]:
        if upstream is not self.upstream:
            return NO_ACTIONS  # replaced or closed by the lesson, it is closing: what it still says is not heard
        return self.session.handle_upstream_message(message, now)

    def _take(self, inbound: _Inbound, message: Any) -> None:
        """A socket's data message, in its callback: the machine stepped and its actions carried out at once, or
        from the first send that must wait, by a task; a bug raised here ends the lesson as any task's does."""
        waiting = inbound.waiting
        if waiting is not None:
            waiting.append(message)
            return
        try:
            actions = inbound.handle(message, self.clock())
            done = self._carry_out_now(actions)
        except Exception as exc:
            self._start_task(_reraise(exc))
            return
        if done < len(actions):
            inbound.waiting = deque()
            inbound.hold(True)
            inbound.finishing = self._start_task(self._finish(inbound, actions[done:]))
            if inbound.finishing is None:
                inbound.waiting = None
                inbound.hold(False)

    async def _finish(self, inbound: _Inbound, actions: Sequence[Action]) -> None:
        try:
            await self._carry_out(actions)
            while inbound.waiting:
                message = inbound.waiting.popleft()
                await self._carry_out(inbound.handle(message, self.clock()))
        finally:
            inbound.waiting = None
            inbound.finishing = None
            inbound.hold(False)

    async def _connect_and_pump_upstream(self) -> None:
        session, clock = self.session, self.clock
        connecting_at = clock()
        try:
            upstream = await self.connect_upstream()
        except UpstreamError as exc:
            self.log.error("upstream_connect_failed", error=exc.detail, code=exc.code,
                           status=getattr(exc, "status", None), upstream_code=getattr(exc, "upstream_code", None))
            await self._carry_out(session.handle_upstream_failed(exc.code, exc.student_message, exc.close_code,
                                                                 clock()))
            return
        if self._closing:
            await upstream.close()
            return
        connect_s = clock() - connecting_at
        self.metrics.upstream_connect_seconds.observe(connect_s)
        self.log.info("upstream_connected", connect_s=round(connect_s, 3))
        self.upstream = upstream
        inbound = _Inbound(functools.partial(self._upstream_actions, upstream), upstream.hold_messages)
        upstream.deliver_messages(functools.partial(self._take, inbound))
        try:
            async for message in upstream.messages():  # what was read before delivery began
                self._take(inbound, message)
                del message  # not held while the next is awaited: an idle lesson keeps no server event
                await inbound.carried_out()
        except UpstreamClosed as exc:
            code, reason = exc.received_code, exc.received_reason
        else:
            code, reason = upstream.close_code, upstream.close_reason
        finally:
            upstream.deliver_messages(None)
        await inbound.carried_out()
        if upstream is self.upstream:
            self.upstream = None
            await self._carry_out(session.handle_upstream_closed(code, reason, clock()))

    # ---- the machine's deadlines --------------------------------------------------------------------

    def _arm_deadline_timer(self) -> None:
        """Set the loop's timer for the machine's earliest deadline, replacing the one set before."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        deadline = self.session.next_deadline()
        if deadline is not None and not self.over:
            delay = max(0.0, deadline - self.clock())
            self._deadline_timer = asyncio.get_running_loop().call_later(delay, self._deadline_reached)

    def _deadline_reached(self) -> None:
        self._deadline_timer = None
        self._start_task(self._carry_out_timeouts())

    async def _carry_out_timeouts(self) -> None:
        await self._carry_out(self.session.handle_timeout(self.clock()))
        if self._deadline_timer is None:
            self._arm_deadline_timer()  # a timer that fired before the deadline's clock reading is set again

    # ---- carrying out actions --------------------------------------------------------------------

    async def _carry_out(self, actions: Sequence[Action]) -> None:
        if actions and type(actions[-1]) is Close:
            # The lesson ends: the paid session closes before anything more is sent to the page.
            self._closing = True
            self._close_code, self._close_reason = actions[-1].code, actions[-1].reason
            await self._close_upstream()
        for action in actions:
            if not self._do_now(action):
                await self._do_waiting(action)
        if self.session.deadlines_changed:
            self._arm_deadline_timer()

    def _carry_out_now(self, actions: Sequence[Action]) -> int:
        """`_carry_out` without waiting, in a socket's callback: how many of `actions` were carried out, stopping
        at the first send that would wait and at a `Close` (both left to `_carry_out`)."""
        if actions and type(actions[-1]) is Close:
            return 0
        for done, action in enumerate(actions):
            if not self._do_now(action):
                return done
        if self.session.deadlines_changed:
            self._arm_deadline_timer()
        return len(actions)

    def _do_now(self, action: Action) -> bool:
        """Carry out `action` if it needs no waiting; False, and nothing done, for a send the socket cannot take
        now and for `Close`: those are `_do_waiting`'s."""
        # Audio first: it is nearly all of the traffic.
        if type(action) is ToBrowserAudio:
            return self._send_browser_now(action.pcm)
        if type(action) is ToUpstream:
            upstream = self.upstream
            if upstream is None:
                return True  # none open (being replaced): the machine sends nothing that must arrive then
            try:
                return upstream.send_now(action.payload)
            except UpstreamClosed:
                return True  # its reader sees the close too, and tells the machine once
        if type(action) is ToBrowser:
            return self._send_browser_now(orjson.dumps(action.message).decode())
        if type(action) is Log:
            getattr(self.log, action.level)(action.event, **action.fields)
            self.metrics.observe(action)
        elif type(action) is Record:
            # Never awaited: the writer's queue takes it or counts it dropped.
            self.records.put(action.record)
        elif type(action) is OpenUpstream:
            self._open_upstream()
        else:
            return False
        return True

    async def _do_waiting(self, action: Action) -> None:
        """A send that must wait for its socket, or the lesson's `Close`."""
        if type(action) is ToBrowserAudio:
            await self._send_browser({"type": "websocket.send", "bytes": action.pcm})
        elif type(action) is ToUpstream:
            await self._send_upstream(action.payload)
        elif type(action) is ToBrowser:
            await self._send_browser({"type": "websocket.send", "text": orjson.dumps(action.message).decode()})
        elif type(action) is Close:
            # Recorded first: a task cancelled mid-close still closes with this code in `finally`.
            self._closing = True
            self._close_code, self._close_reason = action.code, action.reason
            await self._close_all()
            raise _LessonOver

    def _send_browser_now(self, message: bytes | str) -> bool:
        """Send to the attached page if its transport takes it without waiting; False when it must be awaited."""
        page = self.page
        if page is None or not page.open:
            return True  # none to send to: as `_send_browser`, nothing more is done
        return page.connection is not None and page.connection.send_now(message)

    def _open_upstream(self) -> None:
        """Let the current upstream session, if any, go (closed in the background) and open a new one."""
        self._let_upstream_go()
        if not self._closing:
            self._start_task(self._connect_and_pump_upstream())

    async def _send_browser(self, frame: dict[str, Any]) -> None:
        """Send one ASGI `websocket.send` frame to the attached page, if any; a page that has gone only stops
        further sends, a page that does not take it within `send_timeout_s` is dropped."""
        page = self.page
        if page is None or not page.open:
            return
        try:
            if page.connection is not None and not page.connection.write_paused:
                await page.websocket.send(frame)  # the transport takes it without waiting
            else:
                async with asyncio.timeout(self.send_timeout_s):
                    await page.websocket.send(frame)
        except TimeoutError:
            self._drop(page)
            if self.page is page:
                self.page = None
                await self._carry_out(self.session.handle_browser_stalled(self.send_timeout_s, self.clock()))
        except (WebSocketDisconnect, RuntimeError, OSError):
            page.open = False

    def _drop(self, page: PageSocket) -> None:
        page.open = False
        if page.connection is not None:
            page.connection.abort()

    async def _send_upstream(self, payload: bytes) -> None:
        upstream = self.upstream
        if upstream is None:
            return  # none open (being replaced): the machine sends nothing that must arrive then
        with contextlib.suppress(UpstreamClosed):
            # Its reader sees the close too, and tells the machine once.
            await upstream.send(payload)

    def _let_upstream_go(self) -> None:
        if self.upstream is not None:
            upstream, self.upstream = self.upstream, None
            self._upstream_closing.add(asyncio.ensure_future(upstream.close()))

    async def _close_upstream(self) -> None:
        """Close the upstream session, once; a caller cancelled while waiting leaves the close running."""
        self._let_upstream_go()
        if self._upstream_closing:
            await asyncio.shield(asyncio.gather(*self._upstream_closing, return_exceptions=True))

    async def _close_all(self) -> None:
        await self._close_upstream()
        page = self.page
        if page is None:
            return
        if page.open and page.websocket.application_state is WebSocketState.CONNECTED:
            page.open = False
            try:
                async with asyncio.timeout(self.send_timeout_s):
                    await page.websocket.close(self._close_code, self._close_reason[:120])
            except TimeoutError:
                self._drop(page)
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass
            else:
                if page.connection is not None:
                    # The page has as long to answer the close frame as it had to take any frame; one closed
                    # for breaking a limit (1008) gets no time: what it still sends is read and dropped.
                    page.connection.close_within(0 if self._close_code == 1008 else self.send_timeout_s)
        page.finish()


async def _reraise(exc: Exception) -> None:
    """A bug raised in a socket's callback, raised again in the lesson's TaskGroup: the lesson ends as after a crash."""
    raise exc
