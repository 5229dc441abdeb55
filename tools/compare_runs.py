"""Compare two run logs (ticks.csv, events.jsonl) for a no-behaviour-change proof.

    python tools/compare_runs.py RUN_DIR_A RUN_DIR_B

Wall-clock fields (the ``tick_duration_s`` column, events' wall-time keys) and the paths (the
pack file's, the ports, the truth folder or file: a pty run and an ``emu://`` run of the same boards
differ only there) differ between any two runs and are left out; every other byte must agree.
Exit 0 when both files agree, 1 with the first difference named otherwise.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

TIMING_COLUMNS = ("tick_duration_s",)
VOLATILE_EVENT_KEYS = ("pack_file", "wall_s", "wall_time", "started_at", "ports", "truth_dir",
                       "truth")


def _ticks(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    keep = [i for i, c in enumerate(header) if c not in TIMING_COLUMNS]
    return [header[i] for i in keep], [[r[i] for i in keep] for r in rows[1:]]


def _events(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        ev = json.loads(line)
        for k in VOLATILE_EVENT_KEYS:
            ev.pop(k, None)
        out.append(ev)
    return out


def compare(a: Path, b: Path) -> list[str]:
    """The differences between run logs a and b, as lines (empty: identical)."""
    problems = []
    ha, ra = _ticks(a / "ticks.csv")
    hb, rb = _ticks(b / "ticks.csv")
    if ha != hb:
        problems.append("ticks.csv: columns differ")
    elif len(ra) != len(rb):
        problems.append(f"ticks.csv: {len(ra)} rows vs {len(rb)}")
    else:
        for n, (x, y) in enumerate(zip(ra, rb, strict=True), start=2):
            if x != y:
                col = next(ha[i] for i in range(len(x)) if x[i] != y[i])
                problems.append(f"ticks.csv: line {n} differs first in {col}")
                break
    ea, eb = _events(a / "events.jsonl"), _events(b / "events.jsonl")
    if ea != eb:
        n = next((i for i, (x, y) in enumerate(zip(ea, eb, strict=False)) if x != y),
                 min(len(ea), len(eb)))
        problems.append(f"events.jsonl: event {n + 1} differs ({len(ea)} vs {len(eb)} events)")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: compare_runs.py RUN_DIR_A RUN_DIR_B", file=sys.stderr)
        return 2
    problems = compare(Path(args[0]), Path(args[1]))
    for p in problems:
        print(p)
    if not problems:
        print(f"identical ({', '.join(TIMING_COLUMNS)} and volatile event keys aside)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
