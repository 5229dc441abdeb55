"""Range and plausibility of every measurement, before anything uses it.

The board client has already turned raw counts into engineering units (with NaN for the
protocol's invalid sentinels). Here each channel is checked against what a real sensor on a real
cell can read; what fails becomes NaN, so the estimator rejects it and the protections report the
channel invalid (a sensor fault) instead of protecting on a wrong number. The specific diagnosis
(open wire, open or shorted NTC, stuck load cell, timestamp gap, board reset) is raised here in
the fault table, so a bench engineer sees the cause, not only the effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bms.config import BoardProfile, PackConfig
from bms.faults import FaultCode, FaultTable, Severity

# Plausible ranges. Assumptions, documented in docs/safety.md:
# - a lithium-metal/NMC cell never reads below 1.5 V or above 5.0 V while connected; the
#   LTC6811 open-wire signature is ~0 V, so anything outside is a tap or monitor fault;
CELL_VOLTAGE_PLAUSIBLE_V = (1.5, 5.0)
# - NTC thermistors (10k, B 3435) are specified over -40..125 C;
TEMPERATURE_PLAUSIBLE_C = (-40.0, 125.0)
# - load cells: 0 to 4x the highest critical pressure limit is a physical reading;
# - the shunt: +-10x the pack's maximum current is still a reading (a short), beyond is a fault.
CURRENT_PLAUSIBLE_FACTOR = 10.0
# A load cell whose raw count is identical this many samples in a row is stuck: a 24-bit HX711
# on a bridge always shows a few counts of noise (datasheet: ~50 nV RMS input noise at gain 128).
LOAD_CELL_STUCK_SAMPLES = 20
# A cell voltage cannot jump by more than the worst table resistance times the current step plus
# this margin in one tick (monitor noise and sampling skew).
VOLTAGE_JUMP_MARGIN_V = 0.1
# A board timestamp that advances by more than this many ticks (or goes backwards) is a gap.
TIMESTAMP_GAP_TICKS = 3.0


@dataclass
class ValidatedStack:
    """One stack's measurements after validation; invalid channels are NaN."""

    time_s: float
    cell_voltage_v: np.ndarray
    temperature_c: np.ndarray
    pressure_kpa: np.ndarray
    current_a: float
    bus_voltage_v: float
    status: int


class StackValidator:
    """Stateful plausibility checks for one stack (stuck detection, jumps, timestamps)."""

    def __init__(self, pack: PackConfig, stack_index: int, board: BoardProfile,
                 table: FaultTable) -> None:
        self.stack_index = stack_index
        self.n_cells = pack.stacks[stack_index].cells
        self.board = board
        self.table = table
        self.tick_s = pack.controller.tick_s if pack.controller else 0.1
        worst = max(p.critical for n, p in pack.protections.items()
                    if n in ("stack_pressure_high_kpa",))
        self.pressure_plausible_kpa = (0.0, 4.0 * worst)
        max_current = max(pack.power_limits.max_charge_current_a,
                          pack.power_limits.max_discharge_current_a)
        self.current_plausible_a = CURRENT_PLAUSIBLE_FACTOR * max(max_current, 1.0)
        self.r_worst_ohm = float(np.max(pack.cell.r0_ohm + pack.cell.r1_ohm))
        self._last_v: np.ndarray | None = None
        self._last_i = math.nan
        self._last_raw_lc: np.ndarray | None = None
        self._same_count = np.zeros(board.load_cells, dtype=int)
        self._last_ts_ms: int | None = None
        self._bad: dict[FaultCode, np.ndarray] = {}
        self._bad_scalar: dict[FaultCode, bool] = {}
        self.counts = {"open_wire": 0, "voltage_jump": 0, "stuck": 0, "timestamp_gap": 0}

    def _diagnose(self, code: FaultCode, mask: np.ndarray, values: np.ndarray,
                  time_s: float) -> None:
        """Raise ``code`` on the channels in ``mask``, clear it on those that recovered.
        Only channels that are or were bad are touched (the common tick touches none)."""
        prev = self._bad.get(code)
        if prev is None or len(prev) != len(mask):
            prev = np.zeros(len(mask), dtype=bool)
        if mask.any() or prev.any():
            for i in np.flatnonzero(mask):
                self.table.raise_fault(code, time_s, None, float(values[i]), self.stack_index,
                                       int(i))
            for i in np.flatnonzero(prev & ~mask):
                self.table.clear_fault(code, time_s, None, float(values[i]), self.stack_index,
                                       int(i))
        self._bad[code] = mask

    def _diagnose_scalar(self, code: FaultCode, bad: bool, value: float, time_s: float) -> None:
        was = self._bad_scalar.get(code, False)
        if bad:
            self.table.raise_fault(code, time_s, None, value, self.stack_index)
        elif was:
            self.table.clear_fault(code, time_s, None, value, self.stack_index)
        self._bad_scalar[code] = bad

    def check(self, time_s: float, cell_voltage_v: np.ndarray, temperature_c: np.ndarray,
              thermistor_raw: np.ndarray, pressure_kpa: np.ndarray, load_cell_raw: np.ndarray,
              current_a: float, bus_voltage_v: float, timestamp_ms: int,
              status: int) -> ValidatedStack:
        v = np.array(cell_voltage_v[: self.n_cells], dtype=float)
        lo, hi = CELL_VOLTAGE_PLAUSIBLE_V
        bad_v = ~np.isfinite(v) | (v < lo) | (v > hi)
        self._diagnose(FaultCode.CELL_VOLTAGE_OPEN_WIRE, bad_v, cell_voltage_v, time_s)
        self.counts["open_wire"] += int(np.count_nonzero(bad_v))
        v[bad_v] = np.nan

        # Jumps: kept (never discard safety data on a guess) but diagnosed.
        if self._last_v is not None and math.isfinite(current_a) and math.isfinite(self._last_i):
            allowed = VOLTAGE_JUMP_MARGIN_V + self.r_worst_ohm * abs(current_a - self._last_i)
            with np.errstate(invalid="ignore"):
                jump = np.abs(v - self._last_v) > allowed
            if jump.any():
                self.counts["voltage_jump"] += int(jump.sum())
                for i in np.flatnonzero(jump):
                    self.table.raise_fault(FaultCode.CELL_VOLTAGE_IMPLAUSIBLE, time_s,
                                           Severity.WARNING, float(v[i]), self.stack_index,
                                           int(i), momentary=True)
        self._last_v = v
        self._last_i = current_a

        t = np.array(temperature_c, dtype=float)
        raw_t = np.asarray(thermistor_raw, dtype=float)
        rail = self.board.thermistor.vref_v / self.board.thermistor.lsb_v
        t_lo, t_hi = TEMPERATURE_PLAUSIBLE_C
        invalid_t = ~np.isfinite(t) | (t < t_lo) | (t > t_hi)
        # An open NTC pulls the divider to vref (cold side); a short pulls it to 0 V (hot side).
        open_t = invalid_t & (raw_t >= 0.5 * rail)
        short_t = invalid_t & (raw_t < 0.5 * rail)
        self._diagnose(FaultCode.THERMISTOR_OPEN, open_t, temperature_c, time_s)
        self._diagnose(FaultCode.THERMISTOR_SHORT, short_t, temperature_c, time_s)
        t[invalid_t] = np.nan

        p = np.array(pressure_kpa, dtype=float)
        p_lo, p_hi = self.pressure_plausible_kpa
        bad_p = ~np.isfinite(p) | (p < p_lo) | (p > p_hi)
        raw_lc = np.asarray(load_cell_raw)
        if self._last_raw_lc is not None and len(raw_lc) == len(self._last_raw_lc):
            same = (raw_lc == self._last_raw_lc) & ~bad_p
            self._same_count = np.where(same, self._same_count + 1, 0)
        self._last_raw_lc = raw_lc.copy()
        stuck = self._same_count >= LOAD_CELL_STUCK_SAMPLES
        self._diagnose(FaultCode.LOAD_CELL_OPEN, bad_p, pressure_kpa, time_s)
        self._diagnose(FaultCode.LOAD_CELL_STUCK, stuck, pressure_kpa, time_s)
        self.counts["stuck"] += int(np.count_nonzero(stuck))
        p[bad_p | stuck] = np.nan

        i_valid = math.isfinite(current_a) and abs(current_a) <= self.current_plausible_a
        self._diagnose_scalar(FaultCode.CURRENT_SENSOR, not i_valid, current_a, time_s)
        self._diagnose_scalar(FaultCode.BUS_VOLTAGE_SENSOR, not math.isfinite(bus_voltage_v),
                              bus_voltage_v, time_s)

        if self._last_ts_ms is not None:
            advance_ms = (timestamp_ms - self._last_ts_ms) % (1 << 32)
            gap = advance_ms > TIMESTAMP_GAP_TICKS * self.tick_s * 1000.0 and advance_ms < (1 << 31)
            backwards = advance_ms >= (1 << 31)
            if gap or backwards:
                self.counts["timestamp_gap"] += 1
                self.table.raise_fault(FaultCode.TIMESTAMP_GAP, time_s, None,
                                       float(advance_ms), self.stack_index, momentary=True)
        self._last_ts_ms = timestamp_ms

        return ValidatedStack(
            time_s=time_s,
            cell_voltage_v=v,
            temperature_c=t,
            pressure_kpa=p,
            current_a=current_a if i_valid else math.nan,
            bus_voltage_v=bus_voltage_v,
            status=status,
        )
