"""tools/compare_runs.py: the no-behaviour-change proof tool (run as a script, as a user would)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "compare_runs.py"


def _run_dir(d: Path, rows: list[str], events: list[dict]) -> Path:
    d.mkdir()
    (d / "ticks.csv").write_text("time_s,soc,tick_duration_s\n" + "".join(r + "\n" for r in rows))
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return d


def _compare(a: Path, b: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), str(a), str(b)], capture_output=True,
                          text=True)


def test_timing_and_volatile_keys_are_ignored(tmp_path: Path) -> None:
    a = _run_dir(tmp_path / "a", ["0.1,0.5,0.0001"], [{"type": "meta", "pack_file": "/x"}])
    b = _run_dir(tmp_path / "b", ["0.1,0.5,0.0009"], [{"type": "meta", "pack_file": "/y"}])
    r = _compare(a, b)
    assert r.returncode == 0 and r.stdout.startswith("identical"), r.stdout


def test_a_changed_value_is_named(tmp_path: Path) -> None:
    a = _run_dir(tmp_path / "a", ["0.1,0.5,0", "0.2,0.5,0"], [{"type": "fault", "code": 1}])
    b = _run_dir(tmp_path / "b", ["0.1,0.5,0", "0.2,0.6,0"], [{"type": "fault", "code": 2}])
    r = _compare(a, b)
    assert r.returncode == 1
    assert "ticks.csv: line 3 differs first in soc" in r.stdout
    assert "events.jsonl: event 1 differs" in r.stdout
