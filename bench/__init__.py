"""Load and latency bench for the lesson relay (issue 6).

Measures; never asserts. Run it with ``python -m bench --help``; the numbers and how to read them are in
``docs/performance.md``. Modules, in the order the data flows:

    markers.py        the 20 ms PCM16 frames the simulated students send, each stamped with (student, seq)
    students.py       the load generator: direct (Realtime protocol) and browser-protocol students
    naive_relay.py    a deliberately straightforward relay, the baseline the real relay is compared with
    echo_upstream.py  a GA Realtime server that greets, then echoes every appended chunk as an audio delta
    tcp_proxy.py      a byte forwarder: what moving a relay's messages costs when nothing else is done
    processes.py      starting the echo upstream and relays as subprocesses; /proc CPU and memory sampling
    scenarios.py      what one measurement is: ramp, idle, stream, drain; the step search; greeting latency
    report.py         the printed table and the JSON written to bench/results/
    costs.py          each step of a relayed frame timed alone (python -m bench.costs)
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_on_uvloop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop, the loop uvicorn picks for the relays, or on asyncio's own when it is missing."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
