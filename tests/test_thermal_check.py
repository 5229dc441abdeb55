"""COOLING_DEGRADED (bms/thermal_check.py, docs/safety.md "Degraded cooling"): the real
controller and C core over an ``emu://`` board in the sim clock, the emulator's COOLANT_LOSS
under a 3C discharge (its heat shows within minutes); the same run without the fault raises
nothing while the model tracks the stack's heating; the CUSUM and its gate on the pure logic."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from emu_runs import run_ssb23, write_scenario

from bms.controller import Controller
from bms.faults import FaultCode, FaultTable, Severity
from bms.thermal_check import CoolingCheck
from bms.tuning import THERMAL_CHECK
from boards.config import load_pack

# The pack's maximum continuous discharge (3C, 15 A) from 95 %: ~3.5 W a cell.
_DISCHARGE = {"schema": "ssb-bms/scenario/1", "name": "discharge-3c",
              "initial": {"soc": 0.95, "temperature_c": 25.0},
              "segments": [{"kind": "current", "current_a": -15.0, "duration_s": 1000.0}]}


def _run(tmp_path: Path, coolant_lost: bool, duration_s: float) -> Controller:
    faults = [{"at_s": 0.0, "fault": "COOLANT_LOSS", "target": 255}] if coolant_lost else []
    return run_ssb23(write_scenario(tmp_path, _DISCHARGE, faults), seed=2,
                     duration_s=duration_s)[0]


def _records(c: Controller) -> list:
    return [r for r in c.table.records() if r.code == FaultCode.COOLING_DEGRADED]


def test_coolant_loss_under_load_is_seen_before_any_temperature_limit(tmp_path: Path) -> None:
    c = _run(tmp_path, coolant_lost=True, duration_s=420.0)
    (rec,) = _records(c)
    assert rec.severity == Severity.WARNING and rec.stack == 0 and rec.active
    # measured (seed 2): raised at ~330 s, the stack ~1 K warmer than its model
    assert 150.0 < rec.first_time_s < 420.0
    assert rec.trigger_value is not None and rec.trigger_value > THERMAL_CHECK.allowance_k
    # a warning: the contactors stay closed, no temperature protection has fired
    assert c.contactors.state.name == "CLOSED"
    assert not [r for r in c.table.records() if r.code.name.startswith("CELL_OVERTEMP")]


def test_the_same_load_with_working_cooling_raises_nothing(tmp_path: Path) -> None:
    c = _run(tmp_path, coolant_lost=False, duration_s=420.0)
    assert not _records(c)
    cc = c.cooling_check
    assert cc is not None
    # the check ran (the estimate converged, the gate was open) and the model followed the
    # stack's heating (several kelvin) to within the allowance
    assert float(np.mean(c.stacks[0].out.soc_sigma)) <= THERMAL_CHECK.sigma_gate
    assert cc.heat_w(0) > 2.0
    assert cc.model_c(0) > 30.0
    assert abs(cc.residual_k(0)) < THERMAL_CHECK.allowance_k
    assert cc.cusum_k_s(0) == 0.0


def _check() -> CoolingCheck:
    pack = load_pack("ssb-23")
    cc = CoolingCheck.from_pack(pack, THERMAL_CHECK)
    assert cc is not None
    return cc


def _feed(cc: CoolingCheck, t0: float, t1: float, temp_c: float, sigma: float,
          table: FaultTable, current_a: float = 0.0) -> float:
    """Ticks of 0.1 s at rest (no heat), the stack reading ``temp_c``."""
    soc, temps = np.full(23, 0.5), np.full(6, temp_c)
    t = t0
    while t < t1 - 1e-9:
        cc.observe(0, t, current_a, 3.77, soc, np.full(23, sigma), np.zeros(23), temps)
        cc.step(t, table)
        t = round(t + 0.1, 6)
    return t


def test_a_stack_warmer_than_its_model_raises_after_the_cusum_limit() -> None:
    cc, table = _check(), FaultTable()
    t = _feed(cc, 0.0, 30.0, 25.0, 0.01, table)  # at rest at its start temperature
    assert not table.records() and cc.cusum_k_s(0) == 0.0
    # 1 K warmer with no heat to explain it: (1 - 0.3) K over the limit of 20 K s, ~29 s
    t_warm = t
    while not table.records():
        t = _feed(cc, t, t + 1.0, 26.0, 0.01, table)
        assert t - t_warm < 60.0
    (rec,) = table.records()
    expected_s = THERMAL_CHECK.limit_k_s / (1.0 - THERMAL_CHECK.allowance_k)
    assert rec.first_time_s - t_warm == pytest.approx(expected_s, abs=2.5)
    # back at the start temperature: the CUSUM empties and the warning clears
    t = _feed(cc, t, t + 200.0, 25.0, 0.01, table)
    assert not rec.active


def test_an_unconverged_estimate_a_missing_thermistor_or_a_sensor_fault_hold_the_cusum(
) -> None:
    cc, table = _check(), FaultTable()
    t = _feed(cc, 0.0, 5.0, 25.0, 0.01, table)
    t = _feed(cc, t, t + 120.0, 27.0, 0.10, table)  # SOC sigma 10 %: the heat is not trusted
    assert cc.cusum_k_s(0) == 0.0 and not table.records()
    soc, temps = np.full(23, 0.5), np.full(6, 27.0)
    temps[2] = math.nan  # a thermistor open: the mean would jump
    for k in range(1200):
        cc.observe(0, t + k * 0.1, 0.0, 3.77, soc, np.full(23, 0.01), np.zeros(23), temps)
        cc.step(t + k * 0.1, table)
    assert cc.cusum_k_s(0) == 0.0 and not table.records()
    temps[2] = 27.0
    t += 120.0
    for k in range(1200):  # a sensor fault of the stack (the controller says): not trusted
        cc.observe(0, t + k * 0.1, 0.0, 3.77, soc, np.full(23, 0.01), np.zeros(23), temps,
                   inputs_ok=False)
        cc.step(t + k * 0.1, table)
    assert cc.cusum_k_s(0) == 0.0 and not table.records()


def test_a_pack_without_a_cooling_section_has_no_check() -> None:
    pack = dataclasses.replace(load_pack("ssb-23"), cooling=None)
    assert CoolingCheck.from_pack(pack, THERMAL_CHECK) is None


def test_the_faults_campaign_runs_the_coolant_loss_on_its_own_load() -> None:
    from bms.app.campaign.runner import expected_codes
    from bms.app.campaign.spec import load_spec

    spec = load_spec("faults")
    runs = [r for r in spec.runs if r.fault is not None and r.fault.name == "coolant-loss"]
    # once per seed on the fast charge, not once per scenario; the other cases on udds
    assert len(runs) == 10 and {r.scenario for r in runs} == {"fast-charge"}
    assert len(spec.runs) == 220
    assert {r.scenario for r in spec.runs if r not in runs} == {"udds"}
    assert expected_codes(runs[0].fault)[0] == "COOLING_DEGRADED"
