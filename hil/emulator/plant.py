"""Plant model of one stack: electrical, thermal, mechanical, sensors, faults. No serial I/O.

One :class:`Plant` is one stack of the pack (one fixture, one board). It is deliberately richer
than the estimator's model (docs/emulator.md lists how): per-cell spread of capacity, resistance,
swelling and self-discharge; two RC branches; OCV hysteresis; Arrhenius temperature dependence;
a thermal network of cells, end plates and coolant; stack pressure from lithium thickness change,
a stiffening fixture and thermal expansion; contact resistance growing as pressure falls; sensor
noise, per-channel offsets and quantisation; the link capacitor for precharge; faults.

This module is the composition and the reference (NumPy) step; its parts live in
hil/emulator/params.py (PlantParams, the SOC tables), loads.py (Load and its kinds),
thermal.py (the thermal network), sensors.py (SensorCounts, sensor synthesis) and plant_c.py
(the C engine's binding). Every public name of those parts is importable from here too.

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

import math
from dataclasses import asdict, dataclass, replace
from types import SimpleNamespace

import numpy as np

from boards.config import BOLTZMANN_EV_PER_K, KELVIN_OFFSET, BoardProfile, PackConfig
from hil.emulator.faults import FaultError, InjectedFault, PlantFaults
from hil.emulator.loads import CcCvCharge, ConstantCurrent, CurrentProfile, Load, Rest
from hil.emulator.params import (
    L_DOCV_DT,
    L_EMF,
    L_OCV,
    L_R0,
    L_R1,
    L_R2,
    L_TAU1,
    NL,
    SOC_HI,
    SOC_LO,
    SOC_STEP,
    PlantParams,
    default_params,
    soc_tables,
    spread,
)
from hil.emulator.plant_c import CEngine
from hil.emulator.sensors import SensorCounts, Sensors
from hil.emulator.thermal import ThermalNetwork

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


_add_reduce = np.add.reduce
# "c": the step and the sensor arithmetic in csrc/ssb_plant.c (cffi module hil.emulator._plant);
# "reference": the NumPy implementation, kept as the reference the C engine is tested against.
ENGINES = ("c", "reference")


class Plant:
    """One stack: ``n`` cells in series in one fixture, read by one board.

    Parameters: the pack file (what the BMS knows), the stack's index in it, the board profile
    (channel counts and scaling of the raw counts), a seed (per-cell spread and sensor noise;
    the same seed and the same calls give the same numbers), optional plant parameters
    (default: plant_defaults.yaml), the initial mean SOC and temperature, and the engine:
    "c" (default) runs the numeric part of step() and sensor_counts() in csrc/ssb_plant.c,
    "reference" the NumPy reference (same equations; results agree to the last bits of exp
    and the dot products, see tests/test_plant_c.py).
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
        self._c: CEngine | None = None  # the C engine's buffers (plant_c.py)
        self._bind(pack, stack_index, board, params)
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, stack_index]))
        spread_rng = np.random.default_rng(np.random.SeedSequence([seed, stack_index, 1]))
        self._tab, self._tab_step = soc_tables(pack, self.params)
        soc0 = self._draw_cells(spread_rng, initial_soc)
        self._draw_fixture(spread_rng)
        self._sensors = Sensors(self.board, self.stack, self.params, self.rng, spread_rng)
        self._init_constants()
        self._init_state(soc0, float(temperature_c))
        self._refresh_derived()
        self._update_pressure()
        self._settle()
        if engine == "c":
            self._c = CEngine(self)

    def _bind(self, pack: PackConfig, stack_index: int, board: BoardProfile | None,
              params: PlantParams | None) -> None:
        """The pack, its stack, the board (checked against the stack) and the parameters."""
        if not 0 <= stack_index < len(pack.stacks):
            raise ValueError(f"stack_index {stack_index} not in 0..{len(pack.stacks) - 1}")
        self.pack = pack
        self.stack = pack.stacks[stack_index]
        self.stack_index = stack_index
        self.params = params if params is not None else default_params()
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

    def _draw_cells(self, spread_rng: np.random.Generator, initial_soc: float) -> np.ndarray:
        """Per-cell spread of capacity, resistances, swelling and self-discharge (seeded);
        returns the initial SOC of every cell."""
        p, n, cell = self.params, self.n, self.pack.cell
        self.capacity_ah = cell.capacity_ah * (1.0 + spread(spread_rng, p.capacity_spread, n))
        self._capacity_as = self.capacity_ah * 3600.0
        self._r_scale = 1.0 + spread(spread_rng, p.resistance_spread, n)
        self._rc_scale = 1.0 + spread(spread_rng, p.contact_resistance_spread, n)
        self._swell_um = (cell.swelling_um_full * self.capacity_ah / cell.capacity_ah
                          * (1.0 + spread(spread_rng, p.swelling_spread, n)))
        self._self_discharge_a = p.self_discharge_a * np.exp(
            spread(spread_rng, p.self_discharge_log_sigma, n))
        return initial_soc + spread(spread_rng, p.initial_soc_spread, n)

    def _draw_fixture(self, spread_rng: np.random.Generator) -> None:
        """Where each cell's contact loss is (a unit vector on the end plate: it tilts the load
        cells), the load cells' positions and their static tilt (seeded)."""
        p, n, m = self.params, self.n, self.m
        ang = spread_rng.uniform(0.0, 2.0 * math.pi, n)
        self._spot_xy = np.stack([np.cos(ang), np.sin(ang)], axis=1)
        xy = np.array(self.pack.fixture.load_cells_xy_mm[:m], dtype=float).reshape(-1, 2)
        if len(xy) < m:  # more load cells on the board than positions in the pack file
            xy = np.vstack([xy, np.zeros((m - len(xy), 2))])
        rmax = float(np.max(np.hypot(xy[:, 0], xy[:, 1]))) if m else 1.0
        self._lc_unit = xy / (rmax if rmax > 0 else 1.0)
        self._lc_tilt0 = spread(spread_rng, p.load_cell_tilt_spread, m)

    def _init_constants(self) -> None:
        """Constants of the step derived from the pack and the drawn spread."""
        pack, cell, p = self.pack, self.pack.cell, self.params
        self._t_ref_c = cell.reference_temperature_c
        self._ea_over_kb = cell.activation_energy_ev / BOLTZMANN_EV_PER_K
        self._inv_t_ref = 1.0 / (cell.reference_temperature_c + KELVIN_OFFSET)
        self._bleed_g = 1.0 / pack.balancing.bleed_resistance_ohm if pack.balancing else 0.0
        self._one_minus_eta = 1.0 - cell.coulombic_efficiency
        self._hyst_k = p.hysteresis_rate / self._capacity_as
        self._k_fix = pack.fixture.stiffness_kpa_per_um
        self._swell_full_total = float(self._swell_um.sum())
        self._thermal = ThermalNetwork(cell.heat_capacity_j_per_k, p, self.n)

    def _init_state(self, soc0: np.ndarray, temperature_c: float) -> None:
        """The dynamic state at rest, the commands (all open, no load, no faults) and the
        step's work buffers."""
        n = self.n
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
        self.ambient_c = temperature_c
        self._temp = np.full(n + 3, temperature_c)  # cells, plate bottom/top, coolant
        self.gas_kpa = 0.0
        self.bus_v = 0.0
        self.outputs = Outputs()
        self.faults = PlantFaults(n, self.m, self.k)
        self.load: Load = Rest()
        self._load_t0 = 0.0
        # values of the last step, for truth() and sensor_counts()
        self.current_a = 0.0
        self.cell_v = np.zeros(n)
        self._ocv = np.zeros(n)
        self._i_cell: np.ndarray | float = np.zeros(n)
        self._r_series = np.zeros(n)
        self._balance = np.zeros(n, dtype=bool)
        self._balance_mask = 0  # the int _balance was made from (set_outputs)
        self.pressure_kpa = 0.0
        self._lc_kpa = np.zeros(self.m)
        self._heat_fault_any = False

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
        # Of what _refresh_derived recomputes only the bleed conductance depends on the
        # outputs (the rest on the faults): a command that leaves the bleed switches as they
        # were (the usual SET_OUTPUTS: a limit moved, or the periodic resend) changes none of
        # it, and another mask changes that one array (the same values as the full refresh).
        mask = int(balance_mask)
        if mask != self._balance_mask:
            self._balance_mask = mask
            self._balance = ((mask >> np.arange(self.n)) & 1).astype(bool)
            self._refresh_bleed()

    def _refresh_bleed(self) -> None:
        """The static conductance per cell (bleed switches and soft shorts): the part of
        :meth:`_refresh_derived` that the bleed switches change."""
        self._g_static = (np.where(self._balance, self._bleed_g, 0.0)
                          + 1.0 / self.faults.soft_short_ohm)
        self._g_any = bool(self._g_static.any())
        if self._c is not None:
            self._c.sync_bleed(self)

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

    def _thermal_matrix(self, dt_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The thermal network's backward-Euler matrices (ThermalNetwork.matrix) for dt_s at
        the present coolant state and ambient."""
        return self._thermal.matrix(dt_s, self.faults.coolant_lost, self.ambient_effective_c)

    def _step_constants(self) -> SimpleNamespace:
        """The step's scalar constants as n-vectors (same values; see the note above step) and
        views into its work buffers (a view costs a call to make, so they are made once)."""
        n, p, x = self.n, self.params, self._x
        c = SimpleNamespace(
            soc_lo=np.full(n, SOC_LO), soc_hi=np.full(n, SOC_HI - 1e-6),
            inv_soc_step=np.full(n, 1.0 / SOC_STEP), frac7=np.empty((NL, n)),
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
        delta = pair[NL:]
        delta *= frac
        lo = pair[:NL]
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
        self._sensors.refresh(f)
        if self._c is not None:
            self._c.sync(self)

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
        self._ocv = tab[L_OCV] + tab[L_DOCV_DT] * (self._temp[: self.n] - self._t_ref_c)
        self.cell_v = self._ocv.copy()

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
        if self._c is None:
            self._step_reference(dt_s)
        else:
            self._c.step(self, dt_s)

    def _step_reference(self, dt_s: float) -> None:
        """The NumPy step (engine="reference"): the reference of the C engine."""
        consts = self._dt_consts
        if consts[0] != dt_s:
            consts = self._dt_constants(dt_s)
        tab, t_k, arr, ocv = self._cell_parameters()
        v_open, r_eff, v_s0, r_s = self._open_circuit(tab, ocv)
        i_s = self._stack_current(dt_s, v_open, r_eff, v_s0, r_s)
        v, i_cell, i_n, charge = self._cell_currents(i_s, v_open, r_eff)
        self._integrate(consts, charge, tab, arr)
        heat = self._heat(tab, t_k, v, i_n)
        self._thermal_step(dt_s, heat)
        if self.faults.gas_ramp_kpa_per_s:
            self.gas_kpa += self.faults.gas_ramp_kpa_per_s * dt_s
        self.t_s += dt_s
        self._update_pressure()
        self.current_a = i_s
        self.cell_v = v
        self._ocv = ocv
        self._i_cell = i_cell  # a float when every cell carries the stack current
        self._r_series = tab[L_R0]
        self.load.observe(v)

    def _cell_parameters(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The SOC lookup with temperature applied: (table, T in kelvin, Arrhenius factor, OCV).
        The table's rows become R0 + contact (the series resistance), R1, R2 and tau1."""
        c = self._const
        temp = self._temp[:self.n]
        tab = self._lookup(self.soc)
        # Arrhenius factor exp(Ea/kB (1/T - 1/Tref)); T in kelvin is reused for the heat
        t_k = np.add(temp, c.kelvin)
        arr = np.reciprocal(t_k)
        arr -= c.inv_t_ref
        arr *= c.ea_over_kb
        np.exp(arr, out=arr)
        # OCV at the cell temperature: ocv_ref + dU/dT (T - Tref)
        ocv = np.subtract(temp, c.t_ref)
        ocv *= tab[L_DOCV_DT]
        ocv += tab[L_OCV]
        # (R0, R1) <- (R0 arr r0_factor, R1 arr r_scale); R2 = R1 r2/r1; tau1 <- tau1 arr
        arr2 = c.arr2
        arr2[...] = arr
        r01 = tab[L_R0:L_R2]
        r01 *= arr2
        r01 *= self._r_factors
        np.multiply(tab[L_R1], c.r2_over_r1, out=tab[L_R2])
        tau1 = tab[L_TAU1]
        tau1 *= arr
        r_series = tab[L_R0]
        r_series += self._contact_resistance()
        return tab, t_k, arr, ocv

    def _contact_resistance(self) -> np.ndarray:
        """Contact resistance at the local pressure, R_ref (p_ref / p)^0.5 (current crowds
        through the remaining contact area after a contact loss)."""
        p = self.params
        if self._loss_any:
            p_local = np.maximum(self.pressure_kpa * self._local_frac, p.min_local_pressure_kpa)
            return self._rc_factor / np.sqrt(p_local)
        s = self._const.scalar
        s.fill(1.0 / math.sqrt(max(self.pressure_kpa, p.min_local_pressure_kpa)))
        return np.multiply(self._rc_factor, s, out=s)

    def _open_circuit(self, tab: np.ndarray, ocv: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Terminal voltage v = v_open + r_eff i_s with v_open = e / (1 + R g) and
        r_eff = R / (1 + R g), g = bleed + soft-short conductance, e the EMF (OCV + both RC
        voltages + hysteresis); and their stack sums."""
        c = self._const
        emf = tab[L_EMF]
        np.add(ocv, c.x0, out=emf)
        emf += c.x1
        emf += np.multiply(c.x2, c.hysteresis_v)
        r_series = tab[L_R0]
        if self._g_any:
            inv = 1.0 / (1.0 + r_series * self._g_static)
            v_open = emf * inv
            r_eff = r_series * inv
            return v_open, r_eff, float(v_open.sum()), float(r_eff.sum())
        # both stack sums in one reduction (rows EMF and R0 are adjacent)
        v_s0, r_s = np.add.reduce(tab[L_EMF:L_R1], 1).tolist()
        return emf, r_series, v_s0, r_s

    def _cell_currents(self, i_s: float, v_open: np.ndarray, r_eff: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray | float, np.ndarray, np.ndarray]:
        """Terminal voltages, the electrochemical current per cell (bleed and leak currents
        leave at the terminals; a float when every cell carries i_s), that current as a row,
        and the SOC's charge rate per cell (coulombic efficiency on charge, self-discharge).
        Also fills i2 (both rows), |i| and sign(i) for the RC and hysteresis update.

        Without bleed or shorts the scalars below give each element exactly what the array
        form gives (np.maximum(i, 0.0) and np.sign(i), NaN and signed zero included)."""
        c = self._const
        i2 = c.i2
        i2.fill(i_s)
        i_n = c.i_n  # row 0 of i2
        v = np.multiply(r_eff, i_n)
        v += v_open
        if self._g_any:
            i_cell: np.ndarray | float = i_s - self._g_static * v
            i_n = i2[0] = i2[1] = i_cell
            charge = i_cell - self._one_minus_eta * np.maximum(i_cell, 0.0)
            charge -= self._self_discharge_a
            np.abs(i_cell, out=c.abs_n)
            np.sign(i_cell, out=c.target2)
            return v, i_cell, i_n, charge
        i_pos = 0.0 if i_s <= 0.0 else i_s
        charge = np.subtract(i_s - self._one_minus_eta * i_pos, self._self_discharge_a)
        c.abs_n.fill(abs(i_s))
        c.target2.fill(1.0 if i_s > 0.0 else -1.0 if i_s < 0.0 else 0.0 if i_s == 0.0
                       else i_s)
        return v, i_s, i_n, charge

    def _integrate(self, consts: tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                   charge: np.ndarray, tab: np.ndarray, arr: np.ndarray) -> None:
        """SOC, and the RC branches and Plett's hysteresis in one exact exponential update:
        x <- x e + (1 - e) x_inf, x_inf = (R1 i, R2 i, sign i), rates 1/tau1, 1/tau2 and
        |i| gamma / Q (hysteresis saturates over Q / gamma)."""
        c, x = self._const, self._x
        _, dt_n, neg_dt_n, neg_dt_over_tau2_n, neg_hk_dt = consts
        charge *= dt_n
        charge /= self._capacity_as
        charge += self.soc
        self.soc = charge
        np.divide(neg_dt_n, tab[L_TAU1], out=c.rate0)
        np.divide(neg_dt_over_tau2_n, arr, out=c.rate1)
        np.multiply(c.abs_n, neg_hk_dt, out=c.rate2)
        e = np.exp(self._rate, out=self._e)
        target = self._target
        np.multiply(tab[L_R1:L_TAU1], c.i2, out=c.target01)
        x -= target
        x *= e
        x += target

    def _heat(self, tab: np.ndarray, t_k: np.ndarray, v: np.ndarray,
              i_n: np.ndarray) -> np.ndarray:
        """Heat per cell: ohmic + both RC branches + hysteresis + entropic (I T dU/dT) + soft
        short + injected."""
        c = self._const
        heat = np.multiply(tab[L_R0], i_n)
        heat += np.multiply(t_k, tab[L_DOCV_DT])
        heat *= i_n
        sq = np.multiply(c.x01, c.x01, out=self._sq)
        sq /= tab[L_R1:L_TAU1]
        heat += c.sq0
        heat += c.sq1
        tmp = np.abs(c.x2)
        tmp *= c.abs_n
        tmp *= c.hysteresis_v
        heat += tmp
        if self._heat_fault_any:
            heat += v * v * self._inv_short + self.faults.cell_heat_w
        return heat

    def _thermal_step(self, dt_s: float, heat: np.ndarray) -> None:
        """Backward Euler through the thermal network with the cells' heat."""
        c = self._const
        minv, c_dt, amb = self._thermal_matrix(dt_s)
        rhs = c.rhs
        np.multiply(self._temp, c_dt, out=rhs)
        rhs += amb
        c.rhs_cells += heat
        self._temp = minv.dot(rhs)

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

    # ------------------------------------------------------------------ state save / restore

    def snapshot(self) -> PlantSnapshot:
        """The dynamic state (time, SOC, RC and hysteresis, temperatures, gas, bus, the load's
        progress, the noise stream's position), so that :meth:`restore` can undo steps and
        sensor reads exactly. Outputs, faults, ambient and parameters are not included: restore
        only across steps taken with the same commands. Cheap (a few microseconds)."""
        c = self._c
        if c is not None:  # C engine: the arrays are views of one vector, updated in place
            arrays: np.ndarray | tuple = c.state.copy()
        else:
            arrays = (self.soc, self._x.copy(), self._temp, self._lc_kpa, self.cell_v,
                      self._ocv, self._i_cell, self._r_series)
        return PlantSnapshot((
            self.t_s, self.gas_kpa, self.bus_v, self.pressure_kpa, self.current_a, self.load,
            dict(self.load.__dict__), self._load_t0, self._sensors.state(), arrays))

    def restore(self, snap: PlantSnapshot) -> None:
        """Return to a :meth:`snapshot` (arrays are replaced, never modified, by the reference
        step(); the C engine's state vector is written back)."""
        (self.t_s, self.gas_kpa, self.bus_v, self.pressure_kpa, self.current_a, load,
         load_copy, self._load_t0, sensors, arrays) = snap.values
        if self._c is not None:
            self._c.state[...] = arrays
        else:
            (self.soc, x, self._temp, self._lc_kpa, self.cell_v, self._ocv, self._i_cell,
             self._r_series) = arrays
            self._x[...] = x
        # the same Load object (callers may hold it), with its progress as it was
        load.__dict__.update(load_copy)
        self.load = load
        self._sensors.set_state(sensors)

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

    def truth_row(self) -> list[float]:
        """The truth file's row (hil/emulator/truth.py ``truth_header``) as plain floats: the
        fields of :meth:`truth` the file keeps, without building the whole PlantTruth (its
        copies cost about as much as the rest of a step; a board writes one row per step)."""
        n = self.n
        temp = self._temp
        return [self.t_s, self.current_a, self.bus_v, float(self.cell_v.sum()),
                self.pressure_kpa, float(temp[n + 2]), self.ambient_effective_c,
                *self.soc.tolist(), *temp[:n].tolist(), *self.cell_v.tolist(),
                *self._lc_kpa.tolist()]

    def sensor_counts(self) -> SensorCounts:
        """Raw counts as the board's ADCs read them now: noise, offsets, quantisation, sensor
        faults (sensors.py). Draws from the plant's noise generator (deterministic per seed
        and call order)."""
        if self._c is not None:
            return self._c.sensor_counts(self)
        return self._sensors.counts(self.t_s, self.cell_v, self._temp[:self.n], self._lc_kpa,
                                    self.current_a, self.bus_v, self.faults)


__all__ = [
    "ENGINES", "CcCvCharge", "ConstantCurrent", "CurrentProfile", "FaultError", "Load",
    "Outputs", "Plant", "PlantParams", "PlantSnapshot", "PlantTruth", "Rest", "SensorCounts",
]
