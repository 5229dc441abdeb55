"""One error path for the ``bms`` command line: exit codes, the one or two lines a user sees,
and what goes into a run's log.

Every command turns a user mistake or a board-side failure into a :class:`CliError` (or raises
one of the known exceptions that :func:`classify` maps), and :func:`report` prints it as::

    bms run: /dev/ttyACM7: cannot open port: [Errno 2] No such file or directory
      hint: is the board plugged in and the name right? `ls /dev/ttyACM* /dev/ttyUSB*`, ...

A traceback is printed only with ``bms --debug ...`` (or ``BMS_DEBUG=1``). The exit code says
the class of the failure (docs/errors.md has the table of the cases and their lines).
"""

from __future__ import annotations

import argparse
import enum
import math
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, NoReturn


class ExitCode(enum.IntEnum):
    """The exit codes of every ``bms`` command (hil/emulator/cli.py repeats USAGE, CONFIG and
    IO: the emulator may not import bms; tests/test_cli_errors.py checks that they agree)."""

    OK = 0
    INTERNAL = 1   # a bug of ours (the traceback with --debug)
    USAGE = 2      # a command-line value: out of range, not a number, options that conflict
    CONFIG = 3     # a file given to the run: pack file, board profile, scenario, state file
    BOARD = 4      # a board (or the emulator started for it) failed: port, handshake, NACK
    IO = 5         # a file the system refuses: a data file that cannot be read, an output
    #                (log folder, monitor socket, -o file) that cannot be written, a full disk
    CHECK_FAILED = 6   # a check asked for on the command line failed (bms accuracy --check)
    INTERRUPTED = 130  # Ctrl-C outside a run (a run stops cleanly on SIGINT/SIGTERM: 0)


class CliError(Exception):
    """A failure the user can act on: ``message`` names the thing (port, file, key, value and
    what is allowed), ``hint`` the likely cause or the fix (optional second line)."""

    code = ExitCode.INTERNAL
    kind = "internal"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(CliError):
    code, kind = ExitCode.USAGE, "usage"


class ConfigFileError(CliError):
    code, kind = ExitCode.CONFIG, "config"


class BoardError(CliError):
    code, kind = ExitCode.BOARD, "board"


class OutputError(CliError):
    """The system refused a file: an output that cannot be written, or (as
    :class:`UnreadableFileError`) an input data file that cannot be read."""

    code, kind = ExitCode.IO, "io"


class DataFileError(CliError, ValueError):
    """A data file given to a command (a recording or cycler test, a truth file, a run log, a
    truth manifest) that was read but cannot be used: a column missing, time not increasing,
    too few samples, not a cell voltage. Exit class config: a file the user gave, like a pack
    file. (A ValueError too: the library callers of recording.py and the fit catch that.)"""

    code, kind = ExitCode.CONFIG, "config"


class UnreadableFileError(DataFileError):
    """A data file the system would not let us read (missing, no permission, a folder where a
    file is expected): exit class I/O. A :class:`DataFileError` too, so that a caller that
    handles a data file's mistakes handles this one."""

    code, kind = ExitCode.IO, "io"


_debug = False  # set by bms/app/cli.py from --debug or BMS_DEBUG=1


def set_debug(on: bool) -> None:
    global _debug
    _debug = on


def debug() -> bool:
    return _debug


# ------------------------------------------------------------------ classification

_BOARD_HINTS: dict[str, str] = {
    # By exception class name: the link and client live in hil (no import of them needed here
    # for the cases that only need a hint).
    "BoardLostError": "is the board plugged in and the name right? `ls /dev/ttyACM* /dev/ttyUSB*`"
                      ", or the pty path that `bms emulate` printed",
    "BoardTimeoutError": "is it a ssb-bms board at 115200 baud (protocol v1), and is it running "
                         "(`bms emulate` still alive, firmware flashed)?",
    "ProtocolVersionError": "update the firmware or this host so that both speak the same "
                            "protocol version (docs/protocol.md)",
    "BoardMismatchError": "the --port order (one per stack, in pack order) or the stack's "
                          "board profile in the pack file (stacks[k].board) is wrong",
    "BoardNackError": "the board refuses commands (a latched fault or a tripped watchdog); "
                      "power-cycle or reset it, then start again",
    "EmulatorStartError": "the emulator's own message is above; `bms emulate` with the same "
                          "options shows it on its own",
}


def classify(exc: BaseException) -> CliError | None:
    """The :class:`CliError` for a known exception (None: a bug, not the user's input)."""
    if isinstance(exc, CliError):
        return exc
    name = type(exc).__name__
    # Imported here: `bms --help` must stay fast, and each is only needed on a failure path.
    from boards.config import ConfigError

    if isinstance(exc, ConfigError):
        return ConfigFileError(f"configuration error: {exc}")
    from bms.statefile import StateFileError

    if isinstance(exc, StateFileError):
        return ConfigFileError(str(exc))
    from hil.emulator.scenario import SCENARIO_DIR, ScenarioError

    if isinstance(exc, ScenarioError):
        names = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml")))
        return ConfigFileError(f"scenario: {exc}",
                               f"--scenario takes a scenario file or one of {names}")
    if name == "EmuUrlError":  # hil/emulator/protocol_emu.py: a bad emu:// port (by name: cheap)
        cls = ConfigFileError if getattr(exc, "code", None) == ExitCode.CONFIG else UsageError
        return cls(str(exc), "emu://PACK?stack=K&seed=S&scenario=NAME: the query keys are "
                   "`bms emulate`'s options without dashes (docs/emulator.md)")
    from hil.link import LinkError

    if isinstance(exc, LinkError) or name == "EmulatorStartError":
        text = " ".join(str(exc).split())  # the emulator's stderr may span lines
        cause = exc.__cause__
        if text.startswith("cannot open ") and "Inappropriate ioctl" in text:
            return BoardError(f"{text.split(': ')[0]}: not a serial port (Inappropriate ioctl "
                              "for device)", "--port takes the board's serial device "
                              "(/dev/ttyACM0, /dev/ttyUSB0) or the pty path `bms emulate` "
                              "printed")
        if text.startswith("cannot open ") and isinstance(getattr(cause, "errno", None), int):
            # pyserial repeats the port and the errno text twice: the first part is enough
            text = f"{text.split(': ')[0]}: {os.strerror(cause.errno)}"  # type: ignore[union-attr]
        return BoardError(_shorten(text), _BOARD_HINTS.get(name))
    if isinstance(exc, OSError):
        what = exc.filename if exc.filename is not None else ""
        why = exc.strerror or str(exc)
        return OutputError(f"{what}: {why}" if what else why)
    return None


def _shorten(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def report(command: str, exc: BaseException) -> int:
    """Print ``exc`` as the user's one or two lines (a traceback first with --debug); the exit
    code."""
    err = classify(exc)
    if _debug:
        traceback.print_exception(exc, file=sys.stderr)
    if err is None:
        print(f"bms {command}: internal error: {type(exc).__name__}: "
              f"{_shorten(' '.join(str(exc).split()))}",
              file=sys.stderr)
        print(f"  hint: a bug in bms, not in your input; please report it with the output of "
              f"{'this command' if _debug else f'`bms --debug {command} ...`'} (the traceback)",
              file=sys.stderr)
        return ExitCode.INTERNAL
    print(f"bms {command}: {err.message}", file=sys.stderr)
    if err.hint:
        print(f"  hint: {err.hint}", file=sys.stderr)
    return err.code


@dataclass(frozen=True)
class ErrorRecord:
    """What a run's log keeps of the failure that ended it (events.jsonl, summary.json)."""

    kind: str
    exit_code: int
    message: str
    hint: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "exit_code": self.exit_code, "message": self.message,
                "hint": self.hint}


def record_of(exc: BaseException) -> ErrorRecord:
    err = classify(exc)
    if err is None:
        return ErrorRecord("internal", ExitCode.INTERNAL, f"{type(exc).__name__}: {exc}", None)
    return ErrorRecord(err.kind, int(err.code), err.message, err.hint)


# ------------------------------------------------------------------ argument parsing


class Parser(argparse.ArgumentParser):
    """argparse with the error path above: one line naming the option and the value, a hint
    to --help, exit code 2 (argparse prints the whole usage, many lines for `bms run`)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message}", file=sys.stderr)
        print(f"  hint: `{self.prog} --help` lists the options", file=sys.stderr)
        raise SystemExit(ExitCode.USAGE)


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0 (nan, inf, 0 and negatives refused)."""
    value = _number(text, "a number of seconds")
    if not (math.isfinite(value) and value > 0.0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds > 0")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a count: workers, rows)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1] (a state of charge)."""
    value = _number(text, "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r} is not in [0, 1]")
    return value


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
