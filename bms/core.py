"""The C core (csrc/, cffi API mode, module ``bms._core``) for one stack: one call per tick.

:class:`Core` owns every buffer as a numpy array, builds the cffi structs and pointers once at
construction, and per tick only copies the measurements into its input buffers and makes one
C call (``ssb_tick``). Equations: docs/estimation.md; the same equations in NumPy:
bms/reference.py (tests hold the two to 1e-9 relative).

Sign convention: current positive = charge (into the stack), as in docs/protocol.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from bms import _core as _core_ext  # built by pip install (setup.py cffi_modules)
from bms.tuning import Tuning
from boards.config import PackConfig

# ---------------------------------------------------------------------------- constants

# From the compiled module's cdef (csrc/ssb_core.h), never re-typed here.
_L = _core_ext.lib
CELL_OK, CELL_REJECTED_NAN, CELL_GATED, CELL_NO_CURRENT = (
    _L.SSB_CELL_OK, _L.SSB_CELL_REJECTED_NAN, _L.SSB_CELL_GATED, _L.SSB_CELL_NO_CURRENT)
ST_CURRENT_INVALID, ST_TEMP_INVALID, ST_PRESSURE_INVALID = (
    _L.SSB_ST_CURRENT_INVALID, _L.SSB_ST_TEMP_INVALID, _L.SSB_ST_PRESSURE_INVALID)
ST_FUSION_USED, ST_FUSION_GATED, ST_TEMP_FALLBACK = (
    _L.SSB_ST_FUSION_USED, _L.SSB_ST_FUSION_GATED, _L.SSB_ST_TEMP_FALLBACK)
(OUT_EXPECTED, OUT_MEAN, OUT_RESIDUAL, OUT_RATE, OUT_CUSUM, OUT_IMBALANCE, OUT_STACK_STATUS,
 OUT_MEAN_SOC, OUT_MEAN_SOC_SIGMA, OUT_MEAN_OVERPOTENTIAL, OUT_N) = (
    _L.SSB_OUT_PRESSURE_EXPECTED_KPA, _L.SSB_OUT_PRESSURE_MEAN_KPA,
    _L.SSB_OUT_PRESSURE_RESIDUAL_KPA, _L.SSB_OUT_PRESSURE_RATE_KPA_PER_S,
    _L.SSB_OUT_PRESSURE_CUSUM_KPA, _L.SSB_OUT_LOAD_CELL_IMBALANCE_KPA, _L.SSB_OUT_STACK_STATUS,
    _L.SSB_OUT_MEAN_SOC, _L.SSB_OUT_MEAN_SOC_SIGMA, _L.SSB_OUT_MEAN_OVERPOTENTIAL_V,
    _L.SSB_OUT_N)
MAX_HORIZONS = _L.SSB_MAX_HORIZONS
TABLE_STRIDE = _L.SSB_TABLE_STRIDE
WORK_ROWS = _L.SSB_WORK_ROWS
#: rows of Core.imp (the impedance estimator's per-cell state, csrc/ssb_core.h SSB_IMP_*)
IMP_P01, IMP_P11, IMP_V1OL, IMP_SOCOL, IMP_LPY, IMP_LPX0, IMP_LPX1, IMP_ROWS = (
    _L.SSB_IMP_P01, _L.SSB_IMP_P11, _L.SSB_IMP_V1OL, _L.SSB_IMP_SOCOL, _L.SSB_IMP_LPY,
    _L.SSB_IMP_LPX0, _L.SSB_IMP_LPX1, _L.SSB_IMP_ROWS)
ERRORS = {getattr(_L, name): name for name in dir(_L) if name.startswith("SSB_ERR_")}


class CoreError(ValueError):
    """The C core refused a call (bad dt, bad sizes or parameters); nothing was changed."""

    def __init__(self, code: int, what: str) -> None:
        self.code = code
        super().__init__(f"{what}: {ERRORS.get(code, code)}")


# ---------------------------------------------------------------------------- tuning


@dataclass
class CoreParams:
    """Everything the C core's ssb_params_t holds, as Python values (shared with reference)."""

    n_cells: int
    n_sensors: int
    n_load_cells: int
    n_horizons: int
    n_soc: int
    n_temp: int
    soc_step: float
    temp_min_c: float
    temp_step_c: float
    grid: np.ndarray          # (n_temp, n_soc, TABLE_STRIDE): GRID_COLUMNS
    temp_idx0: np.ndarray     # int32 (n_cells,)
    temp_idx1: np.ndarray
    temp_w: np.ndarray
    capacity_as: float
    coulombic_eff: float
    n_rc: int
    hyst_rate: float
    contact_r_ref_ohm: float
    contact_p_ref_kpa: float
    q_soc_per_s: float
    q_soc_ref_v2: float
    q_rc_v2_per_s: float
    r_voltage_v2: float
    voltage_corr_s: float
    r_voltage_r0_rel: float
    current_noise_a: float
    gate_sigma: float
    leak_q_soc_per_s: float
    leak_q_a2_per_s: float
    leak_r_soc2: float
    leak_alarm_a: float
    leak_q_d_per_s: float
    leak_d_sigma0: float
    leak_v2_rel_sigma: float
    leak_relax_rel_sigma: float
    leak_relax_tau_factor: float
    soh_lambda: float
    soh_min_di_a: float
    soh_r0_p_max: float
    soh_cap_window: float
    soh_hp_tau_s: float
    soh_noise_v: float
    soh_q_per_s: float
    soh_scale_min: float
    soh_scale_max: float
    soh_soc_anchor_s: float
    cap_fb_d_sigma: float
    pressure_fusion: int
    preload_kpa: float
    stiffness_kpa_per_um: float
    swell_um_full: float
    thermal_um_per_k: float
    fixture_t_ref_c: float
    fixture_stiffening: float
    r_pressure_kpa2: float
    pressure_corr_s: float
    rate_tau_s: float
    cusum_k_kpa: float
    cusum_tau_s: float
    horizons_s: tuple[float, ...]
    v_max: float
    v_min: float
    t_charge_min_c: float
    t_charge_max_c: float
    t_discharge_min_c: float
    t_discharge_max_c: float
    t_derate_band_c: float
    i_charge_max_a: float
    i_discharge_max_a: float
    # initial state
    soc_sigma0: float = 0.15
    v_rc_sigma0: float = 0.02
    leak_sigma0_a: float = 0.1
    extra: dict = field(default_factory=dict)


#: Bounds of the resampled grid: breakpoints that share no uniform grid this fine (a fitted
#: table at 24.7 C next to an OCV at 25 C) get this grid, an approximation within the tables'
#: change over 0.1 % SOC and 1/160 of the temperature span (0.5 K for -20..60 C); the grid
#: stays small (at most 1001 x 161 x 8 doubles, 10 MB, per stack).
MAX_SOC_DIVISIONS = 1000
MAX_TEMPERATURE_DIVISIONS = 160


def _uniform_divisions(points: np.ndarray, max_div: int) -> int:
    """Smallest N such that every point lies on the uniform grid of N steps over the span
    (so bilinear interpolation on the resampled grid reproduces the pack table exactly);
    max_div when none does (then the resampling is a fine approximation)."""
    lo, span = float(points[0]), float(points[-1] - points[0])
    rel = [(float(p) - lo) / span for p in points]
    den = 1
    for r in rel:
        f = Fraction(r).limit_denominator(max_div)
        if abs(float(f) - r) > 1e-9:
            return max_div
        den = den * f.denominator // math.gcd(den, f.denominator)
        if den > max_div:
            return max_div
    return den


#: R / F = kB / e, V/K (as csrc/ssb_core.c SSB_R_OVER_F_V_PER_K, which the core
#: uses: the symmetric Butler-Volmer charge-transfer overpotential, Plett, Battery Management
#: Systems vol. 1, 2015, ch. 3)
R_OVER_F_V_PER_K = 8.617333262e-5
KELVIN = 273.15


def two_rt_over_f(temp_c: np.ndarray) -> np.ndarray:
    return 2.0 * R_OVER_F_V_PER_K * (np.asarray(temp_c, dtype=float) + KELVIN)


def ct_overpotential(c: np.ndarray, current_a: float | np.ndarray, temp_c: np.ndarray
                     ) -> np.ndarray:
    """Symmetric Butler-Volmer charge-transfer overpotential (2 R T / F) asinh(I c), c =
    1 / (2 I0) per cell; exactly 0 where c = 0 (no charge transfer in the model)."""
    return np.where(c != 0.0, two_rt_over_f(temp_c) * np.arcsinh(current_a * c), 0.0)


#: The columns of the core's parameter grid (csrc/ssb_core.h SSB_TABLE_STRIDE), in order.
GRID_COLUMNS = ("ocv_v", "r0_discharge_ohm", "r0_charge_ohm", "r1_ohm", "tau1_s", "r2_ohm",
                "tau2_s", "hysteresis_v", "ct_inv_2i0_per_a", "voltage_noise_v2")


def grid_lookup(p: CoreParams, soc: np.ndarray, temp_c: np.ndarray) -> dict[str, np.ndarray]:
    """The core's bilinear look-up of every grid column (GRID_COLUMNS) and dOCV/dSOC, per
    cell, in NumPy (csrc/ssb_core.c grid_cell/lookup): OCV extrapolates its end SOC segments
    linearly, the others hold their end values; temperature is clamped. One implementation for
    the control path's start (bms/soc_start.py) and the NumPy reference (bms/reference.py)."""
    fs = np.clip(np.asarray(soc, dtype=float) / p.soc_step, -1.0, float(p.n_soc))
    i_s = np.clip(np.floor(fs), 0, p.n_soc - 2).astype(int)
    f = fs - i_s
    fc = np.clip(f, 0.0, 1.0)
    ft = np.clip((np.asarray(temp_c, dtype=float) - p.temp_min_c) / p.temp_step_c, 0.0,
                 float(p.n_temp - 1))
    i_t = np.clip(np.floor(ft), 0, p.n_temp - 2).astype(int)
    g = (ft - i_t)[:, None]
    a, b = p.grid[i_t, i_s], p.grid[i_t, i_s + 1]
    c, d = p.grid[i_t + 1, i_s], p.grid[i_t + 1, i_s + 1]
    lo = a + g * (c - a)
    hi = b + g * (d - b)
    out = {name: lo[:, q] + fc * (hi[:, q] - lo[:, q])
           for q, name in enumerate(GRID_COLUMNS) if q > 0}
    out["ocv_v"] = lo[:, 0] + f * (hi[:, 0] - lo[:, 0])
    out["docv"] = (hi[:, 0] - lo[:, 0]) / p.soc_step
    return out


def fill_thermistors(temperature_c: np.ndarray) -> np.ndarray | None:
    """Invalid thermistor readings (NaN, below absolute zero) take the nearest valid one (by
    index; ties: the lower), as the core's tick does; None when none is valid."""
    t = np.asarray(temperature_c, dtype=float)
    valid = np.isfinite(t) & (t > -273.15)
    if not valid.any():
        return None
    out = t.copy()
    k = len(t)
    for j in np.flatnonzero(~valid):
        for dist in range(1, k):
            if j - dist >= 0 and valid[j - dist]:
                out[j] = t[j - dist]
                break
            if j + dist < k and valid[j + dist]:
                out[j] = t[j + dist]
                break
    return out


def _breakpoints(pack: PackConfig) -> tuple[np.ndarray, np.ndarray]:
    """Every SOC and temperature breakpoint of the OCV and of the model's tables."""
    cell, ecm = pack.cell, pack.cell.ecm
    tables = [ecm.r0_ohm, ecm.r0_charge_ohm]
    for b in ecm.rc:
        tables += [t for t in (b.r_ohm, b.tau_s, b.c_f) if t is not None]
    if ecm.hysteresis_max_v is not None:
        tables.append(ecm.hysteresis_max_v)
    if ecm.exchange_current_a is not None:
        tables.append(ecm.exchange_current_a)
    if pack.estimator.voltage_noise_table is not None:
        tables.append(pack.estimator.voltage_noise_table)
    socs = [cell.soc_grid] + [t.soc for t in tables if len(t.soc) > 1]
    temps = [cell.temperature_grid_c] + [t.temperature_c for t in tables
                                         if len(t.temperature_c) > 1]
    return np.unique(np.concatenate(socs)), np.unique(np.concatenate(temps))


def resample_table(pack: PackConfig) -> tuple[np.ndarray, float, float, float]:
    """The cell model (OCV and every table of ``cell.ecm``) on one uniform SOC x temperature
    grid that holds every breakpoint (so bilinear look-up reproduces the piecewise-linear
    tables exactly): (grid (n_temp, n_soc, TABLE_STRIDE) of GRID_COLUMNS, soc_step,
    temp_min_c, temp_step_c). Temperatures span the union of the tables' breakpoints; beyond
    it the core clamps. Arrhenius tables are evaluated at every grid temperature. A 1-branch
    model has R2 = 0 (and tau2 = tau1, unused)."""
    cell, ecm = pack.cell, pack.cell.ecm
    sg, tg = _breakpoints(pack)
    n_s = _uniform_divisions(np.concatenate(([0.0], sg, [1.0])), MAX_SOC_DIVISIONS)
    n_t = _uniform_divisions(tg, MAX_TEMPERATURE_DIVISIONS)
    soc_u = np.linspace(0.0, 1.0, n_s + 1)
    t_u = np.linspace(tg[0], tg[-1], n_t + 1)
    ocv_rows = np.array([np.interp(soc_u, cell.soc_grid, row) for row in cell.ocv_v])
    ocv = np.empty((n_t + 1, n_s + 1))
    for k in range(n_s + 1):
        ocv[:, k] = np.interp(t_u, cell.temperature_grid_c, ocv_rows[:, k])
    tau1 = ecm.rc[0].tau_at(soc_u, t_u)
    if ecm.rc_branches == 2:
        r2, tau2 = ecm.rc[1].r_ohm.at(soc_u, t_u), ecm.rc[1].tau_at(soc_u, t_u)
    else:
        r2, tau2 = np.zeros_like(tau1), tau1
    hyst = (ecm.hysteresis_max_v.at(soc_u, t_u) if ecm.hysteresis_max_v is not None
            else np.zeros_like(tau1))
    # charge transfer as 1 / (2 I0) (0: none), the form the core evaluates; at the grid nodes
    # the table's I0 exactly, between them the reciprocal is interpolated
    ct = (0.5 / ecm.exchange_current_a.at(soc_u, t_u) if ecm.exchange_current_a is not None
          else np.zeros_like(tau1))
    # the EKF's voltage model error as a variance (pack estimator.voltage_noise_v: a number,
    # or a table over temperature and/or SOC, e.g. bms fit's residual per test temperature)
    vn = pack.estimator.voltage_noise_table
    vn2 = (vn.at(soc_u, t_u) ** 2 if vn is not None
           else np.full_like(tau1, pack.estimator.voltage_noise_v ** 2))
    columns = (ocv, ecm.r0_ohm.at(soc_u, t_u), ecm.r0_charge_ohm.at(soc_u, t_u),
               ecm.rc[0].r_ohm.at(soc_u, t_u), tau1, r2, tau2, hyst, ct, vn2)
    grid = np.stack(columns, axis=-1)
    assert grid.shape[-1] == TABLE_STRIDE == len(GRID_COLUMNS)
    return grid, 1.0 / n_s, float(tg[0]), float((tg[-1] - tg[0]) / n_t)


def temperature_map(positions: tuple[float, ...], n_cells: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell: the two nearest thermistors (by position along the stack) and the linear
    weight; beyond the end thermistors, the end one."""
    pos = np.asarray(positions, dtype=float)
    k = len(pos)
    idx0 = np.zeros(n_cells, dtype=np.int32)
    idx1 = np.zeros(n_cells, dtype=np.int32)
    w = np.zeros(n_cells)
    if k == 0:
        return idx0, idx1, w
    for i in range(n_cells):
        x = float(i)
        if x <= pos[0]:
            idx0[i] = idx1[i] = 0
        elif x >= pos[-1]:
            idx0[i] = idx1[i] = k - 1
        else:
            j = int(np.searchsorted(pos, x, side="right")) - 1
            idx0[i], idx1[i] = j, j + 1
            w[i] = (x - pos[j]) / (pos[j + 1] - pos[j])
    return idx0, idx1, w


def make_params(pack: PackConfig, stack_index: int = 0, tuning: Tuning | None = None,
                n_load_cells: int | None = None, n_cells: int | None = None) -> CoreParams:
    """C-core parameters for one stack of the pack. ``n_cells`` overrides the stack's cell count
    (benchmarks of large N; the thermistors then spread over the longer stack)."""
    tn = tuning or Tuning()
    if not 0 <= stack_index < len(pack.stacks):
        raise ValueError(f"stack_index {stack_index} not in 0..{len(pack.stacks) - 1}")
    stack = pack.stacks[stack_index]
    cell, fx, est, pl, prot = pack.cell, pack.fixture, pack.estimator, pack.power_limits, \
        pack.protections
    n = stack.cells if n_cells is None else int(n_cells)
    positions = stack.thermistor_cell_positions
    if n_cells is not None and stack.cells > 1:
        positions = tuple(p * (n - 1) / (stack.cells - 1) for p in positions)
    idx0, idx1, w = temperature_map(positions, n)
    grid, soc_step, t_min, t_step = resample_table(pack)
    m = len(fx.load_cells_xy_mm) if n_load_cells is None else n_load_cells
    if len(pl.horizons_s) > MAX_HORIZONS:
        raise ValueError(f"at most {MAX_HORIZONS} power-limit horizons, got {pl.horizons_s}")
    fusion = est.pressure_fusion if tn.pressure_fusion is None else tn.pressure_fusion
    # Without load cells or without the swelling description the pressure says nothing of SOC.
    fusion = bool(fusion) and m > 0 and cell.solid_state
    return CoreParams(
        n_cells=n, n_sensors=len(positions), n_load_cells=m, n_horizons=len(pl.horizons_s),
        n_soc=grid.shape[1], n_temp=grid.shape[0], soc_step=soc_step, temp_min_c=t_min,
        temp_step_c=t_step, grid=np.ascontiguousarray(grid), temp_idx0=idx0, temp_idx1=idx1,
        temp_w=w,
        capacity_as=cell.capacity_ah * 3600.0, coulombic_eff=cell.coulombic_efficiency,
        n_rc=cell.ecm.rc_branches, hyst_rate=cell.ecm.hysteresis_rate,
        contact_r_ref_ohm=cell.contact_resistance_ref_ohm,
        contact_p_ref_kpa=cell.contact_pressure_ref_kpa,
        # pack: soc_process_noise_per_s is a variance rate (1/s); rc_process_noise_v_per_s a
        # sigma rate (V/s), squared here (docs/estimation.md)
        q_soc_per_s=est.soc_process_noise_per_s,
        # the random walk per cell follows its voltage noise (0: constant; docs "Noise")
        q_soc_ref_v2=(est.soc_process_noise_ref_v or 0.0) ** 2,
        q_rc_v2_per_s=est.rc_process_noise_v_per_s ** 2,
        r_voltage_v2=est.voltage_noise_v ** 2, voltage_corr_s=tn.voltage_corr_s,
        r_voltage_r0_rel=est.voltage_noise_r0_rel,
        current_noise_a=est.current_noise_a, gate_sigma=est.innovation_gate_sigma,
        leak_q_soc_per_s=tn.leak_q_soc_per_s, leak_q_a2_per_s=tn.leak_q_a2_per_s,
        leak_r_soc2=tn.leak_r_soc ** 2, leak_alarm_a=est.leak_alarm_a,
        leak_q_d_per_s=tn.leak_q_d_per_s, leak_d_sigma0=tn.leak_d_sigma0,
        leak_v2_rel_sigma=tn.leak_v2_rel_sigma, leak_relax_rel_sigma=tn.leak_relax_rel_sigma,
        leak_relax_tau_factor=tn.leak_relax_tau_factor,
        soh_lambda=est.soh_forgetting, soh_min_di_a=tn.soh_min_di_a,
        soh_r0_p_max=tn.soh_r0_p_max, soh_cap_window=tn.soh_cap_window,
        soh_hp_tau_s=tn.soh_hp_tau_s, soh_noise_v=tn.soh_noise_v, soh_q_per_s=tn.soh_q_per_s,
        soh_scale_min=tn.soh_scale_min, soh_scale_max=tn.soh_scale_max,
        soh_soc_anchor_s=tn.soh_soc_anchor_s,
        cap_fb_d_sigma=tn.cap_fb_d_sigma,
        pressure_fusion=int(bool(fusion)), preload_kpa=fx.preload_kpa,
        stiffness_kpa_per_um=fx.stiffness_kpa_per_um, swell_um_full=cell.swelling_um_full,
        thermal_um_per_k=fx.thermal_um_per_k, fixture_t_ref_c=fx.reference_temperature_c,
        fixture_stiffening=fx.stiffening,
        r_pressure_kpa2=est.pressure_noise_kpa ** 2, pressure_corr_s=tn.pressure_corr_s,
        rate_tau_s=tn.rate_tau_s, cusum_k_kpa=tn.cusum_k_kpa, cusum_tau_s=tn.cusum_tau_s,
        horizons_s=tuple(pl.horizons_s),
        v_max=prot["cell_overvoltage_v"].warning, v_min=prot["cell_undervoltage_v"].warning,
        t_charge_min_c=prot["cell_undertemperature_charge_c"].warning,
        t_charge_max_c=prot["cell_overtemperature_charge_c"].warning,
        t_discharge_min_c=prot["cell_undertemperature_discharge_c"].warning,
        t_discharge_max_c=prot["cell_overtemperature_discharge_c"].warning,
        t_derate_band_c=tn.t_derate_band_c,
        i_charge_max_a=pl.max_charge_current_a, i_discharge_max_a=pl.max_discharge_current_a,
        soc_sigma0=est.initial_soc_sigma, v_rc_sigma0=tn.v_rc_sigma0_v,
        leak_sigma0_a=tn.leak_sigma0_a,
    )


# ---------------------------------------------------------------------------- output


@dataclass
class CoreOutput:
    """One tick's results. Per-cell arrays and the limits are *views* into the Core's buffers:
    valid until the next ``step``/``reset``; ``copy()`` them to keep. Stack values are floats.

    The pressure quantities carry no verdict: the protection engine (bms/protections.py) applies
    the pack's limits to mean, |rate|, CUSUM and imbalance.
    """

    soc: np.ndarray
    soc_sigma: np.ndarray
    voltage_pred_v: np.ndarray     # the model's voltage before the update (residual = v - it)
    leak_a: np.ndarray
    leak_sigma_a: np.ndarray
    leak_flag: np.ndarray
    capacity_ah: np.ndarray
    r0_ohm: np.ndarray
    cell_temperature_c: np.ndarray
    status: np.ndarray             # int32 per cell: CELL_OK / CELL_REJECTED_NAN / CELL_GATED /
    gated_count: np.ndarray        # CELL_NO_CURRENT; uint32 per cell, cumulative
    mean_soc: float
    mean_soc_sigma: float
    pressure_expected_kpa: float
    pressure_mean_kpa: float
    pressure_residual_kpa: float
    pressure_rate_kpa_per_s: float  # signed, low-passed; the protections use its magnitude
    pressure_cusum_kpa: float
    load_cell_imbalance_kpa: float
    stack_status: int              # ST_* bits
    horizons_s: tuple[float, ...]
    charge_limit_a: np.ndarray     # per horizon, >= 0
    discharge_limit_a: np.ndarray  # per horizon, >= 0


# ---------------------------------------------------------------------------- the core


def _lib():
    return _core_ext.ffi, _core_ext.lib


# Fields of the C structs, filled by name from CoreParams / the Core's own arrays.
_INT_PARAMS = ("n_cells", "n_sensors", "n_load_cells", "n_horizons", "n_soc", "n_temp",
               "pressure_fusion", "n_rc")
_FLOAT_PARAMS = (
    "soc_step", "temp_min_c", "temp_step_c", "capacity_as", "coulombic_eff", "hyst_rate",
    "contact_r_ref_ohm", "contact_p_ref_kpa", "q_soc_per_s", "q_soc_ref_v2", "q_rc_v2_per_s",
    "r_voltage_v2", "voltage_corr_s", "r_voltage_r0_rel", "current_noise_a", "gate_sigma",
    "leak_q_soc_per_s", "leak_q_a2_per_s",
    "leak_r_soc2", "leak_alarm_a", "leak_q_d_per_s", "leak_d_sigma0", "leak_v2_rel_sigma",
    "leak_relax_rel_sigma", "leak_relax_tau_factor",
    "soh_lambda", "soh_min_di_a", "soh_r0_p_max", "soh_cap_window", "soh_hp_tau_s", "soh_noise_v",
    "soh_q_per_s",
    "soh_scale_min", "soh_scale_max", "soh_soc_anchor_s", "cap_fb_d_sigma", "preload_kpa",
    "stiffness_kpa_per_um", "swell_um_full", "thermal_um_per_k", "fixture_t_ref_c",
    "fixture_stiffening", "r_pressure_kpa2", "pressure_corr_s", "rate_tau_s", "cusum_k_kpa",
    "cusum_tau_s", "v_max", "v_min",
    "t_charge_min_c", "t_charge_max_c", "t_discharge_min_c", "t_discharge_max_c",
    "t_derate_band_c", "i_charge_max_a", "i_discharge_max_a")
_STATE_ARRAYS = ("soc", "v1", "v2", "hyst", "p", "cell_temp_c", "r0_scale", "r0_p", "rc_scale",
                 "imp", "cap_ratio", "cap_p", "soc_window0", "leak_e", "leak_a", "leak_d",
                 "leak_p", "leak_r", "leak_rp", "v_prev", "work")
_STATE_SCALARS = ("i_prev", "window_as", "p_prev", "rate_f", "cusum_pos", "cusum_neg",
                  "have_prev", "have_pressure")
_OUTPUT_ARRAYS = ("soc_sigma", "voltage_pred_v", "leak_sigma_a", "r0_ohm", "capacity_ah",
                  "charge_limit_a", "discharge_limit_a")


class Core:
    """The C core for stack ``stack_index`` of ``pack``: ``step`` once per tick."""

    def __init__(self, pack: PackConfig, stack_index: int = 0, tuning: Tuning | None = None,
                 params: CoreParams | None = None) -> None:
        self.pack = pack
        self.stack_index = stack_index
        self.params = params if params is not None else make_params(pack, stack_index, tuning)
        self._ffi, self._lib = _lib()
        self.n_cells = self.params.n_cells
        self._keep: list[np.ndarray] = []  # every array a C struct points into
        self._prm = self._build_params()
        self._st = self._build_state()
        self._meas = self._build_measurements()
        self._out = self._build_outputs()
        self._tick = self._lib.ssb_tick
        self._ekf = self._lib.ssb_ekf_step
        self.reset()

    # ------------------------------------------------------------------ construction

    def _buf(self, arr: np.ndarray, ctype: str = "double[]"):
        """A C pointer into ``arr``, which is kept alive as long as the Core."""
        self._keep.append(arr)
        return self._ffi.from_buffer(ctype, arr)

    def _build_params(self):
        """ssb_params_t from ``self.params``; raises CoreError if the C core refuses it."""
        p, buf = self.params, self._buf
        prm = self._ffi.new("ssb_params_t *")
        for name in _INT_PARAMS:
            setattr(prm, name, int(getattr(p, name)))
        for name in _FLOAT_PARAMS:
            setattr(prm, name, float(getattr(p, name)))
        prm.grid = buf(np.ascontiguousarray(p.grid, dtype=float).ravel())
        prm.temp_idx0 = buf(np.ascontiguousarray(p.temp_idx0, dtype=np.int32), "int32_t[]")
        prm.temp_idx1 = buf(np.ascontiguousarray(p.temp_idx1, dtype=np.int32), "int32_t[]")
        prm.temp_w = buf(np.ascontiguousarray(p.temp_w, dtype=float))
        for k, h in enumerate(p.horizons_s):
            prm.horizons_s[k] = h
        rc = self._lib.ssb_params_check(prm)
        if rc != 0:
            raise CoreError(rc, "ssb_params_check")
        return prm

    def _build_state(self):
        """The per-cell state arrays (zeros until ``reset``) and the ssb_state_t over them."""
        n = self.n_cells
        self.soc = np.zeros(n)
        self.v1 = np.zeros(n)
        self.v2 = np.zeros(n)
        self.hyst = np.zeros(n)
        self.p = np.zeros((6, n))
        self.cell_temp_c = np.zeros(n)
        self.r0_scale = np.zeros(n)
        self.r0_p = np.zeros(n)
        self.rc_scale = np.zeros(n)
        self.imp = np.zeros((IMP_ROWS, n))
        self.cap_ratio = np.zeros(n)
        self.cap_p = np.zeros(n)
        self.soc_window0 = np.zeros(n)
        self.leak_e = np.zeros(n)
        self.leak_a = np.zeros(n)
        self.leak_d = np.zeros(n)
        self.leak_p = np.zeros((6, n))
        self.leak_r = np.zeros(n)
        self.leak_rp = np.zeros((4, n))
        self.v_prev = np.zeros(n)
        self.gated_count = np.zeros(n, dtype=np.uint32)
        self.work = np.zeros((WORK_ROWS, n))
        st = self._ffi.new("ssb_state_t *")
        for name in _STATE_ARRAYS:
            setattr(st, name, self._buf(getattr(self, name)))
        st.gated_count = self._buf(self.gated_count, "uint32_t[]")
        return st

    def _build_measurements(self):
        """The Core's own input buffers and the ssb_meas_t pointing at them."""
        p = self.params
        self._v_in = np.zeros(self.n_cells)
        self._t_in = np.zeros(max(p.n_sensors, 1))
        self._p_in = np.zeros(max(p.n_load_cells, 1))
        meas = self._ffi.new("ssb_meas_t *")
        self._own_in = (self._buf(self._v_in), self._buf(self._t_in), self._buf(self._p_in))
        meas.cell_voltage_v, meas.temperature_c, meas.pressure_kpa = self._own_in
        # The balancing bleed per cell (A), always the Core's own buffer: zeros unless a step
        # is given one.
        self._bleed_in = np.zeros(self.n_cells)
        self._bleed_set = False
        meas.bleed_a = self._buf(self._bleed_in)
        # Caller arrays the C core reads in place (see _load), held so their identity is sound.
        self._bound: tuple[np.ndarray | None, ...] = (None, None, None)
        self._bound_ptrs: tuple = ()
        return meas

    def _build_outputs(self):
        """The output arrays (per cell, per horizon, the stack slots) and the ssb_output_t."""
        n, n_h = self.n_cells, self.params.n_horizons
        self.soc_sigma = np.zeros(n)
        self.voltage_pred_v = np.full(n, np.nan)
        self.leak_sigma_a = np.zeros(n)
        self.r0_ohm = np.zeros(n)
        self.capacity_ah = np.zeros(n)
        self.status = np.zeros(n, dtype=np.int32)
        self.leak_flag = np.zeros(n, dtype=np.int32)
        self.stack_out = np.zeros(OUT_N)
        self.charge_limit_a = np.zeros(n_h)
        self.discharge_limit_a = np.zeros(n_h)
        out = self._ffi.new("ssb_output_t *")
        for name in _OUTPUT_ARRAYS:
            setattr(out, name, self._buf(getattr(self, name)))
        out.status = self._buf(self.status, "int32_t[]")
        out.leak_flag = self._buf(self.leak_flag, "int32_t[]")
        out.stack = self._buf(self.stack_out)
        return out

    # ------------------------------------------------------------------ calls

    def reset(self, soc0: float | np.ndarray | None = None,
              cell_voltage_v: np.ndarray | None = None,
              temperature_c: np.ndarray | None = None,
              soc_sigma0: float | None = None) -> None:
        """Start over. soc0: one value or one per cell; None: from the OCV of ``cell_voltage_v``
        (a rested stack; NaN entries and a missing array give 0.5) at the cell temperatures
        mapped from the thermistor readings ``temperature_c`` (missing or NaN: 25 C), with SOC
        sigma ``soc_sigma0`` (None: the pack's initial_soc_sigma)."""
        n = self.n_cells
        soc = np.full(n, np.nan) if soc0 is None else np.broadcast_to(
            np.asarray(soc0, dtype=float), (n,)).copy()
        soc_c = self._ffi.from_buffer("double[]", soc)
        v_c = self._ffi.NULL
        if cell_voltage_v is not None:
            v = np.ascontiguousarray(cell_voltage_v, dtype=float)
            if v.shape != (n,):
                raise ValueError(f"cell_voltage_v shape {v.shape}, expected ({n},)")
            v_c = self._ffi.from_buffer("double[]", v)
        p = self.params
        t_c = self._ffi.NULL
        if temperature_c is not None:
            t_cells = self.cell_temperatures(temperature_c)
            t_c = self._ffi.from_buffer("double[]", t_cells)
        sigma0 = p.soc_sigma0 if soc_sigma0 is None else float(soc_sigma0)
        rc = self._lib.ssb_state_init(self._prm, self._st, soc_c, v_c, t_c, sigma0,
                                      p.v_rc_sigma0, p.leak_sigma0_a)
        if rc != 0:
            raise CoreError(rc, "ssb_state_init")
        self.soc_sigma[:] = np.sqrt(self.p[0])
        self.voltage_pred_v.fill(np.nan)
        self.stack_out.fill(np.nan)

    def state_dict(self) -> dict[str, np.ndarray | float | int]:
        """A copy of the whole estimator state (per-cell arrays and the stack scalars), by
        name: what a state file saves. ``load_state`` puts it back."""
        d: dict[str, np.ndarray | float | int] = {
            name: getattr(self, name).copy() for name in _STATE_ARRAYS if name != "work"}
        d["gated_count"] = self.gated_count.copy()
        for name in _STATE_SCALARS:
            d[name] = getattr(self._st, name)
        return d

    def load_state(self, state: dict) -> None:
        """Restore a ``state_dict``; every array must have its shape here (a state of another
        stack or pack is refused with ValueError naming the array, and nothing changes)."""
        names = [n for n in _STATE_ARRAYS if n != "work"] + ["gated_count"]
        missing = [n for n in names + list(_STATE_SCALARS) if n not in state]
        if missing:
            raise ValueError(f"state lacks {', '.join(missing)}")
        arrays = {}
        for name in names:
            own = getattr(self, name)
            a = np.asarray(state[name], dtype=own.dtype)
            if a.shape != own.shape:
                raise ValueError(f"state {name} has shape {a.shape}, expected {own.shape}")
            arrays[name] = a
        for name, a in arrays.items():
            getattr(self, name)[...] = a
        for name in _STATE_SCALARS:
            setattr(self._st, name, state[name])
        self.soc_sigma[:] = np.sqrt(np.maximum(self.p[0], 0.0))
        self.stack_out.fill(np.nan)

    def cell_temperatures(self, temperature_c: np.ndarray) -> np.ndarray:
        """Thermistor readings -> per cell temperature, as the core maps them (linear between
        the two nearest thermistors; csrc/ssb_core.c)."""
        p = self.params
        t = np.asarray(temperature_c, dtype=float)
        if t.shape != (p.n_sensors,):
            raise ValueError(f"temperature_c has shape {t.shape}; the stack has "
                             f"{p.n_sensors} thermistors")
        if p.n_sensors == 0:
            return np.full(p.n_cells, np.nan)
        t0, t1 = t[p.temp_idx0], t[p.temp_idx1]
        return np.ascontiguousarray(t0 + p.temp_w * (t1 - t0))

    def _load(self, cell_voltage_v: np.ndarray, temperature_c: np.ndarray,
              pressure_kpa: np.ndarray) -> None:
        b = self._bound
        if cell_voltage_v is b[0] and temperature_c is b[1] and pressure_kpa is b[2]:
            return  # the core reads the caller's arrays themselves (bound below)
        p = self.params
        arrays = (cell_voltage_v, temperature_c, pressure_kpa)
        sizes = (p.n_cells, p.n_sensors, p.n_load_cells)
        if all(isinstance(a, np.ndarray) and a.dtype == np.float64 and a.ndim == 1
               and a.flags.c_contiguous and len(a) == k > 0 for a, k in zip(arrays, sizes,
                                                                             strict=True)):
            # The same arrays come back every tick from the validator, filled in place: point
            # the measurement struct at them once instead of copying three arrays per tick.
            ptrs = tuple(self._ffi.from_buffer("double[]", a) for a in arrays)
            m = self._meas
            m.cell_voltage_v, m.temperature_c, m.pressure_kpa = ptrs
            self._bound, self._bound_ptrs = arrays, ptrs
            return
        if self._bound[0] is not None:
            m = self._meas
            m.cell_voltage_v, m.temperature_c, m.pressure_kpa = self._own_in
            self._bound, self._bound_ptrs = (None, None, None), ()
        for name, a, k in zip(("cell_voltage_v", "temperature_c", "pressure_kpa"), arrays, sizes,
                              strict=True):
            if np.shape(a) != (k,):  # no broadcasting: one value for 23 cells is a caller bug
                raise ValueError(f"{name} has shape {np.shape(a)}; the stack has {p.n_cells} "
                                 f"cells, {p.n_sensors} thermistors, {p.n_load_cells} load cells")
        self._v_in[:] = cell_voltage_v
        if p.n_sensors:
            self._t_in[:] = temperature_c
        if p.n_load_cells:
            self._p_in[:] = pressure_kpa

    def _load_bleed(self, bleed_a: np.ndarray | None) -> None:
        if bleed_a is None:
            if self._bleed_set:
                self._bleed_in.fill(0.0)
                self._bleed_set = False
            return
        if np.shape(bleed_a) != (self.n_cells,):
            raise ValueError(f"bleed_a has shape {np.shape(bleed_a)}; the stack has "
                             f"{self.n_cells} cells")
        self._bleed_in[:] = bleed_a
        self._bleed_set = True

    def step(self, dt_s: float, current_a: float, cell_voltage_v: np.ndarray,
             temperature_c: np.ndarray, pressure_kpa: np.ndarray,
             bleed_a: np.ndarray | None = None) -> CoreOutput:
        """One tick: EKF, SOH, leak, pressure monitor and fusion, power limits.

        ``bleed_a``: the balancing bleed current out of each cell over this tick's interval
        (A, >= 0; None: none). A cell's current is ``current_a - bleed_a``.
        NaN/Inf are allowed in every measurement (rejected per cell / sensor, never enter the
        state; a NaN bleed counts as 0). Raises CoreError for dt_s not finite or <= 0
        (nothing changes then)."""
        self._load(cell_voltage_v, temperature_c, pressure_kpa)
        self._load_bleed(bleed_a)
        rc = self._tick(self._prm, self._st, self._meas, float(dt_s), float(current_a),
                        self._out)
        if rc != 0:
            raise CoreError(rc, "ssb_tick")
        return self.output()

    def step_ekf(self, dt_s: float, current_a: float, cell_voltage_v: np.ndarray,
                 temperature_c: np.ndarray, pressure_kpa: np.ndarray,
                 bleed_a: np.ndarray | None = None) -> None:
        """The EKF alone (benchmarks, tests): SOC, sigma and status only."""
        self._load(cell_voltage_v, temperature_c, pressure_kpa)
        self._load_bleed(bleed_a)
        rc = self._ekf(self._prm, self._st, self._meas, float(dt_s), float(current_a),
                       self._out)
        if rc != 0:
            raise CoreError(rc, "ssb_ekf_step")

    def output(self) -> CoreOutput:
        so = self.stack_out.tolist()  # one conversion instead of a numpy scalar per field
        stack_status = so[OUT_STACK_STATUS]
        return CoreOutput(
            self.soc, self.soc_sigma, self.voltage_pred_v, self.leak_a, self.leak_sigma_a,
            self.leak_flag,
            self.capacity_ah, self.r0_ohm, self.cell_temp_c, self.status, self.gated_count,
            so[OUT_MEAN_SOC], so[OUT_MEAN_SOC_SIGMA], so[OUT_EXPECTED], so[OUT_MEAN],
            so[OUT_RESIDUAL], so[OUT_RATE], so[OUT_CUSUM], so[OUT_IMBALANCE],
            int(stack_status) if math.isfinite(stack_status) else 0,
            self.params.horizons_s, self.charge_limit_a, self.discharge_limit_a,
        )

    def refresh_output(self, o: CoreOutput) -> None:
        """:meth:`output` into ``o``, an earlier output of this core: its arrays are this
        core's buffers already (made once, never rebound), so only the stack values are
        written (the controller's usual tick: no new record per tick; a caller that keeps
        an output across steps copies it, as it copies the arrays)."""
        so = self.stack_out.tolist()
        stack_status = so[OUT_STACK_STATUS]
        o.mean_soc, o.mean_soc_sigma = so[OUT_MEAN_SOC], so[OUT_MEAN_SOC_SIGMA]
        o.pressure_expected_kpa, o.pressure_mean_kpa = so[OUT_EXPECTED], so[OUT_MEAN]
        o.pressure_residual_kpa, o.pressure_rate_kpa_per_s = so[OUT_RESIDUAL], so[OUT_RATE]
        o.pressure_cusum_kpa, o.load_cell_imbalance_kpa = so[OUT_CUSUM], so[OUT_IMBALANCE]
        o.stack_status = int(stack_status) if math.isfinite(stack_status) else 0

    def raw_call(self):
        """(function, args) of one C tick with the current input buffers (benchmarks: the
        cffi call alone). Fill ``input_buffers()`` first."""
        return self._tick, (self._prm, self._st, self._meas)

    def raw_ekf_call(self):
        return self._ekf, (self._prm, self._st, self._meas)

    def input_buffers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._bound[0] is not None:  # read the own buffers again
            m = self._meas
            m.cell_voltage_v, m.temperature_c, m.pressure_kpa = self._own_in
            self._bound, self._bound_ptrs = (None, None, None), ()
        return self._v_in, self._t_in, self._p_in

    @property
    def out_struct(self):
        return self._out


__all__ = ["Core", "CoreError", "CoreOutput", "CoreParams", "Tuning", "ct_overpotential",
           "make_params", "resample_table", "temperature_map", "two_rt_over_f"]
