"""Measurement validation: range, plausibility and the specific sensor diagnosis, from real
MEASUREMENT messages built with the board profile's own scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bms.config import load_board, load_pack
from bms.faults import FaultCode, FaultTable, Severity
from bms.validation import LOAD_CELL_STUCK_SAMPLES, StackValidator
from hil.scaling import Scaler

PACK = load_pack("ssb-23")
BOARD = load_board("emu-23")


class Rig:
    """A validator fed with MEASUREMENTs made by the board profile's inverse scaling."""

    def __init__(self) -> None:
        self.table = FaultTable()
        self.validator = StackValidator(PACK, 0, BOARD, self.table)
        self.scaler = Scaler(BOARD)
        self.t = 0.0
        self.rng = np.random.default_rng(1)
        self.cells = np.full(23, 3.7)
        self.temps = np.full(6, 25.0)
        self.press = np.full(4, 1100.0)
        self.current = -2.0
        self.ts_ms = 0

    def step(self, noise: bool = True, **override):
        cells = override.get("cells", self.cells)
        press = override.get("press", self.press)
        if noise:  # real load cells and monitors always show a few counts of noise
            press = press + self.rng.normal(0, 0.01, len(press))
        m = self.scaler.measurement(self.ts_ms / 1000.0, 0, cells,
                                    override.get("temps", self.temps), press,
                                    override.get("current", self.current), 80.0)
        if "thermistor_raw" in override:
            m = type(m)(m.timestamp_ms, m.status, m.current_raw, m.bus_voltage_raw, m.cell_raw,
                        override["thermistor_raw"], m.load_cell_raw)
        raw, values = self.scaler.channel_values(m)
        out = self.validator.check(self.t, raw, values, self.scaler.current_a(m),
                                   self.scaler.bus_voltage_v(m), m.timestamp_ms, m.status)
        self.t += 0.1
        self.ts_ms += override.get("ts_step_ms", 100)
        return out

    def active(self, code: FaultCode) -> list[int | None]:
        return sorted(r.cell for r in self.table.active() if r.code == code)


def test_clean_data_passes_untouched() -> None:
    rig = Rig()
    out = rig.step()
    assert np.allclose(out.cell_voltage_v, 3.7, atol=1e-4)
    assert np.allclose(out.temperature_c, 25.0, atol=0.01)
    assert np.all(np.isfinite(out.pressure_kpa)) and out.current_a == pytest.approx(-2.0)
    assert not rig.table.records()


def test_open_tap_wire_is_nan_and_diagnosed_then_cleared() -> None:
    rig = Rig()
    cells = rig.cells.copy()
    cells[4] = 0.02          # LTC6811 open-wire signature: ~0 V
    cells[9] = np.nan        # 0xFFFF on the wire (PEC failure)
    out = rig.step(cells=cells)
    assert np.isnan(out.cell_voltage_v[[4, 9]]).all()
    assert np.isfinite(np.delete(out.cell_voltage_v, [4, 9])).all()
    assert rig.active(FaultCode.CELL_VOLTAGE_OPEN_WIRE) == [4, 9]
    rig.step()
    assert rig.active(FaultCode.CELL_VOLTAGE_OPEN_WIRE) == []
    assert rig.table.get(FaultCode.CELL_VOLTAGE_OPEN_WIRE, stack=0, cell=4).latched


def test_thermistor_open_reads_cold_and_short_reads_hot() -> None:
    rig = Rig()
    rail = int(BOARD.thermistor.vref_v / BOARD.thermistor.lsb_v)
    raw = list(rig.scaler.thermistor_counts(rig.temps))
    raw[1] = rail - 1   # open NTC: divider at vref
    raw[3] = 0          # shorted NTC: divider at 0 V
    out = rig.step(thermistor_raw=tuple(raw))
    assert np.isnan(out.temperature_c[[1, 3]]).all()
    assert rig.active(FaultCode.THERMISTOR_OPEN) == [1]
    assert rig.active(FaultCode.THERMISTOR_SHORT) == [3]
    rig.step()
    assert rig.active(FaultCode.THERMISTOR_OPEN) == [] == rig.active(FaultCode.THERMISTOR_SHORT)


def test_load_cell_open_and_stuck() -> None:
    rig = Rig()
    press = rig.press.copy()
    press[2] = np.nan  # HX711 not ready: 0x7FFFFFFF
    out = rig.step(press=press)
    assert math.isnan(out.pressure_kpa[2])
    assert rig.active(FaultCode.LOAD_CELL_OPEN) == [2]
    # Load cell 0 frozen at one count (others keep their noise): stuck after N samples.
    frozen = rig.press.copy()
    for k in range(LOAD_CELL_STUCK_SAMPLES + 1):
        p = rig.press + rig.rng.normal(0, 0.05, 4)
        p[0] = frozen[0]
        out = rig.step(press=p, noise=False)
        if k < LOAD_CELL_STUCK_SAMPLES - 1:
            assert rig.active(FaultCode.LOAD_CELL_STUCK) == [], k
    assert rig.active(FaultCode.LOAD_CELL_STUCK) == [0]
    assert math.isnan(out.pressure_kpa[0]) and np.isfinite(out.pressure_kpa[1:]).all()
    rig.step()
    assert rig.active(FaultCode.LOAD_CELL_STUCK) == []


def test_voltage_jump_is_diagnosed_but_kept() -> None:
    rig = Rig()
    rig.step()
    cells = rig.cells.copy()
    cells[7] = 4.3  # +0.6 V with no current step: no cell does that
    out = rig.step(cells=cells)
    assert out.cell_voltage_v[7] == pytest.approx(4.3, abs=1e-4)  # safety data is not dropped
    rec = rig.table.get(FaultCode.CELL_VOLTAGE_IMPLAUSIBLE, Severity.WARNING, stack=0, cell=7)
    assert rec is not None and rec.count == 1 and not rec.active
    # The same step with a current step that explains it is plausible.
    rig2 = Rig()
    rig2.step(current=0.0)
    cells = rig2.cells + 0.05
    rig2.step(cells=cells, current=5.0)
    assert not rig2.table.records()


def test_current_out_of_range_and_timestamp_gap() -> None:
    rig = Rig()
    out = rig.step(current=5000.0)
    assert math.isnan(out.current_a)
    assert rig.table.get(FaultCode.CURRENT_SENSOR, stack=0).active
    rig.step(ts_step_ms=1000)
    rig.step()  # 1 s advance where 0.1 s was expected
    gap = rig.table.get(FaultCode.TIMESTAMP_GAP, stack=0)
    assert gap is not None and gap.count == 1
    assert not rig.table.get(FaultCode.CURRENT_SENSOR, stack=0).active


def test_out_of_range_values_on_every_channel_kind() -> None:
    rig = Rig()
    temps = rig.temps.copy()
    temps[0] = 150.0            # beyond the NTC's specified range
    press = rig.press.copy()
    press[1] = -50.0            # negative stack pressure
    out = rig.step(temps=temps, press=press)
    assert math.isnan(out.temperature_c[0]) and math.isnan(out.pressure_kpa[1])
    assert rig.active(FaultCode.THERMISTOR_SHORT) == [0]  # hot side of the divider
    assert rig.active(FaultCode.LOAD_CELL_OPEN) == [1]


def test_open_tap_signature_invalidates_the_pair_before_any_limit() -> None:
    """An open tap between cells 5 and 6: channel 5 falls, channel 6 rises by the same amount.
    Caught as an open wire while channel 6 (4.0 V) is still a plausible voltage, before it could
    look like an over-voltage."""
    rig = Rig()
    rig.step()
    cells = rig.cells.copy()
    cells[5] -= 0.3
    cells[6] += 0.3
    out = rig.step(cells=cells)
    assert np.isnan(out.cell_voltage_v[[5, 6]]).all()
    assert rig.active(FaultCode.CELL_VOLTAGE_OPEN_WIRE) == [5, 6]
    # Two cells that are really off (not a pair summing to normal) are not a tap.
    rig2 = Rig()
    cells = rig2.cells.copy()
    cells[5] -= 0.3
    cells[6] -= 0.3
    out = rig2.step(cells=cells)
    assert np.isfinite(out.cell_voltage_v).all()
    assert rig2.active(FaultCode.CELL_VOLTAGE_OPEN_WIRE) == []


def test_voltage_jump_is_seen_next_to_a_cell_without_data() -> None:
    """A NaN channel (open tap, out of range) must not hide another cell's jump."""
    rig = Rig()
    cells = rig.cells.copy()
    cells[3] = 0.2  # out of range: NaN after validation, on this tick and the next
    rig.step(cells=cells)
    cells[12] = 4.3
    rig.step(cells=cells)
    rec = rig.table.get(FaultCode.CELL_VOLTAGE_IMPLAUSIBLE, Severity.WARNING, stack=0, cell=12)
    assert rec is not None and rec.count == 1
    assert rig.table.get(FaultCode.CELL_VOLTAGE_IMPLAUSIBLE, Severity.WARNING, stack=0,
                         cell=3) is None


def test_stuck_count_restarts_when_the_load_cell_moves() -> None:
    rig = Rig()
    for _ in range(LOAD_CELL_STUCK_SAMPLES - 1):
        rig.step(noise=False)
    rig.step()  # noise: every load cell moves, the count starts over
    for _ in range(LOAD_CELL_STUCK_SAMPLES - 1):
        rig.step(noise=False)
    assert rig.active(FaultCode.LOAD_CELL_STUCK) == []
    out = rig.step(noise=False)
    out = rig.step(noise=False)
    assert rig.active(FaultCode.LOAD_CELL_STUCK) == [0, 1, 2, 3]
    assert np.isnan(out.pressure_kpa).all()
    rig.step()  # moving again: cleared, data back
    assert rig.active(FaultCode.LOAD_CELL_STUCK) == []
    assert np.isfinite(rig.step().pressure_kpa).all()


def test_channel_values_match_the_per_kind_conversion() -> None:
    """The controller's vector conversion (folded gain/offset, NTC table, sentinels) equals
    Scaler.readings on random counts, sentinels included; the buffers are reused."""
    from hil.protocol import Measurement
    from hil.scaling import INVALID_I32, INVALID_U16

    scaler = Scaler(BOARD)
    rng = np.random.default_rng(7)
    first = None
    for k in range(200):
        cells = rng.integers(0, 0xFFFF, BOARD.cells)
        therm = rng.integers(0, 0xFFFF, BOARD.thermistors)
        load = rng.integers(-(1 << 23), 1 << 23, BOARD.load_cells)
        if k % 3 == 0:
            cells[rng.integers(BOARD.cells)] = INVALID_U16
            therm[rng.integers(BOARD.thermistors)] = INVALID_U16
            load[rng.integers(BOARD.load_cells)] = INVALID_I32
        m = Measurement(k, 0, 0, 0, tuple(cells.tolist()), tuple(therm.tolist()),
                        tuple(load.tolist()))
        raw, values = scaler.channel_values(m)
        first = first if first is not None else values
        assert values is first  # one buffer, no allocation per tick
        r = scaler.readings(m)
        want = np.concatenate([r.cell_voltage_v, r.temperature_c, r.pressure_kpa])
        np.testing.assert_allclose(values, want, rtol=1e-12, atol=1e-9, equal_nan=True)
        assert raw.tolist() == cells.tolist() + therm.tolist() + load.tolist()
