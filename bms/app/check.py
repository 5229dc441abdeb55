"""``bms check``: validate a pack file and its board profiles, print what the BMS will use."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from boards.config import PackConfig, load_board, load_pack


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
        lines.append(f"fixture   preload {fx.preload_kpa:g} kPa, +{swell_stack_um:.0f} um and "
                     f"+{swell_stack_um * fx.stiffness_kpa_per_um:.0f} kPa per stack at full "
                     f"charge; {len(fx.load_cells_xy_mm)} load cells, {fusion}")
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
