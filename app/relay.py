"""run_relay(): the only place where the page's socket and the upstream session meet.

A thin shell around `LessonSession`: three pumps (page reader, upstream reader, timer) in one
TaskGroup feed the machine and carry out the actions it returns, in order, before reading again.
`Record` actions go to the store's writer without waiting: the audio path never waits for the database. A
`Close` action ends the lesson: the upstream session is closed first, then the page's socket, and the
TaskGroup is torn down. Whatever happens, `finally` closes both sockets, so no upstream session outlives
its page.

A page that stops reading never holds the lesson: a send that cannot complete within `send_timeout_s`
drops the page's connection and ends the lesson as `browser_stalled`, and closing the page's socket has
the same deadline. The timers therefore fire, and the upstream closes, whatever the page does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from app.actions import Action, Close, Log, ToBrowser, ToBrowserAudio, ToUpstream
from app.errors import UpstreamClosed, UpstreamError
from app.metrics import LessonMetrics
from app.records import Record, RecordSink
from app.session import LessonSession
from app.transport import PageConnection
from app.upstream import RealtimeClient

Clock = Callable[[], float]


class _LessonOver(Exception):
    """Raised by a pump once the lesson has been closed, to tear the TaskGroup down."""


class Relay:
    """One lesson's shell: owns both sockets for the lesson's lifetime."""

    def __init__(
        self,
        browser: WebSocket,
        session: LessonSession,
        *,
        log: structlog.typing.FilteringBoundLogger,
        records: RecordSink,
        metrics: LessonMetrics,
        page: PageConnection | None = None,
        send_timeout_s: float = 5.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.browser = browser
        self.session = session
        self.log = log
        self.records = records
        # The page's connection beneath ASGI, to drop it when it stalls; None when served without the guards.
        self.page = page
        self.send_timeout_s = send_timeout_s
        self.metrics = metrics
        self.clock = clock
        self.upstream: RealtimeClient | None = None
        self._upstream_closing: asyncio.Future[None] | None = None
        self._timer_wake = asyncio.Event()
        self._browser_open = True
        self._closing = False
        self._close_code = 1000
        self._close_reason = ""

    async def run(self, connect_upstream: Callable[[], Awaitable[RealtimeClient]], shutdown: asyncio.Event,
                  replaced: asyncio.Event | None = None) -> None:
        """Carry the lesson from the accepted page socket to its end; returns once both sockets are closed.
        `shutdown` ends it for a drain, `replaced` when its lesson link started another lesson."""
        try:
            await self._carry_out(self.session.begin(self.clock()))
            connecting_at = self.clock()
            try:
                upstream = self.upstream = await connect_upstream()
            except UpstreamError as exc:
                self.log.error("upstream_connect_failed", error=exc.detail, code=exc.code,
                               status=getattr(exc, "status", None), upstream_code=getattr(exc, "upstream_code", None))
                await self._carry_out(self.session.handle_upstream_failed(
                    exc.code, exc.student_message, exc.close_code, self.clock()))
                return
            connect_s = self.clock() - connecting_at
            self.metrics.upstream_connect_seconds.observe(connect_s)
            self.log.info("upstream_connected", connect_s=round(connect_s, 3))
            async with asyncio.TaskGroup() as pumps:
                pumps.create_task(self._pump_browser())
                pumps.create_task(self._pump_upstream(upstream))
                pumps.create_task(self._pump_timers())
                pumps.create_task(self._watch_shutdown(shutdown))
                if replaced is not None:
                    pumps.create_task(self._watch_replaced(replaced))
        except* _LessonOver:
            pass
        except* Exception as crash:
            await self._end_after_crash(crash)
        finally:
            await self._close_both()

    async def _end_after_crash(self, crash: ExceptionGroup[Exception]) -> None:
        """A bug raised inside the lesson: log it with its traceback, tell the page, close both sockets 1011."""
        error = crash.exceptions[0] if len(crash.exceptions) == 1 else crash
        self.log.error("lesson_crashed", state=self.session.state.value, exc_info=error)
        # Recorded first: should ending the lesson fail too, `finally` still closes with 1011.
        self._close_code, self._close_reason = 1011, "internal_error"
        with contextlib.suppress(_LessonOver):
            await self._carry_out(self.session.handle_crash(self.clock()))

    async def _pump_browser(self) -> None:
        session, clock = self.session, self.clock
        while True:
            try:
                message = await self.browser.receive()
            except (WebSocketDisconnect, RuntimeError):
                message = {"type": "websocket.disconnect"}
            if message["type"] == "websocket.disconnect":
                self._browser_open = False
                await self._carry_out(session.handle_browser_closed(clock()))
                if not self._closing:
                    raise _LessonOver
                # The lesson was already ending (the page was dropped for stalling): the pump carrying out
                # its `Close` logs the end and tears the lesson down; cancelling it here would lose that.
                return
            pcm = message.get("bytes")
            if pcm is not None:
                await self._carry_out(session.handle_browser_audio(pcm, clock()))
            else:
                await self._carry_out(session.handle_browser_text(message.get("text") or "", clock()))

    async def _pump_upstream(self, upstream: RealtimeClient) -> None:
        session, clock = self.session, self.clock
        try:
            async for message in upstream.messages():
                await self._carry_out(session.handle_upstream_message(message, clock()))
        except UpstreamClosed as exc:
            await self._carry_out(session.handle_upstream_closed(exc.received_code, exc.received_reason, clock()))
        else:
            await self._carry_out(session.handle_upstream_closed(upstream.close_code, upstream.close_reason, clock()))
        if not self._closing:
            raise _LessonOver
        # Closed by the lesson's own `Close`: the pump carrying it out ends the lesson once the page is told.

    async def _pump_timers(self) -> None:
        session, wake = self.session, self._timer_wake
        while True:
            wake.clear()
            deadline = session.next_deadline()
            delay = None if deadline is None else deadline - self.clock()
            if delay is None or delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await wake.wait()
                    continue  # deadlines changed: compute the next one
                except TimeoutError:
                    pass
            await self._carry_out(session.handle_timeout(self.clock()))

    async def _watch_shutdown(self, shutdown: asyncio.Event) -> None:
        await shutdown.wait()
        await self._carry_out(self.session.handle_shutdown(self.clock()))

    async def _watch_replaced(self, replaced: asyncio.Event) -> None:
        await replaced.wait()
        await self._carry_out(self.session.handle_replaced(self.clock()))

    async def _carry_out(self, actions: Sequence[Action]) -> None:
        if actions and type(actions[-1]) is Close:
            # The lesson ends: the paid session closes before anything more is sent to the page.
            self._closing = True
            self._close_code, self._close_reason = actions[-1].code, actions[-1].reason
            await self._close_upstream()
        for action in actions:
            # Audio first: it is nearly all of the traffic.
            if type(action) is ToBrowserAudio:
                await self._send_browser({"type": "websocket.send", "bytes": action.pcm})
            elif type(action) is ToUpstream:
                await self._send_upstream(action.payload)
            elif type(action) is ToBrowser:
                await self._send_browser({"type": "websocket.send", "text": orjson.dumps(action.message).decode()})
            elif type(action) is Log:
                getattr(self.log, action.level)(action.event, **action.fields)
                self.metrics.observe(action)
            elif type(action) is Record:
                # Never awaited: the writer's queue takes it or counts it dropped.
                self.records.put(action.record)
            elif type(action) is Close:
                # Recorded first: a pump cancelled mid-close still closes with this code in `finally`.
                self._closing = True
                self._close_code, self._close_reason = action.code, action.reason
                await self._close_both()
                raise _LessonOver
        if self.session.deadlines_changed:
            self._timer_wake.set()

    async def _send_browser(self, frame: dict[str, Any]) -> None:
        """Send one ASGI `websocket.send` frame; a page that has gone away only stops further sends, a page
        that does not take it within `send_timeout_s` is dropped and the lesson ends."""
        if not self._browser_open:
            return
        try:
            if self.page is not None and not self.page.write_paused:
                await self.browser.send(frame)  # the transport takes it without waiting
            else:
                async with asyncio.timeout(self.send_timeout_s):
                    await self.browser.send(frame)
        except TimeoutError:
            self._drop_page()
            await self._carry_out(self.session.handle_browser_stalled(self.send_timeout_s, self.clock()))
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._browser_open = False

    def _drop_page(self) -> None:
        self._browser_open = False
        if self.page is not None:
            self.page.abort()

    async def _send_upstream(self, payload: bytes) -> None:
        if self.upstream is None:
            return
        try:
            await self.upstream.send(payload)
        except UpstreamClosed as exc:
            await self._carry_out(self.session.handle_upstream_closed(exc.received_code, exc.received_reason,
                                                                      self.clock()))

    async def _close_upstream(self) -> None:
        """Close the upstream session, once; a caller cancelled while waiting leaves the close running."""
        if self.upstream is not None:
            upstream, self.upstream = self.upstream, None
            self._upstream_closing = asyncio.ensure_future(upstream.close())
        if self._upstream_closing is not None:
            await asyncio.shield(self._upstream_closing)

    async def _close_both(self) -> None:
        await self._close_upstream()
        if self._browser_open and self.browser.application_state is WebSocketState.CONNECTED:
            self._browser_open = False
            try:
                async with asyncio.timeout(self.send_timeout_s):
                    await self.browser.close(self._close_code, self._close_reason[:120])
            except TimeoutError:
                self._drop_page()
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass
            else:
                if self.page is not None:
                    # The page has as long to answer the close frame as it had to take any frame.
                    self.page.close_within(self.send_timeout_s)

