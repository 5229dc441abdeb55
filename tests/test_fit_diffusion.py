"""``bms fit --diffusion-slope`` (bms/app/fit_pulses.py): the slow RC branch's resistance as
c x dOCV/dSOC. A window from a known cell whose slow branch follows the slope gives c back
(the fit stays linear in it), the constant-R2 fit of the same window is measurably worse, and
the written pack's slow-branch table is c x the smoothed slope on the OCV's 1 % grid, with one
slow time constant per file; ``bms fit --diffusion-slope`` writes such a pack."""

from __future__ import annotations

import numpy as np
import pytest

from bms.app.fit import fit
from bms.app.fit_pulses import (
    DIFFUSION_SLOPE_SMOOTH_SOC,
    MIN_DIFFUSION_SLOPE_V,
    diffusion_slope,
    filtered,
    fit_window,
)
from boards.config import load_pack

CAPACITY_AS = 5.0 * 3600.0
R0, R1, TAU1, C2, TAU2 = 0.012, 0.008, 15.0, 0.020, 250.0


def _slope(soc: np.ndarray) -> np.ndarray:
    """A graphite-like OCV slope: a flat stretch (0.2 V) between steep ones (1 V)."""
    return 0.2 + 0.8 * (np.abs(soc - 0.85) > 0.04)


def _window(rng) -> tuple[np.ndarray, ...]:
    """Pulses, a C/2 segment from SOC 0.95 to 0.75 across the flat stretch, a long rest."""
    seq = [(10, -5.0), (40, 0.0), (10, 3.75), (40, 0.0), (2880, -2.5), (3600, 0.0)]
    cur = np.concatenate([[0.0]] + [np.full(n, c) for n, c in seq])
    dt = np.ones(len(cur))
    dt[0] = 0.0
    soc = 0.95 + np.cumsum(cur * dt) / CAPACITY_AS
    slope = _slope(soc)
    x1 = filtered(dt, cur, np.array([TAU1]))[:, 0]
    x2 = filtered(dt, cur * slope, np.array([TAU2]))[:, 0]
    y = R0 * cur + R1 * x1 + C2 * x2 + rng.normal(0.0, 2e-4, len(cur))
    return dt, cur, y, slope


def test_slow_branch_coefficient_recovered():
    dt, cur, y, slope = _window(np.random.default_rng(3))
    r0, r, tau, model, _ = fit_window(dt, cur, y, 2, slope=slope)
    assert r0[0] == pytest.approx(R0, rel=0.05)
    assert r[1] == pytest.approx(C2, rel=0.05) and tau[1] == pytest.approx(TAU2, rel=0.1)
    rmse = np.sqrt(np.mean((y - model) ** 2))
    _, _, _, model_c, _ = fit_window(dt, cur, y, 2)  # constant R2: the wrong structure
    assert rmse < 3e-4 < np.sqrt(np.mean((y - model_c) ** 2))


def test_diffusion_slope_smooths_and_floors():
    grid = np.round(np.linspace(0.0, 1.0, 101), 6)
    ocv = 3.0 + 0.5 * grid + 0.3 * (grid > 0.5)   # a 0.3 V step at 0.5, flat-ish elsewhere
    s = diffusion_slope(grid, ocv)
    k = int(round(DIFFUSION_SLOPE_SMOOTH_SOC / 0.01))
    assert s.min() >= MIN_DIFFUSION_SLOPE_V
    assert np.all(s[50 - k:51 + k] > 0.5 + 0.3 / (0.02 * (2 * k + 1)) - 1e-9)  # the step spread
    assert s[10] == pytest.approx(0.5)


def test_pack_slow_branch_is_c_times_slope(tmp_path):
    from tests.test_fit import hppc_test, ocv_test

    rng = np.random.default_rng(5)
    ocv = ocv_test(tmp_path / "ocv.csv", rng)
    hppc = hppc_test(tmp_path / "hppc_25C.csv", 25.0, rng, levels=3)
    res = fit(ocv, [hppc], diffusion_slope=True, verify=False)
    t = res.tables
    assert len(t.soc) == 101  # the OCV's 1 % grid
    lv = sorted(res.tests[0].levels, key=lambda x: x.soc)
    c = np.interp(t.soc, [x.soc for x in lv], [x.slow_r_per_slope for x in lv])
    row = res.ocv_rows_v[0]  # one temperature: the row repeated 10 K either side
    assert np.allclose(t.r_ohm[1][list(t.temperature_c).index(25.0)],
                       c * diffusion_slope(res.ocv.soc_grid, row), rtol=1e-9)
    out = res.write_pack(tmp_path / "cell.yaml")
    assert load_pack(out).cell.ecm.rc_branches == 2
    # one slow time constant per file (the levels' median)
    assert len({x.tau_s[1] for x in lv}) == 1 and any("tau2" in n for n in res.tests[0].notes)


def test_cli_flag_writes_the_diffusion_pack(tmp_path, capsys):
    from bms.app import fit as fitmod
    from tests.test_fit import hppc_test, ocv_test

    rng = np.random.default_rng(7)
    ocv = ocv_test(tmp_path / "ocv.csv", rng)
    hppc = hppc_test(tmp_path / "h.csv", 25.0, rng, levels=2)
    out = tmp_path / "d.yaml"
    rc = fitmod.main(["--ocv", str(ocv), "--pulses", str(hppc), "--current-sign",
                      "discharge-positive", "--diffusion-slope", "-o", str(out),
                      "--report", str(tmp_path / "rep")])
    assert rc == 0, capsys.readouterr().out
    assert "slow branch (diffusion)" in (tmp_path / "rep" / "d_report.md").read_text()
    r2 = load_pack(out).cell.ecm
    assert r2.rc_branches == 2
