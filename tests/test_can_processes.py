"""The vehicle side across processes (issue 12 item 1): ``bms run --can`` (a self-started
emulated board, real clock) in one process and ``bms vcu`` in another, on a transport that
needs no root and no kernel module: python-can's ``serial`` backend on two ptys linked by
tools/can_pty_relay.py (loopback inside this machine, no network address), and the same with
python-can's ``slcan`` backend (the Lawicel ASCII protocol of USB-CAN adapters) on both ends.
Where a ``vcan0`` exists the same test runs on ``socketcan`` too (python-can's way: one test,
every backend).
The VCU's frames are checked and decoded here by cantools from the DBC (tests/can_vcu.py), not
by the project's code; the CAN log of the run is read back by python-can's BLF reader.

Real clock (two processes cannot share a simulated one): the bounds in ticks are the sim-clock
tests' (tests/test_can_link.py); here the whole chain is checked: close on the vehicle's
request, VEHICLE_HEARTBEAT_LOST when the VCU goes away, no invalid frame either way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import can
import pytest
from can_vcu import DB, frame_crc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from can_pty_relay import PtyRelay  # noqa: E402

pytestmark = pytest.mark.slow  # real clock, three processes: about 10-15 s

HAS_VCAN = Path("/sys/class/net/vcan0").exists()


@pytest.fixture(params=["serial", "slcan", "socketcan"])
def channels(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """The BMS's and the VCU's INTERFACE:CHANNEL."""
    if request.param == "socketcan":
        if not HAS_VCAN:
            pytest.skip("no vcan0 on this machine (needs `ip link add vcan0 type vcan` as root "
                        "and the vcan kernel module)")
        yield "socketcan:vcan0", "socketcan:vcan0"
        return
    with PtyRelay() as relay:  # serial: python-can's own framing; slcan: the Lawicel ASCII
        yield f"{request.param}:{relay.paths[0]}", f"{request.param}:{relay.paths[1]}"
        assert relay.bytes_dropped == 0


def _bms(*args: str, stdout: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bms", *args], cwd=ROOT, stdout=stdout,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def _vcu_frames(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.startswith('{"t_s"')]


def _wait(what: str, cond: object, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)


def test_bms_run_obeys_bms_vcu_in_another_process(channels: tuple[str, str],
                                                  tmp_path: Path) -> None:
    bms_can, vcu_can = channels
    vcu_out = tmp_path / "vcu.jsonl"
    blf = tmp_path / "can.blf"
    with vcu_out.open("w") as vf:
        vcu = _bms("vcu", vcu_can, "--json", stdout=vf)
        run = _bms("run", "--clock", "real", "--duration", "60", "--can", bms_can, "--can-log",
                   str(blf), "--no-monitor", "--quiet", "--json", "--log", str(tmp_path / "log"),
                   stdout=subprocess.PIPE)
        try:
            def closed() -> bool:
                return any(f["name"] == "BMS_Status" and f["signals"]["BmsState"] == "CLOSED"
                           for f in _vcu_frames(vcu_out))
            _wait("the BMS closed on the VCU's request", closed, 40.0)
            vcu.send_signal(signal.SIGTERM)  # the vehicle goes away: no more heartbeats
            vcu.wait(timeout=10)
            events = tmp_path / "log" / "events.jsonl"
            _wait("the BMS raised the vehicle's loss",
                  lambda: "VEHICLE_HEARTBEAT_LOST" in events.read_text(), 30.0)
            run.send_signal(signal.SIGTERM)
            out, err = run.communicate(timeout=30)
        finally:
            for p in (vcu, run):
                if p.poll() is None:
                    p.kill()
                    p.wait()
    assert run.returncode == 0, err
    assert vcu.returncode == 0, vcu.stderr.read() if vcu.stderr else ""
    summary = json.loads(out[out.index("{"):])
    v = summary["vehicle"]
    assert v["requests"] >= 1 and v["heartbeats"] > 5 and v["heartbeat_lost"]
    assert v["bad_length"] == v["bad_checksum"] == v["bad_counter"] == 0
    assert v["repeated_counter"] == v["bus_errors"] == 0
    lost = [f for f in summary["faults"] if f["name"] == "VEHICLE_HEARTBEAT_LOST"]
    assert lost and lost[0]["latched"] and summary["state"] == "FAULT"
    # Every frame the VCU got, checked and decoded here from the DBC
    frames = _vcu_frames(vcu_out)
    assert len(frames) > 50
    last_counter: dict[int, int] = {}
    for f in frames:
        data = bytes.fromhex(f["data"])
        assert len(data) == 8 and data[0] == frame_crc(f["id"], data)
        sig = DB.get_message_by_frame_id(f["id"]).decode(data, decode_choices=False)
        counter = sig[f"{f['name']}_Counter"]
        if f["id"] in last_counter:
            assert (counter - last_counter[f["id"]]) % 15 == 1, f
        last_counter[f["id"]] = counter
    assert {f["name"] for f in frames} >= {"BMS_Status", "BMS_Pack", "BMS_Limits",
                                           "BMS_CellVoltage", "BMS_Faults"}
    # The CAN log: every frame in and out, readable by python-can, decodable from the DBC
    logged = list(can.BLFReader(str(blf)))
    assert len(logged) == v["rx_frames"] + v["tx_frames"]
    names = {DB.get_message_by_frame_id(m.arbitration_id).name for m in logged}
    assert {"VCU_Heartbeat", "VCU_Request", "BMS_Status"} <= names
    assert os.path.getsize(blf) > 0
