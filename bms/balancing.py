"""Passive balancing decision: which cells bleed, as one uint32 mask per stack.

Rules (docs/safety.md, "Balancing"):

- Selection by SOC (``mode: soc``): a cell starts bleeding when its SOC is more than
  ``start_delta_soc`` above the lowest valid SOC of the pack (all cells are in series, so the
  pack's weakest cell is the target) and stops when it is within ``stop_delta_soc``: hysteresis
  per cell.
- Selection by voltage (``mode: voltage``): the same with voltage deltas, only at the top of
  charge (highest cell at or above ``top_of_charge_v``), where the OCV is steep enough for a
  voltage difference to mean a SOC difference. The voltage deltas are the SOC deltas times the
  OCV slope at the top of charge from the pack file (:func:`top_of_charge_slope_v`).
- Allowed only when: balancing is enabled; the contactor state is STANDBY, or CLOSED with the
  current at rest or charging (``current_a >= -rest_current_a``: bleeding while discharging only
  wastes energy the load needs); no FAULT/CRITICAL active or latched; every thermistor of the
  stack valid and below ``max_temperature_c`` (bleed resistors heat the board and the stack).
  Per cell: voltage above ``min_cell_voltage_v`` and valid. Not allowed -> selection cleared.
- Duty cycle: bleeding is on for ``duty_cycle x period_s`` at the start of every period and off
  for the rest. This bounds the average heat and leaves quiet windows where cell voltages are
  measured without the bleed current's IR drop in the tap wires.

Pure logic: ``time_s`` comes from the tick loop; no clock is read here. Once the gates that need
no data are open, the decision runs in C (csrc/ssb_balance.c, one call); ``engine="reference"``
keeps it in NumPy, the reference (tests/test_balancing_c.py: the same decisions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bms.protections import PackProtections
from bms.tuning import BALANCE_PERIOD_S, TOP_OF_CHARGE_SOC
from boards.config import TIME_EPS_S, BalancingConfig, CellModel

STATES_ALLOWED = (0, 2)  # ContactorState.STANDBY, ContactorState.CLOSED (HEARTBEAT numbers)
ENGINES = ("c", "reference")
# csrc/ssb_balance.h SSB_BAL_* -> the decision's reason
_C_REASONS = {1: "below top of charge", 2: "no valid data", 3: "balanced", 4: "balanced",
              5: "duty off"}


def top_of_charge_slope_v(cell: CellModel, soc_from: float = TOP_OF_CHARGE_SOC) -> float:
    """OCV slope (V per unit SOC) between ``soc_from`` and full, at the grid temperature
    closest to 25 C: turns SOC deltas into voltage deltas for voltage-mode balancing."""
    row = cell.ocv_v[int(np.argmin(np.abs(cell.temperature_grid_c - 25.0)))]
    v_from = float(np.interp(soc_from, cell.soc_grid, row))
    return (float(row[-1]) - v_from) / (1.0 - soc_from)


def top_of_charge_voltage_v(cell: CellModel, soc: float = TOP_OF_CHARGE_SOC) -> float:
    """OCV at ``soc`` near 25 C: above it voltage-mode balancing may run."""
    row = cell.ocv_v[int(np.argmin(np.abs(cell.temperature_grid_c - 25.0)))]
    return float(np.interp(soc, cell.soc_grid, row))


@dataclass
class BalanceDecision:
    """``masks``: uint32 per stack (bit i = bleed cell i of that stack) for SET_OUTPUTS.
    ``selected``: cells chosen by the SOC/voltage rule (regardless of the duty phase).
    ``bleed_current_a``: expected bleed current per cell now (V / R when bleeding, else 0).
    ``reason``: why nothing bleeds, or ``"balancing"`` / ``"duty off"`` / ``"balanced"``.
    ``bleed_resistance_ohm``: the bleed resistor (0: nothing bleeds)."""

    masks: np.ndarray
    selected: np.ndarray
    bleed_current_a: np.ndarray
    reason: str
    bleed_resistance_ohm: float = 0.0

    @property
    def bleed_power_w(self) -> float:
        """Heat in the bleed resistors now: sum of V^2 / R = R sum of I^2. Computed when
        read (the controller never reads it; a balancing tick's product cost ~2 us)."""
        if not self.bleed_resistance_ohm:
            return 0.0
        i = self.bleed_current_a
        return float(np.dot(i, i)) * self.bleed_resistance_ohm


class Balancer:
    """Keeps the per-cell hysteresis state between ticks. One instance per pack.

    ``stack_cells``: cells per stack; ``stack_thermistors``: thermistors per stack (to gate
    each stack on its own temperatures). ``period_s``: duty-cycle period
    (bms.tuning.BALANCE_PERIOD_S).
    """

    #: The protections' rest threshold (one place: PackProtections.DEFAULT_REST_CURRENT_A).
    DEFAULT_REST_CURRENT_A = PackProtections.DEFAULT_REST_CURRENT_A

    def __init__(
        self, config: BalancingConfig, stack_cells: Sequence[int],
        stack_thermistors: Sequence[int], period_s: float = BALANCE_PERIOD_S,
        rest_current_a: float = DEFAULT_REST_CURRENT_A,
        voltage_slope_v_per_soc: float | None = None, top_of_charge_v: float | None = None,
        engine: str = "c",
    ) -> None:
        if any(not 1 <= n <= 32 for n in stack_cells):
            raise ValueError("each stack needs 1..32 cells (one uint32 mask per board)")
        if len(stack_thermistors) != len(stack_cells):
            raise ValueError("stack_thermistors needs one count per stack")
        if config.mode == "voltage" and (voltage_slope_v_per_soc is None
                                         or top_of_charge_v is None):
            raise ValueError("voltage mode needs voltage_slope_v_per_soc and top_of_charge_v "
                             "(see top_of_charge_slope_v / top_of_charge_voltage_v)")
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r} not one of {', '.join(ENGINES)}")
        self.engine = engine
        self.config = config
        self.period_s = period_s
        self.rest_current_a = rest_current_a
        self.slope = voltage_slope_v_per_soc
        self.top_of_charge_v = top_of_charge_v
        self.n_cells = int(sum(stack_cells))
        self.n_stacks = len(stack_cells)
        starts = np.cumsum([0, *stack_cells])
        self._cell_starts = starts[:-1]
        self._cell_stack = np.repeat(np.arange(self.n_stacks), stack_cells)
        self._bit = (np.ones(self.n_cells, dtype=np.uint64)
                     << (np.arange(self.n_cells) - starts[self._cell_stack]).astype(np.uint64))
        tstarts = np.cumsum([0, *stack_thermistors])
        self._th_starts = tstarts[:-1]
        self._th_counts = np.asarray(stack_thermistors)
        self.selected = np.zeros(self.n_cells, dtype=bool)
        self._zero_masks = np.zeros(self.n_stacks, dtype=np.uint32)
        self._idle: dict[str, BalanceDecision] = {}
        self._c: tuple | None = None
        self._soc_in: tuple | None = None  # soc_input's arrays and its C call
        self._duty_off: tuple[bytes, BalanceDecision] | None = None  # (selection, decision)
        if engine == "c":
            self._init_c(stack_cells, stack_thermistors)

    def _init_c(self, stack_cells: Sequence[int], stack_thermistors: Sequence[int]) -> None:
        """The C decision's config and buffers (csrc/ssb_balance.h), made once; the selection
        lives in a byte buffer that ``selected`` views."""
        from bms import _core  # built by pip install (setup.py cffi_modules)

        ffi, lib = _core.ffi, _core.lib
        cfg = self.config
        c = ffi.new("ssb_bal_config_t *")
        self._c_starts = [ffi.new("size_t[]", [int(v) for v in np.cumsum([0, *counts])])
                          for counts in (stack_cells, stack_thermistors)]
        c.n_cells, c.n_stacks = self.n_cells, self.n_stacks
        c.cell_start, c.th_start = self._c_starts
        if cfg.mode == "soc":
            c.start, c.stop = cfg.start_delta_soc, cfg.stop_delta_soc
        else:  # the same products as the reference's per tick
            assert self.slope is not None and self.top_of_charge_v is not None  # noqa: S101
            c.start = cfg.start_delta_soc * self.slope
            c.stop = cfg.stop_delta_soc * self.slope
            c.voltage_mode, c.top_of_charge_v = 1, self.top_of_charge_v
        c.max_temperature_c, c.min_cell_voltage_v = cfg.max_temperature_c, cfg.min_cell_voltage_v
        c.duty_cycle, c.period_s, c.time_eps_s = cfg.duty_cycle, self.period_s, TIME_EPS_S
        c.bleed_resistance_ohm = cfg.bleed_resistance_ohm
        self._sel_u8 = np.zeros(self.n_cells, dtype=np.uint8)
        self._sel_clear = True  # _sel_u8 all zero (cleared, and no C call since)
        self.selected = self._sel_u8.view(bool)  # the same object for the balancer's life
        self._c_masks = np.zeros(self.n_stacks, dtype=np.uint32)
        self._c_bleed = np.zeros(self.n_cells)
        self._c_reason = ffi.new("int32_t *")
        self._c_src: tuple = ()  # the input arrays the pointers below are of
        self._c_ptrs: tuple = ()
        self._c = (lib.ssb_balance, c, ffi.from_buffer("uint8_t[]", self._sel_u8),
                   ffi.from_buffer("uint32_t[]", self._c_masks),
                   ffi.from_buffer("double[]", self._c_bleed), self._c_reason)
        self._ffi = ffi

    def update(
        self, time_s: float, soc: np.ndarray, cell_voltage_v: np.ndarray,
        temperature_c: np.ndarray, state: int, current_a: float, fault_active: bool,
    ) -> BalanceDecision:
        """Decide this tick's masks. ``soc``/``cell_voltage_v``: (n_cells,) pack-wide;
        ``temperature_c``: (n_thermistors,) pack-wide; ``state``: ContactorState number;
        ``fault_active``: FaultTable.fault_latched()."""
        cfg = self.config
        reason = self.idle_reason(state, current_a, fault_active)
        if reason:
            return self._nothing(reason)
        if self._c is not None:
            return self._update_c(time_s, soc, cell_voltage_v, temperature_c)

        v = np.asarray(cell_voltage_v, dtype=float)
        if cfg.mode == "soc":
            x = np.asarray(soc, dtype=float)
            start, stop = cfg.start_delta_soc, cfg.stop_delta_soc
        else:
            x = v
            start, stop = cfg.start_delta_soc * self.slope, cfg.stop_delta_soc * self.slope
            if not np.nanmax(v, initial=-np.inf) >= self.top_of_charge_v:
                return self._nothing("below top of charge")
        # Reference: the lowest valid cell of the whole pack, not only the eligible ones, so a
        # hot stack does not change the target of the others (fmin skips NaN).
        lowest = float(np.fmin.reduce(x))
        if lowest != lowest:
            return self._nothing("no valid data")
        if not float(np.fmax.reduce(x)) - lowest > min(start, stop):
            # No cell is far enough above the lowest to start or keep bleeding: the common
            # case, decided before the per-cell gates (which could only remove cells).
            return self._nothing("balanced")

        # Stack temperature gate: every thermistor of the stack valid and below the maximum
        # (NaN compares False: an invalid thermistor closes its stack's gate).
        t = np.asarray(temperature_c, dtype=float)
        ok_t = t < cfg.max_temperature_c
        cell_ok = v > cfg.min_cell_voltage_v              # NaN compares False, no warning
        if self.n_stacks == 1:
            if len(t) and not ok_t.all():
                cell_ok[:] = False
        elif len(t):
            hot = np.add.reduceat((~ok_t).astype(np.int64), self._th_starts) \
                if np.all(self._th_counts > 0) else _reduce_uneven(~ok_t, self._th_starts,
                                                                   self._th_counts)
            cell_ok &= (hot == 0)[self._cell_stack]

        delta = x - lowest                                 # NaN where x is NaN: never chosen
        selected = (self.selected & (delta > stop)) | (delta > start)
        selected &= cell_ok
        self.selected = selected
        if not selected.any():
            return self._nothing("balanced", keep_selection=True)

        on = ((time_s % self.period_s) < cfg.duty_cycle * self.period_s - TIME_EPS_S) \
            or cfg.duty_cycle >= 1.0
        if not on:
            return self._nothing("duty off", keep_selection=True)
        bits = np.where(selected, self._bit, np.uint64(0))
        masks = np.add.reduceat(bits, self._cell_starts).astype(np.uint32)
        v0 = np.where(selected, v, 0.0)                    # selected cells have v > min: finite
        bleed = v0 / cfg.bleed_resistance_ohm
        return BalanceDecision(masks, selected.copy(), bleed, "balancing",
                               cfg.bleed_resistance_ohm)

    def _update_c(self, time_s: float, soc: np.ndarray, cell_voltage_v: np.ndarray,
                  temperature_c: np.ndarray) -> BalanceDecision:
        """:meth:`update` past the gates, in one C call (csrc/ssb_balance.c)."""
        x = soc if self.config.mode == "soc" else cell_voltage_v
        bound = self._c_src
        if not (bound and bound[0] is x and bound[1] is cell_voltage_v
                and bound[2] is temperature_c):
            self._bind_c((x, cell_voltage_v, temperature_c))
        fn, cfg, sel, masks, bleed, reason = self._c
        self._sel_clear = False
        rc = fn(cfg, time_s, *self._c_ptrs, sel, masks, bleed, reason)
        if rc != 0:
            raise ValueError(f"ssb_balance failed with {rc}")
        code = reason[0]
        if code == 0:  # balancing
            return BalanceDecision(self._c_masks.copy(), self.selected.copy(),
                                   self._c_bleed.copy(), "balancing",
                                   self.config.bleed_resistance_ohm)
        if code == 4:  # nothing selected (the selection the C wrote is all zero)
            return self._idle_decision(_C_REASONS[4])
        if code == 5:  # duty off: a selection (non-empty) kept
            return self._duty_off_decision(_C_REASONS[5])
        return self._nothing(_C_REASONS[code])  # 1-3: selection cleared (by the C)

    def _bind_c(self, src: tuple[np.ndarray, ...]) -> None:
        """Pointers to this tick's input arrays (the controller's, the same every tick: made
        once), as float64 contiguous arrays of their sizes."""
        arrays = tuple(np.ascontiguousarray(a, dtype=np.float64) for a in src)
        n_th = int(self._th_counts.sum())
        for a, k, name in zip(arrays, (self.n_cells, self.n_cells, n_th),
                              ("soc", "cell_voltage_v", "temperature_c"), strict=True):
            if a.shape != (k,):
                raise ValueError(f"{name} has shape {a.shape}, expected ({k},)")
        # Keep the caller's arrays only when they are the arrays read (no copy was made), so
        # the identity check above is sound; a converted input is converted again each tick.
        self._c_src = src if all(a is b for a, b in zip(arrays, src, strict=True)) else ()
        self._c_ptrs = tuple(self._ffi.from_buffer("double[]", a) if len(a) else self._ffi.NULL
                             for a in arrays)
        self._c_keep = arrays

    def idle_reason(self, state: int, current_a: float, fault_active: bool) -> str:
        """Why no cell may bleed this tick whatever the SOCs ("" when the gates are open):
        the first check of :meth:`update`, also asked by the controller so that it prepares
        the SOC input only on a tick that reads it."""
        if not self.config.enabled:
            return "disabled"
        if state not in STATES_ALLOWED:
            return "state"
        if state == 2 and not (math.isfinite(current_a) and current_a >= -self.rest_current_a):
            return "discharging"
        if fault_active:
            return "fault"
        return ""

    def soc_input(self, soc: np.ndarray, soc_sigma: np.ndarray, sigma_max: float,
                  out: np.ndarray) -> np.ndarray:
        """The ``soc`` argument of :meth:`update`: ``soc`` where its sigma is at most
        ``sigma_max``, NaN elsewhere (an estimate still converging is no data), into ``out``.
        One C call (ssb_balance_soc_input) with the C engine, pointers kept while the same
        arrays come back; NumPy with the reference."""
        b = self._soc_in
        if b is None or b[0] is not soc or b[1] is not soc_sigma or b[2] is not out:
            b = self._soc_in = self._bind_soc_input(soc, soc_sigma, out)
        if b[3] is None:
            known = soc_sigma <= sigma_max  # NaN: no data
            out.fill(np.nan)
            np.copyto(out, soc, where=known)
        else:
            fn, args = b[3]
            fn(args[0], args[1], sigma_max, args[2], args[3])
        return out

    def _bind_soc_input(self, soc: np.ndarray, soc_sigma: np.ndarray, out: np.ndarray
                        ) -> tuple:
        arrays = (soc, soc_sigma, out)
        if self._c is None or not all(
                isinstance(a, np.ndarray) and a.dtype == np.float64 and a.ndim == 1
                and a.flags.c_contiguous and len(a) == self.n_cells for a in arrays):
            return (*arrays, None)
        from bms import _core  # built by pip install (setup.py cffi_modules)

        ffi = _core.ffi
        # the arrays are held in the tuple: identity means the same live buffers
        return (*arrays, (_core.lib.ssb_balance_soc_input,
                          (ffi.from_buffer("double[]", soc), ffi.from_buffer("double[]", soc_sigma),
                           ffi.from_buffer("double[]", out), self.n_cells)))

    @property
    def reads_soc(self) -> bool:
        """True when :meth:`update` decides on the ``soc`` argument (mode ``soc``)."""
        return self.config.mode == "soc"

    def _nothing(self, reason: str, keep_selection: bool = False) -> BalanceDecision:
        if not keep_selection:
            if self._c is not None:
                if not self._sel_clear:  # (most ticks: cleared already, no C call since)
                    self._sel_u8.fill(0)  # the buffer the C decision reads
                    self._sel_clear = True
            else:
                self.selected = np.zeros(self.n_cells, dtype=bool)
        elif self.selected.any():  # "duty off": the selection stays in the decision
            return self._duty_off_decision(reason)
        return self._idle_decision(reason)

    def _duty_off_decision(self, reason: str) -> BalanceDecision:
        """Cells selected, none bleeding in this part of the duty period: one read-only
        decision per selection (it holds over the off part of the duty period), made again
        only when the selection changed."""
        key = self.selected.tobytes()
        last = self._duty_off
        if last is not None and last[0] == key and last[1].reason == reason:
            return last[1]
        arrays = (self._zero_masks.copy(), self.selected.copy(), np.zeros(self.n_cells))
        for a in arrays:
            a.flags.writeable = False
        decision = BalanceDecision(*arrays, reason)
        self._duty_off = (key, decision)
        return decision

    def _idle_decision(self, reason: str) -> BalanceDecision:
        """Nothing selected: one read-only decision per reason, made once (most ticks end
        here)."""
        decision = self._idle.get(reason)
        if decision is None:
            arrays = (self._zero_masks.copy(), np.zeros(self.n_cells, dtype=bool),
                      np.zeros(self.n_cells))
            for a in arrays:
                a.flags.writeable = False
            decision = self._idle[reason] = BalanceDecision(*arrays, reason)
        return decision


def _reduce_uneven(bad: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-stack count of bad thermistors when some stack has none (reduceat needs n > 0)."""
    return np.array([int(bad[s:s + c].sum()) for s, c in zip(starts, counts, strict=True)])
