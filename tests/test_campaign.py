"""bms campaign (issue 13): the spec, and a small campaign on the local pool with a run that
crashes for real (a fault value the emulator refuses at run time), one that hangs (the board
silent for an hour: every tick waits its reply timeout) and is killed at the run's timeout,
and resume (a campaign started again runs only the runs without a result)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bms.app.campaign.engine import result_path, run_campaign
from bms.app.campaign.executors import LocalPool
from bms.app.campaign.report import write_report, write_table
from bms.app.campaign.spec import SpecError, builtin_names, load_spec

SPEC = """\
schema: ssb-bms/campaign/1
name: robust
duration_s: 20
timeout_s: {timeout}
scenarios: [udds]
seeds: [1]
faults:
  - none
  - {{name: tap-open, fault: VTAP_OPEN, target: 5, at_s: 10, bound_s: 0.2}}
  - {{name: bad-short, fault: CELL_SOFT_SHORT, target: 7, value: 0.0, at_s: 5}}
  - {{name: silent, fault: LINK_SILENCE, value: 3600, at_s: 2}}
"""


def _spec(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_spec_runs_keys_and_seeds(tmp_path: Path) -> None:
    cross = load_spec(_spec(tmp_path, SPEC.format(timeout=60)))
    assert [r.fault_name for r in cross.runs] == ["none", "tap-open", "bad-short", "silent"]
    # An explicit list names the same runs (same keys) in another order, with the same plant
    # seeds: a run's result does not depend on its place in the campaign.
    listed = load_spec(_spec(tmp_path, SPEC.format(timeout=60) + "runs:\n"
                             "  - {fault: silent}\n  - {fault: none, seed: 1}\n", "l.yaml"))
    by_key = {r.key: r for r in cross.runs}
    assert [r.key in by_key for r in listed.runs] == [True, True]
    assert listed.runs[0].plant_seed == by_key[listed.runs[0].key].plant_seed
    # The healthy and the faulted run of one seed have the same plant; another seed another.
    assert len({r.plant_seed for r in cross.runs}) == 1
    other = load_spec(_spec(tmp_path, SPEC.format(timeout=60).replace("seeds: [1]",
                                                                       "seeds: [2]"), "o.yaml"))
    assert other.runs[0].plant_seed != cross.runs[0].plant_seed
    assert sorted(builtin_names()) == ["estimation", "faults", "latency", "leak", "reliability"]
    for name in builtin_names():
        assert len(load_spec(name, quick=True).runs) < len(load_spec(name).runs)


@pytest.mark.parametrize("edit, says", [
    (("seeds: [1]", "seed: [1]"), "seed: unknown key; did you mean 'seeds'?"),
    (("fault: VTAP_OPEN", "fault: VTAP_OPN"), "'VTAP_OPN' is not an emulator fault; did you "
                                              "mean 'VTAP_OPEN'?"),
    (("target: 5, at_s: 10", "target: 5, at: 10"), "faults[1].at: unknown key; did you mean "
                                                    "'at_s'?"),
    (("duration_s: 20", "duration_s: -1"), "duration_s: -1 is not a number in"),
    (("at_s: 10", "at_s: 99"), "faults[1].at_s: 99 is not a number in [0, 20]"),
    (("scenarios: [udds]", "scenarios: [nosuch]"), "'nosuch': no such file and not a shipped"),
])
def test_spec_errors_name_the_key(tmp_path: Path, edit: tuple[str, str], says: str) -> None:
    text = SPEC.format(timeout=60).replace(*edit)
    with pytest.raises(SpecError) as err:
        load_spec(_spec(tmp_path, text))
    assert says in str(err.value)


def test_crash_and_timeout_recorded_and_resume_skips_done(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, SPEC.format(timeout=6)))
    out = tmp_path / "out"
    pool = LocalPool(2)
    try:
        first = run_campaign(spec, out, pool, progress=None)
    finally:
        pool.shutdown()
    rows = {r["fault"]: r for r in first.rows}
    assert (first.ran, first.skipped) == (4, 0)
    assert rows["none"]["status"] == "ok" and rows["none"]["false_faults"] == 0
    assert rows["tap-open"]["status"] == "ok" and rows["tap-open"]["detected"] is True
    assert rows["tap-open"]["detected_by"] == "CELL_VOLTAGE_OPEN_WIRE"
    assert 0.0 <= rows["tap-open"]["latency_s"] <= 0.2
    bad = rows["bad-short"]
    assert bad["status"] == "error" and "CELL_SOFT_SHORT: value 0.0 outside" in bad["error"]
    assert "Traceback" in bad["traceback"]
    assert rows["silent"]["status"] == "timeout" and "after 6 s wall" in rows["silent"]["error"]
    assert not any((out / "runs").iterdir())  # logs not kept without keep_logs
    write_table(first.rows, out)
    s = write_report(spec.name, first.rows, {"tap-open": 10.0}, out, first.wall_s, 2)
    assert (s["errors"], s["timeouts"]) == (1, 1)
    table = pq.read_table(out / "results.parquet")
    assert table.num_rows == 4 and "Failed runs" in (out / "report.md").read_text()

    # Started again: nothing runs. One result removed (an interrupted run): only it runs.
    result_path(out, spec.runs[1].key).unlink()
    pool = LocalPool(2)
    try:
        again = run_campaign(spec, out, pool, progress=None, keep_logs=True)
    finally:
        pool.shutdown()
    assert (again.ran, again.skipped) == (1, 3)
    kept = out / "runs" / spec.runs[1].key
    assert (kept / "log" / "ticks.csv").exists() and (kept / "truth_0.csv").exists()
    # kept: the whole log (a run not kept writes no tick rows: RunLog.discard_ticks)
    rows = json.loads((kept / "log" / "summary.json").read_text())["rows"]
    assert rows >= 200 and len((kept / "log" / "ticks.csv").read_text().splitlines()) == rows + 1
    assert json.loads(result_path(out, spec.runs[1].key).read_text())["detected"] is True


def test_command_writes_table_and_report_and_check_fails_on_a_miss(tmp_path: Path,
                                                                   capsys) -> None:
    from bms.app.cli import main as bms_main
    spec = _spec(tmp_path, """\
schema: ssb-bms/campaign/1
name: cli
duration_s: 10
scenarios: [udds]
seeds: [1]
faults:
  - {name: reboot, fault: REBOOT, at_s: 5, bound_s: 0.2}
  - {name: coolant, fault: COOLANT_LOSS, at_s: 5}
""")
    out = tmp_path / "out"
    code = bms_main(["campaign", str(spec), "--workers", "2", "--out", str(out), "--quiet",
                     "--check"])
    printed = capsys.readouterr().out
    # A coolant loss raises no over-temperature in 10 s (docs/safety.md "Campaigns"): --check
    # says so.
    assert code == 6, printed
    assert "2 runs (2 now, 0 done before): 2 ok" in printed and "faults missed 1" in printed
    report = (out / "report.md").read_text()
    assert "| reboot | REBOOT | 1 | 1/1 | BOARD_RESET |" in report
    assert "| coolant | COOLANT_LOSS | 1 | 0/1 | - |" in report
    assert (out / "detection.png").stat().st_size > 0
    assert len(pq.read_table(out / "results.parquet")) == 2
    assert len((out / "results.csv").read_text().splitlines()) == 3


def test_fault_on_one_stack_of_a_four_stack_pack(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, """\
schema: ssb-bms/campaign/1
name: pack4
pack: ssb-4x23
duration_s: 15
scenarios: [udds]
seeds: [1]
faults:
  - {name: reboot-3, fault: REBOOT, at_s: 5, stack: 2}
  - {name: reboot-8, fault: REBOOT, at_s: 5, stack: 7}
"""))
    out = tmp_path / "out"
    pool = LocalPool(2)
    try:
        rows = {r["fault"]: r for r in run_campaign(spec, out, pool, progress=None,
                                                     keep_logs=True).rows}
    finally:
        pool.shutdown()
    assert rows["reboot-3"]["detected_by"] == "BOARD_RESET"
    log = out / "runs" / spec.runs[0].key / "log"
    from bms.runlog import load_events
    resets = {e.get("stack") for e in load_events(log) if e.get("name") == "BOARD_RESET"}
    assert resets == {2}  # the other three boards ran the scenario without it
    assert rows["reboot-8"]["status"] == "error"
    assert "stack 7 is not a stack of pack ssb-4x23 (0..3)" in rows["reboot-8"]["error"]
