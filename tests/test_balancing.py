"""Passive balancing: selection, hysteresis, gating, duty cycle, masks, bleed current."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bms.balancing import Balancer, top_of_charge_slope_v, top_of_charge_voltage_v
from boards.config import load_pack

PACK = load_pack("ssb-23")
PACK4 = load_pack("ssb-4x23")
CFG = PACK.balancing
STANDBY, PRECHARGE, CLOSED, FAULT = 0, 1, 2, 4


def _balancer(pack=PACK, cfg=None, **kw) -> Balancer:
    extra = {}
    cfg = cfg or pack.balancing
    if cfg.mode == "voltage":
        extra = dict(voltage_slope_v_per_soc=top_of_charge_slope_v(pack.cell),
                     top_of_charge_v=top_of_charge_voltage_v(pack.cell))
    return Balancer(cfg, [s.cells for s in pack.stacks],
                    [len(s.thermistor_cell_positions) for s in pack.stacks], **{**extra, **kw})


def _call(b: Balancer, t=0.0, soc=None, v=None, temps=None, state=STANDBY, current=0.0,
          fault=False):
    n = b.n_cells
    soc = np.full(n, 0.5) if soc is None else soc
    v = np.full(n, 3.8) if v is None else v
    temps = np.full(sum(len(s.thermistor_cell_positions) for s in
                        (PACK4 if n == 92 else PACK).stacks), 25.0) if temps is None else temps
    return b.update(t, soc, v, temps, state, current, fault)


def test_soc_selection_with_hysteresis() -> None:
    b = _balancer()
    soc = np.full(23, 0.50)
    soc[[3, 10]] = [0.515, 0.508]  # 1.5 % and 0.8 % above the lowest
    d = _call(b, soc=soc)
    assert d.reason == "balancing"
    assert d.masks.dtype == np.uint32 and int(d.masks[0]) == 1 << 3
    assert d.bleed_current_a[3] == pytest.approx(3.8 / CFG.bleed_resistance_ohm)
    assert d.bleed_current_a.sum() == pytest.approx(3.8 / CFG.bleed_resistance_ohm)
    assert d.bleed_power_w == pytest.approx(3.8 ** 2 / CFG.bleed_resistance_ohm)
    # Cell 3 drops to 0.5 % above: below start, above stop -> keeps bleeding.
    soc[3] = 0.505
    assert int(_call(b, t=1.0, soc=soc).masks[0]) == 1 << 3
    # Within stop_delta_soc (0.3 %) of the lowest it stops.
    soc[3] = 0.5029
    d = _call(b, t=2.0, soc=soc)
    assert int(d.masks[0]) == 0 and d.reason == "balanced"


def test_duty_cycle_bounds_on_time() -> None:
    b = _balancer(period_s=10.0)
    soc = np.full(23, 0.5)
    soc[0] = 0.6
    on = [bool(_call(b, t=k * 0.1, soc=soc).masks[0]) for k in range(1000)]
    assert np.mean(on) == pytest.approx(CFG.duty_cycle, abs=0.011)
    assert on[0] and not on[60] and on[100]  # on for the first half of each 10 s period
    # The selection survives the off phase.
    assert _call(b, t=6.0, soc=soc).selected[0]


@pytest.mark.parametrize("kwargs,reason", [
    (dict(state=PRECHARGE), "state"),
    (dict(state=FAULT), "state"),
    (dict(state=CLOSED, current=-5.0), "discharging"),
    (dict(state=STANDBY, fault=True), "fault"),
])
def test_gating(kwargs, reason) -> None:
    b = _balancer()
    soc = np.full(23, 0.5)
    soc[5] = 0.6
    assert _call(b, soc=soc).masks[0] != 0
    d = _call(b, t=0.1, soc=soc, **kwargs)
    assert d.reason == reason and int(d.masks[0]) == 0 and not d.selected.any()


def test_allowed_while_charging_or_resting_in_closed() -> None:
    b = _balancer()
    soc = np.full(23, 0.5)
    soc[5] = 0.6
    assert _call(b, soc=soc, state=CLOSED, current=3.0).masks[0] == 1 << 5
    assert _call(b, t=0.1, soc=soc, state=CLOSED, current=-0.1).masks[0] == 1 << 5


def test_disabled_config() -> None:
    b = _balancer(cfg=dataclasses.replace(CFG, enabled=False))
    soc = np.full(23, 0.5)
    soc[5] = 0.6
    assert _call(b, soc=soc).reason == "disabled"


def test_temperature_and_voltage_gates() -> None:
    b = _balancer(PACK4)
    soc = np.full(92, 0.5)
    soc[[1, 30, 60]] = 0.6  # stacks 0, 1, 2
    temps = np.full(24, 25.0)
    temps[7] = 46.0         # a thermistor of stack 1 above max_temperature_c (45)
    temps[13] = np.nan      # an invalid thermistor of stack 2: temperature unknown
    v = np.full(92, 3.8)
    v[1] = 3.4              # below min_cell_voltage_v (3.5): never bleed it further
    d = _call(b, soc=soc, v=v, temps=temps)
    assert [int(m) for m in d.masks] == [0, 0, 0, 0]
    assert d.reason == "balanced"
    temps[[7, 13]] = 25.0
    v[1] = 3.8
    d = _call(b, t=0.1, soc=soc, v=v, temps=temps)
    assert [int(m) for m in d.masks] == [1 << 1, 1 << 7, 1 << 14, 0]


def test_nan_soc_is_never_bled_nor_the_reference() -> None:
    b = _balancer()
    soc = np.full(23, 0.5)
    soc[2] = np.nan
    soc[4] = 0.52
    d = _call(b, soc=soc)
    assert int(d.masks[0]) == 1 << 4
    assert _call(b, soc=np.full(23, np.nan)).reason == "no valid data"


def test_voltage_mode_only_at_top_of_charge() -> None:
    cfg = dataclasses.replace(CFG, mode="voltage")
    b = _balancer(cfg=cfg)
    slope = top_of_charge_slope_v(PACK.cell)
    assert slope == pytest.approx((4.20 - 4.11) / 0.1)  # from ssb-23.yaml, 25 C row
    v = np.full(23, 3.9)
    v[8] = 3.95
    assert _call(b, v=v).reason == "below top of charge"
    v = np.full(23, 4.15)
    v[8] = 4.15 + 1.5 * CFG.start_delta_soc * slope
    d = _call(b, v=v)
    assert int(d.masks[0]) == 1 << 8


def test_full_32_cell_stack_mask() -> None:
    cfg = CFG
    b = Balancer(cfg, [32], [1])
    soc = np.full(32, 0.9)
    soc[0] = 0.5
    d = b.update(0.0, soc, np.full(32, 4.0), np.array([25.0]), STANDBY, 0.0, False)
    assert int(d.masks[0]) == 0xFFFFFFFE


def test_bad_layouts_rejected() -> None:
    with pytest.raises(ValueError):
        Balancer(CFG, [33], [1])
    with pytest.raises(ValueError):
        Balancer(CFG, [23], [1, 2])
    with pytest.raises(ValueError):
        Balancer(dataclasses.replace(CFG, mode="voltage"), [23], [6])
