"""Measurement validation: range, plausibility and the specific sensor diagnosis, from real
MEASUREMENT messages built with the board profile's own scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bms.faults import FaultCode, FaultTable, Severity
from bms.validation import LOAD_CELL_STUCK_SAMPLES, StackValidator
from boards.config import load_board, load_pack
from hil.scaling import Scaler

PACK = load_pack("ssb-23")
BOARD = load_board("emu-23")


class Rig:
    """A validator fed with MEASUREMENTs made by the board profile's inverse scaling."""

    def __init__(self) -> None:
        self.table = FaultTable()
        self.validator = StackValidator(PACK, 0, BOARD, self.table, engine="reference")
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
        out = self.validator.check_measurement(self.t, m, self.scaler.current_a(m),
                                               self.scaler.bus_voltage_v(m))
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


def _random_measurements(seed: int, n: int):
    """Measurements that visit every rule: in range, NaN sentinels, out of range, open taps,
    stuck and moving load cells, voltage jumps, NaN and out-of-range currents."""
    from hil.protocol import Measurement
    from hil.scaling import INVALID_I32, INVALID_U16

    scaler = Scaler(BOARD)
    rng = np.random.default_rng(seed)
    cells = np.full(BOARD.cells, 3.7)
    load_raw = list(scaler.load_cell_counts(np.full(BOARD.load_cells, 1100.0)))
    current = -2.0
    stuck_left, gap_ms = 0, 0
    for k in range(n):
        cells = np.clip(cells + rng.normal(0, 0.002, len(cells)), 3.0, 4.3)
        v = cells.copy()
        r = rng.random()
        if r < 0.05:                                   # open tap between i and i+1
            i = int(rng.integers(BOARD.cells - 1))
            d = rng.uniform(0.2, 1.0)
            v[i] -= d
            v[i + 1] += d
        elif r < 0.08:                                 # a jump
            v[int(rng.integers(BOARD.cells))] += rng.choice([-1, 1]) * rng.uniform(0.05, 0.8)
        elif r < 0.10:                                 # out of range
            v[int(rng.integers(BOARD.cells))] = rng.choice([0.3, 6.0])
        temps = 25.0 + rng.normal(0, 2, BOARD.thermistors)
        if stuck_left == 0 and rng.random() < 0.01:   # a stuck phase of 30 samples
            stuck_left = 30
        if stuck_left:
            stuck_left -= 1
        else:                                          # load cells move by noise
            load_raw = [x + int(rng.integers(1, 4)) * int(rng.choice([-1, 1]))
                        for x in load_raw]
        if rng.random() < 0.01:                        # the board's clock jumps ahead
            gap_ms += 1000
        current = rng.choice([current, rng.uniform(-10, 10), np.nan, 1e4],
                             p=[0.8, 0.14, 0.03, 0.03])
        m = scaler.measurement(k * 0.1 + gap_ms / 1000.0, 0, v, temps,
                               np.zeros(BOARD.load_cells), current, 80.0)
        cell_raw, therm_raw = list(m.cell_raw), list(m.thermistor_raw)
        lc = list(load_raw)
        if rng.random() < 0.05:
            cell_raw[int(rng.integers(BOARD.cells))] = INVALID_U16
        if rng.random() < 0.05:
            therm_raw[int(rng.integers(BOARD.thermistors))] = rng.choice([INVALID_U16, 0,
                                                                         0xFFFE])
        if rng.random() < 0.05:
            lc[int(rng.integers(BOARD.load_cells))] = INVALID_I32
        yield Measurement(m.timestamp_ms, 0, m.current_raw, m.bus_voltage_raw,
                          tuple(cell_raw), tuple(therm_raw), tuple(lc))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_c_front_end_matches_the_numpy_reference(seed: int) -> None:
    """check_measurement (csrc/ssb_frontend.c) and check (NumPy) on the same 3000 random
    measurements: the same clean data, the same fault records and events, the same counts."""
    ref_table, c_table = FaultTable(), FaultTable()
    ref = StackValidator(PACK, 0, BOARD, ref_table, engine="reference")
    fast = StackValidator(PACK, 0, BOARD, c_table)
    scaler = Scaler(BOARD)
    for k, m in enumerate(_random_measurements(seed, 3000)):
        t = k * 0.1
        a = ref.check_measurement(t, m, scaler.current_a(m), scaler.bus_voltage_v(m))
        b = fast.check_measurement(t, m, scaler.current_a(m), scaler.bus_voltage_v(m))
        for name in ("cell_voltage_v", "temperature_c", "pressure_kpa"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert (a.current_a == b.current_a) or (math.isnan(a.current_a)
                                                and math.isnan(b.current_a))
        assert ref_table.drain_events() == c_table.drain_events(), k
    assert ref.counts == fast.counts
    assert all(v > 0 for v in fast.counts.values()), fast.counts  # every rule was exercised
    assert [(r.code, r.stack, r.cell, r.count) for r in ref_table.records()] == \
        [(r.code, r.stack, r.cell, r.count) for r in c_table.records()]


def test_c_front_end_rejects_a_wrong_channel_count() -> None:
    from hil.protocol import Measurement

    v = StackValidator(PACK, 0, BOARD, FaultTable())
    m = Measurement(0, 0, 0, 0, (1000,) * (BOARD.cells - 1), (2000,) * BOARD.thermistors,
                    (0,) * BOARD.load_cells)
    with pytest.raises(ValueError, match="expects 23"):
        v.check_measurement(0.0, m, 0.0, 80.0)
