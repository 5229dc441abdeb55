"""``bms run``: the BMS against real or emulated boards, one port per stack.

Without ``--port`` it starts one emulated board per stack itself (with ``--scenario``), so
``bms run --pack ssb-4x23`` is the whole HIL loop on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from bms.app.can_bus import check_log_path, open_bus, open_log, parse_spec
from bms.app.emulators import EmulatorProcess, start_emulators
from bms.app.errors import (
    ConfigFileError,
    ExitCode,
    OutputError,
    Parser,
    UsageError,
    fraction,
    positive_seconds,
    record_of,
)
from bms.app.monitor import render
from bms.app.preflight import preflight
from bms.app.realtime import current_policy, request_realtime
from bms.contactors import ContactorState
from bms.controller import Controller
from bms.monitor import MonitorServer, default_socket_path
from bms.runlog import LogDirInUseError, RunLog, claim_log_dir, release_log_dir
from bms.statefile import SavedState, check_writable
from bms.statefile import load as load_state_file
from boards.config import load_pack
from hil.emulator.protocol_emu import SCHEME as EMU_SCHEME
from hil.emulator.protocol_emu import parse_emu_url, register
from hil.emulator.scenario import load_scenario

register()  # `--port emu://PACK?stack=K&...`: an emulated board in this process


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
    ap = Parser(
        prog="bms run",
        description="Run the BMS against boards: real dev boards (--port /dev/ttyACM0), ptys of "
        "'bms emulate', or, without --port, emulated boards it starts itself.",
        epilog="examples:\n"
        "  bms run --pack ssb-23 --port /dev/ttyACM0 --clock real --duration 600\n"
        "  bms run --pack ssb-4x23 --scenario udds --duration 3600      # 4 emulated boards\n"
        "  bms run --port /dev/pts/7 --clock sim --log runs/bench1\n"
        "  bms run --port 'emu://ssb-23?stack=0&seed=1&scenario=udds' --duration 3600\n"
        "  bms run --port /dev/ttyACM0 --clock real --state /var/lib/bms/ssb-23.json\n"
        "  bms run --pack ssb-4x23 --clock real --can socketcan:can0 --can-log runs/can.blf\n"
        "  bms run --clock real --can serial:/dev/pts/9    # then: bms vcu serial:/dev/pts/10\n\n"
        "exit codes: 0 ok, 2 usage, 3 pack file / board profile / scenario / state file, "
        "4 board,\n5 log folder / disk / monitor socket (also: rows or the summary lost), "
        "1 internal error;\nbms --debug run ... prints the traceback (docs/errors.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="ssb-23", help="pack file or built-in name")
    ap.add_argument("--port", action="append", default=[],
                    help="serial device or pyserial URL, once per stack in pack order; "
                    "emu://PACK?stack=K&seed=S&scenario=NAME is an emulated board inside this "
                    "process (sim clock; the keys are bms emulate's options, docs/emulator.md)")
    ap.add_argument("--clock", choices=("sim", "real"), default=None,
                    help="sim: advance boards by each tick (emulators only); real: wall-clock "
                    "deadlines (default: real with --port, sim without or with emu:// ports)")
    ap.add_argument("--realtime", action="store_true",
                    help="SCHED_FIFO for the controller and the emulators it starts (needs root "
                    "or CAP_SYS_NICE; refused otherwise and said so): fewer missed deadlines in "
                    "the real clock")
    ap.add_argument("--lockstep", action="store_true",
                    help="sim clock: send each SAMPLE only after the tick's commands (commands "
                    "act one tick earlier; slower). Default: pipelined (docs/architecture.md)")
    ap.add_argument("--scenario", default=None,
                    help="scenario for the emulators this command starts (needs no --port)")
    ap.add_argument("--seed", type=int, default=None,
                    help="emulator seed (without --port; default 0)")
    ap.add_argument("--soc", type=fraction, default=None,
                    help="emulators' initial SOC 0..1 (without --port)")
    ap.add_argument("--duration", type=positive_seconds, default=600.0,
                    help="run time in s, > 0 (default 600)")
    ap.add_argument("--log", type=Path, default=None,
                    help="log folder (default runs/run-TIME); the run owns it while it runs "
                    "(bms.lock): a second run into it is refused")
    ap.add_argument("--truth-dir", type=Path, default=None, metavar="DIR",
                    help="where the emulators this command starts write their ground truth "
                    "(default: LOG.truth beside the log folder, never inside it)")
    ap.add_argument("--no-close", action="store_true",
                    help="do not ask to close the contactors (monitor only)")
    ap.add_argument("--monitor-socket", default=None,
                    help=f"Unix socket for 'bms monitor' (owner-only; default "
                    f"{default_socket_path()}, or one of this run's own when another run "
                    "serves that one)")
    ap.add_argument("--no-monitor", action="store_true", help="no live-view socket")
    ap.add_argument("--timeout", type=positive_seconds, default=0.25,
                    help="board reply timeout per attempt, s > 0 (default 0.25)")
    ap.add_argument("--quiet", action="store_true", help="no live view on stdout")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--state", type=Path, default=None, metavar="FILE",
                    help="keep the estimator state (SOC, sigma, SOH, leak) and latched faults "
                    "in FILE: restored at start (blended with the OCV by the rest time), "
                    "written every 60 s and on stop, atomically; with the fixture baseline "
                    "`bms commission` recorded in it, used from the first tick. A file that "
                    "cannot be read or is of another pack is refused (exit 3), never "
                    "overwritten")
    ap.add_argument("--can", default=None, metavar="INTERFACE:CHANNEL",
                    help="talk to the vehicle over CAN (python-can backend by name: socketcan, "
                    "pcan, kvaser, slcan, serial, virtual, ...): the frames of "
                    "bms/vehicle/ssb_bms.dbc on their cycles; the vehicle's requests close, "
                    "open and reset (bms run then asks nothing itself); a lost heartbeat "
                    "opens (pack vehicle: section; docs/can.md)")
    ap.add_argument("--can-log", type=Path, default=None, metavar="FILE",
                    help="log every CAN frame sent and received: .blf, .asc (Vector) or .mf4 "
                    "(ASAM MDF4, asammdf)")
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


#: How often summary.json is rewritten during a run (run time): a run killed or stopped by a
#: full disk keeps a summary at most this old.
SUMMARY_PERIOD_S = 60.0


def is_emu(port: str) -> bool:
    """An in-process emulated board (hil/emulator/protocol_emu.py)."""
    return port.lower().startswith(EMU_SCHEME + "://")


def run_clock(args: argparse.Namespace) -> str:
    """--clock, or its default: real for ports (a bench), sim for emulated boards (started
    here, or emu:// ports)."""
    if args.clock:
        return args.clock
    return "real" if args.port and not all(is_emu(p) for p in args.port) else "sim"


def with_truth_dir(port: str, truth_dir: Path) -> str:
    """An emu:// port without a truth option writes its truth into ``truth_dir`` (where the
    emulators bms run starts write theirs: beside the log folder, never in it)."""
    opts = parse_emu_url(port)
    if opts.truth_path is not None:
        return port
    sep = "&" if urlsplit(port).query else "?"
    return f"{port}{sep}{urlencode({'truth-dir': str(truth_dir)})}"


def emu_scenario(ports: list[str]) -> str | None:
    """The scenario the emu:// ports run (as --scenario names it for the emulators bms run
    starts): one name, or the names joined by ',' when the stacks differ; None: none."""
    names = []
    for port in ports:
        if is_emu(port):
            query = dict(parse_qsl(urlsplit(port).query))
            names.append(query.get("scenario") or "")
    if not any(names):
        return None
    return names[0] if len(set(names)) == 1 else ",".join(names)


def check_usage(args: argparse.Namespace, pack: Any) -> None:
    """Options that contradict each other or the pack: UsageError (exit 2)."""
    if args.port:
        for name, value in (("--scenario", args.scenario), ("--soc", args.soc),
                            ("--seed", args.seed), ("--truth-dir", args.truth_dir)):
            if value is not None:
                raise UsageError(f"{name} applies to the emulators bms run starts itself "
                                 "(without --port)",
                                 f"with --port give it to 'bms emulate {name} ...' instead")
        if len(args.port) != len(pack.stacks):
            raise UsageError(f"pack {pack.name} has {len(pack.stacks)} stack(s); give one --port "
                             f"per stack, in pack order (got {len(args.port)})")
        if len(set(args.port)) != len(args.port):
            raise UsageError(f"--port: the same port is given twice ({', '.join(args.port)})")
    clock = run_clock(args)
    emu = [p for p in args.port if is_emu(p)]
    for port in emu:
        parse_emu_url(port)  # EmuUrlError: one line naming the part of the URL (exit 2 or 3)
    if emu and clock != "sim":
        raise UsageError(f"--clock {clock}: {EMU_SCHEME}:// ports serve the sim clock only",
                         "drop --clock real, or run `bms emulate --clock real` and give its "
                         "pty")
    if args.can_log is not None and not args.can:
        raise UsageError("--can-log needs --can INTERFACE:CHANNEL")
    if args.can:
        parse_spec(args.can, "--can")
        check_log_path(args.can_log)
        if clock != "real":
            # The vehicle's heartbeat and cycles run on wall time; a sim-clock run goes
            # hundreds of times faster and would see the vehicle lost at once.
            raise UsageError("--can needs --clock real (the vehicle runs on wall time)",
                             "add --clock real (emulated boards follow it)")
    if args.lockstep and clock != "sim":
        raise UsageError("--lockstep applies to the sim clock only",
                         "drop --lockstep, or pass --clock sim")


def claim_log(log_dir: Path) -> None:
    """Own the log folder (bms.runlog.claim_log_dir) or say why not (exit 5)."""
    try:
        claim_log_dir(log_dir)
    except LogDirInUseError as exc:
        raise OutputError(f"--log {log_dir}: in use by bms run pid {exc.pid}" if exc.pid
                          else f"--log {log_dir}: in use by another process",
                          "give another --log folder, or stop the other run first") from None
    except OSError as exc:
        raise OutputError(f"--log {log_dir}: cannot be the log folder: "
                          f"{exc.strerror or exc}"
                          + (f" ({exc.filename})" if exc.filename else ""),
                          "give a folder that can be created and written (--log DIR)") from None


def _socket_owner(path: Path) -> int | None:
    """The pid serving the Unix socket at ``path`` (0: someone, pid unknown); None: nobody."""
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(0.5)
    try:
        sock.connect(str(path))
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[0]
    except OSError:
        return None  # a stale socket file of a run that ended: free to take over
    finally:
        sock.close()


def open_monitor(args: argparse.Namespace) -> MonitorServer | None:
    """The live-view socket. A socket another run still serves is never taken over: refused
    when given with --monitor-socket (exit 5), else this run serves its own and says where."""
    if args.no_monitor:
        return None
    path = Path(args.monitor_socket) if args.monitor_socket else default_socket_path()
    owner = _socket_owner(path)
    if owner is not None:
        who = f"bms run pid {owner}" if owner else "another process"
        if args.monitor_socket:
            raise OutputError(f"--monitor-socket {path}: served by {who}",
                              "give another --monitor-socket PATH, or --no-monitor")
        own = path.with_name(f"bms-{os.getpid()}.sock")
        print(f"bms run: monitor socket {path} is served by {who}; this run serves {own} "
              f"(bms monitor {own})", file=sys.stderr)
        path = own
    try:
        return MonitorServer(path)
    except OSError as exc:
        raise OutputError(f"--monitor-socket {path}: cannot be made: {exc.strerror or exc}"
                          + (f" ({exc.filename})" if exc.filename else ""),
                          "give a path in a folder you can write, or --no-monitor") from None


class RunWatch:
    """After every tick: the live view (or the --reset-faults step), summary.json every
    SUMMARY_PERIOD_S of run time, and one line on stderr when log rows start or stop being
    dropped (a full disk)."""

    def __init__(self, on_tick: Any, log_dir: Path) -> None:
        self.on_tick = on_tick
        self.log_dir = log_dir
        self.next_summary_s = SUMMARY_PERIOD_S
        self.dropping = False

    def __call__(self, controller: Controller) -> None:
        self.on_tick(controller)
        log = controller.log
        if log is None:
            return
        dropped = log.ticks.dropped
        if not self.dropping and log.ticks.last_error and dropped:
            self.dropping = True
            print(f"\nbms run: log {self.log_dir}: rows dropped from t = {controller.time_s:.1f} s "
                  f"({log.ticks.last_error}); the run goes on", file=sys.stderr, flush=True)
        elif self.dropping and log.ticks.written and not log._dropping:
            self.dropping = False
            print(f"\nbms run: log {self.log_dir}: writing again at t = {controller.time_s:.1f} s "
                  f"after {dropped} dropped row(s)", file=sys.stderr, flush=True)
        if controller.time_s >= self.next_summary_s:
            self.next_summary_s = controller.time_s + SUMMARY_PERIOD_S
            log.submit_summary({"run": controller.summary()})


def final_open(controller: Controller) -> None:
    """Open the contactors through the state machine before the ports close (so the log
    holds the transition and the summary the true final state), at most the opening
    timeout and a few ticks."""
    controller.request_open()
    bound_s = controller.contactors.timing.opening_timeout_s + 5 * controller.tick_s

    def settled() -> bool:
        c = controller.contactors
        return c.outputs == 0 and c.state != ContactorState.OPENING

    controller.run(bound_s, stop=settled)


def record_failure(controller: Controller | None, log_dir: Path, exc: BaseException,
                   meta: dict[str, Any]) -> None:
    """Why the run ended, in events.jsonl and summary.json (a log of its own when the
    controller's was never opened)."""
    rec = record_of(exc).as_dict()
    log = controller.log if controller is not None else None
    if log is not None:
        t = controller.time_s if controller is not None else 0.0
        log.event({"type": "error", "time_s": t, **rec})
        log.note("error", rec)
        return
    try:
        with RunLog(log_dir, ["time_s"], meta=meta) as own:
            own.event({"type": "error", "time_s": 0.0, **rec})
            own.note("error", rec)
    except OSError:
        pass  # the log folder itself is the failure: the console line is all there is


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    pack = load_pack(args.pack)
    check_usage(args, pack)
    preflight(pack)  # every check bms check makes: before any port or emulator
    if args.scenario:
        load_scenario(args.scenario)
    clock = run_clock(args)
    saved = load_state_arg(args.state, pack)
    log_dir = args.log or default_log_dir("run")
    bus = open_bus(args.can) if args.can else None  # before the log: a wrong bus starts nothing
    try:
        claim_log(log_dir)
    except BaseException:
        if bus is not None:
            bus.shutdown()
        raise
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run(args, pack, clock, saved, log_dir, bus)
    finally:
        for sig, handler in handlers.items():  # _run stops on them; a caller gets its own back
            signal.signal(sig, handler)
        if bus is not None:
            bus.shutdown()
        release_log_dir(log_dir)


def vehicle_link(args: argparse.Namespace, pack: Any, bus: Any) -> Any:
    """The vehicle link on the bus (--can), with the CAN log (--can-log); a DBC that does not
    fit this pack is a configuration error naming the frame."""
    from bms.vehicle.codec import DbcError
    from bms.vehicle.link import VehicleLink, VehicleLinkError

    try:
        link = VehicleLink(bus, pack)
    except (DbcError, VehicleLinkError) as exc:
        raise ConfigFileError(str(exc)) from None
    if args.can_log is not None:
        link.can_log = open_log(args.can_log)
    return link


def _run(args: argparse.Namespace, pack: Any, clock: str, saved: SavedState | None,
         log_dir: Path, bus: Any = None) -> int:
    meta = {"command": "run", "scenario": args.scenario or emu_scenario(args.port),
            "pipelined": clock == "sim" and not args.lockstep, "scheduling": current_policy()}
    if args.realtime:
        print(f"bms run: scheduling {request_realtime()}", file=sys.stderr)
    emulators: list[EmulatorProcess] = []
    truth_dir: Path | None = None
    controller: Controller | None = None
    monitor: MonitorServer | None = None
    stop: dict[str, Any] = {"signal": None}
    wall0 = time.perf_counter()

    def _stop(signum: int, frame: object) -> None:
        stop["signal"] = signal.Signals(signum).name

    try:
        monitor = open_monitor(args)
        ports = list(args.port)
        if not ports:
            truth_dir = args.truth_dir or log_dir.with_name(log_dir.name + ".truth")
            truth_dir.mkdir(parents=True, exist_ok=True)
            emulators = start_emulators(pack, clock=clock, seed=args.seed or 0,
                                        scenario=args.scenario, truth_dir=truth_dir,
                                        soc=args.soc)
            ports = [e.path for e in emulators]
            print(f"bms run: {len(emulators)} emulated board(s); their truth in {truth_dir}",
                  file=sys.stderr)
        elif any(is_emu(p) for p in ports):
            truth_dir = args.truth_dir or log_dir.with_name(log_dir.name + ".truth")
            truth_dir.mkdir(parents=True, exist_ok=True)
            ports = [with_truth_dir(p, truth_dir) if is_emu(p) else p for p in ports]
            print(f"bms run: {sum(map(is_emu, ports))} in-process emulated board(s) "
                  f"({EMU_SCHEME}://); their truth in {truth_dir}", file=sys.stderr)
        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        vehicle = vehicle_link(args, pack, bus) if bus is not None else None
        controller = Controller(
            pack, ports, clock=clock, log_dir=log_dir, monitor=monitor, timeout_s=args.timeout,
            pipeline=False if args.lockstep else None,
            meta={**meta, **({"truth_dir": str(truth_dir)} if truth_dir else {})},
            state_path=args.state, saved_state=saved, vehicle=vehicle)
        controller.open()
        if not args.no_close and vehicle is None:  # with --can the vehicle asks
            controller.request_close()
        view = LiveView(enabled=not args.quiet)
        on_tick = ResetOnce(view, not args.no_close) if args.reset_faults else view
        wall0 = time.perf_counter()
        controller.run(args.duration, on_tick=RunWatch(on_tick, log_dir),
                       stop=lambda: stop["signal"] is not None)
        wall = time.perf_counter() - wall0
        if stop["signal"]:
            print(f"\nbms run: {stop['signal']} at t = {controller.time_s:.1f} s: opening the "
                  "contactors and stopping", file=sys.stderr)
        stopped = {"by": stop["signal"] or "duration", "at_s": controller.time_s,
                   "ticks": controller.stats.ticks}
        final_open(controller)
        stopped.update(open_ticks=controller.stats.ticks - stopped["ticks"],
                       state=controller.contactors.state.name,
                       outputs=controller.contactors.outputs)
        if controller.log is not None:
            controller.log.note("stop", stopped)
            controller.log.event({"type": "run", "event": "stop", "time_s": controller.time_s,
                                  **stopped})
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            record_failure(controller, log_dir, exc, meta)
        if controller is not None:
            ran = controller.stats.ticks > 0
            summary = controller.close()
            if ran:  # a run that ended on a failure: what it did, before the error line
                _show(args, summary, log_dir, truth_dir, time.perf_counter() - wall0)
        elif monitor is not None:
            monitor.close()
        for emu in emulators:
            emu.stop()
        raise
    summary = controller.close()
    for emu in emulators:
        emu.stop()
    summary["stop"] = stopped
    _show(args, summary, log_dir, truth_dir, wall)
    return exit_code(summary)


def _show(args: argparse.Namespace, summary: dict[str, Any], log_dir: Path,
          truth_dir: Path | None, wall_s: float) -> None:
    summary["wall_s"] = wall_s
    summary["log_dir"] = str(log_dir)
    if truth_dir is not None:
        summary["truth_dir"] = str(truth_dir)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_summary(summary)


def exit_code(summary: dict[str, Any]) -> int:
    """0, or IO (5) when the log lost rows or events or the final summary (the run itself
    went on: the console said so when it began)."""
    log = summary.get("log", {})
    lost = log.get("dropped_rows", 0) or log.get("dropped_events", 0) or (
        log and not log.get("summary_written", True))
    return ExitCode.IO if lost else ExitCode.OK


def print_summary(summary: dict[str, Any]) -> None:
    wall = summary.get("wall_s", float("nan"))
    t = summary.get("time_s", 0.0)
    stop = summary.get("stop") or {}
    ticks, t = stop.get("ticks", summary["ticks"]), stop.get("at_s", t)
    print(f"ran {ticks} ticks, {t:.1f} s of {summary['clock']} time in {wall:.2f} s "
          f"wall ({t / wall if wall else float('nan'):.0f}x real time); final state "
          f"{summary['state']}" + (f" (stop by {stop['by']} at {stop['at_s']:.1f} s: contactors "
                                   f"opened in {stop['open_ticks']} more tick(s))" if stop
                                   else ""))
    lat = summary.get("tick_latency_ms", {})
    if lat:
        print("tick latency ms: " + ", ".join(f"{k} {v:.3f}" for k, v in lat.items())
              + f"; missed deadlines {summary['missed_deadlines']}")
    faults = summary.get("faults", [])
    if faults:
        print("faults (first time, count, severity, trigger value):")
        for f in faults[:20]:
            where = f" {f['where']}" if f.get("where") else ""
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
    v = summary.get("vehicle")
    if v:
        print(f"vehicle CAN {v['channel']}: {v['rx_frames']} frames in, {v['tx_frames']} out; "
              f"requests {v['requests']} (refused {v['requests_refused']}); invalid: length "
              f"{v['bad_length']}, checksum {v['bad_checksum']}, counter "
              f"{v['bad_counter'] + v['repeated_counter']}; unknown IDs {v['unknown_id']}; "
              f"bus errors {v['bus_errors']}"
              + ("; HEARTBEAT LOST" if v["heartbeat_lost"] else ""))
    state = summary.get("state_file")
    if state:
        print(f"state file {state['path']}: {state['saves']} save(s)"
              + (f"; LAST SAVE FAILED: {state['error']}" if state["error"] else ""))
    log = summary.get("log") or {}
    if log.get("dropped_rows") or log.get("dropped_events"):
        print(f"LOG INCOMPLETE: {log['dropped_rows']} row(s) and {log['dropped_events']} "
              f"event(s) dropped ({log.get('ticks_error') or log.get('events_error')})")
    if log and not log.get("summary_written", True):
        print(f"SUMMARY NOT WRITTEN: {log.get('summary_error')}")
    print(f"log: {summary.get('log_dir')}")
    if summary.get("truth_dir"):
        print(f"truth: {summary['truth_dir']} (the emulators' ground truth)")
