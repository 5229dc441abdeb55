"""``bms check``: validate a pack file and its board profiles with the checks ``bms run`` makes
(bms/app/preflight.py), print what the BMS will use; or validate one board profile."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bms.app.errors import Parser, UsageError
from bms.app.preflight import check_stacks, preflight
from boards.config import BOARD_SCHEMA, BoardProfile, PackConfig, load_board, load_pack


def _shown_path(path: Path | str | None) -> str:
    """The file as a user typed it: relative to the working directory when below it."""
    if path is None:
        return "-"
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def model_summary(pack: PackConfig) -> str:
    """One line: the estimator's circuit at 50 % SOC and 25 C."""
    ecm = pack.cell.ecm
    soc, t = np.array([0.5]), np.array([25.0])
    r0 = float(ecm.r0_ohm.at(soc, t)[0, 0])
    r0c = float(ecm.r0_charge_ohm.at(soc, t)[0, 0])
    charge = ("same on charge" if ecm.r0_charge_ohm is ecm.r0_ohm
              else f"{r0c * 1e3:.2f} mOhm on charge")
    branches = ", ".join(
        f"R{k + 1} {float(b.r_ohm.at(soc, t)[0, 0]) * 1e3:.2f} mOhm tau{k + 1} "
        f"{float(b.tau_at(soc, t)[0, 0]):.3g} s" for k, b in enumerate(ecm.rc))
    hyst = "no hysteresis" if ecm.hysteresis_max_v is None else (
        f"hysteresis {float(ecm.hysteresis_max_v.at(soc, t)[0, 0]) * 1e3:.1f} mV, "
        f"rate {ecm.hysteresis_rate:g}")
    ct = "" if ecm.exchange_current_a is None else (
        f"; charge transfer I0 {float(ecm.exchange_current_a.at(soc, t)[0, 0]):.3g} A "
        "(Butler-Volmer, R0 the ohmic part)")
    return (f"{ecm.rc_branches} RC branch(es) at 50 % SOC, 25 C: R0 {r0 * 1e3:.2f} mOhm "
            f"({charge}), {branches}; {hyst}{ct}")


def pressure_summary(pack: PackConfig) -> list[str]:
    """What the pressure features do with this pack (and why they are off when they are)."""
    cell, fx = pack.cell, pack.fixture
    swell_stack_um = cell.swelling_um_full * max(s.cells for s in pack.stacks)
    lines = []
    if not fx.load_cells_xy_mm:
        lines.append("pressure  off: fixture.load_cells_xy_mm is [] (no stack-pressure limits, "
                     "no pressure fusion, contact resistance at contact_pressure_ref_kpa)")
    elif not cell.solid_state:
        lines.append(f"pressure  monitored on {len(fx.load_cells_xy_mm)} load cells; not fused "
                     "as SOC: the cell has no solid-state description (swelling)")
    else:
        fusion = "fused as a SOC measurement" if pack.estimator.pressure_fusion else "not fused"
        full_kpa = swell_stack_um * fx.stiffness_kpa_per_um * (1.0 + fx.stiffening)
        stiff = f" (stiffening {fx.stiffening:g})" if fx.stiffening else ""
        lines.append(f"fixture   preload {fx.preload_kpa:g} kPa, +{swell_stack_um:.0f} um and "
                     f"+{full_kpa:.0f} kPa per stack at full charge{stiff}; "
                     f"{len(fx.load_cells_xy_mm)} load cells, {fusion}")
    ch = pack.charging
    if ch is None:
        lines.append("charging  no CCD limit (no charging section)")
    elif cell.plating_area_cm2 is None:
        lines.append("charging  CCD table given but the cell has no electrode_area_cm2/"
                     "unit_layers: no CCD limit")
    elif not fx.load_cells_xy_mm:
        # bms/charging.py: a CCD that cannot be evaluated allows no charge current
        lines.append("charging  CCD table given but no load cells measure the stack pressure: "
                     "charge limit 0 A (leave out the charging section or add load cells)")
    else:
        area = cell.plating_area_cm2
        t = 25.0 if ch.ccd_temperature_c[0] <= 25.0 <= ch.ccd_temperature_c[-1] \
            else ch.ccd_temperature_c[0]
        row = [float(np.interp(t, ch.ccd_temperature_c, ch.ccd_ma_cm2[:, k]))
               for k in range(len(ch.ccd_pressure_kpa))]
        limits = ", ".join(f"{p:g} kPa {ch.margin * c * area / 1000.0:.1f} A"
                           for p, c in zip(ch.ccd_pressure_kpa, row, strict=True))
        lines.append(f"charging  CCD limit at {t:g} C ({area:g} cm2, margin {ch.margin:g}): "
                     f"{limits}")
    return lines


def board_summary(board: BoardProfile) -> list[str]:
    """What the BMS reads from a board profile (``bms check --board``)."""
    return [
        f"board     {board.name} ({board.kind}): {board.cells} cell channels, "
        f"{board.thermistors} NTC, {board.load_cells} load cells, sample period "
        f"{board.sample_period_s * 1e3:g} ms",
        f"file      {_shown_path(board.path)}",
        f"scaling   cell LSB {board.cell_lsb_v * 1e6:g} uV, current LSB "
        f"{board.current_lsb_a * 1e3:g} mA, bus LSB {board.bus_lsb_v * 1e3:g} mV",
    ]


def _refuse_board_profile_as_pack(name: str) -> None:
    """A board profile given to --pack: say so (its schema line) instead of 'schema: ...'."""
    path = Path(name)
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:4096] if path.is_file() \
            else ""
    except OSError:
        return
    if BOARD_SCHEMA in head:
        raise UsageError(f"--pack {name}: this is a board profile ({BOARD_SCHEMA})",
                         f"check it with `bms check --board {name}`")


def main(argv: list[str]) -> int:
    parser = Parser(
        prog="bms check",
        description="Validate a pack file (and the board profiles its stacks name) with every "
        "check that `bms run` makes before it opens a port, and summarise it; or validate one "
        "board profile (--board).",
        epilog="examples:\n  bms check --pack ssb-23\n  bms check --pack my-pack.yaml\n"
        "  bms check --board emu-23\n  bms check --board my-board.yaml\n\n"
        "exit codes: 0 ok, 2 usage, 3 the pack file or a board profile is refused "
        "(docs/errors.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--pack", default=None,
                      help="pack file path or built-in name (default ssb-23)")
    what.add_argument("--board", default=None, help="board profile path or built-in name")
    args = parser.parse_args(argv)
    if args.board is not None:
        for line in board_summary(load_board(args.board)):
            print(line)
        return 0
    name = args.pack or "ssb-23"
    _refuse_board_profile_as_pack(name)
    pack = load_pack(name)
    cell = pack.cell
    print(f"pack      {pack.name}: {pack.description}")
    print(f"file      {_shown_path(pack.path)}")
    layers = f", {cell.unit_layers} unit layers each" if cell.solid_state else ""
    print(f"cells     {pack.n_cells} in {len(pack.stacks)} stack(s), "
          f"{cell.capacity_ah:g} Ah{layers}")
    ocv = cell.ocv_v[list(cell.temperature_grid_c).index(25.0)] \
        if 25.0 in cell.temperature_grid_c else cell.ocv_v[0]
    print(f"ocv       {ocv[0]:.3f} V .. {ocv[-1]:.3f} V; "
          f"stack {ocv[0] * pack.n_cells:.1f} V .. {ocv[-1] * pack.n_cells:.1f} V")
    print("model     " + model_summary(pack))
    for line in pressure_summary(pack):
        print(line)
    checks = check_stacks(pack)
    for stack, c in zip(pack.stacks, checks, strict=True):
        b = c.board
        on = (f"board {b.name} ({b.kind}, {b.thermistors} NTC, {b.load_cells} load cells)"
              if b is not None else f"board {stack.board}")
        print(f"stack     {stack.name}: {stack.cells} cells on {on}: "
              + ("ok" if not c.problems else "REFUSED"))
    problems = [p for c in checks for p in c.problems]
    if problems:
        # One line per problem (each names the file and the key); the exit code is the first's.
        for extra in problems[1:]:
            print(f"bms check: configuration error: {extra}", file=sys.stderr)
        raise problems[0]
    preflight(pack)  # the control path's parts, built as bms run builds them
    print("limits    " + ", ".join(
        f"{name} {p.fault:g}" for name, p in list(pack.protections.items())[:4]) + ", ...")
    print("ok        bms run accepts this pack")
    return 0
