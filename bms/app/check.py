"""``bms check``: validate a pack file and its board profiles, print what the BMS will use."""

from __future__ import annotations

import argparse
from pathlib import Path

from boards.config import load_board, load_pack


def _shown_path(path: Path | str | None) -> str:
    """The file as a user typed it: relative to the working directory when below it."""
    if path is None:
        return "-"
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bms check",
        description="Validate a pack file (and the board profiles it names) and summarise it.",
        epilog="examples:\n  bms check --pack ssb-23\n  bms check --pack my-pack.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pack", default="ssb-23", help="pack file path or built-in name")
    args = parser.parse_args(argv)
    pack = load_pack(args.pack)
    cell = pack.cell
    print(f"pack      {pack.name}: {pack.description}")
    print(f"file      {_shown_path(pack.path)}")
    print(f"cells     {pack.n_cells} in {len(pack.stacks)} stack(s), "
          f"{cell.capacity_ah:g} Ah, {cell.unit_layers} unit layers each")
    ocv = cell.ocv_v[list(cell.temperature_grid_c).index(25.0)] \
        if 25.0 in cell.temperature_grid_c else cell.ocv_v[0]
    print(f"ocv       {ocv[0]:.3f} V .. {ocv[-1]:.3f} V; "
          f"stack {ocv[0] * pack.n_cells:.1f} V .. {ocv[-1] * pack.n_cells:.1f} V")
    swell_stack_um = cell.swelling_um_full * max(s.cells for s in pack.stacks)
    print(f"fixture   preload {pack.fixture.preload_kpa:g} kPa, +{swell_stack_um:.0f} um and "
          f"+{swell_stack_um * pack.fixture.stiffness_kpa_per_um:.0f} kPa per stack at full charge")
    for stack in pack.stacks:
        board = load_board(stack.board)
        problems = []
        if board.cells < stack.cells:
            problems.append(f"board has {board.cells} cell channels < {stack.cells}")
        if board.thermistors < len(stack.thermistor_cell_positions):
            problems.append("fewer thermistor channels than thermistor positions")
        if board.load_cells != len(pack.fixture.load_cells_xy_mm):
            problems.append("load-cell channel count differs from fixture.load_cells_xy_mm")
        status = "ok" if not problems else "; ".join(problems)
        print(f"stack     {stack.name}: {stack.cells} cells on board {board.name} "
              f"({board.kind}, {board.thermistors} NTC, {board.load_cells} load cells): {status}")
        if problems:
            return 2
    print("limits    " + ", ".join(
        f"{name} {p.fault:g}" for name, p in list(pack.protections.items())[:4]) + ", ...")
    return 0
