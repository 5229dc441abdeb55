"""One place per fact (issue 10): values that exist in several languages or layers are defined
once and the others are derived from it, or checked equal here when a C header must carry its
own copy. Plus the one fact the host used to assume instead of reading: the board's watchdog
timeout, which the controller now takes from INFO."""

from __future__ import annotations

import re
from pathlib import Path

from bms import contactors
from bms.app.emulators import start_emulators
from bms.controller import Controller
from bms.faults import FaultCode
from bms.runlog import load_events
from boards.config import TIME_EPS_S, load_pack
from hil.protocol import Outputs, Status

ROOT = Path(__file__).resolve().parents[1]


def _c_define(header: str, name: str) -> float:
    """A numeric #define of a C header (relative to the repository; csrc/ when bare)."""
    path = ROOT / (header if "/" in header else f"csrc/{header}")
    m = re.search(rf"#define\s+{name}\s+(0x[0-9A-Fa-f]+|[0-9.eE+-]+)u?\b", path.read_text())
    assert m, f"{name} not defined in {path}"
    return float(int(m.group(1), 16)) if m.group(1).startswith("0x") else float(m.group(1))


def test_time_tolerance_is_one_number_in_python_and_c() -> None:
    assert _c_define("ssb_protect.h", "SSB_PROT_TIME_EPS_S") == TIME_EPS_S


def test_relay_bits_come_from_the_wire_enum() -> None:
    assert contactors.CONTACTOR_POS == Outputs.CONTACTOR_POS == Status.CONTACTOR_POS
    assert contactors.CONTACTOR_NEG == Outputs.CONTACTOR_NEG == Status.CONTACTOR_NEG
    assert contactors.PRECHARGE == Outputs.PRECHARGE == Status.PRECHARGE
    assert contactors.ALL_RELAYS == int(Outputs.CONTACTOR_POS | Outputs.CONTACTOR_NEG
                                        | Outputs.PRECHARGE)


def test_controller_paces_the_heartbeat_by_the_boards_watchdog(tmp_path: Path) -> None:
    """The controller's pack file says the board watchdog is 5 s; the board (its firmware's
    own setting: here the emulator's pack, 1 s) says 1 s in INFO. The controller beats by the
    board's figure, logs that the two disagree, and the board's watchdog never trips. At the
    pack file's pace (one beat per 1 s, plus the pipelined sim clock's two ticks of delay) it
    would trip within the first seconds."""
    slow = tmp_path / "slow-watchdog.yaml"
    slow.write_text("schema: ssb-bms/pack/1\nbase: ssb-23\nname: ssb-23-slow-watchdog\n"
                    "contactors:\n  heartbeat_timeout_s: 5.0\n")
    board_pack, host_pack = load_pack("ssb-23"), load_pack(slow)
    emus = start_emulators(board_pack, clock="sim", seed=1)
    try:
        c = Controller(host_pack, [e.path for e in emus], clock="sim", log_dir=tmp_path / "log")
        assert c.heartbeat_period_s == 0.0  # before open() knows the boards: every tick
        c.open()
        assert c.stacks[0].io.watchdog_timeout_s() == 1.0
        assert abs(c.heartbeat_period_s - 1.0 / 5) < 1e-12
        c.request_close()
        c.run(20.0)
        summary = c.close()
    finally:
        for e in emus:
            e.stop()
    assert summary["state"] == "CLOSED"
    events = load_events(tmp_path / "log")
    differs = [e for e in events if e.get("event") == "watchdog differs from pack"]
    assert differs and differs[0]["board_s"] == 1.0 and differs[0]["pack_s"] == 5.0
    assert not [e for e in events if e.get("name") == FaultCode.BOARD_WATCHDOG_TRIPPED.name]


def test_wire_sizes_and_sentinels_match_the_firmware() -> None:
    """The firmware is a C program of its own: its proto.h and app.h carry the wire's sizes and
    the invalid-count sentinels; the host's one definition (hil.protocol) must equal them."""
    from hil import protocol as proto

    fw = "boards/firmware/src/"
    assert _c_define(fw + "proto.h", "PROTO_VERSION") == proto.PROTOCOL_VERSION
    assert _c_define(fw + "proto.h", "PROTO_HEADER_LEN") == proto.HEADER_SIZE
    assert _c_define(fw + "proto.h", "PROTO_CRC_LEN") == proto.CRC_SIZE
    assert _c_define(fw + "proto.h", "PROTO_MAX_PAYLOAD") == proto.MAX_PAYLOAD
    assert _c_define(fw + "proto.h", "PROTO_MAX_ENCODED") == proto.MAX_ENCODED
    assert _c_define(fw + "app.h", "INVALID_U16") == proto.INVALID_U16
    assert _c_define(fw + "app.h", "INVALID_I32") == proto.INVALID_I32


def test_core_constants_are_the_compiled_modules() -> None:
    from bms import _core, core

    lib = _core.lib
    assert core.OUT_N == lib.SSB_OUT_N and core.WORK_ROWS == lib.SSB_WORK_ROWS
    assert core.MAX_HORIZONS == lib.SSB_MAX_HORIZONS
    assert core.ERRORS[lib.SSB_ERR_DT] == "SSB_ERR_DT"
