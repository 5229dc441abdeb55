"""The live-view channel: owner-only Unix socket, read-only, slow viewers dropped."""

from __future__ import annotations

import socket
import stat

import numpy as np

from bms.app.monitor import read_snapshots, render
from bms.monitor import MonitorServer


def _snapshot(t: float) -> dict:
    return {
        "time_s": t, "state": "CLOSED", "current_a": -3.5, "charge_limit_a": 10.0,
        "discharge_limit_a": 15.0, "active_faults": [],
        "stacks": [{"name": "stack-1", "cell_voltage_v": np.full(23, 3.7), "soc": [0.5] * 23,
                    "soc_sigma": [0.01] * 23, "temperature_c": [25.0] * 6,
                    "pressure_kpa": 1200.0, "pressure_expected_kpa": 1210.0,
                    "balance_mask": 5}],
    }


def test_socket_is_owner_only_and_snapshots_arrive(tmp_path) -> None:
    server = MonitorServer(tmp_path / "run" / "bms.sock")
    try:
        assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(server.path.parent.stat().st_mode) == 0o700
        viewer = read_snapshots(server.path, timeout_s=5.0)
        # The generator connects lazily: start it in the same thread by publishing after the
        # connection exists. Connect explicitly first through a raw socket to check ordering.
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(str(server.path))
        raw.settimeout(5.0)
        server.publish(_snapshot(1.0))
        assert server.n_viewers == 1
        line = b""
        while not line.endswith(b"\n"):
            line += raw.recv(65536)
        assert b'"state":"CLOSED"' in line and b"3.7" in line
        # A viewer that writes is ignored: its input side is shut down, nothing is read.
        try:
            raw.send(b"SET_OUTPUTS close please\n")
        except OSError:
            pass
        server.publish(_snapshot(2.0))
        raw.close()
        del viewer
    finally:
        server.close()
    assert not server.path.exists()


def test_stuck_viewer_is_dropped_not_waited_for(tmp_path) -> None:
    server = MonitorServer(tmp_path / "bms.sock")
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(server.path))
    big = _snapshot(0.0)
    big["pad"] = "x" * 8192
    for i in range(200):  # never read by the viewer: the backlog grows until it is dropped
        big["time_s"] = float(i)
        server.publish(big)
    assert server.dropped_viewers == 1 and server.n_viewers == 0
    stuck.close()
    server.close()


def test_render_shows_the_essentials() -> None:
    text = render(_snapshot(12.0))
    assert "CLOSED" in text and "3.700..3.700" in text and "SOC  50.0" in text
    assert "faults=-" in text and "latched" not in text


def test_render_names_latched_faults_that_are_no_longer_active() -> None:
    snap = _snapshot(30.0) | {"state": "FAULT", "active_faults": ["STACK_PRESSURE_RATE"],
                              "latched_faults": ["CELL_LEAK", "STACK_PRESSURE_RATE"]}
    first = render(snap).splitlines()[0]
    assert "state=FAULT" in first and "faults=STACK_PRESSURE_RATE latched=CELL_LEAK" in first


def test_live_view_of_a_running_controller(tmp_path) -> None:
    """A real controller against a real emulated board publishes to a connected viewer."""
    import json

    from bms.app.emulators import start_emulator
    from bms.controller import Controller
    from boards.config import load_pack

    pack = load_pack("ssb-23")
    emu = start_emulator(pack, 0, "sim", 3, None)
    server = MonitorServer(tmp_path / "bms.sock")
    controller = Controller(pack, [emu.path], clock="sim", log_dir=None, monitor=server)
    viewer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        controller.open()
        controller.request_close()
        viewer.connect(str(server.path))
        viewer.settimeout(5.0)
        controller.run(2.0)
        data = b""
        while data.count(b"\n") < 20:
            data += viewer.recv(1 << 20)
        snapshots = [json.loads(line) for line in data.split(b"\n")[:20]]
        assert [s["time_s"] for s in snapshots[:3]] == [0.0, 0.1, 0.2]
        assert snapshots[-1]["state"] == "CLOSED"
        stack = snapshots[-1]["stacks"][0]
        assert len(stack["cell_voltage_v"]) == 23 and len(stack["soc"]) == 23
        assert 0.0 < min(stack["soc"]) <= max(stack["soc"]) < 1.0
        # Two seconds in, the estimates are still converging (sigma ~15 %): no cell may bleed
        # on an estimation error.
        assert min(stack["soc_sigma"]) > pack.balancing.start_delta_soc
        assert stack["balance_mask"] == 0
    finally:
        viewer.close()
        controller.close()
        emu.stop()


def test_snapshots_are_strict_json(tmp_path) -> None:
    import json

    server = MonitorServer(tmp_path / "bms.sock")
    viewer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        viewer.connect(str(server.path))
        viewer.settimeout(5.0)
        snap = _snapshot(1.0)
        snap["current_a"] = float("nan")
        server.publish(snap)
        line = b""
        while not line.endswith(b"\n"):
            line += viewer.recv(65536)
        assert b"NaN" not in line
        assert json.loads(line, parse_constant=lambda c: 1 / 0)["current_a"] is None
    finally:
        viewer.close()
        server.close()


def test_render_copes_with_nulls() -> None:
    snap = _snapshot(3.0)
    snap["current_a"] = None
    snap["stacks"][0]["pressure_kpa"] = None
    text = render(snap)
    assert "I=   +nan A" in text and "p    nan kPa" in text
