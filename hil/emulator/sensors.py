"""Sensor synthesis of one stack: the board's channels as its ADCs read the plant's true values.

Each channel's input is the true value plus noise, the channel's calibration error and any
injected offset, in engineering units (V, deg C, kPa, A, V). The reference engine turns it into
counts with the host's own inverse scaling (hil.scaling.Scaler: cell_counts, thermistor_counts,
load_cell_counts, current_counts, bus_counts), so the emulator and the BMS share one forward and
one inverse per channel. The C engine (ssb_plant_sense in csrc/ssb_plant.c) computes the same
as one vector, counts = (x + noise + a) s + c, rounded and clamped to the wire type (a, s, c:
the channel's offset, scale and count offset; channel order cells | thermistors | load cells |
current | bus voltage). Sensor faults (open or shorted NTC, stuck or open load cell) act on the
counts afterwards, for both engines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from boards.config import KELVIN_OFFSET, BoardProfile, StackConfig
from hil.emulator.faults import PlantFaults
from hil.emulator.params import PlantParams, spread
from hil.protocol import INVALID_I32, INVALID_U16
from hil.scaling import HX711_MAX as I24_MAX
from hil.scaling import Scaler

NOISE_BATCH = 512  # noise rows drawn at once (a single draw costs more than a whole sample)


@dataclass
class SensorCounts:
    """Raw counts of one MEASUREMENT (docs/protocol.md), before the host's board-profile scaling."""

    current_raw: int
    bus_voltage_raw: int
    cell_raw: list[int]
    thermistor_raw: list[int]
    load_cell_raw: list[int]
    sensor_error: bool


class Sensors:
    """The channels of one board on one stack: static calibration errors (seeded), the noise
    stream, the per-channel constants and the last load-cell counts (for a stuck load cell).

    ``rng`` draws the noise; the calibration errors are the last draws from the plant's
    ``spread_rng``, in a fixed order.
    """

    def __init__(self, board: BoardProfile, stack: StackConfig, params: PlantParams,
                 rng: np.random.Generator, spread_rng: np.random.Generator) -> None:
        self.board, self.params, self.rng = board, params, rng
        self.n, self.k, self.m = board.cells, board.thermistors, board.load_cells
        self.scaler = Scaler(board)
        self._draw_calibration(spread_rng)
        self._build_channels()
        self._build_thermistor_weights(stack)
        self.noise = np.zeros((0, len(self.noise_sigma)))
        self.noise_i = 0
        self.lc_last_counts = np.zeros(self.m, dtype=np.int64)
        self.lc_have_last = False

    def _draw_calibration(self, spread_rng: np.random.Generator) -> None:
        """Sensor calibration errors (seeded, static)."""
        p, n, k, m = self.params, self.n, self.k, self.m
        self.cell_off_v = spread_rng.uniform(-p.cell_offset_v, p.cell_offset_v, n)
        self.cur_off_a = float(spread_rng.uniform(-p.current_offset_a, p.current_offset_a))
        self.th_off_k = spread_rng.uniform(-p.thermistor_offset_k, p.thermistor_offset_k, k)
        self.lc_off_kpa = spread_rng.uniform(-p.load_cell_offset_kpa, p.load_cell_offset_kpa, m)
        self.lc_gain = 1.0 + spread(spread_rng, p.load_cell_gain_spread, m)
        self.th_off_k_kelvin = self.th_off_k + KELVIN_OFFSET  # for the C port (plant_c.py)

    def _build_channels(self) -> None:
        """Noise sigma per channel (thermistor noise in counts) and, for the C port, the wire
        type's bounds per channel."""
        p, b, n, k, m = self.params, self.board, self.n, self.k, self.m
        th = b.thermistor
        self.noise_sigma = np.concatenate([
            np.full(n, p.cell_noise_v), np.full(k, p.thermistor_noise_v / th.lsb_v),
            np.full(m, p.load_cell_noise_kpa), [p.current_noise_a, p.bus_noise_v]])
        self.ch_lo = np.concatenate([np.zeros(n + k), np.full(m, -I24_MAX - 1.0),
                                     [-float(INVALID_I32)] * 2])
        self.ch_hi = np.concatenate([np.full(n + k, INVALID_U16 - 1.0),
                                     np.full(m, float(I24_MAX)), [INVALID_I32 - 1.0] * 2])

    def _build_thermistor_weights(self, stack: StackConfig) -> None:
        """Thermistor positions along the stack -> interpolation weights over cells (k, n)."""
        n, k = self.n, self.k
        pos = np.asarray(stack.thermistor_cell_positions[:k], dtype=float)
        i0 = np.clip(np.floor(pos).astype(int), 0, n - 1)
        i1 = np.clip(i0 + 1, 0, n - 1)
        w = pos - i0
        self.th_weights = np.zeros((k, n))
        for j in range(k):
            self.th_weights[j, i0[j]] += 1.0 - w[j]
            self.th_weights[j, i1[j]] += w[j]

    def refresh(self, f: PlantFaults) -> None:
        """Recompute what depends on the faults: which fault paths are active and, for the C
        port, the channels' offset a, scale s and count offset c."""
        b, n, k = self.board, self.n, self.k
        self.vtap_any = bool((~np.isnan(f.vtap_open_since_s)).any())
        self.th_fault_any = bool(f.thermistor_open.any() or f.thermistor_short.any())
        self.lc_fault_any = bool(f.loadcell_stuck.any() or f.loadcell_open.any())
        kpc = np.asarray(b.load_cell_kpa_per_count, dtype=float)
        self.ch_a = np.concatenate([
            self.cell_off_v - b.cell_offset_v + f.vtap_offset_v, np.zeros(k),
            self.lc_off_kpa + f.loadcell_offset_kpa / self.lc_gain,
            [self.cur_off_a + f.current_offset_a - b.current_offset_a, 0.0]])
        self.ch_s = np.concatenate([
            np.full(n, 1.0 / b.cell_lsb_v), np.ones(k), self.lc_gain / kpc,
            [1.0 / b.current_lsb_a, 1.0 / b.bus_lsb_v]])
        self.ch_c = np.concatenate([np.zeros(n + k), np.asarray(b.load_cell_offset_counts,
                                                                dtype=float), [0.0, 0.0]])

    # ------------------------------------------------------------------ noise stream

    def next_noise_row(self) -> int:
        """Index of the next row of scaled sensor noise in :attr:`noise`, drawn in batches.
        Same seed and same call order give the same noise."""
        if self.noise_i >= len(self.noise):
            self.noise = self.rng.standard_normal((NOISE_BATCH, len(self.noise_sigma)))
            self.noise *= self.noise_sigma
            self.noise_i = 0
        i = self.noise_i
        self.noise_i += 1
        return i

    def state(self) -> tuple:
        """The dynamic state (noise stream position, last load-cell counts) for a snapshot."""
        return (self.noise, self.noise_i, self.rng.bit_generator.state, self.lc_last_counts,
                self.lc_have_last)

    def set_state(self, state: tuple) -> None:
        (self.noise, self.noise_i, rng_state, self.lc_last_counts,
         self.lc_have_last) = state
        self.rng.bit_generator.state = rng_state

    # ------------------------------------------------------------------ counts

    def counts(self, t_s: float, cell_v: np.ndarray, temp_cells_c: np.ndarray,
               lc_kpa: np.ndarray, current_a: float, bus_v: float,
               f: PlantFaults) -> SensorCounts:
        """The reference of ssb_plant_sense: what each channel's input sees (the true value,
        noise, calibration error and injected offset, in engineering units), then the host's
        inverse scaling (hil.scaling.Scaler: cell_counts, thermistor_counts, load_cell_counts,
        current_counts, bus_counts), which rounds and clamps to the wire type."""
        n, k, m, sc = self.n, self.k, self.m, self.scaler
        row = self.next_noise_row()
        noise = self.noise[row]
        raw = np.empty(n + k + m + 2, dtype=np.int64)
        cells = np.array(cell_v, dtype=float)
        if self.vtap_any:
            self._open_taps(cells, t_s, f)
        cells += noise[:n]
        cells += self.cell_off_v
        cells += f.vtap_offset_v
        raw[:n] = sc.cell_counts(cells)
        if k:
            raw[n:n + k] = sc.thermistor_counts(self._ntc_temperature(temp_cells_c,
                                                                      noise[n:n + k]))
        if m:
            lc = lc_kpa + noise[n + k:n + k + m]
            lc += self.lc_off_kpa
            lc += f.loadcell_offset_kpa / self.lc_gain
            lc *= self.lc_gain
            raw[n + k:n + k + m] = sc.load_cell_counts(lc)
        raw[-2] = sc.current_counts(current_a + noise[-2] + self.cur_off_a + f.current_offset_a)
        raw[-1] = sc.bus_counts(bus_v + noise[-1])
        return self.finish(raw, f)

    def _open_taps(self, cells: np.ndarray, t_s: float, f: PlantFaults) -> None:
        """An open tap wire (top of cell i): channel i decays through its input filter and
        channel i+1 reads the difference, so the pair still sums to the true voltage."""
        n = self.n
        for i in np.flatnonzero(~np.isnan(f.vtap_open_since_s)):
            decay = math.exp(-(t_s - f.vtap_open_since_s[i]) / self.params.vtap_open_tau_s)
            lost = cells[i] * (1.0 - decay)
            cells[i] -= lost
            if i + 1 < n:
                cells[i + 1] += lost

    def _ntc_temperature(self, temp_cells_c: np.ndarray, noise_counts: np.ndarray) -> np.ndarray:
        """The temperature the NTC divider reads: the cells' temperature at the thermistor's
        position along the stack plus the NTC's tolerance, and the divider's voltage noise
        (drawn in counts) as the temperature the board profile's Beta equation gives for the
        noisy voltage (ThermistorScaling.c_to_counts, then counts_to_c)."""
        th = self.board.thermistor
        t_c = self.th_weights.dot(temp_cells_c)
        t_c += self.th_off_k
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return th.counts_to_c(th.c_to_counts(t_c) + noise_counts)

    def finish(self, raw: np.ndarray, f: PlantFaults) -> SensorCounts:
        """Sensor faults on the rounded counts (both engines), then the MEASUREMENT's fields.
        ``raw`` (int64, channel order) is modified."""
        n, k, m = self.n, self.k, self.m
        if self.th_fault_any:  # open NTC -> Vref (pull-up), shorted NTC -> 0 V
            th = self.board.thermistor
            raw[n:n + k][f.thermistor_open] = int(round(th.vref_v / th.lsb_v))
            raw[n:n + k][f.thermistor_short] = 0
        sensor_error = False
        if m:
            lc = raw[n + k:n + k + m]
            if self.lc_fault_any and self.lc_have_last:
                lc[f.loadcell_stuck] = self.lc_last_counts[f.loadcell_stuck]
            self.lc_last_counts = lc.copy()
            self.lc_have_last = True
            if self.lc_fault_any and f.loadcell_open.any():
                lc[f.loadcell_open] = INVALID_I32
                sensor_error = True  # the amplifier never becomes ready: a read timeout
        out = raw.tolist()
        return SensorCounts(
            current_raw=out[-2],
            bus_voltage_raw=out[-1],
            cell_raw=out[:n],
            thermistor_raw=out[n:n + k],
            load_cell_raw=out[n + k:n + k + m],
            sensor_error=sensor_error,
        )


__all__ = ["NOISE_BATCH", "SensorCounts", "Sensors"]
