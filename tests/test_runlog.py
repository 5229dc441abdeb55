"""Run log: round trip, torn lines, a real SIGKILL, a real full device (/dev/full)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bms.runlog import (
    EVENTS,
    SUMMARY,
    TICKS,
    RunLog,
    TickRow,
    load_events,
    load_tick_columns,
    load_ticks,
    standard_columns,
)

REPO = Path(__file__).resolve().parents[1]


def test_standard_columns() -> None:
    cols = standard_columns(23, 6, 4)
    assert cols[:3] == ["time_s", "state", "current_a"]
    assert "cell01_voltage_v" in cols and "cell23_soc_sigma" in cols and "t06_c" in cols
    assert "pressure_lc04_kpa" in cols and "pressure_expected_kpa" in cols
    assert "balance_mask" in cols and len(set(cols)) == len(cols)
    cols4 = standard_columns(92, 24, 16, n_stacks=4)
    assert "cell92_voltage_v" in cols4 and "balance_mask_s4" in cols4
    assert "pressure_expected_s3_kpa" in cols4 and len(set(cols4)) == len(cols4)
    assert "cell001_voltage_v" in standard_columns(128, 1, 1)
    # the dendrite-safe (CCD) charge limit per stack, before the pack's limits
    assert cols.index("ccd_limit_a") == cols.index("charge_limit_a") - 1
    assert [c for c in cols4 if c.startswith("ccd_limit")] == [
        f"ccd_limit_s{k}_a" for k in range(1, 5)]


@pytest.mark.parametrize("load_cells", [[4], [4, 0, 3]], ids=["one stack", "three stacks"])
def test_tick_row_segments_follow_standard_columns(load_cells: list[int]) -> None:
    """The controller's TickRow puts each value in its standard_columns column."""
    n_st, n_cells, n_th = len(load_cells), 5, 2
    cols = standard_columns(n_cells, n_th, sum(load_cells), n_st)
    row = TickRow(load_cells)
    sfx = (lambda k: "") if n_st == 1 else (lambda k: f"_s{k + 1}")
    for k, m in enumerate(load_cells):
        row.set_stack(k, 1.0 + k, np.full(m, 1000.0 + k), 1100.0 + k, -5.0 - k, 7.5 + k)
    cells = [np.full(n_cells, 3.7), np.full(n_cells, 0.5), np.full(n_cells, 0.01),
             np.full(n_cells, 0.0), np.full(n_th, 25.0)]
    segs = row.fill(12.5, 2, 3.0, 85.0, 84.9, cells, 9.5, 15.0, 7, np.arange(n_st) + 1.0, 1,
                    1e-4)
    values = dict(zip(cols, np.concatenate(segs), strict=True))
    assert values["time_s"] == 12.5 and values["charge_limit_a"] == 9.5
    assert values["discharge_limit_a"] == 15.0 and values["outputs"] == 7
    assert values["faults_active"] == 1 and values["tick_duration_s"] == 1e-4
    for k in range(n_st):
        assert values[f"ccd_limit{sfx(k)}_a"] == 7.5 + k
        assert values[f"pressure_expected{sfx(k)}_kpa"] == 1100.0 + k
        assert values[f"pressure_residual{sfx(k)}_kpa"] == -5.0 - k
        assert values[f"balance_mask{sfx(k)}"] == k + 1


def test_round_trip(tmp_path: Path) -> None:
    cols = ["time_s", "state", "cell01_voltage_v", "note", "balance_mask"]
    log = RunLog(tmp_path / "run", cols, meta={"pack": "ssb-23", "seed": np.int64(7)})
    assert log.row([0.0, 0, 3.8001, "ok", np.uint32(0)])
    assert log.row({"time_s": 0.1, "state": 2, "cell01_voltage_v": math.nan, "note": "a,b\nc"})
    assert log.row(np.array([0.2, 2.0, 4.2, 0.0, 8.0], dtype=object))
    log.event({"type": "fault", "time_s": 0.1, "value": math.nan, "arr": np.array([1.0, np.inf])})
    with pytest.raises(ValueError):
        log.row([1.0, 2.0])
    summary = log.close({"faults": [{"code": 101}]})
    assert summary["rows"] == 3 and summary["dropped_rows"] == 0 and summary["summary_written"]
    assert summary["first_time_s"] == 0.0 and summary["last_time_s"] == 0.2
    on_disk = json.loads((tmp_path / "run" / SUMMARY).read_text())
    assert on_disk["rows"] == 3 and on_disk["faults"] == [{"code": 101}]

    ticks = load_ticks(tmp_path / "run")
    assert list(ticks) == cols
    np.testing.assert_array_equal(ticks["time_s"], [0.0, 0.1, 0.2])
    assert ticks["cell01_voltage_v"][0] == 3.8001 and math.isnan(ticks["cell01_voltage_v"][1])
    assert math.isnan(ticks["balance_mask"][1])  # left out of the mapping: empty field
    assert ticks["note"].dtype.kind == "U" and ticks["note"][1] == "a;b c"
    events = load_events(tmp_path / "run")
    assert events[0] == {"type": "meta", "pack": "ssb-23", "seed": 7}
    assert events[1]["value"] is None and events[1]["arr"] == [1.0, None]
    for line in (tmp_path / "run" / EVENTS).read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))


def test_readers_tolerate_torn_last_line(tmp_path: Path) -> None:
    log = RunLog(tmp_path, ["time_s", "x"])
    for k in range(5):
        log.row([k * 0.1, float(k)])
        log.event({"k": k})
    log.close()
    with open(tmp_path / TICKS, "ab") as f:
        f.write(b"0.5,12")  # a row cut by a crash: no newline
    with open(tmp_path / EVENTS, "ab") as f:
        f.write(b'{"k": 5, "tru')
    assert len(load_ticks(tmp_path)["x"]) == 5
    assert [e["k"] for e in load_events(tmp_path)] == [0, 1, 2, 3, 4]
    # Once completed, that row counts; a short row (wrong field count) is skipped, not fatal.
    with open(tmp_path / TICKS, "ab") as f:
        f.write(b"\n0.6\n0.7,7\n")
    assert list(load_ticks(tmp_path)["x"]) == [0.0, 1.0, 2.0, 3.0, 4.0, 12.0, 7.0]



def test_load_tick_columns_is_load_ticks_for_its_columns(tmp_path: Path) -> None:
    """The campaign's column reader: the same rows and the same floats as load_ticks (any
    float text: %r, %.4f, exponents, nan), a torn last line and a short row skipped; an empty
    or text field in a kept column takes load_ticks's NaN / str, never an error."""
    rng = np.random.default_rng(3)
    cols = ["time_s", "cell01_soc", "cell01_soc_sigma", "cell01_voltage_v", "note"]
    log = RunLog(tmp_path, cols)
    for k in range(300):
        log.row([k * 0.1, float(rng.uniform(0, 1)), float(rng.uniform(0, 1e-2)) * 10 ** -k % 7,
                 math.nan if k == 7 else float(rng.normal(3.7, 0.1)), "a"])
    log.close()
    with open(tmp_path / TICKS, "ab") as f:
        f.write(b"1e3,0.5,1,2\n30.1,0.25,1e-05,3.5,b\n40,0.2")  # short row, good row, torn
    keep = lambda c: c == "time_s" or c.endswith(("_soc", "_soc_sigma"))  # noqa: E731
    full = load_ticks(tmp_path)
    fast = load_tick_columns(tmp_path, keep)
    assert sorted(fast) == ["cell01_soc", "cell01_soc_sigma", "time_s"]
    assert len(fast["time_s"]) == 301 and fast["time_s"][-1] == 30.1
    for c in fast:
        assert fast[c].dtype == full[c].dtype and np.array_equal(fast[c], full[c])
    volts = load_tick_columns(tmp_path, lambda c: c == "cell01_voltage_v")["cell01_voltage_v"]
    assert np.array_equal(volts, full["cell01_voltage_v"], equal_nan=True)
    with open(tmp_path / TICKS, "ab") as f:
        f.write(b"\n40.0,,0.1,3.6,c\n")  # an empty SOC: the load_ticks path, NaN
    fast, full = load_tick_columns(tmp_path, keep), load_ticks(tmp_path)
    assert math.isnan(fast["cell01_soc"][-1]) and len(fast["time_s"]) == 302
    assert all(np.array_equal(fast[c], full[c], equal_nan=True) for c in fast)
    assert list(load_tick_columns(tmp_path, lambda c: c == "note")["note"][-2:]) == ["b", "c"]


def test_truth_reader_is_genfromtxt(tmp_path: Path) -> None:
    """evaluate's truth reader (NumPy's C parser) gives genfromtxt's array for a real
    TruthWriter file, and a torn file still reads as genfromtxt reads it."""
    from bms.app.evaluate import _read_truth
    from hil.emulator.truth import TruthWriter, truth_header

    rng = np.random.default_rng(5)
    n, m = 3, 2
    w = TruthWriter(tmp_path / "truth.csv", n, m, every=3)
    for k in range(90):
        w.write_row_from(lambda k=k: [k * 0.1, *rng.normal(0, 50, 6).tolist(),
                                       *rng.uniform(0, 1, n).tolist(),
                                       *rng.normal(25, 5, n).tolist(),
                                       *rng.normal(3.7, 0.2, n).tolist(),
                                       *rng.normal(300, 30, m).tolist()])
    w.close()
    ref = np.genfromtxt(tmp_path / "truth.csv", delimiter=",", names=True)
    got = _read_truth(tmp_path / "truth.csv")
    assert got.shape == ref.shape == (30,) and got.dtype == ref.dtype
    assert list(got.dtype.names) == truth_header(n, m)
    assert all(np.array_equal(got[c], ref[c]) for c in ref.dtype.names)


_CHILD = r"""
import sys
from bms.runlog import RunLog, standard_columns
cols = standard_columns(23, 6, 4)
log = RunLog(sys.argv[1], cols, meta={"child": True})
row = [0.0] * len(cols)
k = 0
while True:
    row[0] = k * 0.01
    row[5] = 3.7 + (k % 100) * 1e-4
    log.row(row)
    if k % 10 == 0:
        log.event({"type": "tick", "k": k})
    k += 1
    sys.stdout.write(f"{k}\n")
    sys.stdout.flush()
"""


def test_sigkill_leaves_a_readable_log(tmp_path: Path) -> None:
    """A real process writes rows until we kill -9 it after it reported N written rows."""
    n_target = 500
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "run")],
                            stdout=subprocess.PIPE, env=env, cwd=REPO)
    try:
        reported = 0
        assert proc.stdout is not None
        for line in proc.stdout:  # blocks on the pipe: no sleeping, no polling
            reported = int(line)
            if reported >= n_target:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ticks = load_ticks(tmp_path / "run")
    n = len(ticks["time_s"])
    assert n >= reported >= n_target
    # Every row read back is complete and in order.
    np.testing.assert_allclose(ticks["time_s"], np.arange(n) * 0.01, atol=1e-9)
    assert not np.isnan(ticks["cell01_voltage_v"]).any()
    events = load_events(tmp_path / "run")
    assert events[0]["type"] == "meta" and len(events) >= 1 + n_target // 10
    assert not (tmp_path / "run" / SUMMARY).exists()  # killed: no summary, but rows are there


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs the /dev/full device")
def test_disk_full_ticks_dropped_and_reported(tmp_path: Path) -> None:
    """ticks.csv on /dev/full (every write fails with ENOSPC): the controller keeps going."""
    run = tmp_path / "run"
    run.mkdir()
    (run / TICKS).symlink_to("/dev/full")
    log = RunLog(run, ["time_s", "v"])
    results = [log.row([k * 0.1, 3.7]) for k in range(50)]
    assert results == [False] * 50
    summary = log.close()
    assert summary["dropped_rows"] == 50 and summary["rows"] == 0
    assert "ENOSPC" in summary["ticks_error"]
    events = load_events(run)
    dropping = [e for e in events if e.get("event") == "rows_dropping"]
    assert len(dropping) == 1 and "ENOSPC" in dropping[0]["error"]
    assert json.loads((run / SUMMARY).read_text())["dropped_rows"] == 50


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs the /dev/full device")
def test_disk_full_everywhere_and_recovery(tmp_path: Path) -> None:
    run = tmp_path / "run"
    log = RunLog(run, ["time_s", "v"])
    assert log.row([0.0, 1.0])
    # The disk fills: point both files at the real /dev/full device for a while.
    full = os.open("/dev/full", os.O_WRONLY)
    good_ticks, good_events = log.ticks.fd, log.events.fd
    log.ticks.fd, log.events.fd = full, full
    for k in range(1, 11):
        assert log.row([k * 0.1, 1.0]) is False
        assert log.event({"k": k}) is False
    log.ticks.fd, log.events.fd = good_ticks, good_events
    os.close(full)
    assert log.row([1.1, 2.0])
    summary = log.close()
    assert summary["dropped_rows"] == 10 and summary["rows"] == 2
    assert summary["dropped_events"] == 11  # 10 + the "rows_dropping" notice itself
    events = load_events(run)
    recovered = [e for e in events if e.get("event") == "rows_recovered"]
    assert recovered == [{"type": "log", "event": "rows_recovered", "time_s": 1.1,
                          "dropped_rows": 10}]
    np.testing.assert_array_equal(load_ticks(run)["time_s"], [0.0, 1.1])


def test_summary_write_failure_is_reported_not_raised(tmp_path: Path) -> None:
    run = tmp_path / "run"
    log = RunLog(run, ["time_s"])
    log.row([0.0])
    # A full disk is survived now (summary.reserve, tests/test_cli_errors.py): a temp path
    # that cannot be a file makes the write fail for good.
    (run / (SUMMARY + ".tmp")).mkdir()
    summary = log.close()
    assert summary["summary_written"] is False and summary["rows"] == 1
    assert "EISDIR" in summary["summary_error"]


def test_row_cost(benchmark, tmp_path: Path) -> None:
    """Cost of one 92-cell row (430 columns): measured, not asserted."""
    cols = standard_columns(92, 24, 16, n_stacks=4)
    log = RunLog(tmp_path, cols)
    row = np.random.default_rng(1).normal(size=len(cols))
    benchmark(log.row, row)
    log.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs the /dev/full device")
def test_header_retried_after_full_disk_at_start(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / TICKS).symlink_to("/dev/full")
    log = RunLog(run, ["time_s", "v"])
    assert log.row([0.0, 1.0]) is False
    # Space comes back (here: the descriptor now points at a real, empty file).
    real = run / "ticks-real.csv"
    fd = os.open(real, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.close(log.ticks.fd)
    log.ticks.fd, log.ticks.size = fd, 0
    assert log.row([0.1, 2.0]) is True
    summary = log.close()
    assert summary["dropped_rows"] == 1 and summary["rows"] == 1
    ticks = load_ticks(real)
    assert list(ticks) == ["time_s", "v"] and list(ticks["v"]) == [2.0]


def test_row_array_rounds_to_the_column_resolution(tmp_path) -> None:
    """The controller's fast path: fixed point per column unit (row() keeps %.10g)."""
    cols = ["time_s", "a_v", "b_kpa", "state", "odd_unit"]
    values = np.array([1.5, 3.7000004, np.nan, 2.0, 1.23456789012345])
    with RunLog(tmp_path / "slow", cols) as slow:
        slow.row(values.tolist())
    with RunLog(tmp_path / "fast", cols) as fast:
        assert fast.row_array(values)
        with pytest.raises(ValueError):
            fast.row_array(values[:3])
    assert (tmp_path / "slow" / "ticks.csv").read_bytes().splitlines()[1] == \
        b"1.5,3.7000004,nan,2,1.23456789"
    assert (tmp_path / "fast" / "ticks.csv").read_bytes().splitlines()[1] == \
        b"1.5,3.7,nan,2,1.23456789"  # 6 decimals on volts; unknown unit: %.10g
    ticks = load_ticks(tmp_path / "fast")
    assert ticks["a_v"][0] == pytest.approx(3.7000004, abs=0.5e-6)
    assert np.isnan(ticks["b_kpa"][0])


def test_format_tick_rebinds_on_a_changed_segment_only(tmp_path: Path) -> None:
    """The row's pointers are kept while its segments stay (TickRow.version); a replaced
    array (set_stack, set_cells) or a format_segments call in between binds them again."""
    cols = standard_columns(4, 2, 2, 1)
    log = RunLog(tmp_path, cols)
    row = TickRow([2])
    cells = [np.arange(4.0), np.ones(4), np.full(4, 0.1), np.zeros(4), np.array([25.0, 26.0])]
    masks = np.zeros(1, dtype=np.uint32)
    row.set_stack(0, 1.0, np.array([1.0, 2.0]), 3.0, 4.0)

    def line() -> str:
        log.row_tick(row, 0.0, 2, 1.0, 3.0, 3.0, cells, 1.0, 1.0, 3, masks, 0, 0.001)
        assert log._formatter is not None
        return bytes(log._formatter.format_tick(row, 0.0, 2, 1.0, 3.0, 3.0, 1.0, 1.0, 3, masks,
                                                0, 0.001)).decode()

    first = line()
    version = row.version
    assert line() == first and row.version == version  # same arrays: nothing rebound
    row.set_stack(0, 1.0, np.array([7.0, 8.0]), 3.0, 4.0)
    assert row.version == version + 1 and ",7,8," in line()
    cells[0] = np.full(4, 3.5)
    assert line().startswith("0,2,1,3,3,3.5,3.5,3.5,3.5,")
    log._formatter.format_segments([np.zeros(len(cols))])
    assert line().startswith("0,2,1,3,3,3.5,")  # bound to the row again
    log.close()
