"""Error paths and behaviour of the C core through bms.core.Core: bad dt, NaN/Inf inputs per
cell, sensor dropouts, gating, the pressure quantities (through the protection engine, which
holds the limits), power limits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bms.core import (
    CELL_GATED,
    CELL_NO_CURRENT,
    CELL_OK,
    CELL_REJECTED_NAN,
    ST_CURRENT_INVALID,
    ST_PRESSURE_INVALID,
    ST_TEMP_FALLBACK,
    ST_TEMP_INVALID,
    Core,
    CoreError,
    Tuning,
    make_params,
)
from bms.protections import _PER_STACK, LEVELS, PackProtections, ProtectionInputs
from bms.reference import ReferenceCore
from boards.config import load_pack


@pytest.fixture(scope="module")
def pack():
    return load_pack("ssb-23")


def _rest_inputs(core: Core, soc: float = 0.5, temp_c: float = 25.0):
    ref = ReferenceCore(core.params)
    n = core.n_cells
    v = ref.lookup(np.full(n, soc), np.full(n, temp_c))["ocv_v"]
    ref.soc = np.full(n, soc)
    ref.cell_temp_c = np.full(n, temp_c)
    p = np.full(core.params.n_load_cells, ref.expected_pressure())
    return v, np.full(core.params.n_sensors, temp_c), p


def _snapshot(core: Core) -> dict[str, np.ndarray]:
    return {k: getattr(core, k).copy() for k in ("soc", "v1", "v2", "p", "leak_a", "leak_p",
                                                 "r0_scale", "gated_count")}


def test_bad_dt_is_refused_and_changes_nothing(pack) -> None:
    core = Core(pack, 0)
    core.reset(0.5)
    v, t, p = _rest_inputs(core)
    before = _snapshot(core)
    for dt in (0.0, -0.1, math.nan, math.inf):
        with pytest.raises(CoreError, match="SSB_ERR_DT"):
            core.step(dt, 1.0, v, t, p)
        with pytest.raises(CoreError, match="SSB_ERR_DT"):
            core.step_ekf(dt, 1.0, v, t, p)
    for k, a in _snapshot(core).items():
        assert np.array_equal(a, before[k]), k


def test_wrong_shapes_raise(pack) -> None:
    core = Core(pack, 0)
    v, t, p = _rest_inputs(core)
    with pytest.raises(ValueError, match="23 cells"):
        core.step(0.1, 0.0, v[:-1], t, p)
    with pytest.raises(ValueError, match="temperature_c has shape"):
        core.step(0.1, 0.0, v, t[:2], p)
    # One value is not broadcast onto every cell (it was, silently, before issue 11).
    with pytest.raises(ValueError, match=r"cell_voltage_v has shape \(1,\)"):
        core.step(0.1, 0.0, np.array([3.7]), t, p)
    with pytest.raises(ValueError, match="pressure_kpa has shape"):
        core.step(0.1, 0.0, v, t, 1000.0)


def test_bad_parameters_are_refused(pack) -> None:
    params = make_params(pack, 0)
    params.capacity_as = -1.0
    with pytest.raises(CoreError, match="SSB_ERR_PARAM"):
        Core(pack, 0, params=params)
    params = make_params(pack, 0)
    params.temp_idx0 = params.temp_idx0.copy()
    params.temp_idx0[0] = 99
    with pytest.raises(CoreError, match="SSB_ERR_PARAM"):
        Core(pack, 0, params=params)
    with pytest.raises(ValueError, match="stack_index"):
        Core(pack, 3)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_voltage_is_rejected_per_cell(pack, bad: float) -> None:
    core = Core(pack, 0, tuning=Tuning(pressure_fusion=False))
    core.reset(0.5)
    v, t, p = _rest_inputs(core)
    v[4] = bad
    out = core.step(0.1, -5.0, v, t, p)
    assert out.status[4] == CELL_REJECTED_NAN
    assert np.all(np.delete(out.status, 4) == CELL_OK)
    assert np.all(np.isfinite(out.soc)) and np.all(np.isfinite(core.p))
    # prediction only: the SOC moved by the coulomb count, and the uncertainty grew
    assert out.soc[4] == pytest.approx(0.5 - 5.0 * 0.1 / (5.0 * 3600.0), abs=1e-12)
    assert out.soc_sigma[4] > out.soc_sigma[5]
    assert out.gated_count[4] == 0


def test_outlier_is_gated_and_counted_not_absorbed(pack) -> None:
    core = Core(pack, 0)
    core.reset(0.5)
    v, t, p = _rest_inputs(core)
    for _ in range(50):
        core.step(0.1, 0.0, v, t, p)
    soc_before = core.soc[7]
    spike = v.copy()
    spike[7] += 1.0  # 1 V: beyond gate_sigma (6) innovation sigmas (~0.1 V with R inflated)
    out = core.step(0.1, 0.0, spike, t, p)
    assert out.status[7] == CELL_GATED
    assert out.gated_count[7] == 1
    assert out.soc[7] == pytest.approx(soc_before, abs=1e-6)


def test_current_nan_skips_the_stack(pack) -> None:
    core = Core(pack, 0)
    core.reset(0.5)
    v, t, p = _rest_inputs(core)
    before = _snapshot(core)
    out = core.step(0.1, math.nan, v, t, p)
    assert out.stack_status & ST_CURRENT_INVALID
    assert np.all(out.status == CELL_NO_CURRENT)
    assert np.array_equal(core.soc, before["soc"])
    assert np.all(out.charge_limit_a == 0) and np.all(out.discharge_limit_a == 0)


def test_thermistor_dropouts(pack) -> None:
    core = Core(pack, 0)
    core.reset(0.5)
    v, t, p = _rest_inputs(core)
    t = np.array([20.0, 22.0, 24.0, 26.0, 28.0, 30.0])
    out = core.step(0.1, 0.0, v, t, p)
    assert out.cell_temperature_c[0] == pytest.approx(20.0)
    assert out.cell_temperature_c[22] == pytest.approx(30.0)
    t2 = t.copy()
    t2[5] = math.nan  # the last cells use the nearest valid thermistor
    out = core.step(0.1, 0.0, v, t2, p)
    assert out.stack_status & ST_TEMP_FALLBACK
    assert out.cell_temperature_c[22] == pytest.approx(28.0)
    kept = out.cell_temperature_c.copy()
    out = core.step(0.1, 0.0, v, np.full(6, math.nan), p)
    assert out.stack_status & ST_TEMP_INVALID
    assert np.array_equal(out.cell_temperature_c, kept)


def _pressure_verdicts(pack, outputs_by_tick, dt: float = 0.1):
    """The protection engine over the core's pressure quantities, wired as the controller wires
    them (mean, |rate|, CUSUM, imbalance): per tick, the levels asserted per protection."""
    pp = PackProtections(pack)
    asserted = []
    for k, out in enumerate(outputs_by_tick):
        pp.update(k * dt, ProtectionInputs(
            stack_pressure_kpa=np.array([out.pressure_mean_kpa]),
            pressure_rate_kpa_per_s=np.array([abs(out.pressure_rate_kpa_per_s)]),
            pressure_residual_kpa=np.array([out.pressure_cusum_kpa]),
            load_cell_imbalance_kpa=np.array([out.load_cell_imbalance_kpa])))
        asserted.append({(name, level) for name in _PER_STACK for level in LEVELS
                         if pp.engine.is_asserted(name, level)[0]})
    return asserted


class _Copy:
    """The stack scalars of one CoreOutput (its arrays are views valid for one tick)."""

    def __init__(self, out) -> None:
        self.__dict__.update({k: v for k, v in out.__dict__.items() if isinstance(v, float)})


def test_pressure_invalid_and_imbalance(pack) -> None:
    core = Core(pack, 0)
    core.reset(0.5)
    v, t, p = _rest_inputs(core)
    out = core.step(0.1, 0.0, v, t, np.full(4, math.nan))
    assert out.stack_status & ST_PRESSURE_INVALID
    assert math.isnan(out.pressure_mean_kpa) and math.isnan(out.pressure_rate_kpa_per_s)
    assert math.isfinite(out.pressure_expected_kpa)
    limit = pack.protections["load_cell_imbalance_kpa"]
    loads = [p + np.array([0.0, 0.0, 200.0, 0.0])] * 40
    # hysteresis: inside the band the fault stays, below threshold - hysteresis it clears
    loads += [p + np.array([0.0, 0.0, limit.fault - 5.0, 0.0]),
              p + np.array([0.0, 0.0, limit.fault - 15.0, 0.0])]
    outs = [_Copy(core.step(0.1, 0.0, v, t, x)) for x in loads]
    assert outs[39].load_cell_imbalance_kpa == pytest.approx(200.0)
    verdicts = _pressure_verdicts(pack, outs)
    fault = ("load_cell_imbalance_kpa", "fault")
    times = [k for k, on in enumerate(verdicts) if fault in on]
    assert times[0] == round(limit.debounce_s / 0.1)  # debounce from the first tick past
    assert fault in verdicts[40]
    assert fault not in verdicts[41]


def test_pressure_low_rate_and_cusum(pack) -> None:
    core = Core(pack, 0, tuning=Tuning(pressure_fusion=False))
    core.reset(0.5)
    v, t, p = _rest_inputs(core)
    outs = [_Copy(core.step(0.1, 0.0, v, t, p)) for _ in range(20)]
    assert abs(outs[-1].pressure_residual_kpa) < 1e-6
    # a sudden drop to 500 kPa: rate first, then low (below the 600 kPa fault) after debounce
    drop = p - (p[0] - 500.0)
    outs += [_Copy(core.step(0.1, 0.0, v, t, drop)) for _ in range(16)]
    assert outs[20].pressure_rate_kpa_per_s < -pack.protections[
        "stack_pressure_rate_kpa_per_s"].fault
    verdicts = _pressure_verdicts(pack, outs)
    assert not any(verdicts[:20])
    low = [("stack_pressure_low_kpa", "fault") in on for on in verdicts[20:]]
    assert low[9] is False and low[10] is True  # 1.0 s debounce: the first tick past at t=0
    assert ("stack_pressure_rate_kpa_per_s", "fault") in verdicts[20 + 3]  # 0.3 s debounce
    # the residual drift accumulates in the CUSUM (the residual protection's input)
    assert outs[-1].pressure_cusum_kpa > 0
    assert outs[-1].pressure_residual_kpa < -400


def test_power_limits(pack) -> None:
    core = Core(pack, 0)
    v, t, p = _rest_inputs(core, soc=0.5)
    core.reset(0.5)
    out = core.step(0.1, 0.0, v, t, p)
    assert np.all(out.charge_limit_a == pack.power_limits.max_charge_current_a)
    assert np.all(out.discharge_limit_a == pack.power_limits.max_discharge_current_a)
    # nearly empty: the discharge limit falls, more for the longer horizon
    v, t, p = _rest_inputs(core, soc=0.03)
    core.reset(0.03)
    out = core.step(0.1, 0.0, v, t, p)
    assert out.discharge_limit_a[0] < pack.power_limits.max_discharge_current_a
    assert out.discharge_limit_a[1] <= out.discharge_limit_a[0]
    # cold: no charging at or below the charge under-temperature warning (lithium plating)
    v, t, p = _rest_inputs(core, soc=0.5, temp_c=3.0)
    core.reset(0.5)
    out = core.step(0.1, 0.0, v, t, p)
    assert np.all(out.charge_limit_a == 0.0)
    assert np.all(out.discharge_limit_a > 0.0)


def test_reset_from_rest_voltage(pack) -> None:
    core = Core(pack, 0)
    v, _, _ = _rest_inputs(core, soc=0.7)
    v[2] = math.nan
    core.reset(None, cell_voltage_v=v)
    assert np.allclose(np.delete(core.soc, 2), 0.7, atol=1e-9)
    assert core.soc[2] == 0.5


def test_bound_input_arrays_give_the_same_estimates_as_copies(pack) -> None:
    """Core.step reads a caller's contiguous float64 arrays in place (bound once, as the
    controller's validator buffers are) and copies anything else. Both paths, switching back
    and forth mid-run and with the bound arrays refilled in place: bit-identical states."""
    bound, copied = Core(pack, 0), Core(pack, 0)
    bound.reset(0.5)
    copied.reset(0.5)
    v0, t0, p0 = _rest_inputs(bound)
    v, t, p = v0.copy(), t0.copy(), p0.copy()  # refilled in place every step
    rng = np.random.default_rng(9)
    for k in range(400):
        i_a = float(rng.normal(0.0, 5.0))
        v[:] = v0 + rng.normal(0.0, 0.002, len(v0)) - 0.02 * i_a / 10.0
        t[:] = t0 + rng.normal(0.0, 0.3, len(t0))
        p[:] = p0 + rng.normal(0.0, 2.0, len(p0))
        if k % 50 == 7:
            v[rng.integers(len(v))] = np.nan
        # every second stretch of 30 steps the "bound" core gets copies too (unbinds, rebinds)
        args = (v, t, p) if (k // 30) % 2 == 0 else (v.tolist(), t.tolist(), p.tolist())
        bound.step(0.1, i_a, *args)
        # strided views: never bound, always copied
        copied.step(0.1, i_a, *(np.repeat(a, 2)[::2] for a in (v, t, p)))
        for name, a in _snapshot(bound).items():
            np.testing.assert_array_equal(a, getattr(copied, name), err_msg=f"{name} step {k}")
    bound.step(0.1, 0.0, v, t, p)
    assert bound._bound[0] is v  # the path the controller takes


def test_voltage_information_per_second_does_not_depend_on_the_sample_interval(pack) -> None:
    """R scales with the step's own dt (R = sigma_v^2 max(1, corr / dt)): a minute of rest
    sampled at 1 s (a cycler) narrows the SOC sigma as much as the same minute at 0.1 s. With
    R fixed for 0.1 s ticks, the 1 s samples would carry a tenth of the information and the
    sigma would end 24 % wider (measured)."""
    sigmas = {}
    for dt_s in (0.1, 1.0):
        core = Core(pack, 0)
        v, t, p = _rest_inputs(core, soc=0.2)  # a steep part of the OCV: voltage informs SOC
        core.reset(0.25)
        for _ in range(int(round(60.0 / dt_s))):
            o = core.step(dt_s, 0.0, v, t, p)
        sigmas[dt_s] = float(np.median(o.soc_sigma))
    assert sigmas[1.0] == pytest.approx(sigmas[0.1], rel=0.03), sigmas  # fixed R: +24 %
    assert sigmas[0.1] < 0.5 * pack.estimator.initial_soc_sigma, sigmas


def test_reset_inverts_the_ocv_at_the_measured_temperature(pack) -> None:
    """A rested cold stack: its voltages read through the 0 degC OCV row give back the SOC;
    read through the 25 degC row (what the core did before issue 11) they do not. The NumPy
    reference does the same."""
    core = Core(pack, 0)
    n, m = core.n_cells, core.params.n_sensors
    ref = ReferenceCore(core.params)
    soc = np.linspace(0.15, 0.85, n)
    v_cold = ref.lookup(soc, np.full(n, 0.0))["ocv_v"]
    core.reset(None, v_cold, np.full(m, 0.0))
    np.testing.assert_allclose(core.soc, soc, atol=1e-6)
    assert np.all(core.cell_temp_c == 0.0)
    ref.reset(None, v_cold, np.full(n, 0.0))
    np.testing.assert_allclose(ref.soc, core.soc, atol=1e-12)
    core.reset(None, v_cold)  # no temperature: 25 degC
    assert np.max(np.abs(core.soc - soc)) > 0.005
    with pytest.raises(ValueError, match="temperature_c has shape"):
        core.reset(None, v_cold, np.zeros(m + 1))


def test_state_dict_round_trip_continues_bit_identically():
    """A Core restored from another's state_dict steps exactly as the original (the state
    file of ``bms run --state`` relies on it); a state of another size is refused."""
    from boards.config import load_pack
    pack = load_pack("ssb-23")
    a, b = Core(pack), Core(pack)
    a.reset(None, np.full(23, 3.8), np.full(6, 20.0), soc_sigma0=0.04)
    assert np.allclose(a.soc_sigma, 0.04)
    rng = np.random.default_rng(3)
    for _ in range(50):
        a.step(0.1, 2.0, 3.8 + 0.01 * rng.standard_normal(23), np.full(6, 20.0),
               np.full(4, 1100.0))
    b.load_state(a.state_dict())
    for _ in range(50):
        v = 3.79 + 0.01 * rng.standard_normal(23)
        oa = a.step(0.1, -3.0, v, np.full(6, 20.0), np.full(4, 1100.0))
        sa = (oa.soc.copy(), oa.soc_sigma.copy(), oa.leak_a.copy(), oa.charge_limit_a.copy())
        ob = b.step(0.1, -3.0, v, np.full(6, 20.0), np.full(4, 1100.0))
        assert np.array_equal(sa[0], ob.soc) and np.array_equal(sa[1], ob.soc_sigma)
        assert np.array_equal(sa[2], ob.leak_a) and np.array_equal(sa[3], ob.charge_limit_a)
    bad = a.state_dict()
    bad["soc"] = np.zeros(22)
    with pytest.raises(ValueError, match="soc has shape"):
        b.load_state(bad)
