"""``bms emulate`` / ``python -m hil.emulator``: an emulated board on a pseudo-terminal.

Prints the pty's path as the first line of stdout, then serves protocol v1 from the plant model
until killed (SIGINT/SIGTERM stop it cleanly and close the ground-truth file).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from bms.config import ConfigError, load_board, load_pack
from hil.emulator.board import BoardOptions, EmulatedBoard, PtyServer
from hil.emulator.scenario import ScenarioError, load_scenario


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bms emulate",
        description="Emulated board: serves protocol v1 on a pty from a plant model of one "
                    "stack. Prints the pty path as the first line of stdout.")
    ap.add_argument("--pack", default="ssb-23", help="pack file or built-in name (ssb-23)")
    ap.add_argument("--board", type=int, default=0, metavar="N",
                    help="index of the stack (board) in the pack, 0-based (default 0)")
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
                    help="write ground truth (true SOC, temperatures, pressure) CSV here")
    ap.add_argument("--truth-every", type=int, default=1, metavar="N",
                    help="write every N-th plant step to the truth file (default 1)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        pack = load_pack(args.pack)
        if not 0 <= args.board < len(pack.stacks):
            print(f"bms emulate: --board {args.board}: the pack has stacks 0.."
                  f"{len(pack.stacks) - 1}", file=sys.stderr)
            return 2
        profile = load_board(args.profile or pack.stacks[args.board].board)
        scenario = load_scenario(args.scenario) if args.scenario else None
    except (ConfigError, ScenarioError) as exc:
        print(f"bms emulate: {exc}", file=sys.stderr)
        return 2
    if args.soc is not None and not 0.0 <= args.soc <= 1.0:
        print("bms emulate: --soc must be in [0, 1]", file=sys.stderr)
        return 2
    if args.truth_every < 1:
        print("bms emulate: --truth-every must be >= 1", file=sys.stderr)
        return 2
    try:
        board = EmulatedBoard(BoardOptions(
            pack=pack, stack_index=args.board, board=profile, clock=args.clock, seed=args.seed,
            scenario=scenario, truth_path=args.truth, truth_every=args.truth_every,
            initial_soc=args.soc, temperature_c=args.temperature))
    except (ValueError, OSError) as exc:
        print(f"bms emulate: {exc}", file=sys.stderr)
        return 2
    server = PtyServer(board)
    print(server.path, flush=True)
    print(f"bms emulate: {board.board_id} {pack.name} stack {args.board}, clock {args.clock}, "
          f"seed {args.seed}" + (f", scenario {scenario.name}" if scenario else ""),
          file=sys.stderr, flush=True)

    def _stop(signum: int, frame: object) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        server.serve()
    finally:
        server.close()
    return 0
