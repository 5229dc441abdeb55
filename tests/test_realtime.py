"""bms.app.realtime: SCHED_FIFO when permitted, a clear refusal otherwise; run in a child process
so that the test session keeps its own scheduling."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import os
from bms.app.realtime import current_policy, request_realtime
before = current_policy()
outcome = request_realtime(10)
print(before); print(outcome); print(current_policy())
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmLck")))
"""


def test_request_realtime_reports_what_is_in_force() -> None:
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    before, outcome, after, locked_kb = r.stdout.splitlines()
    assert before == "default (time sharing)"
    if outcome.startswith("SCHED_FIFO priority"):
        policy, memory = outcome.split("; ")
        assert policy == "SCHED_FIFO priority 10" and after == policy
        # locked where the limit allows it, and then really (the kernel counts the pages)
        assert memory == "memory locked" or memory.startswith("memory not locked (")
        assert (int(locked_kb) > 1000) == (memory == "memory locked")
    else:
        assert "refused" in outcome or "unavailable" in outcome
        assert after == before
