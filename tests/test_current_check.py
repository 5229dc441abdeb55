"""CURRENT_SENSOR_OFFSET (bms/current_check.py, docs/safety.md "Current-sensor offset"): the
real controller and C core over an ``emu://`` board in the sim clock, the emulator's
CURRENT_OFFSET fault injected; a healthy run with the check on raises nothing; the three rules
on the pure logic (stacks in series disagreeing needs several boards)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from emu_runs import SCENARIOS, run_ssb23, udds, write_scenario

from bms.controller import Controller
from bms.current_check import CurrentCheckConfig, CurrentPlausibility
from bms.faults import FaultCode, FaultTable, Severity
from bms.tuning import CURRENT_CHECK


def _run(tmp_path: Path, offset_a: float | None, at_s: float, duration_s: float,
         close: bool) -> Controller:
    faults = [] if offset_a is None else [
        {"at_s": at_s, "fault": "CURRENT_OFFSET", "target": 0, "value": offset_a}]
    return run_ssb23(udds(tmp_path, faults), seed=3, duration_s=duration_s, close=close)[0]


def _offset_records(c: Controller) -> list:
    return [r for r in c.table.records() if r.code == FaultCode.CURRENT_SENSOR_OFFSET]


def test_offset_while_closed_is_seen_in_the_voltage_innovations(tmp_path: Path) -> None:
    at_s = 30.0
    c = _run(tmp_path, 5.0, at_s, 45.0, close=True)
    assert c.contactors.state.name == "CLOSED"  # a warning: the contactors stay closed
    (rec,) = _offset_records(c)
    assert rec.severity == Severity.WARNING and rec.stack == 0 and rec.active
    # measured: 1.1 s after the injection (seed 1 and 3); the CUSUM's limit over the
    # first ~30 mV of common-mode innovation
    assert at_s < rec.first_time_s <= at_s + 3.0
    assert rec.trigger_value is not None and rec.trigger_value < 0  # predicted too high
    assert c.current_check.reason(0) == "common-mode voltage innovation"


def test_offset_with_contactors_open_is_a_current_without_a_path(tmp_path: Path) -> None:
    at_s = 5.0
    c = _run(tmp_path, 2.0, at_s, 8.0, close=False)
    assert c.contactors.state.name == "STANDBY"
    (rec,) = _offset_records(c)
    # the 1 s debounce after the first reading past 0.5 A (the reading of the tick after
    # the injection)
    assert at_s + CURRENT_CHECK.rest_debounce_s <= rec.first_time_s \
        <= at_s + CURRENT_CHECK.rest_debounce_s + 0.25
    assert rec.trigger_value == pytest.approx(2.0, abs=0.05)
    assert c.current_check.reason(0) == "current with contactors open"


def test_healthy_run_with_the_check_on_raises_nothing(tmp_path: Path) -> None:
    c = _run(tmp_path, None, 0.0, 60.0, close=True)
    assert not _offset_records(c)
    # the CUSUM ran (the estimate converged: the gate was open), it did not just sit at 0
    assert float(np.mean(c.stacks[0].out.soc_sigma)) <= CURRENT_CHECK.sigma_gate
    assert c.current_check.cusum_v_s(0) < 0.2 * CURRENT_CHECK.cusum_limit_v_s
    assert c.contactors.state.name == "CLOSED"


def _check(n: int) -> tuple[CurrentPlausibility, FaultTable]:
    return CurrentPlausibility(n, CURRENT_CHECK), FaultTable()


def test_boards_in_series_disagree_names_the_odd_board() -> None:
    chk, table = _check(4)
    t = 0.0
    while t < 1.5:
        chk.step(t, [3.0, 3.05, 4.6, 2.98], no_current_path=False, table=table)
        t = round(t + 0.1, 6)
    (rec,) = [r for r in table.records() if r.code == FaultCode.CURRENT_SENSOR_OFFSET]
    assert rec.stack == 2 and rec.first_time_s == pytest.approx(1.0)
    assert rec.trigger_value == pytest.approx(4.6 - 3.0, abs=0.05)
    # back in line: the warning clears
    chk.step(1.6, [3.0, 3.05, 3.1, 2.98], no_current_path=False, table=table)
    assert not rec.active
    # two boards: neither can be told from the other, both are named
    chk2, table2 = _check(2)
    for k in range(12):
        chk2.step(k * 0.1, [1.0, 2.5], no_current_path=False, table=table2)
    assert sorted(r.stack for r in table2.records()) == [0, 1]


def test_a_short_disagreement_or_a_small_rest_current_is_not_an_offset() -> None:
    chk, table = _check(3)
    for k in range(9):  # 0.8 s off: under the 1 s debounce
        chk.step(k * 0.1, [0.0, 0.0, 3.0], no_current_path=False, table=table)
    for k in range(9, 60):  # at rest, within the sensor's accuracy
        chk.step(k * 0.1, [0.3, -0.2, 0.45], no_current_path=True, table=table)
    assert not table.records()


def test_the_cusum_needs_common_mode_and_a_converged_estimate() -> None:
    cfg = CurrentCheckConfig(**{**CURRENT_CHECK.__dict__})
    chk, table = CurrentPlausibility(1, cfg), FaultTable()
    sigma_ok = np.full(23, 0.01)
    one_cell = np.zeros(23)
    one_cell[7] = -0.2  # one cell far off (a leak, a tap): not common mode
    common = np.full(23, -0.015)
    common[7] = math.nan  # a cell without a prediction is left out
    for k in range(100):
        chk.innovation(0, k * 0.1, one_cell, sigma_ok)
    assert chk.cusum_v_s(0) == 0.0
    for k in range(100, 200):  # converging (sigma 10 %): not integrated
        chk.innovation(0, k * 0.1, common, np.full(23, 0.10))
    assert chk.cusum_v_s(0) == 0.0
    k = 200
    while chk.cusum_v_s(0) <= cfg.cusum_limit_v_s:
        chk.innovation(0, k * 0.1, common, sigma_ok)
        k += 1
    # (15 - 5) mV over the 0.05 V s limit: 5 s
    assert (k - 200) * 0.1 == pytest.approx(cfg.cusum_limit_v_s / 0.010, abs=0.25)
    chk.step(k * 0.1, [1.0], no_current_path=False, table=table)
    (rec,) = table.records()
    assert rec.code == FaultCode.CURRENT_SENSOR_OFFSET and rec.trigger_value < 0


def test_cold_3c_discharge_is_not_an_offset(tmp_path: Path) -> None:
    # hil/scenarios/discharge-3c.yaml at 0 C, seed 2: the model's common-mode error under the
    # load put the healthy median innovation at +6.5 mV around 120 s, over the 5 mV alone (a
    # false CURRENT_SENSOR_OFFSET at 149 s before the allowance grew with the overpotential)
    data = yaml.safe_load((SCENARIOS / "discharge-3c.yaml").read_text(encoding="utf-8"))
    data["initial"]["temperature_c"] = 0.0
    c, _ = run_ssb23(write_scenario(tmp_path, data, []), seed=2, duration_s=300.0)
    assert not _offset_records(c)
    assert c.stacks[0].core.soc.mean() < 0.85  # the discharge ran through the window judged
