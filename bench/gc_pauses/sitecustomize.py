"""Records every garbage collection of each Python process started with this directory on PYTHONPATH.

    PYTHONPATH=bench/gc_pauses GC_PAUSES_DIR=/tmp/gc .venv/bin/python -m bench --targets relay --no-sweep
    .venv/bin/python -m bench.gc_pauses /tmp/gc

Without GC_PAUSES_DIR it does nothing. Each process writes `<pid>.json` to that directory every 2 s (its
command line and, per collection, the generation, when it ended and how long it took), from a thread that
only copies what the collector's callback appended. That thread shows in a load run's round trips as a
spike every 2 s: read pauses from such a run, latencies from one without it.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time

_DIRECTORY = os.environ.get("GC_PAUSES_DIR")
_WRITE_EVERY_S = 2.0


def _record() -> None:
    collections: list[tuple[int, float, float]] = []
    started = [0.0]

    def on_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            collections.append((info["generation"], time.time(), time.perf_counter() - started[0]))

    def write() -> None:
        path = os.path.join(str(_DIRECTORY), f"{os.getpid()}.json")
        while True:
            time.sleep(_WRITE_EVERY_S)
            with open(path + ".tmp", "w") as out:
                json.dump({"argv": sys.argv, "frozen": gc.get_freeze_count(), "collections": collections[:]}, out)
            os.replace(path + ".tmp", path)

    gc.callbacks.append(on_collection)
    threading.Thread(target=write, name="gc-pauses", daemon=True).start()


if _DIRECTORY:
    os.makedirs(_DIRECTORY, exist_ok=True)
    _record()
