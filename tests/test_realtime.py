"""bms.realtime: SCHED_FIFO when permitted, a clear refusal otherwise; run in a child process
so that the test session keeps its own scheduling."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import os
from bms.realtime import current_policy, request_realtime
before = current_policy()
outcome = request_realtime(10)
print(before); print(outcome); print(current_policy())
"""


def test_request_realtime_reports_what_is_in_force() -> None:
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    before, outcome, after = r.stdout.splitlines()
    assert before == "default (time sharing)"
    if outcome.startswith("SCHED_FIFO priority"):
        assert outcome == "SCHED_FIFO priority 10" and after == outcome
    else:
        assert "refused" in outcome or "unavailable" in outcome
        assert after == before
