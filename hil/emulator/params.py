"""What the plant knows beyond the pack file: its parameters (plant_defaults.yaml) and the
SOC tables built from the pack's cell model and those parameters (docs/emulator.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import yaml

from boards.config import PackConfig

DEFAULTS_PATH = Path(__file__).resolve().parent / "plant_defaults.yaml"


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class PlantParams:
    """What the plant knows beyond the pack file (the BMS does not know these).

    Defaults and their sources live in hil/emulator/plant_defaults.yaml; see docs/emulator.md.
    """

    capacity_spread: float
    resistance_spread: float
    contact_resistance_spread: float
    swelling_spread: float
    initial_soc_spread: float
    self_discharge_a: float
    self_discharge_log_sigma: float
    r2_over_r1: float
    tau2_s: float
    hysteresis_v: float
    hysteresis_rate: float
    ocv_slope_above_full_v: float
    ocv_slope_below_empty_v: float
    cell_cell_w_per_k: float
    cell_coolant_w_per_k: float
    cell_ambient_w_per_k: float
    end_cell_plate_w_per_k: float
    plate_heat_capacity_j_per_k: float
    plate_ambient_w_per_k: float
    coolant_heat_capacity_j_per_k: float
    coolant_flow_w_per_k: float
    coolant_stagnant_w_per_k: float
    fixture_stiffening: float
    contact_collapse_um: float
    contact_tilt_gain: float
    load_cell_tilt_spread: float
    min_local_pressure_kpa: float
    precharge_resistance_ohm: float
    link_capacitance_f: float
    link_discharge_resistance_ohm: float
    precharge_fail_short_ohm: float
    path_resistance_ohm: float
    cell_noise_v: float
    cell_offset_v: float
    vtap_open_tau_s: float
    current_noise_a: float
    current_offset_a: float
    bus_noise_v: float
    thermistor_noise_v: float
    thermistor_offset_k: float
    load_cell_noise_kpa: float
    load_cell_offset_kpa: float
    load_cell_gain_spread: float

    @classmethod
    def load(cls, path: str | Path = DEFAULTS_PATH, **overrides: float) -> PlantParams:
        """Read the ``emulator:`` section of a YAML file (every key required), then overrides."""
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        section = data.get("emulator") if isinstance(data, dict) else None
        if not isinstance(section, dict):
            raise ValueError(f"{path}: missing mapping 'emulator'")
        values: dict[str, float] = {}
        for f in fields(cls):
            if f.name not in section:
                raise ValueError(f"{path}: emulator.{f.name}: missing")
            v = section[f.name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{path}: emulator.{f.name}: {v!r} is not a finite number")
            values[f.name] = float(v)
        unknown = set(section) - set(values)
        if unknown:
            raise ValueError(f"{path}: emulator: unknown keys {sorted(unknown)}")
        return replace(cls(**values), **overrides)


def spread(rng: np.random.Generator, sigma: float, size: int) -> np.ndarray:
    """Per-unit spread of ``size`` units (cells, load cells): normal with sigma, truncated at
    3 sigma so that no unit is absurd."""
    return np.clip(rng.standard_normal(size), -3.0, 3.0) * sigma


# --------------------------------------------------------------------------- SOC tables


SOC_LO, SOC_HI, SOC_STEP = -0.1, 1.1, 0.002   # lookup grid incl. over/under-charge
N_SOC = int(round((SOC_HI - SOC_LO) / SOC_STEP)) + 1
# rows of the SOC table (each followed by the same quantity at the next grid point)
K_OCV, K_DOCV_DT, K_R0, K_R1, K_TAU1 = range(5)
NK = 5


def _build_table(pack: PackConfig, params: PlantParams) -> np.ndarray:
    """SOC table (2 x 5, n_soc): OCV at the reference temperature, its temperature slope,
    R0, R1 and tau1 = R1 C1 at the reference temperature; rows 5..9 hold the next grid point
    so that one take() fetches both neighbours of every cell.

    Linear in SOC on the pack grid (the pack's breakpoints, multiples of 0.05, lie on the 0.002
    grid, so the pack's values are reproduced exactly), extrapolated beyond 0 and 1 with steep
    slopes (over- and under-charge). Temperature enters analytically in the step: OCV through
    a per-SOC entropic slope (least-squares fit over the pack's temperature rows) and the
    resistances and tau1 through the Arrhenius factor at the cell's own temperature, instead of
    the pack's piecewise-linear rows the estimator interpolates.
    """
    cell = pack.cell
    soc_f = np.round(np.linspace(SOC_LO, SOC_HI, N_SOC), 9)
    tg, sg = cell.temperature_grid_c, cell.soc_grid
    ocv_rows = np.empty((len(tg), N_SOC))
    for j in range(len(tg)):
        row = np.interp(soc_f, sg, cell.ocv_v[j])
        row = np.where(soc_f > 1.0, cell.ocv_v[j, -1] + params.ocv_slope_above_full_v
                       * (soc_f - 1.0), row)
        row = np.where(soc_f < 0.0, cell.ocv_v[j, 0] + params.ocv_slope_below_empty_v
                       * soc_f, row)
        ocv_rows[j] = row
    dt = tg - cell.reference_temperature_c
    ocv_ref = np.array([np.interp(cell.reference_temperature_c, tg, ocv_rows[:, k])
                        for k in range(N_SOC)])
    slope = ((dt[:, None] - dt.mean()) * (ocv_rows - ocv_rows.mean(axis=0))).sum(axis=0) / (
        ((dt - dt.mean()) ** 2).sum())
    arr_ref = np.asarray(cell.arrhenius_factor(tg))
    clip = np.clip(soc_f, 0.0, 1.0)
    r0_ref = np.interp(clip, sg, cell.r0_ohm[0] / arr_ref[0])
    r1_ref = np.interp(clip, sg, cell.r1_ohm[0] / arr_ref[0])
    c1 = np.interp(clip, sg, cell.c1_f[0])
    tab = np.stack([ocv_ref, slope, r0_ref, r1_ref, r1_ref * c1])
    return np.ascontiguousarray(np.concatenate([tab, np.roll(tab, -1, axis=1)], axis=0))


# Rows of the step's lookup (Plant._lookup): the SOC table's rows plus two scratch slots (EMF
# after R0, R2 after R1) so that the step can treat (EMF, R0) and (R1, R2) as one (2, n) block
# each: one reduction sums both for the stack current, one multiply gives both RC targets.
L_OCV, L_DOCV_DT, L_EMF, L_R0, L_R1, L_R2, L_TAU1 = range(7)
NL = 7


def _step_table(tab: np.ndarray) -> np.ndarray:
    """(2 x 7, n_soc): the table's rows in _L_* order (slots zero), then next-minus-this for
    each. The difference is what the interpolation computed at run time (the same subtraction
    of the same numbers), so precomputing it changes no bit of the result."""
    cur = np.zeros((NL, tab.shape[1]))
    nxt = np.zeros((NL, tab.shape[1]))
    for k_tab, k_step in ((K_OCV, L_OCV), (K_DOCV_DT, L_DOCV_DT), (K_R0, L_R0),
                          (K_R1, L_R1), (K_TAU1, L_TAU1)):
        cur[k_step] = tab[k_tab]
        nxt[k_step] = tab[NK + k_tab]
    return np.ascontiguousarray(np.concatenate([cur, nxt - cur], axis=0))


_TABLE_CACHE: dict[tuple[int, int], tuple[PackConfig, PlantParams, np.ndarray, np.ndarray]] = {}
_DEFAULT_PARAMS: list[PlantParams] = []


def default_params() -> PlantParams:
    """plant_defaults.yaml, read once per process."""
    if not _DEFAULT_PARAMS:
        _DEFAULT_PARAMS.append(PlantParams.load())
    return _DEFAULT_PARAMS[0]


def soc_tables(pack: PackConfig, params: PlantParams) -> tuple[np.ndarray, np.ndarray]:
    """The SOC table of :func:`_build_table` and its step form (:func:`_step_table`), cached
    per (pack, params) object. The cache entry holds pack and params, so their ids cannot be
    reused while cached."""
    key = (id(pack), id(params))
    entry = _TABLE_CACHE.get(key)
    if entry is None or entry[0] is not pack or entry[1] is not params:
        if len(_TABLE_CACHE) >= 8:
            _TABLE_CACHE.clear()
        tab = _build_table(pack, params)
        entry = _TABLE_CACHE[key] = (pack, params, tab, _step_table(tab))
    return entry[2], entry[3]


__all__ = ["DEFAULTS_PATH", "PlantParams", "default_params", "soc_tables", "spread"]
