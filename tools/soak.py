"""Fault-free soak of issue 14's targets: ``bms run --scenario soak`` for hours of simulated time,
its warnings and faults, and the RSS of the ``bms run`` process over the run.

    python tools/soak.py --pack ssb-23 --hours 24 [--seed 0] [--state FILE] [--log DIR]
    python tools/soak.py --pack ssb-4x23 --hours 6

Starts ``python -m bms run --pack P --scenario soak --duration H*3600 --quiet --no-monitor
--json`` (sim clock, emulated boards), reads VmRSS of that process from /proc every
``--every`` s of wall time, and at the end prints one line and a markdown row (docs/safety.md
"the soak"): ticks, wall time, warnings, faults (from summary.json), RSS at the first sample
after ``--settle`` s (the boards answered, the log and the core allocated) and at its largest
after that. Exit 1 when a warning or fault was raised or the RSS grew by 1 MB or more (the
targets), 2 when the run itself failed. Long by design: not in the test suite
(tests/test_soak.py runs a few simulated minutes of the scenario).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RSS_GROWTH_LIMIT_KB = 1024  # issue 14: "RSS growth under 1 MB"


def rss_kb(pid: int) -> int | None:
    """VmRSS of ``pid`` in kB (None once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", default="ssb-23")
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--state", type=Path, default=None, help="passed to bms run --state")
    ap.add_argument("--log", type=Path, default=None, help="log folder (default: a new one "
                    "under runs/)")
    ap.add_argument("--every", type=float, default=5.0, help="RSS sample period, wall s")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="wall s before the RSS baseline sample")
    args = ap.parse_args(argv)
    log = args.log or ROOT / "runs" / f"soak-{args.pack}-{time.strftime('%Y%m%dT%H%M%S')}"
    cmd = [sys.executable, "-m", "bms", "run", "--pack", args.pack, "--scenario", "soak",
           "--duration", repr(args.hours * 3600.0), "--seed", str(args.seed), "--log", str(log),
           "--quiet", "--no-monitor", "--json"]
    if args.state is not None:
        cmd += ["--state", str(args.state)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    samples: list[tuple[float, int]] = []
    while proc.poll() is None:
        kb = rss_kb(proc.pid)
        if kb is not None:
            samples.append((time.monotonic() - t0, kb))
        time.sleep(args.every)
    wall_s = time.monotonic() - t0
    err = proc.stderr.read() if proc.stderr else ""
    summary_path = log / "summary.json"
    if proc.returncode != 0 or not summary_path.is_file():
        print(f"soak: bms run exited {proc.returncode}: {err.strip()[-500:]}", file=sys.stderr)
        return 2
    summary = json.loads(summary_path.read_text())
    run = summary["run"]
    stop = summary.get("stop", {})
    if stop.get("by") != "duration":
        print(f"soak: the run stopped by {stop.get('by')} at {stop.get('at_s')} s, not at "
              f"--duration: no soak figures", file=sys.stderr)
        return 2
    warnings = [f for f in run["faults"] if f["severity"] == "warning"]
    faults = [f for f in run["faults"] if f["severity"] != "warning"]
    settled = [kb for t, kb in samples if t >= args.settle]
    base = settled[0] if settled else (samples[-1][1] if samples else 0)
    peak = max(settled) if settled else base
    growth = peak - base
    print(f"soak {args.pack} {args.hours:g} h seed {args.seed}: {run['ticks']} ticks, "
          f"{wall_s:.0f} s wall, {len(warnings)} warning(s), {len(faults)} fault(s) "
          f"{sorted({f['name'] for f in run['faults']})}; RSS {base} kB -> peak {peak} kB "
          f"(+{growth} kB, {len(samples)} samples); log {log}")
    print(f"| {args.pack}, {args.hours:g} h | {run['ticks']:,} | {wall_s:.0f} s | "
          f"{len(warnings)} | {len(faults)} | {base:,} kB -> {peak:,} kB (+{growth}) |")
    return 0 if not run["faults"] and growth < RSS_GROWTH_LIMIT_KB else 1


if __name__ == "__main__":
    raise SystemExit(main())
