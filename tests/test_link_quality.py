"""LINK_FRAME_ERRORS (bms/link_quality.py, docs/safety.md "Link frame errors"): the real
controller, client and decoder over an ``emu://`` board in the sim clock with the emulator's
LINK_CORRUPT for 5 s (the retries recover the data, the wire's fault is still raised, then
cleared once the window is clean); a clean link raises nothing; one or two noise hits never
raise; the campaign scores a corrupt link by it."""

from __future__ import annotations

from pathlib import Path

import pytest
from emu_runs import run_ssb23, udds

from bms.app.campaign.runner import expected_codes, score
from bms.app.campaign.spec import FaultSpec, RunSpec
from bms.controller import Controller
from bms.faults import FaultCode, FaultTable, Severity
from bms.link_quality import LinkQuality, LinkQualityConfig
from bms.tuning import LINK_QUALITY

AT_S, CLEAR_S = 5.0, 10.0


def _run(tmp_path: Path, corrupt: bool, duration_s: float) -> tuple[Controller, dict]:
    # 0.2 % of the reply bytes flipped: ~1 in 6 MEASUREMENT frames (the faults campaign's case)
    faults = [{"at_s": AT_S, "fault": "LINK_CORRUPT", "target": 255, "value": 0.002},
              {"at_s": CLEAR_S, "fault": "LINK_CORRUPT", "target": 255,
               "clear": True}] if corrupt else []
    return run_ssb23(udds(tmp_path, faults), seed=10, duration_s=duration_s,
                     log_dir=tmp_path / "log")


def _records(c: Controller) -> list:
    return [r for r in c.table.records() if r.code == FaultCode.LINK_FRAME_ERRORS]


def test_a_corrupting_wire_is_raised_even_when_the_retries_save_the_data(tmp_path: Path
                                                                        ) -> None:
    c, summary = _run(tmp_path, corrupt=True, duration_s=25.0)
    (rec,) = _records(c)
    assert rec.severity == Severity.WARNING and rec.stack == 0
    assert AT_S < rec.first_time_s <= CLEAR_S + 0.2
    assert rec.trigger_value is not None and rec.trigger_value >= LINK_QUALITY.errors
    # cleared once the window holds fewer than the threshold (the wire clean again)
    assert not rec.active and rec.cleared_time_s is not None
    assert rec.cleared_time_s <= CLEAR_S + LINK_QUALITY.window_s + 0.5
    assert c.link_quality.total(0) >= LINK_QUALITY.errors
    assert c.contactors.state.name == "CLOSED"  # a warning only
    # the campaign scores the corrupt link by it (DEFAULT_EXPECT)
    fault = FaultSpec(name="link-corrupt", fault="LINK_CORRUPT", value=0.002, at_s=AT_S,
                      clear_at_s=CLEAR_S)
    assert expected_codes(fault) == ("LINK_FRAME_ERRORS",)
    run = RunSpec(pack="ssb-23", overrides="{}", scenario="udds", seed=10, fault=fault,
                  soc_error=None, ambient_c=25.0, duration_s=25.0)
    summary["state"] = c.contactors.state.name
    row = score(run, {"soc": {}}, summary, tmp_path / "log")
    assert row["detected"] is True and row["detected_by"] == "LINK_FRAME_ERRORS"
    assert row["latency_s"] == pytest.approx(rec.first_time_s - AT_S)
    assert row["false_warnings"] == 0 and row["false_faults"] == 0


def test_a_clean_link_raises_nothing(tmp_path: Path) -> None:
    c, _ = _run(tmp_path, corrupt=False, duration_s=15.0)
    assert not _records(c)
    assert c.link_quality.total(0) == 0


def test_one_or_two_noise_hits_never_raise_three_in_the_window_do() -> None:
    lq, table = LinkQuality(2, LINK_QUALITY), FaultTable()
    count = [0, 0]
    t = 0.0
    for hit_s in (1.0, 12.0, 24.0, 36.0):  # one hit every 12 s on board 0: never 3 in 10 s
        while t < hit_s:
            lq.step(t, list(count), table)
            t = round(t + 0.1, 6)
        count[0] += 1
    lq.step(t, list(count), table)
    count[0] += 1  # two in one tick
    lq.step(round(t + 0.1, 6), list(count), table)
    assert not table.records()
    count[1] += 3  # board 1: three at once
    lq.step(round(t + 0.2, 6), list(count), table)
    (rec,) = table.records()
    assert rec.stack == 1 and rec.active
    lq.step(round(t + 0.2 + LINK_QUALITY.window_s, 6), list(count), table)
    assert not rec.active


def test_a_reopened_port_restarts_the_count() -> None:
    lq, table = LinkQuality(1, LinkQualityConfig(errors=3, window_s=10.0)), FaultTable()
    lq.step(0.0, [7], table)  # what the link had before the check started: not new
    lq.step(0.1, [None], table)  # no link (reconnecting)
    lq.step(0.2, [0], table)  # a new decoder counts from 0
    lq.step(0.3, [2], table)
    assert not table.records() and lq.total(0) == 2
    with pytest.raises(ValueError, match="one noise hit"):
        LinkQuality(1, LinkQualityConfig(errors=1, window_s=10.0))
