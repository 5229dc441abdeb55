"""Whole-tick benchmark: the controller against emulated boards on real ptys.

``sim``: how fast an hour of pack time runs (ticks per second, x real time), per pack.
``real``: 100 Hz (or the pack's tick) against the wall clock: tick-latency percentiles and missed
deadlines. Used by ``bms bench --tick``; figures go in the README and the closing notes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bms.app.emulators import start_emulators
from bms.app.errors import Parser, positive_seconds
from bms.app.realtime import current_policy, request_realtime
from bms.controller import Controller
from boards.config import PackConfig, load_pack
from hil.emulator.protocol_emu import emu_url, register


def run_tick_bench(pack: PackConfig, clock: str, duration_s: float, scenario: str | None,
                   log: bool = True, tick_s: float | None = None,
                   transport: str = "pty") -> dict[str, Any]:
    """Run the BMS for ``duration_s`` of controller time; wall time and latency figures.
    The scheduling policy in force (see bms.app.realtime) is part of the record.
    ``transport``: ``pty`` (emulator processes, as bms run starts them) or ``emu`` (the
    same boards in this process, hil/emulator/protocol_emu.py; sim clock only)."""
    if tick_s is not None:
        pack = replace(pack, controller=replace(pack.controller, tick_s=tick_s))
    if transport == "emu":
        register()
        emulators = []
        # seeds as start_emulators gives them: board k gets 1 + k
        ports = [emu_url(pack.path, k, seed=1 + k, scenario=scenario)
                 for k in range(len(pack.stacks))]
    else:
        emulators = start_emulators(pack, clock=clock, seed=1, scenario=scenario)
        ports = [e.path for e in emulators]
    with tempfile.TemporaryDirectory(prefix="bms-bench-") as tmp:
        controller = Controller(pack, ports, clock=clock,
                                log_dir=Path(tmp) if log else None)
        try:
            controller.open()
            controller.request_close()
            wall0, cpu0 = time.perf_counter(), time.process_time()
            controller.run(duration_s)
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
        finally:
            summary = controller.close()
            for e in emulators:
                e.stop()
    ticks = summary["ticks"]
    return {
        "pack": pack.name, "transport": transport, "clock": clock, "n_cells": pack.n_cells,
        "boards": len(pack.stacks), "tick_s": pack.controller.tick_s, "ticks": ticks,
        "sim_s": summary["time_s"], "wall_s": wall,
        # this process's CPU: the controller (and with emu the boards too; not the pty
        # emulator's process). On a shared machine wall time also counts other jobs.
        "cpu_s": cpu,
        "ticks_per_s": ticks / wall if wall > 0 else float("nan"),
        "x_real_time": summary["time_s"] / wall if wall > 0 else float("nan"),
        "us_per_tick": 1e6 * wall / ticks if ticks else float("nan"),
        "tick_latency_ms": summary["tick_latency_ms"],
        "missed_deadlines": summary["missed_deadlines"],
        "final_state": summary["state"],
        "logged": log,
        "scheduling": current_policy(),
    }


def main(argv: list[str]) -> int:
    ap = Parser(
        prog="bms bench --tick",
        description="Time the whole control tick against emulated boards over ptys.",
        epilog="examples:\n  bms bench --tick                       # both packs, 1 h sim\n"
        "  bms bench --tick --clock real --duration 600 --tick-s 0.01 [--realtime]\n"
        "  bms bench --tick --pack ssb-23 --duration 600 --json\n"
        "  bms bench --tick --transport both --repeat 3   # emu:// against ptys",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", action="append", default=[],
                    help="pack(s) to run (default: ssb-23 and ssb-4x23)")
    ap.add_argument("--clock", choices=("sim", "real"), default="sim")
    ap.add_argument("--duration", type=positive_seconds, default=None,
                    help="controller seconds (default: 3600 sim, 60 real)")
    ap.add_argument("--tick-s", type=positive_seconds, default=None,
                    help="override the pack's tick (e.g. 0.01 for 100 Hz)")
    ap.add_argument("--scenario", default="udds", help="emulator scenario (default udds)")
    ap.add_argument("--no-log", action="store_true", help="run without the run log")
    ap.add_argument("--realtime", action="store_true",
                    help="SCHED_FIFO for the controller and its emulators (root or "
                    "CAP_SYS_NICE; see bms/app/realtime.py)")
    ap.add_argument("--transport", choices=("pty", "emu", "both"), default="pty",
                    help="pty: emulator processes on ptys (default); emu: the same boards in "
                    "this process (emu://, sim clock); both: each pack on both, interleaved "
                    "--repeat times, with the medians and their ratio")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="runs per pack and transport (the record is the median wall time)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.transport != "pty" and args.clock != "sim":
        ap.error("--transport emu: the in-process board serves the sim clock only")
    if args.repeat < 1:
        ap.error(f"--repeat {args.repeat}: allowed >= 1")
    packs = args.pack or ["ssb-23", "ssb-4x23"]
    duration = args.duration if args.duration is not None else (
        3600.0 if args.clock == "sim" else 60.0)
    if args.realtime:
        print(f"scheduling: {request_realtime()}", flush=True)
    transports = ("emu", "pty") if args.transport == "both" else (args.transport,)
    records = []
    for name in packs:
        pack = load_pack(name)
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in transports}
        for _ in range(args.repeat):  # interleaved: a slow minute of the machine hits both
            for transport in transports:
                runs[transport].append(run_tick_bench(
                    pack, args.clock, duration, args.scenario, log=not args.no_log,
                    tick_s=args.tick_s, transport=transport))
        medians = {}
        for transport, recs in runs.items():
            walls = sorted(r["wall_s"] for r in recs)
            rec = min(recs, key=lambda r: abs(r["wall_s"] - statistics.median(walls)))
            rec["wall_s_runs"] = [round(w, 3) for w in walls]
            rec["cpu_s_runs"] = [round(r["cpu_s"], 3) for r in recs]
            medians[transport] = rec
            records.append(rec)
            if not args.json:
                _print(rec)
        if len(medians) == 2 and not args.json:
            print(f"{pack.name:<9} pty / emu wall time (medians of {args.repeat}): "
                  f"{medians['pty']['wall_s'] / medians['emu']['wall_s']:.2f}", flush=True)
    if args.json:
        print(json.dumps(records, indent=2))
    return 0


def _print(rec: dict[str, Any]) -> None:
    lat = rec["tick_latency_ms"]
    runs = rec.get("wall_s_runs", [])
    print(f"{rec['pack']:<9} {rec['transport']:<3} {rec['clock']:<4} {rec['boards']} board(s) "
          f"{rec['n_cells']:>3} cells: {rec['ticks']} ticks of {rec['tick_s'] * 1e3:g} ms "
          f"in {rec['wall_s']:.2f} s wall"
          + (f" (median of {', '.join(f'{w:.2f}' for w in runs)})" if len(runs) > 1 else "")
          + f", {rec['cpu_s']:.2f} s CPU here = {rec['ticks_per_s']:.0f} ticks/s, "
          f"{rec['us_per_tick']:.0f} us/tick, {rec['x_real_time']:.0f}x real time; "
          f"tick latency p50 {lat.get('p50', float('nan')):.3f} ms, "
          f"p99 {lat.get('p99', float('nan')):.3f} ms, max "
          f"{lat.get('max', float('nan')):.3f} ms; missed deadlines "
          f"{rec['missed_deadlines']}"
          + (f"; {rec['scheduling']}" if rec["scheduling"].startswith("SCHED") else ""),
          flush=True)


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
