"""bms campaign's report and engine paths the small campaigns of test_campaign.py do not take:
a bench case (bms/app/latency.py's scripted scenario as a campaign run) and its latency table,
the per-seed table (the leak sweep's), false alarms and SOC groups in the report and its plots,
progress lines with an ETA, a torn result file run again, --retry-failed, a pack override
loaded before anything runs, a run killed at its timeout."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bms.app.campaign.engine import result_path, run_campaign
from bms.app.campaign.executors import LocalPool
from bms.app.campaign.report import (
    markdown,
    per_seed_table,
    plots,
    summarise,
    write_report,
    write_table,
)
from bms.app.campaign.runner import run_task
from bms.app.campaign.spec import SpecError, load_spec

BENCH = """\
schema: ssb-bms/campaign/1
name: bench
duration_s: 60
timeout_s: 120
scenarios: [udds]
seeds: [1]
faults:
  - {name: reboot, bench: board reset}
"""

SMALL = """\
schema: ssb-bms/campaign/1
name: small
duration_s: 3
timeout_s: 120
scenarios: [udds]
seeds: [1, 2]
overrides: {controller: {measurement_timeout_s: 0.6}}
"""


def _spec(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _row(seed: int, fault: str, **kw: object) -> dict[str, object]:
    """A result row as runner.score writes it (the columns the report reads)."""
    row: dict[str, object] = {
        "key": f"{seed}-{fault}", "scenario": "charge-drive", "seed": seed, "fault": fault,
        "injected": "" if fault == "none" else "CELL_SOFT_SHORT", "soc_error": 0.2,
        "ambient_c": 25.0, "duration_s": 3600.0, "status": "ok", "sim_s": 3600.0,
        "soc_rmse_pct": 0.8 + 0.01 * seed, "soc_max_err_pct": 1.7, "soc_cover_3sigma_pct": 99.5,
        "detected": None if fault == "none" else True, "detected_by": "" if fault == "none"
        else "CELL_LEAK", "latency_s": None if fault == "none" else 200.0 + seed,
        "fault_latency_s": None if fault == "none" else 380.0 + seed,
        "bound_s": None, "also_raised": "", "false_warnings": 0, "false_faults": 0,
        "false_warning_codes": "{}", "false_fault_codes": "{}", "wall_s": 10.0}
    row.update(kw)
    return row


def test_bench_case_runs_the_latency_scenario_and_the_report_has_its_table(
        tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, BENCH))
    assert spec.runs[0].fault is not None and spec.runs[0].fault.fault == ""
    out = tmp_path / "out"
    pool = LocalPool(1)
    try:
        done = run_campaign(spec, out, pool, progress=None)
    finally:
        pool.shutdown()
    (row,) = done.rows
    assert row["status"] == "ok", row["error"] + row["traceback"]
    assert (row["scenario"], row["injected"]) == ("bench", "bench: board reset")
    # a step with no debounce: the open command 2 ticks after the injection, its bound
    assert row["detected_by"] == "BOARD_RESET"
    assert row["latency_s"] == pytest.approx(0.2) and row["bound_s"] == pytest.approx(0.2)
    result = json.loads(row["bench"])
    assert result["reset_accepted"] and result["reclosed"] and result["opened_by"] == [
        "BOARD_RESET"]
    write_table(done.rows, out)
    assert pq.read_table(out / "results.parquet").column("bench")[0].as_py() == row["bench"]
    write_report(spec.name, done.rows, {}, out, done.wall_s, 1)
    text = (out / "report.md").read_text()
    assert "## Detection latency (bench cases)" in text
    assert "| `board reset` | REBOOT | 0 | 0.20 | injection | 0.20 | 0.20 | 0.20 | " \
           "BOARD_RESET |" in text


def test_per_seed_table_and_false_alarms_in_the_report(tmp_path: Path) -> None:
    rows = [_row(1, "none"), _row(1, "short"),
            _row(2, "none", false_warnings=2, false_warning_codes='{"CELL_LEAK": 2}',
                 false_faults=1, false_fault_codes='{"CELL_LEAK": 1}'),
            _row(2, "short", detected=False, detected_by="", latency_s=None,
                 fault_latency_s=None),
            _row(3, "none", soc_error=None),
            _row(4, "none", status="error", error="RuntimeError: boom | pipe",
                 soc_rmse_pct=None)]
    table = per_seed_table(rows).splitlines()
    assert table[0].startswith("| seed | start | ambient C | SOC RMSE % |")
    assert table[2] == "| 1 | +0.20 | 25 | 0.81 | 1.70 | 99.5 | none | 201.0 / 381.0, " \
                       "CELL_LEAK |"
    assert table[3] == "| 2 | +0.20 | 25 | 0.82 | 1.70 | 99.5 | CELL_LEAK x1 | missed |"
    assert table[4].startswith("| 3 | OCV | 25 | 0.83 |") and table[4].endswith("| - |")
    assert len(table) == 5  # the failed run has no line
    s = summarise(rows, {"short": 1800.0})
    assert (s["ok"], s["errors"], s["false_faults"], s["false_warnings"]) == (5, 1, 1, 2)
    # fault-free time: 3 healthy hours + 2 x 1800 s before the injections
    assert s["false_free_h"] == pytest.approx(4.0)
    assert s["false_codes"] == {"CELL_LEAK": {"warning": 2, "fault": 1}}
    made = plots(s, tmp_path)
    assert made == ["detection.png", "false_alarms.png", "soc_error.png"]
    assert all((tmp_path / p).stat().st_size > 1000 for p in made)
    text = markdown("leak", s, rows, 12.0, 2, made, ("per_seed",))
    assert "| CELL_LEAK | 2 | 1 | 0.750 |" in text  # 3 false alarms in 4 fault-free hours
    assert "| short | CELL_SOFT_SHORT | 2 | 1/2 | CELL_LEAK | 201.00 / 201.00 / 201.00 |" in text
    assert "| OCV start | 25 | 1 | 0.83 / 0.83 / 0.83 | 1.70 | 99.5 |" in text
    assert "## Per seed" in text and "RuntimeError: boom / pipe" in text
    assert "## Detection latency" not in text  # no bench case
    assert "## Per seed" not in markdown("leak", s, rows, 12.0, 2, made)


def test_progress_torn_result_retry_failed_and_overrides(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, SMALL))
    out = tmp_path / "out"
    progress = io.StringIO()
    pool = LocalPool(2)
    try:
        first = run_campaign(spec, out, pool, progress=progress)
    finally:
        pool.shutdown()
    assert [r["status"] for r in first.rows] == ["ok", "ok"]
    # the pack with the overrides was written and loaded before anything ran
    assert "measurement_timeout_s: 0.6" in (out / "pack-overrides.yaml").read_text()
    lines = progress.getvalue().splitlines()
    assert lines[0].startswith("bms campaign small: 2 run(s), 0 done before, 2 to run on "
                               "local (2 worker(s))")
    assert lines[-1].startswith("[2/2] udds seed ") and "ETA 0:00:00" in lines[-1]
    # A result torn by a kill runs again; a failed one runs again only with retry_failed.
    result_path(out, spec.runs[0].key).write_text("{\"key\": ", encoding="utf-8")
    failed = {**first.rows[1], "status": "error", "error": "lost"}
    result_path(out, spec.runs[1].key).write_text(json.dumps(failed), encoding="utf-8")
    pool = LocalPool(2)
    try:
        again = run_campaign(spec, out, pool, progress=None)
        assert (again.ran, again.skipped) == (1, 1)
        assert again.rows[1]["error"] == "lost"
        retried = run_campaign(spec, out, pool, progress=None, retry_failed=True)
    finally:
        pool.shutdown()
    assert (retried.ran, retried.skipped) == (1, 1)
    assert [r["status"] for r in retried.rows] == ["ok", "ok"]
    # the same run gives the same scores each time
    assert retried.rows[1]["soc_rmse_pct"] == first.rows[1]["soc_rmse_pct"]


def test_a_run_over_its_timeout_is_killed_and_recorded(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, SMALL))
    row = run_task(spec.runs[0].as_dict(), spec.runs[0].key, str(tmp_path), 0.05, False)
    assert row["status"] == "timeout" and row["error"] == "no result after 0.05 s wall: killed"
    assert row["seed"] == 1 and row["key"] == spec.runs[0].key
    assert not (tmp_path / "runs" / spec.runs[0].key).exists()  # its folder removed


@pytest.mark.parametrize("line, says", [
    ("  - {name: reboot, bench: board rest}\n",
     "faults[0].bench: 'board rest' is not a bench case of bms.app.latency; did you mean "
     "'board reset'?"),
    ("  - {name: reboot, bench: board reset, target: 3}\n",
     "faults[0].target: a bench case takes only name and bench"),
    ("  - {name: reboot, bench: 7}\n", "faults[0].bench: 7 is not a bench case name"),
])
def test_bench_spec_errors(tmp_path: Path, line: str, says: str) -> None:
    text = BENCH.replace("  - {name: reboot, bench: board reset}\n", line)
    with pytest.raises(SpecError) as err:
        load_spec(_spec(tmp_path, text))
    assert says in str(err.value)


@pytest.mark.parametrize("tables, says", [
    ("[per-seed]", "tables[0]: 'per-seed' is not a report table; did you mean 'per_seed'?"),
    ("per_seed", "tables: 'per_seed' is not a list"),
])
def test_tables_errors(tmp_path: Path, tables: str, says: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(_spec(tmp_path, SMALL + f"tables: {tables}\n"))
    assert says in str(err.value)
