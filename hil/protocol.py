"""Serial protocol v1 codec: the one place where the wire format lives (docs/protocol.md).

Frames are ``COBS(header | payload | crc16) 0x00``; header ``<BBHH`` = version, type, seq,
payload length; CRC-16/CCITT-FALSE over header and payload, stored little-endian.

Public pieces:

- message dataclasses (frozen, slots): :class:`Hello`, :class:`Info`, :class:`Sample`,
  :class:`Measurement`, :class:`SetOutputs`, :class:`Heartbeat`, :class:`Ack`, :class:`Nack`,
  :class:`FaultInject`; each has a ``TYPE`` class attribute (:class:`MsgType`);
- :func:`encode_frame` (message + seq -> bytes on the wire, delimiter included) and
  :func:`decode_frame` (one frame without its delimiter -> ``(seq, msg)`` or :class:`FrameError`);
- :class:`FrameDecoder`, the stream decoder: ``feed(bytes) -> list[DecodedFrame]``; never
  raises, resynchronises at the next ``0x00`` and counts every drop in :class:`LinkCounters`.

Two engines, one behaviour: by default :class:`FrameDecoder` and :func:`encode_frame` run the C
codec in ``hil._wire`` (csrc/ssb_wire.c over the reference firmware's boards/firmware/src/proto.c);
the pure-Python path (hil/cobs.py, :func:`_decode_segment`, :func:`encode_frame_reference`) is the
reference, used when the extension is missing, with ``FrameDecoder(engine="reference")``, or for
the whole process with ``SSB_WIRE_ENGINE=reference`` (tests/test_wire_c.py checks they agree).

Decoded messages hold plain ints (enums compare equal to them): an unknown code from a newer
peer must never make the decoder raise. Wrap with the enums (``NackError(m.error)``) to print.
"""

from __future__ import annotations

import binascii
import enum
import os
import struct
from dataclasses import dataclass, fields
from typing import Any, ClassVar, NamedTuple

from hil import cobs

__all__ = [
    "BoardKind", "Capability", "InjectedFault", "FaultFlags", "MsgType", "NackError", "Outputs",
    "Status", "FrameErrorKind",
    "PROTOCOL_VERSION", "MAX_PAYLOAD", "MAX_DECODED", "MAX_ENCODED", "HEADER_SIZE", "CRC_SIZE",
    "INVALID_U16", "INVALID_I32", "MEASUREMENT_FIXED_SIZE",
    "Hello", "Info", "Sample", "Measurement", "SetOutputs", "Heartbeat", "Ack", "Nack",
    "FaultInject", "Message", "MESSAGE_CLASSES",
    "encode_frame", "encode_payload", "decode_frame", "decode_payload", "FrameError",
    "DecodedFrame", "LinkCounters", "FrameDecoder", "next_seq", "crc16", "encode_raw_frame",
    "SampleEncoder",
    "message_fields", "encode_frame_reference", "WIRE_ENGINE",
]

PROTOCOL_VERSION = 1
MAX_PAYLOAD = 240
HEADER_SIZE = 6
CRC_SIZE = 2
MAX_DECODED = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE  # 248
MAX_ENCODED = 250  # including the 0x00 delimiter (spec: "Sizes")
# A segment between delimiters longer than this can never be a valid frame; the spec's reader
# drops "more than 250 bytes buffered without a delimiter" as oversize.
_MAX_SEGMENT = MAX_ENCODED
INVALID_U16 = 0xFFFF        # cell / thermistor channel invalid (LTC6811 cleared register)
INVALID_I32 = 0x7FFFFFFF    # load cell not ready, current or bus voltage invalid
MEASUREMENT_FIXED_SIZE = 20


# --------------------------------------------------------------------------- enums


class MsgType(enum.IntEnum):
    HELLO = 0x01
    INFO = 0x02
    SAMPLE = 0x10
    MEASUREMENT = 0x11
    SET_OUTPUTS = 0x20
    HEARTBEAT = 0x21
    ACK = 0x30
    NACK = 0x31
    FAULT_INJECT = 0x40


class NackError(enum.IntEnum):
    BAD_VERSION = 1
    UNKNOWN_TYPE = 2
    BAD_LENGTH = 3
    BAD_VALUE = 4
    UNSUPPORTED = 5
    BUSY = 6
    STATE = 7


class Status(enum.IntFlag):
    """MEASUREMENT status bits."""

    CONTACTOR_POS = 1 << 0
    CONTACTOR_NEG = 1 << 1
    PRECHARGE = 1 << 2
    WATCHDOG_TRIPPED = 1 << 3
    JUST_BOOTED = 1 << 4
    BALANCING = 1 << 5
    SENSOR_ERROR = 1 << 6
    SIM_CLOCK = 1 << 7


class Outputs(enum.IntFlag):
    """SET_OUTPUTS output bits (same positions as the status feedback bits)."""

    CONTACTOR_POS = 1 << 0
    CONTACTOR_NEG = 1 << 1
    PRECHARGE = 1 << 2


class Capability(enum.IntFlag):
    SIM_CLOCK = 1 << 0
    FAULT_INJECT = 1 << 1
    BALANCING = 1 << 2


class FaultFlags(enum.IntFlag):
    CLEAR = 1 << 0


class BoardKind(enum.IntEnum):
    FIRMWARE = 0       # real firmware on a real MCU
    EMULATOR = 1       # hil/emulator
    SIMULATED_MCU = 2  # reference firmware on a simulated MCU


class InjectedFault(enum.IntEnum):
    """The faults the emulator can inject (FAULT_INJECT); distinct from the BMS's own fault codes
    (bms.faults.FaultCode), which are what the BMS detects."""

    CLEAR_ALL = 0
    CELL_SOFT_SHORT = 1
    CELL_CONTACT_LOSS = 2
    GAS_SWELLING = 3
    LOADCELL_STUCK = 4
    LOADCELL_OFFSET = 5
    LOADCELL_OPEN = 6
    VTAP_OPEN = 7
    THERMISTOR_OPEN = 8
    THERMISTOR_SHORT = 9
    CURRENT_OFFSET = 10
    COOLANT_LOSS = 11
    LINK_DROP = 12
    LINK_CORRUPT = 13
    LINK_SILENCE = 14
    REBOOT = 15
    PRECHARGE_FAIL = 16
    LOAD_CURRENT = 17
    AMBIENT_TEMP = 18
    CELL_HEAT = 19
    VTAP_OFFSET = 20
    CONTACTOR_WELD = 21


class FrameErrorKind(enum.StrEnum):
    """Why a frame was dropped; each value is the name of its :class:`LinkCounters` field."""

    COBS = "cobs_errors"
    SHORT = "short_errors"
    CRC = "crc_errors"
    LENGTH = "length_errors"
    VERSION = "version_errors"
    UNKNOWN_TYPE = "unknown_type"
    PAYLOAD = "payload_errors"
    OVERSIZE = "oversize"


# Rules 5..7 of the spec: the header is intact (CRC and length good), so a board can NACK with
# the request's type and seq.
_NACK_FOR_KIND = {
    FrameErrorKind.VERSION: NackError.BAD_VERSION,
    FrameErrorKind.UNKNOWN_TYPE: NackError.UNKNOWN_TYPE,
    FrameErrorKind.PAYLOAD: NackError.BAD_LENGTH,
}

# --------------------------------------------------------------------------- messages

_HEADER = struct.Struct("<BBHH")
_CRC = struct.Struct("<H")
_U16 = struct.Struct("<H")
_HELLO = struct.Struct("<BB")
_INFO = struct.Struct("<8BHHH14s")
_SAMPLE = struct.Struct("<I")
_MEAS_HEAD = struct.Struct("<IHBBBxiiH")  # 20 bytes; reserved2 read but ignored
_SET_OUTPUTS = struct.Struct("<BxIii")
_HEARTBEAT = struct.Struct("<BxI")
_ACK = struct.Struct("<Bx")
_NACK = struct.Struct("<BBH")
_FAULT = struct.Struct("<BBBxf")

assert _INFO.size == 28 and _MEAS_HEAD.size == MEASUREMENT_FIXED_SIZE  # noqa: S101 (spec sizes)
assert _SET_OUTPUTS.size == 14 and _HEARTBEAT.size == 6 and _FAULT.size == 8  # noqa: S101


@dataclass(frozen=True, slots=True)
class Hello:
    TYPE: ClassVar[MsgType] = MsgType.HELLO
    min_version: int = PROTOCOL_VERSION
    max_version: int = PROTOCOL_VERSION

    def pack(self) -> bytes:
        return _HELLO.pack(self.min_version, self.max_version)


@dataclass(frozen=True, slots=True)
class Info:
    TYPE: ClassVar[MsgType] = MsgType.INFO
    protocol_version: int
    board_kind: int
    fw_version: tuple[int, int, int]
    n_cells: int
    n_thermistors: int
    n_load_cells: int
    heartbeat_timeout_ms: int
    capabilities: int
    boot_id: int
    board_id: str

    def pack(self) -> bytes:
        board_id = self.board_id.encode("ascii")
        if len(board_id) > 14:
            raise ValueError(f"board_id {self.board_id!r} is longer than 14 ASCII bytes")
        major, minor, patch = self.fw_version
        return _INFO.pack(
            self.protocol_version, self.board_kind, major, minor, patch, self.n_cells,
            self.n_thermistors, self.n_load_cells, self.heartbeat_timeout_ms,
            self.capabilities, self.boot_id, board_id,
        )


@dataclass(frozen=True, slots=True)
class Sample:
    TYPE: ClassVar[MsgType] = MsgType.SAMPLE
    dt_us: int

    def pack(self) -> bytes:
        return _SAMPLE.pack(self.dt_us)


_MEAS_STRUCTS: dict[tuple[int, int, int], struct.Struct] = {}


def _meas_struct(n_cells: int, n_therm: int, n_load: int) -> struct.Struct:
    key = (n_cells, n_therm, n_load)
    s = _MEAS_STRUCTS.get(key)
    if s is None:
        s = struct.Struct(f"<IHBBBxiiH{n_cells}H{n_therm}H{n_load}i")
        if len(_MEAS_STRUCTS) < 4096:  # bounded: counts come off the wire
            _MEAS_STRUCTS[key] = s
    return s


@dataclass(frozen=True, slots=True)
class Measurement:
    """Raw counts; convert with hil.scaling. Channel tuples may be empty (n = 0)."""

    TYPE: ClassVar[MsgType] = MsgType.MEASUREMENT
    timestamp_ms: int
    status: int
    current_raw: int
    bus_voltage_raw: int
    cell_raw: tuple[int, ...]
    thermistor_raw: tuple[int, ...]
    load_cell_raw: tuple[int, ...] = ()

    def pack(self) -> bytes:
        nc, nt, nl = len(self.cell_raw), len(self.thermistor_raw), len(self.load_cell_raw)
        if nc > 255 or nt > 255 or nl > 255:
            raise ValueError("more than 255 channels of one kind")
        return _meas_struct(nc, nt, nl).pack(
            self.timestamp_ms, self.status, nc, nt, nl, self.current_raw, self.bus_voltage_raw,
            0, *self.cell_raw, *self.thermistor_raw, *self.load_cell_raw,
        )


@dataclass(frozen=True, slots=True)
class SetOutputs:
    TYPE: ClassVar[MsgType] = MsgType.SET_OUTPUTS
    outputs: int
    balance_mask: int
    charge_limit_ma: int
    discharge_limit_ma: int

    def pack(self) -> bytes:
        return _SET_OUTPUTS.pack(
            self.outputs, self.balance_mask, self.charge_limit_ma, self.discharge_limit_ma
        )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT
    bms_state: int
    host_time_ms: int

    def pack(self) -> bytes:
        return _HEARTBEAT.pack(self.bms_state, self.host_time_ms)


@dataclass(frozen=True, slots=True)
class Ack:
    TYPE: ClassVar[MsgType] = MsgType.ACK
    acked_type: int

    def pack(self) -> bytes:
        return _ACK.pack(self.acked_type)


@dataclass(frozen=True, slots=True)
class Nack:
    TYPE: ClassVar[MsgType] = MsgType.NACK
    rejected_type: int
    error: int
    detail: int = 0

    def pack(self) -> bytes:
        return _NACK.pack(self.rejected_type, self.error, self.detail)


@dataclass(frozen=True, slots=True)
class FaultInject:
    """``value`` travels as f32: decoded values are rounded to binary32."""

    TYPE: ClassVar[MsgType] = MsgType.FAULT_INJECT
    fault: int
    target: int = 0xFF
    flags: int = 0
    value: float = 0.0

    def pack(self) -> bytes:
        return _FAULT.pack(self.fault, self.target, self.flags, self.value)


Message = Hello | Info | Sample | Measurement | SetOutputs | Heartbeat | Ack | Nack | FaultInject

MESSAGE_CLASSES: dict[int, type] = {
    cls.TYPE: cls
    for cls in (Hello, Info, Sample, Measurement, SetOutputs, Heartbeat, Ack, Nack, FaultInject)
}


def message_fields(msg: Any) -> dict[str, Any]:
    """The message's fields as a dict (for logs and test vectors)."""
    return {f.name: getattr(msg, f.name) for f in fields(msg)}


# --------------------------------------------------------------------------- payload parsers
# Each parser takes (frame, payload offset, payload length) and returns the message, or None
# when the payload length is wrong for the type (rule 7). Parsing from the decoded frame with
# unpack_from avoids copying the payload.


def _fixed(st: struct.Struct, build: Any) -> Any:
    size = st.size
    unpack_from = st.unpack_from

    def parse(frame: bytes, off: int, n: int) -> Any:
        if n != size:
            return None
        return build(*unpack_from(frame, off))

    return parse


def _build_info(ver: int, kind: int, major: int, minor: int, patch: int, nc: int, nt: int,
                nl: int, hb: int, caps: int, boot: int, bid: bytes) -> Info:
    board_id = bid.split(b"\x00", 1)[0].decode("ascii", "replace")
    return Info(ver, kind, (major, minor, patch), nc, nt, nl, hb, caps, boot, board_id)


def _parse_measurement(frame: bytes, off: int, n: int) -> Measurement | None:
    if n < MEASUREMENT_FIXED_SIZE:
        return None
    nc, nt, nl = frame[off + 6], frame[off + 7], frame[off + 8]
    if n != MEASUREMENT_FIXED_SIZE + 2 * nc + 2 * nt + 4 * nl:
        return None
    v = _meas_struct(nc, nt, nl).unpack_from(frame, off)
    a = 8 + nc
    b = a + nt
    return Measurement(v[0], v[1], v[5], v[6], v[8:a], v[a:b], v[b:])


_PARSERS: dict[int, Any] = {
    MsgType.HELLO: _fixed(_HELLO, Hello),
    MsgType.INFO: _fixed(_INFO, _build_info),
    MsgType.SAMPLE: _fixed(_SAMPLE, Sample),
    MsgType.MEASUREMENT: _parse_measurement,
    MsgType.SET_OUTPUTS: _fixed(_SET_OUTPUTS, SetOutputs),
    MsgType.HEARTBEAT: _fixed(_HEARTBEAT, Heartbeat),
    MsgType.ACK: _fixed(_ACK, Ack),
    MsgType.NACK: _fixed(_NACK, Nack),
    MsgType.FAULT_INJECT: _fixed(_FAULT, FaultInject),
}
# Plain-int keys: dict lookups with an int from the wire hash the same as the IntEnum keys.
_PARSERS = {int(k): v for k, v in _PARSERS.items()}


# --------------------------------------------------------------------------- framing


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, xorout 0)."""
    return binascii.crc_hqx(data, 0xFFFF)


def next_seq(seq: int) -> int:
    """The host's next request seq: 1, 2, ..., 65535, 1, ... (0 is never used by the host)."""
    return 1 if seq >= 0xFFFF else seq + 1


def encode_payload(msg: Message) -> bytes:
    """The message's payload bytes. Raises ValueError if a field does not fit its wire type."""
    try:
        return msg.pack()
    except struct.error as exc:
        raise ValueError(f"{type(msg).__name__}: field out of range for the wire: {exc}") from None


def encode_raw_frame(version: int, msg_type: int, seq: int, payload: bytes,
                     length: int | None = None, crc: int | None = None) -> bytes:
    """Frame arbitrary header values and payload (tests and fault emulation may lie in them).

    ``length`` and ``crc`` default to the correct values.
    """
    n = len(payload) if length is None else length
    body = _HEADER.pack(version, msg_type, seq, n) + payload
    c = crc16(body) if crc is None else crc
    return cobs.encode(body + _CRC.pack(c)) + b"\x00"


def _checked_payload(msg: Message, seq: int) -> bytes:
    """``msg``'s payload, with the checks both encoders make (encode_payload, inlined: this
    runs once per frame)."""
    try:
        payload = msg.pack()
    except struct.error as exc:
        raise ValueError(f"{type(msg).__name__}: field out of range for the wire: {exc}") from None
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"{type(msg).__name__} payload {len(payload)} B > {MAX_PAYLOAD} B")
    if not 0 <= seq <= 0xFFFF:
        raise ValueError(f"seq {seq} is not a u16")
    return payload


def encode_frame_reference(msg: Message, seq: int, version: int = PROTOCOL_VERSION) -> bytes:
    """:func:`encode_frame` in pure Python (the reference the C path is tested against)."""
    payload = _checked_payload(msg, seq)
    n = len(payload)
    body = _HEADER.pack(version, msg.TYPE, seq, n) + payload
    return cobs.encode(body + _CRC.pack(binascii.crc_hqx(body, 0xFFFF))) + b"\x00"


def _encode_frame_c(msg: Message, seq: int, version: int = PROTOCOL_VERSION) -> bytes:
    """Encode ``msg`` with sequence number ``seq``: COBS(header|payload|crc) + 0x00 (C codec)."""
    payload = _checked_payload(msg, seq)
    n = len(payload)
    # A buffer from the pool: cffi releases the GIL in the call, so a shared buffer would race
    # between threads; list pop/append are atomic.
    pool = _ENC_POOL
    buf = pool.pop() if pool else _enc_buffer()
    try:
        k = _wire_encode(version, msg.TYPE, seq, payload, n, buf[0], _ENC_CAP)
    except (TypeError, OverflowError):
        k = -1
    if k < 0:  # a version or seq the wire cannot carry: the reference path raises exactly what
        pool.append(buf)  # it always raised
        return encode_frame_reference(msg, seq, version)
    frame = buf[1][:k]
    pool.append(buf)
    return frame


def decode_payload(msg_type: int, payload: bytes) -> Message | None:
    """Parse a payload of a known type; None if the type is unknown or the length is wrong."""
    parser = _PARSERS.get(msg_type)
    return None if parser is None else parser(payload, 0, len(payload))


class FrameError(ValueError):
    """A frame was dropped: ``kind`` names the counter (rules 1..7 of the spec).

    For rules 5..7 the header is intact and ``seq``, ``msg_type``, ``version`` are set (a board
    answers them with :meth:`nack`); otherwise they are None.
    """

    def __init__(self, kind: FrameErrorKind, detail: str = "", seq: int | None = None,
                 msg_type: int | None = None, version: int | None = None) -> None:
        self.kind = kind
        self.seq = seq
        self.msg_type = msg_type
        self.version = version
        super().__init__(f"{kind.value}: {detail}" if detail else kind.value)


class DecodedFrame(NamedTuple):
    """One frame out of :class:`FrameDecoder`.

    ``error is None``: a valid message in ``msg``. Otherwise ``msg`` is None and ``error`` is
    VERSION, UNKNOWN_TYPE or PAYLOAD (spec rules 5..7): the header passed CRC and length
    checks, so ``seq``, ``msg_type`` and ``version`` are what the sender wrote and a board can
    answer with :meth:`nack`. Frames failing rules 1..4 are only counted, never returned.
    """

    seq: int
    msg: Message | None
    error: FrameErrorKind | None = None
    msg_type: int = 0
    version: int = PROTOCOL_VERSION

    def nack(self, own_version: int = PROTOCOL_VERSION) -> Nack | None:
        """The NACK a board sends for a rejected frame (None for a valid one)."""
        code = _NACK_FOR_KIND.get(self.error) if self.error is not None else None
        if code is None:
            return None
        detail = own_version if code is NackError.BAD_VERSION else 0
        return Nack(self.msg_type, code, detail)


def _decode_segment(seg: bytes) -> DecodedFrame | FrameErrorKind:
    """Decode one delimiter-free segment; never raises."""
    try:
        frame = cobs.decode(seg)
    except cobs.CobsError:
        return FrameErrorKind.COBS
    n = len(frame)
    if n < HEADER_SIZE + CRC_SIZE:
        return FrameErrorKind.SHORT
    if binascii.crc_hqx(frame[:-2], 0xFFFF) != frame[-2] | (frame[-1] << 8):
        return FrameErrorKind.CRC
    version, msg_type, seq, length = _HEADER.unpack_from(frame)
    if length != n - 8 or length > MAX_PAYLOAD:
        return FrameErrorKind.LENGTH
    if version != PROTOCOL_VERSION:
        return DecodedFrame(seq, None, FrameErrorKind.VERSION, msg_type, version)
    parser = _PARSERS.get(msg_type)
    if parser is None:
        return DecodedFrame(seq, None, FrameErrorKind.UNKNOWN_TYPE, msg_type, version)
    msg = parser(frame, HEADER_SIZE, length)
    if msg is None:
        return DecodedFrame(seq, None, FrameErrorKind.PAYLOAD, msg_type, version)
    return DecodedFrame(seq, msg, None, msg_type, version)


def decode_frame(raw: bytes) -> tuple[int, Message]:
    """Decode one frame given without its 0x00 delimiter; raises :class:`FrameError`."""
    if len(raw) > _MAX_SEGMENT:
        raise FrameError(FrameErrorKind.OVERSIZE, f"{len(raw)} bytes")
    r = _decode_segment(bytes(raw))
    if isinstance(r, DecodedFrame):
        if r.error is None:
            return r.seq, r.msg  # type: ignore[return-value]
        raise FrameError(r.error, f"type 0x{r.msg_type:02x} version {r.version}", r.seq,
                         r.msg_type, r.version)
    raise FrameError(r)


@dataclass(slots=True)
class LinkCounters:
    """Decoder counters, in the order of the spec's decoding rules (plus oversize, bytes_in).

    Every non-empty segment between delimiters increments exactly one of frames_ok and the
    error counters; an overlong run counts once as oversize however long it gets.
    """

    frames_ok: int = 0
    cobs_errors: int = 0
    short_errors: int = 0
    crc_errors: int = 0
    length_errors: int = 0
    version_errors: int = 0
    unknown_type: int = 0
    payload_errors: int = 0
    oversize: int = 0
    bytes_in: int = 0

    @property
    def errors(self) -> int:
        return (self.cobs_errors + self.short_errors + self.crc_errors + self.length_errors
                + self.version_errors + self.unknown_type + self.payload_errors + self.oversize)

    @property
    def frames(self) -> int:
        """Segments seen: frames_ok + errors."""
        return self.frames_ok + self.errors

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- C engine
# hil._wire's ssb_wire (csrc/ssb_wire.h) runs the firmware's proto_decode over every segment of a
# feed() in one call and writes one record per frame the caller gets back: result byte, then the
# decoded header and payload. What stays in Python per frame: one unpack of the record head, the
# payload parser and the DecodedFrame tuple.

try:
    from hil._wire import ffi as _ffi  # type: ignore[import-not-found]
    from hil._wire import lib as _lib  # type: ignore[import-not-found]

    _wire_scan = _lib.ssb_wire_scan
    _wire_encode = _lib.ssb_wire_encode
    _wire_take = _lib.ssb_wire_take_measurement
except (ImportError, AttributeError):  # not built, or built before ssb_wire existed
    _ffi = _lib = _wire_scan = _wire_encode = _wire_take = None

_ENV_ENGINE = os.environ.get("SSB_WIRE_ENGINE", "").strip().lower()
if _ENV_ENGINE not in ("", "c", "reference"):
    raise ImportError(f"SSB_WIRE_ENGINE={_ENV_ENGINE!r}: expected 'c' or 'reference'")
#: The engine FrameDecoder() and encode_frame use by default: "c" when hil._wire has the wire
#: codec, unless SSB_WIRE_ENGINE=reference; else "reference" (the pure-Python codec).
WIRE_ENGINE = "reference" if _wire_scan is None or _ENV_ENGINE == "reference" else "c"
if _ENV_ENGINE == "c" and WIRE_ENGINE != "c":
    raise ImportError("SSB_WIRE_ENGINE=c but hil._wire is not built (pip install -e .)")

_REC_CAP = 16384  # record buffer per decoder: 66 records of a 23-cell MEASUREMENT per C call
_REC_HEAD = struct.Struct("<BBBHH")  # result, version, type, seq, length (csrc/ssb_wire.h)
_ENC_CAP = MAX_ENCODED
_ENC_POOL: list[tuple[Any, Any]] = []
# The C engine's result codes, read from hil._wire (csrc/ssb_wire.h is their one source):
# the FrameError kind per decode-error code, and (counts index, LinkCounters field) for every
# error code ssb_wire_scan counts.
_KIND_FOR_CODE: dict[int, FrameErrorKind] = {}
_COUNT_FIELDS: tuple[tuple[int, str], ...] = ()
if _lib is not None:
    _KIND_FOR_CODE = {_lib.SSB_WIRE_RES_BAD_VERSION: FrameErrorKind.VERSION,
                      _lib.SSB_WIRE_RES_UNKNOWN_TYPE: FrameErrorKind.UNKNOWN_TYPE,
                      _lib.SSB_WIRE_RES_BAD_PAYLOAD: FrameErrorKind.PAYLOAD}
    _COUNT_FIELDS = ((_lib.SSB_WIRE_RES_BAD_COBS, "cobs_errors"),
                     (_lib.SSB_WIRE_RES_TOO_SHORT, "short_errors"),
                     (_lib.SSB_WIRE_RES_BAD_CRC, "crc_errors"),
                     (_lib.SSB_WIRE_RES_BAD_LENGTH, "length_errors"),
                     (_lib.SSB_WIRE_RES_BAD_VERSION, "version_errors"),
                     (_lib.SSB_WIRE_RES_UNKNOWN_TYPE, "unknown_type"),
                     (_lib.SSB_WIRE_RES_BAD_PAYLOAD, "payload_errors"),
                     (_lib.SSB_WIRE_RES_OVERSIZE, "oversize"))
    assert _lib.SSB_WIRE_REC_HEAD == _REC_HEAD.size  # noqa: S101 (layout shared with C)
    assert _lib.SSB_WIRE_MAX_SEGMENT == _MAX_SEGMENT  # noqa: S101


def wire_values_pointer(values: Any) -> Any:
    """A C pointer into ``values`` (int64, contiguous) for :meth:`FrameDecoder.take_measurement`,
    made by the wire module's ffi (a pointer of another cffi module is not accepted there)."""
    if _ffi is None:
        raise RuntimeError("hil._wire is not built (pip install -e .)")
    return _ffi.from_buffer("int64_t[]", values)


def _enc_buffer() -> tuple[Any, Any]:
    out = _ffi.new("char[]", _ENC_CAP)
    return out, _ffi.buffer(out)


class SampleEncoder:
    """The host's usual request of a tick, framed in one call: an optional HEARTBEAT, then a
    SAMPLE; the same bytes as ``encode_frame(Heartbeat(state, ms), hb_seq) +
    encode_frame(Sample(dt_us), seq)`` (C engine: ``ssb_wire_encode_sample`` into a buffer made
    once, no message objects; reference engine: exactly that sum). The caller keeps the fields
    within their wire types (seq u16, dt_us and ms u32, state u8); one encoder per link (the
    buffer is not shared between threads)."""

    __slots__ = ("_call", "_out", "_view", "_engine")

    def __init__(self, engine: str = "auto") -> None:
        if engine == "auto":
            engine = WIRE_ENGINE
        if engine == "c":
            if _lib is None:
                raise RuntimeError("the C wire codec is not built (pip install -e .)")
            self._call = _lib.ssb_wire_encode_sample
            self._out = _ffi.new("char[]", 64)
            self._view = _ffi.buffer(self._out)
        elif engine != "reference":
            raise ValueError(f"engine {engine!r}: expected 'auto', 'c' or 'reference'")
        self._engine = engine

    def encode(self, seq: int, dt_us: int, hb: tuple[int, int, int] | None = None) -> bytes:
        """The frames: ``hb`` = (hb_seq, bms_state, host_time_ms) of a HEARTBEAT to lead."""
        if self._engine == "reference":
            frame = encode_frame_reference(Sample(dt_us), seq)
            if hb is None:
                return frame
            return encode_frame_reference(Heartbeat(hb[1], hb[2]), hb[0]) + frame
        if hb is None:
            n = self._call(seq, dt_us, 0, 0, 0, 0, self._out, 64)
        else:
            n = self._call(seq, dt_us, 1, hb[0], hb[1], hb[2], self._out, 64)
        return self._view[:n]


_new_df = DecodedFrame._make  # tuple.__new__: skips the NamedTuple's Python-level __new__
_new_object = object.__new__
_MEAS_SET = tuple(Measurement.__dict__[f.name].__set__ for f in fields(Measurement))
assert len(_MEAS_SET) == 7  # noqa: S101 (the setters below follow the field order)
_MEAS_C: dict[tuple[int, int, int], tuple[Any, int, int]] = {}


def _parse_measurement_c(buf: bytearray, off: int, n: int) -> Measurement:
    """_parse_measurement for the C engine: the payload length already passed rule 7 in C.

    Builds the frozen dataclass through its slot setters (what its __init__ does, without the
    per-field object.__setattr__ calls: half the cost). Measurement has no __post_init__.
    """
    key = (buf[off + 6], buf[off + 7], buf[off + 8])
    shape = _MEAS_C.get(key)
    if shape is None:
        a = 8 + key[0]
        shape = (_meas_struct(*key).unpack_from, a, a + key[1])
        if len(_MEAS_C) < 4096:  # bounded: counts come off the wire
            _MEAS_C[key] = shape
    unpack, a, b = shape
    v = unpack(buf, off)
    m = _new_object(Measurement)
    s_ts, s_status, s_cur, s_bus, s_cells, s_therm, s_load = _MEAS_SET
    s_ts(m, v[0])
    s_status(m, v[1])
    s_cur(m, v[5])
    s_bus(m, v[6])
    s_cells(m, v[8:a])
    s_therm(m, v[a:b])
    s_load(m, v[b:])
    return m


_PARSERS_C = dict(_PARSERS)
_PARSERS_C[int(MsgType.MEASUREMENT)] = _parse_measurement_c

#: Encode ``msg`` with sequence number ``seq``: COBS(header|payload|crc) + 0x00. The C engine
#: when available (:data:`WIRE_ENGINE`), else :func:`encode_frame_reference`: the same bytes and the
#: same errors (ValueError for a field, the payload size or seq out of range).
encode_frame = _encode_frame_c if WIRE_ENGINE == "c" else encode_frame_reference


class FrameDecoder:
    """Stream decoder: bytes in, frames out; never raises on any input.

    Resynchronises at the next 0x00 after garbage; holds at most 250 bytes of an unfinished
    frame (then counts *oversize* once and discards up to the next delimiter).

    ``engine``: "c" (hil._wire's ssb_wire), "reference" (pure Python: hil/cobs.py and
    :func:`_decode_segment`) or "auto" (:data:`WIRE_ENGINE`). Both give identical frames and
    counters.
    """

    __slots__ = ("counters", "engine", "_buf", "_dropping", "_st", "_rec", "_recp")

    def __init__(self, engine: str = "auto") -> None:
        if engine == "auto":
            engine = WIRE_ENGINE
        if engine == "c":
            if _wire_scan is None:
                raise RuntimeError("the C wire codec is not built (pip install -e .)")
            self._st = _ffi.new("ssb_wire_scan_t *")
            self._rec = bytearray(_REC_CAP)
            self._recp = _ffi.from_buffer(self._rec)  # the bytearray must never be resized
        elif engine == "reference":
            self._st = self._rec = self._recp = None
        else:
            raise ValueError(f"engine {engine!r}: expected 'auto', 'c' or 'reference'")
        self.engine = engine
        self.counters = LinkCounters()
        self._buf = b""
        self._dropping = False

    def reset(self) -> None:
        """Forget a partial frame (e.g. after reopening the port); counters are kept."""
        self._buf = b""
        self._dropping = False
        if self._st is not None:
            self._st.dropping = 0

    @property
    def pending(self) -> int:
        """Bytes buffered of an unfinished frame."""
        return len(self._buf)

    @property
    def idle(self) -> bool:
        """Nothing buffered and no overlong run being discarded: the next bytes start afresh
        (a fast lane may then take whole frames and count them itself)."""
        if self._buf:
            return False
        st = self._st
        return not (st.dropping if st is not None else self._dropping)

    def take_measurement(self, data: bytes, seq: int, vals_ptr: Any, n_vals: int) -> bool:
        """The fast lane for the MEASUREMENT a host waits for (C engine only): when nothing is
        buffered and ``data`` is exactly that one frame (seq ``seq``, 4 + channels == n_vals),
        unpack it into ``vals_ptr`` (an ``int64_t[]`` of n_vals: timestamp_ms, status,
        current_raw, bus_voltage_raw, then the channels in wire order) and count it as
        :meth:`feed` would; True. Anything else: False, nothing changed, and the caller passes
        the same bytes to :meth:`feed`."""
        st = self._st
        if st is None or self._buf or st.dropping:
            return False
        if _wire_take(data, len(data), seq, vals_ptr, n_vals) <= 0:
            return False
        c = self.counters
        c.bytes_in += len(data)
        c.frames_ok += 1
        return True

    def feed(self, data: bytes | bytearray | memoryview) -> list[DecodedFrame]:
        """Decode every complete frame in the bytes buffered so far plus ``data``."""
        st = self._st
        if st is None:
            return self._feed_py(data)
        c = self.counters
        c.bytes_in += len(data)
        if self._buf:
            data = self._buf + bytes(data)
        elif data.__class__ is not bytes:
            data = bytes(data)
        n = len(data)
        out: list[DecodedFrame] = []
        rec = self._rec
        pos = ok = 0
        while True:
            k = _wire_scan(data, n, pos, st, self._recp, _REC_CAP)
            off = 0
            while k:
                code, ver, typ, seq, length = _REC_HEAD.unpack_from(rec, off)
                off += 7
                if code:  # rules 5..7: header intact, no message
                    out.append(_new_df((seq, None, _KIND_FOR_CODE[code], typ, ver)))
                else:
                    out.append(_new_df((seq, _PARSERS_C[typ](rec, off, length), None, typ, ver)))
                    ok += 1
                off += length
                k -= 1
            if st.n_errors:
                counts = st.counts
                for i, name in _COUNT_FIELDS:
                    if counts[i]:
                        setattr(c, name, getattr(c, name) + counts[i])
            if not st.more:
                break
            pos = st.pos
        if ok:
            c.frames_ok += ok
        pos = st.pos
        self._buf = data[pos:] if pos < n else b""
        return out

    def _feed_py(self, data: bytes | bytearray | memoryview) -> list[DecodedFrame]:
        """feed() in pure Python: the reference the C engine is tested against."""
        c = self.counters
        c.bytes_in += len(data)
        if self._buf:
            data = self._buf + bytes(data)
        elif not isinstance(data, bytes):
            data = bytes(data)
        out: list[DecodedFrame] = []
        start = 0
        find = data.find
        while True:
            end = find(b"\x00", start)
            if end < 0:
                break
            if self._dropping:
                self._dropping = False  # the overlong run ends here; it is already counted
            elif end - start > _MAX_SEGMENT:
                c.oversize += 1
            elif end > start:
                r = _decode_segment(data[start:end])
                if r.__class__ is DecodedFrame:
                    err = r.error  # type: ignore[union-attr]
                    if err is None:
                        c.frames_ok += 1
                    elif err is FrameErrorKind.VERSION:
                        c.version_errors += 1
                    elif err is FrameErrorKind.UNKNOWN_TYPE:
                        c.unknown_type += 1
                    else:
                        c.payload_errors += 1
                    out.append(r)  # type: ignore[arg-type]
                else:
                    setattr(c, r.value, getattr(c, r.value) + 1)  # type: ignore[union-attr]
            start = end + 1
        if self._dropping:
            self._buf = b""
        elif len(data) - start > _MAX_SEGMENT:
            c.oversize += 1
            self._dropping = True
            self._buf = b""
        else:
            self._buf = data[start:]
        return out
