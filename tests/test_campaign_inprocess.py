"""The campaign runner's child work in this process (``runner.main``): what the fork server's
children run, where coverage does not follow them. One short faulted run and one bench case
of the shipped specs, their result rows as the campaign table holds them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bms.app.campaign import runner
from bms.app.campaign.spec import load_spec


def _row(run, tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> dict:
    (tmp_path / "run.json").write_text(json.dumps(run.as_dict()), encoding="utf-8")
    assert runner.main([str(tmp_path / "run.json"), *flags]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(runner.RESULT_MARK)
    return json.loads(line[len(runner.RESULT_MARK):])


def test_a_faulted_run_is_detected_and_scored(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    spec = load_spec("faults", quick=True)
    run = next(r for r in spec.runs if r.fault is not None and r.fault.name == "current-offset")
    # injected at 60 s, raised 1.2 s later; the SOC scored after its settling window
    run = dataclasses.replace(run, duration_s=700.0)
    row = _row(run, tmp_path, capsys, runner.NO_TICKS)
    assert row["status"] == "ok", row.get("error")
    assert row["detected"] and row["detected_by"] == "CURRENT_SENSOR_OFFSET"
    assert 0.0 < row["latency_s"] < 5.0
    assert row["false_faults"] == 0
    assert row["soc_rmse_pct"] is not None and row["soc_rmse_pct"] > 1.0  # not corrected
    # without the log kept: the header only, the score from the kept columns
    ticks = tmp_path / "log" / "ticks.csv"
    assert not ticks.exists() or len(ticks.read_text().splitlines()) <= 1


def test_a_bench_case_and_a_broken_run(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    spec = load_spec("latency")
    run = next(r for r in spec.runs if r.fault is not None and r.fault.bench)
    (tmp_path / "a").mkdir()
    row = _row(run, tmp_path / "a", capsys)
    assert row["status"] == "ok", row.get("error")
    assert row["detected"], row
    # a run that cannot be made is its own result (an error row), not an exception
    bad = dataclasses.replace(run, pack="no-such-pack")
    (tmp_path / "b").mkdir()
    row = _row(bad, tmp_path / "b", capsys)
    assert row["status"] == "error" and "no-such-pack" in row["error"]
