"""Plant model (hil/emulator/plant.py), faults and scenarios, driven directly from Python."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from boards.config import load_board, load_pack
from hil.emulator.faults import FaultError, InjectedFault, PlantFaults
from hil.emulator.plant import CcCvCharge, ConstantCurrent, CurrentProfile, Plant, PlantParams
from hil.emulator.scenario import ScenarioError, ScenarioRunner, load_scenario
from hil.emulator.truth import TruthWriter, truth_header
from hil.scaling import Scaler

PACK = load_pack("ssb-23")
BOARD = load_board("emu-23")
SCALER = Scaler(BOARD)
N = 23


def make(seed: int = 1, soc: float = 0.5, temperature_c: float = 25.0, **params: float) -> Plant:
    p = PlantParams.load(**params) if params else None
    return Plant(PACK, 0, BOARD, seed=seed, params=p, initial_soc=soc,
                 temperature_c=temperature_c)


def closed(plant: Plant, charge_a: float = 10.0, discharge_a: float = 15.0,
           mask: int = 0) -> Plant:
    plant.set_outputs(contactor_pos=True, contactor_neg=True, balance_mask=mask,
                      charge_limit_a=charge_a, discharge_limit_a=discharge_a)
    return plant


def run(plant: Plant, seconds: float, dt_s: float = 1.0) -> None:
    for _ in range(int(round(seconds / dt_s))):
        plant.step(dt_s)


def readings(plant: Plant):
    from hil.protocol import Measurement

    c = plant.sensor_counts()
    m = Measurement(0, 0, c.current_raw, c.bus_voltage_raw, tuple(c.cell_raw),
                    tuple(c.thermistor_raw), tuple(c.load_cell_raw))
    return SCALER.readings(m), c


# --------------------------------------------------------------------------- basics


def test_defaults_file_has_every_parameter_and_rejects_unknown(tmp_path: Path) -> None:
    p = PlantParams.load()
    assert p.tau2_s == 600.0 and p.hysteresis_v == 0.010
    bad = tmp_path / "bad.yaml"
    bad.write_text("emulator: {capacity_spread: 0.01}\n")
    with pytest.raises(ValueError, match="missing"):
        PlantParams.load(bad)


def test_same_seed_same_numbers_other_seed_other_cells() -> None:
    a, b, c = make(seed=7), make(seed=7), make(seed=8)
    for plant in (a, b, c):
        closed(plant).set_load(ConstantCurrent(-5.0))
        run(plant, 60.0, 0.1)
    assert a.sensor_counts() == b.sensor_counts()
    np.testing.assert_array_equal(a.truth().soc, b.truth().soc)
    assert not np.array_equal(a.capacity_ah, c.capacity_ah)
    # the spread is real but small: 1 % sigma around the pack's 5 Ah
    assert 0.0 < np.std(a.capacity_ah) / 5.0 < 0.03


def test_rest_keeps_soc_and_reads_ocv() -> None:
    plant = make(soc=0.5)
    soc0 = plant.truth().soc.copy()
    run(plant, 600.0)
    t = plant.truth()
    assert t.current_a == 0.0
    # only self-discharge (~0.1 mA): 600 s x 0.14 mA / 5 Ah ~ 5e-6
    assert np.all(np.abs(t.soc - soc0) < 1e-4)
    r, _ = readings(plant)
    np.testing.assert_allclose(r.cell_voltage_v, t.ocv_v, atol=0.003)
    np.testing.assert_allclose(r.temperature_c, 25.0, atol=0.6)


def test_constant_discharge_counts_coulombs_drops_voltage_and_pressure() -> None:
    plant = closed(make(soc=0.8))
    p0 = plant.truth().pressure_kpa
    plant.set_load(ConstantCurrent(-5.0))
    soc0 = plant.truth().soc.copy()
    run(plant, 1800.0, 0.5)
    t = plant.truth()
    # the load's 5 A plus ~8 mA into the bus discharge resistor (85 V / 10 kOhm)
    assert t.current_a == pytest.approx(-5.0 - t.bus_voltage_v / 10e3, abs=1e-6)
    # coulomb count per cell at its own capacity (self-discharge is ~1e-4 of that)
    expected = soc0 + t.current_a * 1800.0 / (t.capacity_ah * 3600.0)
    np.testing.assert_allclose(t.soc, expected, atol=2e-4)
    assert np.all(t.cell_voltage_v < t.ocv_v - 0.03)      # IR + RC drops under 1C
    assert t.temperature_c.max() > 25.5                    # Joule heat
    # lithium stripping shrinks the stack: ~455 kPa per full SOC swing for this fixture's
    # linear stiffness, x (1 + 2 s mean(SOC)) = 1.165 for the 15 % stiffening over 0.8..0.3
    assert p0 - t.pressure_kpa == pytest.approx(455.0 * 0.5 * 1.165, rel=0.08)
    r, c = readings(plant)
    assert r.current_a == pytest.approx(-5.0, abs=0.05)
    assert np.all(np.abs(r.pressure_kpa - t.pressure_kpa) < 0.05 * t.pressure_kpa)


def test_open_contactors_stop_the_current() -> None:
    plant = make()
    plant.set_load(ConstantCurrent(-5.0))
    run(plant, 10.0)
    assert plant.truth().current_a == 0.0
    closed(plant)
    run(plant, 1.0)
    assert plant.truth().current_a == pytest.approx(-5.0, abs=0.01)
    plant.open_all()
    run(plant, 1.0)
    assert plant.truth().current_a == 0.0


def test_load_obeys_limits_and_forced_current_does_not() -> None:
    plant = closed(make(), discharge_a=2.0)
    plant.set_load(ConstantCurrent(-5.0))
    run(plant, 1.0)
    assert plant.truth().current_a == pytest.approx(-2.0, abs=0.01)
    plant.inject_fault(InjectedFault.LOAD_CURRENT, value=30.0)
    run(plant, 1.0)
    assert plant.truth().current_a == pytest.approx(30.0, abs=0.01)


def test_cccv_respects_charge_limit_holds_cv_and_terminates() -> None:
    plant = closed(make(soc=0.85), charge_a=3.0)
    load = CcCvCharge(current_a=5.0, cv_cell_v=4.2, cutoff_a=0.25)
    plant.set_load(load)
    run(plant, 10.0)
    assert plant.truth().current_a == pytest.approx(3.0, abs=0.01)   # limited by SET_OUTPUTS
    steps = 0
    vmax = 0.0
    while not load.done and steps < 20000:
        plant.step(1.0)
        vmax = max(vmax, float(plant.truth().cell_voltage_v.max()))
        steps += 1
    assert load.done
    assert vmax <= 4.2 + 1e-6
    assert plant.truth().soc.max() > 0.95
    run(plant, 5.0)
    assert plant.truth().current_a == pytest.approx(0.0, abs=0.02)  # bus discharge resistor


def test_drive_cycle_csv_profile() -> None:
    csv = Path(__file__).resolve().parent.parent / "hil" / "scenarios" / "udds-current.csv"
    prof = CurrentProfile.from_csv(csv)
    assert prof.current_a.min() == pytest.approx(-12.5, abs=0.01)   # 2.5 C peak discharge
    assert 0.0 < prof.current_a.max() < 10.0                         # regen below the limit
    plant = closed(make(soc=0.9))
    plant.set_load(prof)
    run(plant, prof.duration_s + 2.0)
    assert prof.done
    assert plant.truth().soc.mean() < 0.9 - 0.05


def test_precharge_rc_and_precharge_fail() -> None:
    plant = make(soc=0.5)
    v_stack = plant.truth().stack_voltage_v
    plant.set_outputs(contactor_neg=True, precharge=True)
    run(plant, 0.2, 0.01)  # one time constant: 100 Ohm x 2 mF
    assert plant.truth().bus_voltage_v == pytest.approx(v_stack * (1 - math.exp(-1)), rel=0.02)
    assert plant.truth().current_a < 0                 # the precharge current leaves the stack
    run(plant, 0.8, 0.01)
    assert plant.truth().bus_voltage_v > 0.95 * v_stack
    plant.set_outputs(contactor_pos=True, contactor_neg=True)
    plant.step(0.01)
    assert plant.truth().bus_voltage_v == pytest.approx(plant.truth().stack_voltage_v, abs=0.05)

    failing = make(soc=0.5)
    failing.inject_fault(InjectedFault.PRECHARGE_FAIL)
    failing.set_outputs(contactor_neg=True, precharge=True)
    run(failing, 2.0, 0.01)
    assert failing.truth().bus_voltage_v < 0.02 * v_stack


def test_balancing_bleeds_only_selected_cells() -> None:
    plant = make(soc=0.8)
    plant.set_outputs(balance_mask=(1 << 3) | (1 << 17))
    soc0 = plant.truth().soc.copy()
    run(plant, 3600.0, 5.0)
    drop = soc0 - plant.truth().soc
    # 33 Ohm across ~3.9 V: ~0.12 A for an hour ~ 2.4 % of 5 Ah
    assert drop[3] == pytest.approx(0.118 / 5.0, rel=0.15)
    assert drop[17] == pytest.approx(drop[3], rel=0.05)
    others = np.delete(drop, [3, 17])
    assert np.all(others < 1e-3)


def test_second_rc_branch_and_hysteresis_relax_slowly() -> None:
    """Richer than a one-RC estimator: after a discharge the voltage still recovers minutes
    later (tau2 = 600 s), and the rest voltage sits below OCV by the hysteresis."""
    plant = closed(make(soc=0.7))
    plant.set_load(ConstantCurrent(-5.0))
    run(plant, 900.0)
    plant.open_all()
    run(plant, 120.0)   # R1C1 (~25 s) has relaxed, R2C2 has not
    v_2min = plant.truth().cell_voltage_v.mean()
    run(plant, 1800.0)
    t = plant.truth()
    assert t.cell_voltage_v.mean() - v_2min > 0.003
    np.testing.assert_allclose(t.hysteresis_v, -0.010, atol=0.001)
    assert np.all(t.cell_voltage_v < t.ocv_v)


def test_cold_cells_have_higher_resistance() -> None:
    warm, cold = closed(make(temperature_c=25.0)), closed(make(temperature_c=0.0))
    for plant in (warm, cold):
        plant.set_ambient(plant.truth().temperature_c[0])
        plant.set_load(ConstantCurrent(-5.0))
        plant.step(0.1)
    r_warm = warm.truth().series_resistance_ohm.mean()
    r_cold = cold.truth().series_resistance_ohm.mean()
    # Arrhenius with 0.30 eV from 25 C to 0 C: x 2.8 on R0 (contact part is constant)
    assert 2.0 < r_cold / r_warm < 3.0


# --------------------------------------------------------------------------- faults


def _fault_plant(soc: float = 0.6) -> Plant:
    plant = closed(make(soc=soc))
    plant.set_load(ConstantCurrent(-5.0))
    run(plant, 10.0)
    return plant


def test_soft_short_drains_and_warms_one_cell() -> None:
    plant = _fault_plant()
    plant.open_all()
    soc0 = plant.truth().soc.copy()
    plant.inject_fault(InjectedFault.CELL_SOFT_SHORT, 7, 10.0)
    run(plant, 1800.0, 2.0)
    t = plant.truth()
    drop = soc0 - t.soc
    assert drop[7] == pytest.approx(3.7 / 10.0 * 1800.0 / (t.capacity_ah[7] * 3600), rel=0.1)
    assert t.leak_current_a[7] > 0.3
    assert t.temperature_c[7] > t.temperature_c[0] + 0.3
    r, _ = readings(plant)
    others = np.delete(r.cell_voltage_v, 7)
    assert r.cell_voltage_v[7] < others.min() - 0.005


def test_contact_loss_raises_resistance_drops_pressure_and_tilts() -> None:
    plant = _fault_plant()
    r0 = plant.truth().series_resistance_ohm[4]
    p0 = plant.truth().pressure_kpa
    plant.inject_fault(InjectedFault.CELL_CONTACT_LOSS, 4, 0.5)
    plant.step(0.1)
    t = plant.truth()
    assert t.series_resistance_ohm[4] > 1.5 * r0
    assert p0 - t.pressure_kpa > 15.0
    r, _ = readings(plant)
    assert r.pressure_kpa.max() - r.pressure_kpa.min() > 80.0  # load-cell imbalance
    assert r.cell_voltage_v[4] < np.delete(r.cell_voltage_v, 4).min()


def test_gas_swelling_ramps_pressure_and_clear_stops_the_ramp() -> None:
    plant = _fault_plant()
    plant.open_all()
    p0 = plant.truth().pressure_kpa
    plant.inject_fault(InjectedFault.GAS_SWELLING, value=5.0)
    run(plant, 20.0)
    assert plant.truth().pressure_kpa - p0 == pytest.approx(100.0, rel=0.05)
    plant.inject_fault(InjectedFault.GAS_SWELLING, clear=True)
    p1 = plant.truth().pressure_kpa
    run(plant, 20.0)
    assert abs(plant.truth().pressure_kpa - p1) < 2.0   # the gas stays, the ramp stops


def test_load_cell_faults() -> None:
    plant = _fault_plant()
    plant.inject_fault(InjectedFault.LOADCELL_STUCK, 1)
    _, c0 = readings(plant)
    plant.inject_fault(InjectedFault.LOADCELL_OFFSET, 2, 50.0)
    plant.inject_fault(InjectedFault.LOADCELL_OPEN, 3)
    run(plant, 300.0)
    r, c = readings(plant)
    assert c.load_cell_raw[1] == c0.load_cell_raw[1]                   # stuck
    assert r.pressure_kpa[2] - r.pressure_kpa[0] > 30.0                # offset
    assert math.isnan(r.pressure_kpa[3]) and c.sensor_error            # open
    plant.inject_fault(InjectedFault.CLEAR_ALL)
    r, c = readings(plant)
    assert not c.sensor_error and np.all(np.isfinite(r.pressure_kpa))


def test_vtap_open_wire_moves_voltage_to_the_neighbour() -> None:
    plant = _fault_plant()
    plant.inject_fault(InjectedFault.VTAP_OPEN, 10)
    run(plant, 20.0)
    r, _ = readings(plant)
    t = plant.truth()
    assert r.cell_voltage_v[10] < 0.1
    # the neighbour sees both cells (~7.6 V) and saturates the 16-bit channel at 6.5534 V
    assert t.cell_voltage_v[10] + t.cell_voltage_v[11] > 6.6
    assert r.cell_voltage_v[11] == pytest.approx(6.5534)
    np.testing.assert_allclose(np.delete(r.cell_voltage_v, [10, 11]),
                               np.delete(t.cell_voltage_v, [10, 11]), atol=0.003)


def test_thermistor_open_and_short() -> None:
    plant = _fault_plant()
    plant.inject_fault(InjectedFault.THERMISTOR_OPEN, 2)
    plant.inject_fault(InjectedFault.THERMISTOR_SHORT, 4)
    r, c = readings(plant)
    assert c.thermistor_raw[2] == 30000 and c.thermistor_raw[4] == 0
    assert math.isnan(r.temperature_c[2]) and math.isnan(r.temperature_c[4])
    assert np.all(np.isfinite(np.delete(r.temperature_c, [2, 4])))


def test_current_offset_shows_in_the_reading_not_the_truth() -> None:
    plant = _fault_plant()
    plant.inject_fault(InjectedFault.CURRENT_OFFSET, value=0.8)
    r, _ = readings(plant)
    assert r.current_a == pytest.approx(-4.2, abs=0.05)
    assert plant.truth().current_a == pytest.approx(-5.0, abs=0.01)


def test_coolant_loss_heats_the_stack() -> None:
    cooled, lost = _fault_plant(), _fault_plant()
    lost.inject_fault(InjectedFault.COOLANT_LOSS)
    for plant in (cooled, lost):
        plant.set_load(ConstantCurrent(-10.0))
        run(plant, 1200.0, 2.0)
    assert lost.truth().temperature_c.mean() > cooled.truth().temperature_c.mean() + 1.5
    assert lost.truth().coolant_temperature_c > 26.0


def test_ambient_and_cell_heat() -> None:
    plant = _fault_plant()
    plant.open_all()
    plant.inject_fault(InjectedFault.AMBIENT_TEMP, value=40.0)
    plant.inject_fault(InjectedFault.CELL_HEAT, 12, 5.0)
    run(plant, 1800.0, 5.0)
    t = plant.truth()
    assert t.coolant_temperature_c > 39.0
    assert t.temperature_c[12] > np.delete(t.temperature_c, 12).max() + 0.5
    r, _ = readings(plant)
    assert np.all(r.temperature_c > 38.0)


def test_bad_fault_targets_and_values_are_rejected() -> None:
    plant = make()
    with pytest.raises(FaultError):
        plant.inject_fault(InjectedFault.CELL_SOFT_SHORT, 23, 10.0)
    with pytest.raises(FaultError):
        plant.inject_fault(InjectedFault.CELL_SOFT_SHORT, 0, float("nan"))
    with pytest.raises(FaultError):
        plant.inject_fault(InjectedFault.LINK_DROP, value=0.5)   # the board's business
    f = PlantFaults(3, 1, 1)
    with pytest.raises(FaultError):
        f.apply(InjectedFault.THERMISTOR_OPEN, 1, 0.0, False, 0.0)


# --------------------------------------------------------------------------- scenarios, truth


def test_shipped_scenarios_load_and_run() -> None:
    sc = load_scenario("soft-short")
    plant = closed(make(soc=sc.initial_soc or 0.5))
    runner = ScenarioRunner(sc, plant)
    while plant.t_s < 700.0:
        runner.advance()
        plant.step(1.0)
    t = plant.truth()
    assert plant.faults.soft_short_ohm[7] == 10.0 and plant.faults.coolant_lost
    assert t.current_a == pytest.approx(-5.0, abs=0.01)
    for name in ("udds", "cccv", "faults-tour"):
        assert load_scenario(name).segments


def test_scenario_errors_name_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("schema: ssb-bms/scenario/1\nsegments:\n  - {kind: walk, duration_s: 1}\n")
    with pytest.raises(ScenarioError, match=r"s\.yaml: segments\[0\]\.kind"):
        load_scenario(f)
    f.write_text("schema: ssb-bms/scenario/1\nsegments: [{kind: rest, duration_s: 1}]\n"
                 "faults: [{at_s: 1, fault: NOPE}]\n")
    with pytest.raises(ScenarioError, match=r"faults\[0\]\.fault"):
        load_scenario(f)


def test_truth_writer(tmp_path: Path) -> None:
    plant = _fault_plant()
    out = tmp_path / "truth.csv"
    with TruthWriter(out, N, 4, every=2) as tw:
        for _ in range(10):
            plant.step(0.1)
            tw.write(plant.truth())
    lines = out.read_text().splitlines()
    assert lines[0].split(",") == truth_header(N, 4)
    assert len(lines) == 1 + 5
    row = dict(zip(lines[0].split(","), lines[-1].split(","), strict=True))
    assert float(row["current_a"]) == pytest.approx(-5.0, abs=0.01)
    assert 0.0 < float(row["soc_0"]) < 1.0


def test_vtap_offset_moves_only_that_channel_not_the_cell() -> None:
    plant = make(seed=4)
    plant.step(0.1)
    before, _ = readings(plant)
    true_before = plant.truth().cell_voltage_v.copy()
    plant.inject_fault(InjectedFault.VTAP_OFFSET, 3, 0.5)
    plant.step(0.1)
    after, _ = readings(plant)
    shift = after.cell_voltage_v - before.cell_voltage_v
    assert shift[3] == pytest.approx(0.5, abs=0.003)           # monitor noise: 0.3 mV
    assert np.abs(np.delete(shift, 3)).max() < 0.003
    assert np.allclose(plant.truth().cell_voltage_v, true_before, atol=1e-3)  # the cell is fine
    with pytest.raises(FaultError):
        plant.inject_fault(InjectedFault.VTAP_OFFSET, 3, 9.0)
    plant.inject_fault(InjectedFault.VTAP_OFFSET, 3, clear=True)
    plant.step(0.1)
    cleared, _ = readings(plant)
    assert cleared.cell_voltage_v[3] == pytest.approx(before.cell_voltage_v[3], abs=0.003)


def test_contactor_weld_holds_the_contactor_closed_until_repaired() -> None:
    plant = make(seed=4)
    plant.inject_fault(InjectedFault.CONTACTOR_WELD, 0)           # POS welds at its next closing
    plant.set_outputs(contactor_pos=False, contactor_neg=True)
    assert not plant.outputs.contactor_pos                     # not closed yet: nothing fused
    plant.set_outputs(contactor_pos=True, contactor_neg=True, precharge=True)
    plant.set_outputs()                                        # open all
    assert plant.outputs.contactor_pos and not plant.outputs.contactor_neg
    assert not plant.outputs.precharge
    assert plant.commanded.contactor_pos is False              # what was asked stays known
    with pytest.raises(FaultError):
        plant.inject_fault(InjectedFault.CONTACTOR_WELD, 2)
    plant.inject_fault(InjectedFault.CONTACTOR_WELD, 0, clear=True)  # repaired: the command holds
    assert not plant.outputs.contactor_pos
    plant.inject_fault(InjectedFault.CONTACTOR_WELD, 1)
    plant.set_outputs(contactor_neg=True)
    plant.inject_fault(InjectedFault.CLEAR_ALL)
    plant.set_outputs()
    assert not plant.outputs.contactor_neg


def _truth_vector(plant: Plant) -> np.ndarray:
    t = plant.truth()
    return np.concatenate([np.atleast_1d(np.asarray(v, dtype=float)).ravel()
                           for v in vars(t).values()])


def test_step_caches_follow_dt_outputs_faults_and_ambient() -> None:
    """The step caches per-dt constants, resistance factors and thermal matrices. A plant whose
    caches are dropped before every step must give bit-identical truth and counts to one that
    keeps them, through changes of dt, balancing, contact loss, a soft short, ambient and
    coolant (each of which must invalidate exactly what depends on it)."""
    cached, fresh = closed(make(seed=5, soc=0.6)), closed(make(seed=5, soc=0.6))
    for p in (cached, fresh):
        p.set_load(ConstantCurrent(-6.0))
    events = {
        3: lambda p: p.inject_fault(InjectedFault.CELL_CONTACT_LOSS, 4, 0.5),
        5: lambda p: closed(p, mask=0b1001),
        7: lambda p: p.inject_fault(InjectedFault.CELL_SOFT_SHORT, 9, 20.0),
        9: lambda p: p.set_ambient(40.0),
        11: lambda p: p.inject_fault(InjectedFault.COOLANT_LOSS),
        13: lambda p: p.inject_fault(InjectedFault.CLEAR_ALL),
    }
    r_before = None
    for i, dt_s in enumerate([0.1, 0.1, 0.25, 0.1, 1.0, 0.1, 0.1, 0.5, 0.1, 0.1, 0.1, 0.2, 0.1,
                              0.1, 0.1]):
        if i in events:
            events[i](cached)
            events[i](fresh)
        if i == 3:
            r_before = cached.truth().series_resistance_ohm
        cached.step(dt_s)
        fresh._dt_consts = (math.nan, *fresh._dt_consts[1:])
        fresh._thermal._cache.clear()
        fresh.step(dt_s)
        if i == 3:
            # contact loss acts on the very next step: cell 4's ohmic part doubles
            r_after = cached.truth().series_resistance_ohm
            assert r_after[4] > 1.5 * r_before[4]
            assert abs(r_after[5] / r_before[5] - 1.0) < 0.05
        np.testing.assert_array_equal(_truth_vector(cached), _truth_vector(fresh))
        assert cached.sensor_counts() == fresh.sensor_counts()
