"""``bms run``: the BMS against real or emulated boards, one port per stack.

Without ``--port`` it starts one emulated board per stack itself (with ``--scenario``), so
``bms run --pack ssb-4x23`` is the whole HIL loop on one machine.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bms.app.emulators import EmulatorProcess, start_emulators
from bms.app.monitor import render
from bms.app.realtime import current_policy, request_realtime
from bms.controller import Controller
from bms.monitor import MonitorServer, default_socket_path
from bms.statefile import SavedState, StateFileError, check_writable
from bms.statefile import load as load_state_file
from boards.config import load_pack


class LiveView:
    """Redraws the snapshot in place on a terminal; on a pipe, prints a line now and then."""

    def __init__(self, every_wall_s: float = 0.25, every_sim_s: float = 300.0,
                 enabled: bool = True) -> None:
        self.tty = sys.stdout.isatty()
        self.every_wall_s = every_wall_s
        self.every_sim_s = every_sim_s
        self.enabled = enabled
        self._last_wall = 0.0
        self._last_sim = -1e18
        self._lines = 0

    def __call__(self, controller: Controller) -> None:
        if not self.enabled:
            return
        if self.tty:
            now = time.monotonic()
            if now - self._last_wall < self.every_wall_s:
                return
            self._last_wall = now
            text = render(controller.snapshot())
            if self._lines:
                sys.stdout.write(f"\x1b[{self._lines}F\x1b[J")
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            self._lines = text.count("\n") + 1
        elif controller.time_s - self._last_sim >= self.every_sim_s:
            self._last_sim = controller.time_s
            print(render(controller.snapshot()).splitlines()[0], flush=True)


def default_log_dir(prefix: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path("runs") / f"{prefix}-{stamp}"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bms run",
        description="Run the BMS against boards: real dev boards (--port /dev/ttyACM0), ptys of "
        "'bms emulate', or, without --port, emulated boards it starts itself.",
        epilog="examples:\n"
        "  bms run --pack ssb-23 --port /dev/ttyACM0 --clock real --duration 600\n"
        "  bms run --pack ssb-4x23 --scenario udds --duration 3600      # 4 emulated boards\n"
        "  bms run --port /dev/pts/7 --clock sim --log runs/bench1\n"
        "  bms run --port /dev/ttyACM0 --clock real --state /var/lib/bms/ssb-23.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="ssb-23", help="pack file or built-in name")
    ap.add_argument("--port", action="append", default=[],
                    help="serial device or pyserial URL, once per stack in pack order")
    ap.add_argument("--clock", choices=("sim", "real"), default=None,
                    help="sim: advance boards by each tick (emulators only); real: wall-clock "
                    "deadlines (default: real with --port, sim without)")
    ap.add_argument("--realtime", action="store_true",
                    help="SCHED_FIFO for the controller and the emulators it starts (needs root "
                    "or CAP_SYS_NICE; refused otherwise and said so): fewer missed deadlines in "
                    "the real clock")
    ap.add_argument("--lockstep", action="store_true",
                    help="sim clock: send each SAMPLE only after the tick's commands (commands "
                    "act one tick earlier; slower). Default: pipelined (docs/architecture.md)")
    ap.add_argument("--scenario", default=None,
                    help="scenario for the emulators this command starts (needs no --port)")
    ap.add_argument("--seed", type=int, default=0, help="emulator seed (without --port)")
    ap.add_argument("--soc", type=float, default=None, help="emulators' initial SOC 0..1")
    ap.add_argument("--duration", type=float, default=600.0, help="run time in s (default 600)")
    ap.add_argument("--log", type=Path, default=None, help="log directory (default runs/...)")
    ap.add_argument("--no-close", action="store_true",
                    help="do not ask to close the contactors (monitor only)")
    ap.add_argument("--monitor-socket", default=str(default_socket_path()),
                    help="Unix socket for 'bms monitor' (owner-only)")
    ap.add_argument("--no-monitor", action="store_true", help="no live-view socket")
    ap.add_argument("--timeout", type=float, default=0.25,
                    help="board reply timeout per attempt, s (default 0.25)")
    ap.add_argument("--quiet", action="store_true", help="no live view on stdout")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--state", type=Path, default=None, metavar="FILE",
                    help="keep the estimator state (SOC, sigma, SOH, leak) and latched faults "
                    "in FILE: restored at start (blended with the OCV by the rest time), "
                    "written every 60 s and on stop, atomically. A file that cannot be read "
                    "or is of another pack is refused (exit 2), never overwritten")
    ap.add_argument("--reset-faults", action="store_true",
                    help="operator reset of latched faults after the first tick (e.g. those "
                    "restored from --state); refused while a condition is still present")
    return ap


def load_state_arg(path: Path | None, pack: Any) -> SavedState | None:
    """--state FILE: the saved state (None: no file yet, a first run); StateFileError for a
    file that cannot be read or written, so nothing is ever overwritten unread."""
    if path is None:
        return None
    check_writable(path)
    return load_state_file(path, pack)


class ResetOnce:
    """--reset-faults: ask the operator reset after the first tick, then ask to close again
    (a reset never closes by itself)."""

    def __init__(self, view: LiveView, close: bool) -> None:
        self.view, self.close, self.done = view, close, False

    def __call__(self, controller: Controller) -> None:
        if not self.done:
            self.done = True
            accepted = controller.request_reset()
            print(f"bms run: operator reset {'accepted' if accepted else 'refused'}",
                  file=sys.stderr)
            if accepted and self.close:
                controller.request_close()
        self.view(controller)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    pack = load_pack(args.pack)
    if args.port and args.scenario:
        print("bms run: --scenario applies to the emulators bms run starts itself; with --port "
              "give it to 'bms emulate --scenario' instead", file=sys.stderr)
        return 2
    if args.port and len(args.port) != len(pack.stacks):
        print(f"bms run: pack {pack.name} has {len(pack.stacks)} stack(s); give one --port per "
              f"stack (got {len(args.port)})", file=sys.stderr)
        return 2
    clock = args.clock or ("real" if args.port else "sim")
    try:
        saved = load_state_arg(args.state, pack)
    except StateFileError as exc:
        print(f"bms run: {exc}", file=sys.stderr)
        return 2
    if args.lockstep and clock != "sim":
        print("bms run: --lockstep applies to the sim clock only", file=sys.stderr)
        return 2
    if args.realtime:
        print(f"bms run: scheduling {request_realtime()}", file=sys.stderr)
    log_dir = args.log or default_log_dir("run")
    # The emulators write their truth files into it before the controller's run log exists.
    log_dir.mkdir(parents=True, exist_ok=True)
    emulators: list[EmulatorProcess] = []
    ports = list(args.port)
    if not ports:
        emulators = start_emulators(pack, clock=clock, seed=args.seed, scenario=args.scenario,
                                    truth_dir=log_dir, soc=args.soc)
        ports = [e.path for e in emulators]
    monitor = None if args.no_monitor else MonitorServer(args.monitor_socket)
    stop = {"flag": False}

    def _stop(signum: int, frame: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        controller = Controller(
            pack, ports, clock=clock, log_dir=log_dir, monitor=monitor, timeout_s=args.timeout,
            pipeline=False if args.lockstep else None,
            meta={"command": "run", "scenario": args.scenario,
                  "pipelined": clock == "sim" and not args.lockstep,
                  "scheduling": current_policy()},
            state_path=args.state, saved_state=saved)
    except StateFileError as exc:  # a saved state that does not fit this estimator
        for emu in emulators:
            emu.stop()
        print(f"bms run: {exc}", file=sys.stderr)
        return 2
    summary: dict[str, Any] = {}
    try:
        controller.open()
        if not args.no_close:
            controller.request_close()
        view = LiveView(enabled=not args.quiet)
        on_tick = ResetOnce(view, not args.no_close) if args.reset_faults else view
        wall0 = time.perf_counter()
        controller.run(args.duration, on_tick=on_tick, stop=lambda: stop["flag"])
        wall = time.perf_counter() - wall0
    finally:
        summary = controller.close()
        for emu in emulators:
            emu.stop()
    summary["wall_s"] = wall
    summary["log_dir"] = str(log_dir)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_summary(summary)
    return 0


def print_summary(summary: dict[str, Any]) -> None:
    wall = summary.get("wall_s", float("nan"))
    t = summary.get("time_s", 0.0)
    print(f"ran {summary['ticks']} ticks, {t:.1f} s of {summary['clock']} time in {wall:.2f} s "
          f"wall ({t / wall if wall else float('nan'):.0f}x real time); final state "
          f"{summary['state']}")
    lat = summary.get("tick_latency_ms", {})
    if lat:
        print("tick latency ms: " + ", ".join(f"{k} {v:.3f}" for k, v in lat.items())
              + f"; missed deadlines {summary['missed_deadlines']}")
    faults = summary.get("faults", [])
    if faults:
        print("faults (first time, count, severity, trigger value):")
        for f in faults[:20]:
            where = "" if f["stack"] is None else f" stack {f['stack'] + 1}"
            where += "" if f["cell"] is None else f" ch {f['cell'] + 1}"
            value = "" if f["trigger_value"] is None else f" value {f['trigger_value']:.4g}"
            print(f"  {f['code']} {f['name']:<28} {f['first_time_s']:9.1f} s  x{f['count']:<4}"
                  f"{f['severity']:<9}{where}{value}")
        if len(faults) > 20:
            print(f"  ... {len(faults) - 20} more in summary.json")
    for b in summary.get("boards", []):
        link = b.get("link", {})
        print(f"board {b['stack'] + 1} {b['port']}: {b['measurements']} measurements, "
              f"{b['misses']} missed, crc errors {link.get('crc_errors', 0)}, "
              f"timeouts {link.get('timeouts', 0)}" + (f", LOST ({b['lost_reason']})"
                                                       if b["lost"] else ""))
    state = summary.get("state_file")
    if state:
        print(f"state file {state['path']}: {state['saves']} save(s)"
              + (f"; LAST SAVE FAILED: {state['error']}" if state["error"] else ""))
    print(f"log: {summary.get('log_dir')}")
