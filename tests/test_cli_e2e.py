"""The ``bms`` command line end to end, as a user runs it: a log that survives SIGKILL, and an
invalid pack file rejected with one line (exit 3, ExitCode.CONFIG; no traceback)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bms.runlog import EVENTS, SUMMARY, TICKS, load_events, load_ticks

ROOT = Path(__file__).resolve().parents[1]
# Bound on waiting for the run log to fill (a failure bound, not a wait: the loop ends as soon
# as enough rows are there).
FILL_TIMEOUT_S = 60.0
MIN_ROWS = 300


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc): the emulator that ``bms run`` started."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(x) for x in path.read_text().split()]
    except OSError:
        return []


def _data_lines(path: Path) -> int:
    """Complete data rows in ticks.csv: newlines minus the header's."""
    return max(path.read_bytes().count(b"\n") - 1, 0) if path.exists() else 0


def test_run_log_survives_sigkill(tmp_path: Path) -> None:
    log = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bms", "run", "--pack", "ssb-23", "--duration", "3600",
         "--log", str(log), "--no-monitor", "--quiet"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    emulators: list[int] = []
    try:
        deadline = time.monotonic() + FILL_TIMEOUT_S
        rows = 0
        while time.monotonic() < deadline:
            # An awaited wait on the process itself: returns early if it dies.
            try:
                proc.wait(timeout=0.05)
                pytest.fail(f"bms run exited early ({proc.returncode}): "
                            f"{proc.stderr.read().decode() if proc.stderr else ''}")
            except subprocess.TimeoutExpired:
                pass
            rows = _data_lines(log / TICKS)
            if rows >= MIN_ROWS:
                break
        assert rows >= MIN_ROWS, f"only {rows} rows after {FILL_TIMEOUT_S} s"
        emulators = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10.0) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        for pid in emulators:  # the orphaned emulator (started by bms run): by its pid
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    ticks_path = log / TICKS
    raw = ticks_path.read_bytes()
    complete = raw.count(b"\n") - 1
    ticks = load_ticks(log)
    # Every complete row is read (a torn last line, if the kill landed mid-write, is dropped),
    # in order, one per tick from 0.
    assert len(ticks["time_s"]) == complete >= MIN_ROWS
    assert ticks["time_s"] == pytest.approx([0.1 * i for i in range(complete)], abs=1e-6)
    assert ticks["state"][-1] == 2.0                       # CLOSED when killed
    events = load_events(log)
    lines = [ln for ln in (log / EVENTS).read_bytes().split(b"\n")[:-1] if ln.strip()]
    assert len(events) == len(lines) and events[0]["type"] == "meta"
    assert any(e.get("to") == "CLOSED" for e in events)
    assert not (log / SUMMARY).exists()                    # killed: no summary written


BAD_PACKS = {
    # value out of range
    "range": ("schema: ssb-bms/pack/1\nbase: ssb-23\nname: bad\ncontroller:\n  tick_s: -0.1\n"
              "  measurement_timeout_s: 0.5\n", "tick_s"),
    # wrong type
    "type": ("schema: ssb-bms/pack/1\nbase: ssb-23\nname: bad\ncontroller:\n  tick_s: fast\n"
             "  measurement_timeout_s: 0.5\n", "tick_s"),
    # not YAML at all
    "syntax": ("schema: ssb-bms/pack/1\nname: [unclosed\n", ""),
}


@pytest.mark.parametrize("kind", list(BAD_PACKS))
def test_invalid_pack_file_one_line_exit_3(tmp_path: Path, kind: str) -> None:
    text, key = BAD_PACKS[kind]
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    res = subprocess.run(
        [sys.executable, "-m", "bms", "run", "--pack", str(bad), "--duration", "1",
         "--no-monitor", "--quiet", "--log", str(tmp_path / "log")],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    err = res.stderr.strip()
    assert res.returncode == 3, (res.returncode, err)
    assert "Traceback" not in err and "Traceback" not in res.stdout
    assert len(err.splitlines()) == 1, err
    assert str(bad) in err and key in err, err
    assert not (tmp_path / "log").exists()                 # nothing started


def test_missing_pack_file_one_line_exit_3(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    res = subprocess.run(
        [sys.executable, "-m", "bms", "run", "--pack", str(missing), "--no-monitor",
         "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 3, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "nope.yaml" in res.stderr
