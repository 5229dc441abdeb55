"""The campaign worker's fork server (bms/app/campaign/forkserver.py) on a run that hangs for
real (the board silent for an hour): killed at its timeout with the server still serving; a
server killed mid-run is reported and replaced; a parent that goes away takes the server and
its running child with it (no orphan left running)."""

from __future__ import annotations

import json
import os
import select
import signal
import time
from pathlib import Path

import pytest

from bms.app.campaign.forkserver import ForkServer, ForkServerError, server, shutdown_all
from bms.app.campaign.spec import load_spec

SPEC = """\
schema: ssb-bms/campaign/1
name: hang
duration_s: 600
scenarios: [udds]
seeds: [1]
faults:
  - {name: silent, fault: LINK_SILENCE, value: 3600, at_s: 0.5}
"""


def _hanging_run(tmp_path: Path) -> list[str]:
    (tmp_path / "s.yaml").write_text(SPEC, encoding="utf-8")
    run = load_spec(tmp_path / "s.yaml").runs[0]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run.as_dict()), encoding="utf-8")
    return [str(path)]


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _gone(pid: int, within_s: float) -> bool:
    """Whether process ``pid`` (not ours to wait for) ends within ``within_s``: its pidfd
    turns readable when it exits (Linux 5.3+)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], within_s)[0])
    finally:
        os.close(fd)


pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc")


def test_timeout_kills_the_child_and_the_server_serves_on(tmp_path: Path,
                                                          monkeypatch) -> None:
    _hanging_run(tmp_path)
    s = ForkServer()
    monkeypatch.chdir(tmp_path)  # after the server started: the child follows the parent
    try:
        t0 = time.monotonic()
        code, timed_out = s.run(["run.json"], str(tmp_path / "o1"), str(tmp_path / "e1"), 2.0)
        assert timed_out and code == -signal.SIGKILL and 2.0 <= time.monotonic() - t0 < 10
        assert s.alive() and not _children(s._proc.pid)
        # the next run of the same server: an error of its own (no such file), recorded
        code, timed_out = s.run([str(tmp_path / "none.json")], str(tmp_path / "o2"),
                                str(tmp_path / "e2"), 30.0)
        assert (code, timed_out) == (1, False)
        assert "FileNotFoundError" in (tmp_path / "e2").read_text()
    finally:
        s.close()
    assert not s.alive()


def test_server_killed_mid_run_is_an_error_and_replaced(tmp_path: Path) -> None:
    argv = _hanging_run(tmp_path)
    first = server()
    try:
        os.kill(first._proc.pid, signal.SIGKILL)
        with pytest.raises(ForkServerError, match="gone|ended"):  # the write or the read
            first.run(argv, str(tmp_path / "o"), str(tmp_path / "e"), 30.0)
        again = server()
        assert again is not first and again.alive()
    finally:
        shutdown_all()


def test_parent_gone_takes_server_and_child(tmp_path: Path) -> None:
    argv = _hanging_run(tmp_path)
    s = ForkServer()
    req = {"argv": argv, "stdout": str(tmp_path / "o"), "stderr": str(tmp_path / "e"),
           "timeout_s": 120.0, "cwd": os.getcwd()}
    assert s._proc.stdin is not None
    s._proc.stdin.write((json.dumps(req) + "\n").encode())
    s._proc.stdin.flush()
    end = time.monotonic() + 20
    while not _children(s._proc.pid) and time.monotonic() < end:
        time.sleep(0.05)
    (child,) = _children(s._proc.pid)
    s._proc.stdin.close()  # as when the worker process ends
    assert _gone(child, 10.0)
    s._proc.wait(timeout=10)
    s.close()
