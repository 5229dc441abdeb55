"""Serial link: bytes on a port <-> protocol v1 frames, with counters and clear failure types.

A :class:`SerialLink` opens a device path (``/dev/ttyACM0``, ``/dev/pts/3``) or any pyserial URL
(``loop://``, ``spy://...``, ``socket://host:port``) at 115200 8N1. It frames outgoing messages
(assigning the host's sequence numbers) and decodes incoming bytes with one
:class:`hil.protocol.FrameDecoder`, which resynchronises after garbage by itself.

Reads block in ``select`` on the port's file descriptor (no sleeps, no polling) and then take
every byte waiting in one non-blocking read, so one system call pair delivers a whole frame or
several. Ports without a descriptor (``loop://``, ``socket://``) use pyserial's
``read(in_waiting)`` with its read timeout.

Failures:

- :class:`BoardLostError`: the port vanished or read/write failed (USB unplugged, pty master
  closed: Linux returns EIO, or readiness with no data, which pyserial reports as
  ``SerialException``).
- :class:`BoardTimeoutError`: no answer within the deadline (raised by the client; the link's
  ``recv`` returns None on timeout).
"""

from __future__ import annotations

import collections
import os
import select
import time
from dataclasses import dataclass
from typing import Any

import serial

from hil.protocol import (
    DecodedFrame,
    FrameDecoder,
    Heartbeat,
    LinkCounters,
    Message,
    Sample,
    SampleEncoder,
    encode_frame,
    next_seq,
    wire_values_pointer,
)

__all__ = ["LinkError", "BoardLostError", "BoardTimeoutError", "SerialLink", "LinkStats",
           "MeasurementLane", "DEFAULT_BAUDRATE"]

DEFAULT_BAUDRATE = 115200
_READ_CHUNK = 4096


class MeasurementLane:
    """The fast lane of one board's MEASUREMENTs: a buffer the awaited answer is unpacked into
    when it arrives alone in one read (:meth:`FrameDecoder.take_measurement`, C engine), so the
    hot path builds no message object. ``values`` (int64, contiguous): timestamp_ms, status,
    current_raw, bus_voltage_raw, then the channel counts in wire order; the lane takes only a
    frame with exactly that many channels.

    :meth:`SerialLink.recv` and :meth:`hil.client.BoardClient.wait_measurement_into` return the
    lane itself when the values are in it: a plain value of a named type, not a sentinel.
    """

    __slots__ = ("values", "pointer", "n_values")

    def __init__(self, values: Any) -> None:
        self.values = values
        self.pointer = wire_values_pointer(values)
        self.n_values = len(values)

    def __repr__(self) -> str:
        return f"MeasurementLane({self.n_values} values)"


class LinkError(Exception):
    """Base class of every link and board-client failure."""


class BoardLostError(LinkError):
    """The port is gone or unreadable: the board was unplugged, reset its USB or closed."""


class BoardTimeoutError(LinkError):
    """The board did not answer within the deadline (after the retries)."""


@dataclass(slots=True)
class LinkStats:
    """Outgoing side of the link (the decoder's LinkCounters cover the incoming side)."""

    frames_sent: int = 0
    bytes_out: int = 0


class SerialLink:
    """One serial port speaking protocol v1.

    ``port`` is a device path or a pyserial URL (anything with ``://``). ``read_timeout_s`` is
    the longest a single blocking read may take when the port has no file descriptor (URL
    handlers such as ``loop://``); on file-descriptor ports ``recv`` waits exactly its own
    timeout.
    """

    def __init__(self, port: str, baudrate: int = DEFAULT_BAUDRATE,
                 read_timeout_s: float = 0.05, write_timeout_s: float = 1.0) -> None:
        self.port = port
        self.decoder = FrameDecoder()
        self.stats = LinkStats()
        self._frames: collections.deque[DecodedFrame] = collections.deque()
        self._seq = 0
        self._deferred = b""
        # A HEARTBEAT deferred by defer_heartbeat, kept as (seq, state, time_ms) until it is
        # framed: with the next send_sample in one C call, or into _deferred by anything else.
        self._hb: tuple[int, int, int] | None = None
        self._encode_sample = SampleEncoder().encode
        self._read_timeout_s = read_timeout_s
        self._write_timeout_s = write_timeout_s

        try:
            if "://" in port:
                self._ser = serial.serial_for_url(port, baudrate=baudrate,
                                                  timeout=read_timeout_s,
                                                  write_timeout=write_timeout_s)
            else:
                self._ser = serial.Serial(port, baudrate=baudrate, timeout=read_timeout_s,
                                          write_timeout=write_timeout_s)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise BoardLostError(f"cannot open {port}: {exc}") from exc
        # Ports with a real descriptor (ttys, ptys, spy:// on a tty) wait in select() with the
        # caller's exact timeout; others (loop://, socket://) use pyserial's own read timeout.
        self._fd: int | None = None
        # A URL handler that hands over whole frames without waiting (``read_frame()``, e.g.
        # emu://): read_now takes the next one in one call instead of in_waiting + read.
        self._read_frame = getattr(self._ser, "read_frame", None)
        if isinstance(self._ser, serial.serialposix.Serial):
            self._fd = self._ser.fileno()
            # pyserial opens O_NONBLOCK; make sure, since read_available reads before it waits.
            os.set_blocking(self._fd, False)

    # ------------------------------------------------------------------ properties

    @property
    def counters(self) -> LinkCounters:
        """Incoming-frame counters (frames_ok, crc_errors, ...; see LinkCounters)."""
        return self.decoder.counters

    @property
    def is_open(self) -> bool:
        return self._ser is not None and self._ser.is_open

    @property
    def serial(self) -> serial.SerialBase:
        """The pyserial port under this link (for what a URL handler offers beyond bytes, e.g.
        the in-process board of ``emu://``: hil.emulator.protocol_emu.emulated_board)."""
        return self._ser

    @property
    def last_seq(self) -> int:
        """The seq of the last frame sent with :meth:`send` (0 before the first)."""
        return self._seq

    # ------------------------------------------------------------------ sending

    def send(self, msg: Message) -> int:
        """Send ``msg`` with the next host seq (1..65535, wrapping, never 0); return the seq.
        Frames queued with :meth:`defer` go out first, in the same write."""
        if self._hb is not None:
            self._frame_heartbeat()
        self._seq = seq = next_seq(self._seq)
        frame = encode_frame(msg, seq)
        if self._deferred:
            frame = self._deferred + frame
            self._deferred = b""
        self.write(frame)
        return seq

    def defer(self, msg: Message) -> int:
        """Queue ``msg`` (with the next seq) to leave with the next :meth:`send` in one write.

        For frames without a reply whose exact departure time does not matter within one tick
        (HEARTBEAT): one write and one wake-up of the board instead of two.
        """
        if self._hb is not None:
            self._frame_heartbeat()
        self._seq = seq = next_seq(self._seq)
        self._deferred += encode_frame(msg, seq)
        return seq

    def defer_heartbeat(self, bms_state: int, host_time_ms: int) -> int:
        """``defer(Heartbeat(bms_state, host_time_ms))``, framed only when it leaves: with the
        next :meth:`send_sample`, both frames in one C call (the controller's usual tick)."""
        if (self._hb is not None or self._deferred or not 0 <= bms_state <= 0xFF
                or not 0 <= host_time_ms <= 0xFFFFFFFF):
            return self.defer(Heartbeat(bms_state, host_time_ms))
        self._seq = seq = 1 if self._seq >= 0xFFFF else self._seq + 1  # next_seq, inlined
        self._hb = (seq, bms_state, host_time_ms)
        return seq

    def send_sample(self, dt_us: int) -> int:
        """``send(Sample(dt_us))``: the same seq and bytes (a HEARTBEAT deferred by
        :meth:`defer_heartbeat` first, in the same write), framed in one C call without
        message objects."""
        if self._deferred or not 0 <= dt_us <= 0xFFFFFFFF:
            return self.send(Sample(dt_us))
        self._seq = seq = 1 if self._seq >= 0xFFFF else self._seq + 1
        hb = self._hb
        if hb is not None:
            self._hb = None
        self.write(self._encode_sample(seq, dt_us, hb))
        return seq

    def _frame_heartbeat(self) -> None:
        """The HEARTBEAT kept by defer_heartbeat, framed into the deferred bytes (its seq as
        given then): something other than send_sample is about to send or queue."""
        hb_seq, state, time_ms = self._hb  # type: ignore[misc]
        self._hb = None
        self._deferred += encode_frame(Heartbeat(state, time_ms), hb_seq)

    def flush(self) -> None:
        """Write any deferred frames now."""
        if self._hb is not None:
            self._frame_heartbeat()
        if self._deferred:
            data, self._deferred = self._deferred, b""
            self.write(data)

    def send_with_seq(self, msg: Message, seq: int) -> None:
        """Send ``msg`` with an explicit seq (a board's reply carries the request's seq)."""
        self.write(encode_frame(msg, seq))

    def write(self, data: bytes) -> None:
        """Write raw bytes (already framed, or deliberate garbage in tests)."""
        try:
            if self._fd is not None:
                self._write_fd(self._fd, data)
                n = len(data)
            else:
                n = self._ser.write(data)
        except serial.SerialTimeoutException as exc:
            raise BoardTimeoutError(f"{self.port}: write timed out (board not reading)") from exc
        except (serial.SerialException, OSError) as exc:
            raise BoardLostError(f"{self.port}: write failed: {exc}") from exc
        except (AttributeError, TypeError) as exc:  # pyserial after close() sets fd to None
            raise BoardLostError(f"{self.port}: port is closed") from exc
        self.stats.frames_sent += 1
        self.stats.bytes_out += n if n is not None else len(data)

    def _write_fd(self, fd: int, data: bytes) -> None:
        """Write everything with os.write on the non-blocking fd; wait for room up to the
        write timeout (pyserial's write adds a select after every write, even when done)."""
        view = memoryview(data)
        deadline = None
        while view:
            try:
                view = view[os.write(fd, view):]
                continue
            except BlockingIOError:
                pass
            if deadline is None:
                deadline = time.monotonic() + self._write_timeout_s
            remaining = deadline - time.monotonic()
            if remaining <= 0.0:
                raise serial.SerialTimeoutException("write timeout")
            select.select((), (fd,), (), remaining)

    # ------------------------------------------------------------------ receiving

    def recv(self, timeout_s: float, seq: int = 0, lane: MeasurementLane | None = None
             ) -> DecodedFrame | MeasurementLane | None:
        """The next valid frame, or None if none arrives within ``timeout_s``.

        Frames the decoder rejected (version, unknown type, payload) are counted and skipped:
        a host does not answer them. Raises BoardLostError if the port fails.

        With a ``lane``: when a read brings exactly the MEASUREMENT with sequence number ``seq``
        and nothing else, it is unpacked into the lane without becoming a message
        (:meth:`FrameDecoder.take_measurement`) and the lane is returned.
        """
        frames = self._frames
        deadline = None
        remaining = timeout_s
        while True:
            while frames:
                f = frames.popleft()
                if f.error is None:
                    return f
            if deadline is None:
                deadline = time.monotonic() + timeout_s
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0.0:
                    return None
            data = self.read_available(remaining)
            if data:
                if lane is not None and self.decoder.take_measurement(
                        data, seq, lane.pointer, lane.n_values):
                    return lane
                frames.extend(self.decoder.feed(data))

    def try_lane(self, seq: int, lane: MeasurementLane) -> bool:
        """:meth:`recv`'s fast lane without any wait: when no frame is queued and what has
        arrived (one read that does not block) is exactly the MEASUREMENT ``seq``, it is
        unpacked into ``lane``: True. Otherwise False, and whatever the read brought is decoded
        into the queue :meth:`recv` takes from, as recv would have done with it (so a caller
        goes on with recv: same frames, same counters)."""
        if self._frames:
            return False
        read_frame = self._read_frame
        if read_frame is not None and self._fd is None:  # read_now's emu:// branch, inline
            try:
                data = read_frame()
            except (serial.SerialException, OSError) as exc:
                raise BoardLostError(f"{self.port}: read failed: {exc}") from exc
            except (AttributeError, TypeError) as exc:
                raise BoardLostError(f"{self.port}: port is closed") from exc
        else:
            data = self.read_now()
        if not data:
            return False
        if self.decoder.take_measurement(data, seq, lane.pointer, lane.n_values):
            return True
        self._frames.extend(self.decoder.feed(data))
        return False

    def read_now(self) -> bytes:
        """The bytes waiting, without waiting (b"" when none): one non-blocking read on a
        descriptor, ``read(in_waiting)`` on a URL handler. BoardLostError as read_available."""
        try:
            fd = self._fd
            if fd is not None:
                try:
                    return os.read(fd, _READ_CHUNK)  # b"" is not end of file here (VMIN = 0)
                except BlockingIOError:
                    return b""
            if self._read_frame is not None:
                return self._read_frame()
            ser = self._ser
            n = ser.in_waiting
            return ser.read(n) if n > 0 else b""
        except (serial.SerialException, OSError) as exc:
            raise BoardLostError(f"{self.port}: read failed: {exc}") from exc
        except (AttributeError, TypeError) as exc:  # after close(): pyserial's fd is None
            raise BoardLostError(f"{self.port}: port is closed") from exc

    def recv_any(self, timeout_s: float) -> DecodedFrame | None:
        """Like recv, but also returns rejected frames (``error`` set), as a board needs."""
        deadline = time.monotonic() + timeout_s
        frames = self._frames
        while True:
            if frames:
                return frames.popleft()
            remaining = deadline - time.monotonic()
            data = self.read_available(max(remaining, 0.0))
            if data:
                frames.extend(self.decoder.feed(data))
            if remaining <= 0.0 and not frames:
                return None

    def read_available(self, timeout_s: float) -> bytes:
        """Block up to ``timeout_s`` for input, then return every byte waiting (b"" on timeout).

        Raises BoardLostError when the port fails or reports end of file.
        """
        ser = self._ser
        try:
            fd = self._fd
            if fd is not None:
                # One non-blocking read of everything waiting, and a select only when nothing
                # was: one or two system calls per burst instead of pyserial's ioctl + select
                # + read, which matters at thousands of round trips per second (a pipelined
                # answer is usually there before it is awaited).
                try:
                    data = os.read(fd, _READ_CHUNK)
                except BlockingIOError:
                    data = b""
                if not data:
                    # Nothing yet (EAGAIN, or b"": pyserial sets VMIN = 0, so an empty read is
                    # not end of file until select says the fd is readable).
                    ready, _, _ = select.select((fd,), (), (), max(timeout_s, 0.0))
                    if not ready:
                        return b""
                    try:
                        data = os.read(fd, _READ_CHUNK)
                    except BlockingIOError:
                        return b""  # spurious readiness
                if not data:
                    # Readable with nothing to read: end of file / hang-up (pty master closed,
                    # USB gone); Linux usually raises EIO instead, handled below.
                    raise BoardLostError(f"{self.port}: end of file (board gone)")
                return data
            # URL handlers: pyserial's own timeout, clamped to the caller's.
            t = min(max(timeout_s, 0.0), self._read_timeout_s) if timeout_s > 0 else 0
            if ser.timeout != t:
                ser.timeout = t
            n = ser.in_waiting
            return ser.read(n if n > 0 else 1)
        except BoardLostError:
            raise
        except (serial.SerialException, OSError) as exc:
            raise BoardLostError(f"{self.port}: read failed: {exc}") from exc
        except (AttributeError, TypeError) as exc:  # after close(): pyserial's fd is None
            raise BoardLostError(f"{self.port}: port is closed") from exc

    def reset_input(self) -> None:
        """Discard unread input and any partial frame (counters are kept)."""
        self._frames.clear()
        self.decoder.reset()
        try:
            self._ser.reset_input_buffer()
        except (serial.SerialException, OSError) as exc:
            raise BoardLostError(f"{self.port}: {exc}") from exc

    def close(self) -> None:
        try:
            self._ser.close()
        except (serial.SerialException, OSError):
            pass  # closing a vanished port: nothing left to release

    def __enter__(self) -> SerialLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SerialLink({self.port!r})"
