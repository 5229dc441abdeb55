"""Protections: debounce timing, hysteresis, NaN, pack rules; against a scalar reference."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bms.faults import PROTECTION_CODES, FaultCode, FaultTable, Severity
from bms.protections import (
    INVALID,
    LEVELS,
    PackProtections,
    ProtectionEngine,
    ProtectionInputs,
)
from boards.config import PROTECTION_NAMES, ProtectionLimit, load_pack

PACK = load_pack("ssb-23")
PACK4 = load_pack("ssb-4x23")
OV = PACK.protections["cell_overvoltage_v"]
UV = PACK.protections["cell_undervoltage_v"]


def _run(engine: ProtectionEngine, name: str, times, values):
    out = []
    for t, v in zip(times, values, strict=True):
        out += engine.update(t, {name: np.atleast_1d(v)})
    return out


@pytest.mark.parametrize("name", PROTECTION_NAMES)
@pytest.mark.parametrize("dt", [0.1, 0.01])
def test_each_level_asserts_on_first_tick_with_elapsed_ge_debounce(name: str, dt: float) -> None:
    """Step past the critical level just after a tick: every level asserts on the first tick
    where elapsed >= debounce_s, i.e. latency from the step <= debounce_s + dt."""
    lim = PACK.protections[name]
    sign = 1.0 if lim.direction == "above" else -1.0
    normal = lim.warning - sign * (lim.hysteresis + abs(lim.warning) * 0.1 + 1.0)
    bad = lim.critical + sign * (abs(lim.critical) * 0.05 + 0.1)
    eng = ProtectionEngine({name: lim}, {name: 3})
    step_s = 1.0 + 0.3 * dt  # lands between two ticks
    n = int(round((step_s + lim.debounce_s + 5 * dt) / dt)) + 2
    times = [k * dt for k in range(n)]
    seen = {}
    for t in times:
        v = np.array([normal, bad if t >= step_s else normal, normal])
        for tr in eng.update(t, {name: v}):
            assert tr.asserted and tr.channel == 1 and tr.level != INVALID
            seen[tr.level] = t
    first_past = min(t for t in times if t >= step_s)
    assert set(seen) == set(LEVELS)
    for level in LEVELS:
        expected = min(t for t in times if t - first_past >= lim.debounce_s - 1e-9)
        assert seen[level] == pytest.approx(expected)
        assert seen[level] - step_s <= lim.debounce_s + dt + 1e-9


def test_timer_restarts_when_value_dips_back() -> None:
    eng = ProtectionEngine({"ov": OV}, {"ov": 1})
    vals = [4.26, 4.26, 4.20, 4.26, 4.26, 4.26]  # dip at 0.2 s restarts the 0.2 s debounce
    tr = _run(eng, "ov", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], vals)
    assert [(t.level, t.time_s) for t in tr] == [("warning", 0.5), ("fault", 0.5)]


def test_debounce_zero_asserts_on_first_tick() -> None:
    lim = ProtectionLimit("x", "above", 1.0, 2.0, 3.0, 0.1, 0.0)
    eng = ProtectionEngine({"x": lim}, {"x": 1})
    assert [t.level for t in eng.update(0.0, {"x": 2.5})] == ["warning", "fault"]


def test_hysteresis_clear_above_and_below() -> None:
    eng = ProtectionEngine({"ov": OV, "uv": UV}, {"ov": 1, "uv": 1})
    t = 0.0
    for _ in range(3):
        eng.update(t, {"ov": 4.23, "uv": 2.95})
        t += 0.1
    assert eng.is_asserted("ov", "warning")[0] and eng.is_asserted("uv", "warning")[0]
    # Back under the threshold but inside the hysteresis band: still asserted.
    assert eng.update(t, {"ov": 4.20, "uv": 2.99}) == []
    t += 0.1
    assert eng.update(t, {"ov": OV.warning - OV.hysteresis, "uv": UV.warning + UV.hysteresis}) \
        == [], "exactly at threshold -/+ hysteresis is not yet past it"
    t += 0.1
    tr = eng.update(t, {"ov": 4.18, "uv": 3.06})
    assert sorted((x.name, x.level, x.asserted) for x in tr) == [
        ("ov", "warning", False), ("uv", "warning", False)]


def test_nan_freezes_state_and_reports_invalid() -> None:
    eng = ProtectionEngine({"ov": OV}, {"ov": 2})
    assert eng.update(0.0, {"ov": [4.26, 3.8]}) == []
    tr = eng.update(0.1, {"ov": [np.nan, 3.8]})
    assert [(t.level, t.channel, t.asserted) for t in tr] == [(INVALID, 0, True)]
    # Still NaN at 0.2 s: nothing asserts although the debounce time has passed.
    assert eng.update(0.2, {"ov": [np.nan, 3.8]}) == []
    # Valid and past again: the timer started at 0 s was frozen, not reset, so it asserts now;
    # the invalid flag clears in the same tick.
    tr = eng.update(0.3, {"ov": [4.26, 3.8]})
    assert sorted((t.level, t.asserted) for t in tr) == [
        ("fault", True), (INVALID, False), ("warning", True)]
    # NaN never clears an asserted level.
    eng.update(0.4, {"ov": [np.nan, 3.8]})
    assert eng.is_asserted("ov", "fault")[0]
    tr = eng.update(0.5, {"ov": [4.0, 3.8]})
    assert {(t.level, t.asserted) for t in tr} == {
        ("warning", False), ("fault", False), (INVALID, False)}


def test_missing_values_are_not_evaluated_and_not_invalid() -> None:
    eng = ProtectionEngine({"ov": OV, "uv": UV}, {"ov": 1, "uv": 1})
    eng.update(0.0, {"ov": 4.26, "uv": 3.5})
    assert eng.update(0.1, {"uv": 3.5}) == []
    assert [t.level for t in eng.update(0.2, {"ov": 4.26, "uv": 3.5})] == ["warning", "fault"]


def test_disabled_protection_resets_and_clears() -> None:
    eng = ProtectionEngine({"ov": OV}, {"ov": 1})
    for k in range(3):
        eng.update(k * 0.1, {"ov": 4.26})
    tr = eng.update(0.3, {"ov": 4.26}, enabled={"ov": False})
    assert {(t.level, t.asserted) for t in tr} == {("warning", False), ("fault", False)}
    assert eng.update(0.4, {"ov": 4.26}) == []  # timer restarts


# --------------------------------------------------------------------------- reference model


def _reference(lim: ProtectionLimit, times, values):
    """Plain per-level loop written from the spec, without numpy."""
    s = 1.0 if lim.direction == "above" else -1.0
    thr = [s * v for _, v in lim.level_thresholds()]
    start = [None] * 3
    on = [False] * 3
    out = []
    for t, v in zip(times, values, strict=True):
        if math.isnan(v):
            continue
        x = s * v
        for i in range(3):
            if x > thr[i]:
                if start[i] is None:
                    start[i] = t
                if not on[i] and t - start[i] >= lim.debounce_s - 1e-9:
                    on[i] = True
                    out.append((t, LEVELS[i], True))
            else:
                start[i] = None
                if on[i] and x < thr[i] - lim.hysteresis:
                    on[i] = False
                    out.append((t, LEVELS[i], False))
    return out


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(PROTECTION_NAMES),
    dt=st.sampled_from([0.01, 0.05, 0.1]),
    data=st.lists(st.one_of(st.floats(-0.3, 1.3), st.just(math.nan)), min_size=1,
                  max_size=120),
)
def test_engine_matches_reference(name: str, dt: float, data: list[float]) -> None:
    lim = PACK.protections[name]
    lo = min(lim.warning, lim.critical) - 2 * lim.hysteresis - 1.0
    hi = max(lim.warning, lim.critical) + 2 * lim.hysteresis + 1.0
    values = [lo + f * (hi - lo) if not math.isnan(f) else f for f in data]
    times = [k * dt for k in range(len(values))]
    eng = ProtectionEngine({name: lim}, {name: 1})
    got = [(t.time_s, t.level, t.asserted) for t in _run(eng, name, times, values)
           if t.level != INVALID]
    assert got == _reference(lim, times, values)


# --------------------------------------------------------------------------- pack rules


def _inputs(pack=PACK, **kw) -> ProtectionInputs:
    n, n_th, n_st = pack.n_cells, sum(len(s.thermistor_cell_positions) for s in pack.stacks), \
        len(pack.stacks)
    base = dict(
        cell_voltage_v=np.full(n, 3.8), temperature_c=np.full(n_th, 25.0), current_a=0.0,
        charge_limit_a=pack.power_limits.max_charge_current_a,
        discharge_limit_a=pack.power_limits.max_discharge_current_a,
        stack_pressure_kpa=np.full(n_st, 1200.0), pressure_rate_kpa_per_s=np.zeros(n_st),
        pressure_residual_kpa=np.zeros(n_st), load_cell_imbalance_kpa=np.zeros(n_st),
        cell_leak_a=np.zeros(n))
    base.update(kw)
    return ProtectionInputs(**base)


def _settle(pp: PackProtections, table: FaultTable, seconds: float, dt: float = 0.1,
            t0: float = 0.0, **kw):
    out = []
    for k in range(int(round(seconds / dt)) + 1):
        out += pp.step(t0 + k * dt, _inputs(pp.pack, **kw), table)
    return out


def test_nominal_pack_raises_nothing() -> None:
    pp, table = PackProtections(PACK4), FaultTable()
    assert _settle(pp, table, 20.0) == []
    assert table.records() == []


def test_temperature_limits_follow_current_sign() -> None:
    temps = np.full(6, 25.0)
    temps[2] = 52.0  # above the charge fault (50 C), below the discharge warning (55 C)
    pp, table = PackProtections(PACK), FaultTable()
    _settle(pp, table, 2.0, temperature_c=temps, current_a=-5.0)
    assert table.records() == [], "discharging: the discharge limits apply"
    tr = _settle(pp, table, 2.0, t0=3.0, temperature_c=temps, current_a=5.0)
    assert {(t.name, t.level) for t in tr if t.asserted} == {
        ("cell_overtemperature_charge_c", "warning"), ("cell_overtemperature_charge_c", "fault")}
    rec = table.get(FaultCode.CELL_OVERTEMPERATURE_CHARGE, Severity.FAULT, 0, 2)
    assert rec is not None and rec.latched and rec.trigger_value == 52.0
    # At rest the last mode (charge) holds: no chatter, the fault stays asserted.
    assert _settle(pp, table, 2.0, t0=6.0, temperature_c=temps, current_a=0.05) == []
    assert pp.charge_mode


def test_undertemperature_charge_blocks_cold_charging() -> None:
    pp, table = PackProtections(PACK), FaultTable()
    _settle(pp, table, 3.0, temperature_c=np.full(6, -2.0), current_a=1.0)
    assert table.get(FaultCode.CELL_UNDERTEMPERATURE_CHARGE, Severity.FAULT, 0, 0).latched
    assert table.get(FaultCode.CELL_UNDERTEMPERATURE_DISCHARGE, Severity.WARNING, 0, 0) is None


def test_overcurrent_fixed_levels_at_full_power() -> None:
    pp, table = PackProtections(PACK), FaultTable()
    _settle(pp, table, 1.0, current_a=11.5)  # over the charge warning (10.5), under fault (12)
    assert table.get(FaultCode.CHARGE_OVERCURRENT, Severity.WARNING) is not None
    assert not table.fault_latched()
    _settle(pp, table, 1.0, t0=2.0, current_a=-18.5)  # discharge fault is 18 A
    assert table.get(FaultCode.DISCHARGE_OVERCURRENT, Severity.FAULT).latched
    assert table.get(FaultCode.DISCHARGE_OVERCURRENT, Severity.CRITICAL) is None


def test_overcurrent_follows_dynamic_limit() -> None:
    # Core derates charge to 4 A: every level moves down by 6 A -> warning 4.5, fault 6, crit 9.
    pp, table = PackProtections(PACK), FaultTable()
    _settle(pp, table, 1.0, current_a=5.0, charge_limit_a=4.0)
    assert table.get(FaultCode.CHARGE_OVERCURRENT, Severity.WARNING) is not None
    assert table.get(FaultCode.CHARGE_OVERCURRENT, Severity.FAULT) is None
    _settle(pp, table, 1.0, t0=2.0, current_a=6.5, charge_limit_a=4.0)
    assert table.get(FaultCode.CHARGE_OVERCURRENT, Severity.FAULT).trigger_value == 6.5
    # A NaN dynamic limit leaves the fixed levels: 6.5 A is fine then, and the warning clears.
    pp2, table2 = PackProtections(PACK), FaultTable()
    assert _settle(pp2, table2, 1.0, current_a=6.5, charge_limit_a=math.nan) == []
    # A dynamic limit above the static maximum never raises the fixed levels.
    _settle(pp2, table2, 1.0, t0=2.0, current_a=12.5, charge_limit_a=50.0)
    assert table2.get(FaultCode.CHARGE_OVERCURRENT, Severity.FAULT) is not None


def test_stack_and_cell_indices_on_a_four_stack_pack() -> None:
    pp, table = PackProtections(PACK4), FaultTable()
    v = np.full(92, 3.8)
    v[50] = 2.6  # stack 2 (index), cell 4 within the stack, below critical 2.7
    press = np.array([1200.0, 1200.0, 1200.0, 550.0])
    _settle(pp, table, 1.5, cell_voltage_v=v, stack_pressure_kpa=press)
    rec = table.get(FaultCode.CELL_UNDERVOLTAGE, Severity.CRITICAL, 2, 4)
    assert rec is not None and rec.trigger_value == 2.6
    assert table.critical_latched()
    assert table.get(FaultCode.STACK_PRESSURE_LOW, Severity.FAULT, 3, None).latched
    # The value recovers: levels clear but fault and critical stay latched until reset.
    _settle(pp, table, 0.5, t0=2.0)
    assert not rec.active and rec.latched
    assert table.reset(3.0) is False  # critical needs a service reset
    assert table.reset(3.0, include_critical=True) is True


def test_nan_inputs_raise_sensor_faults_not_protections() -> None:
    pp, table = PackProtections(PACK), FaultTable()
    v = np.full(23, 3.8)
    v[7] = np.nan
    temps = np.full(6, 25.0)
    temps[1] = np.nan
    _settle(pp, table, 1.0, cell_voltage_v=v, temperature_c=temps, current_a=math.nan,
            cell_leak_a=np.full(23, np.nan))
    codes = {(r.code, r.stack, r.cell) for r in table.active()}
    assert (FaultCode.CELL_VOLTAGE_IMPLAUSIBLE, 0, 7) in codes
    assert (FaultCode.THERMISTOR_IMPLAUSIBLE, 0, 1) in codes
    assert (FaultCode.CURRENT_SENSOR, None, None) in codes
    assert (FaultCode.ESTIMATE_INVALID, 0, 22) in codes
    assert all(r.code >= 200 for r in table.records()), "NaN never asserts a protection"
    assert table.fault_latched()
    _settle(pp, table, 0.2, t0=2.0)
    assert table.active() == []
    assert table.reset(3.0) is True


def test_update_cost(benchmark) -> None:
    """Per-tick cost of all 14 protections on the 92-cell pack (measured, not asserted)."""
    pp = PackProtections(PACK4)
    inp = _inputs(PACK4)
    clock = itertools.count(0.0, 0.01)
    benchmark(lambda: pp.update(next(clock), inp))


# --------------------------------------------------------------------------- with the contactors

_FAULT_STEP = {
    "cell_overvoltage_v": (0.0, dict(cell_voltage_v=np.r_[np.full(22, 3.8), 4.27])),
    "cell_undervoltage_v": (0.0, dict(cell_voltage_v=np.r_[2.85, np.full(22, 3.8)])),
    "cell_overtemperature_charge_c": (1.0, dict(temperature_c=np.r_[52.0, np.full(5, 25.0)])),
    "cell_overtemperature_discharge_c": (-1.0,
                                         dict(temperature_c=np.r_[62.0, np.full(5, 25.0)])),
    "cell_undertemperature_charge_c": (1.0, dict(temperature_c=np.r_[-2.0, np.full(5, 25.0)])),
    "cell_undertemperature_discharge_c": (-1.0,
                                          dict(temperature_c=np.r_[-22.0, np.full(5, 25.0)])),
    "charge_overcurrent_a": (0.0, dict(current_a=12.5)),
    "discharge_overcurrent_a": (0.0, dict(current_a=-18.5)),
    "stack_pressure_low_kpa": (0.0, dict(stack_pressure_kpa=np.array([590.0]))),
    "stack_pressure_high_kpa": (0.0, dict(stack_pressure_kpa=np.array([2010.0]))),
    "stack_pressure_rate_kpa_per_s": (0.0, dict(pressure_rate_kpa_per_s=np.array([55.0]))),
    "stack_pressure_residual_kpa": (0.0, dict(pressure_residual_kpa=np.array([210.0]))),
    "load_cell_imbalance_kpa": (0.0, dict(load_cell_imbalance_kpa=np.array([160.0]))),
    "cell_leak_a": (0.0, dict(cell_leak_a=np.r_[np.zeros(22), 0.16])),
}


@pytest.mark.parametrize("name", PROTECTION_NAMES)
@pytest.mark.parametrize("dt", [0.1, 0.01])
def test_open_command_within_debounce_plus_two_ticks(name: str, dt: float) -> None:
    """Protections -> fault table -> contactor state machine, per tick as the controller will
    wire them: the all-open command comes at most debounce + 2 ticks after the injection."""
    from bms.contactors import ContactorInputs, ContactorState, ContactorStateMachine

    base_current, step = _FAULT_STEP[name]
    pp, table = PackProtections(PACK), FaultTable()
    sm = ContactorStateMachine(PACK.contactors)
    sm.request_close()
    t_inject = 2.0 + 0.5 * dt
    t_open = None
    for k in range(int((t_inject + PACK.protections[name].debounce_s + 1.0) / dt)):
        t = k * dt
        kw = {"current_a": base_current, **(step if t >= t_inject else {})}
        pp.step(t, _inputs(**kw), table)
        out = sm.update(t, ContactorInputs(86.0, 86.0 if k else 0.0, None,
                                           table.fault_latched(), table.critical_latched()))
        if t < t_inject:
            assert out.state == ContactorState.CLOSED or k < 3, (t, out.state)
        elif out.outputs == 0:
            t_open = t
            break
    assert t_open is not None
    assert t_open - t_inject <= PACK.protections[name].debounce_s + 2 * dt + 1e-9
    assert table.get(PROTECTION_CODES[name], Severity.FAULT, *(
        (0, 0) if name in ("cell_undervoltage_v",) or "temperature" in name else
        (0, 22) if name in ("cell_overvoltage_v", "cell_leak_a") else
        (None, None) if "overcurrent" in name else (0, None))).latched


def test_gathered_inputs_match_the_numpy_copies() -> None:
    """PackProtections copies its inputs into the engine with one C call (ssb_protect_gather)
    when every input is present as on the last tick; otherwise with numpy. Both paths over the
    same random 4-stack run, with inputs that vanish and come back, arrays that are replaced
    and arrays modified in place: identical engine values, flags and transitions every tick."""
    pack = load_pack("ssb-4x23")
    fast, slow = PackProtections(pack), PackProtections(pack)
    slow._bind_gather = lambda arrays: False  # type: ignore[method-assign]
    rng = np.random.default_rng(3)
    n_c, n_s = pack.n_cells, len(pack.stacks)
    n_t = sum(len(s.thermistor_cell_positions) for s in pack.stacks)
    bufs = {"cell_voltage_v": np.full(n_c, 3.7), "temperature_c": np.full(n_t, 25.0),
            "stack_pressure_kpa": np.full(n_s, 800.0), "pressure_rate_kpa_per_s": np.zeros(n_s),
            "pressure_residual_kpa": np.zeros(n_s), "load_cell_imbalance_kpa": np.zeros(n_s),
            "cell_leak_a": np.zeros(n_c)}
    gathered = 0
    for k in range(600):
        for name, arr in bufs.items():  # in place: the bound pointers stay valid
            arr += rng.normal(0.0, 0.02, len(arr)) * (50.0 if "kpa" in name else 1.0)
        bufs["cell_voltage_v"][rng.integers(n_c)] = rng.choice([3.7, 4.5, 2.0, np.nan])
        if k % 97 == 50:  # a new array object: rebound
            bufs["temperature_c"] = bufs["temperature_c"] + rng.normal(0.0, 30.0, n_t)
        present = {name: (arr if rng.random() > 0.03 else None) for name, arr in bufs.items()}
        inputs = ProtectionInputs(current_a=float(rng.normal(0.0, 20.0)), charge_limit_a=10.0,
                                  discharge_limit_a=15.0, **present)
        t = 0.1 * k
        before = fast._gather_src
        got, want = fast.update(t, inputs), slow.update(t, inputs)
        gathered += bool(fast._gather_src) and before is fast._gather_src
        assert [(*dataclasses.astuple(tr)[:5], repr(tr.value), tr.stack, tr.cell) for tr in got] \
            == [(*dataclasses.astuple(tr)[:5], repr(tr.value), tr.stack, tr.cell) for tr in want], \
            f"tick {k}"  # repr: NaN values compare equal
        np.testing.assert_array_equal(fast.engine.values, slow.engine.values)
        np.testing.assert_array_equal(fast.engine.present, slow.engine.present)
    assert gathered > 200, "the one-call path must carry a good share of the ticks"
