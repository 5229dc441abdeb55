"""Plant model of one stack: electrical, thermal, mechanical, sensors, faults. No serial I/O.

One :class:`Plant` is one stack of the pack (one fixture, one board). It is deliberately richer
than the estimator's model (docs/emulator.md lists how): per-cell spread of capacity, resistance,
swelling and self-discharge; two RC branches; OCV hysteresis; Arrhenius temperature dependence;
a thermal network of cells, end plates and coolant; stack pressure from lithium thickness change,
a stiffening fixture and thermal expansion; contact resistance growing as pressure falls; sensor
noise, per-channel offsets and quantisation; the link capacitor for precharge; faults.

Use from Python (estimator evaluation, firmware bridge)::

    plant = Plant(load_pack("ssb-23"), 0, load_board("emu-23"), seed=1, initial_soc=0.8)
    plant.set_outputs(contactor_pos=True, contactor_neg=True,
                      charge_limit_a=10.0, discharge_limit_a=15.0)
    plant.set_load(ConstantCurrent(-5.0))      # positive current = charge
    for _ in range(36000):
        plant.step(0.1)
        counts = plant.sensor_counts()          # raw counts, as in a MEASUREMENT
        truth = plant.truth()                   # true SOC, temperatures, pressure, current

Equations and the source of every parameter: docs/emulator.md. Sign: positive current = charge.
"""

from __future__ import annotations

import abc
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import yaml

from boards.config import BOLTZMANN_EV_PER_K, KELVIN_OFFSET, T25_K, BoardProfile, PackConfig
from hil.emulator.faults import FaultError, InjectedFault, PlantFaults

DEFAULTS_PATH = Path(__file__).resolve().parent / "plant_defaults.yaml"
INVALID_U16 = 0xFFFF
INVALID_I32 = 0x7FFFFFFF
I24_MAX = (1 << 23) - 1


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


# --------------------------------------------------------------------------- loads


class Load(abc.ABC):
    """A load demand. The plant asks it each step for the current it wants (A, + = charge).

    ``v_open`` and ``r_eff`` describe every cell's terminal voltage as ``v = v_open + r_eff i``
    for this step, so a CV charger can solve for the current that puts the highest cell at its
    CV voltage exactly. ``respect_limits``: the plant clips the demand to SET_OUTPUTS' limits.
    """

    respect_limits: bool = True
    done: bool = False

    @abc.abstractmethod
    def demand_a(self, t_s: float, v_open: np.ndarray, r_eff: np.ndarray) -> float:
        """The current this load wants now (A, + = charge)."""

    def observe(self, cell_voltage_v: np.ndarray) -> None:  # noqa: B027 (optional hook)
        """Called after each step with the true terminal voltages (for stop conditions); loads
        without stop conditions keep this no-op."""


@dataclass
class Rest(Load):
    """No current."""

    done: bool = False

    def demand_a(self, t_s: float, v_open: np.ndarray, r_eff: np.ndarray) -> float:
        return 0.0


@dataclass
class ConstantCurrent(Load):
    """Constant current, optionally until the lowest cell falls below / highest rises above."""

    current_a: float
    until_min_cell_v: float | None = None
    until_max_cell_v: float | None = None
    respect_limits: bool = True
    done: bool = False

    def demand_a(self, t_s: float, v_open: np.ndarray, r_eff: np.ndarray) -> float:
        return 0.0 if self.done else self.current_a

    def observe(self, cell_voltage_v: np.ndarray) -> None:
        if self.until_min_cell_v is not None and cell_voltage_v.min() <= self.until_min_cell_v:
            self.done = True
        if self.until_max_cell_v is not None and cell_voltage_v.max() >= self.until_max_cell_v:
            self.done = True


@dataclass
class CcCvCharge(Load):
    """CC-CV charger regulating the highest cell at cv_cell_v; ends when the CV current
    tapers below cutoff_a. Always obeys SET_OUTPUTS' charge limit (protocol.md)."""

    current_a: float
    cv_cell_v: float = 4.2
    cutoff_a: float = 0.25
    done: bool = False

    def __post_init__(self) -> None:
        self.respect_limits = True

    def demand_a(self, t_s: float, v_open: np.ndarray, r_eff: np.ndarray) -> float:
        if self.done:
            return 0.0
        i_cv = float(np.min((self.cv_cell_v - v_open) / r_eff))
        i = min(self.current_a, i_cv)
        if i < self.cutoff_a:
            self.done = True
            return 0.0
        return i


@dataclass
class CurrentProfile(Load):
    """A current profile (drive cycle): linear interpolation of current_a over time_s."""

    time_s: np.ndarray
    current_a: np.ndarray
    scale: float = 1.0
    loop: bool = False
    respect_limits: bool = True
    done: bool = False

    def __post_init__(self) -> None:
        self.time_s = np.asarray(self.time_s, dtype=float)
        self.current_a = np.asarray(self.current_a, dtype=float)
        if self.time_s.ndim != 1 or self.time_s.shape != self.current_a.shape \
                or len(self.time_s) < 2 or np.any(np.diff(self.time_s) <= 0):
            raise ValueError("CurrentProfile: time_s strictly increasing, same length as current")

    @property
    def duration_s(self) -> float:
        return float(self.time_s[-1] - self.time_s[0])

    def demand_a(self, t_s: float, v_open: np.ndarray, r_eff: np.ndarray) -> float:
        t = self.time_s[0] + t_s
        if self.loop:
            t = self.time_s[0] + math.fmod(t_s, self.duration_s)
        elif t > self.time_s[-1]:
            self.done = True
            return 0.0
        return self.scale * float(np.interp(t, self.time_s, self.current_a))

    @classmethod
    def from_csv(cls, path: str | Path, **kwargs: Any) -> CurrentProfile:
        """CSV with a header and columns time_s, current_a (comment lines start with #)."""
        data = np.loadtxt(path, delimiter=",", comments="#", skiprows=1, ndmin=2)
        return cls(time_s=data[:, 0], current_a=data[:, 1], **kwargs)


# --------------------------------------------------------------------------- outputs


@dataclass
class PlantTruth:
    """Ground truth after the last step (evaluation only; the BMS never sees it)."""

    t_s: float
    current_a: float                 # stack current, + = charge
    bus_voltage_v: float
    stack_voltage_v: float
    pressure_kpa: float              # stack pressure (mean over the end plate)
    load_cell_pressure_kpa: np.ndarray
    soc: np.ndarray                  # per cell, 1 = full at this cell's own capacity
    cell_voltage_v: np.ndarray
    ocv_v: np.ndarray
    temperature_c: np.ndarray        # per cell
    plate_temperature_c: np.ndarray  # (bottom, top)
    coolant_temperature_c: float
    ambient_temperature_c: float
    capacity_ah: np.ndarray
    leak_current_a: np.ndarray       # through soft shorts
    cell_current_a: np.ndarray       # electrochemical current per cell (after bleed and leak)
    series_resistance_ohm: np.ndarray  # R0 + contact, at this step
    hysteresis_v: np.ndarray
    rc_voltage_v: np.ndarray         # (n, 2): both RC branches


@dataclass
class SensorCounts:
    """Raw counts of one MEASUREMENT (docs/protocol.md), before the host's board-profile scaling."""

    current_raw: int
    bus_voltage_raw: int
    cell_raw: list[int]
    thermistor_raw: list[int]
    load_cell_raw: list[int]
    sensor_error: bool


@dataclass(frozen=True)
class PlantSnapshot:
    """Opaque dynamic state of a Plant (see Plant.snapshot)."""

    values: tuple


@dataclass
class Outputs:
    contactor_pos: bool = False
    contactor_neg: bool = False
    precharge: bool = False
    balance_mask: int = 0
    charge_limit_a: float = 0.0
    discharge_limit_a: float = 0.0


# --------------------------------------------------------------------------- plant


_SOC_LO, _SOC_HI, _SOC_STEP = -0.1, 1.1, 0.002   # lookup grid incl. over/under-charge
_N_SOC = int(round((_SOC_HI - _SOC_LO) / _SOC_STEP)) + 1
# rows of the SOC table (each followed by the same quantity at the next grid point)
_K_OCV, _K_DOCV_DT, _K_R0, _K_R1, _K_TAU1 = range(5)
_NK = 5


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
    soc_f = np.round(np.linspace(_SOC_LO, _SOC_HI, _N_SOC), 9)
    tg, sg = cell.temperature_grid_c, cell.soc_grid
    ocv_rows = np.empty((len(tg), _N_SOC))
    for j in range(len(tg)):
        row = np.interp(soc_f, sg, cell.ocv_v[j])
        row = np.where(soc_f > 1.0, cell.ocv_v[j, -1] + params.ocv_slope_above_full_v
                       * (soc_f - 1.0), row)
        row = np.where(soc_f < 0.0, cell.ocv_v[j, 0] + params.ocv_slope_below_empty_v
                       * soc_f, row)
        ocv_rows[j] = row
    dt = tg - cell.reference_temperature_c
    ocv_ref = np.array([np.interp(cell.reference_temperature_c, tg, ocv_rows[:, k])
                        for k in range(_N_SOC)])
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
_L_OCV, _L_DOCV_DT, _L_EMF, _L_R0, _L_R1, _L_R2, _L_TAU1 = range(7)
_NL = 7


def _step_table(tab: np.ndarray) -> np.ndarray:
    """(2 x 7, n_soc): the table's rows in _L_* order (slots zero), then next-minus-this for
    each. The difference is what the interpolation computed at run time (the same subtraction
    of the same numbers), so precomputing it changes no bit of the result."""
    cur = np.zeros((_NL, tab.shape[1]))
    nxt = np.zeros((_NL, tab.shape[1]))
    for k_tab, k_step in ((_K_OCV, _L_OCV), (_K_DOCV_DT, _L_DOCV_DT), (_K_R0, _L_R0),
                          (_K_R1, _L_R1), (_K_TAU1, _L_TAU1)):
        cur[k_step] = tab[k_tab]
        nxt[k_step] = tab[_NK + k_tab]
    return np.ascontiguousarray(np.concatenate([cur, nxt - cur], axis=0))


_TABLE_CACHE: dict[tuple[int, int], tuple[PackConfig, PlantParams, np.ndarray, np.ndarray]] = {}
_DEFAULT_PARAMS: list[PlantParams] = []


def default_params() -> PlantParams:
    """plant_defaults.yaml, read once per process."""
    if not _DEFAULT_PARAMS:
        _DEFAULT_PARAMS.append(PlantParams.load())
    return _DEFAULT_PARAMS[0]
_NOISE_BATCH = 512
_add_reduce = np.add.reduce
# "c": the step and the sensor arithmetic in csrc/ssb_plant.c (cffi module hil.emulator._plant);
# "numpy": the NumPy implementation, kept as the reference the C engine is tested against.
ENGINES = ("c", "numpy")
_C_ERRORS = {-1: "a NULL pointer", -2: "a bad size",
             -3: "dt, stack current, pressure or gas pressure not finite",
             -4: "a SOC, temperature or RC state that is not finite"}


class Plant:
    """One stack: ``n`` cells in series in one fixture, read by one board.

    Parameters: the pack file (what the BMS knows), the stack's index in it, the board profile
    (channel counts and scaling of the raw counts), a seed (per-cell spread and sensor noise;
    the same seed and the same calls give the same numbers), optional plant parameters
    (default: plant_defaults.yaml), the initial mean SOC and temperature, and the engine:
    "c" (default) runs the numeric part of step() and sensor_counts() in csrc/ssb_plant.c,
    "numpy" the NumPy reference (same equations; results agree to the last bits of exp and
    the dot products, see tests/test_plant_c.py).
    """

    def __init__(
        self,
        pack: PackConfig,
        stack_index: int = 0,
        board: BoardProfile | None = None,
        seed: int = 0,
        params: PlantParams | None = None,
        initial_soc: float = 0.5,
        temperature_c: float = 25.0,
        engine: str = "c",
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r} not one of {ENGINES}")
        self.engine = engine
        self._c: SimpleNamespace | None = None  # the C engine's buffers (_setup_c)
        if not 0 <= stack_index < len(pack.stacks):
            raise ValueError(f"stack_index {stack_index} not in 0..{len(pack.stacks) - 1}")
        self.pack = pack
        self.stack = pack.stacks[stack_index]
        self.stack_index = stack_index
        self.params = p = params if params is not None else default_params()
        n = self.n = self.stack.cells
        if board is None:
            from boards.config import load_board

            board = load_board(self.stack.board)
        if board.cells != n:
            raise ValueError(f"board {board.name} has {board.cells} cell channels, stack "
                             f"{self.stack.name} has {n} cells")
        self.board = board
        self.m = board.load_cells
        self.k = board.thermistors
        if self.k and len(self.stack.thermistor_cell_positions) != self.k:
            n_pos = len(self.stack.thermistor_cell_positions)
            raise ValueError(f"board {board.name} has {self.k} thermistors, stack "
                             f"{self.stack.name} places {n_pos}")
        cell = pack.cell
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, stack_index]))
        spread_rng = np.random.default_rng(np.random.SeedSequence([seed, stack_index, 1]))

        # The cache entry holds pack and params, so their ids cannot be reused while cached.
        key = (id(pack), id(p))
        entry = _TABLE_CACHE.get(key)
        if entry is None or entry[0] is not pack or entry[1] is not p:
            if len(_TABLE_CACHE) >= 8:
                _TABLE_CACHE.clear()
            tab = _build_table(pack, p)
            entry = _TABLE_CACHE[key] = (pack, p, tab, _step_table(tab))
        self._tab = entry[2]
        self._tab_step = entry[3]
        self._t_ref_c = cell.reference_temperature_c
        self._ea_over_kb = cell.activation_energy_ev / BOLTZMANN_EV_PER_K
        self._inv_t_ref = 1.0 / (cell.reference_temperature_c + KELVIN_OFFSET)

        # ---- per-cell spread (seeded; truncated at 3 sigma so no cell is absurd)
        def spread(sigma: float, size: int = n) -> np.ndarray:
            return np.clip(spread_rng.standard_normal(size), -3.0, 3.0) * sigma

        self.capacity_ah = cell.capacity_ah * (1.0 + spread(p.capacity_spread))
        self._capacity_as = self.capacity_ah * 3600.0
        self._r_scale = 1.0 + spread(p.resistance_spread)
        self._rc_scale = 1.0 + spread(p.contact_resistance_spread)
        self._swell_um = (cell.swelling_um_full * self.capacity_ah / cell.capacity_ah
                          * (1.0 + spread(p.swelling_spread)))
        self._self_discharge_a = p.self_discharge_a * np.exp(
            spread(p.self_discharge_log_sigma))
        soc0 = initial_soc + spread(p.initial_soc_spread)
        # where each cell's contact loss is (unit vector on the end plate): tilts the load cells
        ang = spread_rng.uniform(0.0, 2.0 * math.pi, n)
        self._spot_xy = np.stack([np.cos(ang), np.sin(ang)], axis=1)
        xy = np.array(pack.fixture.load_cells_xy_mm[: self.m], dtype=float).reshape(-1, 2)
        if len(xy) < self.m:  # more load cells on the board than positions in the pack file
            xy = np.vstack([xy, np.zeros((self.m - len(xy), 2))])
        rmax = float(np.max(np.hypot(xy[:, 0], xy[:, 1]))) if self.m else 1.0
        self._lc_unit = xy / (rmax if rmax > 0 else 1.0)
        self._lc_tilt0 = spread(p.load_cell_tilt_spread, self.m)
        # sensor calibration errors (seeded, static)
        self._cell_off_v = spread_rng.uniform(-p.cell_offset_v, p.cell_offset_v, n)
        self._cur_off_a = float(spread_rng.uniform(-p.current_offset_a, p.current_offset_a))
        self._th_off_k = spread_rng.uniform(-p.thermistor_offset_k, p.thermistor_offset_k, self.k)
        self._lc_off_kpa = spread_rng.uniform(-p.load_cell_offset_kpa, p.load_cell_offset_kpa,
                                              self.m)
        self._lc_gain = 1.0 + spread(p.load_cell_gain_spread, self.m)
        self._lc_count_per_kpa = 1.0 / np.asarray(board.load_cell_kpa_per_count, dtype=float)
        self._th_off_k_kelvin = self._th_off_k + KELVIN_OFFSET
        self._noise_sigma = np.concatenate([
            np.full(n, p.cell_noise_v), np.full(self.k, p.thermistor_noise_v
                                                 / board.thermistor.lsb_v),
            np.full(self.m, p.load_cell_noise_kpa), [p.current_noise_a, p.bus_noise_v]])
        self._noise = np.zeros((0, len(self._noise_sigma)))
        self._buf = np.zeros(n + self.k + self.m + 2)
        self._ch_lo = np.concatenate([np.zeros(n + self.k), np.full(self.m, -I24_MAX - 1.0),
                                      [-float(INVALID_I32)] * 2])
        self._ch_hi = np.concatenate([np.full(n + self.k, INVALID_U16 - 1.0),
                                      np.full(self.m, float(I24_MAX)), [INVALID_I32 - 1.0] * 2])
        self._noise_i = 0
        self._lc_offset_counts = np.asarray(board.load_cell_offset_counts, dtype=float)
        # thermistor positions -> interpolation weights over cells
        pos = np.asarray(self.stack.thermistor_cell_positions[: self.k], dtype=float)
        self._th_i0 = np.clip(np.floor(pos).astype(int), 0, n - 1)
        self._th_i1 = np.clip(self._th_i0 + 1, 0, n - 1)
        self._th_w = pos - self._th_i0
        self._th_weights = np.zeros((self.k, n))
        for j in range(self.k):
            self._th_weights[j, self._th_i0[j]] += 1.0 - self._th_w[j]
            self._th_weights[j, self._th_i1[j]] += self._th_w[j]

        # ---- state
        self.t_s = 0.0
        self.soc = soc0.astype(float)
        self._x = np.zeros((3, n))       # RC1 voltage, RC2 voltage, hysteresis state (-1..1)
        self._rate = np.empty((3, n))
        self._target = np.empty((3, n))
        self._e = np.empty((3, n))
        self._sq = np.empty((2, n))
        self._dt_consts: tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray] = (
            math.nan, np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n))
        self._const = self._step_constants()
        self._sensor = self._sensor_constants()
        self.ambient_c = float(temperature_c)
        self._temp = np.full(n + 3, float(temperature_c))  # cells, plate bottom/top, coolant
        self.gas_kpa = 0.0
        self.bus_v = 0.0
        self.outputs = Outputs()
        self.faults = PlantFaults(n, self.m, self.k)
        self.load: Load = Rest()
        self._load_t0 = 0.0
        self._lc_last_counts = np.zeros(self.m, dtype=np.int64)
        self._lc_have_last = False
        self._thermal_cache: dict[tuple[float, bool, float], tuple[np.ndarray, ...]] = {}
        self._build_thermal()
        # values of the last step, for truth() and sensor_counts()
        self.current_a = 0.0
        self.cell_v = np.zeros(n)
        self._ocv = np.zeros(n)
        self._i_cell = np.zeros(n)
        self._r_series = np.zeros(n)
        self._bleed_g = 1.0 / pack.balancing.bleed_resistance_ohm if pack.balancing else 0.0
        self._one_minus_eta = 1.0 - cell.coulombic_efficiency
        self._hyst_k = p.hysteresis_rate / self._capacity_as
        self._k_fix = pack.fixture.stiffness_kpa_per_um
        self._swell_full_total = float(self._swell_um.sum())
        self._balance = np.zeros(n, dtype=bool)
        self.pressure_kpa = 0.0
        self._lc_kpa = np.zeros(self.m)
        self._heat_fault_any = False
        self._refresh_derived()
        self._update_pressure()
        self._settle()
        if engine == "c":
            self._setup_c()

    # ------------------------------------------------------------------ commands

    def set_outputs(
        self,
        contactor_pos: bool = False,
        contactor_neg: bool = False,
        precharge: bool = False,
        balance_mask: int = 0,
        charge_limit_a: float = 0.0,
        discharge_limit_a: float = 0.0,
    ) -> None:
        """Contactors, precharge relay, bleed switches (bit i = cell i) and the current limits
        a well-behaved load and charger obey (both >= 0)."""
        if balance_mask < 0 or balance_mask >> self.n:
            raise ValueError(f"balance_mask {balance_mask:#x} has bits beyond {self.n} cells")
        if not (charge_limit_a >= 0 and discharge_limit_a >= 0):
            raise ValueError("current limits must be >= 0")
        self.commanded = Outputs(bool(contactor_pos), bool(contactor_neg), bool(precharge),
                                 int(balance_mask), float(charge_limit_a),
                                 float(discharge_limit_a))
        # A welded contactor (CONTACTOR_WELD) closes when commanded and then stays closed.
        welded = self.faults.contactor_welded
        old = getattr(self, "outputs", None)
        pos = bool(contactor_pos) or (welded[0] and old is not None and old.contactor_pos)
        neg = bool(contactor_neg) or (welded[1] and old is not None and old.contactor_neg)
        self.outputs = self.commanded
        if (pos, neg) != (self.commanded.contactor_pos, self.commanded.contactor_neg):
            self.outputs = replace(self.commanded, contactor_pos=pos,
                                               contactor_neg=neg)
        self._balance = ((int(balance_mask) >> np.arange(self.n)) & 1).astype(bool)
        self._refresh_derived()

    def open_all(self) -> None:
        """Open contactors and precharge relay, stop balancing (board watchdog, reboot)."""
        self.set_outputs()

    def set_load(self, load: Load) -> None:
        """Replace the load; its time starts now."""
        self.load = load
        self._load_t0 = self.t_s

    def set_ambient(self, temperature_c: float) -> None:
        """Ambient and coolant-inlet temperature (AMBIENT_TEMP overrides it while injected)."""
        self.ambient_c = float(temperature_c)
        if self._c is not None:
            self._c.th_dt = math.nan  # the step's thermal matrices depend on the ambient

    def inject_fault(self, code: InjectedFault | int, target: int = 0xFF, value: float = 0.0,
                     clear: bool = False) -> None:
        """Add or remove a plant fault (docs/protocol.md FAULT_INJECT). Raises FaultError."""
        self.faults.apply(InjectedFault(code), target, value, clear, self.t_s)
        f = self.faults
        if code == InjectedFault.CLEAR_ALL or (code == InjectedFault.CONTACTOR_WELD and clear):
            # repaired: the last command holds again
            self.set_outputs(**asdict(self.commanded))
        self._heat_fault_any = bool(np.isfinite(f.soft_short_ohm).any() or f.cell_heat_w.any())
        self._refresh_derived()
        self._update_pressure()

    @property
    def ambient_effective_c(self) -> float:
        o = self.faults.ambient_override_c
        return self.ambient_c if o is None else o

    # ------------------------------------------------------------------ model pieces

    def _build_thermal(self) -> None:
        p, n = self.params, self.n
        c = np.empty(n + 3)
        c[:n] = self.pack.cell.heat_capacity_j_per_k
        c[n:n + 2] = p.plate_heat_capacity_j_per_k
        c[n + 2] = p.coolant_heat_capacity_j_per_k
        self._heat_cap = c
        g = np.zeros((n + 3, n + 3))
        for i in range(n - 1):
            g[i, i + 1] = g[i + 1, i] = p.cell_cell_w_per_k
        g[0, n] = g[n, 0] = p.end_cell_plate_w_per_k
        g[n - 1, n + 1] = g[n + 1, n - 1] = p.end_cell_plate_w_per_k
        g[:n, n + 2] = g[n + 2, :n] = p.cell_coolant_w_per_k
        self._g_net = g
        self._lap = np.diag(g.sum(axis=1)) - g

    def _thermal_matrix(self, dt_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Backward Euler for C dT/dt = -L T + G_amb (T_amb - T) + Q: (inverse matrix, C/dt,
        G_amb T_amb), cached per (dt, coolant state, ambient), so a fixed step costs one small
        matrix-vector product. Unconditionally stable for any dt."""
        lost = self.faults.coolant_lost
        amb_c = self.ambient_effective_c
        key = (dt_s, lost, amb_c)
        hit = self._thermal_cache.get(key)
        if hit is not None:
            return hit
        p, n = self.params, self.n
        g_amb = np.zeros(n + 3)
        g_amb[:n] = p.cell_ambient_w_per_k
        g_amb[n:n + 2] = p.plate_ambient_w_per_k
        g_amb[n + 2] = p.coolant_stagnant_w_per_k if lost else p.coolant_flow_w_per_k
        c_dt = self._heat_cap / dt_s
        m = np.diag(c_dt + g_amb) + self._lap
        hit = (np.linalg.inv(m), c_dt, g_amb * amb_c)
        if len(self._thermal_cache) > 16:
            self._thermal_cache.clear()
        self._thermal_cache[key] = hit
        return hit

    def _step_constants(self) -> SimpleNamespace:
        """The step's scalar constants as n-vectors (same values; see the note above step) and
        views into its work buffers (a view costs a call to make, so they are made once)."""
        n, p, x = self.n, self.params, self._x
        c = SimpleNamespace(
            soc_lo=np.full(n, _SOC_LO), soc_hi=np.full(n, _SOC_HI - 1e-6),
            inv_soc_step=np.full(n, 1.0 / _SOC_STEP), frac7=np.empty((_NL, n)),
            kelvin=np.full(n, KELVIN_OFFSET), inv_t_ref=np.full(n, self._inv_t_ref),
            ea_over_kb=np.full(n, self._ea_over_kb), t_ref=np.full(n, self._t_ref_c),
            r2_over_r1=np.full(n, p.r2_over_r1), hysteresis_v=np.full(n, p.hysteresis_v),
            arr2=np.empty((2, n)), scalar=np.empty(n), i2=np.empty((2, n)), abs_n=np.empty(n),
            x0=x[0], x1=x[1], x2=x[2], x01=x[:2], rate0=self._rate[0], rate1=self._rate[1],
            rate2=self._rate[2], target01=self._target[:2], target2=self._target[2],
            sq0=self._sq[0], sq1=self._sq[1], rhs=np.empty(n + 3))
        c.i_n = c.i2[0]
        c.rhs_cells = c.rhs[:n]
        return c

    def _sensor_constants(self) -> SimpleNamespace:
        """sensor_counts' views of its channel vector and its thermistor constants as
        k-vectors (same values as the scalars; see the note above step)."""
        n, k, m, buf = self.n, self.k, self.m, self._buf
        th = self.board.thermistor
        return SimpleNamespace(
            cells=buf[:n], th=buf[n:n + k], lc=buf[n + k:n + k + m], x=np.empty_like(buf),
            inv_t25=np.full(k, 1.0 / T25_K), beta_k=np.full(k, float(th.beta_k)),
            r25_ohm=np.full(k, float(th.r25_ohm)), pullup_ohm=np.full(k, float(th.pullup_ohm)),
            th_scale=np.full(k, th.vref_v / th.lsb_v))

    def _lookup(self, soc: np.ndarray) -> np.ndarray:
        """Linear interpolation in the SOC table for every cell: (7, n), rows _L_* (the EMF
        and R2 slots hold zeros). A fresh array: the step keeps views of it as state.

        Operands are same-shape arrays (constants as n-vectors, the fraction copied to every
        row): numpy charges far more for a Python scalar or a broadcast than for the arithmetic
        on 23 cells. floor(f) equals the truncation for f >= 0, so fs - floor(fs) is the
        fraction the integer index leaves, computed without a mixed int/float operation."""
        c = self._const
        fs = np.maximum(soc, c.soc_lo)
        np.minimum(fs, c.soc_hi, out=fs)
        fs -= c.soc_lo
        fs *= c.inv_soc_step
        fl = np.floor(fs)
        i_s = fl.astype(np.intp)
        fs -= fl
        pair = self._tab_step.take(i_s, axis=1)
        frac = c.frac7
        frac[...] = fs
        delta = pair[_NL:]
        delta *= frac
        lo = pair[:_NL]
        lo += delta
        return lo

    def _refresh_derived(self) -> None:
        """Recompute what depends only on outputs and faults (not on every step)."""
        f, p = self.faults, self.params
        loss = f.contact_loss
        self._g_static = (np.where(self._balance, self._bleed_g, 0.0)
                          + 1.0 / f.soft_short_ohm)
        self._inv_short = 1.0 / f.soft_short_ohm
        self._r0_factor = self._r_scale / (1.0 - loss)
        self._r_factors = np.stack([self._r0_factor, self._r_scale])
        self._local_frac = 1.0 - loss
        self._rc_factor = (self.pack.cell.contact_resistance_ref_ohm * self._rc_scale
                           * math.sqrt(self.pack.cell.contact_pressure_ref_kpa))
        self._collapse_um = p.contact_collapse_um * float(loss.sum())
        if self.m:
            tilt = -p.contact_tilt_gain * (loss @ self._spot_xy)  # (2,)
            self._lc_factor = 1.0 + self._lc_tilt0 + self._lc_unit @ tilt
        else:
            self._lc_factor = np.zeros(0)
        self._loss_any = bool(loss.any())
        self._g_any = bool(self._g_static.any())
        self._vtap_any = bool((~np.isnan(f.vtap_open_since_s)).any())
        self._th_fault_any = bool(f.thermistor_open.any() or f.thermistor_short.any())
        self._lc_fault_any = bool(f.loadcell_stuck.any() or f.loadcell_open.any())
        b, n, k = self.board, self.n, self.k
        kpc = np.asarray(b.load_cell_kpa_per_count, dtype=float)
        self._ch_a = np.concatenate([
            self._cell_off_v - b.cell_offset_v + f.vtap_offset_v, np.zeros(k),
            self._lc_off_kpa + f.loadcell_offset_kpa / self._lc_gain,
            [self._cur_off_a + f.current_offset_a - b.current_offset_a, 0.0]])
        self._ch_s = np.concatenate([
            np.full(n, 1.0 / b.cell_lsb_v), np.ones(k), self._lc_gain / kpc,
            [1.0 / b.current_lsb_a, 1.0 / b.bus_lsb_v]])
        self._ch_c = np.concatenate([np.zeros(n + k), np.asarray(b.load_cell_offset_counts,
                                                                  dtype=float), [0.0, 0.0]])
        if self._c is not None:
            self._sync_c()

    def _update_pressure(self) -> None:
        p, fx = self.params, self.pack.fixture
        # ndarray.dot and add.reduce: what @ and .sum() compute, without their wrappers
        dx_um = (float(self._swell_um.dot(self.soc))
                 + fx.thermal_um_per_k * (float(_add_reduce(self._temp[: self.n])) / self.n
                                          - fx.reference_temperature_c)
                 - self._collapse_um)
        # Springs and pouch stiffen as they compress (assumption): k (1 + s dx / dx_full)
        stiff = 1.0 + p.fixture_stiffening * dx_um / self._swell_full_total
        pressure = fx.preload_kpa + self._k_fix * dx_um * max(stiff, 0.1) + self.gas_kpa
        self.pressure_kpa = max(pressure, 0.0)
        if self._c is None:
            self._lc_kpa = self.pressure_kpa * self._lc_factor
        else:
            np.multiply(self.pressure_kpa, self._lc_factor, out=self._lc_kpa)

    def _settle(self) -> None:
        """Initial terminal voltages at rest (no step taken)."""
        tab = self._lookup(self.soc)
        self._ocv = tab[_L_OCV] + tab[_L_DOCV_DT] * (self._temp[: self.n] - self._t_ref_c)
        self.cell_v = self._ocv.copy()

    # ------------------------------------------------------------------ C engine
    # csrc/ssb_plant.h. The dynamic arrays (soc, _x, _temp, cell_v, _ocv, _i_cell, _r_series,
    # _lc_kpa) become views of one state vector that the C code updates in place, so
    # snapshot() copies that vector (one copy) and restore() writes it back. What depends on
    # outputs and faults is copied into fixed buffers by _sync_c (from _refresh_derived).

    def _setup_c(self) -> None:
        try:
            from hil.emulator import _plant  # built by pip install (setup.py cffi_modules)
        except ImportError as exc:
            raise RuntimeError("hil.emulator._plant is not built: rebuild it "
                               "(pip install --no-build-isolation -e .) or use engine='numpy'"
                               ) from exc

        ffi, lib = _plant.ffi, _plant.lib
        n, m, k, p = self.n, self.m, self.k, self.params
        fx = self.pack.fixture
        sizes = (n, 3 * n, n + 3, n, n, n, n, m)
        state = np.zeros(sum(sizes))
        views = []
        at = 0
        for size in sizes:
            views.append(state[at:at + size])
            at += size
        soc, x, temp, cell_v, ocv, i_cell, r_series, lc = views
        soc[...] = self.soc
        x[...] = self._x.ravel()
        temp[...] = self._temp
        cell_v[...] = self.cell_v
        ocv[...] = self._ocv
        i_cell[...] = self._i_cell
        r_series[...] = self._r_series
        lc[...] = self._lc_kpa
        self.soc, self._temp, self.cell_v, self._ocv = soc, temp, cell_v, ocv
        self._x = x.reshape(3, n)
        self._i_cell, self._r_series, self._lc_kpa = i_cell, r_series, lc
        work = np.zeros((lib.SSB_PLANT_WORK_ROWS, n + 3))
        nch = n + k + m + 2
        bufs = {name: np.zeros(n) for name in (
            "r0_factor", "r_scale", "rc_factor", "local_frac", "g_static", "inv_short",
            "cell_heat_w", "vtap_open_since_s")}
        bufs["lc_factor"] = np.zeros(m)
        for name in ("ch_a", "ch_s", "ch_c"):
            bufs[name] = np.zeros(nch)
        static = {
            "tab": self._tab_step, "capacity_as": np.ascontiguousarray(self._capacity_as),
            "self_discharge_a": np.ascontiguousarray(self._self_discharge_a),
            "hyst_k_per_as": np.ascontiguousarray(self._hyst_k),
            "swell_um": np.ascontiguousarray(self._swell_um),
            "th_weights": np.ascontiguousarray(self._th_weights),
            "th_off_kelvin": np.ascontiguousarray(self._th_off_k_kelvin),
            "ch_lo": np.ascontiguousarray(self._ch_lo), "ch_hi": np.ascontiguousarray(self._ch_hi)}

        def ptr(a: np.ndarray, ctype: str = "double *") -> Any:
            return ffi.cast(ctype, ffi.from_buffer(a))

        cfg = ffi.new("ssb_plant_config_t *")
        cfg.n, cfg.m, cfg.n_soc = n, m, self._tab_step.shape[1]
        cfg.tab = ptr(static["tab"])
        cfg.soc_lo, cfg.soc_hi, cfg.inv_soc_step = _SOC_LO, _SOC_HI - 1e-6, 1.0 / _SOC_STEP
        cfg.kelvin_offset, cfg.inv_t_ref_per_k = KELVIN_OFFSET, self._inv_t_ref
        cfg.ea_over_kb_k, cfg.t_ref_c = self._ea_over_kb, self._t_ref_c
        cfg.r2_over_r1, cfg.hysteresis_v, cfg.tau2_s = p.r2_over_r1, p.hysteresis_v, p.tau2_s
        cfg.one_minus_eta = self._one_minus_eta
        cfg.min_local_pressure_kpa = p.min_local_pressure_kpa
        for name in ("capacity_as", "self_discharge_a", "hyst_k_per_as", "swell_um"):
            setattr(cfg, name, ptr(static[name]))
        for name in ("r0_factor", "r_scale", "rc_factor", "local_frac", "g_static",
                     "inv_short", "cell_heat_w", "lc_factor"):
            setattr(cfg, name, ptr(bufs[name]))
        cfg.thermal_um_per_k, cfg.fixture_ref_c = fx.thermal_um_per_k, fx.reference_temperature_c
        cfg.swell_full_total_um = self._swell_full_total
        cfg.fixture_stiffening, cfg.preload_kpa = p.fixture_stiffening, fx.preload_kpa
        cfg.k_fix_kpa_per_um = self._k_fix

        st = ffi.new("ssb_plant_state_t *")
        st.soc, st.x, st.temp_c, st.cell_v = ptr(soc), ptr(x), ptr(temp), ptr(cell_v)
        st.ocv_v, st.i_cell_a, st.r_series_ohm = ptr(ocv), ptr(i_cell), ptr(r_series)
        st.lc_kpa, st.work = ptr(lc), ptr(work)

        th = self.board.thermistor
        scfg = ffi.new("ssb_plant_sense_config_t *")
        scfg.n, scfg.k, scfg.m = n, k, m
        scfg.th_weights, scfg.th_off_kelvin = ptr(static["th_weights"]), ptr(
            static["th_off_kelvin"])
        scfg.inv_t25_per_k, scfg.beta_k = 1.0 / T25_K, float(th.beta_k)
        scfg.r25_ohm, scfg.pullup_ohm = float(th.r25_ohm), float(th.pullup_ohm)
        scfg.th_counts_per_unit = th.vref_v / th.lsb_v
        scfg.vtap_open_since_s = ptr(bufs["vtap_open_since_s"])
        scfg.vtap_open_tau_s = p.vtap_open_tau_s
        for name in ("ch_a", "ch_s", "ch_c"):
            setattr(scfg, name, ptr(bufs[name]))
        scfg.ch_lo, scfg.ch_hi = ptr(static["ch_lo"]), ptr(static["ch_hi"])
        raw = np.zeros(nch, dtype=np.int64)
        sense_buf = np.zeros(nch)
        self._c = SimpleNamespace(
            ffi=ffi, begin=lib.ssb_plant_begin, finish=lib.ssb_plant_finish,
            sense=lib.ssb_plant_sense, cfg=cfg, st=st, scfg=scfg, state=state, work=work,
            v_open=work[lib.SSB_PLANT_W_V_OPEN, :n], r_eff=work[lib.SSB_PLANT_W_R_EFF, :n],
            bufs=bufs, static=static, sums=ffi.new("double[2]"), p_out=ffi.new("double *"),
            thermal={}, raw=raw, raw_p=ptr(raw, "int64_t *"), sense_buf_p=ptr(sense_buf),
            sense_buf=sense_buf, nch=nch, noise_src=None, noise_p=None, ptr=ptr,
            th_dt=math.nan, th=None)
        self._sync_c()

    def _sync_c(self) -> None:
        """Copy what depends on outputs and faults into the C engine's buffers."""
        c = self._c
        assert c is not None  # noqa: S101 (only called with the C engine)
        b, f, cfg = c.bufs, self.faults, c.cfg
        b["r0_factor"][...] = self._r0_factor
        b["r_scale"][...] = self._r_scale
        b["rc_factor"][...] = self._rc_factor
        b["local_frac"][...] = self._local_frac
        b["g_static"][...] = self._g_static
        b["inv_short"][...] = self._inv_short
        b["cell_heat_w"][...] = f.cell_heat_w
        b["lc_factor"][...] = self._lc_factor
        b["vtap_open_since_s"][...] = f.vtap_open_since_s
        b["ch_a"][...] = self._ch_a
        b["ch_s"][...] = self._ch_s
        b["ch_c"][...] = self._ch_c
        cfg.loss_any, cfg.g_any = int(self._loss_any), int(self._g_any)
        cfg.heat_fault_any = int(self._heat_fault_any)
        cfg.collapse_um = self._collapse_um
        c.scfg.vtap_any = int(self._vtap_any)
        c.th_dt = math.nan  # faults may have changed the coolant or the ambient override

    def _thermal_c(self, dt_s: float) -> tuple[Any, Any, Any]:
        """_thermal_matrix as C pointers, cached under the same key."""
        c = self._c
        assert c is not None  # noqa: S101 (only called with the C engine)
        key = (dt_s, self.faults.coolant_lost, self.ambient_effective_c)
        hit = c.thermal.get(key)
        if hit is None:
            arrays = tuple(np.ascontiguousarray(a) for a in self._thermal_matrix(dt_s))
            if len(c.thermal) > 16:
                c.thermal.clear()
            # the arrays ride along so that the pointers stay valid
            hit = c.thermal[key] = (*(c.ptr(a) for a in arrays), arrays)
        return hit[0], hit[1], hit[2]

    def _c_error(self, func: str, rc: int) -> None:
        raise ValueError(f"plant step: {func} refused {_C_ERRORS.get(rc, 'input')} (error {rc})")

    def _dt_constants(self, dt_s: float) -> tuple[float, np.ndarray, np.ndarray, np.ndarray,
                                                  np.ndarray]:
        """What the step needs that depends only on dt (and static parameters), as n-vectors:
        dt, -dt, -dt/tau2 and -(gamma / Q) dt per cell. Negated here so that the step needs no
        negation: -(a/b) and (-a)/b are the same double, so this changes no bit."""
        n = self.n
        neg_hk_dt = self._hyst_k * dt_s
        np.negative(neg_hk_dt, out=neg_hk_dt)
        self._dt_consts = (dt_s, np.full(n, dt_s), np.full(n, -dt_s),
                           np.full(n, -(dt_s / self.params.tau2_s)), neg_hk_dt)
        return self._dt_consts

    # ------------------------------------------------------------------ step
    # The step is a chain of small numpy operations on n-cell vectors. For n ~ 23 each one costs
    # its call overhead, not its arithmetic, and numpy charges several times more for a Python
    # scalar operand or a broadcast than for two same-shape arrays. So constants are n-vectors
    # (self._const, per-dt ones in _dt_constants), the stack current is filled into a vector
    # once, rows that get the same operation sit next to each other, and work buffers are
    # preallocated. Every value is computed by the same IEEE operations on the same operands as
    # the straightforward form (docs/emulator.md), so results are bit-for-bit those of that
    # form; the comments name the quantity each line computes. Arrays kept as state (soc,
    # _temp, cell_v, _ocv, _r_series, _lc_kpa) are fresh every step: snapshot() holds them.

    def step(self, dt_s: float) -> None:
        """Advance the plant by dt_s with its current outputs, load and faults."""
        if not dt_s > 0.0 or not math.isfinite(dt_s):
            raise ValueError(f"dt_s must be > 0 and finite, got {dt_s!r}")
        c = self._c
        if c is None:
            self._step_numpy(dt_s)
            return
        # C engine (csrc/ssb_plant.h): everything up to v_open/r_eff, the load in Python,
        # then the rest of the step. Same equations and order as _step_numpy.
        rc = c.begin(c.cfg, c.st, self.pressure_kpa, c.sums)
        if rc:
            self._c_error("ssb_plant_begin", rc)
        sums = c.sums
        i_s = self._stack_current(dt_s, c.v_open, c.r_eff, sums[0], sums[1])
        if dt_s != c.th_dt:  # th_dt is reset when ambient or coolant may have changed
            c.th = self._thermal_c(dt_s)
            c.th_dt = dt_s
        minv, c_dt, amb = c.th
        gas = self.gas_kpa
        if self.faults.gas_ramp_kpa_per_s:
            gas += self.faults.gas_ramp_kpa_per_s * dt_s
        rc = c.finish(c.cfg, c.st, i_s, dt_s, minv, c_dt, amb, gas, c.p_out)
        if rc:
            self._c_error("ssb_plant_finish", rc)
        self.gas_kpa = gas
        self.t_s += dt_s
        self.pressure_kpa = c.p_out[0]
        self.current_a = i_s
        self.load.observe(self.cell_v)

    def _step_numpy(self, dt_s: float) -> None:
        """The NumPy step (engine="numpy"): the reference of the C engine."""
        p, n, c = self.params, self.n, self._const
        consts = self._dt_consts
        if consts[0] != dt_s:
            consts = self._dt_constants(dt_s)
        _, dt_n, neg_dt_n, neg_dt_over_tau2_n, neg_hk_dt = consts
        temp = self._temp[:n]
        tab = self._lookup(self.soc)
        # Arrhenius factor exp(Ea/kB (1/T - 1/Tref)); T in kelvin is reused for the heat
        t_k = np.add(temp, c.kelvin)
        arr = np.reciprocal(t_k)
        arr -= c.inv_t_ref
        arr *= c.ea_over_kb
        np.exp(arr, out=arr)
        # OCV at the cell temperature: ocv_ref + dU/dT (T - Tref)
        ocv = np.subtract(temp, c.t_ref)
        ocv *= tab[_L_DOCV_DT]
        ocv += tab[_L_OCV]
        # (R0, R1) <- (R0 arr r0_factor, R1 arr r_scale); R2 = R1 r2/r1; tau1 <- tau1 arr
        arr2 = c.arr2
        arr2[...] = arr
        r01 = tab[_L_R0:_L_R2]
        r01 *= arr2
        r01 *= self._r_factors
        r_series = tab[_L_R0]
        np.multiply(tab[_L_R1], c.r2_over_r1, out=tab[_L_R2])
        r12 = tab[_L_R1:_L_TAU1]
        tau1 = tab[_L_TAU1]
        tau1 *= arr

        # series resistance: ohmic (current crowds through the remaining contact area after a
        # contact loss) plus contact resistance at the local pressure, R_ref (p_ref / p)^0.5
        if self._loss_any:
            p_local = np.maximum(self.pressure_kpa * self._local_frac, p.min_local_pressure_kpa)
            r_contact = self._rc_factor / np.sqrt(p_local)
        else:
            s = c.scalar
            s.fill(1.0 / math.sqrt(max(self.pressure_kpa, p.min_local_pressure_kpa)))
            r_contact = np.multiply(self._rc_factor, s, out=s)
        r_series += r_contact

        # terminal voltage v = (e + R i_s) / (1 + R g), g = bleed + soft-short conductance
        x = self._x  # rows: RC1 voltage, RC2 voltage, hysteresis state
        x2 = c.x2
        emf = tab[_L_EMF]
        np.add(ocv, c.x0, out=emf)
        emf += c.x1
        tmp = np.multiply(x2, c.hysteresis_v)
        emf += tmp
        g_any = self._g_any
        if g_any:
            inv = 1.0 / (1.0 + r_series * self._g_static)
            v_open = emf * inv
            r_eff = r_series * inv
            v_s0 = float(v_open.sum())
            r_s = float(r_eff.sum())
        else:
            v_open, r_eff = emf, r_series
            # both stack sums in one reduction (rows EMF and R0 are adjacent)
            v_s0, r_s = np.add.reduce(tab[_L_EMF:_L_R1], 1).tolist()
        i_s = self._stack_current(dt_s, v_open, r_eff, v_s0, r_s)
        i2 = c.i2
        i2.fill(i_s)
        i_n = c.i_n  # row 0 of i2
        v = np.multiply(r_eff, i_n)
        v += v_open
        # electrochemical current (bleed and leak currents leave at the terminals). Without
        # bleed or shorts every cell carries i_s: i_n and the scalars below then give each
        # element exactly what the array form gives.
        abs_n = c.abs_n
        if g_any:
            i_cell: np.ndarray | float = i_s - self._g_static * v
            i_n = i2[0] = i2[1] = i_cell
            charge = i_cell - self._one_minus_eta * np.maximum(i_cell, 0.0)
            charge -= self._self_discharge_a
            np.abs(i_cell, out=abs_n)
            np.sign(i_cell, out=c.target2)
        else:
            i_cell = i_s
            # np.maximum(i, 0.0) and np.sign(i), NaN and signed zero included
            i_pos = 0.0 if i_s <= 0.0 else i_s
            charge = np.subtract(i_s - self._one_minus_eta * i_pos, self._self_discharge_a)
            abs_n.fill(abs(i_s))
            c.target2.fill(1.0 if i_s > 0.0 else -1.0 if i_s < 0.0 else 0.0 if i_s == 0.0
                           else i_s)

        # SOC (coulombic efficiency on charge, self-discharge)
        charge *= dt_n
        charge /= self._capacity_as
        charge += self.soc
        self.soc = charge
        # RC branches and Plett's hysteresis in one exact exponential update:
        # x <- x e + (1 - e) x_inf, x_inf = (R1 i, R2 i, sign i),
        # rates 1/tau1, 1/tau2 and |i| gamma / Q (hysteresis saturates over Q / gamma)
        rate = self._rate
        np.divide(neg_dt_n, tau1, out=c.rate0)
        np.divide(neg_dt_over_tau2_n, arr, out=c.rate1)
        np.multiply(abs_n, neg_hk_dt, out=c.rate2)
        e = np.exp(rate, out=self._e)
        target = self._target
        np.multiply(r12, i2, out=c.target01)
        x -= target
        x *= e
        x += target

        # heat: ohmic + both RC branches + hysteresis + entropic (I T dU/dT) + soft short +
        # injected
        heat = np.multiply(r_series, i_n)
        np.multiply(t_k, tab[_L_DOCV_DT], out=tmp)
        heat += tmp
        heat *= i_n
        sq = np.multiply(c.x01, c.x01, out=self._sq)
        sq /= r12
        heat += c.sq0
        heat += c.sq1
        np.abs(x2, out=tmp)
        tmp *= abs_n
        tmp *= c.hysteresis_v
        heat += tmp
        if self._heat_fault_any:
            heat += v * v * self._inv_short + self.faults.cell_heat_w
        minv, c_dt, amb = self._thermal_matrix(dt_s)
        rhs = c.rhs
        np.multiply(self._temp, c_dt, out=rhs)
        rhs += amb
        c.rhs_cells += heat
        self._temp = minv.dot(rhs)

        if self.faults.gas_ramp_kpa_per_s:
            self.gas_kpa += self.faults.gas_ramp_kpa_per_s * dt_s
        self.t_s += dt_s
        self._update_pressure()
        self.current_a = i_s
        self.cell_v = v
        self._ocv = ocv
        self._i_cell = i_cell  # a float when every cell carries the stack current
        self._r_series = r_series
        self.load.observe(v)

    def _stack_current(self, dt_s: float, v_open: np.ndarray, r_eff: np.ndarray,
                       v_s0: float, r_s: float) -> float:
        """Stack current (+ = charge) for this step, and the link (bus) capacitor update.
        v_s0, r_s: sums of v_open (stack voltage at zero current) and r_eff."""
        p, o, f = self.params, self.outputs, self.faults
        g_bus = 1.0 / p.link_discharge_resistance_ohm
        if f.precharge_fail:
            g_bus += 1.0 / p.precharge_fail_short_ohm
        if o.contactor_pos and o.contactor_neg:
            if f.forced_current_a is not None:
                demand = f.forced_current_a
            else:
                demand = self.load.demand_a(self.t_s - self._load_t0, v_open, r_eff)
                if self.load.respect_limits or isinstance(self.load, CcCvCharge):
                    demand = min(max(demand, -o.discharge_limit_a), o.charge_limit_a)
            # the bus hangs on the stack through the path resistance; anything on the bus
            # (discharge resistor, a shorted link) draws from the stack too
            i_s = (demand - v_s0 * g_bus) / (1.0 + (r_s + p.path_resistance_ohm) * g_bus)
            self.bus_v = v_s0 + (r_s + p.path_resistance_ohm) * i_s
            return i_s
        c = p.link_capacitance_f
        if o.precharge and o.contactor_neg:
            # RC charge through the precharge resistor towards the divider's final value
            r_pre = p.precharge_resistance_ohm
            v_inf = v_s0 / (1.0 + r_pre * g_bus)
            tau = c * r_pre / (1.0 + r_pre * g_bus)
        else:
            v_inf, tau = 0.0, c / g_bus
        v0 = self.bus_v
        e = math.exp(-dt_s / tau)
        self.bus_v = v_inf + (v0 - v_inf) * e
        if o.precharge and o.contactor_neg:
            v_avg = v_inf + (v0 - v_inf) * tau / dt_s * (1.0 - e)
            return -(v_s0 - v_avg) / p.precharge_resistance_ohm
        return 0.0

    # ------------------------------------------------------------------ observations

    # ------------------------------------------------------------------ state save / restore

    def snapshot(self) -> PlantSnapshot:
        """The dynamic state (time, SOC, RC and hysteresis, temperatures, gas, bus, the load's
        progress, the noise stream's position), so that :meth:`restore` can undo steps and
        sensor reads exactly. Outputs, faults, ambient and parameters are not included: restore
        only across steps taken with the same commands. Cheap (a few microseconds)."""
        rng_state = self.rng.bit_generator.state
        c = self._c
        if c is not None:  # C engine: the arrays are views of one vector, updated in place
            return PlantSnapshot((
                self.t_s, c.state.copy(), self.gas_kpa, self.bus_v, self.pressure_kpa,
                self.current_a, self.load, dict(self.load.__dict__), self._load_t0,
                self._noise, self._noise_i, rng_state, self._lc_last_counts,
                self._lc_have_last))
        return PlantSnapshot((
            self.t_s, self.soc, self._x.copy(), self._temp, self.gas_kpa, self.bus_v,
            self.pressure_kpa, self._lc_kpa, self.current_a, self.cell_v, self._ocv,
            self._i_cell, self._r_series, self.load, dict(self.load.__dict__), self._load_t0,
            self._noise, self._noise_i, rng_state, self._lc_last_counts, self._lc_have_last))

    def restore(self, snap: PlantSnapshot) -> None:
        """Return to a :meth:`snapshot` (arrays are replaced, never modified, by the NumPy
        step(); the C engine's state vector is written back)."""
        c = self._c
        if c is not None:
            (self.t_s, state, self.gas_kpa, self.bus_v, self.pressure_kpa, self.current_a,
             load, load_copy, self._load_t0, self._noise, self._noise_i, rng_state,
             self._lc_last_counts, self._lc_have_last) = snap.values
            c.state[...] = state
            load.__dict__.update(load_copy)
            self.load = load
            self.rng.bit_generator.state = rng_state
            return
        (self.t_s, self.soc, x, self._temp, self.gas_kpa, self.bus_v, self.pressure_kpa,
         self._lc_kpa, self.current_a, self.cell_v, self._ocv, self._i_cell, self._r_series,
         load, load_copy, self._load_t0, self._noise, self._noise_i, rng_state,
         self._lc_last_counts, self._lc_have_last) = snap.values
        self._x[...] = x
        # the same Load object (callers may hold it), with its progress as it was
        load.__dict__.update(load_copy)
        self.load = load
        self.rng.bit_generator.state = rng_state

    def truth(self) -> PlantTruth:
        n = self.n
        return PlantTruth(
            t_s=self.t_s,
            current_a=self.current_a,
            bus_voltage_v=self.bus_v,
            stack_voltage_v=float(self.cell_v.sum()),
            pressure_kpa=self.pressure_kpa,
            load_cell_pressure_kpa=self._lc_kpa.copy(),
            soc=self.soc.copy(),
            cell_voltage_v=self.cell_v.copy(),
            ocv_v=self._ocv.copy(),
            temperature_c=self._temp[:n].copy(),
            plate_temperature_c=self._temp[n:n + 2].copy(),
            coolant_temperature_c=float(self._temp[n + 2]),
            ambient_temperature_c=self.ambient_effective_c,
            capacity_ah=self.capacity_ah.copy(),
            leak_current_a=self.cell_v * self._inv_short,
            cell_current_a=np.full(n, self._i_cell) if isinstance(self._i_cell, float)
            else self._i_cell.copy(),
            series_resistance_ohm=self._r_series.copy(),
            hysteresis_v=self.params.hysteresis_v * self._x[2],
            rc_voltage_v=self._x[:2].T.copy(),
        )

    def _next_noise(self) -> np.ndarray:
        """One sample's scaled sensor noise, drawn in batches (a single draw costs more than
        the rest of the sample). Same seed and same call order give the same noise."""
        if self._noise_i >= len(self._noise):
            self._noise = self.rng.standard_normal((_NOISE_BATCH, len(self._noise_sigma)))
            self._noise *= self._noise_sigma
            self._noise_i = 0
        row = self._noise[self._noise_i]
        self._noise_i += 1
        return row

    def sensor_counts(self) -> SensorCounts:
        """Raw counts as the board's ADCs read them now: noise, offsets, quantisation, sensor
        faults. Draws from the plant's noise generator (deterministic per seed and call order).

        All channels go through one vector: counts = (x + noise + a) s + c, rounded and clamped
        to the wire type, with x the true value (V, NTC counts, kPa, A, V) and a, s, c the
        channel's offset error, scale and count offset (board profile plus calibration error).
        """
        c = self._c
        if c is None:
            return self._sensor_counts_numpy()
        f, n, k, m = self.faults, self.n, self.k, self.m
        if self._noise_i >= len(self._noise):
            self._next_noise()  # refills the batch (and takes its row 0: given back below)
            self._noise_i = 0
        if c.noise_src is not self._noise:  # a new batch, or one put back by restore()
            c.noise_src = self._noise
            c.noise_p = c.ptr(self._noise)
        rc = c.sense(c.scfg, c.st, self.t_s, self.current_a, self.bus_v,
                     c.noise_p + self._noise_i * c.nch, c.sense_buf_p, c.raw_p)
        if rc:
            self._c_error("ssb_plant_sense", rc)
        self._noise_i += 1
        raw = c.raw
        if self._th_fault_any:  # open NTC -> Vref (pull-up), shorted NTC -> 0 V
            th = self.board.thermistor
            raw[n:n + k][f.thermistor_open] = int(round(th.vref_v / th.lsb_v))
            raw[n:n + k][f.thermistor_short] = 0
        sensor_error = False
        if m and self._lc_fault_any:
            lc = raw[n + k:n + k + m]
            if self._lc_have_last:
                lc[f.loadcell_stuck] = np.asarray(self._lc_last_counts,
                                                  dtype=np.int64)[f.loadcell_stuck]
            self._lc_last_counts = lc.tolist()
            if f.loadcell_open.any():
                lc[f.loadcell_open] = INVALID_I32
                sensor_error = True  # the amplifier never becomes ready: a read timeout
        out = raw.tolist()
        if m:
            if not self._lc_fault_any:
                self._lc_last_counts = out[n + k:n + k + m]
            self._lc_have_last = True
        return SensorCounts(
            current_raw=out[-2],
            bus_voltage_raw=out[-1],
            cell_raw=out[:n],
            thermistor_raw=out[n:n + k],
            load_cell_raw=out[n + k:n + k + m],
            sensor_error=sensor_error,
        )

    def _sensor_counts_numpy(self) -> SensorCounts:
        """sensor_counts of the NumPy engine (the reference of ssb_plant_sense)."""
        p, f, n, k, m = self.params, self.faults, self.n, self.k, self.m
        sc = self._sensor
        buf = self._buf
        sc.cells[...] = self.cell_v
        if self._vtap_any:
            # an open tap wire (top of cell i): channel i decays through its input filter and
            # channel i+1 reads the difference, so the pair still sums to the true voltage
            for i in np.flatnonzero(~np.isnan(f.vtap_open_since_s)):
                decay = math.exp(-(self.t_s - f.vtap_open_since_s[i]) / p.vtap_open_tau_s)
                lost = buf[i] * (1.0 - decay)
                buf[i] -= lost
                if i + 1 < n:
                    buf[i + 1] += lost
        if k:
            # NTC divider voltage by the Beta equation (as ThermistorScaling.c_to_counts),
            # at the thermistor's position along the stack, plus the NTC's tolerance
            # (constants as k-vectors: see the note above step)
            t_k = self._th_weights.dot(self._temp[:n])
            t_k += self._th_off_k_kelvin
            np.reciprocal(t_k, out=t_k)
            t_k -= sc.inv_t25
            t_k *= sc.beta_k
            r_ntc = np.exp(t_k, out=t_k)
            r_ntc *= sc.r25_ohm
            den = np.add(r_ntc, sc.pullup_ohm)
            np.divide(r_ntc, den, out=sc.th)
            sc.th *= sc.th_scale
        sc.lc[...] = self._lc_kpa
        buf[-2] = self.current_a
        buf[-1] = self.bus_v
        if self._noise_i >= len(self._noise):
            self._next_noise()  # refills the batch (and takes its row 0: given back below)
            self._noise_i = 0
        x = np.add(buf, self._noise[self._noise_i], out=sc.x)
        self._noise_i += 1
        x += self._ch_a
        x *= self._ch_s
        x += self._ch_c
        np.rint(x, out=x)
        np.maximum(x, self._ch_lo, out=x)
        np.minimum(x, self._ch_hi, out=x)
        raw = x.astype(np.int64)
        if self._th_fault_any:  # open NTC -> Vref (pull-up), shorted NTC -> 0 V
            th = self.board.thermistor
            raw[n:n + k][f.thermistor_open] = int(round(th.vref_v / th.lsb_v))
            raw[n:n + k][f.thermistor_short] = 0
        sensor_error = False
        if m:
            lc = raw[n + k:n + k + m]
            if self._lc_fault_any:
                if self._lc_have_last:
                    lc[f.loadcell_stuck] = self._lc_last_counts[f.loadcell_stuck]
                self._lc_last_counts = lc.copy()
                if f.loadcell_open.any():
                    lc[f.loadcell_open] = INVALID_I32
                    sensor_error = True  # the amplifier never becomes ready: a read timeout
            else:
                self._lc_last_counts = lc
            self._lc_have_last = True
        out = raw.tolist()
        return SensorCounts(
            current_raw=out[-2],
            bus_voltage_raw=out[-1],
            cell_raw=out[:n],
            thermistor_raw=out[n:n + k],
            load_cell_raw=out[n + k:n + k + m],
            sensor_error=sensor_error,
        )


__all__ = [
    "CcCvCharge", "ConstantCurrent", "CurrentProfile", "FaultError", "Load", "Outputs", "Plant",
    "PlantParams", "PlantSnapshot", "PlantTruth", "Rest", "SensorCounts",
]
