"""A lost board ends or pauses the run honestly (issue 14 item 3).

The real emulated board on a real pty, the real controller and C core. What a lost board must
do: with ``controller.on_board_lost: stop`` (the default) the run ends (SafetyDataLostError,
an event, the summary's ``stopped``) with the contactors commanded open; with ``reconnect`` the
pack waits in SAFE and comes back; a tick without a board's data logs NaN for it, never its
last values; a silent board does not slow the real-clock tick; a frozen board timestamp is
stale data (BOARD_DATA_STALE); a MEASUREMENT whose channel counts differ from the INFO is one
BOARD_MEASUREMENT_MISMATCH, not a BOARD_RESET per reconnect; SET_OUTPUTS with reserved output
bits is refused by every board.
"""

from __future__ import annotations

import json
import math
import os
import time
import tty
from pathlib import Path

import numpy as np
import pytest
from board_backends import BoardUnderTest, Running

from bms.controller import Controller, SafetyDataLostError
from bms.faults import FaultCode
from bms.runlog import load_ticks
from boards.config import PackConfig, load_pack
from hil.client import BoardNackError
from hil.protocol import InjectedFault, Measurement, NackError


def _pack(tmp_path: Path, policy: str) -> PackConfig:
    f = tmp_path / f"ssb-23-{policy}.yaml"
    f.write_text(f"base: ssb-23\nname: ssb-23-{policy}\ncontroller:\n"
                 f"  on_board_lost: {policy}\n")
    return load_pack(str(f))


def _events(log: Path) -> list[dict]:
    return [json.loads(x) for x in (log / "events.jsonl").read_text().splitlines()]


def _fault_events(log: Path, code: FaultCode, kind: str = "raise") -> list[dict]:
    return [e for e in _events(log) if e.get("type") == "fault" and e["code"] == int(code)
            and e["event"] == kind]


def test_a_killed_board_ends_the_run_with_nan_rows_and_open_contactors(tmp_path: Path) -> None:
    emu = Running(seed=1)
    log = tmp_path / "log"
    c = Controller(load_pack("ssb-23"), [emu.path], clock="sim", log_dir=log)
    c.open()
    c.request_close()
    killed_at: list[float] = []

    def kill_at_3_s(ctrl: Controller) -> None:
        if ctrl.time_s >= 3.0 and not killed_at:
            killed_at.append(ctrl.time_s)
            emu.stop()  # the emulator's pty is gone: the port fails

    try:
        with pytest.raises(SafetyDataLostError) as exc:
            c.run(60.0, on_tick=kill_at_3_s)
    finally:
        summary = c.close()
    text = str(exc.value)
    assert "lost" in text and "on_board_lost: stop" in text and emu.path in text
    assert summary["stopped"] == text and summary["boards"][0]["lost"]
    # It stopped within the measurement timeout and a few ticks, not at --duration.
    t_stop = summary["time_s"]
    assert killed_at[0] < t_stop <= killed_at[0] + 0.5 + 0.3
    assert [e for e in _events(log) if e.get("event") == "stopped: board lost"]
    assert len(_fault_events(log, FaultCode.BOARD_LOST)) == 1
    tk = load_ticks(log / "ticks.csv")
    t = tk["time_s"]
    after = t > killed_at[0] + 0.15  # the ticks with no answer (the kill's tick may have one)
    assert after.sum() >= 4
    for col in ("cell01_voltage_v", "cell01_soc", "t01_c", "current_a", "stack_voltage_v",
                "pressure_lc01_kpa"):
        assert np.all(np.isnan(tk[col][after])), col
        assert np.all(np.isfinite(tk[col][t < killed_at[0]][10:])), col
    assert tk["outputs"][-1] == 0  # all open on the last tick


def test_silent_board_keeps_the_real_clock_tick_rate_and_reconnect_resumes(
        tmp_path: Path) -> None:
    """LINK_SILENCE 3 s in the real clock, policy reconnect: each silent tick used to wait
    2 x 0.25 s (a 10 s run took 35-38 s). Now the tick rate holds, the pack goes SAFE, the
    board is reported lost after board_lost_after_s, and the run goes on when data is back."""
    emu = Running(seed=2, clock="real")
    log = tmp_path / "log"
    c = Controller(_pack(tmp_path, "reconnect"), [emu.path], clock="real", log_dir=log)
    try:
        c.open()
        c.request_close()
        c.run(1.0)
        c.stacks[0].client.inject_fault(int(InjectedFault.LINK_SILENCE), value=3.0)
        wall0 = time.monotonic()
        c.run(5.0)
        wall = time.monotonic() - wall0
    finally:
        summary = c.close()
        emu.stop()
    assert wall < 5.0 + 0.6, f"a silent board slowed the tick: {wall:.2f} s for 5 s"
    assert summary["ticks"] == 60
    assert len(_fault_events(log, FaultCode.BOARD_LOST)) == 1
    assert len(_fault_events(log, FaultCode.BOARD_LOST, "clear")) == 1
    assert _fault_events(log, FaultCode.MEASUREMENT_LOST)
    assert "stopped" not in summary
    tk = load_ticks(log / "ticks.csv")
    silent = (tk["time_s"] > 1.6) & (tk["time_s"] < 3.8)
    assert np.all(np.isnan(tk["cell01_voltage_v"][silent]))
    assert np.isfinite(tk["cell01_voltage_v"][-1])


def test_a_frozen_board_timestamp_is_stale_data(tmp_path: Path) -> None:
    """A real-clock board whose sampling loop hangs while its UART still answers: the same
    sample, same timestamp, again and again. Before, nothing noticed."""
    emu = Running(seed=3, clock="real")
    log = tmp_path / "log"
    c = Controller(_pack(tmp_path, "reconnect"), [emu.path], clock="real", log_dir=log)
    try:
        c.open()
        c.request_close()
        c.run(1.5)
        emu.board.tick_real = lambda: None  # the board's sampling timer stops
        t_freeze = c.time_s
        c.run(1.5)
    finally:
        summary = c.close()
        emu.stop()
    raised = _fault_events(log, FaultCode.BOARD_DATA_STALE)
    assert len(raised) == 1 and raised[0]["severity"] == "fault"
    # within the measurement timeout (0.5 s) plus the board's 0.1 s sample period and a tick
    # (0.70 s measured on a quiet machine); real clock: 0.25 s more for a loaded one (seen
    # 0.80 s with other jobs on both cores)
    assert t_freeze < raised[0]["time_s"] <= t_freeze + 0.5 + 0.25 + 0.25
    assert summary["state"] != "CLOSED"
    assert _fault_events(log, FaultCode.MEASUREMENT_LOST)
    tk = load_ticks(log / "ticks.csv")
    assert np.all(np.isnan(tk["cell01_voltage_v"][tk["time_s"] > raised[0]["time_s"]]))


@pytest.mark.parametrize("policy", ["stop", "reconnect"])
def test_a_measurement_that_does_not_match_the_info_is_one_fault(tmp_path: Path,
                                                                  policy: str) -> None:
    """A 22-cell MEASUREMENT after a 23-cell INFO: it raised BOARD_RESET (new boot id) at every
    reconnect (four times in 8 s) though the boot id never changed."""
    emu = Running(seed=4)
    log = tmp_path / "log"
    c = Controller(_pack(tmp_path, policy), [emu.path], clock="sim", log_dir=log)
    real_measurement = emu.board._measurement

    def short_by_one() -> Measurement:
        m = real_measurement()
        return Measurement(m.timestamp_ms, m.status, m.current_raw, m.bus_voltage_raw,
                           m.cell_raw[:-1], m.thermistor_raw, m.load_cell_raw)

    stopped = None
    try:
        c.open()
        c.request_close()
        c.run(1.0)
        emu.board._measurement = short_by_one  # type: ignore[method-assign]
        emu.board._lane = None  # the board's fast lane builds no Measurement: general path
        try:
            c.run(9.0)
            emu.board._measurement = real_measurement  # type: ignore[method-assign]
            c.run(4.0)  # reconnect: the board answers right again
        except SafetyDataLostError as exc:
            stopped = str(exc)
    finally:
        summary = c.close()
        emu.stop()
    mismatch = _fault_events(log, FaultCode.BOARD_MEASUREMENT_MISMATCH)
    assert len(mismatch) == 1 and mismatch[0]["value"] == 22
    assert _fault_events(log, FaultCode.BOARD_RESET) == []
    detail = [e for e in _events(log) if e.get("event") == "measurement mismatch"]
    assert "22 cells" in detail[0]["detail"] and "expects 23" in detail[0]["detail"]
    if policy == "stop":
        assert stopped is not None and "22 cells" in stopped
        assert summary["time_s"] < 2.0
    else:
        assert stopped is None and summary["time_s"] == pytest.approx(13.9)
        assert summary["boards"][0]["reconnects"] >= 3
        # Fixed: the record clears (its latch stays for the operator reset), data is back.
        assert len(_fault_events(log, FaultCode.BOARD_MEASUREMENT_MISMATCH, "clear")) == 1
        assert _fault_events(log, FaultCode.BOARD_RESET) == []
        assert not summary["boards"][0]["lost"]


def test_reserved_output_bits_are_refused(board: BoardUnderTest) -> None:
    with board.client() as c:
        with pytest.raises(BoardNackError) as exc:
            c.set_outputs(0xFF, 0, 0.0, 0.0)
        assert exc.value.nack.error == NackError.BAD_VALUE
        c.set_outputs(0x07, 0, 0.0, 0.0)  # the three defined bits alone are accepted


def test_pack_policy_is_validated(tmp_path: Path) -> None:
    from boards.config import ConfigError

    f = tmp_path / "bad.yaml"
    f.write_text("base: ssb-23\ncontroller:\n  on_board_lost: retry\n")
    with pytest.raises(ConfigError, match="controller.on_board_lost.*one of stop, reconnect"):
        load_pack(str(f))
    f.write_text("base: ssb-23\ncontroller:\n  board_lost_after_s: 0.1\n")
    with pytest.raises(ConfigError, match="board_lost_after_s.*at least measurement_timeout_s"):
        load_pack(str(f))
    assert load_pack("ssb-23").controller.on_board_lost == "stop"
    assert math.isclose(load_pack("ssb-4x23").controller.board_lost_after_s, 2.0)



def test_a_reconnect_attempt_does_not_stall_the_real_clock_tick(tmp_path: Path) -> None:
    """Policy reconnect, real clock: the port (a symlink, as udev's /dev/serial/by-id names
    are) comes back first on a board that does not answer (in its bootloader, say), then on a
    working one. Each attempt's handshake waits for the silent board (about 0.55 s: the boot
    INFO, two HELLOs); run in the tick it stalled the tick by that long (about 5 missed
    deadlines per attempt at 10 Hz). Now the attempt runs beside the tick: the other stacks'
    tick rate holds, and the board comes back when a board answers."""
    emu = Running(seed=5, clock="real")
    port = tmp_path / "board"
    port.symlink_to(emu.path)
    master, slave = os.openpty()  # a board that never answers
    tty.setraw(slave)
    log = tmp_path / "log"
    c = Controller(_pack(tmp_path, "reconnect"), [str(port)], clock="real", log_dir=log)
    back = None
    try:
        c.open()
        c.request_close()
        c.run(1.0)
        port.unlink()
        port.symlink_to(os.ttyname(slave))
        emu.stop()  # the board is gone: its open port fails, the next opens find the silent one
        missed_before = c.stats.missed_deadlines
        c.run(5.0)  # lost; reconnect attempts every RECONNECT_PERIOD_S (2 s) on the silent one
        missed_silent = c.stats.missed_deadlines - missed_before
        worst_ms = c.stats.percentiles_ms()["max"]
        back = Running(seed=6, clock="real")
        port.unlink()
        port.symlink_to(back.path)
        c.run(3.0)
    finally:
        summary = c.close()
        os.close(master)
        os.close(slave)
        if back is not None:
            back.stop()
    print(f"reconnect attempts on a silent board: {missed_silent} missed deadline(s) in 50 "
          f"ticks, worst tick {worst_ms:.1f} ms")
    # A stalled attempt costs ~0.55 s: ~5 missed deadlines and a ~550 ms tick each, two attempts
    # here. Alone this runs with 0 missed and a 5 ms worst tick; inside the whole suite on 2
    # cores it saw 2 missed once (session 12's CI), so the bounds leave room for the machine,
    # not for a stall.
    assert missed_silent <= 3, f"{missed_silent} missed deadlines: the attempt stalled the tick"
    assert worst_ms < 3.0 * 1e3 * c.tick_s, worst_ms
    assert summary["boards"][0]["reconnects"] == 1 and not summary["boards"][0]["lost"]
    reconnected = [e for e in _events(log) if e.get("event") == "reconnected"]
    assert len(reconnected) == 1 and reconnected[0]["time_s"] > 6.0
    tk = load_ticks(log / "ticks.csv")
    assert np.isfinite(tk["cell01_voltage_v"][-1])  # data is back
