"""Raw MEASUREMENT counts <-> engineering units, with a board profile (boards/*.yaml).

The board sends raw counts (docs/protocol.md, MEASUREMENT) so that a calibration change never
needs new firmware; this module is the one place that applies the profile's scaling:

- cell voltage  V   = counts * cell_lsb_v + cell_offset_v        (0xFFFF = invalid -> NaN)
- temperature   C   = thermistor.counts_to_c(counts)             (0xFFFF = invalid -> NaN)
- pressure      kPa = (counts - offset_counts) * kpa_per_count   (0x7FFFFFFF -> NaN)
- current       A   = counts * current_lsb_a + current_offset_a  (0x7FFFFFFF -> NaN)
- bus voltage   V   = counts * bus_lsb_v                         (0x7FFFFFFF -> NaN)

The inverse helpers (engineering -> counts, rounded to nearest and clamped to the wire type,
never producing a sentinel by accident; NaN -> the sentinel) are what the emulator's reference
plant engine (hil/emulator/sensors.py) uses to synthesise MEASUREMENTs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from boards.config import BoardProfile
from hil.protocol import INVALID_I32, INVALID_U16, Measurement

__all__ = [
    "Readings", "Scaler", "to_readings", "cell_v_to_counts", "temperature_c_to_counts",
    "pressure_kpa_to_counts", "current_a_to_counts", "bus_v_to_counts", "to_measurement",
    "HX711_MIN", "HX711_MAX",
]

# HX711: 24-bit two's complement output, sign-extended to i32 on the wire (HX711 datasheet).
HX711_MIN = -(1 << 23)
HX711_MAX = (1 << 23) - 1
_U16_MAX_VALID = INVALID_U16 - 1
_I32_MIN = -(1 << 31)
_I32_MAX_VALID = INVALID_I32 - 1


@dataclass(frozen=True)
class Readings:
    """One board's measurement in engineering units; NaN marks an invalid channel."""

    timestamp_s: float
    status: int
    cell_voltage_v: np.ndarray   # (n_cells,)
    temperature_c: np.ndarray    # (n_thermistors,)
    pressure_kpa: np.ndarray     # (n_load_cells,)
    current_a: float             # positive = charge
    bus_voltage_v: float


def _round_clamp(x: np.ndarray, lo: int, hi: int, invalid: int) -> tuple[int, ...]:
    """Round to nearest, clamp to [lo, hi], NaN -> invalid; a tuple of Python ints."""
    x = np.asarray(x, dtype=float)
    nan = np.isnan(x)
    counts = np.clip(np.rint(np.where(nan, 0.0, x)), lo, hi).astype(np.int64)
    if nan.any():
        counts[nan] = invalid
    return tuple(counts.tolist())


def _scalar_counts(x: float, lo: int, hi: int, invalid: int) -> int:
    x = float(x)
    if x != x:  # NaN
        return invalid
    return int(min(max(round(x), lo), hi))


class Scaler:
    """Profile-bound converter; precomputes the per-channel arrays once (controller hot path)."""

    def __init__(self, profile: BoardProfile) -> None:
        self.profile = profile
        self._kpa_per_count = np.asarray(profile.load_cell_kpa_per_count, dtype=float)
        self._offset_counts = np.asarray(profile.load_cell_offset_counts, dtype=float)
        # Pack-wide vector form for the controller's hot path (channel_values): one gain and
        # offset per channel, a per-channel sentinel, and a table for the NTC equation.
        nc, nt, nl = profile.cells, profile.thermistors, profile.load_cells
        self.n_channels = nc + nt + nl
        self.cell_slice = slice(0, nc)
        self.thermistor_slice = slice(nc, nc + nt)
        self.load_cell_slice = slice(nc + nt, nc + nt + nl)
        self._gain = np.concatenate([np.full(nc, profile.cell_lsb_v), np.zeros(nt),
                                     self._kpa_per_count])
        self._offset_counts_all = np.concatenate([np.zeros(nc + nt), self._offset_counts])
        self._offset_value = np.concatenate([np.full(nc, profile.cell_offset_v),
                                             np.zeros(nt + nl)])
        self._sentinel = np.concatenate([np.full(nc + nt, INVALID_U16),
                                         np.full(nl, INVALID_I32)]).astype(np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            lut = profile.thermistor.counts_to_c(np.arange(1 << 16, dtype=float))
        lut[INVALID_U16] = np.nan
        self._ntc_lut = lut
        self._bias = self._offset_value - self._offset_counts_all * self._gain
        self._raw = np.zeros(self.n_channels, dtype=np.int64)
        self._values = np.zeros(self.n_channels)
        self._invalid = np.zeros(self.n_channels, dtype=bool)

    # ---------------------------------------------------------------- counts -> engineering

    def readings(self, m: Measurement) -> Readings:
        p = self.profile
        if (len(m.cell_raw), len(m.thermistor_raw), len(m.load_cell_raw)) != (
            p.cells, p.thermistors, p.load_cells
        ):
            raise ValueError(
                f"measurement has {len(m.cell_raw)} cells, {len(m.thermistor_raw)} thermistors, "
                f"{len(m.load_cell_raw)} load cells; board profile {p.name} ({p.path}) expects "
                f"{p.cells}, {p.thermistors}, {p.load_cells}"
            )
        cells = np.array(m.cell_raw, dtype=float)
        cell_v = cells * p.cell_lsb_v + p.cell_offset_v
        cell_v[cells == INVALID_U16] = np.nan
        therm = np.array(m.thermistor_raw, dtype=float)
        temp_c = p.thermistor.counts_to_c(therm) if len(therm) else therm
        if len(therm):
            temp_c[therm == INVALID_U16] = np.nan
        load = np.array(m.load_cell_raw, dtype=float)
        press = (load - self._offset_counts) * self._kpa_per_count
        press[load == INVALID_I32] = np.nan
        cur = m.current_raw
        current_a = np.nan if cur == INVALID_I32 else cur * p.current_lsb_a + p.current_offset_a
        bus = m.bus_voltage_raw
        bus_v = np.nan if bus == INVALID_I32 else bus * p.bus_lsb_v
        return Readings(m.timestamp_ms / 1000.0, m.status, cell_v, temp_c, press, current_a,
                        bus_v)

    def channel_values(self, m: Measurement) -> tuple[np.ndarray, np.ndarray]:
        """Raw counts and engineering values of every channel as two vectors, in the order
        cells | thermistors | load cells (slices: cell_slice, thermistor_slice,
        load_cell_slice). Same conversion as :meth:`readings` (NaN for sentinels), with a
        handful of vector operations instead of one conversion per channel kind.

        Both arrays are this Scaler's buffers, overwritten by the next call (the controller's
        hot path copies what it keeps)."""
        n = len(m.cell_raw) + len(m.thermistor_raw) + len(m.load_cell_raw)
        if n != self.n_channels:
            p = self.profile
            raise ValueError(
                f"measurement has {len(m.cell_raw)} cells, {len(m.thermistor_raw)} thermistors, "
                f"{len(m.load_cell_raw)} load cells; board profile {p.name} ({p.path}) expects "
                f"{p.cells}, {p.thermistors}, {p.load_cells}")
        raw, values = self._raw, self._values
        raw[:] = m.cell_raw + m.thermistor_raw + m.load_cell_raw
        np.multiply(raw, self._gain, out=values)       # (raw - offset) * gain + offset_value,
        values += self._bias                             # with the constants folded
        th = self.thermistor_slice
        values[th] = self._ntc_lut[raw[th] & 0xFFFF]
        invalid = np.equal(raw, self._sentinel, out=self._invalid)
        if invalid.any():
            values[invalid] = np.nan
        return raw, values

    def current_a(self, m: Measurement) -> float:
        return self.current_from_raw(m.current_raw)

    def bus_voltage_v(self, m: Measurement) -> float:
        return self.bus_voltage_from_raw(m.bus_voltage_raw)

    def current_from_raw(self, cur: int) -> float:
        p = self.profile
        return math.nan if cur == INVALID_I32 else cur * p.current_lsb_a + p.current_offset_a

    def bus_voltage_from_raw(self, bus: int) -> float:
        return math.nan if bus == INVALID_I32 else bus * self.profile.bus_lsb_v

    # ---------------------------------------------------------------- engineering -> counts

    def cell_counts(self, cell_voltage_v: np.ndarray) -> tuple[int, ...]:
        p = self.profile
        x = (np.asarray(cell_voltage_v, dtype=float) - p.cell_offset_v) / p.cell_lsb_v
        return _round_clamp(x, 0, _U16_MAX_VALID, INVALID_U16)

    def thermistor_counts(self, temperature_c: np.ndarray) -> tuple[int, ...]:
        t = np.asarray(temperature_c, dtype=float)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            x = self.profile.thermistor.c_to_counts(t)
        return _round_clamp(x, 0, _U16_MAX_VALID, INVALID_U16)

    def load_cell_counts(self, pressure_kpa: np.ndarray) -> tuple[int, ...]:
        press = np.asarray(pressure_kpa, dtype=float)
        scale = self._kpa_per_count
        with np.errstate(divide="ignore", invalid="ignore"):
            # A zero scale (allowed by the profile schema) reads the offset whatever the force.
            x = np.where(scale != 0, press / np.where(scale != 0, scale, 1.0), 0.0)
        x = np.where(np.isnan(press), np.nan, x + self._offset_counts)
        return _round_clamp(x, HX711_MIN, HX711_MAX, INVALID_I32)

    def current_counts(self, current_a: float) -> int:
        p = self.profile
        return _scalar_counts((current_a - p.current_offset_a) / p.current_lsb_a, _I32_MIN,
                              _I32_MAX_VALID, INVALID_I32)

    def bus_counts(self, bus_voltage_v: float) -> int:
        return _scalar_counts(bus_voltage_v / self.profile.bus_lsb_v, _I32_MIN, _I32_MAX_VALID,
                              INVALID_I32)

    def measurement(self, timestamp_s: float, status: int, cell_voltage_v: np.ndarray,
                    temperature_c: np.ndarray, pressure_kpa: np.ndarray, current_a: float,
                    bus_voltage_v: float) -> Measurement:
        """Engineering values -> a MEASUREMENT message (timestamp wraps at u32 ms)."""
        return Measurement(
            timestamp_ms=int(round(timestamp_s * 1000.0)) & 0xFFFFFFFF,
            status=int(status),
            current_raw=self.current_counts(current_a),
            bus_voltage_raw=self.bus_counts(bus_voltage_v),
            cell_raw=self.cell_counts(cell_voltage_v),
            thermistor_raw=self.thermistor_counts(temperature_c),
            load_cell_raw=self.load_cell_counts(pressure_kpa),
        )


# Module-level conveniences (build a Scaler once per board in hot loops instead).


def to_readings(m: Measurement, profile: BoardProfile) -> Readings:
    return Scaler(profile).readings(m)


def cell_v_to_counts(cell_voltage_v: np.ndarray, profile: BoardProfile) -> tuple[int, ...]:
    return Scaler(profile).cell_counts(cell_voltage_v)


def temperature_c_to_counts(temperature_c: np.ndarray, profile: BoardProfile) -> tuple[int, ...]:
    return Scaler(profile).thermistor_counts(temperature_c)


def pressure_kpa_to_counts(pressure_kpa: np.ndarray, profile: BoardProfile) -> tuple[int, ...]:
    return Scaler(profile).load_cell_counts(pressure_kpa)


def current_a_to_counts(current_a: float, profile: BoardProfile) -> int:
    return Scaler(profile).current_counts(current_a)


def bus_v_to_counts(bus_voltage_v: float, profile: BoardProfile) -> int:
    return Scaler(profile).bus_counts(bus_voltage_v)


def to_measurement(profile: BoardProfile, timestamp_s: float, status: int,
                   cell_voltage_v: np.ndarray, temperature_c: np.ndarray,
                   pressure_kpa: np.ndarray, current_a: float,
                   bus_voltage_v: float) -> Measurement:
    return Scaler(profile).measurement(timestamp_s, status, cell_voltage_v, temperature_c,
                                       pressure_kpa, current_a, bus_voltage_v)
