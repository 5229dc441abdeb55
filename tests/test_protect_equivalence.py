"""The C protection engine against the pure-NumPy reference: identical transitions, identical
state, over long random input sequences; and the pack rules' buffer-writing fast path against
the original dict-based rules. Plus the per-tick benchmarks of PackProtections.step."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bms.faults import FaultTable
from bms.protections import (
    _PER_THERMISTOR,
    PackProtections,
    ProtectionEngine,
    ProtectionInputs,
    ReferenceProtectionEngine,
    Transition,
    _derate,
)
from boards.config import PROTECTION_NAMES, ProtectionLimit, load_pack

PACK = load_pack("ssb-23")
PACK4 = load_pack("ssb-4x23")


def _key(t: Transition) -> tuple:
    """Transition as a tuple in which NaN equals NaN (the value of an invalid assert is NaN)."""
    v = "nan" if math.isnan(t.value) else t.value
    return (t.name, t.level, t.channel, t.asserted, t.time_s, v, t.stack, t.cell)


def _same_state(a, b) -> None:
    np.testing.assert_array_equal(a.start_s, b.start_s)  # NaN == NaN here
    np.testing.assert_array_equal(a.asserted, b.asserted)
    np.testing.assert_array_equal(a.invalid, b.invalid)
    assert a.asserted.dtype == b.asserted.dtype == bool
    assert set(np.unique(a.asserted.view(np.uint8))) <= {0, 1}, "C leaves 0/1 bytes only"
    assert set(np.unique(a.invalid.view(np.uint8))) <= {0, 1}


def _random_limits(rng: np.random.Generator, k: int) -> tuple[dict, dict]:
    limits, channels = {}, {}
    for j in range(k):
        direction = "above" if rng.random() < 0.5 else "below"
        s = 1.0 if direction == "above" else -1.0
        warning = float(rng.uniform(-5.0, 5.0))
        steps = rng.choice([0.0, 0.5, 1.0], size=2)  # equal levels happen too
        fault, critical = warning + s * steps[0], warning + s * (steps[0] + steps[1])
        hysteresis = float(rng.choice([0.0, 0.1, 0.3]))
        debounce_s = float(rng.choice([0.0, 0.1, 0.2, 0.3, 1.0, 0.25]))
        name = f"p{j}"
        limits[name] = ProtectionLimit(name, direction, warning, float(fault), float(critical),
                                       hysteresis, debounce_s)
        channels[name] = int(rng.integers(1, 6))
    return limits, channels


def _random_values(rng: np.random.Generator, lim: ProtectionLimit, n: int) -> np.ndarray:
    """Values dancing around the thresholds and their hysteresis bands, some NaN/inf."""
    s = 1.0 if lim.direction == "above" else -1.0
    anchors = np.array([lim.warning, lim.fault, lim.critical,
                        lim.warning - s * lim.hysteresis, lim.critical - s * lim.hysteresis])
    v = rng.choice(anchors, size=n) + rng.choice([0.0, 1e-12, -1e-12, 0.05, -0.05, 2.0, -2.0],
                                                 size=n)
    r = rng.random(n)
    v[r < 0.05] = np.nan
    v[(r >= 0.05) & (r < 0.06)] = np.inf * s
    v[(r >= 0.06) & (r < 0.065)] = -np.inf * s
    return v


@pytest.mark.parametrize("seed", range(12))
def test_c_engine_matches_reference_on_random_sequences(seed: int) -> None:
    rng = np.random.default_rng(seed)
    limits, channels = _random_limits(rng, int(rng.integers(1, 8)))
    eng, ref = ProtectionEngine(limits, channels), ReferenceProtectionEngine(limits, channels)
    dt = float(rng.choice([0.1, 0.01, 0.05]))
    enabled = dict.fromkeys(limits, True)
    n_transitions = 0
    for k in range(1500):
        t = k * dt  # tick times like 0.1 * k: the 1e-9 timer tolerance matters
        values = {name: _random_values(rng, lim, channels[name])
                  for name, lim in limits.items() if rng.random() > 0.03}  # some not present
        offsets = {name: float(rng.choice([0.0, 0.05, 0.5, np.nan]))
                   for name in limits if rng.random() < 0.2}
        for name in limits:
            if rng.random() < 0.02:
                enabled[name] = not enabled[name]
        got = eng.update(t, values, offsets=offsets, enabled=enabled)
        want = ref.update(t, values, offsets=offsets, enabled=enabled)
        assert [_key(x) for x in got] == [_key(x) for x in want], (seed, k)
        _same_state(eng, ref)
        n_transitions += len(got)
    assert n_transitions > 100, "the sequence must exercise the transitions"


def test_c_engine_matches_reference_with_slow_ramps() -> None:
    """Values that stay past long enough to assert every level (random sequences mostly
    restart timers) and then drift back through the hysteresis band."""
    rng = np.random.default_rng(99)
    limits, channels = _random_limits(rng, 6)
    eng, ref = ProtectionEngine(limits, channels), ReferenceProtectionEngine(limits, channels)
    phase = {name: rng.uniform(0, 2 * np.pi, channels[name]) for name in limits}
    levels = 0
    for k in range(4000):
        t = 0.1 * k
        values = {}
        for name, lim in limits.items():
            s = 1.0 if lim.direction == "above" else -1.0
            mid = 0.5 * (lim.warning + lim.critical)
            v = mid + s * (abs(lim.critical - lim.warning) + 1.0) * np.sin(0.01 * k + phase[name])
            v[rng.random(v.size) < 0.01] = np.nan
            values[name] = v
        got, want = eng.update(t, values), ref.update(t, values)
        assert [_key(x) for x in got] == [_key(x) for x in want], k
        _same_state(eng, ref)
        levels += sum(x.level == "critical" for x in got)
    assert levels > 0


# --------------------------------------------------------------------------- pack rules


def _dict_rules_update(pp: PackProtections, time_s: float, inputs: ProtectionInputs):
    """The pack rules as originally written (dicts per tick into ProtectionEngine.update): the
    specification of PackProtections.update's buffer-writing fast path."""
    values, enabled, offsets = {}, {}, {}
    if inputs.cell_voltage_v is not None:
        values["cell_overvoltage_v"] = inputs.cell_voltage_v
        values["cell_undervoltage_v"] = inputs.cell_voltage_v
    current = inputs.current_a
    if current is not None:
        if current > pp.rest_current_a:
            pp.charge_mode = True
        elif current < -pp.rest_current_a:
            pp.charge_mode = False
        values["charge_overcurrent_a"] = current
        values["discharge_overcurrent_a"] = -current
        offsets["charge_overcurrent_a"] = _derate(inputs.charge_limit_a, pp._max_charge_a)
        offsets["discharge_overcurrent_a"] = _derate(inputs.discharge_limit_a,
                                                     pp._max_discharge_a)
    if inputs.temperature_c is not None:
        for name in _PER_THERMISTOR:
            values[name] = inputs.temperature_c
            enabled[name] = ("_charge_" in name) == pp.charge_mode
    for name, arr in (("stack_pressure_low_kpa", inputs.stack_pressure_kpa),
                      ("stack_pressure_high_kpa", inputs.stack_pressure_kpa),
                      ("stack_pressure_rate_kpa_per_s", inputs.pressure_rate_kpa_per_s),
                      ("stack_pressure_residual_kpa", inputs.pressure_residual_kpa),
                      ("load_cell_imbalance_kpa", inputs.load_cell_imbalance_kpa),
                      ("cell_leak_a", inputs.cell_leak_a)):
        if arr is not None:
            values[name] = arr
    raw = pp.engine.update(time_s, values, offsets=offsets, enabled=enabled)
    return [pp._place(t) for t in raw]


def _around(rng, lim: ProtectionLimit, n: int) -> np.ndarray:
    v = _random_values(rng, lim, n)
    keep = rng.random(n) < 0.7  # mostly calm, so levels get time to assert
    calm = lim.warning - (1.0 if lim.direction == "above" else -1.0) * (lim.hysteresis + 1.0)
    v[keep] = calm
    return v


def _random_pack_inputs(rng, pack, k: int) -> ProtectionInputs:
    n, n_st = pack.n_cells, len(pack.stacks)
    n_th = sum(len(s.thermistor_cell_positions) for s in pack.stacks)
    pr = pack.protections
    phase = (k // 40) % 4  # long stretches of one regime

    def maybe(x):
        return None if rng.random() < 0.03 else x

    return ProtectionInputs(
        cell_voltage_v=maybe(_around(rng, pr[("cell_overvoltage_v", "cell_undervoltage_v")[
            phase % 2]], n)),
        temperature_c=maybe(_around(rng, pr[_PER_THERMISTOR[phase]], n_th)),
        current_a=maybe(float(rng.choice([-20.0, -17.0, -5.0, -0.1, 0.0, 0.1, 5.0, 11.0, 13.0,
                                          np.nan]))),
        charge_limit_a=float(rng.choice([np.nan, 4.0, 10.0, 50.0])),
        discharge_limit_a=float(rng.choice([np.nan, 5.0, 20.0])),
        stack_pressure_kpa=maybe(_around(rng, pr[("stack_pressure_low_kpa",
                                                  "stack_pressure_high_kpa")[phase % 2]], n_st)),
        pressure_rate_kpa_per_s=maybe(_around(rng, pr["stack_pressure_rate_kpa_per_s"], n_st)),
        pressure_residual_kpa=maybe(_around(rng, pr["stack_pressure_residual_kpa"], n_st)),
        load_cell_imbalance_kpa=maybe(_around(rng, pr["load_cell_imbalance_kpa"], n_st)),
        cell_leak_a=maybe(_around(rng, pr["cell_leak_a"], n)),
    )


@pytest.mark.parametrize("pack", [PACK, PACK4], ids=["ssb-23", "ssb-4x23"])
def test_pack_fast_path_matches_dict_rules_on_reference(pack) -> None:
    rng = np.random.default_rng(7)
    fast = PackProtections(pack)
    spec = PackProtections(pack, engine="reference")
    table_fast, table_spec = FaultTable(), FaultTable()
    seen = set()
    # Count the ticks that took the one-call path (ssb_protect_tick): every input present.
    fused = [0]
    bind = fast._bind_gather

    def counting_bind(arrays):
        ok = bind(arrays)
        if fast._tick is not None:
            fn = fast._tick_fn

            def counted(*args):
                fused[0] += 1
                return fn(*args)
            fast._tick_fn = counted
        return ok
    fast._bind_gather = counting_bind  # type: ignore[method-assign]
    for k in range(3000):
        t = 0.1 * k
        inp = _random_pack_inputs(rng, pack, k)
        got = fast.step(t, inp, table_fast)
        want = _dict_rules_update(spec, t, inp)
        spec.apply(want, table_spec)
        assert [_key(x) for x in got] == [_key(x) for x in want], k
        _same_state(fast.engine, spec.engine)
        assert fast.charge_mode == spec.charge_mode
        seen.update((x.name, x.level) for x in got)
    assert {r.code for r in table_fast.records()} == {r.code for r in table_spec.records()}
    assert len(seen) > 30 and {name for name, _ in seen} == set(PROTECTION_NAMES)
    assert 500 < fused[0] < 3000, fused  # both paths ran


def test_engine_refuses_bad_limits() -> None:
    lim = ProtectionLimit("x", "above", 1.0, 2.0, 3.0, -0.1, 0.0)  # negative hysteresis
    with pytest.raises(ValueError, match="SSB_PROT_ERR_PARAM"):
        ProtectionEngine({"x": lim}, {"x": 1})
    lim = ProtectionLimit("x", "above", 1.0, math.nan, 3.0, 0.1, 0.0)
    with pytest.raises(ValueError, match="SSB_PROT_ERR_PARAM"):
        ProtectionEngine({"x": lim}, {"x": 1})


# --------------------------------------------------------------------------- benchmarks


def _nominal(pack) -> ProtectionInputs:
    n, n_st = pack.n_cells, len(pack.stacks)
    n_th = sum(len(s.thermistor_cell_positions) for s in pack.stacks)
    return ProtectionInputs(
        cell_voltage_v=np.full(n, 3.8), temperature_c=np.full(n_th, 25.0), current_a=1.0,
        charge_limit_a=pack.power_limits.max_charge_current_a - 1.0,
        discharge_limit_a=pack.power_limits.max_discharge_current_a,
        stack_pressure_kpa=np.full(n_st, 1200.0), pressure_rate_kpa_per_s=np.zeros(n_st),
        pressure_residual_kpa=np.zeros(n_st), load_cell_imbalance_kpa=np.zeros(n_st),
        cell_leak_a=np.zeros(n))


@pytest.mark.parametrize("pack", [PACK, PACK4], ids=["ssb-23", "ssb-4x23"])
@pytest.mark.parametrize("engine", ["c", "reference"])
def test_bench_step_no_transitions(benchmark, pack, engine: str) -> None:
    """PackProtections.step on a nominal tick (no transitions: the common case). Measured, not
    asserted; the controller's budget is ~139 us per tick in all for ssb-23."""
    pp = PackProtections(pack, engine=engine)
    table, inp = FaultTable(), _nominal(pack)
    clock = itertools.count(0.0, 0.1)
    benchmark(lambda: pp.step(next(clock), inp, table))
    assert table.records() == [] and not pp.engine.asserted.any()


def test_leak_lower_bound_in_c_is_numpys_bit_for_bit() -> None:
    """The leak protection's input (bms.protections.LeakLowerBound): the C call and the NumPy
    it replaced give the same bits, NaN and Inf included, also after the arrays it reads are
    replaced (a single-stack controller binds them to the core's on the first data)."""
    from bms.protections import LeakLowerBound

    rng = np.random.default_rng(5)
    n = 92
    outs = {e: np.full(n, np.nan) for e in ("c", "reference")}
    bounds = {e: LeakLowerBound(outs[e], engine=e) for e in outs}
    leak, sigma = np.empty(n), np.empty(n)
    for k in range(200):
        if k % 50 == 49:  # new arrays now and then; else the same ones, refilled in place
            leak, sigma = np.empty(n), np.empty(n)
        leak[:], sigma[:] = rng.normal(0, 0.01, n), np.abs(rng.normal(0, 0.003, n))
        leak[rng.integers(n)] = np.nan
        sigma[rng.integers(n)] = np.inf
        for e, b in bounds.items():
            assert b.update(leak, sigma) is outs[e]
        assert outs["c"].tobytes() == outs["reference"].tobytes(), k
    assert bounds["c"]._args is not None  # the C path ran
    strided = LeakLowerBound(np.full(n, np.nan))
    strided.update(np.zeros(2 * n)[::2], np.ones(n))  # not contiguous: NumPy, same result
    assert strided._args is None and np.all(strided.out == -3.0)
