"""``bms emulate`` / ``python -m hil.emulator``: an emulated board on a pseudo-terminal.

Prints the pty's path as the first line of stdout (one line per board when several ``--board``
are given: one process serves them all, each on its own pty with its own plant), then serves
protocol v1 from the plant model until killed (SIGINT/SIGTERM stop it cleanly and close the
ground-truth files).

Errors are one line on stderr (two with a hint) and an exit code of bms.app.errors.ExitCode
(repeated here: the emulator imports no bms module; tests/test_cli_errors.py checks that they
agree): 2 a command-line value, 3 a pack file, board profile or scenario, 5 a file it cannot
write.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path
from typing import NoReturn

from boards.config import ConfigError, load_board, load_pack
from hil.emulator.board import BoardOptions, EmulatedBoard, PtyServer, serve_boards
from hil.emulator.scenario import ScenarioError, load_scenario

EXIT_USAGE, EXIT_CONFIG, EXIT_IO = 2, 3, 5


class _Parser(argparse.ArgumentParser):
    """One line naming the option (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message}\n  hint: `{self.prog} --help` lists the options",
              file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser(parser_class: type[argparse.ArgumentParser] = _Parser
                 ) -> argparse.ArgumentParser:
    """``parser_class``: how a bad value is reported (the emu:// URL handler raises instead)."""
    ap = parser_class(
        prog="bms emulate",
        description="Emulated board: serves protocol v1 on a pty from a plant model of one "
                    "stack. Prints the pty path as the first line of stdout.",
        epilog="examples:\n"
               "  bms emulate                                  # ssb-23 at rest, sim clock\n"
               "  bms emulate --scenario udds --truth truth.csv --seed 3\n"
               "  bms emulate --pack ssb-4x23 --board 0 --board 1 --board 2 --board 3\n"
               "  bms emulate --clock real     # own timer, for bms run --clock real\n"
               "  bms emulate --firmware       # the reference firmware on simavr",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="ssb-23", help="pack file or built-in name (ssb-23)")
    ap.add_argument("--board", type=int, action="append", default=None, metavar="N",
                    help="index of the stack (board) in the pack, 0-based (default 0); repeat "
                    "to serve several boards from one process (board k of the list gets seed "
                    "SEED + k)")
    ap.add_argument("--profile", default=None,
                    help="board profile (default: the stack's board in the pack file)")
    ap.add_argument("--clock", choices=("sim", "real"), default="sim",
                    help="sim: advance by each SAMPLE's dt (default); real: own timer")
    ap.add_argument("--seed", type=int, default=0, help="seed of spreads and noise (default 0)")
    ap.add_argument("--scenario", default=None,
                    help="scenario YAML (path or name in hil/scenarios/); default: rest")
    ap.add_argument("--soc", type=float, default=None, help="initial mean SOC 0..1")
    ap.add_argument("--temperature", type=float, default=None, help="initial temperature, C")
    ap.add_argument("--truth", type=Path, default=None,
                    help="write ground truth (true SOC, temperatures, pressure) CSV here "
                    "(one board)")
    ap.add_argument("--truth-dir", type=Path, default=None,
                    help="write ground truth of each board to DIR/truth-stackN.csv (N = board "
                    "index + 1)")
    ap.add_argument("--truth-every", type=int, default=1, metavar="N",
                    help="write every N-th plant step to the truth file (default 1)")
    # `bms emulate --firmware` is dispatched to hil.firmware before this parser runs (bms/app/
    # cli.py); listed here so that `bms emulate --help` shows it.
    ap.add_argument("--firmware", action="store_true",
                    help="serve the reference firmware (boards/firmware) on a simulated MCU "
                    "(simavr) instead of the Python board model; `bms emulate --firmware "
                    "--help` lists its options")
    return ap


class OptionError(Exception):
    """A bad option value: ``key`` names the option without dashes, ``code`` is the exit class.
    ``bms emulate`` prints ``--key value: reason`` (``plain``: the reason alone, it names the
    file and key itself); the in-process ``emu://`` URL (hil/emulator/protocol_emu.py) names
    the same option as ``key=value``."""

    def __init__(self, key: str, value: object, reason: str, code: int,
                 plain: bool = False) -> None:
        super().__init__(reason)
        self.key, self.value, self.reason, self.code = key, value, reason, code
        self.plain = plain  # the reason names the file and key itself (a ConfigError)

    def cli_text(self) -> str:
        if self.plain:
            return self.reason
        return f"--{self.key} {self.value}: {self.reason}" if self.value is not None else \
            f"--{self.key}: {self.reason}"


def board_options(args: argparse.Namespace) -> list[BoardOptions]:
    """The parsed command line -> one BoardOptions per ``--board`` (pack, profiles and
    scenario loaded, values checked); OptionError for a bad one. Shared by ``bms emulate`` and
    the ``emu://`` URL handler, so both take the same options with the same checks."""
    boards = args.board if args.board else [0]
    if args.truth is not None and (len(boards) > 1 or args.truth_dir is not None):
        raise OptionError("truth", None, "names one board's file; with several boards use "
                          "--truth-dir", EXIT_USAGE)
    key, value = "pack", args.pack
    try:
        pack = load_pack(args.pack)
        key, value = "profile", args.profile
        for k in boards:
            if not 0 <= k < len(pack.stacks):
                raise OptionError("board", k, f"pack {pack.name} has stacks 0.."
                                  f"{len(pack.stacks) - 1}", EXIT_USAGE)
        if len(set(boards)) != len(boards):
            raise OptionError("board", None, f"a board is listed twice ({boards})", EXIT_USAGE)
        profiles = [load_board(args.profile or pack.stacks[k].board) for k in boards]
        key, value = "scenario", args.scenario
        scenario = load_scenario(args.scenario) if args.scenario else None
    except (ConfigError, ScenarioError) as exc:
        raise OptionError(key, value, str(exc), EXIT_CONFIG, plain=True) from None
    if args.soc is not None and not 0.0 <= args.soc <= 1.0:  # NaN fails too
        raise OptionError("soc", f"{args.soc:g}", "allowed 0..1", EXIT_USAGE)
    if args.truth_every < 1:
        raise OptionError("truth-every", args.truth_every, "allowed >= 1", EXIT_USAGE)
    if args.temperature is not None and not math.isfinite(args.temperature):
        raise OptionError("temperature", f"{args.temperature:g}", "allowed a finite number (C)",
                          EXIT_USAGE)
    out = []
    for pos, (k, profile) in enumerate(zip(boards, profiles, strict=True)):
        truth = args.truth if args.truth is not None else (
            args.truth_dir / f"truth-stack{k + 1}.csv" if args.truth_dir else None)
        out.append(BoardOptions(
            pack=pack, stack_index=k, board=profile, clock=args.clock,
            seed=args.seed + pos, scenario=scenario, truth_path=truth,
            truth_every=args.truth_every, initial_soc=args.soc,
            temperature_c=args.temperature))
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.firmware:  # only when this module is run directly, not through `bms emulate`
        print("bms emulate: --firmware is served by `bms emulate --firmware` (hil.firmware)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        options = board_options(args)
    except OptionError as exc:
        print(f"bms emulate: {exc.cli_text()}", file=sys.stderr)
        return exc.code
    pack = options[0].pack
    scenario = options[0].scenario
    servers: list[PtyServer] = []
    try:
        for opts in options:
            servers.append(PtyServer(EmulatedBoard(opts)))
    except (ValueError, OSError) as exc:
        for srv in servers:
            srv.close()
        if isinstance(exc, OSError):  # a truth file or a pty that cannot be made
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"bms emulate: {where}{exc.strerror or exc}", file=sys.stderr)
            return EXIT_IO
        # the pack and the board profile disagree (channel counts)
        print(f"bms emulate: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for srv in servers:
        print(srv.path, flush=True)
    for srv in servers:
        print(f"bms emulate: {srv.board.board_id} {pack.name} stack "
              f"{srv.board.opts.stack_index}, clock {args.clock}, seed {srv.board.opts.seed}"
              + (f", scenario {scenario.name}" if scenario else ""),
              file=sys.stderr, flush=True)

    def _stop(signum: int, frame: object) -> None:
        servers[0].stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        serve_boards(servers)
    finally:
        for srv in servers:
            srv.close()
    return 0
