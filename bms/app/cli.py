"""The ``bms`` command: one entry point, one module per subcommand.

Each subcommand lives in its own module with a ``main(argv) -> int``; this file only dispatches,
so ``bms --help`` stays fast (nothing heavy is imported until a subcommand runs) and each module
can be run on its own with ``python -m``.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys

from bms.app.errors import ExitCode, report, set_debug

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("bms.app.demo",
             "run the BMS against an emulated 23-cell stack with a built-in scenario"),
    "run": ("bms.app.run", "run the BMS against real or emulated boards (one --port per stack)"),
    "emulate": ("hil.emulator.cli", "serve an emulated board (plant model) on a pseudo-terminal"
                " (--firmware: the reference firmware on a simulated MCU)"),
    "monitor": ("bms.app.monitor", "live read-only view of a running BMS"),
    "bench": ("bms.app.bench", "benchmark the estimation core and the control tick"),
    "plot": ("bms.app.plot", "plot a run log to a PNG"),
    "export": ("bms.app.export", "export a run log to MF4 (asammdf, CANape), Parquet or CSV "
               "with units and comments"),
    "check": ("bms.app.check", "validate a pack file or board profile and print a summary"),
    "commission": ("bms.app.commission", "record each stack's fixture baseline (load-cell "
                   "shares and offsets, preload, stiffness) into a state file for bms run"),
    "replay": ("bms.app.replay", "run recorded measurements (cycler CSV, ticks.csv) through "
               "the estimation core; score against a truth file"),
    "fit": ("bms.app.fit", "fit a cell model (OCV, R0, RC branches) from cycler OCV and HPPC "
            "files into a pack file, with a fit report"),
    "vcu": ("bms.app.vcu", "play the vehicle controller on CAN against bms run --can "
            "(requests, heartbeat, the BMS's frames decoded from the DBC)"),
    "campaign": ("bms.app.campaign.cli", "fault matrices and Monte-Carlo sweeps of emulated "
                 "packs on a local pool or Dask: one table and a report"),
    "accuracy": ("bms.app.accuracy", "SOC accuracy benchmark on PyBaMM truth: fit each cell "
                 "with bms fit, replay its drive cycles, score against the truth"),
}

USAGE = ("usage: bms [--debug] COMMAND [options]   (bms COMMAND --help for each)\n\ncommands:\n"
         + "\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items())
         + "\n\n--debug: a traceback with each error. Exit codes: 0 ok, 2 usage, 3 pack file / "
         "board profile / scenario / state file / a data file's content, 4 board, 5 a file that "
         "cannot be read or written (data file, log folder, disk, socket), 6 a --check that "
         "failed, 1 internal error: a bug (docs/errors.md)")


#: Set (to anything but 0), every command fails where it starts with an exception no error
#: path knows: how the internal-error path (exit 1, the bug line; the traceback with --debug)
#: is tested on the real entry point (tests/test_cli_errors.py, docs/errors.md).
SELFTEST_ENV = "BMS_SELFTEST_INTERNAL_ERROR"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # `bms --debug COMMAND ...` (or --debug anywhere: no command has an option of that name):
    # tracebacks on the error path (bms/app/errors.py).
    set_debug("--debug" in args or os.environ.get("BMS_DEBUG", "") not in ("", "0"))
    args = [a for a in args if a != "--debug"]
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # stdout closed by the reader (`bms check | head`): not an error of ours, no traceback.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _dispatch(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        print(f"bms: unknown command {name!r}"
              + (f"; did you mean {close[0]!r}?" if close else "")
              + f"\n  hint: one of {', '.join(COMMANDS)}; `bms --help` says what each does",
              file=sys.stderr)
        return ExitCode.USAGE
    target = COMMANDS[name][0]
    if name == "emulate" and "--firmware" in rest:
        # The reference firmware's ELF on a simulated MCU instead of the Python board model.
        target = "hil.firmware"
    module = importlib.import_module(target)
    try:
        if os.environ.get(SELFTEST_ENV, "") not in ("", "0"):
            raise RuntimeError(f"{SELFTEST_ENV} is set: the exit-1 path's self-test")
        return int(module.main(rest) or 0)
    except (KeyboardInterrupt, BrokenPipeError, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - the one error path: a line, a code (errors.py)
        return report(name, exc)


if __name__ == "__main__":
    raise SystemExit(main())
