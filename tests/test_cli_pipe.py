"""A command whose reader closes the pipe early (`bms check | head -1`) ends quietly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BMS = Path(sys.executable).with_name("bms")


def test_closed_stdout_is_not_a_traceback() -> None:
    p = subprocess.Popen([str(BMS), "check", "--pack", "ssb-4x23"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.readline()
    p.stdout.close()  # the reader goes away, as head does after its first line
    err = p.stderr.read().decode()
    assert p.wait(timeout=30) == 0, err
    assert "Traceback" not in err, err
