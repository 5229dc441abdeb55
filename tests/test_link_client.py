"""SerialLink and BoardClient over a real pseudo-terminal (and one loop:// test).

The board side is a small peer thread on the pty master that speaks protocol v1 through
hil.protocol (not the emulator): each test scripts its misbehaviour (silence, dropped or late
replies, garbage, wrong versions, hang-up). The client side is pyserial on the pty slave, as in
production.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from boards.config import load_board
from hil.client import (
    BoardClient,
    BoardMismatchError,
    BoardNackError,
    ProtocolVersionError,
)
from hil.link import BoardLostError, BoardTimeoutError, SerialLink
from hil.protocol import (
    Ack,
    BoardKind,
    Capability,
    DecodedFrame,
    FaultInject,
    FrameDecoder,
    Heartbeat,
    Hello,
    Info,
    InjectedFault,
    Measurement,
    MsgType,
    Nack,
    NackError,
    Outputs,
    Sample,
    SetOutputs,
    Status,
    encode_frame,
)

PROFILE = load_board("emu-23")

# Per-attempt timeout of the client in these tests: short, so the timeout paths run quickly.
TIMEOUT_S = 0.15


@dataclass
class PtyBoard:
    """A protocol v1 board on a pty master, run in a thread. ``script`` may override replies."""

    master: int
    n_cells: int = 23
    n_thermistors: int = 6
    n_load_cells: int = 4
    info_version: int = 1
    boot_id: int = 1
    answer_hello: bool = True
    script: Callable[[PtyBoard, DecodedFrame], bool] | None = None  # True = handled
    received: list[DecodedFrame] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    closed: bool = False

    def __post_init__(self) -> None:
        self.decoder = FrameDecoder()
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    # -- board behaviour

    def info(self) -> Info:
        return Info(self.info_version, BoardKind.EMULATOR, (0, 1, 0), self.n_cells,
                    self.n_thermistors, self.n_load_cells, 1000,
                    Capability.SIM_CLOCK | Capability.FAULT_INJECT, self.boot_id, "pty#0")

    def measurement(self, sample: Sample, seq: int) -> Measurement:
        # timestamp = dt in ms and current = seq, so a test can tell which request it answers.
        return Measurement(sample.dt_us // 1000, Status.SIM_CLOCK, seq, 85_000,
                           tuple(37_000 + i for i in range(self.n_cells)),
                           (15_000,) * self.n_thermistors, (600_000,) * self.n_load_cells)

    def send(self, msg: object, seq: int, version: int = 1) -> None:
        self.write(encode_frame(msg, seq, version=version))  # type: ignore[arg-type]

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def reply(self, f: DecodedFrame) -> None:
        """The default, well-behaved answer."""
        if f.error is not None:
            self.send(f.nack(), f.seq)
            return
        m = f.msg
        if isinstance(m, Hello):
            if self.answer_hello:
                self.send(self.info(), f.seq)
        elif isinstance(m, Sample):
            self.send(self.measurement(m, f.seq), f.seq)
        elif isinstance(m, SetOutputs):
            if m.charge_limit_ma < 0 or m.discharge_limit_ma < 0:
                self.send(Nack(MsgType.SET_OUTPUTS, NackError.BAD_VALUE, 0), f.seq)
            else:
                self.send(Ack(MsgType.SET_OUTPUTS), f.seq)
        elif isinstance(m, FaultInject):
            self.send(Ack(MsgType.FAULT_INJECT), f.seq)

    def reboot(self) -> None:
        self.boot_id += 1
        self.send(self.info(), 0)

    def hang_up(self) -> None:
        """The board vanishes: close the pty master (the slave then reads EIO / hang-up)."""
        self.closed = True
        os.close(self.master)

    # -- thread

    def _run(self) -> None:
        while not self._stop and not self.closed:
            r, _, _ = select.select([self.master, self._wake_r], [], [])
            if self._wake_r in r or self.closed:
                return
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            for f in self.decoder.feed(data):
                with self.cond:
                    self.received.append(f)
                    self.cond.notify_all()
                if self.script is None or not self.script(self, f):
                    self.reply(f)

    def wait_for(self, pred: Callable[[list[DecodedFrame]], bool], timeout_s: float = 2.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: pred(self.received), timeout_s)

    def of_type(self, cls: type) -> list[DecodedFrame]:
        with self.cond:
            return [f for f in self.received if isinstance(f.msg, cls)]

    def stop(self) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")
        self.thread.join(2.0)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        if not self.closed:
            os.close(self.master)


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    # Raw line discipline from the start: bytes the board writes before the host configures the
    # port must not be cooked (CR/NL translation, echo).
    tty.setraw(slave)
    path = os.ttyname(slave)
    yield master, path
    os.close(slave)


@pytest.fixture
def make_board(pty_pair: tuple[int, str]) -> Iterator[Callable[..., tuple[PtyBoard, str]]]:
    boards: list[PtyBoard] = []

    def make(**kw: object) -> tuple[PtyBoard, str]:
        b = PtyBoard(pty_pair[0], **kw)  # type: ignore[arg-type]
        boards.append(b)
        return b, pty_pair[1]

    yield make
    for b in boards:
        b.stop()


def client_for(path: str, **kw: object) -> BoardClient:
    kw.setdefault("timeout_s", TIMEOUT_S)
    return BoardClient(path, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- handshake


def test_handshake_by_hello(make_board) -> None:
    board, path = make_board()
    with client_for(path, profile=PROFILE) as c:
        assert c.info == board.info()
        assert c.info.board_id == "pty#0"
        assert len(board.of_type(Hello)) == 1
        assert board.of_type(Hello)[0].seq == 1  # the host's first seq
        assert c.counters["frames_ok"] == 1


def test_handshake_by_boot_info(make_board) -> None:
    """The board boots after the port opens (DTR reset) and announces itself: no HELLO."""
    board, path = make_board(answer_hello=False)
    link = SerialLink(path)  # opening resets the input buffer, so the board boots after it
    board.reboot()
    c = client_for(path, profile=PROFILE, link=link, hello_wait_s=5.0)
    info = c.open()
    try:
        assert info.boot_id == 2
        assert board.of_type(Hello) == []
    finally:
        c.close()


def test_handshake_retries_hello_then_times_out(make_board) -> None:
    board, path = make_board(answer_hello=False)
    c = client_for(path, retries=2)
    t0 = time.monotonic()
    with pytest.raises(BoardTimeoutError, match="no INFO"):
        c.open()
    elapsed = time.monotonic() - t0
    assert elapsed < 0.05 + 3 * TIMEOUT_S + 0.5
    assert [f.seq for f in board.of_type(Hello)] == [1, 2, 3]  # a new seq per attempt
    assert c.link is None  # closed on failure


def test_version_mismatch_nack(make_board) -> None:
    """A v2-only board NACKs HELLO(1, 1) with BAD_VERSION, detail = its version."""

    def v2_only(board: PtyBoard, f: DecodedFrame) -> bool:
        if isinstance(f.msg, Hello):
            board.send(Nack(MsgType.HELLO, NackError.BAD_VERSION, 2), f.seq)
            return True
        return False

    _, path = make_board(script=v2_only)
    with pytest.raises(ProtocolVersionError, match="version 2"):
        client_for(path).open()


def test_board_speaking_another_header_version_is_named(make_board) -> None:
    def v2_frames(board: PtyBoard, f: DecodedFrame) -> bool:
        board.send(Nack(MsgType.HELLO, NackError.BAD_VERSION, 2), f.seq, version=2)
        return True

    _, path = make_board(script=v2_frames)
    t0 = time.monotonic()
    with pytest.raises(ProtocolVersionError, match="version 2 frames"):
        client_for(path, timeout_s=2.0).open()
    assert time.monotonic() - t0 < 2.0  # recognised at once, not after the timeout


def test_info_with_other_protocol_version(make_board) -> None:
    _, path = make_board(info_version=3)
    with pytest.raises(ProtocolVersionError, match="speaks protocol version 3"):
        client_for(path).open()


def test_board_answers_bad_version_for_our_frames(make_board) -> None:
    """Board side of rule 5, with the peer's codec: a v9 frame gets NACK BAD_VERSION."""
    board, path = make_board()
    with SerialLink(path) as link:
        link.write(encode_frame(Sample(1), 4242, version=9))
        f = link.recv(2.0)
        assert f is not None and f.seq == 4242
        assert f.msg == Nack(MsgType.SAMPLE, NackError.BAD_VERSION, 1)


def test_profile_mismatch_names_both(make_board) -> None:
    _, path = make_board(n_cells=22)
    with pytest.raises(BoardMismatchError) as e:
        client_for(path, profile=PROFILE).open()
    msg = str(e.value)
    assert "22 cells" in msg and "23 cells" in msg and "emu-23" in msg and path in msg


# --------------------------------------------------------------------------- requests


def test_sample_round_trip_and_pipelined_requests(make_board) -> None:
    board, path = make_board()
    with client_for(path, profile=PROFILE) as c:
        m = c.sample(0.1)
        assert m.timestamp_ms == 100 and len(m.cell_raw) == 23
        s1 = c.request_sample(0.001)
        s2 = c.request_sample(0.002)
        assert s2 == s1 + 1
        # Waiting on the second first: the first's reply is kept, not dropped.
        assert c.wait_measurement(s2).timestamp_ms == 2
        assert c.wait_measurement(s1).timestamp_ms == 1
        assert c.stats.stale_replies == 0 and c.stats.retries == 0


def test_replies_matched_by_seq_and_stale_dropped(make_board) -> None:
    def stale_first(board: PtyBoard, f: DecodedFrame) -> bool:
        if isinstance(f.msg, Sample):
            # An answer to a request nobody waits for, then the real one out of order.
            board.send(board.measurement(Sample(999_000), f.seq), (f.seq + 1000) & 0xFFFF)
            board.send(board.measurement(f.msg, f.seq), f.seq)
            return True
        return False

    _, path = make_board(script=stale_first)
    with client_for(path) as c:
        m = c.sample(0.05)
        assert m.timestamp_ms == 50
        assert c.stats.stale_replies == 1


def test_reply_of_the_wrong_type_is_ignored(make_board) -> None:
    def ack_for_sample(board: PtyBoard, f: DecodedFrame) -> bool:
        if isinstance(f.msg, Sample):
            board.send(Ack(MsgType.SAMPLE), f.seq)
            board.send(board.measurement(f.msg, f.seq), f.seq)
            return True
        return False

    _, path = make_board(script=ack_for_sample)
    with client_for(path) as c:
        assert c.sample(0.01).timestamp_ms == 10
        assert c.stats.unexpected == 1


def test_timeout_and_retry_with_new_seq(make_board) -> None:
    dropped: list[int] = []

    def drop_first_reply(board: PtyBoard, f: DecodedFrame) -> bool:
        if isinstance(f.msg, Sample) and not dropped:
            dropped.append(f.seq)  # processed (sim clock advanced) but the reply is lost
            return True
        return False

    board, path = make_board(script=drop_first_reply)
    with client_for(path, retries=2) as c:
        seq = c.request_sample(0.1)
        m = c.wait_measurement(seq)
        samples = board.of_type(Sample)
        assert [f.seq for f in samples] == [seq, seq + 1]
        # The retry does not advance the sim clock a second time.
        assert [f.msg.dt_us for f in samples] == [100_000, 0]  # type: ignore[union-attr]
        assert m.current_raw == seq + 1 and m.timestamp_ms == 0
        assert (c.stats.timeouts, c.stats.retries) == (1, 1)


def test_late_reply_to_the_first_attempt_completes_the_request(make_board) -> None:
    held: list[DecodedFrame] = []

    def late(board: PtyBoard, f: DecodedFrame) -> bool:
        if isinstance(f.msg, Sample):
            if not held:
                held.append(f)
                return True
            # The retry arrived: answer the original first, then the retry.
            board.send(board.measurement(held[0].msg, held[0].seq), held[0].seq)  # type: ignore
            board.send(board.measurement(f.msg, f.seq), f.seq)
            return True
        return False

    board, path = make_board(script=late)
    with client_for(path) as c:
        seq = c.request_sample(0.2)
        m = c.wait_measurement(seq)
        assert m.current_raw == seq and m.timestamp_ms == 200
        # The retry's answer comes next and nobody waits for it any more.
        c.poll(1.0)
        assert c.stats.stale_replies == 1
        assert c.sample(0.01).timestamp_ms == 10  # and the link is still in step


def test_silent_board_raises_timeout_within_bound(make_board) -> None:
    def silent(board: PtyBoard, f: DecodedFrame) -> bool:
        return isinstance(f.msg, Sample)

    board, path = make_board(script=silent)
    with client_for(path, retries=1) as c:
        t0 = time.monotonic()
        with pytest.raises(BoardTimeoutError, match="no reply to SAMPLE"):
            c.sample(0.1)
        elapsed = time.monotonic() - t0
        assert 2 * TIMEOUT_S * 0.9 <= elapsed < 2 * TIMEOUT_S + 0.5
        assert len(board.of_type(Sample)) == 2
        assert (c.stats.timeouts, c.stats.retries) == (2, 1)


def test_board_that_hangs_up_raises_board_lost_quickly(make_board) -> None:
    def vanish(board: PtyBoard, f: DecodedFrame) -> bool:
        if isinstance(f.msg, Sample):
            board.hang_up()
            return True
        return False

    _, path = make_board(script=vanish)
    with client_for(path, timeout_s=2.0) as c:
        t0 = time.monotonic()
        with pytest.raises(BoardLostError, match=path):
            c.sample(0.1)
        assert time.monotonic() - t0 < 2.0  # noticed from the port, not by the timeout


def test_garbage_and_corrupted_frames_are_survived(make_board) -> None:
    def noisy(board: PtyBoard, f: DecodedFrame) -> bool:
        if isinstance(f.msg, Sample):
            good = encode_frame(board.measurement(f.msg, f.seq), f.seq)
            corrupt = bytearray(good)
            corrupt[10] ^= 0x40  # one bit flipped inside the frame
            board.write(b"\xde\xad\x00\x00" + bytes(corrupt) + b"line noise" + b"\x00"
                        + b"\x07" * 400 + b"\x00" + good[:30])  # a frame cut short ...
            board.write(b"\x00" + good)  # ... then the delimiter and the real answer
            return True
        return False

    _, path = make_board(script=noisy)
    with client_for(path) as c:
        assert c.sample(0.03).timestamp_ms == 30
        counters = c.counters
        assert counters["crc_errors"] + counters["cobs_errors"] >= 2
        assert counters["oversize"] == 1
        assert counters["resyncs"] >= 4
        assert counters["frames_ok"] == 2  # INFO + the MEASUREMENT


def test_set_outputs_ack_and_nack(make_board) -> None:
    board, path = make_board()
    with client_for(path) as c:
        c.set_outputs(Outputs.CONTACTOR_POS | Outputs.CONTACTOR_NEG, 0b101, 5.0, 10.0)
        (f,) = board.of_type(SetOutputs)
        assert f.msg == SetOutputs(3, 5, 5000, 10000)
        with pytest.raises(BoardNackError) as e:
            c.set_outputs(0, 0, -1.0, 0.0)
        assert e.value.error is NackError.BAD_VALUE
        assert "SET_OUTPUTS" in str(e.value) and "BAD_VALUE" in str(e.value)
        assert c.stats.nacks == 1


def test_inject_fault_and_heartbeat(make_board) -> None:
    board, path = make_board()
    with client_for(path) as c:
        c.inject_fault(InjectedFault.CELL_SOFT_SHORT, target=4, value=50.0)
        c.inject_fault(InjectedFault.CELL_SOFT_SHORT, target=4, clear=True)
        assert [f.msg for f in board.of_type(FaultInject)] == [
            FaultInject(1, 4, 0, 50.0), FaultInject(1, 4, 1, 0.0)]
        c.heartbeat(2, 123_456)
        board.wait_for(lambda r: any(isinstance(f.msg, Heartbeat) for f in r))
        assert board.of_type(Heartbeat)[0].msg == Heartbeat(2, 123_456)


def test_board_reset_is_noticed(make_board) -> None:
    def reboot_on_second_sample(board: PtyBoard, f: DecodedFrame) -> bool:
        if isinstance(f.msg, Sample) and len(board.of_type(Sample)) == 2:
            board.reboot()  # the board restarts: INFO seq 0 with a new boot_id
        return False

    _, path = make_board(script=reboot_on_second_sample)
    with client_for(path) as c:
        c.sample(0.1)
        assert not c.take_reset()
        c.sample(0.1)
        assert c.resets == 1 and c.reset_pending
        assert c.take_reset() and not c.take_reset()
        assert c.info.boot_id == 2


def test_reopen_finds_reset_and_keeps_counters(make_board) -> None:
    board, path = make_board()
    c = client_for(path)
    c.open()
    c.sample(0.1)
    c.close()
    board.boot_id = 5  # the board restarted while the port was closed
    c.open()
    try:
        assert c.resets == 1 and c.take_reset()
        assert c.counters["frames_ok"] == 3  # INFO, MEASUREMENT, INFO over both opens
        assert c.counters["frames_sent"] == 3
    finally:
        c.close()


def test_host_seq_wraps_over_the_pty(make_board) -> None:
    board, path = make_board()
    with client_for(path) as c:
        c.link._seq = 65534  # noqa: SLF001 (jump to the wrap instead of 65k round trips)
        seqs = [c.request_sample(0.0) for _ in range(3)]
        assert seqs == [65535, 1, 2]
        assert [c.wait_measurement(s).current_raw for s in seqs] == seqs


# --------------------------------------------------------------------------- loop://


def test_loop_url_link() -> None:
    with SerialLink("loop://") as link:
        assert link.recv(0.0) is None
        seq = link.send(Hello())
        link.write(b"\x00junk\x00")
        seq2 = link.send(Sample(5))
        f1, f2 = link.recv(1.0), link.recv(1.0)
        assert (f1.seq, f1.msg) == (seq, Hello())  # type: ignore[union-attr]
        assert (f2.seq, f2.msg) == (seq2, Sample(5))  # type: ignore[union-attr]
        assert link.counters.frames_ok == 2 and link.counters.cobs_errors == 1
        t0 = time.monotonic()
        assert link.recv(0.1) is None
        assert time.monotonic() - t0 >= 0.09


def test_open_missing_port_is_board_lost() -> None:
    with pytest.raises(BoardLostError, match="cannot open"):
        SerialLink("/dev/nonexistent-ssb-bms-port")
