"""No alarm on a healthy pack (issue 14 item 6): LOAD_CELL_IMBALANCE watches the change from
the fixture's static imbalance (bms/protections.py LoadCellBaseline), and a contact loss still
raises it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from board_backends import Running

from bms.controller import Controller
from bms.faults import FaultCode, Severity
from bms.protections import LoadCellBaseline
from bms.statefile import load as load_state
from boards.config import load_board, load_pack
from hil.client import BoardClient
from hil.protocol import InjectedFault

SHARES = np.array([1.04, 0.97, 1.01, 0.98])  # a tilted plate and spread gains (mean 1)


def _feed(b: LoadCellBaseline, p: np.ndarray, t0: float, n: int) -> list[dict]:
    events = []
    for k in range(n):
        _, e = b.imbalance_kpa(t0 + 0.1 * k, p)
        if e is not None:
            events.append(e)
    return events


def test_static_tilt_is_taken_out_and_a_change_is_seen() -> None:
    b = LoadCellBaseline(0, 4, 1.0, 150.0)
    p0 = 1200.0 * SHARES
    assert b.imbalance_kpa(0.0, p0)[0] == pytest.approx(84.0)  # before: the plain max - min
    events = _feed(b, p0, 0.1, 10)
    assert [e["event"] for e in events] == ["set"]
    assert events[0]["time_s"] == pytest.approx(1.0)
    assert events[0]["static_imbalance_kpa"] == pytest.approx(84.0)
    # The shares scale with the force: at full charge (1600 kPa) no imbalance either.
    assert b.imbalance_kpa(2.0, 1600.0 * SHARES)[0] == pytest.approx(0.0, abs=1e-9)
    # One corner loses 20 % of its load (delamination under it): 320 kPa of change.
    p = 1600.0 * SHARES
    p[2] *= 0.8
    assert b.imbalance_kpa(2.1, p)[0] == pytest.approx(320.0)
    # Invalid load cells: the valid ones only; one valid: 0; none: NaN (as the C core).
    p = 1200.0 * SHARES
    p[1] = math.nan
    assert b.imbalance_kpa(2.2, p)[0] == pytest.approx(0.0, abs=1e-9)
    assert b.imbalance_kpa(2.3, np.array([np.nan, 1.0, np.nan, np.nan]))[0] == 0.0
    assert math.isnan(b.imbalance_kpa(2.4, np.full(4, np.nan))[0])


def test_a_fault_level_imbalance_at_start_is_not_taken_as_the_fixture() -> None:
    b = LoadCellBaseline(0, 4, 1.0, 150.0)
    p = np.array([1300.0, 1100.0, 1200.0, 1200.0])  # 200 kPa: a contact already lost
    events = _feed(b, p, 0.0, 12)
    assert [e["event"] for e in events] == ["refused"]
    assert "at or above the fault level 150" in events[0]["reason"]
    assert b.imbalance_kpa(5.0, p)[0] == pytest.approx(200.0)  # still the plain imbalance


def test_the_window_waits_for_every_load_cell() -> None:
    b = LoadCellBaseline(0, 4, 1.0, 150.0)
    p = 1200.0 * SHARES
    bad = p.copy()
    bad[0] = math.nan
    assert _feed(b, bad, 0.0, 20) == []  # one open load cell: no baseline from three
    assert [e["event"] for e in _feed(b, p, 2.0, 11)] == ["set"]


def test_healthy_stack_raises_no_imbalance_and_a_contact_loss_still_does(
        tmp_path: Path) -> None:
    """The emulated ssb-23 stack (seed 0: its static max - min is ~88 kPa against the 80 kPa
    warning) closes and rests with no LOAD_CELL_IMBALANCE; a 60 % contact loss at cell 16 (the
    demo's) raises the fault within its 2 s debounce and two ticks."""
    emu = Running(seed=0, initial_soc=0.9)
    log = tmp_path / "log"
    c = Controller(load_pack("ssb-23"), [emu.path], clock="sim", log_dir=log)
    try:
        c.open()
        c.request_close()
        c.run(30.0)
        assert c.table.get(FaultCode.LOAD_CELL_IMBALANCE, Severity.WARNING, 0) is None
        assert not [r for r in c.table.records() if r.severity >= Severity.WARNING
                    and r.code != FaultCode.MEASUREMENT_LATE], c.table.summary()
        t_inject = c.time_s
        c.stacks[0].client.inject_fault(int(InjectedFault.CELL_CONTACT_LOSS), 15, 0.6)
        c.run(5.0)
    finally:
        c.close()
        emu.stop()
    events = [json.loads(x) for x in (log / "events.jsonl").read_text().splitlines()]
    base = [e for e in events if e.get("type") == "load_cell_baseline"]
    assert len(base) == 1 and base[0]["event"] == "set"
    assert base[0]["static_imbalance_kpa"] > 80.0  # the premise: without it, a warning
    rec = c.table.get(FaultCode.LOAD_CELL_IMBALANCE, Severity.FAULT, 0)
    assert rec is not None
    assert rec.first_time_s - t_inject <= 2.0 + 2 * 0.1 + 1e-9


def test_the_state_file_keeps_the_commissioning_baseline(tmp_path: Path) -> None:
    """The first run with --state records the baseline into the file; a later run restores it
    and so sees a change that happened while the BMS was off (a load cell that now reads
    100 kPa high), which a fresh start would take for the fixture's normal."""
    pack = load_pack("ssb-23")
    state = tmp_path / "state.json"

    def run(with_state: bool, offset_kpa: float) -> Controller:
        emu = Running(seed=0, initial_soc=0.9)
        if offset_kpa:
            with BoardClient(emu.path, c_profile, timeout_s=1.0) as probe:
                probe.inject_fault(int(InjectedFault.LOADCELL_OFFSET), 1, offset_kpa)
        saved = load_state(state, pack) if with_state else None
        c = Controller(pack, [emu.path], clock="sim", state_path=state if with_state else None,
                       saved_state=saved)
        try:
            c.open()
            c.run(6.0)
        finally:
            c.close()
            emu.stop()
        return c

    c_profile = load_board("emu-23")
    first = run(True, 0.0)
    assert first.stacks[0].baseline.shares is not None
    doc = json.loads(state.read_text())
    assert doc["stacks"][0]["load_cell_shares"] == pytest.approx(
        first.stacks[0].baseline.shares)
    fresh = run(False, 100.0)  # no state: the offset is taken as the fixture's
    assert fresh.table.get(FaultCode.LOAD_CELL_IMBALANCE, Severity.WARNING, 0) is None
    kept = run(True, 100.0)    # the commissioning baseline: the offset is a change
    assert kept.stacks[0].baseline.restored
    rec = kept.table.get(FaultCode.LOAD_CELL_IMBALANCE, Severity.WARNING, 0)
    assert rec is not None and rec.first_time_s <= 2.0 + 0.2 + 1e-9
