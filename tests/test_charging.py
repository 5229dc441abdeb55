"""Dendrite-safe charging (bms/charging.py): the CCD table against hand-computed points, its
ends, unknown pressure and temperature, packs without the limit, the binding events, the held
limit of the over-current levels; then end to end: hil/scenarios/ccd-derate.yaml through the
real controller and an emulated board on a pty (sim clock), where the charge limit must fall
with the stack pressure, and the plant's current with it, before any pressure warning or
fault."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from bms.app.check import main as check_main
from bms.app.emulators import start_emulator
from bms.app.latency import Bench
from bms.charging import CcdLimit, CcdWatch, HeldLimit, stack_conditions
from bms.controller import Controller
from bms.faults import FaultCode
from bms.runlog import load_events, load_ticks
from boards.config import ConfigError, load_pack
from hil.protocol import InjectedFault as Inject

REPO = Path(__file__).resolve().parents[1]
PACK = load_pack("ssb-23")
AREA_CM2 = 1430.0  # 143 cm2 x 10 unit layers
MARGIN = 0.8


def _amps(ma_cm2: float) -> float:
    return MARGIN * ma_cm2 * AREA_CM2 / 1000.0


def _pack_variant(tmp_path: Path, edit) -> object:
    """ssb-23 with ``edit(data)`` applied, as a file of its own (base: the shipped file)."""
    data = yaml.safe_load((REPO / "boards/packs/ssb-23.yaml").read_text())
    edit(data)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_pack(str(path))


# ---------------------------------------------------------------------- the table


def test_table_points_and_bilinear_interpolation() -> None:
    ccd = CcdLimit.from_pack(PACK)
    assert ccd is not None and ccd.plating_area_cm2 == pytest.approx(AREA_CM2)
    # On the breakpoints: the table itself (ssb-23: 25 C row 0.5, 2, 6, 10, 12 mA/cm2).
    assert ccd.ccd_ma_cm2(1000.0, 25.0) == pytest.approx(10.0)
    assert ccd.limit_a(1000.0, 25.0) == pytest.approx(0.8 * 10.0 * 1.43)  # 11.44 A
    assert ccd.ccd_ma_cm2(400.0, 0.0) == pytest.approx(0.2)
    assert ccd.ccd_ma_cm2(1500.0, 45.0) == pytest.approx(16.8)
    # In pressure: 900 kPa at 25 C is halfway between 6 (800) and 10 (1000) -> 8 mA/cm2.
    assert ccd.ccd_ma_cm2(900.0, 25.0) == pytest.approx(8.0)
    # In temperature: 35 C at 1000 kPa, halfway between 10 (25 C) and 14 (45 C) -> 12.
    assert ccd.ccd_ma_cm2(1000.0, 35.0) == pytest.approx(12.0)
    # Both: 700 kPa, 12.5 C. 0 C row: 0.8 + 0.5 (2.4 - 0.8) = 1.6; 25 C row: 2 + 0.5 (6 - 2)
    # = 4; halfway in temperature: 2.8 mA/cm2 -> 0.8 x 2.8 x 1.43 = 3.2032 A.
    assert ccd.ccd_ma_cm2(700.0, 12.5) == pytest.approx(2.8)
    assert ccd.limit_a(700.0, 12.5) == pytest.approx(3.2032)
    # Where 2C (10 A) starts to bind at 25 C: CCD = 10 / (0.8 x 1.43) = 8.741 mA/cm2, i.e.
    # 800 + 200 (8.741 - 6) / 4 = 937.1 kPa.
    p_bind = 800.0 + 200.0 * (10.0 / (0.8 * 1.43) - 6.0) / 4.0
    assert ccd.limit_a(p_bind, 25.0) == pytest.approx(10.0)


def test_ends_held_above_zero_below() -> None:
    ccd = CcdLimit.from_pack(PACK)
    # Above the highest pressure / temperature: the edge value holds (a lower bound).
    assert ccd.ccd_ma_cm2(5000.0, 25.0) == pytest.approx(12.0)
    assert ccd.ccd_ma_cm2(1000.0, 80.0) == pytest.approx(14.0)
    assert ccd.ccd_ma_cm2(9000.0, 90.0) == pytest.approx(16.8)
    # Below the lowest pressure or temperature the CCD is unknown and lower: no charging.
    assert ccd.ccd_ma_cm2(400.0, 25.0) == pytest.approx(0.5)
    assert ccd.ccd_ma_cm2(399.9, 25.0) == 0.0
    assert ccd.limit_a(0.0, 25.0) == 0.0
    assert ccd.ccd_ma_cm2(1000.0, 0.0) == pytest.approx(4.0)
    assert ccd.ccd_ma_cm2(1000.0, -0.1) == 0.0
    # Unknown (NaN) pressure or temperature: the same, 0 A.
    assert ccd.limit_a(math.nan, 25.0) == 0.0
    assert ccd.limit_a(1000.0, math.nan) == 0.0


def test_one_point_axes(tmp_path: Path) -> None:
    def edit(d):
        d["charging"].update(ccd_pressure_kpa=[800.0], ccd_temperature_c=[20.0],
                             ccd_ma_cm2=[[3.0]])
    ccd = CcdLimit.from_pack(_pack_variant(tmp_path, edit))
    assert ccd.ccd_ma_cm2(800.0, 20.0) == 3.0 and ccd.ccd_ma_cm2(2000.0, 60.0) == 3.0
    assert ccd.ccd_ma_cm2(799.0, 20.0) == 0.0 and ccd.ccd_ma_cm2(800.0, 19.0) == 0.0


def test_no_charging_section_or_no_plating_area_means_no_limit(tmp_path: Path) -> None:
    assert CcdLimit.from_pack(_pack_variant(tmp_path, lambda d: d.pop("charging"))) is None

    def no_area(d):  # a cell without the solid-state description (no unit_layers/area)
        for key in ("unit_layers", "electrode_area_cm2", "areal_capacity_mah_cm2",
                    "thickness_um", "lithium_um_per_mah_cm2", "cathode_um_per_layer_full"):
            d["cell"].pop(key)
    pack = _pack_variant(tmp_path, no_area)
    assert pack.charging is not None and pack.cell.plating_area_cm2 is None
    assert CcdLimit.from_pack(pack) is None


def test_bms_check_says_what_the_limit_does(tmp_path: Path, capsys) -> None:
    assert check_main(["--pack", "ssb-23"]) == 0
    out = capsys.readouterr().out
    # the 25 C row at the table's pressures, as CcdLimit evaluates it
    ccd = CcdLimit.from_pack(PACK)
    shown = ", ".join(f"{p:g} kPa {ccd.limit_a(p, 25.0):.1f} A" for p in ccd.pressure_kpa)
    assert f"charging  CCD limit at 25 C (1430 cm2, margin 0.8): {shown}" in out
    # without load cells the pressure is never known: 0 A, and bms check says so
    pack = _pack_variant(tmp_path, lambda d: d["fixture"].update(load_cells_xy_mm=[]))
    with pytest.raises(ConfigError, match="4 load-cell channels"):  # emu-23 has them
        check_main(["--pack", str(pack.path)])
    assert "no load cells measure the stack pressure: charge limit 0 A" in \
        capsys.readouterr().out
    assert CcdLimit.from_pack(pack).limit_a(*stack_conditions(np.empty(0),
                                                              np.full(6, 25.0))) == 0.0


def test_stack_conditions_lowest_load_cell_and_coldest_thermistor() -> None:
    p = np.array([1210.0, np.nan, 1150.0, 1190.0])
    t = np.array([26.0, 24.5, np.nan, 25.0, 27.0, 25.5])
    assert stack_conditions(p, t) == (1150.0, 24.5)
    assert all(math.isnan(v) for v in stack_conditions(np.full(4, np.nan), np.full(6, np.nan)))
    assert math.isnan(stack_conditions(np.empty(0), t)[0])  # a stack without load cells


def test_watch_events_debounced_with_hysteresis_and_unknown_once() -> None:
    w = CcdWatch(0, debounce_s=1.0, hysteresis_a=0.5)
    ev = []
    # 10 Hz ticks: CCD limit 12 A for 1 s, 9.9 A for 0.5 s (too short), 11 A, then 9 A.
    limits = [12.0] * 10 + [9.9] * 5 + [11.0] * 5 + [9.0] * 30 + [10.3] * 20 + [10.6] * 20
    for k, lim in enumerate(limits):
        ev += [(round(k * 0.1, 1), e["event"]) for e in w.update(k * 0.1, lim, 10.0, 900.0,
                                                                  25.0)]
    # binding after 1 s of 9 A (from 2.0 s); 10.3 A is inside the 0.5 A hysteresis: still
    # binding; released after 1 s of 10.6 A (from 7.0 s).
    assert ev == [(3.0, "ccd limit binding"), (8.0, "ccd limit released")]
    # Unknown pressure: one event for the run, however long it lasts or often it comes back.
    w2 = CcdWatch(1, debounce_s=1.0, hysteresis_a=0.5)
    got = []
    for k in range(50):
        p = math.nan if k % 7 < 4 else 900.0
        got += w2.update(k * 0.1, 0.0, 10.0, p, 25.0)
    unknown = [e for e in got if e["event"] == "ccd pressure unknown"]
    assert len(unknown) == 1 and unknown[0]["stack"] == 1 and unknown[0]["time_s"] == 0.0


def test_held_limit_follows_rises_at_once_and_falls_after_the_window() -> None:
    h = HeldLimit(5.0)
    assert h.update(0.0, 10.0) == 10.0
    assert h.update(1.0, 6.0) == 10.0      # lowered: the old value holds for 5 s
    assert h.update(4.9, 7.0) == 10.0
    assert h.update(5.1, 7.0) == 7.0       # 10 A is older than 5 s; 7 A (4.9 s) is the max
    assert h.update(6.0, 12.0) == 12.0     # a rise at once
    assert h.update(10.9, 3.0) == 12.0     # 12 A (6.0 s) is within the window
    assert h.update(11.1, 3.0) == 3.0


# ---------------------------------------------------------------------- end to end

SCENARIO = REPO / "hil/scenarios/ccd-derate.yaml"
PRESSURE_CODES = {FaultCode.STACK_PRESSURE_LOW, FaultCode.STACK_PRESSURE_HIGH,
                  FaultCode.STACK_PRESSURE_RATE, FaultCode.STACK_PRESSURE_RESIDUAL,
                  FaultCode.LOAD_CELL_IMBALANCE, FaultCode.PRESSURE_SIGNAL_INVALID}


def test_pressure_loss_derates_charging_before_any_pressure_fault(tmp_path: Path) -> None:
    """ccd-derate.yaml: 2C charge at 25 C, the fixture loses 15 kPa/s from 60 s. The charge
    limit sent to the board falls below the SOF limit (10 A) with the lowest load cell's
    pressure before the first pressure warning and before the first pressure fault, and the
    plant's current (its own truth) follows it; no over-current record on the way."""
    seed = 1
    truth = tmp_path / "truth.csv"
    emu = start_emulator(PACK, 0, "sim", seed, scenario=str(SCENARIO), truth_path=truth)
    try:
        c = Controller(PACK, [emu.path], clock="sim", log_dir=tmp_path / "log")
        c.open()
        c.request_close()
        c.run(110.0)
        c.close()
    finally:
        emu.stop()
    tk, events = load_ticks(tmp_path / "log"), load_events(tmp_path / "log")
    t, limit, ccd = tk["time_s"], tk["charge_limit_a"], tk["ccd_limit_a"]
    sof_max = PACK.power_limits.max_charge_current_a
    # Before the loss the CCD limit is above the SOF limit (~12.2 A at ~1130 kPa): 10 A sent.
    before = (t > 20.0) & (t < 60.0)
    assert np.all(ccd[before] > 11.5) and np.all(limit[before] == sof_max)
    # The derate: the first tick where the CCD limit is the (lower) charge limit.
    derating = (ccd < sof_max - 0.05) & (limit == ccd)
    assert derating.any(), "the CCD limit never bound"
    t_derate = float(t[np.argmax(derating)])
    pressure_records = [e for e in events if e.get("type") == "fault"
                        and e.get("event") == "raise" and e["code"] in PRESSURE_CODES]
    assert pressure_records, "the pressure loss must end in a pressure fault"
    t_warn = min(e["time_s"] for e in pressure_records)
    t_fault = min(e["time_s"] for e in pressure_records if e["severity"] != "warning")
    lim_at = {name: float(limit[np.searchsorted(t, ts)])
              for name, ts in (("warning", t_warn), ("fault", t_fault))}
    print(f"\nccd-derate: derate from {t_derate:.1f} s (lowest load cell "
          f"{_lowest_lc(tk, t_derate):.0f} kPa); first pressure warning {t_warn:.1f} s, first "
          f"pressure fault {t_fault:.1f} s; charge limit at them {lim_at['warning']:.2f} A / "
          f"{lim_at['fault']:.2f} A")
    assert t_derate < t_warn < t_fault or t_derate < t_warn == t_fault
    assert t_derate + 2.0 <= t_warn, "the derate must lead the first pressure warning"
    assert lim_at["fault"] < 8.5, "the limit must have fallen well below 10 A by the fault"
    # The logged CCD limit is the table at the logged lowest load cell and coldest thermistor.
    table = CcdLimit.from_pack(PACK)
    lc = np.column_stack([tk[c] for c in tk if c.startswith("pressure_lc")])
    th = np.column_stack([tk[c] for c in tk if c.startswith("t") and c.endswith("_c")])
    rows = slice(10, None)  # after the first data
    expect = [table.limit_a(p, temp) for p, temp in zip(lc[rows].min(axis=1),
                                                         th[rows].min(axis=1), strict=True)]
    # ticks.csv holds 10 Pa and 1 mK: 0.023 A/kPa x 0.005 kPa, plus the column's 0.1 mA
    assert np.allclose(ccd[rows], expect, atol=1e-3)
    # The limit followed the pressure down (within the load cells' 1 kPa noise, ~0.03 A).
    falling = (t >= t_derate) & (t <= t_fault)
    assert np.all(np.diff(limit[falling]) < 0.15) and limit[falling][-1] < limit[falling][0] - 1
    # The binding event, debounced by 1 s (bms/tuning.py CCD_EVENT_DEBOUNCE_S), only once.
    binding = [e for e in events if e.get("event") == "ccd limit binding"]
    assert len(binding) == 1 and binding[0]["time_s"] == pytest.approx(t_derate + 1.0, abs=0.15)
    # The plant's own current (truth) follows the lowered limit: the limits reach the board in
    # LIMIT_RESEND_A (0.5 A) steps, one tick later in the pipelined sim clock.
    tr = np.genfromtxt(truth, delimiter=",", names=True)
    for ts in np.arange(t_derate + 1.0, t_fault - 0.5, 0.5):
        i_plant = float(np.interp(ts, tr["t_s"], tr["current_a"]))
        lim = float(np.interp(ts - 0.2, t, limit))
        assert i_plant <= lim + 0.5 + 0.05, (ts, i_plant, lim)
    i_before_fault = float(np.interp(t_fault - 0.2, tr["t_s"], tr["current_a"]))
    assert i_before_fault < 9.0, "the charger must have slowed down before the fault"
    # The over-current levels follow the CCD limit 5 s late: no over-current record.
    assert not [e for e in events if e.get("type") == "fault" and
                e.get("code") == FaultCode.CHARGE_OVERCURRENT]
    print(f"ccd-derate: plant current {i_before_fault:.2f} A just before the first fault")


def _lowest_lc(tk: dict[str, np.ndarray], ts: float) -> float:
    k = int(np.searchsorted(tk["time_s"], ts))
    return min(float(tk[c][k]) for c in tk if c.startswith("pressure_lc"))


def test_lost_load_cells_block_charging_with_one_event(tmp_path: Path) -> None:
    """Through the controller: one load cell open -> the CCD limit uses the other three; all
    four open -> pressure unknown, CCD limit 0 A (with PRESSURE_SIGNAL_INVALID), one event."""
    with Bench(PACK, tmp_path / "log") as b:
        c, s = b.c, b.c.stacks[0]
        b.close_contactors()
        b.run_for(1.0)
        assert s.ccd_limit_a > 11.0  # ~1230 kPa at 50 % SOC, 25 C: above the SOF limit
        b.inject(Inject.LOADCELL_OPEN, 0)
        b.run_for(1.0)
        p = s.data.pressure_kpa
        assert math.isnan(p[0]) and s.ccd_pressure_kpa == float(np.nanmin(p))
        assert s.ccd_limit_a == pytest.approx(CcdLimit.from_pack(PACK).limit_a(
            s.ccd_pressure_kpa, s.ccd_temperature_c))
        for j in (1, 2, 3):
            b.inject(Inject.LOADCELL_OPEN, j)
        b.run_for(2.0)
        assert math.isnan(s.ccd_pressure_kpa) and s.ccd_limit_a == 0.0
        assert c.table.get(FaultCode.PRESSURE_SIGNAL_INVALID, stack=0) is not None
    tk, events = load_ticks(tmp_path / "log"), load_events(tmp_path / "log")
    assert tk["ccd_limit_a"][-1] == 0.0 and tk["charge_limit_a"][-1] == 0.0
    unknown = [e for e in events if e.get("event") == "ccd pressure unknown"]
    assert len(unknown) == 1 and unknown[0]["ccd_limit_a"] == 0.0
