"""Firmware in the loop: the reference firmware's exact ELF on a simulated ATmega2560.

``bms emulate --firmware`` (or ``python -m hil.firmware``) builds ``boards/firmware`` if needed,
starts the simavr harness (``boards/firmware/sim/harness.c``) and prints the pseudo-terminal
path first, like ``bms emulate``. The harness emulates the board's parts at their pins; this
module is the other half: it owns the plant model (:class:`hil.emulator.plant.Plant`, the same
one the Python emulator uses) and answers the harness's exchange requests, stepped in the MCU's
simulated time::

    harness -> bridge   P <t_us> <relay pins> <discharge bits hex> <charge_ma> <discharge_ma>
    bridge -> harness   23 cell, 6 NTC, 4 HX711 counts, current and bus counts (one line)
    harness -> bridge   E ... relay pin changes, S {json} statistics

Clocks: ``sim`` (default) is lockstep, the MCU runs exactly the ``dt_us`` of each SAMPLE (plus
the time it needs to answer), so runs are deterministic; ``real`` runs the MCU continuously,
throttled to ``speed`` x real time (0 = as fast as simavr goes, about 9-10x on a 2-core box).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boards
from boards.config import BoardProfile, ConfigError, PackConfig, load_board, load_pack
from hil.emulator.cli import EXIT_CONFIG, EXIT_IO, EXIT_USAGE
from hil.emulator.cli import _Parser as OneLineParser

FIRMWARE_DIR = Path(boards.__file__).resolve().parent / "firmware"
BUILD_DIR = FIRMWARE_DIR / "build"
ELF_PATH = BUILD_DIR / "firmware.elf"
HARNESS_PATH = BUILD_DIR / "sim" / "fw_harness"
PROFILE_NAME = "mega2560-ltc6811"
MCU = "atmega2560"
F_CPU_HZ = 16_000_000
# Lockstep: the most MCU time one SAMPLE runs (harness.c MAX_SAMPLE_DT_US); a longer dt_us is
# cut to it (the S line's sample_dt_clamped counts them). Assumption, see harness.c.
MAX_SAMPLE_DT_S = 10.0
#: bms/app/errors.py's ExitCode.BOARD (this layer may not import bms; tests/test_cli_errors.py
#: checks that they agree): the emulated board could not be built or did not start.
EXIT_BOARD = 4

__all__ = [
    "FirmwareBoard", "FirmwareStats", "build", "missing_tools", "ELF_PATH", "HARNESS_PATH",
    "MAX_SAMPLE_DT_S", "PROFILE_NAME", "FirmwareStartError", "EXIT_BOARD", "main",
]


class FirmwareStartError(RuntimeError):
    """The firmware or its harness could not be built, or the harness did not start (the
    first line says why; ``detail``: make's or the harness's whole output)."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def missing_tools(fuzz: bool = False) -> list[str]:
    """Debian packages whose tools or headers are absent (empty: everything is there)."""
    need: list[str] = []
    if not shutil.which("make"):
        need.append("make")
    if not shutil.which("avr-gcc"):
        need.append("gcc-avr")
    if not Path("/usr/lib/avr/include/avr/io.h").exists():
        need.append("avr-libc")
    if not Path("/usr/include/simavr/sim_avr.h").exists():
        need += ["libsimavr-dev", "libsimavrparts1"]
    if not any(Path(p).exists() for p in ("/usr/include/libelf.h",
                                          "/usr/include/libelf/libelf.h")):
        need.append("libelf-dev")
    if not shutil.which("pkg-config"):
        need.append("pkg-config")
    if not shutil.which("gcc"):
        need.append("gcc")
    if fuzz:
        if not shutil.which("clang"):
            need.append("clang")
        fuzzer_rt = "llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a"
        if not list(Path("/usr/lib").glob(fuzzer_rt)):
            need.append("libclang-rt-14-dev")
    return need


def build(*targets: str) -> str:
    """``make -C boards/firmware TARGETS`` (default: firmware and harness); returns its output.

    Raises FirmwareStartError (make's last line; its whole output as ``detail``) when the
    build fails.
    """
    cmd = ["make", "-C", str(FIRMWARE_DIR), *(targets or ("firmware", "harness"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        why = _last_line(proc.stderr or proc.stdout)
        raise FirmwareStartError(f"{' '.join(cmd)} failed: {why}", f"{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@dataclass
class FirmwareStats:
    """Latest statistics line of the harness, plus the relay events it reported."""

    latest: dict[str, Any] = field(default_factory=dict)
    relay_events: list[tuple[int, int, int]] = field(default_factory=list)  # t_us, bits, since_hb
    exchanges: int = 0


class FirmwareBoard:
    """The simulated MCU running the firmware, with the plant on its pins.

    Use as a context manager; :attr:`path` is the serial port to open (a pty). ``plant=False``
    runs with the harness's fixed values (no Python plant). ``load`` is a plant
    :class:`~hil.emulator.plant.Load` (default: rest).
    """

    def __init__(self, pack: str | Path | PackConfig = "ssb-23", stack_index: int = 0,
                 seed: int = 0, clock: str = "sim", speed: float = 1.0, plant: bool = True,
                 plant_period_ms: float = 10.0, initial_soc: float = 0.5,
                 temperature_c: float = 25.0, load: Any = None, rebuild: bool = True,
                 elf: str | Path | None = None) -> None:
        if clock not in ("sim", "real"):
            raise ValueError(f"clock must be 'sim' or 'real', got {clock!r}")
        self.pack = pack if isinstance(pack, PackConfig) else load_pack(pack)
        self.profile: BoardProfile = load_board(PROFILE_NAME)
        self.stack_index = stack_index
        self.seed = seed
        self.clock = clock
        self.speed = speed
        self.use_plant = plant
        self.plant_period_ms = plant_period_ms
        self.initial_soc = initial_soc
        self.temperature_c = temperature_c
        self.load = load
        self.rebuild = rebuild
        # None: boards/firmware's own build (made by start()); a path: that ELF as it is
        self.elf = Path(elf) if elf is not None else None
        self.stats = FirmwareStats()
        self.plant: Any = None
        self.path = ""
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stats_cv = threading.Condition(self._lock)
        self._error: BaseException | None = None
        self._stderr: Any = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Build if needed, start the harness, return the pty path (FirmwareStartError: the
        build failed or the harness did not start)."""
        if self.elf is None and (self.rebuild or not (ELF_PATH.exists()
                                                      and HARNESS_PATH.exists())):
            build()
        elif self.elf is not None and (self.rebuild or not HARNESS_PATH.exists()):
            build("harness")
        elf = self.elf if self.elf is not None else ELF_PATH
        if self.use_plant:
            from hil.emulator.plant import Plant

            self.plant = Plant(self.pack, self.stack_index, self.profile, seed=self.seed,
                               initial_soc=self.initial_soc, temperature_c=self.temperature_c)
            if self.load is not None:
                self.plant.set_load(self.load)
        cmd = [str(HARNESS_PATH), "--elf", str(elf), "--mcu", MCU, "--freq", str(F_CPU_HZ),
               "--clock", self.clock, "--speed", repr(float(self.speed))]
        if self.use_plant:
            cmd += ["--plant", "--plant-ms", repr(float(self.plant_period_ms))]
        # stderr to a file: simavr may print warnings, and a full pipe would stall the MCU
        self._stderr = tempfile.TemporaryFile("w+")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, text=True, bufsize=1)
        assert self._proc.stdout is not None  # noqa: S101 (PIPE above)
        line = self._proc.stdout.readline()
        if not line.startswith("PTY "):
            self._proc.wait(timeout=5)
            err = self.stderr_text()
            self.stop()
            raise FirmwareStartError(f"the simavr harness did not start: {_last_line(err)}",
                                     f"{line}\n{err}")
        self.path = line.split(maxsplit=1)[1].strip()
        self._thread = threading.Thread(target=self._bridge, name="fw-plant-bridge", daemon=True)
        self._thread.start()
        return self.path

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass  # the harness is gone: nothing left to flush
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FirmwareBoard:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stderr_text(self) -> str:
        """What the harness wrote on stderr so far (simavr's messages, errors)."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        text = self._stderr.read()
        self._stderr.seek(0, os.SEEK_END)
        return text

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ plant bridge

    def _plant_line(self, t_us: int, relays: int, dcc: int, chg_ma: int, dis_ma: int) -> str:
        p = self.plant
        with self._lock:
            dt_s = t_us * 1e-6 - p.t_s
            o = p.outputs
            chg_a = chg_ma / 1000.0 if chg_ma >= 0 else o.charge_limit_a
            dis_a = dis_ma / 1000.0 if dis_ma >= 0 else o.discharge_limit_a
            want = (bool(relays & 1), bool(relays & 2), bool(relays & 4), dcc, chg_a, dis_a)
            have = (o.contactor_pos, o.contactor_neg, o.precharge, o.balance_mask,
                    o.charge_limit_a, o.discharge_limit_a)
            if want != have:
                p.set_outputs(*want)
            if dt_s > 0:
                p.step(dt_s)
            c = p.sensor_counts()
            self.stats.exchanges += 1
        values = [*c.cell_raw, *c.thermistor_raw, *c.load_cell_raw, c.current_raw,
                  c.bus_voltage_raw]
        return " ".join(str(int(v)) for v in values) + "\n"

    def _bridge(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None and proc.stdin is not None  # noqa: S101
        try:
            for line in proc.stdout:
                kind = line[:1]
                if kind == "P":
                    _, t_us, relays, dcc, chg, dis = line.split()
                    reply = self._plant_line(int(t_us), int(relays), int(dcc, 16), int(chg),
                                             int(dis))
                    proc.stdin.write(reply)
                    proc.stdin.flush()
                elif kind == "S":
                    with self._stats_cv:
                        self.stats.latest = json.loads(line[2:])
                        self._stats_cv.notify_all()
                elif kind == "E":
                    parts = line.split()
                    with self._lock:
                        self.stats.relay_events.append((int(parts[1]), int(parts[3]),
                                                        int(parts[5])))
        except (BrokenPipeError, ValueError, OSError) as exc:
            if self.alive:
                self._error = exc
        finally:
            with self._stats_cv:
                self._stats_cv.notify_all()

    def rx_counters(self, bytes_in: int = 0, timeout_s: float = 5.0) -> dict[str, int]:
        """The harness's count of the host's bytes and frames by the firmware codec's verdict
        (names as :class:`hil.protocol.LinkCounters`), once at least ``bytes_in`` bytes have
        reached the MCU's UART (the harness reports after each burst it delivered).

        Raises TimeoutError when they do not within ``timeout_s`` (or the harness is gone).
        """
        def have() -> bool:
            return self.stats.latest.get("rx", {}).get("bytes_in", -1) >= bytes_in

        with self._stats_cv:
            if not self._stats_cv.wait_for(lambda: have() or not self.alive, timeout_s) \
                    or not have():
                got = self.stats.latest.get("rx", {}).get("bytes_in")
                raise TimeoutError(f"firmware harness: {got} host bytes at the UART after "
                                   f"{timeout_s} s, expected {bytes_in}")
            return dict(self.stats.latest["rx"])

    def final_stats(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Stop the harness and return its last statistics line (written at exit)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=timeout_s)
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        self.stop()
        return dict(self.stats.latest)


def main(argv: Sequence[str] | None = None) -> int:
    """``bms emulate --firmware``: the pty path on stdout, then serve until Ctrl-C. Every
    mistake is one line (bms/app/errors.py's classes: 2 usage, 3 pack, 4 the emulated board
    could not be built or did not start, 5 a file that cannot be read)."""
    ap = OneLineParser(
        prog="bms emulate --firmware",
        description="Serve the reference firmware on a simulated ATmega2560 (simavr) with the "
                    "stack plant on its pins; prints the serial port path first.",
        epilog="examples:\n"
               "  bms emulate --firmware                 # builds boards/firmware, sim clock\n"
               "  bms emulate --firmware --clock real    # for bms run --clock real\n"
               "  bms emulate --firmware --elf my.elf    # another build of the firmware",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--firmware", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pack", default="ssb-23", help="pack file or built-in name (ssb-23)")
    ap.add_argument("--board", type=int, default=0, metavar="N", help="stack index (default 0)")
    ap.add_argument("--clock", choices=("sim", "real"), default="sim",
                    help="sim: lockstep, the MCU runs each SAMPLE's dt; real: free running")
    ap.add_argument("--speed", type=float, default=1.0,
                    help="real clock: x real time (default 1.0; 0 = as fast as possible)")
    ap.add_argument("--seed", type=int, default=0, help="plant seed (default 0)")
    ap.add_argument("--soc", type=float, default=0.5, help="initial mean SOC 0..1")
    ap.add_argument("--no-plant", action="store_true", help="fixed sensor values, no plant")
    ap.add_argument("--elf", type=Path, default=None,
                    help="run this firmware ELF as it is (default: build boards/firmware and "
                         "run its build/firmware.elf)")
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    prog = "bms emulate --firmware"

    def fail(code: int, message: str, hint: str | None = None) -> int:
        print(f"{prog}: {message}" + (f"\n  hint: {hint}" if hint else ""), file=sys.stderr)
        return code

    if not 0.0 <= args.soc <= 1.0:  # NaN fails too
        return fail(EXIT_USAGE, f"--soc {args.soc:g}: allowed 0..1")
    if not (math.isfinite(args.speed) and args.speed >= 0.0):
        return fail(EXIT_USAGE, f"--speed {args.speed:g}: allowed a finite number >= 0 "
                                "(0: as fast as simavr goes)")
    try:
        pack = load_pack(args.pack)
    except ConfigError as exc:
        return fail(EXIT_CONFIG, str(exc))
    if not 0 <= args.board < len(pack.stacks):
        return fail(EXIT_USAGE, f"--board {args.board}: pack {pack.name} has stacks "
                                f"0..{len(pack.stacks) - 1}")
    if args.elf is not None and not args.elf.is_file():
        why = "a folder" if args.elf.is_dir() else "No such file or directory"
        return fail(EXIT_IO, f"--elf {args.elf}: cannot read ({why})",
                    "give the firmware's ELF (make -C boards/firmware firmware builds "
                    "build/firmware.elf)")
    missing = missing_tools()
    if missing:
        return fail(EXIT_BOARD, "cannot build the firmware and its simavr harness: missing "
                                f"Debian packages: {' '.join(missing)}",
                    "run tools/install-sysdeps.sh as root (or apt-get install "
                    f"{' '.join(missing)})")
    board = FirmwareBoard(pack, args.board, seed=args.seed, clock=args.clock,
                          speed=args.speed, plant=not args.no_plant, initial_soc=args.soc,
                          elf=args.elf)
    try:
        board.start()
    except FirmwareStartError as exc:
        return fail(EXIT_BOARD, str(exc), "`make -C boards/firmware firmware harness` shows "
                    "the whole output" if str(exc).startswith("make ") else
                    f"is {args.elf or ELF_PATH} a firmware ELF for the {MCU} (`make -C "
                    "boards/firmware firmware` builds one)?")
    print(board.path, flush=True)
    print(f"bms emulate --firmware: {(args.elf or ELF_PATH).name} on simulated {MCU} @ "
          f"{F_CPU_HZ // 10**6} MHz, clock {args.clock}, profile {PROFILE_NAME}; Ctrl-C to stop",
          file=sys.stderr)
    try:
        while board.alive:
            with board._stats_cv:
                board._stats_cv.wait(timeout=1.0)
    except KeyboardInterrupt:
        pass
    finally:
        stats = board.final_stats()
        if stats:
            print(json.dumps(stats), file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
