"""Summarise what `bench/gc_pauses/sitecustomize.py` recorded: per process, its collections by generation
(how many, their total and longest pause) and each full collection with the time it ended."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def summary(record: dict[str, Any]) -> str:
    collections = record["collections"]
    lines = [f"{' '.join(record['argv'])}  (objects frozen: {record['frozen']})"]
    for generation in (0, 1, 2):
        pauses = [seconds for gen, _, seconds in collections if gen == generation]
        lines.append(f"  generation {generation}: {len(pauses):5d} collections, {sum(pauses) * 1000:8.1f} ms in all, "
                     f"longest {max(pauses, default=0) * 1000:6.2f} ms")
    full = [f"{time.strftime('%H:%M:%S', time.gmtime(ended))} {seconds * 1000:.1f} ms"
            for gen, ended, seconds in collections if gen == 2]
    lines.append("  full collections (UTC, when each ended): " + (", ".join(full) or "none"))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gc_pauses", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="the GC_PAUSES_DIR the processes wrote to")
    arguments = parser.parse_args(argv)
    for path in sorted(arguments.directory.glob("*.json")):
        print(summary(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
