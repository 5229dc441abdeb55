"""The vehicle side of the CAN tests, written from the DBC with cantools alone (no project
code): frames encoded and decoded by cantools, the E2E checksum by a bitwise CRC-8 SAE J1850
of its own (the project's is table-driven), so the tests check the project against the DBC and
the algorithm, not against itself. Shared by tests/test_can_*.py (no test module imports
another)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import can
import cantools

DBC = Path(__file__).resolve().parent.parent / "bms" / "vehicle" / "ssb_bms.dbc"
DB = cantools.database.load_file(str(DBC), strict=True)
REQUEST = {"none": 0, "close": 1, "open": 2, "reset": 3}


def crc8_j1850_bitwise(data: bytes) -> int:
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1D) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc ^ 0xFF


def frame_crc(frame_id: int, data: bytes) -> int:
    return crc8_j1850_bitwise(bytes((frame_id & 0xFF, frame_id >> 8)) + bytes(data[1:]))


class Vcu:
    """A vehicle controller on a python-can bus: requests, heartbeats, decoded BMS frames."""

    def __init__(self, bus: can.BusABC) -> None:
        self.bus = bus
        self.counters: dict[str, int] = {}

    def encode(self, name: str, counter: int | None = None, **signals: Any) -> bytearray:
        m = DB.get_message_by_name(name)
        strict = counter is None  # an explicit counter may be a wrong one on purpose (15)
        if counter is None:
            counter = (self.counters.get(name, -1) + 1) % 15
            self.counters[name] = counter
        data = bytearray(m.encode({f"{name}_CRC": 0, f"{name}_Counter": counter, **signals},
                                  strict=strict))
        data[0] = frame_crc(m.frame_id, data)
        return data

    def send_raw(self, frame_id: int, data: bytes, dlc: int | None = None) -> None:
        self.bus.send(can.Message(arbitration_id=frame_id, data=data, is_extended_id=False,
                                  dlc=len(data) if dlc is None else dlc))

    def send(self, name: str, **signals: Any) -> None:
        self.send_raw(DB.get_message_by_name(name).frame_id, bytes(self.encode(name, **signals)))

    def beat(self) -> None:
        self.send("VCU_Heartbeat", VehicleUptime=0.0)

    def request(self, what: str) -> None:
        self.send("VCU_Request", StateRequest=REQUEST[what])

    def frames(self) -> list[tuple[can.Message, str, dict[str, Any]]]:
        """Every frame waiting, decoded by cantools: (message, frame name, signals)."""
        out = []
        while (msg := self.bus.recv(timeout=0.0)) is not None:
            m = DB.get_message_by_frame_id(msg.arbitration_id)
            out.append((msg, m.name, m.decode(bytes(msg.data), decode_choices=False)))
        return out
