"""tools/tick_steps.py: the per-step CPU timer of the sim tick over emu:// (run as a script)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "tick_steps.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          timeout=120)


def test_steps_nest_and_every_step_is_timed() -> None:
    r = _run("--pack", "ssb-23", "--duration", "3", "--repeat", "1", "--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    steps = rec["steps_us_per_tick"]
    for name in ("tick", "_sample", "_receive", "_collect", "_protect", "_contactors",
                 "_balance_and_derate", "_command", "_record", "boards_feed"):
        assert steps[name] > 0.0, name
    # a step's timer holds the timers of the steps it calls
    assert steps["tick"] >= steps["_sample"] + steps["_record"]
    assert steps["_sample"] >= steps["_receive"] >= steps["_collect"]
    assert steps["process_cpu"] >= steps["tick"]
    assert rec["plain_cpu_us_per_tick"] > 0.0 and rec["overhead_us"] > 0.0


def test_unknown_pack_is_one_line() -> None:
    r = _run("--pack", "no-such-pack", "--duration", "1", "--repeat", "1")
    assert r.returncode == 2
    assert r.stderr.startswith("tools/tick_steps.py: --pack no-such-pack:")
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
