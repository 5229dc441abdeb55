"""The wire protocol every board must speak, run on each backend (tests/board_backends.py):
the Python emulated board on a pty and the reference firmware on simavr.

Handshake and INFO, SAMPLE -> MEASUREMENT with the clock flags, the board's own timer in the
real clock, SET_OUTPUTS acknowledged or refused, the heartbeat watchdog, HELLO out of the
version range and broken frames from the host. Only the protocol is used (the project's
BoardClient or raw frames on the port): no debug command, no plant truth. Backend-specific
checks stay in tests/test_emulator.py (fault injection, plant truth, the CLI) and
tests/test_firmware_sim.py (pins, MCU cycles, the plant on the pins).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
import serial
from board_backends import BoardUnderTest, read_frames, write_bad_frames

from hil.client import BoardNackError
from hil.protocol import (
    Capability,
    FrameDecoder,
    Hello,
    Measurement,
    Nack,
    NackError,
    Outputs,
    Status,
    encode_frame,
)
from hil.scaling import Scaler

CLOSED = Outputs.CONTACTOR_POS | Outputs.CONTACTOR_NEG


# --------------------------------------------------------------------------- handshake


def test_handshake_info(board: BoardUnderTest) -> None:
    with board.client() as c:
        info = c.info
    assert info.protocol_version == 1
    assert info.board_kind == board.board_kind
    assert (info.n_cells, info.n_thermistors, info.n_load_cells) == (23, 6, 4)
    assert info.heartbeat_timeout_ms == 1000
    assert info.capabilities & Capability.SIM_CLOCK
    assert bool(info.capabilities & Capability.FAULT_INJECT) == board.fault_inject
    assert info.board_id == board.board_id


def test_hello_outside_version_range_is_nacked(board: BoardUnderTest) -> None:
    with serial.Serial(board.path, timeout=1.0) as port:
        dec = FrameDecoder()
        port.write(encode_frame(Hello(2, 3), 9))
        frames = read_frames(port, dec, 1)
        assert frames[0].seq == 9 and isinstance(frames[0].msg, Nack)
        assert frames[0].msg.error == NackError.BAD_VERSION and frames[0].msg.detail == 1


# --------------------------------------------------------------------------- sampling, clocks


def test_sample_answers_a_measurement_with_the_clock_flags(board: BoardUnderTest) -> None:
    with board.client() as c:
        m1 = c.sample(0.1)
        assert m1.status & Status.SIM_CLOCK and m1.status & Status.JUST_BOOTED
        m2 = c.sample(0.25)
        assert not m2.status & Status.JUST_BOOTED
        # A board may report the time of its latest sampling cycle (the firmware samples every
        # 100 ms): the timestamp moves by the dt asked, within one such period.
        assert abs((m2.timestamp_ms - m1.timestamp_ms) - 250) <= 100
        for k in range(5):
            c.heartbeat(2, k)
            m = c.sample(0.5)
        assert m.timestamp_ms - m2.timestamp_ms == pytest.approx(2500, abs=100)
    assert not m.status & Status.SENSOR_ERROR
    r = Scaler(board.profile).readings(m)
    assert (len(r.cell_voltage_v), len(r.temperature_c), len(r.pressure_kpa)) == (23, 6, 4)
    assert np.all((r.cell_voltage_v > 3.5) & (r.cell_voltage_v < 4.0))
    assert np.all(np.abs(r.temperature_c - 25.0) < 1.5)
    assert np.all((r.pressure_kpa > 1000.0) & (r.pressure_kpa < 1500.0))


def test_real_clock_samples_on_its_own_timer(
        board_factory: Callable[..., BoardUnderTest]) -> None:
    board = board_factory(clock="real", seed=1, initial_soc=0.5)
    with board.client() as c:
        assert not c.info.capabilities & Capability.SIM_CLOCK
        m0 = c.sample(0.0)
        assert not m0.status & Status.SIM_CLOCK
        # wait for the board's own 100 ms timer: the timestamp moves without any dt
        t0 = time.monotonic()
        m = m0
        while m.timestamp_ms == m0.timestamp_ms and time.monotonic() - t0 < 5.0:
            m = c.sample(0.0)
        assert m.timestamp_ms > m0.timestamp_ms
        wall_ms = (time.monotonic() - t0) * 1000.0
        assert m.timestamp_ms - m0.timestamp_ms <= wall_ms + 250.0


# --------------------------------------------------------------------------- outputs, watchdog


def test_set_outputs_bad_values_are_nacked(board: BoardUnderTest) -> None:
    with board.client() as c:
        with pytest.raises(BoardNackError) as exc:
            c.set_outputs(0, 1 << 23, 1.0, 1.0)
        assert exc.value.nack.error == NackError.BAD_VALUE
        with pytest.raises(BoardNackError) as exc:
            c.set_outputs(0, 0, -1.0, 1.0)
        assert exc.value.nack.error == NackError.BAD_VALUE


def test_board_watchdog_opens_contactors_and_heartbeat_rearms(board: BoardUnderTest) -> None:
    with board.client() as c:
        c.heartbeat(2, 0)
        c.set_outputs(CLOSED, 0, 10.0, 15.0)
        m = c.sample(0.5)
        assert m.status & Status.CONTACTOR_POS and not m.status & Status.WATCHDOG_TRIPPED
        m = c.sample(0.6)   # 1.1 s of board time since the last HEARTBEAT
        assert m.status & Status.WATCHDOG_TRIPPED
        assert not m.status & (Status.CONTACTOR_POS | Status.CONTACTOR_NEG)
        with pytest.raises(BoardNackError) as exc:
            c.set_outputs(CLOSED, 0, 1.0, 1.0)
        assert exc.value.nack.error == NackError.STATE
        c.heartbeat(2, 0)
        m = c.sample(0.1)
        assert not m.status & Status.WATCHDOG_TRIPPED
        assert not m.status & Status.CONTACTOR_POS       # stays open until SET_OUTPUTS
        c.set_outputs(CLOSED, 0, 1.0, 1.0)
        assert c.sample(0.1).status & Status.CONTACTOR_POS


# --------------------------------------------------------------------------- bad frames


def test_garbage_and_corrupted_frames_from_the_host_are_survived(board: BoardUnderTest) -> None:
    with serial.Serial(board.path, timeout=1.0) as port:
        dec = FrameDecoder()
        write_bad_frames(port)
        frames = read_frames(port, dec, 4, board.bad_input_deadline_s)
        by_seq = {f.seq: f.msg for f in frames}
        assert by_seq[2].error == NackError.UNKNOWN_TYPE
        assert by_seq[3].error == NackError.BAD_LENGTH
        assert by_seq[4].error == NackError.BAD_VERSION and by_seq[4].detail == 1
        assert isinstance(by_seq[1], Measurement)
