"""``bms demo``: the README's main job.

Starts an emulated 23-cell solid-state stack on a pty, runs the BMS against it through a built-in
scenario (fast charge, rest, city driving; a soft short and a contact loss injected partway) in
the sim clock with a live view, then reports what the BMS got right: SOC error against the
emulator's ground truth, each injected fault with its detection latency, the contactor actions,
and where the log and the plot are.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bms.app.emulators import start_emulator
from bms.app.errors import Parser, UsageError, positive_seconds
from bms.app.evaluate import evaluate
from bms.app.preflight import preflight
from bms.app.run import LiveView, claim_log, default_log_dir, exit_code, record_failure
from bms.controller import Controller
from bms.runlog import release_log_dir
from boards.config import load_pack
from hil.emulator.scenario import load_scenario

DEMO_DURATION_S = 5400.0


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="bms demo",
        description="Run the BMS against an emulated 23-cell solid-state stack (sim clock) "
        "through a built-in scenario and report SOC accuracy and fault detection.",
        epilog="examples:\n  bms demo\n  bms demo --duration 1800 --seed 3 --log runs/demo1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="ssb-23", help="pack file (one stack) or built-in name")
    ap.add_argument("--scenario", default="demo", help="scenario name or file")
    ap.add_argument("--duration", type=positive_seconds, default=DEMO_DURATION_S,
                    help=f"simulated seconds, > 0 (default {DEMO_DURATION_S:.0f})")
    ap.add_argument("--seed", type=int, default=1, help="emulator seed (default 1)")
    ap.add_argument("--log", type=Path, default=None,
                    help="log folder (default runs/demo-TIME); the emulator's truth goes "
                    "beside it, in LOG.truth/")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    ap.add_argument("--quiet", action="store_true", help="no live view")
    return ap


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    pack = load_pack(args.pack)
    if len(pack.stacks) != 1:
        raise UsageError(f"--pack {args.pack}: the demo runs one stack; pack {pack.name} has "
                         f"{len(pack.stacks)}",
                         f"use 'bms run --pack {args.pack}' for multi-stack packs")
    preflight(pack)
    scenario = load_scenario(args.scenario)
    log_dir = args.log or default_log_dir("demo")
    claim_log(log_dir)
    try:
        return _demo(args, pack, scenario, log_dir)
    finally:
        release_log_dir(log_dir)


def _demo(args: argparse.Namespace, pack: Any, scenario: Any, log_dir: Path) -> int:
    # The emulator's truth never goes into the BMS's log folder (its own files, its own disk
    # failures): beside it.
    truth_dir = log_dir.with_name(log_dir.name + ".truth")
    truth_path = truth_dir / "truth.csv"
    truth_every = max(1, int(round(1.0 / pack.controller.tick_s)))
    print(f"bms demo: pack {pack.name} ({pack.n_cells} cells), scenario {scenario.name}, "
          f"{args.duration:.0f} s simulated at {pack.controller.tick_s * 1e3:.0f} ms ticks")
    meta = {"command": "demo", "scenario": scenario.name, "seed": args.seed,
            "truth": str(truth_path)}
    emu = None
    controller = None
    try:
        truth_dir.mkdir(parents=True, exist_ok=True)
        emu = start_emulator(pack, 0, "sim", args.seed, str(scenario.path), truth_path,
                             truth_every)
        print(f"emulated board on {emu.path}")
        controller = Controller(pack, [emu.path], clock="sim", log_dir=log_dir, meta=meta)
        wall0 = time.perf_counter()
        controller.open()
        controller.request_close()
        controller.run(args.duration, on_tick=LiveView(enabled=not args.quiet,
                                                       every_sim_s=600.0))
        wall = time.perf_counter() - wall0
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            record_failure(controller, log_dir, exc, meta)
        if controller is not None:
            controller.close()
        if emu is not None:
            emu.stop()
        raise
    summary = controller.close()
    emu.stop()
    report = evaluate(log_dir, truth_path, scenario, pack.controller.tick_s)
    report["wall_s"] = wall
    report["sim_s"] = summary["time_s"]
    plot_path = None
    if not args.no_plot:
        plot_path = _plot(log_dir)
    print_report(report, summary, log_dir, plot_path, truth_path)
    return exit_code(summary)


def _plot(log_dir: Path) -> Path | None:
    try:
        from bms.app.plot import plot_run
    except ImportError:  # matplotlib missing: the [plot] extra
        return None
    out = log_dir / "run.png"
    plot_run(log_dir, out)
    return out


def print_report(report: dict[str, Any], summary: dict[str, Any], log_dir: Path,
                 plot_path: Path | None, truth_path: Path) -> None:
    wall, sim = report["wall_s"], report["sim_s"]
    print()
    print(f"== bms demo report: {sim:.0f} s simulated in {wall:.1f} s wall "
          f"({sim / wall:.0f}x real time), {summary['ticks']} ticks ==")
    soc = report.get("soc") or {}
    if soc:
        print(f"SOC vs ground truth after {soc['from_s']:.0f} s: RMSE {soc['rmse_pct']:.2f} %, "
              f"max |error| {soc['max_abs_pct']:.2f} %, inside the 3-sigma bound "
              f"{soc['within_3sigma_pct']:.1f} % of {soc['samples']} cell-samples")
    print("injected faults:")
    for d in report["detections"]:
        if d["detected_by"]:
            print(f"  {d['fault']:<18} cell {d['target'] + 1:<3} at {d['at_s']:7.1f} s -> "
                  f"{d['detected_by']} ({d['severity']}) after {d['latency_s']:.1f} s")
            if d["fault_by"]:
                opened = ("" if d["open_latency_s"] is None
                          else f", contactors opened after {d['open_latency_s']:.1f} s")
                print(f"  {'':<18} {'':<8} {'':>10}    {d['fault_by']} ({d['fault_severity']}) "
                      f"after {d['fault_latency_s']:.1f} s{opened}")
        else:
            print(f"  {d['fault']:<18} cell {d['target'] + 1:<3} at {d['at_s']:7.1f} s -> "
                  "NOT DETECTED")
    warnings = report.get("warnings") or []
    print("warnings raised (every one, false or not):" + ("" if warnings else " none"))
    for w in warnings:
        print(f"  {w['name']:<28} {w['where']:<16} first at {w['first_s']:7.1f} s, "
              f"{w['count']} time(s)")
    print("contactor actions:")
    for a in report["contactor_actions"]:
        print(f"  {a['time_s']:8.1f} s  {a['from']:<9} -> {a['to']:<9} {a['reason']}")
    latched = [f for f in summary["faults"] if f["latched"]]
    if latched:
        print("latched faults: " + ", ".join(sorted({f['name'] for f in latched})))
    print(f"log:   {log_dir}/ticks.csv, {log_dir}/events.jsonl, {log_dir}/summary.json")
    print(f"truth: {truth_path}")
    if plot_path:
        print(f"plot:  {plot_path}")
