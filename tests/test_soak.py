"""The fault-free soak scenario (hil/scenarios/soak.yaml; issue 14 targets: 24 h of ssb-23 and
6 h of ssb-4x23 with 0 warnings and 0 faults, run by hand with ``bms run --scenario soak``,
docs/safety.md has the figures). Here only a smoke: the scenario is drive cycles and charges
looped, and its first simulated minutes raise nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hil.emulator.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def test_soak_scenario_is_drive_cycles_and_charges_looped() -> None:
    sc = load_scenario("soak")
    assert sc.loop
    kinds = [s.kind for s in sc.segments]
    assert "drive" in kinds and "cccv" in kinds
    drive = next(s for s in sc.segments if s.kind == "drive")
    assert drive.repeat >= 2  # UDDS cycles, not a rest-heavy profile


def test_soak_smoke_raises_nothing(tmp_path: Path) -> None:
    log = tmp_path / "soak"
    res = subprocess.run(
        [sys.executable, "-m", "bms", "run", "--pack", "ssb-23", "--scenario", "soak",
         "--duration", "180", "--log", str(log), "--quiet", "--no-monitor", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    summary = json.loads((log / "summary.json").read_text())
    assert summary["run"]["ticks"] >= 1799
    assert summary["run"]["faults"] == [], summary["run"]["faults"]  # no warning, no fault
    assert summary["stop"]["by"] == "duration"
