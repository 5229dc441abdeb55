"""Emulated board end to end over real ptys, with the real BoardClient (hil/client.py): what
only the emulator has (exact sim-clock timestamps, scenarios, fault injection and the link
faults behind its debug commands, its counters and plant truth, the process and its CLI).

The wire protocol every board must speak (handshake, SAMPLE, SET_OUTPUTS NACKs, the watchdog,
broken frames, the real clock) is in tests/test_board_protocol.py, run on this emulator and on
the firmware. The board runs in a thread (PtyServer on os.openpty, tests/board_backends.py) or,
where the test needs to kill it, as a subprocess ``python -m hil.emulator``. No sleeps: the sim
clock is driven by SAMPLE.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import serial
from board_backends import Running, read_frames, write_bad_frames

from boards.config import load_board, load_pack
from hil.client import BoardClient, BoardNackError, LinkError
from hil.emulator.board import BoardOptions, EmulatedBoard
from hil.emulator.scenario import load_scenario
from hil.protocol import (
    FrameDecoder,
    Info,
    InjectedFault,
    Measurement,
    NackError,
    Outputs,
    Sample,
    Status,
    encode_frame,
)
from hil.scaling import Scaler

ROOT = Path(__file__).resolve().parent.parent
PACK = load_pack("ssb-23")
PROFILE = load_board("emu-23")
SCALER = Scaler(PROFILE)
CLOSED = Outputs.CONTACTOR_POS | Outputs.CONTACTOR_NEG


@pytest.fixture
def emu() -> Iterator[Running]:
    r = Running(seed=3, initial_soc=0.6)
    yield r
    r.stop()


@pytest.fixture
def client(emu: Running) -> Iterator[BoardClient]:
    with BoardClient(emu.path, PROFILE, timeout_s=1.0) as c:
        yield c


def closed_client(c: BoardClient, charge_a: float = 10.0, discharge_a: float = 15.0) -> None:
    c.heartbeat(2, 0)
    c.set_outputs(CLOSED, 0, charge_a, discharge_a)


# --------------------------------------------------------------------------- clock


def test_sim_clock_advances_by_dt_and_flags(client: BoardClient) -> None:
    m1 = client.sample(0.1)
    assert m1.status & Status.SIM_CLOCK and m1.status & Status.JUST_BOOTED
    m2 = client.sample(0.25)
    assert not m2.status & Status.JUST_BOOTED
    assert m2.timestamp_ms - m1.timestamp_ms == 250
    m3 = client.sample(3600.0)   # an hour in one request: split into 1 s plant steps
    assert m3.timestamp_ms - m2.timestamp_ms == 3_600_000
    r = SCALER.readings(m3)
    assert np.all((r.cell_voltage_v > 3.5) & (r.cell_voltage_v < 4.0))
    assert np.all(np.abs(r.temperature_c - 25.0) < 1.0)
    assert np.all((r.pressure_kpa > 1000.0) & (r.pressure_kpa < 1500.0))


# --------------------------------------------------------------------------- outputs


def test_outputs_applied_and_current_flows() -> None:
    sc = load_scenario("soft-short")   # rest 30 s, then 1C discharge
    emu = Running(seed=2, scenario=sc)
    try:
        with BoardClient(emu.path, PROFILE) as c:
            closed_client(c)
            for k in range(400):
                if k % 5 == 0:
                    c.heartbeat(2, k * 100)
                m = c.sample(0.1)
            assert m.status & Status.CONTACTOR_POS and m.status & Status.CONTACTOR_NEG
            r = SCALER.readings(m)
            assert r.current_a == pytest.approx(-5.0, abs=0.05)
            assert r.bus_voltage_v == pytest.approx(r.cell_voltage_v.sum(), abs=0.2)
            c.set_outputs(CLOSED, (1 << 5), 10.0, 2.0)  # discharge limit obeyed, balancing
            c.heartbeat(2, 0)
            m = c.sample(0.1)
            assert m.status & Status.BALANCING
            assert SCALER.readings(m).current_a == pytest.approx(-2.0, abs=0.05)
            c.set_outputs(0, 0, 0.0, 0.0)
            m = c.sample(0.1)
            assert not m.status & (Status.CONTACTOR_POS | Status.CONTACTOR_NEG)
            assert SCALER.readings(m).current_a == pytest.approx(0.0, abs=0.05)
    finally:
        emu.stop()


def test_precharge_over_the_link(client: BoardClient) -> None:
    client.heartbeat(1, 0)
    client.set_outputs(Outputs.CONTACTOR_NEG | Outputs.PRECHARGE, 0, 0.0, 0.0)
    r = SCALER.readings(client.sample(0.2))
    stack_v = r.cell_voltage_v.sum()
    assert r.bus_voltage_v == pytest.approx(stack_v * (1 - math.exp(-1)), rel=0.05)
    client.inject_fault(InjectedFault.PRECHARGE_FAIL)
    client.heartbeat(1, 0)
    r = SCALER.readings(client.sample(0.8))
    assert r.bus_voltage_v < 0.05 * stack_v


# --------------------------------------------------------------------------- faults


def _sampled(c: BoardClient, seconds: float, dt: float = 1.0) -> Measurement:
    m = None
    for _ in range(int(seconds / dt)):
        c.heartbeat(2, 0)
        m = c.sample(dt)
    assert m is not None
    return m


FAULT_CASES = [
    # (fault, target, value, check(readings before, readings after, raw after))
    (InjectedFault.CELL_SOFT_SHORT, 7, 2.0,
     lambda b, a, m: a.cell_voltage_v[7] < np.delete(a.cell_voltage_v, 7).min() - 0.005),
    (InjectedFault.CELL_CONTACT_LOSS, 4, 0.6,
     lambda b, a, m: np.ptp(a.pressure_kpa) > np.ptp(b.pressure_kpa) + 60.0
     and a.cell_voltage_v[4] < np.delete(a.cell_voltage_v, 4).min()),
    (InjectedFault.GAS_SWELLING, 0xFF, 5.0,
     lambda b, a, m: np.mean(a.pressure_kpa) > np.mean(b.pressure_kpa) + 200.0),
    (InjectedFault.LOADCELL_STUCK, 1, 0.0,
     lambda b, a, m: a.pressure_kpa[1] == b.pressure_kpa[1]
     and abs(a.pressure_kpa[0] - b.pressure_kpa[0]) > 5.0),
    (InjectedFault.LOADCELL_OFFSET, 2, 80.0,
     lambda b, a, m: a.pressure_kpa[2] - b.pressure_kpa[2] > 60.0),
    (InjectedFault.LOADCELL_OPEN, 3, 0.0,
     lambda b, a, m: math.isnan(a.pressure_kpa[3]) and m.status & Status.SENSOR_ERROR),
    (InjectedFault.VTAP_OPEN, 10, 0.0, lambda b, a, m: a.cell_voltage_v[10] < 0.1),
    (InjectedFault.THERMISTOR_OPEN, 2, 0.0, lambda b, a, m: math.isnan(a.temperature_c[2])),
    (InjectedFault.THERMISTOR_SHORT, 4, 0.0, lambda b, a, m: math.isnan(a.temperature_c[4])),
    (InjectedFault.CURRENT_OFFSET, 0xFF, 1.5, lambda b, a, m: a.current_a - b.current_a > 1.4),
    (InjectedFault.COOLANT_LOSS, 0xFF, 0.0,
     lambda b, a, m: np.mean(a.temperature_c) > np.mean(b.temperature_c) + 1.0),
    (InjectedFault.LOAD_CURRENT, 0xFF, 12.0, lambda b, a, m: a.current_a == pytest.approx(12.0,
                                                                                        abs=0.1)),
    (InjectedFault.AMBIENT_TEMP, 0xFF, 40.0, lambda b, a, m: np.all(a.temperature_c > 35.0)),
    (InjectedFault.CELL_HEAT, 0, 8.0,
     lambda b, a, m: a.temperature_c[0] > b.temperature_c[0] + 2.0),
]


@pytest.mark.parametrize("fault,target,value,check", FAULT_CASES,
                         ids=[c[0].name for c in FAULT_CASES])
def test_each_fault_is_visible_in_the_measurements(client: BoardClient, fault: InjectedFault,
                                                   target: int, value: float, check) -> None:
    client.inject_fault(InjectedFault.CURRENT_OFFSET, value=0.0)  # a FAULT_INJECT is ACKed
    closed_client(client)
    client.inject_fault(InjectedFault.LOAD_CURRENT, value=-10.0)  # 2C: heat for thermal faults
    before = SCALER.readings(_sampled(client, 10.0))
    if fault != InjectedFault.LOAD_CURRENT:
        client.inject_fault(fault, target, value)
    else:
        client.inject_fault(fault, value=value)
    seconds = 1200.0 if fault in (InjectedFault.COOLANT_LOSS, InjectedFault.AMBIENT_TEMP,
                                  InjectedFault.CELL_HEAT) else 60.0
    m = _sampled(client, seconds, 0.9)   # < 1 s: the board watchdog needs a beat per second
    after = SCALER.readings(m)
    assert check(before, after, m)
    client.inject_fault(fault, target, clear=True)


def test_fault_inject_bad_target_is_nacked(client: BoardClient) -> None:
    with pytest.raises(BoardNackError) as exc:
        client.inject_fault(InjectedFault.CELL_SOFT_SHORT, 40, 1.0)
    assert exc.value.nack.error == NackError.BAD_VALUE
    with pytest.raises(BoardNackError):
        client.inject_fault(99)


def test_reboot_announces_new_boot_and_opens_contactors(client: BoardClient) -> None:
    closed_client(client)
    boot0 = client.info.boot_id
    client.inject_fault(InjectedFault.REBOOT)
    m = client.sample(0.1)   # the INFO (seq 0) arrives before this reply
    assert client.take_reset() and client.info.boot_id != boot0
    assert m.status & Status.JUST_BOOTED
    assert not m.status & (Status.CONTACTOR_POS | Status.CONTACTOR_NEG)


# --------------------------------------------------------------------------- link faults


def test_link_drop_and_silence_make_the_client_time_out(emu: Running) -> None:
    with BoardClient(emu.path, PROFILE, timeout_s=0.2, retries=1) as c:
        c.inject_fault(InjectedFault.LINK_DROP, value=1.0)
        with pytest.raises(LinkError):
            c.sample(0.1)
        assert emu.board.counters.dropped_replies >= 2
        emu.board.link.clear()   # the board drops its own replies: clear it from its side
        c.sample(0.1)
        c.inject_fault(InjectedFault.LINK_SILENCE, value=0.5)   # board time
        with pytest.raises(LinkError):
            c.sample(0.3)        # 0.3 s, and the retry with dt 0: still silent
        m = c.sample(0.3)        # board time now past the silence
        assert m.timestamp_ms > 0


def test_corrupted_bytes_are_survived(emu: Running) -> None:
    with BoardClient(emu.path, PROFILE, timeout_s=0.2, retries=5) as c:
        c.inject_fault(InjectedFault.LINK_CORRUPT, value=0.002)   # ~20 % of 100-byte frames hit
        ok = 0
        for _ in range(300):
            try:
                c.sample(0.1)
                ok += 1
            except LinkError:
                pass
        assert ok >= 290
        counters = c.counters
        assert counters["resyncs"] > 0 and counters["retries"] > 0
        assert emu.board.counters.corrupted_bytes > 0


def test_garbage_from_the_host_shows_in_the_decoder_counters(emu: Running) -> None:
    # The replies to these bytes are checked on every backend (tests/test_board_protocol.py);
    # the emulator also counts what it dropped.
    with serial.Serial(emu.path, timeout=1.0) as port:
        write_bad_frames(port)
        assert len(read_frames(port, FrameDecoder(), 4)) == 4
    counters = emu.board.decoder.counters
    assert counters.crc_errors + counters.cobs_errors + counters.oversize >= 2


# --------------------------------------------------------------------------- process, CLI


def _spawn(*args: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "hil.emulator", *args], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None
    path = p.stdout.readline().decode().strip()
    assert path.startswith("/dev/"), (path, p.stderr.read().decode() if p.stderr else "")
    return p, path


def test_emulator_killed_mid_run_is_reported_within_the_timeout() -> None:
    p, path = _spawn("--seed", "4")
    try:
        c = BoardClient(path, PROFILE, timeout_s=0.3, retries=1)
        c.open()
        for _ in range(20):
            c.sample(0.1)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=5)
        t0 = time.monotonic()
        with pytest.raises(LinkError):
            for _ in range(5):
                c.sample(0.1)
        assert time.monotonic() - t0 <= (c.retries + 1) * c.timeout_s + 0.5
        c.close()
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=5)


def test_cli_scenario_and_truth_file(tmp_path: Path) -> None:
    truth = tmp_path / "truth.csv"
    p, path = _spawn("--scenario", "soft-short", "--seed", "9", "--truth", str(truth))
    try:
        with BoardClient(path, PROFILE) as c:
            assert c.info.n_cells == 23
            closed_client(c)
            for k in range(50):
                c.heartbeat(2, k)
                m = c.sample(1.0)   # 50 s: rest 30 s, then 1C
            assert SCALER.readings(m).current_a == pytest.approx(-5.0, abs=0.05)
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 0
    lines = truth.read_text().splitlines()
    assert lines[0].startswith("t_s,current_a,")
    assert len(lines) == 1 + 50
    assert float(lines[-1].split(",")[1]) == pytest.approx(-5.0, abs=0.05)


def test_cli_rejects_bad_arguments() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "hil.emulator", "--board", "3"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--board 3" in r.stderr
    r = subprocess.run([sys.executable, "-m", "hil.emulator", "--scenario", "nope"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 3 and "nope" in r.stderr  # a scenario file: ExitCode.CONFIG
    four = ["--pack", "ssb-4x23"]
    for args, msg in ((["--board", "1", "--board", "1"], "listed twice"),
                      (["--board", "0", "--board", "1", "--truth", "t.csv"], "--truth-dir"),
                      (["--board", "0", "--board", "4"], "--board 4")):
        r = subprocess.run([sys.executable, "-m", "hil.emulator", *four, *args], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)


def test_boot_info_is_sent_unsolicited(emu: Running) -> None:
    # A host that opens the port after boot missed the INFO (pyserial flushes on open); a
    # REBOOT sends one with seq 0 to whoever listens.
    with serial.Serial(emu.path, timeout=1.0) as port:
        port.write(encode_frame(Sample(0), 1))
        dec = FrameDecoder()
        assert isinstance(read_frames(port, dec, 1)[0].msg, Measurement)
        from hil.protocol import FaultInject

        port.write(encode_frame(FaultInject(int(InjectedFault.REBOOT)), 2))
        frames = read_frames(port, dec, 2, skip_boot_info=False)
        infos = [f for f in frames if isinstance(f.msg, Info)]
        assert infos and infos[0].seq == 0


def _scripted_session(speculate: bool, truth: Path) -> tuple[bytes, str]:
    """One host session fed straight into the board logic; speculation on or off."""
    from hil.protocol import FaultInject, Heartbeat, SetOutputs

    board = EmulatedBoard(BoardOptions(pack=PACK, board=PROFILE, seed=11,
                                       scenario=load_scenario("faults-tour"), truth_path=truth))
    out = bytearray()
    seq = 0

    def send(msg: object) -> None:
        nonlocal seq
        seq += 1
        board.feed(encode_frame(msg, seq))  # type: ignore[arg-type]
        for frame in board.outbox:
            out.extend(frame)
        board.outbox.clear()
        if speculate:
            board.speculate()

    send(Heartbeat(2, 0))
    send(SetOutputs(int(CLOSED), 0, 10_000, 15_000))
    for k in range(1500):
        if k % 7 == 0:
            send(Heartbeat(2, k))
        if k == 400:
            send(FaultInject(int(InjectedFault.CELL_SOFT_SHORT), 3, 0, 5.0))
        if k == 900:
            send(SetOutputs(int(CLOSED), 1 << 4, 10_000, 15_000))
        send(Sample(500_000 if k % 50 else 300_000))
    board.close()
    if speculate:
        assert board.counters.speculation_hits > 1000
        assert board.counters.speculation_misses > 10
    return bytes(out), truth.read_text()


def test_speculative_steps_change_nothing(tmp_path: Path) -> None:
    plain = _scripted_session(False, tmp_path / "a.csv")
    spec = _scripted_session(True, tmp_path / "b.csv")
    assert plain[0] == spec[0]
    assert plain[1] == spec[1]
    assert plain[1].count("\n") > 700
