"""Range and plausibility of every measurement, before anything uses it.

The board's raw counts have been converted with the board profile into one vector of channels
(cells | thermistors | load cells; the protocol's invalid sentinels are NaN). Here each channel is
checked against what a real sensor on a real cell can read; what fails becomes NaN, so the
estimator rejects it and the protections report the channel invalid (a sensor fault) instead of
protecting on a wrong number. The specific diagnosis (open wire, open or shorted NTC, open or
stuck load cell, timestamp gap) is raised here in the fault table, so a bench engineer sees the
cause, not only the effect. One range test covers every channel at once (per-channel bounds);
the per-channel diagnosis only runs when something is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bms.faults import FaultCode, FaultTable, Severity
from bms.tuning import (
    CELL_VOLTAGE_PLAUSIBLE_V,
    CURRENT_PLAUSIBLE_FACTOR,
    LOAD_CELL_STUCK_SAMPLES,
    OPEN_TAP_DEVIATION_V,
    PRESSURE_PLAUSIBLE_FACTOR,
    TEMPERATURE_PLAUSIBLE_C,
    TIMESTAMP_GAP_TICKS,
    VOLTAGE_JUMP_MARGIN_V,
)
from boards.config import BoardProfile, PackConfig
from hil.protocol import Measurement, wire_values_pointer
from hil.scaling import Scaler

#: The two engines of check_measurement (the project's convention: "c" runs, "reference" is
#: the NumPy implementation the C one is tested against).
ENGINES = ("c", "reference")



@dataclass
class ValidatedStack:
    """One stack's measurements after validation; invalid channels are NaN. The arrays are
    views into the validator's buffer, valid until its next ``check``."""

    time_s: float
    cell_voltage_v: np.ndarray
    temperature_c: np.ndarray
    pressure_kpa: np.ndarray
    current_a: float
    bus_voltage_v: float
    status: int
    timestamp_ms: int = 0  # the board's sample time (u32 ms, wraps)


class StackValidator:
    """Stateful plausibility checks for one stack (stuck detection, jumps, timestamps)."""

    def __init__(self, pack: PackConfig, stack_index: int, board: BoardProfile,
                 table: FaultTable, scaler: Scaler | None = None, engine: str = "c") -> None:
        """``engine``: "c" (csrc/ssb_frontend.c, what the controller runs) or "reference" (the
        same rules in NumPy, for tests and benchmarks)."""
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r} not one of {', '.join(ENGINES)}")
        self.engine = engine
        self.stack_index = stack_index
        self.board = board
        self.table = table
        self.tick_s = pack.controller.tick_s if pack.controller else 0.1
        nc, nt, nl = board.cells, board.thermistors, board.load_cells
        self.n_cells = pack.stacks[stack_index].cells
        self.cells = slice(0, nc)
        self.thermistors = slice(nc, nc + nt)
        self.load_cells = slice(nc + nt, nc + nt + nl)
        p_hi = PRESSURE_PLAUSIBLE_FACTOR * pack.protections["stack_pressure_high_kpa"].critical
        self._lo = np.concatenate([np.full(nc, CELL_VOLTAGE_PLAUSIBLE_V[0]),
                                   np.full(nt, TEMPERATURE_PLAUSIBLE_C[0]), np.zeros(nl)])
        self._hi = np.concatenate([np.full(nc, CELL_VOLTAGE_PLAUSIBLE_V[1]),
                                   np.full(nt, TEMPERATURE_PLAUSIBLE_C[1]), np.full(nl, p_hi)])
        max_current = max(pack.power_limits.max_charge_current_a,
                          pack.power_limits.max_discharge_current_a)
        self.current_plausible_a = CURRENT_PLAUSIBLE_FACTOR * max(max_current, 1.0)
        self.r_worst_ohm = float(np.max(pack.cell.r0_ohm + pack.cell.r1_ohm))
        # An open NTC pulls its divider to vref (reads cold); a short pulls it to 0 V (hot).
        self._ntc_half_rail = 0.5 * board.thermistor.vref_v / board.thermistor.lsb_v
        self._clean = np.full(nc + nt + nl, np.nan)
        # Views handed out in every ValidatedStack (the buffer is reused each check).
        self._v_out = self._clean[: self.n_cells]
        self._t_out = self._clean[self.thermistors]
        self._p_out = self._clean[self.load_cells]
        self._ok = np.zeros(nc + nt + nl, dtype=bool)
        self._dv = np.zeros(nc)
        self._jump = np.zeros(nc, dtype=bool)
        self._last_v = np.full(nc, np.nan)
        self._last_i = math.nan
        self._last_raw_lc: np.ndarray | None = None
        self._last_raw_lc_buf = np.zeros(nl, dtype=np.int64)
        self._same_count = np.zeros(nl, dtype=np.int64)
        self._stuck_prev = np.zeros(nl, dtype=bool)
        self._bad_prev = np.zeros(nc + nt + nl, dtype=bool)
        self._anything_prev = False
        self.scaler = scaler if scaler is not None else Scaler(board)
        self._init_c()
        self._last_ts_ms: int | None = None
        self._bad_scalar: dict[FaultCode, bool] = {}
        self.counts = {"invalid_channels": 0, "voltage_jump": 0, "stuck": 0,
                       "timestamp_gap": 0}

    def _check_reference(self, time_s: float, raw: np.ndarray, values: np.ndarray,
                         current_a: float, bus_voltage_v: float, timestamp_ms: int,
                         status: int) -> ValidatedStack:
        """``raw``/``values``: the board's channel vectors (hil.scaling.Scaler.channel_values).
        The reference engine of :meth:`check_measurement` (same rules, in NumPy).

        The common case (every channel in range, nothing stuck, no open tap) costs a handful of
        vector operations; the per-channel diagnosis runs only when something is wrong now or
        was wrong last tick (so that it can clear)."""
        clean = self._clean
        np.copyto(clean, values)
        ok = self._ok
        np.greater_equal(values, self._lo, out=ok)
        ok &= values <= self._hi                          # NaN compares False: bad
        in_range = bool(ok.all())
        v_in = values[self.cells]
        open_tap = None
        if in_range and v_in.max() - v_in.min() > 2.0 * OPEN_TAP_DEVIATION_V:
            open_tap = open_tap_pairs(v_in)
            in_range = not open_tap.any()
        lc = self.load_cells
        raw_lc = raw[lc]
        same = self._same_count
        if self._last_raw_lc is not None:
            eq = raw_lc == self._last_raw_lc
            if eq.any():
                eq &= ok[lc]
                same += 1
                same *= eq                                 # zero where it moved (or is bad)
            else:
                same.fill(0)
        np.copyto(self._last_raw_lc_buf, raw_lc)
        self._last_raw_lc = self._last_raw_lc_buf
        any_stuck = bool(len(same)) and int(same.max()) >= LOAD_CELL_STUCK_SAMPLES
        if not in_range or any_stuck or self._anything_prev:
            bad = ~ok
            if open_tap is None and v_in.max() - v_in.min() > 2.0 * OPEN_TAP_DEVIATION_V:
                open_tap = open_tap_pairs(v_in)  # (NaN-free cells only: max-min is NaN else)
            if open_tap is not None:
                bad[self.cells] |= open_tap
            stuck = same >= LOAD_CELL_STUCK_SAMPLES
            self._diagnose_channels(time_s, raw, values, bad, stuck)
            clean[bad] = np.nan
            clean[lc.start + np.flatnonzero(stuck)] = np.nan
            self._bad_prev = bad
            self._stuck_prev = stuck
            self._anything_prev = bool(bad.any() or stuck.any())

        v = clean[self.cells]
        last_i = self._last_i
        if current_a == current_a and last_i == last_i:  # both not NaN (inf: allowed = inf)
            # Jumps are diagnosed, not discarded: never drop safety data on a guess.
            allowed = VOLTAGE_JUMP_MARGIN_V + self.r_worst_ohm * abs(current_a - last_i)
            dv = self._dv
            np.subtract(v, self._last_v, out=dv)
            np.abs(dv, out=dv)
            jump = np.greater(dv, allowed, out=self._jump)  # NaN: False (no data, no jump)
            if jump.any():
                self.counts["voltage_jump"] += int(np.count_nonzero(jump))
                for i in np.flatnonzero(jump):
                    self.table.raise_fault(FaultCode.CELL_VOLTAGE_IMPLAUSIBLE, time_s,
                                           Severity.WARNING, float(v[i]), self.stack_index,
                                           int(i), momentary=True)
        np.copyto(self._last_v, v)
        self._last_i = current_a
        return self._finish(time_s, current_a, bus_voltage_v, timestamp_ms, status)

    # ------------------------------------------------------------------ C front end

    def _init_c(self) -> None:
        """Buffers and cffi pointers for ssb_fe_step (csrc/ssb_frontend.h), made once. The C
        state arrays are this validator's own (_same_count, _last_raw_lc_buf, _last_v), so
        check() and check_measurement() share one state and can be mixed."""
        from bms import _core  # built by pip install (setup.py cffi_modules)

        ffi, lib = _core.ffi, _core.lib
        self._fe_step = lib.ssb_fe_step
        sc = self.scaler
        n = sc.n_channels
        nc = self.cells.stop
        # The fast lane's target (BoardClient.wait_measurement_into): timestamp_ms, status,
        # current and bus counts, then the channels, which are _raw itself: the C decoder
        # writes the counts where ssb_fe_step reads them.
        self.wire_vals = np.zeros(4 + n, dtype=np.int64)
        self.wire_take = (wire_values_pointer(self.wire_vals), 4 + n)
        self._raw = self.wire_vals[4:]
        self._values = np.zeros(n)
        self._fe_bad = np.zeros(n, dtype=np.uint8)
        self._fe_stuck = np.zeros(max(len(self._same_count), 1), dtype=np.uint8)
        self._fe_jump = np.zeros(max(nc, 1), dtype=np.uint8)
        self._fe_scratch = np.zeros(max(nc, 1))
        self._fe_summary = ffi.new("uint32_t *")
        self._fe_keep = [sc._gain, sc._bias, sc._sentinel, sc._ntc_lut, self._lo, self._hi]

        def ptr(ctype: str, arr: np.ndarray):
            assert arr.flags.c_contiguous  # noqa: S101 (buffers made above)
            return ffi.from_buffer(ctype, arr)

        cfg = self._fe_cfg = ffi.new("ssb_fe_config_t *")
        cfg.n_cells, cfg.n_thermistors, cfg.n_load_cells = (
            nc, self.thermistors.stop - nc, self.load_cells.stop - self.thermistors.stop)
        self._sentinel64 = np.ascontiguousarray(sc._sentinel, dtype=np.int64)
        cfg.gain, cfg.bias = ptr("double[]", sc._gain), ptr("double[]", sc._bias)
        cfg.sentinel = ptr("int64_t[]", self._sentinel64)
        cfg.ntc_lut = ptr("double[]", sc._ntc_lut)
        cfg.lo, cfg.hi = ptr("double[]", self._lo), ptr("double[]", self._hi)
        cfg.open_tap_dev_v = OPEN_TAP_DEVIATION_V
        cfg.jump_margin_v = VOLTAGE_JUMP_MARGIN_V
        cfg.r_worst_ohm = self.r_worst_ohm
        cfg.stuck_samples = LOAD_CELL_STUCK_SAMPLES
        st = self._fe_st = ffi.new("ssb_fe_state_t *")
        st.same_count = ptr("int64_t[]", self._same_count)
        st.last_raw_lc = ptr("int64_t[]", self._last_raw_lc_buf)
        st.last_v = ptr("double[]", self._last_v)
        st.scratch = ptr("double[]", self._fe_scratch)
        self._fe_args = (cfg, st, ptr("int64_t[]", self._raw), ptr("double[]", self._values),
                         ptr("double[]", self._clean), ptr("uint8_t[]", self._fe_bad),
                         ptr("uint8_t[]", self._fe_stuck), ptr("uint8_t[]", self._fe_jump))

    def check_measurement(self, time_s: float, m: Measurement, current_a: float,
                          bus_voltage_v: float) -> ValidatedStack:
        """The controller's hot path: scaling, range, open tap, stuck and jump masks in one C
        call (csrc/ssb_frontend.c; with engine="reference" the same rules in NumPy), then the
        diagnosis in Python only when something is or was wrong. Raises ValueError when the
        measurement's channel counts differ from the board profile."""
        n = len(m.cell_raw) + len(m.thermistor_raw) + len(m.load_cell_raw)
        if n != len(self._raw):
            p = self.board
            raise ValueError(
                f"measurement has {len(m.cell_raw)} cells, {len(m.thermistor_raw)} thermistors, "
                f"{len(m.load_cell_raw)} load cells; board profile {p.name} ({p.path}) expects "
                f"{p.cells}, {p.thermistors}, {p.load_cells}")
        if self.engine == "reference":
            raw, values = self.scaler.channel_values(m)
            return self._check_reference(time_s, raw, values, current_a, bus_voltage_v,
                                         m.timestamp_ms, m.status)
        self._raw[:] = m.cell_raw + m.thermistor_raw + m.load_cell_raw
        return self._check_raw(time_s, current_a, bus_voltage_v, m.timestamp_ms, m.status)

    def check_wire(self, time_s: float) -> ValidatedStack:
        """:meth:`check_measurement` of the measurement the fast lane unpacked into
        :attr:`wire_vals` (its channel counts matched this board's profile there); the C
        engine (the fast lane is C too)."""
        timestamp_ms, status, current_raw, bus_raw = self.wire_vals[:4].tolist()
        sc = self.scaler
        return self._check_raw(time_s, sc.current_from_raw(current_raw),
                               sc.bus_voltage_from_raw(bus_raw), timestamp_ms, status)

    def _check_raw(self, time_s: float, current_a: float, bus_voltage_v: float,
                   timestamp_ms: int, status: int) -> ValidatedStack:
        """The checks on the counts in _raw (see check_measurement)."""
        st = self._fe_st
        st.last_i = self._last_i
        st.have_last_raw = self._last_raw_lc is not None
        a = self._fe_args
        rc = self._fe_step(a[0], a[1], a[2], current_a, a[3], a[4], a[5], a[6], a[7],
                           self._fe_summary)
        if rc != 0:
            raise ValueError(f"ssb_fe_step failed with {rc}")
        return self.after_front_end(time_s, current_a, bus_voltage_v, timestamp_ms, status,
                                    self._fe_summary[0])

    def after_front_end(self, time_s: float, current_a: float, bus_voltage_v: float,
                        timestamp_ms: int, status: int, summary: int) -> ValidatedStack:
        """What follows ssb_fe_step (here, or inside bms/stack_step.py's one call): the
        diagnosis when ``summary`` (SSB_FE_ANY_*) says something is or was wrong, the scalar
        and timestamp checks, the ValidatedStack."""
        self._last_i = current_a
        self._last_raw_lc = self._last_raw_lc_buf
        if summary & 3 or self._anything_prev:  # SSB_FE_ANY_BAD | SSB_FE_ANY_STUCK
            bad = self._fe_bad.view(bool).copy()
            stuck = self._fe_stuck[: len(self._same_count)].view(bool).copy()
            self._diagnose_channels(time_s, self._raw, self._values, bad, stuck)
            self._bad_prev, self._stuck_prev = bad, stuck
            self._anything_prev = bool(bad.any() or stuck.any())
        if summary & 4:  # SSB_FE_ANY_JUMP
            v = self._clean
            jumps = np.flatnonzero(self._fe_jump[: self.cells.stop])
            self.counts["voltage_jump"] += len(jumps)
            for i in jumps:
                self.table.raise_fault(FaultCode.CELL_VOLTAGE_IMPLAUSIBLE, time_s,
                                       Severity.WARNING, float(v[i]), self.stack_index, int(i),
                                       momentary=True)
        return self._finish(time_s, current_a, bus_voltage_v, timestamp_ms, status)

    def _finish(self, time_s: float, current_a: float, bus_voltage_v: float,
                timestamp_ms: int, status: int) -> ValidatedStack:
        i_valid = math.isfinite(current_a) and abs(current_a) <= self.current_plausible_a
        if not i_valid or self._bad_scalar.get(FaultCode.CURRENT_SENSOR, False):
            self._diagnose_scalar(FaultCode.CURRENT_SENSOR, not i_valid, current_a, time_s)
        bus_bad = not math.isfinite(bus_voltage_v)
        if bus_bad or self._bad_scalar.get(FaultCode.BUS_VOLTAGE_SENSOR, False):
            self._diagnose_scalar(FaultCode.BUS_VOLTAGE_SENSOR, bus_bad, bus_voltage_v, time_s)
        self._check_timestamp(time_s, timestamp_ms)
        return ValidatedStack(time_s, self._v_out, self._t_out, self._p_out,
                              current_a if i_valid else math.nan, bus_voltage_v, status,
                              timestamp_ms)

    # ------------------------------------------------------------------ diagnosis

    def _diagnose_channels(self, time_s: float, raw: np.ndarray, values: np.ndarray,
                           bad: np.ndarray, stuck: np.ndarray) -> None:
        cells, th, lc = self.cells, self.thermistors, self.load_cells
        self.counts["invalid_channels"] += int(np.count_nonzero(bad))
        self.counts["stuck"] += int(np.count_nonzero(stuck))
        cold = raw[th] >= self._ntc_half_rail
        self._diagnose(FaultCode.CELL_VOLTAGE_OPEN_WIRE, bad[cells], self._bad_prev[cells],
                       values[cells], time_s)
        self._diagnose(FaultCode.THERMISTOR_OPEN, bad[th] & cold, self._bad_prev[th] & cold,
                       values[th], time_s, also_clear=self._bad_prev[th])
        self._diagnose(FaultCode.THERMISTOR_SHORT, bad[th] & ~cold, self._bad_prev[th] & ~cold,
                       values[th], time_s, also_clear=self._bad_prev[th])
        self._diagnose(FaultCode.LOAD_CELL_OPEN, bad[lc], self._bad_prev[lc], values[lc], time_s)
        self._diagnose(FaultCode.LOAD_CELL_STUCK, stuck, self._stuck_prev, values[lc], time_s)

    def _diagnose(self, code: FaultCode, now: np.ndarray, before: np.ndarray,
                  values: np.ndarray, time_s: float,
                  also_clear: np.ndarray | None = None) -> None:
        """Raise ``code`` on the channels bad now (keeps last_time current), clear it on those
        that were bad before and are not now."""
        was = before if also_clear is None else (before | also_clear)
        if not (now.any() or was.any()):
            return
        for i in np.flatnonzero(now):
            self.table.raise_fault(code, time_s, None, float(values[i]), self.stack_index, int(i))
        for i in np.flatnonzero(was & ~now):
            self.table.clear_fault(code, time_s, None, float(values[i]), self.stack_index, int(i))

    def _diagnose_scalar(self, code: FaultCode, bad: bool, value: float, time_s: float) -> None:
        was = self._bad_scalar.get(code, False)
        if bad:
            self.table.raise_fault(code, time_s, None, value, self.stack_index)
        elif was:
            self.table.clear_fault(code, time_s, None, value, self.stack_index)
        self._bad_scalar[code] = bad

    def _check_timestamp(self, time_s: float, timestamp_ms: int) -> None:
        if self._last_ts_ms is not None:
            advance_ms = (timestamp_ms - self._last_ts_ms) % (1 << 32)
            backwards = advance_ms >= (1 << 31)
            if backwards or advance_ms > TIMESTAMP_GAP_TICKS * self.tick_s * 1000.0:
                self.counts["timestamp_gap"] += 1
                self.table.raise_fault(FaultCode.TIMESTAMP_GAP, time_s, None,
                                       float(advance_ms), self.stack_index, momentary=True)
        self._last_ts_ms = timestamp_ms


def open_tap_pairs(cell_voltage_v: np.ndarray) -> np.ndarray:
    """Channels that show the open-tap signature (both channels of each pair), see
    OPEN_TAP_DEVIATION_V."""
    v = cell_voltage_v
    dev = v - np.median(v)
    d = OPEN_TAP_DEVIATION_V
    low, high = dev[:-1] < -d, dev[1:] > d
    pair = low & high & (np.abs(dev[:-1] + dev[1:]) < d)
    out = np.zeros(len(v), dtype=bool)
    out[:-1] |= pair
    out[1:] |= pair
    return out
