"""The balancing decision in C (csrc/ssb_balance.c, ``Balancer(engine="c")``, what the controller
runs) against its NumPy reference (``Balancer(engine="reference")``): the same decision on every
tick of long random sequences (masks, selection, bleed currents, reason, bleed power, and the
selection kept between ticks), in SOC and voltage mode, on one stack and on stacks with uneven
(and no) thermistors, through NaN cells and thermistors, hot stacks, gates and duty phases.
The C under ASan/UBSan: tests/test_c_asan.py ("balance")."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bms.balancing import Balancer, top_of_charge_slope_v, top_of_charge_voltage_v
from boards.config import load_pack

PACK = load_pack("ssb-23")
STATES = (0, 0, 2, 2, 2, 1, 4)


def _pair(cfg, cells, thermistors, **kw) -> tuple[Balancer, Balancer]:
    return tuple(Balancer(cfg, cells, thermistors, engine=e, **kw)  # type: ignore[return-value]
                 for e in ("c", "reference"))


def _drive(c: Balancer, ref: Balancer, n_th: int, ticks: int, seed: int) -> set[str]:
    """Both engines on the same random inputs; every decision equal. Returns the reasons
    seen (so a case that never reaches a branch shows)."""
    rng = np.random.default_rng(seed)
    n = c.n_cells
    offsets = rng.normal(0.0, 1.0, n)  # each cell's place in the spread
    top_v = c.top_of_charge_v if c.top_of_charge_v is not None else 4.0
    seen = set()
    for k in range(ticks):
        t = 0.1 * k
        # the spread cycles: balanced, around the thresholds (hysteresis), far apart
        spread = (0.0005, 0.004, 0.02)[(k // 150) % 3]
        soc_in = 0.5 + 0.1 * np.sin(k / 500.0) + spread * (offsets + rng.normal(0.0, 0.3, n))
        # around the top of charge (voltage mode) and the minimum cell voltage
        v_in = top_v + 0.05 * np.sin(k / 200.0) + 20.0 * spread * offsets
        v_in[: max(1, n // 10)] -= 1.6 * (k % 500 > 450)
        soc_in[rng.random(n) < 0.03] = np.nan
        v_in[rng.random(n) < 0.02] = np.nan
        if k % 97 < 3:
            soc_in[:] = np.nan  # no valid data
        temps = rng.uniform(20.0, 40.0, n_th)
        temps[rng.random(n_th) < 0.05] = np.nan
        temps[rng.random(n_th) < 0.05] = 80.0  # a hot stack
        state = STATES[(k // 40) % len(STATES)]
        current = float(rng.choice([-20.0, -0.1, 0.0, 2.0, np.nan]))
        fault = k % 300 > 280
        a = c.update(t, soc_in, v_in, temps, state, current, fault)
        b = ref.update(t, soc_in, v_in, temps, state, current, fault)
        seen.add(a.reason)
        assert a.reason == b.reason, (k, a.reason, b.reason)
        np.testing.assert_array_equal(a.masks, b.masks, err_msg=str(k))
        assert a.masks.dtype == b.masks.dtype
        np.testing.assert_array_equal(a.selected, b.selected, err_msg=str(k))
        np.testing.assert_array_equal(a.bleed_current_a, b.bleed_current_a, err_msg=str(k))
        assert a.bleed_power_w == b.bleed_power_w
        np.testing.assert_array_equal(c.selected, ref.selected, err_msg=str(k))
    return seen


@pytest.mark.parametrize(("cells", "thermistors"), [([23], [6]), ([23, 23, 23, 23], [6, 0, 3, 6]),
                                                    ([32, 1, 5], [1, 2, 0])])
def test_soc_mode_same_decisions(cells: list[int], thermistors: list[int]) -> None:
    cfg = dataclasses.replace(PACK.balancing, start_delta_soc=0.02, stop_delta_soc=0.005)
    c, ref = _pair(cfg, cells, thermistors)
    seen = _drive(c, ref, sum(thermistors), 3000, seed=sum(cells))
    assert {"balancing", "duty off", "balanced", "no valid data", "state",
            "discharging", "fault"} <= seen


def test_voltage_mode_same_decisions() -> None:
    cfg = dataclasses.replace(PACK.balancing, mode="voltage", start_delta_soc=0.02,
                              stop_delta_soc=0.005)
    kw = dict(voltage_slope_v_per_soc=top_of_charge_slope_v(PACK.cell),
              top_of_charge_v=top_of_charge_voltage_v(PACK.cell))
    c, ref = _pair(cfg, [23, 23], [6, 6], **kw)
    seen = _drive(c, ref, 12, 3000, seed=7)
    assert {"balancing", "below top of charge"} <= seen


def test_full_duty_same_decisions() -> None:
    cfg = dataclasses.replace(PACK.balancing, duty_cycle=1.0, start_delta_soc=0.02,
                              stop_delta_soc=0.005)
    c, ref = _pair(cfg, [23], [6])
    assert "duty off" not in _drive(c, ref, 6, 1000, seed=3)


def test_unknown_engine_refused() -> None:
    with pytest.raises(ValueError, match="engine"):
        Balancer(PACK.balancing, [23], [6], engine="fortran")


def test_soc_input_in_c_is_the_numpy_reference() -> None:
    """Balancer.soc_input: the SOC where its sigma is at most the limit, NaN elsewhere (NaN
    sigma too), the same bits from the C call and from NumPy, also when the arrays it reads
    are replaced (a controller binds them to the core's on the first data)."""
    cfg = PACK.balancing
    c, ref = _pair(cfg, [23], [6])
    rng = np.random.default_rng(4)
    outs = (np.full(23, 7.0), np.full(23, 7.0))
    soc, sigma = np.empty(23), np.empty(23)
    for k in range(300):
        if k % 100 == 99:
            soc, sigma = np.empty(23), np.empty(23)
        soc[:] = rng.uniform(0, 1, 23)
        sigma[:] = rng.choice([0.005, 0.02, cfg.start_delta_soc, np.nan, np.inf], 23)
        for b, out in zip((c, ref), outs, strict=True):
            assert b.soc_input(soc, sigma, cfg.start_delta_soc, out) is out
        assert outs[0].tobytes() == outs[1].tobytes(), k
        want = np.where(sigma <= cfg.start_delta_soc, soc, np.nan)
        np.testing.assert_array_equal(outs[0], want)
    assert c._soc_in is not None and c._soc_in[3] is not None  # the C call ran
    assert ref._soc_in is not None and ref._soc_in[3] is None


def test_a_duty_off_decision_is_kept_while_its_selection_holds() -> None:
    """Over the off part of the duty period the decision is one read-only object per
    selection (no arrays made per tick); a changed selection makes a new one."""
    cfg = dataclasses.replace(PACK.balancing, duty_cycle=0.5)
    for engine in ("c", "reference"):
        b = Balancer(cfg, [23], [6], engine=engine)
        soc = np.full(23, 0.5)
        soc[3] += 0.05
        v, temps = np.full(23, 3.8), np.full(6, 25.0)
        period = b.period_s
        on = b.update(0.0, soc, v, temps, 0, 0.0, False)
        assert on.reason == "balancing" and on.selected[3]
        t_off = 0.75 * period
        off1 = b.update(t_off, soc, v, temps, 0, 0.0, False)
        off2 = b.update(t_off + 0.1, soc, v, temps, 0, 0.0, False)
        assert off1.reason == off2.reason == "duty off" and off2 is off1, engine
        assert not off1.selected.flags.writeable and off1.selected[3]
        assert not off1.bleed_current_a.any() and not off1.masks.any()
        soc[7] += 0.05  # a second cell selected: a new decision
        off3 = b.update(t_off + 0.2, soc, v, temps, 0, 0.0, False)
        assert off3 is not off1 and off3.selected[7] and off3.selected[3]
