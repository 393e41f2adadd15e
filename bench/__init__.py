"""Load and latency bench for the lesson relay (issue 6).

Measures; never asserts. Run it with ``python -m bench --help``; the numbers and how to read them are in
``docs/performance.md``. Modules, in the order the data flows:

    markers.py        the 20 ms PCM16 frames the simulated students send, each stamped with (student, seq)
    students.py       the load generator: direct (Realtime protocol) and browser-protocol students
    naive_relay.py    a deliberately straightforward relay, the baseline the real relay is compared with
    echo_upstream.py  a GA Realtime server that greets, then echoes every appended chunk as an audio delta
    tcp_proxy.py      a byte forwarder: what moving a relay's messages costs when nothing else is done
    callback_relay.py a relay whose audio path runs in the sockets' callbacks: a Python relay's lower bound
    processes.py      the echo upstream and relays as subprocesses, or the app in this process; /proc sampling
    scenarios.py      what one measurement is: ramp, idle, stream, drain; the step search; greeting latency
    report.py         the printed table and the JSON written to bench/results/
    costs.py          each step of a relayed frame timed alone (python -m bench.costs)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import orjson
from websockets.protocol import Protocol

T = TypeVar("T")


def run_on_uvloop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop, the loop uvicorn picks for the relays, or on asyncio's own when it is missing."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def flush(protocol: Protocol, transport: asyncio.Transport | None) -> None:
    """Write what websockets' sans-I/O `protocol` has to send; its end of data closes the socket's sending side
    (or the socket, when the transport cannot half-close)."""
    if transport is None or transport.is_closing():
        return
    for data in protocol.data_to_send():
        if data:
            transport.write(data)
        elif transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()


OpenListener = Callable[[int, int], Awaitable[asyncio.Server]]


async def serve_until_sigterm(open_listener: OpenListener, port: int, upstream_port: int) -> None:
    """Listen (`open_listener(upstream_port, port)`), print ``{"port": N}`` on stdout, serve until SIGTERM."""
    server = await open_listener(upstream_port, port)
    sys.stdout.write(orjson.dumps({"port": server.sockets[0].getsockname()[1]}).decode() + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def listener_main(prog: str, doc: str, open_listener: OpenListener) -> None:
    """The command line of a bench server in front of the echo upstream: ``--upstream-port N [--port P]``."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream-port", type=int, required=True)
    arguments = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        run_on_uvloop(serve_until_sigterm(open_listener, arguments.port, arguments.upstream_port))
