"""Estimator quality against the emulator's plant (bms/app/eval_estimator.py, the module
tools/eval_estimator.py runs): a shorter run than the evaluation tool's (docs/estimation.md has
the 2-hour figures). UDDS drive, estimator initialised 30 % off, ambient swinging, 10 ohm soft
short in one cell."""

from __future__ import annotations

from bms.app.eval_estimator import run


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
