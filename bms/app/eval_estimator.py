"""Estimator quality against the emulator's plant (hil/emulator/plant.py), never against the
estimator's own model: the plant has two RC branches, OCV hysteresis, per-cell spread of
capacity/resistance/swelling, a thermal network, a stiffening fixture, sensor noise, offsets and
quantisation. The core sees only what a board reports (counts scaled by the board profile).

Scenario: UDDS drive cycles (hil/scenarios/udds-current.csv, looped) from a wrong initial SOC
(estimator 30 % off), ambient temperature swinging 15..35 C; optional soft short in one cell.

    python tools/eval_estimator.py [--minutes 120] [--short-ohm 10] [--no-fusion] [--json]

(the command line over :func:`run`; tests/test_estimator_quality.py runs shorter ones).
Reports: SOC RMSE and max error after convergence, coverage of the 3-sigma bound, soft-short
flag time, false leak flags, with and without pressure fusion.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from bms.core import Core, Tuning
from boards.config import load_board, load_pack
from hil.emulator.plant import CurrentProfile, Plant
from hil.emulator.scenario import SCENARIO_DIR
from hil.protocol import InjectedFault

UDDS_CSV = SCENARIO_DIR / "udds-current.csv"


@dataclass
class EvalResult:
    fusion: bool
    minutes: float
    soc_error_offset: float
    converge_s: float
    soc_rmse_pct: float
    soc_max_err_pct: float
    coverage_3sigma: float
    mean_soc_rmse_pct: float
    short_cell: int | None
    short_ohm: float | None
    short_flag_s: float | None
    false_leak_flags: int
    gated_total: int
    true_soc_range: tuple[float, float]


def run(minutes: float = 60.0, fusion: bool = True, short_ohm: float | None = None,
        short_cell: int = 11, short_at_s: float = 600.0, seed: int = 3,
        soc_offset: float = -0.3, initial_soc: float = 0.9, converge_s: float = 600.0,
        dt_s: float = 0.1, tuning: Tuning | None = None) -> EvalResult:
    pack = load_pack("ssb-23")
    board = load_board(pack.stacks[0].board)
    plant = Plant(pack, 0, board, seed=seed, initial_soc=initial_soc, temperature_c=25.0)
    plant.set_outputs(contactor_pos=True, contactor_neg=True,
                      charge_limit_a=pack.power_limits.max_charge_current_a,
                      discharge_limit_a=pack.power_limits.max_discharge_current_a)
    plant.set_load(CurrentProfile.from_csv(UDDS_CSV, loop=True))
    tn = tuning or Tuning()
    core = Core(pack, 0, tuning=Tuning(**{**asdict(tn), "pressure_fusion": fusion}))
    core.reset(np.clip(plant.truth().soc + soc_offset, 0.0, 1.0))
    th, kpc = board.thermistor, np.asarray(board.load_cell_kpa_per_count, dtype=float)
    lc_off = np.asarray(board.load_cell_offset_counts, dtype=float)
    n_steps = int(round(minutes * 60.0 / dt_s))
    errs, cover, mean_errs = [], [], []
    flag_s, false_flags = None, 0
    soc_lo, soc_hi = 1.0, 0.0
    for k in range(n_steps):
        t_s = (k + 1) * dt_s
        # ambient swings 15..35 C over 40 min (cells follow through the thermal network)
        if k % 10 == 0:
            plant.set_ambient(25.0 + 10.0 * math.sin(2 * math.pi * t_s / 2400.0))
        if short_ohm is not None and abs(t_s - short_at_s) < dt_s / 2:
            plant.inject_fault(InjectedFault.CELL_SOFT_SHORT, short_cell, short_ohm)
        plant.step(dt_s)
        c = plant.sensor_counts()
        v = np.asarray(c.cell_raw, dtype=float) * board.cell_lsb_v + board.cell_offset_v
        temp = th.counts_to_c(np.asarray(c.thermistor_raw, dtype=float))
        press = (np.asarray(c.load_cell_raw, dtype=float) - lc_off) * kpc
        cur = c.current_raw * board.current_lsb_a + board.current_offset_a
        out = core.step(dt_s, cur, v, temp, press)
        truth = plant.truth()
        flags = out.leak_flag.astype(bool)
        if short_ohm is not None and t_s >= short_at_s:
            if flag_s is None and flags[short_cell]:
                flag_s = t_s - short_at_s
            flags = flags.copy()
            flags[short_cell] = False
        false_flags += int(flags.sum())
        if t_s >= converge_s:
            e = out.soc - truth.soc
            errs.append(e)
            cover.append(np.abs(e) <= 3.0 * out.soc_sigma)
            mean_errs.append(out.mean_soc - truth.soc.mean())
            soc_lo, soc_hi = min(soc_lo, truth.soc.min()), max(soc_hi, truth.soc.max())
    err = np.array(errs)
    return EvalResult(
        fusion=fusion, minutes=minutes, soc_error_offset=soc_offset, converge_s=converge_s,
        soc_rmse_pct=float(100 * np.sqrt(np.mean(err ** 2))),
        soc_max_err_pct=float(100 * np.max(np.abs(err))),
        coverage_3sigma=float(np.mean(cover)),
        mean_soc_rmse_pct=float(100 * np.sqrt(np.mean(np.square(mean_errs)))),
        short_cell=short_cell if short_ohm is not None else None, short_ohm=short_ohm,
        short_flag_s=flag_s, false_leak_flags=false_flags,
        gated_total=int(core.gated_count.sum()),
        true_soc_range=(float(soc_lo), float(soc_hi)))
