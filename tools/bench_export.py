"""Time and peak memory of ``bms export`` on a run log and on its first N rows.

    .venv/bin/python tools/bench_export.py RUN_DIR [--rows 6000 36000] [--to mf4 parquet csv]

Each export runs as its own process (``python -m bms export``); its wall time and its peak RSS
(``ru_maxrss`` of the child, from ``os.wait4``) are printed per format and length. The shorter
runs are the first N data rows of RUN_DIR's ticks.csv (with its events.jsonl and summary.json),
so a flat RSS across lengths shows that memory does not grow with the run. The outputs go to a
temporary folder, removed at the end.

Make RUN_DIR once, e.g. an hour of ssb-4x23 (docs/architecture.md "Logs and export"):
    bms run --pack ssb-4x23 --scenario udds --duration 3600 --log /tmp/run-1h --no-monitor --quiet
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _head(run: Path, rows: int, dst: Path) -> int:
    """dst/ = run/ with ticks.csv cut to its first ``rows`` data rows; the rows copied."""
    dst.mkdir()
    for name in ("events.jsonl", "summary.json"):
        if (run / name).exists():
            shutil.copy(run / name, dst / name)
    n = 0
    with open(run / "ticks.csv", "rb") as src, open(dst / "ticks.csv", "wb") as out:
        out.write(src.readline())
        for line in src:
            if n >= rows:
                break
            out.write(line)
            n += 1
    return n


def _export(run: Path, fmt: str, out: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one ``bms export`` process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bms", "export", str(run), "--to", fmt,
                             "-o", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bms export {run} --to {fmt} failed: exit {proc.returncode}")
    return wall, usage.ru_maxrss / 1024.0  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a run's log folder (the longest run to measure)")
    ap.add_argument("--rows", type=int, nargs="+", default=[6000, 36000],
                    help="data rows of each measured length (default 6000 36000: 10 and 60 "
                         "minutes at a 0.1 s tick)")
    ap.add_argument("--to", nargs="+", default=["mf4", "parquet", "csv"],
                    choices=["mf4", "parquet", "csv"])
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        work = Path(tmp)
        print(f"{'format':8} {'rows':>7} {'columns':>7} {'wall s':>7} {'peak RSS MiB':>12} "
              f"{'output MB':>9}")
        for rows in args.rows:
            run = work / f"run-{rows}"
            n = _head(args.run, rows, run)
            with open(run / "ticks.csv", "rb") as fh:
                columns = fh.readline().count(b",") + 1
            for fmt in args.to:
                out = work / f"out-{rows}.{fmt}"
                wall, rss = _export(run, fmt, out)
                size = out.stat().st_size / 1e6
                print(f"{fmt:8} {n:7d} {columns:7d} {wall:7.2f} {rss:12.0f} {size:9.1f}",
                      flush=True)
                out.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
