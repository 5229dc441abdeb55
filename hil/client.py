"""Board client: handshake, version and profile check, request/response matched by seq.

One :class:`BoardClient` talks to one board over one :class:`hil.link.SerialLink`. The
controller asks every board before it waits on any::

    seqs = [c.request_sample(dt_s) for c in clients]        # non-blocking sends
    meas = [c.wait_measurement(s) for c, s in zip(clients, seqs)]

Replies are matched by seq (docs/protocol.md, "Sequence numbers"); a reply nobody waits for
is counted as stale and dropped. A request that gets no answer within ``timeout_s`` is sent again
with a new seq, up to ``retries`` times; a late answer to any of its seqs still completes it.
A SAMPLE is retried with ``dt_us = 0``: when only the reply was lost the board has already
advanced its sim clock, and advancing twice would skip plant time silently; the MEASUREMENT's
timestamp tells the controller what happened either way.

An INFO answers only the HELLO it carries the seq of (or is the boot INFO, seq 0): an INFO with
another seq is a stale reply (a HELLO of an earlier session) and is dropped, never taken as the
board's description. When the run's clock is given, the board's clock (INFO capability
``SIM_CLOCK``) must be the same: a sim-clock board under a real-clock host never advances, and a
real-clock board under a sim-clock host ignores the SAMPLEs' dt; either is refused at the
handshake with one line naming both (:class:`ClockMismatchError`).

The usual tick has a fast lane with the same outcome (tests/test_link_fast.py): a SAMPLE
requested while no other SAMPLE is kept that way is only its seq (no pending record), framed
with any HEARTBEAT deferred before it in one C call (:meth:`SerialLink.send_sample`); waiting
for it into a lane first takes what has already arrived without a deadline
(:meth:`SerialLink.try_lane`). Anything else (another request, a poll, a wait on another seq,
an answer that is not alone) first turns the seq into the pending record it would have been
(``_materialize``) and goes the general way.

An INFO with a new ``boot_id`` at any time means the board reset (its contactors are open and
its state is lost): :attr:`BoardClient.resets` counts it and :meth:`BoardClient.take_reset`
lets the controller poll for it once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from boards.config import BoardProfile
from hil.link import (
    BoardLostError,
    BoardTimeoutError,
    LinkError,
    MeasurementLane,
    SerialLink,
)
from hil.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Capability,
    DecodedFrame,
    FaultFlags,
    FaultInject,
    FrameErrorKind,
    Heartbeat,
    Hello,
    Info,
    Measurement,
    Message,
    MsgType,
    Nack,
    NackError,
    Sample,
    SetOutputs,
)

__all__ = [
    "BoardClient", "ClientCounters", "BoardNackError", "ProtocolVersionError",
    "BoardMismatchError", "ClockMismatchError", "LinkError", "BoardLostError", "BoardTimeoutError",
    "DEFAULT_HELLO_WAIT_S", "AUTO_RESET_HELLO_WAIT_S",
]

# How long open() listens for the boot INFO before it sends HELLO. A pty or a board without
# auto-reset sends nothing on open, so the wait is short; an Arduino-class board resets on DTR
# and its bootloader runs for about 1 to 2 s before the sketch (assumption from the Optiboot /
# stk500v2 bootloaders' timeouts), so device paths of USB CDC / FTDI ports wait longer.
DEFAULT_HELLO_WAIT_S = 0.05
AUTO_RESET_HELLO_WAIT_S = 2.5
_AUTO_RESET_PREFIXES = ("/dev/ttyACM", "/dev/ttyUSB", "/dev/cu.usb", "/dev/tty.usb")

_MAX_PENDING = 256
_SAMPLE_RETRY = Sample(0)  # what a timed-out SAMPLE is re-sent as (no further advance)

# The replies each request type accepts (a NACK is accepted for all).
_REPLY_TYPES = {
    MsgType.HELLO: Info,
    MsgType.SAMPLE: Measurement,
    MsgType.SET_OUTPUTS: Ack,
    MsgType.FAULT_INJECT: Ack,
}


class BoardNackError(LinkError):
    """The board refused a request (NACK); ``error`` is the NackError code."""

    def __init__(self, port: str, request: MsgType, nack: Nack) -> None:
        self.request = request
        self.nack = nack
        try:
            self.error: NackError | int = NackError(nack.error)
            name = self.error.name
        except ValueError:
            self.error = nack.error
            name = f"unknown code {nack.error}"
        self.detail = nack.detail
        super().__init__(f"{port}: board refused {request.name}: NACK {name} "
                         f"(detail {nack.detail})")


class ProtocolVersionError(LinkError):
    """The board speaks another protocol version than this host."""


class BoardMismatchError(LinkError):
    """The board's channel counts differ from the board profile's."""


class ClockMismatchError(LinkError):
    """The board runs another clock (sim or real, INFO capability SIM_CLOCK) than the host."""


@dataclass(slots=True)
class ClientCounters:
    """Request/response statistics of one board (decoder counters live in ``link_counters``)."""

    requests: int = 0
    replies: int = 0
    timeouts: int = 0       # attempts that timed out (each one is retried or raised)
    retries: int = 0        # requests sent again with a new seq
    stale_replies: int = 0  # replies with a seq nobody waits for (dropped)
    unexpected: int = 0     # frames of a type that does not answer their request, or unsolicited
    nacks: int = 0
    resets: int = 0         # INFO with a new boot_id after the handshake


@dataclass(slots=True)
class _Pending:
    kind: MsgType
    seqs: list[int] = field(default_factory=list)
    reply: Message | None = None


class BoardClient:
    """Client of one board. Use as a context manager or call :meth:`open` / :meth:`close`.

    ``timeout_s`` is the wait per attempt; a request fails after ``retries + 1`` attempts,
    i.e. within about ``(retries + 1) * timeout_s``. ``hello_wait_s`` is how long
    :meth:`open` listens for the boot INFO before sending HELLO (default: 2.5 s on
    ``/dev/ttyACM*`` / ``/dev/ttyUSB*`` ports, 0.05 s elsewhere).
    """

    def __init__(self, port_or_url: str, profile: BoardProfile | None = None,
                 timeout_s: float = 0.5, retries: int = 2, hello_wait_s: float | None = None,
                 baudrate: int = 115200, link: SerialLink | None = None,
                 clock: str | None = None) -> None:
        """``clock``: "sim" or "real" to require the board to run that clock (None: any)."""
        if timeout_s <= 0 or retries < 0:
            raise ValueError("timeout_s must be > 0 and retries >= 0")
        if clock not in (None, "sim", "real"):
            raise ValueError(f"clock must be 'sim', 'real' or None, got {clock!r}")
        self.clock = clock
        self.port = port_or_url
        self.profile = profile
        self.timeout_s = timeout_s
        self.retries = retries
        if hello_wait_s is None:
            hello_wait_s = (AUTO_RESET_HELLO_WAIT_S if port_or_url.startswith(_AUTO_RESET_PREFIXES)
                            else DEFAULT_HELLO_WAIT_S)
        self.hello_wait_s = hello_wait_s
        self.baudrate = baudrate
        self.stats = ClientCounters()
        # An already open link may be passed in (a test that must open the port before the board
        # boots, or a spy); otherwise open() opens port_or_url.
        self.link: SerialLink | None = link
        self._info: Info | None = None
        self._pending: dict[int, _Pending] = {}
        # The fast lane of the usual tick (module docstring): the seq of a SAMPLE pending but
        # kept as a number (0: none); anything else that needs the pending requests makes it
        # a _Pending first (_materialize).
        self._sample_seq = 0
        self._dt_s = 0.0
        self._dt_us = 0
        self._retry_msgs: dict[int, Message] = {}
        self._reset_flag = False
        self._closed_totals: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> Info:
        """Open the port, wait for the boot INFO or ask with HELLO; check version and profile."""
        if self.link is None:
            self.link = SerialLink(self.port, baudrate=self.baudrate)
        try:
            info = self._handshake()
            self._check(info)
        except BaseException:
            self.close()
            raise
        self._on_info(info)  # a re-open that finds a new boot_id counts as a reset
        return info

    def close(self) -> None:
        if self.link is not None:
            # Keep the link's counters: a controller that reopens after a lost board still
            # reports totals since the client was made.
            for k, v in self._link_totals(self.link).items():
                self._closed_totals[k] = self._closed_totals.get(k, 0) + v
            self.link.close()
            self.link = None
        self._pending.clear()
        self._sample_seq = 0

    def __enter__(self) -> BoardClient:
        if self.link is None:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handshake(self) -> Info:
        link = self._link()
        # 1. A freshly reset board announces itself (seq 0): wait a little for that.
        deadline = time.monotonic() + self.hello_wait_s
        while (remaining := deadline - time.monotonic()) > 0:
            f = self._recv_handshake(link, remaining)
            if f is None:
                break
            if isinstance(f.msg, Info) and f.seq == 0:
                return f.msg
            self._count_leftover(f)  # leftovers of a previous session: ignore
        # 2. Ask. The INFO answering one of our HELLOs, or the boot INFO (seq 0, it may cross
        # our HELLO) answers; an INFO with another seq answers an earlier session: stale.
        asked: set[int] = set()
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
            seq = link.send(Hello(PROTOCOL_VERSION, PROTOCOL_VERSION))
            asked.add(seq)
            self.stats.requests += 1
            deadline = time.monotonic() + self.timeout_s
            while (remaining := deadline - time.monotonic()) > 0:
                f = self._recv_handshake(link, remaining)
                if f is None:
                    break
                m = f.msg
                if isinstance(m, Info) and (f.seq == 0 or f.seq in asked):
                    self.stats.replies += 1
                    return m
                if isinstance(m, Nack) and f.seq == seq:
                    self.stats.nacks += 1
                    if m.error == NackError.BAD_VERSION:
                        raise ProtocolVersionError(
                            f"{self.port}: board speaks protocol version {m.detail}; this host "
                            f"speaks {PROTOCOL_VERSION}")
                    raise BoardNackError(self.port, MsgType.HELLO, m)
                self._count_leftover(f)
            self.stats.timeouts += 1
        raise BoardTimeoutError(
            f"{self.port}: no INFO from the board (waited {self.hello_wait_s:g} s for the boot "
            f"INFO, then {self.retries + 1} HELLO attempts of {self.timeout_s:g} s)")

    def _count_leftover(self, f: DecodedFrame) -> None:
        """A frame the handshake does not take: a reply with a seq is stale, the rest
        unexpected."""
        if f.seq != 0:
            self.stats.stale_replies += 1
        else:
            self.stats.unexpected += 1

    def _recv_handshake(self, link: SerialLink, timeout_s: float) -> DecodedFrame | None:
        """Next frame; a frame with another header version names the board's version at once."""
        deadline = time.monotonic() + timeout_s
        while True:
            f = link.recv_any(max(deadline - time.monotonic(), 0.0))
            if f is None or f.error is None:
                return f
            if f.error is FrameErrorKind.VERSION:
                raise ProtocolVersionError(
                    f"{self.port}: board sends protocol version {f.version} frames; this "
                    f"host speaks {PROTOCOL_VERSION}")
            self.stats.unexpected += 1

    def _check(self, info: Info) -> None:
        if info.protocol_version != PROTOCOL_VERSION:
            raise ProtocolVersionError(
                f"{self.port}: board {info.board_id!r} speaks protocol version "
                f"{info.protocol_version}; this host speaks {PROTOCOL_VERSION}")
        if self.clock is not None:
            board_clock = "sim" if info.capabilities & Capability.SIM_CLOCK else "real"
            if board_clock != self.clock:
                raise ClockMismatchError(
                    f"{self.port}: board {info.board_id!r} runs the {board_clock} clock; this "
                    f"run uses the {self.clock} clock: pass --clock {board_clock}")
        p = self.profile
        if p is None:
            return
        board = (info.n_cells, info.n_thermistors, info.n_load_cells)
        want = (p.cells, p.thermistors, p.load_cells)
        if board != want:
            raise BoardMismatchError(
                f"{self.port}: board {info.board_id!r} reports {board[0]} cells, {board[1]} "
                f"thermistors, {board[2]} load cells; board profile {p.name!r} ({p.path}) "
                f"expects {want[0]} cells, {want[1]} thermistors, {want[2]} load cells")

    # ------------------------------------------------------------------ state

    @property
    def info(self) -> Info:
        """The board's INFO (updated when the board resets)."""
        if self._info is None:
            raise LinkError(f"{self.port}: not open")
        return self._info

    @property
    def resets(self) -> int:
        """How many times the board reset (new boot_id) since open()."""
        return self.stats.resets

    @property
    def reset_pending(self) -> bool:
        """True after a board reset until :meth:`take_reset` is called."""
        return self._reset_flag

    def take_reset(self) -> bool:
        """True once per board reset noticed since the last call (then cleared)."""
        flag, self._reset_flag = self._reset_flag, False
        return flag

    @property
    def counters(self) -> dict[str, int]:
        """Flat snapshot: link decoder counters (LinkCounters fields), resyncs (= frames dropped),
        frames_sent, and the ClientCounters fields; totals over every open() of this client."""
        out = dict(self._closed_totals)
        if self.link is not None:
            for k, v in self._link_totals(self.link).items():
                out[k] = out.get(k, 0) + v
        out.update({k: getattr(self.stats, k) for k in self.stats.__slots__})
        return out

    @staticmethod
    def _link_totals(link: SerialLink) -> dict[str, int]:
        c = link.counters
        out = c.as_dict()
        out["resyncs"] = c.errors
        out["frames_sent"] = link.stats.frames_sent
        return out

    def _link(self) -> SerialLink:
        if self.link is None:
            raise LinkError(f"{self.port}: not open")
        return self.link

    # ------------------------------------------------------------------ requests

    def request_sample(self, dt_s: float) -> int:
        """Send SAMPLE (advance the sim clock by dt_s, then measure) without waiting; the seq."""
        if dt_s != self._dt_s:
            self._dt_s, self._dt_us = dt_s, int(round(dt_s * 1e6))
        link = self.link
        if link is not None and not self._sample_seq and len(self._pending) < _MAX_PENDING:
            # The usual tick: the seq alone is the bookkeeping (_materialize makes it a
            # _Pending, in its place, before anything else reads or adds one; with fewer than
            # _MAX_PENDING already there, _request would not have forgotten one either).
            seq = link.send_sample(self._dt_us)
            self._sample_seq = seq
            self.stats.requests += 1
            return seq
        return self._request(Sample(self._dt_us))

    def wait_measurement(self, seq: int, timeout_s: float | None = None,
                         retries: int | None = None) -> Measurement:
        """Wait for the MEASUREMENT answering the SAMPLE sent with ``seq`` (retrying it)."""
        m = self._wait(seq, timeout_s, _SAMPLE_RETRY, None, retries)
        assert isinstance(m, Measurement)  # noqa: S101 (guaranteed by _REPLY_TYPES)
        return m

    def wait_measurement_into(self, seq: int, lane: MeasurementLane,
                              timeout_s: float | None = None, retries: int | None = None
                              ) -> Measurement | MeasurementLane:
        """:meth:`wait_measurement`, with a fast lane: when the answer arrives alone in one
        read (the usual case), its values go straight into ``lane`` and the lane is returned;
        otherwise the Measurement, as wait_measurement. Same timeouts, retries, stale-reply
        and reset handling either way. ``retries``: this wait's retries (default the
        client's)."""
        link = self.link
        if seq == self._sample_seq and link is not None:
            # The usual tick: the answer is already there and alone (always over emu://, where
            # the board answers inside the write; usually over a pipelined pty): no deadline,
            # no pending record. Anything else goes on to _wait with the bytes already decoded.
            try:
                if link.try_lane(seq, lane):
                    self._sample_seq = 0
                    self.stats.replies += 1
                    return lane
            except BaseException:
                self._sample_seq = 0  # as _wait forgets a request that failed
                raise
        m = self._wait(seq, timeout_s, _SAMPLE_RETRY, lane, retries)
        assert isinstance(m, (Measurement, MeasurementLane))  # noqa: S101 (_REPLY_TYPES)
        return m

    def sample(self, dt_s: float, timeout_s: float | None = None) -> Measurement:
        return self.wait_measurement(self.request_sample(dt_s), timeout_s)

    def set_outputs(self, outputs: int, balance_mask: int, charge_limit_a: float,
                    discharge_limit_a: float, timeout_s: float | None = None) -> None:
        """Command contactors, precharge and bleed switches; returns on ACK, raises on NACK."""
        self.wait_ack(self.request_outputs(outputs, balance_mask, charge_limit_a,
                                           discharge_limit_a), timeout_s)

    def request_outputs(self, outputs: int, balance_mask: int, charge_limit_a: float,
                        discharge_limit_a: float) -> int:
        """Send SET_OUTPUTS without waiting; the seq for :meth:`wait_ack` (so a controller can
        command every board before it waits on any)."""
        msg = SetOutputs(int(outputs), int(balance_mask), _ma(charge_limit_a),
                         _ma(discharge_limit_a))
        seq = self._request(msg)
        self._retry_msgs[seq] = msg
        return seq

    def wait_ack(self, seq: int, timeout_s: float | None = None,
                 retries: int | None = None) -> None:
        """Wait for the ACK of the request sent with ``seq`` (retrying it); raises
        BoardNackError on NACK."""
        msg = self._retry_msgs.pop(seq, None)
        if msg is None:
            raise LinkError(f"{self.port}: no SET_OUTPUTS pending with seq {seq}")
        self._wait(seq, timeout_s, msg, None, retries)

    def heartbeat(self, bms_state: int, host_time_ms: int, defer: bool = False) -> None:
        """Send HEARTBEAT (no reply: beats are not acknowledged). ``defer=True`` queues it to
        leave in the same write as the next request (the controller's next SAMPLE)."""
        if defer:
            self._link().defer_heartbeat(int(bms_state), int(host_time_ms) & 0xFFFFFFFF)
        else:
            self._link().send(Heartbeat(int(bms_state), int(host_time_ms) & 0xFFFFFFFF))

    def inject_fault(self, fault: int, target: int = 0xFF, value: float = 0.0,
                     clear: bool = False, timeout_s: float | None = None) -> None:
        """FAULT_INJECT (emulator only); returns on ACK, raises BoardNackError on NACK."""
        msg = FaultInject(int(fault), int(target), int(FaultFlags.CLEAR) if clear else 0,
                          float(value))
        self._wait(self._request(msg), timeout_s, msg)

    def poll(self, timeout_s: float = 0.0) -> None:
        """Process whatever has arrived (unsolicited INFO after a reset, late replies)."""
        link = self._link()
        self._materialize()
        f = link.recv(timeout_s)
        while f is not None:
            self._dispatch(f.seq, f.msg)  # type: ignore[arg-type]
            f = link.recv(0.0)

    # ------------------------------------------------------------------ machinery

    def _materialize(self) -> None:
        """The SAMPLE kept as a number (request_sample's fast lane) as a _Pending, in the
        place it would have had: nothing has been asked since without coming here first."""
        seq = self._sample_seq
        if seq:
            self._sample_seq = 0
            self._pending[seq] = _Pending(MsgType.SAMPLE, [seq])

    def _request(self, msg: Message) -> int:
        self._materialize()
        seq = self._link().send(msg)
        if len(self._pending) >= _MAX_PENDING:
            # Requests never waited for (a controller that gave up): forget the oldest.
            self._pending.pop(next(iter(self._pending)))
        p = _Pending(msg.TYPE, [seq])
        self._pending[seq] = p
        self.stats.requests += 1
        return seq

    def _dispatch(self, seq: int, msg: Message) -> None:
        """Route one received message: a reset INFO, a reply to a pending request, or stale."""
        if isinstance(msg, Info):
            if seq == 0:  # a boot INFO: the board reset if its boot_id is new
                self._on_info(msg)
            else:  # INFO only answers HELLO, which open() handles itself: a stale reply
                self.stats.stale_replies += 1
            return
        p = self._pending.get(seq)
        if p is None or p.reply is not None:
            # Nobody waits for this seq (late answer to a retried or abandoned request, or a
            # second answer): stale. seq 0 is unsolicited and not an answer at all.
            if seq == 0:
                self.stats.unexpected += 1
            else:
                self.stats.stale_replies += 1
            return
        if isinstance(msg, Nack) or (
            isinstance(msg, _REPLY_TYPES[p.kind])
            and not (isinstance(msg, Ack) and msg.acked_type != p.kind)
        ):
            p.reply = msg
            self.stats.replies += 1
        else:
            self.stats.unexpected += 1

    def _on_info(self, info: Info) -> None:
        old = self._info
        if old is not None and info.boot_id != old.boot_id:
            self.stats.resets += 1
            self._reset_flag = True
        self._info = info

    def _wait(self, seq: int, timeout_s: float | None, retry_msg: Message,
              lane: MeasurementLane | None = None, retries: int | None = None
              ) -> Message | MeasurementLane:
        """``timeout_s`` 0 still reads what has arrived (a bounded wait at a tick's end)."""
        self._materialize()
        p = self._pending.get(seq)
        if p is None:
            raise LinkError(f"{self.port}: no request pending with seq {seq}")
        link = self._link()
        per_attempt = self.timeout_s if timeout_s is None else max(timeout_s, 0.0)
        max_retries = self.retries if retries is None else retries
        try:
            attempt = 0
            while True:
                deadline = time.monotonic() + per_attempt
                first = True
                while p.reply is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0.0 and not first:
                        break
                    first = False
                    f = link.recv(max(remaining, 0.0), seq, lane)
                    if f is None:
                        break
                    if f is lane:  # the answer, unpacked into the caller's lane
                        p.reply = lane  # type: ignore[assignment]
                        self.stats.replies += 1
                        break
                    self._dispatch(f.seq, f.msg)  # type: ignore[union-attr]
                if p.reply is not None:
                    break
                self.stats.timeouts += 1
                if attempt >= max_retries:
                    seqs = ", ".join(map(str, p.seqs))
                    raise BoardTimeoutError(
                        f"{self.port}: no reply to {p.kind.name} (seq {seqs}) after "
                        f"{attempt + 1} attempt(s) of {per_attempt:g} s: board not answering")
                attempt += 1
                self.stats.retries += 1
                new_seq = link.send(retry_msg)
                p.seqs.append(new_seq)
                self._pending[new_seq] = p
        finally:
            # Done (or failed): later answers to any of its seqs are stale.
            for s in p.seqs:
                self._pending.pop(s, None)
        reply = p.reply
        if isinstance(reply, Nack):
            self.stats.nacks += 1
            raise BoardNackError(self.port, p.kind, reply)
        return reply


def _ma(current_a: float) -> int:
    """A current limit in A -> mA on the wire (i32), rounded; limits are >= 0 by the spec."""
    return int(round(float(current_a) * 1000.0))
