"""The wire protocol every board must speak, run on each backend (tests/board_backends.py):
the Python emulated board on a pty and the reference firmware on simavr.

Handshake and INFO, SAMPLE -> MEASUREMENT with the clock flags, the board's own timer in the
real clock, SET_OUTPUTS acknowledged or refused, the heartbeat watchdog, HELLO out of the
version range and broken frames from the host; and one abuse set (64 KiB of garbage, a frame
split at every byte boundary with a pause, every header field out of range, truncated frames)
after each of which the board answers the next valid HELLO and counts what it dropped as an
independent decoder does (the reference Python codec on the same bytes). Only the protocol is
used (the project's BoardClient or raw frames on the port) plus the board's receive counters,
which the protocol does not carry (tests/board_backends.py: BoardUnderTest.rx_counters): no
debug command, no plant truth. Backend-specific
checks stay in tests/test_emulator.py (fault injection, plant truth, the CLI) and
tests/test_firmware_sim.py (pins, MCU cycles, the plant on the pins).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict

import numpy as np
import pytest
import serial
from board_backends import BoardUnderTest, read_frames, write_bad_frames

from hil.client import BoardNackError
from hil.protocol import (
    Capability,
    DecodedFrame,
    FrameDecoder,
    Hello,
    Info,
    Measurement,
    MsgType,
    Nack,
    NackError,
    Outputs,
    Sample,
    Status,
    crc16,
    encode_frame,
    encode_raw_frame,
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
    with serial.serial_for_url(board.path, timeout=1.0) as port:
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
    with serial.serial_for_url(board.path, timeout=1.0) as port:
        dec = FrameDecoder()
        write_bad_frames(port)
        frames = read_frames(port, dec, 4)
        by_seq = {f.seq: f.msg for f in frames}
        assert by_seq[2].error == NackError.UNKNOWN_TYPE
        assert by_seq[3].error == NackError.BAD_LENGTH
        assert by_seq[4].error == NackError.BAD_VERSION and by_seq[4].detail == 1
        assert isinstance(by_seq[1], Measurement)


# --------------------------------------------------------------------------- abuse set
#
# The same hostile host input on every backend. After each piece of abuse the board answers the
# next valid HELLO, and its receive counters equal those of the reference Python decoder
# (FrameDecoder(engine="reference"), independent of the C codec both boards run) fed the same
# bytes: nothing was lost, nothing was read as a frame that is not one.

_ERRORS = ("cobs_errors", "short_errors", "crc_errors", "length_errors", "version_errors",
           "unknown_type", "payload_errors", "oversize")
_HELLO, _SAMPLE = int(MsgType.HELLO), int(MsgType.SAMPLE)
_SAMPLE_DT_US = 100_000


class RawLink:
    """Raw frames on a board's port; every byte written also goes to a reference decoder."""

    def __init__(self, board: BoardUnderTest) -> None:
        self.board = board
        self.port = serial.serial_for_url(board.path, timeout=0.05)
        self.dec = FrameDecoder()
        self.ref = FrameDecoder(engine="reference")
        self.written = 0
        self._seq = 0

    def close(self) -> None:
        self.port.close()

    def next_seq(self) -> int:
        self._seq = self._seq % 0xFFFE + 1      # 1..0xFFFE: 0 and 0xFFFF are cases of their own
        return self._seq

    def write(self, data: bytes) -> list[DecodedFrame]:
        """Send ``data``; returns what the reference decoder read in it (frames with a header)."""
        self.port.write(data)
        self.port.flush()
        self.written += len(data)
        return self.ref.feed(data)

    def replies_until(self, seq: int, deadline_s: float = 30.0) -> list[DecodedFrame]:
        """Every frame from the board up to and including the first one with ``seq``."""
        out: list[DecodedFrame] = []
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            out += self.dec.feed(self.port.read(max(1, self.port.in_waiting)))
            if any(f.seq == seq for f in out):
                return out[:[f.seq for f in out].index(seq) + 1]
        raise AssertionError(f"{self.board.backend}: no reply with seq {seq} within "
                             f"{deadline_s} s; got {out}")

    def hello(self, deadline_s: float = 30.0) -> list[DecodedFrame]:
        """A valid HELLO; returns the frames before its INFO (the INFO itself checked)."""
        seq = self.next_seq()
        self.write(encode_frame(Hello(1, 1), seq))
        frames = self.replies_until(seq, deadline_s)
        assert isinstance(frames[-1].msg, Info), frames[-1]
        return frames[:-1]

    def sample_ms(self, dt_us: int = _SAMPLE_DT_US) -> int:
        """A valid SAMPLE; the MEASUREMENT's timestamp."""
        seq = self.next_seq()
        self.write(encode_frame(Sample(dt_us), seq))
        frames = self.replies_until(seq)
        assert [f.seq for f in frames] == [seq] and isinstance(frames[0].msg, Measurement)
        return frames[0].msg.timestamp_ms

    def counters(self) -> dict[str, int]:
        """The board's receive counters once it took every byte written; they must equal the
        reference decoder's."""
        if self.board.rx_counters is None:  # emu://: the board behind this very port
            assert self.port.board.decoder.counters.bytes_in == self.written
            got = asdict(self.port.board.decoder.counters)
        else:
            got = self.board.rx_counters(self.written)
        want = asdict(self.ref.counters)
        assert got == want, f"{self.board.backend}: board {got} != reference decoder {want}"
        return got


@pytest.fixture
def link(board: BoardUnderTest) -> Iterator[RawLink]:
    lk = RawLink(board)
    # the boot INFO (seq 0) may wait in the pty: everything up to the first HELLO's INFO goes
    lk.write(encode_frame(Hello(1, 1), 0xFFFE))
    lk.replies_until(0xFFFE)
    yield lk
    lk.close()


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if k != "bytes_in" and after[k] != before[k]}


def test_64_kib_of_garbage_then_the_next_hello_is_answered(link: RawLink) -> None:
    rng = np.random.default_rng(14)
    # half without zero bytes (one overlong run: oversize), half with (runs of any length:
    # COBS errors, oversize); seeded so that no run happens to carry a valid CRC
    g = bytearray(rng.integers(1, 256, 32 * 1024, dtype=np.uint8).tobytes()
                  + rng.integers(0, 256, 32 * 1024, dtype=np.uint8).tobytes())
    g[-101] = 0                         # and ends inside a short run (the harness's old wedge)
    garbage = bytes(g)
    assert 0 < len(garbage) - 1 - garbage.rindex(b"\x00") <= 100
    before = link.counters()
    t0 = time.monotonic()
    assert link.write(garbage) == []                # not one frame with a valid CRC in it
    # The garbage ends inside a run; a pause, then the host retries: its first HELLO joins that
    # run and is dropped with it (its 0x00 ends the run), the second is answered.
    time.sleep(link.board.split_pause_s)
    assert link.write(encode_frame(Hello(1, 1), link.next_seq())) == []
    assert link.hello() == []                       # nothing else answered
    wall_s = time.monotonic() - t0
    d = _delta(before, link.counters())
    assert d["frames_ok"] == 1 and d["oversize"] >= 1
    assert sum(d.get(k, 0) for k in ("cobs_errors", "short_errors", "crc_errors")) >= 50
    print(f"\n{link.board.backend}: 64 KiB of garbage and a HELLO answered in {wall_s:.2f} s; "
          f"dropped {d}")


@pytest.mark.parametrize("what", ["hello", "sample"])
def test_a_frame_split_at_every_byte_boundary_is_answered(link: RawLink, what: str) -> None:
    """Each piece goes to the board on its own; a pause between them changes nothing, and (sim
    clock) the board's time moves by the SAMPLE dts only, not with the pauses."""
    before = link.counters()
    stamps: list[int] = []
    n = len(encode_frame(Hello(1, 1), 1)) if what == "hello" else len(
        encode_frame(Sample(_SAMPLE_DT_US), 1))
    for cut in range(1, n):
        seq = link.next_seq()
        frame = encode_frame(Hello(1, 1) if what == "hello" else Sample(_SAMPLE_DT_US), seq)
        assert len(frame) == n
        link.write(frame[:cut])
        time.sleep(link.board.split_pause_s)
        link.write(frame[cut:])
        frames = link.replies_until(seq)
        assert [f.seq for f in frames] == [seq], f"cut at {cut}: {frames}"
        reply = frames[0].msg
        if what == "hello":
            assert isinstance(reply, Info)
        else:
            assert isinstance(reply, Measurement)
            stamps.append(reply.timestamp_ms)
    assert _delta(before, link.counters()) == {"frames_ok": n - 1}
    if what == "sample":
        # (the firmware reports its latest 100 ms sampling cycle: within one period)
        steps = np.diff(stamps)
        assert np.all(np.abs(steps - 100) <= 100), steps
        assert stamps[-1] - stamps[0] == pytest.approx(100 * (len(stamps) - 1), abs=100)


def _framed(version: int, msg_type: int, seq: int, payload: bytes, length: int | None = None,
            crc_xor: int = 0) -> bytes:
    n = len(payload) if length is None else length
    body = bytes([version, msg_type]) + seq.to_bytes(2, "little") + n.to_bytes(2, "little")
    crc = crc16(body + payload) ^ crc_xor
    return encode_raw_frame(version, msg_type, seq, payload, length=length, crc=crc)


# (name, frame at seq, the board's answer or None, the counter it raises). An answer is
# (seq, Nack) or (seq, message class); seq None = the frame's own.
_HP = bytes([1, 1])
_DT_50_MIN = (3_000_000_000).to_bytes(4, "little")   # a SAMPLE's dt: 50 minutes if ever read
_HEADER_CASES: list[tuple[str, Callable[[int], bytes], object, str]] = [
    *[(f"version {v}", lambda s, v=v: _framed(v, _HELLO, s, _HP),
       Nack(_HELLO, NackError.BAD_VERSION, 1), "version_errors") for v in (0, 2, 0xFF)],
    *[(f"type {t:#04x}", lambda s, t=t: _framed(1, t, s, _HP),
       Nack(t, NackError.UNKNOWN_TYPE, 0), "unknown_type") for t in (0x00, 0x03, 0x77, 0xFF)],
    *[(f"board-to-host type {t.name}", lambda s, t=t, n=n: _framed(1, int(t), s, bytes(n)),
       Nack(int(t), NackError.UNSUPPORTED, 0), "frames_ok")
      for t, n in ((MsgType.INFO, 28), (MsgType.MEASUREMENT, 20), (MsgType.ACK, 2),
                   (MsgType.NACK, 4))],
    *[(f"{t.name} with a {n}-byte payload", lambda s, t=t, n=n: _framed(1, int(t), s, bytes(n)),
       Nack(int(t), NackError.BAD_LENGTH, 0), "payload_errors")
      for t, n in ((MsgType.HELLO, 0), (MsgType.HELLO, 1), (MsgType.HELLO, 3),
                   (MsgType.SAMPLE, 0), (MsgType.SAMPLE, 3), (MsgType.SAMPLE, 5),
                   (MsgType.SET_OUTPUTS, 13), (MsgType.SET_OUTPUTS, 15),
                   (MsgType.HEARTBEAT, 5), (MsgType.HEARTBEAT, 7),
                   (MsgType.MEASUREMENT, 19), (MsgType.MEASUREMENT, 21))],
    # issue 14: read as dt = 2,823,488,001 us by the harness that peeked before checking
    ("SAMPLE with a 2-byte payload, valid CRC", lambda s: _framed(1, _SAMPLE, s, b"\xff\xff"),
     Nack(_SAMPLE, NackError.BAD_LENGTH, 0), "payload_errors"),
    *[(f"length field {n} for 2 bytes", lambda s, n=n: _framed(1, _HELLO, s, _HP, length=n),
       None, "length_errors") for n in (0, 1, 3, 240, 0xFFFF)],
    ("length field 4, SAMPLE with 2 bytes",
     lambda s: _framed(1, _SAMPLE, s, _DT_50_MIN[:2], length=4), None, "length_errors"),
    ("241-byte payload, length consistent", lambda s: _framed(1, _HELLO, s, bytes(241)), None,
     "length_errors"),
    *[(f"CRC xor {x:#06x}", lambda s, x=x: _framed(1, _SAMPLE, s, _DT_50_MIN, crc_xor=x), None,
       "crc_errors") for x in (0x0001, 0x0100, 0x8000, 0xFFFF)],
    ("COBS code past the end", lambda s: bytes([0x09, 1, 1, 2, 0]), None, "cobs_errors"),
    ("7 bytes: shorter than a header and CRC", lambda s: bytes([8, 1, 1, 2, 3, 4, 5, 6, 0]),
     None, "short_errors"),
    ("seq 0 (never used by a host)", lambda s: _framed(1, _HELLO, 0, _HP), (0, Info),
     "frames_ok"),
    ("seq 0xFFFF", lambda s: _framed(1, _HELLO, 0xFFFF, _HP), (0xFFFF, Info), "frames_ok"),
]


def test_every_header_field_out_of_range(link: RawLink) -> None:
    """Version, type, payload length, length field, seq and CRC out of range: NACKed or dropped
    as the spec's decoding rules say, counted, and the next valid HELLO is answered. A SAMPLE
    that is not valid never moves the board's clock."""
    t0_ms = link.sample_ms()
    for name, make, answer, counter in _HEADER_CASES:
        seq = link.next_seq()
        before = link.counters()
        link.write(make(seq))
        got = [(f.seq, f.msg) for f in link.hello()]
        if answer is None:
            want: list[tuple[int, object]] = []
        elif isinstance(answer, Nack):
            want = [(seq, answer)]
        else:
            ans_seq, ans_cls = answer  # type: ignore[misc]
            assert len(got) == 1 and got[0][0] == ans_seq and isinstance(got[0][1], ans_cls), \
                f"{name}: {got}"
            want = got
        assert got == want, f"{name}: answered {got}, expected {want}"
        d = _delta(before, link.counters())
        want_d = {"frames_ok": 2} if counter == "frames_ok" else {counter: 1, "frames_ok": 1}
        assert d == want_d, f"{name}: counters moved {d}"
    t1_ms = link.sample_ms()
    # Only the one valid SAMPLE's dt. The firmware's MCU also runs while bytes and answers flow
    # (~40 cases x a few ms, absorbed by later dts), hence the slack.
    assert _SAMPLE_DT_US // 1000 - 100 <= t1_ms - t0_ms <= 1500


def test_a_truncated_frame_then_a_valid_one(link: RawLink) -> None:
    """A SAMPLE (dt 50 min) cut at every byte: with its delimiter it is dropped and the next
    HELLO answered; without one, the next frame joins the broken run and is lost with it (one
    drop), and the HELLO after that is answered. No cut moves the board's clock."""
    t0_ms = link.sample_ms()
    full = _framed(1, _SAMPLE, 0x1234, _DT_50_MIN)
    for cut in range(1, len(full) - 1):
        for delimited in (True, False):
            before = link.counters()
            link.write(full[:cut] + (b"\x00" if delimited else b""))
            if not delimited:
                lost = link.next_seq()
                link.write(encode_frame(Hello(1, 1), lost))
            assert link.hello() == [], f"cut at {cut}, delimited {delimited}"
            d = _delta(before, link.counters())
            assert d.pop("frames_ok") == 1 and sum(d.values()) == 1 \
                and set(d) <= set(_ERRORS), f"cut at {cut}, delimited {delimited}: {d}"
    t1_ms = link.sample_ms()
    assert _SAMPLE_DT_US // 1000 - 100 <= t1_ms - t0_ms <= 1500


def test_the_longest_sample_is_answered_within_the_client_timeout(link: RawLink) -> None:
    """A valid SAMPLE with dt_us = 2**32 - 1 (71.6 min): the board's clock moves by it, or by
    the backend's bound (the simavr harness runs at most 10 s of MCU time per SAMPLE), and the
    answer comes within a BoardClient's reply timeout."""
    t0_ms = link.sample_ms(0)
    t0 = time.monotonic()
    t1_ms = link.sample_ms(0xFFFF_FFFF)
    wall_s = time.monotonic() - t0
    bound = link.board.max_sample_dt_s
    want_ms = 0xFFFF_FFFF // 1000 if bound is None else bound * 1000
    assert (t1_ms - t0_ms) % 2**32 == pytest.approx(want_ms, abs=100)
    assert wall_s < link.board.timeout_s
