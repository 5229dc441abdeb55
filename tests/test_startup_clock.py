"""Start-up (issue 14 item 2): the board's clock from INFO, a watchdog that tripped before the
run, and the stale INFO a handshake must not take.

Real boards on real ptys: the emulated board (and, through the ``board`` fixture, the reference
firmware on simavr) and, for the stale INFO, a scripted board on an ``os.openpty`` pair that
sends real frames.
"""

from __future__ import annotations

import json
import os
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

import pytest
from board_backends import BoardUnderTest

from bms.controller import Controller
from bms.faults import FaultCode
from boards.config import load_board, load_pack
from hil.client import BoardClient, ClockMismatchError
from hil.protocol import (
    BoardKind,
    Capability,
    FrameDecoder,
    Hello,
    Info,
    encode_frame,
)


def _pack_for(board: BoardUnderTest):  # noqa: ANN202 (a PackConfig)
    return load_pack("ssb-23-fw" if board.backend == "firmware" else "ssb-23")


def _events(log_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (log_dir / "events.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- clocks


def test_a_board_on_the_other_clock_is_refused_with_one_line(board: BoardUnderTest) -> None:
    """The sim-clock board under a real-clock host (bms emulate + bms run --port --clock real:
    PRECHARGE_FAILURE before) is refused at the handshake, naming the fix."""
    c = BoardClient(board.path, board.profile, timeout_s=board.timeout_s,
                    retries=board.retries, clock="real")
    with pytest.raises(ClockMismatchError) as exc:
        c.open()
    text = str(exc.value)
    assert "\n" not in text
    assert board.path in text and "runs the sim clock" in text and "pass --clock sim" in text
    with board.client() as ok:  # the same board with the matching clock
        assert ok.info.capabilities & Capability.SIM_CLOCK


def test_controller_refuses_the_clock_mismatch_both_ways(
        board_factory: Callable[..., BoardUnderTest], tmp_path: Path) -> None:
    board = board_factory(clock="real", seed=1)
    c = Controller(_pack_for(board), [board.path], clock="sim", log_dir=tmp_path / "log",
                   timeout_s=board.timeout_s)
    with pytest.raises(ClockMismatchError, match="runs the real clock.*pass --clock real"):
        c.open()
    c.close()


# --------------------------------------------------------------------------- watchdog


def test_a_watchdog_tripped_before_the_run_is_an_event_not_a_fault(
        board_factory: Callable[..., BoardUnderTest], tmp_path: Path) -> None:
    """A real-clock board idle for more than its 1 s watchdog before the BMS connects (no DTR
    reset): the run used to latch BOARD_WATCHDOG_TRIPPED at t = 0 and never close. Now the
    handshake reports it (an event) and clears it; the pack closes."""
    board = board_factory(clock="real", seed=2)
    time.sleep(1.4)  # > the 1 s watchdog, with nobody beating
    with BoardClient(board.path, board.profile, timeout_s=board.timeout_s) as probe:
        assert probe.sample(0.0).status & 0x08  # WATCHDOG_TRIPPED: the premise holds
    time.sleep(1.2)  # and trips again after the probe's SAMPLE (no HEARTBEAT sent)
    log = tmp_path / "log"
    c = Controller(_pack_for(board), [board.path], clock="real", log_dir=log,
                   timeout_s=0.25)
    c.open()
    c.request_close()
    c.run(2.0)
    summary = c.close()
    assert summary["boards"][0]["watchdog_tripped_before_run"] is True
    assert c.table.get(FaultCode.BOARD_WATCHDOG_TRIPPED, None, 0) is None
    assert summary["state"] == "CLOSED", summary["faults"]
    ev = [e for e in _events(log) if e.get("event") == "watchdog tripped before this run"]
    assert len(ev) == 1 and ev[0]["stack"] == 0


def test_a_watchdog_shorter_than_two_ticks_is_refused(tmp_path: Path) -> None:
    from board_backends import Running

    from bms.controller import WatchdogTooShortError

    emu = Running(seed=1)
    emu.board.heartbeat_timeout_s = 0.15  # the INFO says 150 ms; the tick is 100 ms
    emu.board.outbox.clear()
    try:
        c = Controller(load_pack("ssb-23"), [emu.path], clock="sim", log_dir=tmp_path / "l")
        with pytest.raises(WatchdogTooShortError, match="150 ms, shorter than two ticks"):
            c.open()
        c.close()
    finally:
        emu.stop()


# --------------------------------------------------------------------------- stale INFO


class _ScriptedBoard:
    """A pty whose far end answers each HELLO with a stale INFO (another seq, 22 cells) and
    then the right one (its seq, 23 cells)."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _info(self, n_cells: int) -> Info:
        return Info(1, int(BoardKind.EMULATOR), (0, 1, 0), n_cells, 6, 4, 1000,
                    int(Capability.SIM_CLOCK), 77, "scripted#0")

    def _serve(self) -> None:
        dec = FrameDecoder()
        while not self._stop:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            for f in dec.feed(data):
                if isinstance(f.msg, Hello):
                    os.write(self.master, encode_frame(self._info(22), (f.seq + 7) & 0xFFFF))
                    os.write(self.master, encode_frame(self._info(23), f.seq))

    def close(self) -> None:
        self._stop = True
        for fd in (self.master, self.slave):
            os.close(fd)


def test_an_info_with_a_stale_seq_is_not_taken() -> None:
    board = _ScriptedBoard()
    try:
        with BoardClient(board.path, load_board("emu-23"), timeout_s=1.0) as c:
            assert c.info.n_cells == 23
            assert c.counters["stale_replies"] == 1
    finally:
        board.close()
