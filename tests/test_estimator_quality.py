"""Estimator quality against the emulator's plant (bms/app/eval_estimator.py, the module
tools/eval_estimator.py runs): shorter runs than the evaluation tool's (docs/estimation.md has
the 2-hour figures; the 20-seed sweep is the campaign bms campaign leak). UDDS drive,
estimator initialised 30 % off, ambient swinging, 10 ohm soft short in one cell; and the
sweep's fast-charge-then-drive scenario on two seeds, the leak judged by the pack's cell_leak_a
protection as the controller does."""

from __future__ import annotations

from bms.app.eval_estimator import run, sweep


def test_soc_accuracy_coverage_and_soft_short_detection() -> None:
    r = run(minutes=25.0, fusion=True, short_ohm=10.0, short_at_s=600.0, converge_s=600.0)
    assert r.soc_rmse_pct <= 1.0
    assert r.soc_max_err_pct <= 2.5
    assert r.coverage_3sigma >= 0.95
    assert r.short_flag_s is not None and r.short_flag_s <= 15 * 60
    assert r.false_leak_flags == 0


def test_no_false_leak_flag_without_faults() -> None:
    # Seed 5 used to flag a healthy cell: its capacity mismatch, seen under current, looked
    # like a leak to a 2-state filter. The leak filter now carries the mismatch as a state.
    r = run(minutes=20.0, fusion=False, short_ohm=None, converge_s=600.0, seed=5)
    assert r.false_leak_flags == 0
    assert r.soc_rmse_pct <= 1.0
    assert r.coverage_3sigma >= 0.95


def test_no_false_leak_warning_after_fast_charge_and_short_still_flagged() -> None:
    # The seed sweep's scenario (bms demo's): 2C CC-CV charge from 30 %, rest, UDDS. Before
    # the per-cell impedance scales and the leak filter on the voltage's own SOC, healthy cells
    # of both seeds reached the pack's leak *warning* (debounced 60 s) right after the charge
    # (seed 6 from 1513 s, seed 13 from 1446 s; seed 13's cell 6, R +9 % and contact +18 %,
    # even the fault level): the EKF's lag behind a cell's capacity and resistance, released
    # at rest, moved its relative SOC like a leak.
    results = sweep([6, 13], minutes=10.0)
    for r in results:
        assert r.false_warnings == [], (r.seed, r.false_warnings)
        assert r.healthy_leak_low_max_a < 0.0, (r.seed, r.healthy_leak_low_max_a)
        assert r.soc_rmse_pct <= 1.0 and r.coverage_3sigma >= 0.95
    short = sweep([6], minutes=15.0, short_ohm=10.0)[0]
    assert short.false_warnings == []
    assert short.short_warning_s is not None and short.short_warning_s <= 15 * 60
    assert short.short_fault_s is not None and short.short_fault_s <= 15 * 60
