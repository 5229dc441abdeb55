"""The sim clock's batched ticks.csv rows (bms/runlog.py ``batch_rows``): held at most a batch,
written before and right after every event, at ``flush`` and ``close``, and on a full disk
dropped and counted as single rows are; the controller batches in the sim clock only and
leaves every row on disk when ``run`` returns, whatever ended it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bms.controller import Controller
from bms.runlog import TICKS, RunLog, load_events, load_ticks
from boards.config import load_pack
from hil.emulator.protocol_emu import emu_url, register


def _rows_on_disk(run: Path) -> int:
    return (run / TICKS).read_bytes().count(b"\n") - 1


def test_rows_held_up_to_a_batch_and_written_with_every_event(tmp_path: Path) -> None:
    log = RunLog(tmp_path, ["time_s", "v"], batch_rows=10)
    assert log.row([0.0, 1.0])        # the meta-less log's first row: held
    assert _rows_on_disk(tmp_path) == 0
    for k in range(1, 10):
        log.row([0.1 * k, 1.0])
    assert _rows_on_disk(tmp_path) == 10 and log.rows == 10  # the 10th filled the batch
    for k in range(10, 13):
        log.row([0.1 * k, 1.0])
    assert _rows_on_disk(tmp_path) == 10
    log.event({"type": "fault", "time_s": 1.3})  # the rows before it go first ...
    assert _rows_on_disk(tmp_path) == 13
    log.row([1.3, 2.0])                          # ... and its tick's row at once
    assert _rows_on_disk(tmp_path) == 14
    log.row([1.4, 2.0])
    assert _rows_on_disk(tmp_path) == 14
    assert log.flush() and _rows_on_disk(tmp_path) == 15
    log.row([1.5, 2.0])
    summary = log.close()
    assert summary["rows"] == 16 and summary["last_time_s"] == pytest.approx(1.5)
    assert summary["first_time_s"] == 0.0
    np.testing.assert_allclose(load_ticks(tmp_path)["time_s"], [0.1 * k for k in range(16)])


def test_batch_rows_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_rows 0"):
        RunLog(tmp_path, ["time_s"], batch_rows=0)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs the /dev/full device")
def test_a_full_disk_drops_and_counts_whole_batches(tmp_path: Path) -> None:
    log = RunLog(tmp_path, ["time_s", "v"], batch_rows=4)
    for k in range(4):
        log.row([0.1 * k, 1.0])
    full = os.open("/dev/full", os.O_WRONLY)
    good = log.ticks.fd
    log.ticks.fd = full
    for k in range(4, 9):        # the batch of 0.4 .. 0.7 s fails; its event makes the
        log.row([0.1 * k, 1.0])  # next row (0.8 s) go out at once, and fail too
    log.ticks.fd = good
    os.close(full)
    for k in range(9, 13):       # a batch of 0.9 .. 1.2 s written again
        log.row([0.1 * k, 1.0])
    summary = log.close()
    assert summary["dropped_rows"] == 5 and summary["rows"] == 8
    events = load_events(tmp_path)
    dropping = [e for e in events if e.get("event") == "rows_dropping"]
    recovered = [e for e in events if e.get("event") == "rows_recovered"]
    assert [e["time_s"] for e in dropping] == [pytest.approx(0.4)]  # the batch's first row
    assert recovered[0]["time_s"] == pytest.approx(0.9) and recovered[0]["dropped_rows"] == 5
    np.testing.assert_allclose(load_ticks(tmp_path)["time_s"],
                               [0.0, 0.1, 0.2, 0.3, 0.9, 1.0, 1.1, 1.2])


@pytest.mark.parametrize("clock", ["sim", "real"])
def test_controller_batches_in_the_sim_clock_only(tmp_path: Path, clock: str) -> None:
    pack = load_pack("ssb-23")
    if clock == "real":
        c = Controller(pack, ["loop://"], clock="real", log_dir=tmp_path / "log")
        assert c.log is not None and c.log.batch_rows == 1
        c.log.close()
        return
    register()
    c = Controller(pack, [emu_url(pack.path, 0, seed=3, scenario="udds")], clock="sim",
                   log_dir=tmp_path / "log")
    assert c.log is not None and c.log.batch_rows == round(1.0 / c.tick_s)
    c.open()
    c.request_close()
    c.run(2.35)
    # run() returned: every row is on disk before close (24 ticks, not a multiple of 10).
    assert _rows_on_disk(tmp_path / "log") == c.stats.ticks == 24
    c.run(0.5, stop=lambda: c.tick_index >= 27)  # stopped early: flushed too
    assert _rows_on_disk(tmp_path / "log") == 27
    c.close()
    assert _rows_on_disk(tmp_path / "log") == 27


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs the /dev/full device")
def test_kept_columns_with_batches_match_the_file_or_are_none(tmp_path: Path) -> None:
    """RunLog.keep_columns with batched rows: the kept floats are the file's; a batch that
    fails to be written (its rows kept while held) leaves nothing kept rather than rows the
    file lacks."""
    cols = ["time_s", "cell01_voltage_v"]
    log = RunLog(tmp_path / "a", cols, batch_rows=4)
    log.keep_columns(["cell01_voltage_v"])
    for k in range(10):
        log.row_array(np.array([0.1 * k, 3.7 + 1e-7 * k]))
    kept = log.kept_columns()
    log.close()
    assert kept is not None
    np.testing.assert_array_equal(kept["cell01_voltage_v"],
                                  load_ticks(tmp_path / "a")["cell01_voltage_v"])
    log = RunLog(tmp_path / "b", cols, batch_rows=4)
    log.keep_columns(["cell01_voltage_v"])
    full = os.open("/dev/full", os.O_WRONLY)
    good, log.ticks.fd = log.ticks.fd, full
    for k in range(4):  # held, kept, then the batch fails
        log.row_array(np.array([0.1 * k, 3.7]))
    log.ticks.fd = good
    os.close(full)
    assert log.kept_columns() is None
    log.close()
