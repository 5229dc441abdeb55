"""CAN frames of the shipped DBC, encoded and decoded through cantools, with the E2E protection.

Everything about a frame's layout comes from ``ssb_bms.dbc`` (written by tools/gen_can_dbc.py):
cantools packs and unpacks every signal. The only bytes computed here are the checksum, over
the payload cantools encoded (AUTOSAR E2E profile 1 style: CRC-8 SAE J1850, polynomial 0x1D,
initial value 0xFF, final XOR 0xFF, over the data ID, here the frame ID low byte then high
byte, and data bytes 1..7), written into the CRC signal's byte. The alive counter is a cantools
signal (0..14, +1 per frame of an ID).

Physical values are saturated to the signal's [minimum, maximum] before encoding (a frame is
never refused for an estimate just outside its range, e.g. SOC -0.1 %), and NaN becomes the
signal's ``SNA`` value where the DBC defines one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cantools
from cantools.database.can import Message

#: The DBC shipped in this package (pyproject package-data).
DBC_PATH = Path(__file__).with_name("ssb_bms.dbc")
#: Every frame of the DBC is a classic CAN frame of this many bytes.
FRAME_BYTES = 8
#: The alive counter counts 0..COUNTER_MODULO-1 (E2E profile 1: 15 is never sent).
COUNTER_MODULO = 15
SNA = "SNA"


class DbcError(ValueError):
    """The DBC cannot be used: it does not load, or lacks a frame, a signal or the E2E layout
    the code relies on. The message names the file, the frame and the signal."""


def _crc8_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1D) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return tuple(table)


_CRC8 = _crc8_table()


def crc8_sae_j1850(data: bytes | bytearray, crc: int = 0xFF) -> int:
    """CRC-8 SAE J1850 (poly 0x1D, init 0xFF, final XOR 0xFF). Check value of b"123456789":
    0x4B (AUTOSAR CRC specification, Crc_CalculateCRC8)."""
    for byte in data:
        crc = _CRC8[crc ^ byte]
    return crc ^ 0xFF


def e2e_crc(frame_id: int, data: bytes | bytearray) -> int:
    """The checksum of a frame: over the data ID (frame ID low byte, high byte) and bytes 1..7."""
    return crc8_sae_j1850(bytes((frame_id & 0xFF, (frame_id >> 8) & 0xFF)) + bytes(data[1:]))


@dataclass(frozen=True)
class FrameSpec:
    """What the code needs of one DBC frame, checked at load."""

    message: Message
    crc_signal: str
    counter_signal: str
    cycle_s: float
    mux_signal: str | None
    #: Signal name -> (minimum, maximum, has SNA), for saturation.
    ranges: dict[str, tuple[float, float, bool]]

    @property
    def frame_id(self) -> int:
        return int(self.message.frame_id)

    @property
    def name(self) -> str:
        return str(self.message.name)


class Codec:
    """The DBC loaded strictly by cantools; ``encode`` and ``decode`` of its frames."""

    def __init__(self, path: str | Path = DBC_PATH) -> None:
        self.path = Path(path)
        try:
            self.db = cantools.database.load_file(str(self.path), strict=True)
        except (OSError, cantools.database.UnsupportedDatabaseFormatError,
                cantools.database.Error) as exc:
            raise DbcError(f"{self.path}: cannot be loaded as a DBC: "
                           f"{' '.join(str(exc).split())}") from None
        self.frames: dict[str, FrameSpec] = {}
        self.by_id: dict[int, FrameSpec] = {}
        for message in self.db.messages:
            spec = self._spec(message)
            self.frames[spec.name] = spec
            self.by_id[spec.frame_id] = spec

    def _spec(self, m: Message) -> FrameSpec:
        where = f"{self.path}: frame {m.name} (0x{m.frame_id:X})"
        if m.length != FRAME_BYTES or m.is_extended_frame or m.is_fd:
            raise DbcError(f"{where}: expected a classic 11-bit frame of {FRAME_BYTES} bytes")
        crc = f"{m.name}_CRC"
        counter = f"{m.name}_Counter"
        names = {s.name: s for s in m.signals}
        for name, start, length in ((crc, 0, 8), (counter, 8, 4)):
            s = names.get(name)
            if s is None or s.start != start or s.length != length \
                    or s.byte_order != "little_endian":
                raise DbcError(f"{where}: signal {name} must be Intel bits {start}|{length} "
                               "(the E2E layout, docs/can.md)")
        if not m.cycle_time:
            raise DbcError(f"{where}: no GenMsgCycleTime")
        muxes = [s.name for s in m.signals if s.is_multiplexer]
        ranges = {}
        for s in m.signals:
            if s.minimum is None or s.maximum is None:
                raise DbcError(f"{where}: signal {s.name} has no [minimum|maximum]")
            has_sna = bool(s.choices) and SNA in [str(v) for v in s.choices.values()]
            ranges[s.name] = (float(s.minimum), float(s.maximum), has_sna)
        return FrameSpec(m, crc, counter, m.cycle_time / 1000.0, muxes[0] if muxes else None,
                         ranges)

    def frame(self, name: str) -> FrameSpec:
        try:
            return self.frames[name]
        except KeyError:
            raise DbcError(f"{self.path}: no frame {name}; it has "
                           f"{', '.join(sorted(self.frames))}") from None

    def encode(self, spec: FrameSpec, counter: int, values: dict[str, Any]) -> bytes:
        """The frame's 8 bytes: ``values`` (physical; NaN -> SNA; saturated to the signal's
        range) and the counter encoded by cantools, then the CRC over that payload."""
        signals: dict[str, Any] = {spec.crc_signal: 0, spec.counter_signal: counter}
        ranges = spec.ranges
        for name, value in values.items():
            if isinstance(value, str):
                signals[name] = value
                continue
            lo, hi, has_sna = ranges[name]
            v = float(value)
            if v != v:  # NaN: no data
                signals[name] = SNA if has_sna else lo
            else:
                signals[name] = lo if v < lo else hi if v > hi else v
        data = bytearray(spec.message.encode(signals, scaling=True, padding=False, strict=True))
        data[0] = e2e_crc(spec.frame_id, data)
        return bytes(data)

    def decode(self, spec: FrameSpec, data: bytes | bytearray, choices: bool = False
               ) -> dict[str, Any]:
        """Physical values by signal name; with ``choices`` the DBC's value names as strings
        (e.g. "SNA", "CLOSED") where it defines them."""
        out = spec.message.decode(bytes(data), decode_choices=choices, scaling=True,
                                  allow_truncated=False)
        return {k: (str(v) if not isinstance(v, (int, float)) else v) for k, v in out.items()}


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
