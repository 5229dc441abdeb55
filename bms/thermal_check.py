"""Cooling plausibility: a stack that runs hotter than its heat and its nominal cooling explain
(docs/safety.md "Degraded cooling").

The temperature protections see a cooling failure only once a cell reaches a limit, which at a
moderate load may be never and at a heavy one minutes after the cooling stopped. A lumped
thermal model of the stack's mean cell, driven by the heat the BMS can compute and cooled
through the pack's nominal conductance to the temperature the stack started at, predicts how
warm the stack should be; a one-sided CUSUM of measured minus predicted raises
COOLING_DEGRADED (a warning) when the stack stays warmer than that by more than an allowance.
This is the model-based residual of the thermal-fault literature (Naguib, Chen, Kollmeyer and
Emadi, Communications Engineering 4 (2025) 79: measured against estimated temperatures,
coolant-pump and flow-blockage faults of a 72-cell pack detected in 13-45 min with no false
detection) with the smallest model that carries the physics: three nodes per stack, its
mean cell, the coolant in its cold plate and its end plates (one node, the cell alone, left
the coolant's and the plates' warming under a long heavy load to the residual: +1.3 K after a
healthy 3C discharge on the emulated stack, a false alarm).

- Heat per cell (W): the irreversible heat I (V - OCV(SOC)) plus the reversible I T dOCV/dT
  (Bernardi's energy balance), from the measured current and mean cell voltage and the
  estimator's SOC on the pack's OCV table: no resistance parameter needed, so the estimate
  does not depend on how well R0 and the RC branches were fitted. Plus the heat of the leak
  currents the estimator is sure of (a soft short heats its cell: V I_leak, with the leak's
  lower 3-sigma bound where it is above zero, what CELL_LEAK compares), so a known leak is not
  taken for a cooling fault (the demo's 10 ohm short alone: +0.2 K of residual).
- Model (the pack's ``cooling:`` section, per stack of n cells): n C_cell dT/dt = n Q -
  G_c (T - T_w) - G_p (T - T_p), C_w dT_w/dt = G_c (T - T_w) - G_flow (T_w - T_start),
  C_p dT_p/dt = G_p (T - T_p) - G_pa (T_p - T_start), with G_c = n ``cell_to_coolant_w_per_k``,
  C_w, G_flow the coolant's capacity and flow, C_p, G_p, G_pa the end plates' capacity and
  conductances, and T_start the stack's mean thermistor temperature at its first complete
  measurement: neither the coolant inlet nor the ambient is measured, so the check assumes
  the pack starts in equilibrium with both (a rested pack).
- It runs while the stack's estimate has converged (mean SOC sigma at most ``sigma_gate``:
  the OCV at a wrong SOC is a wrong heat), every thermistor reads and the heat's inputs are
  trusted (the controller says no voltage or current sensor fault of the stack is active: a
  tap offset or a biased current sensor is a wrong heat, not a cooling fault); otherwise the
  model restarts from the measured temperature and the CUSUM from zero.

Pure logic on the tick's ``time_s``; the controller feeds it and owns the fault table. The
per-tick work (``observe``) runs in C (csrc/ssb_thermal.c, ``engine="c"``, the default); the
Python here (``engine="reference"``) is its reference, held to it bit for bit by
tests/test_thermal_check_c.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bms.faults import FaultCode, FaultTable
from boards.config import CoolingConfig, PackConfig

_CODE = FaultCode.COOLING_DEGRADED
_KELVIN = 273.15


@dataclass(frozen=True)
class ThermalCheckConfig:
    """The check's tunables (values and sources: bms/tuning.py)."""

    period_s: float        # model step; the heat is integrated every tick in between
    allowance_k: float     # residual the CUSUM forgives (the model's error)
    limit_k_s: float       # CUSUM level that raises
    sigma_gate: float      # mean SOC sigma at or below which the heat is trusted


@dataclass
class _StackState:
    start_c: float = math.nan    # T_start: the stack's mean thermistor at its first reading
    model_c: float = math.nan    # predicted mean cell temperature
    coolant_c: float = math.nan  # predicted coolant temperature
    plates_c: float = math.nan   # predicted end-plate temperature
    energy_j: float = 0.0        # heat per cell since the last model step
    last_tick_s: float | None = None
    last_step_s: float | None = None
    ocv_v: float = math.nan      # mean OCV and dOCV/dT at the last step's SOC
    leak_w: float = 0.0          # mean leak heat per cell at the last step
    docv_dt_v_per_k: float = 0.0
    temp_c: float = math.nan     # last measured mean thermistor temperature
    cusum_k_s: float = 0.0
    residual_k: float = 0.0
    heat_w: float = 0.0          # mean heat per cell over the last model step
    inputs_bad: bool = False     # a tick since the last step had untrusted heat inputs
    raised: bool = False


class CoolingCheck:
    """One instance per pack; ``n_stacks`` stacks of the pack's cell."""

    def __init__(self, n_stacks: int, config: ThermalCheckConfig, heat_capacity_j_per_k: float,
                 cooling: CoolingConfig, soc_grid: np.ndarray, ocv_v: np.ndarray,
                 docv_dt_v_per_k: np.ndarray, engine: str = "c") -> None:
        """``heat_capacity_j_per_k``: a cell's; ``ocv_v`` and ``docv_dt_v_per_k``: the cell's
        OCV and its temperature slope on ``soc_grid`` at the pack's nominal temperature. The
        model runs per cell: the coolant's capacity and flow are shared by a stack's cells
        (divided by its cell count in ``observe``). ``engine``: "c" (csrc/ssb_thermal.c) or
        "reference" (the Python below)."""
        if engine not in ("c", "reference"):
            raise ValueError(f"engine {engine!r} not one of c, reference")
        self.config = config
        self.heat_capacity_j_per_k = heat_capacity_j_per_k
        self.cooling = cooling
        self._soc_grid = np.ascontiguousarray(soc_grid, dtype=float)
        self._ocv = np.ascontiguousarray(ocv_v, dtype=float)
        self._docv = np.ascontiguousarray(docv_dt_v_per_k, dtype=float)
        self.engine = engine
        self._st: list = [_StackState() for _ in range(n_stacks)]
        # A model step ran since the last ``step``: only then can a CUSUM have moved.
        self._stepped = False
        if engine == "c":
            self._bind_c(n_stacks)

    def _bind_c(self, n_stacks: int) -> None:
        """The C engine: its parameters, one state per stack (the same fields as
        _StackState, so ``step`` and the accessors read either), pointers made once."""
        from bms import _core  # built by pip install (setup.py cffi_modules)

        ffi, lib = _core.ffi, _core.lib
        self._ffi = ffi
        c, cool = self.config, self.cooling
        p = self._params = ffi.new("ssb_cooling_params_t *")
        p.period_s, p.allowance_k = c.period_s, c.allowance_k
        p.limit_k_s, p.sigma_gate = c.limit_k_s, c.sigma_gate
        p.heat_capacity_j_per_k = self.heat_capacity_j_per_k
        p.cell_to_coolant_w_per_k = cool.cell_to_coolant_w_per_k
        p.coolant_heat_capacity_j_per_k = cool.coolant_heat_capacity_j_per_k
        p.coolant_flow_w_per_k = cool.coolant_flow_w_per_k
        p.end_plates_heat_capacity_j_per_k = cool.end_plates_heat_capacity_j_per_k
        p.cells_to_end_plates_w_per_k = cool.cells_to_end_plates_w_per_k
        p.end_plates_to_ambient_w_per_k = cool.end_plates_to_ambient_w_per_k
        self._tables = [ffi.from_buffer("double[]", a)
                        for a in (self._soc_grid, self._ocv, self._docv)]
        p.soc_grid, p.ocv_v, p.docv_dt_v_per_k = self._tables
        p.n_grid = len(self._soc_grid)
        if not len(self._ocv) == len(self._docv) == p.n_grid:
            raise ValueError("the OCV tables and the SOC grid differ in length")
        rc = lib.ssb_cooling_check(p)
        if rc != 0:
            raise ValueError(f"ssb_cooling_check: {rc} (the SOC grid must be finite and "
                             "strictly increasing)")
        states = self._states = ffi.new("ssb_cooling_state_t[]", n_stacks)
        self._st = [ffi.addressof(states, k) for k in range(n_stacks)]
        for st in self._st:
            ref = _StackState()
            for name in ("start_c", "model_c", "coolant_c", "plates_c", "energy_j", "ocv_v",
                         "leak_w", "docv_dt_v_per_k", "temp_c", "cusum_k_s", "residual_k",
                         "heat_w"):
                setattr(st, name, getattr(ref, name))
            st.last_tick_s = st.last_step_s = math.nan  # None
            st.inputs_bad = st.raised = 0
        self._observe_c = lib.ssb_cooling_observe
        # per stack: the arrays last seen (held: identity means the same live buffers) and
        # their pointers, and a scratch buffer of the stack's cell count
        self._bound: list[tuple | None] = [None] * n_stacks

    def _pointers(self, stack: int, arrays: tuple[np.ndarray, ...]) -> tuple:
        """The C call's pointers to these arrays (and a scratch buffer), kept for the next
        call with the same arrays (held, so identity means the same live buffers)."""
        if not len(arrays[0]) == len(arrays[1]) == len(arrays[2]):
            raise ValueError(f"stack {stack}: {len(arrays[0])} SOCs, {len(arrays[1])} sigmas "
                             f"and {len(arrays[2])} leaks")
        ffi = self._ffi
        held = tuple(a if a.dtype == np.float64 and a.flags.c_contiguous
                     else np.ascontiguousarray(a, dtype=np.float64) for a in arrays)
        if any(h is not a for h, a in zip(held, arrays, strict=True)):
            # a copy: valid this tick only (not cached)
            return tuple(ffi.from_buffer("double[]", h) for h in held) + (
                ffi.new("double[]", max(len(held[0]), 1)), held)
        ptrs = tuple(ffi.from_buffer("double[]", h) for h in held) + (
            ffi.new("double[]", max(len(held[0]), 1)),)
        self._bound[stack] = (*arrays, ptrs)
        return ptrs

    @classmethod
    def from_pack(cls, pack: PackConfig, config: ThermalCheckConfig, engine: str = "c"
                  ) -> CoolingCheck | None:
        """The check for a pack with a ``cooling:`` section; None without it."""
        cell = pack.cell
        if pack.cooling is None:
            return None
        temps = np.asarray(cell.temperature_grid_c, dtype=float)
        ocv = np.asarray(cell.ocv_v, dtype=float)
        i = int(np.argmin(np.abs(temps - 25.0)))
        j = i + 1 if i + 1 < len(temps) else i - 1
        slope = (ocv[j] - ocv[i]) / (temps[j] - temps[i]) if j >= 0 and j != i \
            else np.zeros_like(ocv[i])
        return cls(len(pack.stacks), config, cell.heat_capacity_j_per_k, pack.cooling,
                   cell.soc_grid, ocv[i], slope, engine=engine)

    def residual_k(self, stack: int) -> float:
        """Measured minus predicted mean temperature at the last model step (K)."""
        return self._st[stack].residual_k

    def cusum_k_s(self, stack: int) -> float:
        return self._st[stack].cusum_k_s

    def model_c(self, stack: int) -> float:
        return self._st[stack].model_c

    def heat_w(self, stack: int) -> float:
        """Mean heat per cell over the last model step (W)."""
        return self._st[stack].heat_w

    def observe(self, stack: int, t: float, current_a: float, mean_cell_v: float,
                soc: np.ndarray, soc_sigma: np.ndarray, leak_a: np.ndarray,
                temperature_c: np.ndarray, inputs_ok: bool = True) -> None:
        """One stack's fresh tick: its current, mean cell voltage, SOC estimate (with its
        sigmas and the leak currents' lower 3-sigma bounds) and thermistors; ``inputs_ok``
        false when a sensor fault
        of the stack makes the heat untrustworthy. Integrates the heat; every ``period_s``
        steps the model and the CUSUM."""
        if self.engine == "c":
            b = self._bound[stack]
            if b is not None and b[0] is soc and b[1] is soc_sigma and b[2] is leak_a \
                    and b[3] is temperature_c:
                ptrs = b[4]
            else:
                ptrs = self._pointers(stack, (soc, soc_sigma, leak_a, temperature_c))
            rc = self._observe_c(self._params, self._st[stack], t, current_a, mean_cell_v,
                                 ptrs[0], ptrs[1], ptrs[2], len(soc), ptrs[3],
                                 len(temperature_c), inputs_ok, ptrs[4])
            if rc < 0:  # pragma: no cover - pointers made above, never NULL
                raise RuntimeError(f"ssb_cooling_observe: {rc}")
            if rc:
                self._stepped = True
            return
        c = self.config
        s = self._st[stack]
        dt = 0.0 if s.last_tick_s is None else t - s.last_tick_s
        s.last_tick_s = t
        if not inputs_ok or current_a != current_a or mean_cell_v != mean_cell_v:
            s.inputs_bad = True
        elif s.ocv_v == s.ocv_v:
            t_k = (s.temp_c if s.temp_c == s.temp_c else 25.0) + _KELVIN
            s.energy_j += (current_a * (mean_cell_v - s.ocv_v + t_k * s.docv_dt_v_per_k)
                           + s.leak_w) * dt
        if s.last_step_s is not None and t - s.last_step_s < c.period_s - 1e-9:
            return
        self._stepped = True
        temps = temperature_c.tolist()
        sig = soc_sigma.tolist()
        temp = sum(temps) / len(temps) if temps else math.nan
        step_s = 0.0 if s.last_step_s is None else t - s.last_step_s
        s.last_step_s = t
        if temp == temp and s.start_c != s.start_c:
            s.start_c = temp  # the stack's (and, assumed, the coolant's) starting temperature
        trusted = (temp == temp and s.model_c == s.model_c and s.ocv_v == s.ocv_v
                   and not s.inputs_bad and sum(sig) <= c.sigma_gate * len(sig)
                   and step_s <= 10.0 * c.period_s)
        s.inputs_bad = False
        if trusted:
            # Per cell: the coolant's capacity and flow shared by the stack's cells.
            n = len(soc)
            cool = self.cooling
            g_c = cool.cell_to_coolant_w_per_k
            cap_w = cool.coolant_heat_capacity_j_per_k / n
            g_w = cool.coolant_flow_w_per_k / n
            cap_p = cool.end_plates_heat_capacity_j_per_k / n
            g_p = cool.cells_to_end_plates_w_per_k / n
            g_pa = cool.end_plates_to_ambient_w_per_k / n
            s.heat_w = s.energy_j / step_s if step_s > 0 else 0.0
            to_coolant_w = g_c * (s.model_c - s.coolant_c)
            to_plates_w = g_p * (s.model_c - s.plates_c)
            s.model_c += (s.energy_j - (to_coolant_w + to_plates_w) * step_s) \
                / self.heat_capacity_j_per_k
            s.coolant_c += (to_coolant_w - g_w * (s.coolant_c - s.start_c)) * step_s / cap_w
            s.plates_c += (to_plates_w - g_pa * (s.plates_c - s.start_c)) * step_s / cap_p
            s.residual_k = temp - s.model_c
            s.cusum_k_s = min(2.0 * c.limit_k_s,
                              max(0.0, s.cusum_k_s + (s.residual_k - c.allowance_k) * step_s))
        else:
            # No trusted heat or no temperature: restart from what is measured (the coolant
            # and the plates from where the model had them, or the start).
            s.residual_k, s.cusum_k_s, s.heat_w = 0.0, 0.0, 0.0
            if temp == temp:
                s.model_c = temp
            if s.coolant_c != s.coolant_c:
                s.coolant_c = s.plates_c = s.start_c
        if temp == temp:
            s.temp_c = temp
        s.energy_j = 0.0
        soc_list = soc.tolist()
        if all(x == x for x in soc_list) and soc_list:
            socs = np.asarray(soc_list)
            s.ocv_v = float(np.interp(socs, self._soc_grid, self._ocv).mean())
            s.docv_dt_v_per_k = float(np.interp(socs, self._soc_grid, self._docv).mean())
        else:
            s.ocv_v = math.nan
        # Only leaks the estimator is sure of (lower bound above zero): a cell whose reading
        # is off (a tap offset) has a wild leak estimate of either sign, and the signed noise
        # of healthy cells is no heat.
        leak = sum(x for x in leak_a.tolist() if x > 0.0)
        s.leak_w = leak / len(soc_list) * mean_cell_v \
            if soc_list and mean_cell_v == mean_cell_v else 0.0

    def step(self, t: float, table: FaultTable) -> list[int]:
        """After every stack's ``observe``: raise COOLING_DEGRADED on a stack whose CUSUM
        passed the limit, clear it once the CUSUM is back to zero. Returns the stacks raised
        on this tick. Only a model step moves a CUSUM (``observe``): without one since the
        last call nothing can change, and nothing is looked at."""
        if not self._stepped:
            return []
        self._stepped = False
        raised: list[int] = []
        for k, s in enumerate(self._st):
            if not s.raised and s.cusum_k_s > self.config.limit_k_s:
                table.raise_fault(_CODE, t, None, s.residual_k, k)
                s.raised = True
                raised.append(k)
            elif s.raised and s.cusum_k_s <= 0.0:
                table.clear_fault(_CODE, t, None, s.residual_k, k)
                s.raised = False
        return raised


__all__ = ["CoolingCheck", "ThermalCheckConfig"]
