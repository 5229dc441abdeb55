"""``bms monitor``'s frame (bms/app/monitor_view.py) on real snapshots: the monitor stream of a
real controller against real emulated boards (ssb-4x23: 92 cells, ssb-23), drawn by rich into a
recording Console of the terminal's size. Every cell's value must be on the screen, nothing past
the terminal's edge."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from bms.app.emulators import start_emulators
from bms.app.monitor import rich_text
from bms.app.monitor_view import LAYOUTS, frame, plain
from bms.controller import Controller
from bms.faults import FaultCode
from bms.monitor import MonitorServer
from boards.config import load_pack

#: 1C discharge; at 1 s an open voltage tap on cell 11 and an open thermistor: faults by name.
SCENARIO = """schema: ssb-bms/scenario/1
name: monitor-faults
initial: {soc: 0.7, temperature_c: 25.0}
segments:
  - {kind: current, current_a: -5.0, duration_s: 600}
faults:
  - {at_s: 1, fault: VTAP_OPEN, target: 10}
  - {at_s: 1, fault: THERMISTOR_OPEN, target: 2}
"""


def _stream_snapshot(pack_name: str, seconds: float, tmp: Path) -> dict[str, Any]:
    """The last line a viewer of the monitor socket received after ``seconds`` of a sim-clock
    run of ``pack_name`` (SCENARIO)."""
    pack = load_pack(pack_name)
    scenario = tmp / "monitor-faults.yaml"
    scenario.write_text(SCENARIO)
    emus = start_emulators(pack, "sim", 0, str(scenario))
    server = MonitorServer(tmp / f"{pack_name}.sock")
    controller = Controller(pack, [e.path for e in emus], clock="sim", log_dir=None,
                            monitor=server)
    viewer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    data = b""
    try:
        viewer.connect(str(server.path))
        viewer.settimeout(10.0)
        controller.open()
        controller.request_close()
        # Read while it runs: at a snapshot per tick the socket's buffer would fill and the
        # server drop this viewer.
        n_ticks = int(round(seconds / controller.tick_s))
        for _ in range(n_ticks):
            controller.tick()
            try:
                while True:
                    viewer.setblocking(False)
                    data += viewer.recv(1 << 20)
            except BlockingIOError:
                pass
            data = data[data.rfind(b"\n", 0, len(data) - 1) + 1:]  # the newest line or two
        viewer.setblocking(True)
    finally:
        viewer.close()
        controller.close()
        server.close()
        for e in emus:
            e.stop()
    return json.loads(data.rstrip(b"\n").rsplit(b"\n", 1)[-1])


@pytest.fixture(scope="module")
def snaps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("monitor-view")
    return {"ssb-4x23": _stream_snapshot("ssb-4x23", 5.0, tmp),
            "ssb-23": _stream_snapshot("ssb-23", 5.0, tmp)}


def _screen(snap: dict[str, Any], width: int, height: int) -> tuple[list[str], str]:
    """What a width x height terminal shows: rich renders the frame into a recording Console."""
    lines, layout = frame(snap, width, height)
    console = Console(width=width, height=height, record=True, file=open("/dev/null", "w"),
                      color_system="truecolor", force_terminal=True)
    console.print(rich_text(lines, __import__("rich")))
    text = console.export_text()
    assert text.rstrip("\n") == plain(lines)  # the plain fallback is the same frame
    return text.rstrip("\n").split("\n"), layout


def _fits(screen: list[str], width: int, height: int) -> None:
    assert len(screen) <= height, len(screen)
    assert max(len(line) for line in screen) <= width


def _stack_rows(screen: list[str], name: str, label: str, count: int = 1) -> list[list[str]]:
    """The ``count`` rows labelled ``label`` after the stack's summary line, split."""
    start = next(i for i, line in enumerate(screen) if line.startswith(name + " "))
    rows = []
    for line in screen[start + 1:]:
        if line.startswith(label):
            rows.append(line[6:].split())
            if len(rows) == count:
                break
    return rows


def test_ssb_4x23_in_80x24_shows_every_cell(snaps) -> None:
    snap = snaps["ssb-4x23"]
    screen, layout = _screen(snap, 80, 24)
    _fits(screen, 80, 24)
    text = "\n".join(screen)
    assert layout == "compact"
    assert snap["state"] in screen[0] and f"t {snap['time_s']:.1f} s" in screen[0]
    assert snap["active_faults"]
    for fault in snap["active_faults"] + snap["latched_faults"]:
        assert fault in text
    assert len(snap["stacks"]) == 4
    for st in snap["stacks"]:
        v = st["cell_voltage_v"]
        assert len(v) == 23
        # The open tap's cells were rejected by validation: null on the socket, "--" here.
        rejected = [i for i, x in enumerate(v) if x is None]
        assert 10 in rejected
        ok = [i for i in range(23) if i not in rejected]
        lo, hi = min(ok, key=v.__getitem__), max(ok, key=v.__getitem__)
        summary = next(line for line in screen if line.startswith(st["name"] + " "))
        assert f"V {v[lo]:.3f} #{lo + 1}..{v[hi]:.3f} #{hi + 1}" in summary
        assert f"p {st['pressure_kpa']:.0f} kPa" in text
        assert "lc " + " ".join(f"{x:.0f}" for x in st["load_cell_kpa"]) in text
        # Every cell: mV above the stack's lowest, SOC %, temperature, in cell order.
        (dv,) = _stack_rows(screen, st["name"], "+mV")
        assert dv == ["--" if x is None else str(round((x - v[lo]) * 1000)) for x in v]
        (soc,) = _stack_rows(screen, st["name"], "SOC%")
        assert [int(x) for x in soc] == [round(100 * x) for x in st["soc"]]
        (temp,) = _stack_rows(screen, st["name"], "T C")
        assert [int(x) for x in temp] == [round(x) for x in st["cell_temperature_c"]]


def test_ssb_23_in_80x24_shows_absolute_values_and_bounds(snaps) -> None:
    snap = snaps["ssb-23"]
    screen, layout = _screen(snap, 80, 24)
    _fits(screen, 80, 24)
    assert layout == "full"
    st = snap["stacks"][0]
    volts = [x for row in _stack_rows(screen, "stack-1", "V ", 2) for x in row]
    assert volts == ["-----" if x is None else f"{x:.3f}" for x in st["cell_voltage_v"]]
    bounds = [x for row in _stack_rows(screen, "stack-1", "3sig%", 2) for x in row]
    assert bounds == [f"{300 * x:.2f}" for x in st["soc_sigma"]]
    leaks = [x for row in _stack_rows(screen, "stack-1", "leakmA", 2) for x in row]
    assert leaks == [str(round(1000 * x)) for x in st["leak_a"]]


def test_a_larger_terminal_shows_more(snaps) -> None:
    snap = snaps["ssb-4x23"]
    small, _ = _screen(snap, 80, 24)
    big, layout = _screen(snap, 160, 50)
    _fits(big, 160, 50)
    assert layout == "full" and len("\n".join(big)) > 2 * len("\n".join(small))
    # Absolute voltage, 3-sigma bound and leak current of all 92 cells, one line per stack.
    for st in snap["stacks"]:
        (volts,) = _stack_rows(big, st["name"], "V ")
        assert volts == ["-----" if x is None else f"{x:.3f}" for x in st["cell_voltage_v"]]
        (bounds,) = _stack_rows(big, st["name"], "3sig%")
        assert bounds == [f"{300 * x:.2f}" for x in st["soc_sigma"]]
    assert any(line.startswith("pack ") for line in big)
    assert not any("3sig%" in line for line in small)


def test_layouts_shrink_with_the_terminal(snaps) -> None:
    snap = snaps["ssb-4x23"]
    seen = []
    for width, height in ((200, 60), (160, 40), (100, 30), (80, 24), (80, 20), (80, 12),
                          (60, 10), (40, 10)):
        screen, layout = _screen(snap, width, height)
        _fits(screen, width, height)
        seen.append(layout)
    order = [lay.name for lay in LAYOUTS]
    assert [order.index(x) for x in seen] == sorted(order.index(x) for x in seen)
    assert seen[0] == "full" and "summary-1" in seen


def test_balancing_and_leak_flags_show_per_cell(snaps) -> None:
    snap = json.loads(json.dumps(snaps["ssb-4x23"]))  # a copy: the bits are set by hand
    st = snap["stacks"][2]
    st["balance_mask"] = (1 << 4) | (1 << 16)
    st["leak_flag"][9] = 1
    for width, height, label in ((80, 24, "+mV"), (160, 50, "V ")):
        screen, _ = _screen(snap, width, height)
        start = next(i for i, line in enumerate(screen) if line.startswith("stack-3 "))
        row = next(line for line in screen[start:] if line.startswith(label))
        w = 3 if label == "+mV" else 6
        flags = [row[6 + w * i] for i in range(23)]
        assert [i for i, f in enumerate(flags) if f == "*"] == [4, 16]
        assert [i for i, f in enumerate(flags) if f == "!"] == [9]
        summary = screen[start + 1]
        assert "leak #10" in summary and "bal 2" in summary


def test_the_extremes_are_highlighted(snaps) -> None:
    snap = snaps["ssb-23"]
    st = snap["stacks"][0]
    v = st["cell_voltage_v"]
    lines, _ = frame(snap, 80, 24)
    cells = [seg for line in lines if line and line[0][0].startswith("V ") for seg in line[1:]]
    values = [seg for seg in cells if seg[0].strip() and seg[0] not in ("*", "!")]
    reversed_ = [k for k, (_, style) in enumerate(values) if "reverse" in style]
    ok = [x for x in v if x is not None]
    assert reversed_ == sorted({v.index(min(ok)), v.index(max(ok))})


def test_many_faults_and_a_tiny_terminal(snaps) -> None:
    snap = dict(snaps["ssb-4x23"], active_faults=[c.name for c in FaultCode],
                latched_faults=["CELL_LEAK"])
    screen, _ = _screen(snap, 80, 24)
    _fits(screen, 80, 24)
    assert "BOARD_LOST" not in "\n".join(screen) and " more" in "\n".join(screen)
    small, layout = _screen(snap, 40, 10)
    _fits(small, 40, 10)
    assert layout == "summary-1"  # a line per stack still
    tiny, _ = _screen(snap, 40, 5)
    _fits(tiny, 40, 5)
    assert tiny[-1].startswith("... ") and "enlarge the terminal" in tiny[-1]


def test_nulls_a_lost_stack_and_an_empty_snapshot() -> None:
    snap = {"time_s": 1.0, "state": "SAFE", "outputs": 0, "current_a": None,
            "charge_limit_a": None, "discharge_limit_a": None, "active_faults": ["BOARD_LOST"],
            "latched_faults": ["BOARD_LOST"],
            "stacks": [{"name": "stack-1", "lost": True, "cell_voltage_v": [], "soc": []},
                       {"name": "stack-2", "lost": False,
                        "cell_voltage_v": [3.7, None, 3.71], "soc": [0.5, None, 0.51],
                        "soc_sigma": [None] * 3, "cell_temperature_c": [25.0, None, 26.0],
                        "leak_a": [None] * 3, "load_cell_kpa": [1200.0, None],
                        "pressure_kpa": None, "balance_mask": 1}]}
    text = plain(frame(snap, 80, 24)[0])
    assert "stack-1  LOST  no data" in text and "BOARD_LOST" in text
    assert "V 3.700 #1..3.710 #3" in text and "lc 1200 --" in text
    assert plain(frame({}, 80, 24)[0]).startswith("t nan s")


def test_a_quiet_bms_shows_its_age(snaps) -> None:
    lines, _ = frame(snaps["ssb-23"], 80, 24, age_s=12.4)
    assert "NO DATA FOR 12 s" in plain(lines).splitlines()[0]
    start = time.perf_counter()
    for _ in range(20):
        frame(snaps["ssb-4x23"], 80, 24)
    # Cheap enough for a 4 Hz redraw with room to spare (about 1 ms on this machine).
    assert (time.perf_counter() - start) / 20 < 0.05


def test_contactor_outputs_by_name(snaps) -> None:
    snap = snaps["ssb-4x23"]
    head = plain(frame(snap, 80, 24)[0]).splitlines()[0]
    assert snap["outputs"] == 0 and "contactors open" in head  # the faults opened them
    for outputs, words in ((3, "closed POS+NEG"), (4, "closed PRECHARGE"),
                           (6, "closed NEG+PRECHARGE")):
        head = plain(frame(dict(snap, outputs=outputs), 80, 24)[0]).splitlines()[0]
        assert words in head
