"""The cooling check's C engine (csrc/ssb_thermal.c) against its Python reference
(``CoolingCheck(engine="reference")``): identical state, bit for bit, after every observe of
random inputs (NaN sensors, untrusted inputs, SOCs off the table and on its points, gaps in
time) and of a real run, and identical raises; numpy.interp and numpy's pairwise sum in C."""

from __future__ import annotations

import dataclasses
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from bms import _core
from bms.controller import Controller
from bms.faults import FaultTable
from bms.thermal_check import CoolingCheck
from bms.tuning import THERMAL_CHECK
from boards.config import load_pack
from hil.emulator.protocol_emu import emu_url, register

FIELDS = ("start_c", "model_c", "coolant_c", "plates_c", "energy_j", "ocv_v", "leak_w",
          "docv_dt_v_per_k", "temp_c", "cusum_k_s", "residual_k", "heat_w")


def _bits(x: float) -> bytes:
    return struct.pack("<d", float(x))


def _same(ref: CoolingCheck, c: CoolingCheck, where: str) -> None:
    for k, (a, b) in enumerate(zip(ref._st, c._st, strict=True)):
        for name in FIELDS:
            x, y = getattr(a, name), getattr(b, name)
            assert _bits(x) == _bits(y) or (math.isnan(x) and math.isnan(y)), \
                (where, k, name, x, y)
        assert bool(a.inputs_bad) == bool(b.inputs_bad) and bool(a.raised) == bool(b.raised)
        for name in ("last_tick_s", "last_step_s"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None and math.isnan(y)) or _bits(x) == _bits(y), (where, k, name)


def _pair(config=THERMAL_CHECK) -> tuple[CoolingCheck, CoolingCheck]:
    pack = load_pack("ssb-23")
    return (CoolingCheck.from_pack(pack, config, engine="reference"),
            CoolingCheck.from_pack(pack, config, engine="c"))


def test_interp_and_pairwise_sum_are_numpys_bit_for_bit() -> None:
    lib, ffi = _core.lib, _core.ffi
    rng = np.random.default_rng(3)
    for n in (1, 2, 5, 21, 40):
        xp = np.sort(rng.uniform(0, 1, n)) if n > 1 else np.array([0.4])
        xp = np.unique(xp)
        fp = rng.normal(3.7, 0.3, len(xp))
        x = np.concatenate([rng.uniform(-0.2, 1.2, 500), xp, [np.nan, -np.inf, np.inf]])
        want = np.interp(x, xp, fp)
        got = [lib.ssb_thermal_interp(v, ffi.from_buffer("double[]", xp),
                                      ffi.from_buffer("double[]", fp), len(xp)) for v in x]
        assert all(_bits(a) == _bits(b) or (math.isnan(a) and math.isnan(b))
                   for a, b in zip(got, want, strict=True)), n
    for n in range(0, 300):
        a = rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)
        assert _bits(lib.ssb_thermal_pairwise_sum(ffi.from_buffer("double[]", a), n)) == \
            _bits(np.add.reduce(a) if n else 0.0), n


def test_random_inputs_give_the_same_state_and_raises() -> None:
    # a low limit so that raises and clears happen within the run
    ref, c = _pair(dataclasses.replace(THERMAL_CHECK, limit_k_s=2.0, sigma_gate=0.05))
    rng = np.random.default_rng(11)
    grid = ref._soc_grid
    tables = [FaultTable(), FaultTable()]
    n, n_t = 23, 6
    soc, sig = rng.uniform(0.2, 0.8, n), np.full(n, 0.01)
    t = 0.0
    raised = 0
    for k in range(6000):
        t += 0.1 if rng.random() > 0.002 else 15.0  # now and then a gap of > 10 periods
        soc = np.clip(soc + rng.normal(0, 0.002, n), -0.05, 1.05)
        if rng.random() < 0.05:
            soc[rng.integers(n)] = grid[rng.integers(len(grid))]  # on a table point
        s = soc.copy()
        if rng.random() < 0.01:
            s[rng.integers(n)] = np.nan
        sg = sig * (1.0 if rng.random() > 0.01 else 10.0)
        leak = rng.normal(0.0, 0.002, n)
        temps = 25.0 + (k / 600.0) + rng.normal(0, 0.05, n_t)  # warmer than the model
        if rng.random() < 0.01:
            temps[rng.integers(n_t)] = np.nan
        cur = float(rng.normal(5.0, 20.0)) if rng.random() > 0.01 else math.nan
        ok = bool(rng.random() > 0.01)
        mean_v = 3.7 + 0.01 * rng.standard_normal()
        for cc in (ref, c):
            cc.observe(0, t, cur, mean_v, s, sg, leak, temps, inputs_ok=ok)
        _same(ref, c, f"tick {k}")
        got = [cc.step(t, tab) for cc, tab in zip((ref, c), tables, strict=True)]
        assert got[0] == got[1], k
        raised += len(got[0])
    assert raised >= 1  # the CUSUM went past the limit at least once
    assert [e["event"] for e in tables[0].drain_events()] == \
        [e["event"] for e in tables[1].drain_events()]


def test_a_run_feeds_both_engines_the_same(tmp_path: Path) -> None:
    """The controller's own inputs over 120 s of a fast charge (ssb-23 over emu://): the C
    engine it runs and a reference fed alongside keep identical states."""
    register()
    pack = load_pack("ssb-23")
    c = Controller(pack, [emu_url(pack.path, 0, seed=2, scenario="fast-charge")], clock="sim")
    cc = c.cooling_check
    assert cc is not None and cc.engine == "c"
    ref = CoolingCheck.from_pack(pack, THERMAL_CHECK, engine="reference")
    observe = cc.observe
    seen = []

    def both(*args, **kwargs):
        observe(*args, **kwargs)
        ref.observe(*args, **kwargs)
        _same(ref, cc, f"t = {args[1]}")
        seen.append(args[1])

    cc.observe = both  # type: ignore[method-assign]
    c.open()
    c.request_close()
    c.run(120.0)
    c.close()
    assert len(seen) > 1000 and any(s.heat_w != 0.0 for s in cc._st)


def test_a_grid_that_does_not_increase_is_refused() -> None:
    pack = load_pack("ssb-23")
    cc = CoolingCheck.from_pack(pack, THERMAL_CHECK)
    assert cc is not None
    with pytest.raises(ValueError, match="strictly increasing"):
        CoolingCheck(1, THERMAL_CHECK, 70.0, pack.cooling, np.array([0.0, 0.5, 0.5]),
                     np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="engine 'x'"):
        CoolingCheck(1, THERMAL_CHECK, 70.0, pack.cooling, np.array([0.0, 1.0]),
                     np.ones(2), np.zeros(2), engine="x")
