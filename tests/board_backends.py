"""The boards the protocol tests run on, one backend each, behind one small interface.

- ``emulator``: the Python emulated board (:class:`hil.emulator.board.EmulatedBoard`) served on
  a real pty (``os.openpty``) by a background thread (:class:`Running`);
- ``firmware``: the reference firmware's ELF on a simulated ATmega2560 (simavr harness, the plant
  on its pins, :class:`hil.firmware.FirmwareBoard`), on the pty the harness opens;
- ``emu``: the same emulated board in the test's own process behind an ``emu://`` URL
  (hil/emulator/protocol_emu.py; sim clock only: a real-clock case skips). Each open of the URL
  is a fresh board, so its receive counters are those of the port a test opened
  (``rx_counters`` is None: read them from ``port.board``).

tests/conftest.py turns these into the parametrised ``board`` / ``board_factory`` fixtures; a
test that takes one of them runs once per backend (tests/test_board_protocol.py). Shared raw-wire
helpers (:func:`read_frames`, :func:`write_bad_frames`) live here too, so no test module imports
another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pytest
import serial

from boards.config import BoardProfile, load_board, load_pack
from hil.client import BoardClient
from hil.emulator.board import BoardOptions, EmulatedBoard, PtyServer
from hil.emulator.protocol_emu import emu_url, register
from hil.protocol import (
    BoardKind,
    DecodedFrame,
    FrameDecoder,
    Info,
    MsgType,
    Sample,
    encode_frame,
    encode_raw_frame,
)

BACKENDS = ("emulator", "firmware", "emu")

EMU_PACK = load_pack("ssb-23")
EMU_PROFILE = load_board("emu-23")


class Running:
    """An EmulatedBoard served on a pty by a background thread."""

    def __init__(self, **opts: object) -> None:
        self.board = EmulatedBoard(BoardOptions(pack=EMU_PACK, board=EMU_PROFILE, **opts))  # type: ignore[arg-type]
        self.server = PtyServer(self.board)
        self.path = self.server.path
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()
        self.server.close()

    def rx_counters(self, bytes_in: int = 0, timeout_s: float = 5.0) -> dict[str, int]:
        """The board's decoder counters once it has read at least ``bytes_in`` host bytes."""
        end = time.monotonic() + timeout_s
        while True:
            counters = asdict(self.board.decoder.counters)
            if counters["bytes_in"] >= bytes_in:
                return counters
            if time.monotonic() > end:
                raise TimeoutError(f"emulator: {counters['bytes_in']} host bytes read after "
                                   f"{timeout_s} s, expected {bytes_in}")
            time.sleep(0.002)


@dataclass
class BoardUnderTest:
    """A started board of one backend: its port, profile and what its INFO must say."""

    backend: str
    path: str
    profile: BoardProfile
    board_kind: BoardKind
    board_id: str
    fault_inject: bool          # Capability.FAULT_INJECT expected in INFO
    timeout_s: float            # client reply timeout: a failure bound only
    retries: int
    stop: Callable[[], None]
    # rx_counters(bytes_in): what the board made of the host's bytes, by the decoding rules
    # (hil.protocol.LinkCounters names), once it has taken at least bytes_in of them. The
    # protocol has no message for these: the emulator's are its decoder's, the firmware's the
    # harness's, which follows the bytes at the MCU's UART with the firmware's own codec.
    rx_counters: Callable[[int], dict[str, int]] | None
    # A pause between the pieces of a split frame that matters: the emulator's server reads
    # every write at once; the simavr harness polls its pty and runs the MCU in between.
    split_pause_s: float = 0.01
    # The longest SAMPLE dt the board runs (None: any u32); the simavr harness bounds it.
    max_sample_dt_s: float | None = None

    def client(self) -> BoardClient:
        return BoardClient(self.path, self.profile, timeout_s=self.timeout_s,
                           retries=self.retries)


def start_board(backend: str, clock: str = "sim", seed: int = 3,
                initial_soc: float = 0.6) -> BoardUnderTest:
    """Start an ssb-23 stack-0 board of ``backend`` (the caller stops it: ``.stop()``).

    ``firmware`` skips (or fails under CI=true) without the AVR toolchain and simavr, as every
    tests/test_firmware_*.py does (tests/firmware_tools.py), and builds the ELF if needed.
    """
    if backend == "emulator":
        emu = Running(seed=seed, clock=clock, initial_soc=initial_soc)
        return BoardUnderTest(backend, emu.path, EMU_PROFILE, BoardKind.EMULATOR,
                              "emu-23#0", True, 1.0, 2, emu.stop, emu.rx_counters)
    if backend == "firmware":
        from firmware_tools import require_tools

        from hil.firmware import MAX_SAMPLE_DT_S, FirmwareBoard

        require_tools()
        fw = FirmwareBoard("ssb-23", seed=seed, clock=clock, speed=1.0,
                           initial_soc=initial_soc)
        fw.start()
        # Lockstep: a reply costs ~10 ms of simulated time; the timeouts only bound a failure.
        return BoardUnderTest(backend, fw.path, fw.profile, BoardKind.SIMULATED_MCU,
                              "m2560-ltc6811", False, 5.0, 0 if clock == "sim" else 1, fw.stop,
                              fw.rx_counters, split_pause_s=0.1,
                              max_sample_dt_s=MAX_SAMPLE_DT_S)
    if backend == "emu":
        if clock != "sim":
            pytest.skip("emu:// serves the sim clock only (clock=real is refused)")
        register()
        url = emu_url("ssb-23", 0, seed=seed, soc=initial_soc, profile=EMU_PROFILE.name)
        return BoardUnderTest(backend, url, EMU_PROFILE, BoardKind.EMULATOR, "emu-23#0", True,
                              1.0, 2, lambda: None, None, split_pause_s=0.0)
    raise ValueError(f"unknown board backend {backend!r}")


# --------------------------------------------------------------------------- raw wire


def read_frames(port: serial.Serial, dec: FrameDecoder, n: int, deadline_s: float = 3.0,
                skip_boot_info: bool = True) -> list[DecodedFrame]:
    """n decoded frames (the boot INFO, seq 0, may still sit in the pty: skipped)."""
    out: list[DecodedFrame] = []
    end = time.monotonic() + deadline_s
    while len(out) < n and time.monotonic() < end:
        data = port.read(max(1, port.in_waiting))
        out += [f for f in dec.feed(data)
                if not (skip_boot_info and f.seq == 0 and isinstance(f.msg, Info))]
    return out


def write_bad_frames(port: serial.Serial) -> None:
    """Garbage and broken frames from the host, then one good SAMPLE (seq 1).

    The board must answer seq 2 UNKNOWN_TYPE, seq 3 BAD_LENGTH, seq 4 BAD_VERSION (detail 1) and
    seq 1 a MEASUREMENT; the oversize garbage and the CRC-broken frame are dropped silently.
    """
    rng = np.random.default_rng(5)
    good = encode_frame(Sample(100_000), 1)
    bad = bytearray(good)
    bad[4] ^= 0x5A                                       # CRC error: dropped silently
    port.write(rng.integers(1, 256, 600, dtype=np.uint8).tobytes())   # oversize garbage
    port.write(b"\x00" + bytes(bad))
    port.write(b"\x00\x00" + rng.integers(0, 256, 50, dtype=np.uint8).tobytes() + b"\x00")
    port.write(encode_raw_frame(1, 0x77, 2, b""))        # unknown type
    port.write(encode_raw_frame(1, int(MsgType.SAMPLE), 3, b"\x01"))   # bad length
    port.write(encode_raw_frame(2, int(MsgType.SAMPLE), 4, b"\x00" * 4))  # bad version
    port.write(good)
