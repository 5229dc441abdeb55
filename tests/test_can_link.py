"""The vehicle side over CAN in one process (issue 12 item 1): the real controller, C core and
emulated board on a real pty, python-can's ``virtual`` bus, the BMS's frames decoded by
cantools from the DBC in the test (tests/can_vcu.py), never by the project's code. Sim clock:
the timing bounds are in ticks.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import can
import pytest
from board_backends import Running
from can_vcu import DB, Vcu, frame_crc

from bms.contactors import CONTACTOR_NEG, CONTACTOR_POS, ContactorState
from bms.controller import Controller
from bms.faults import FaultCode, Severity
from bms.vehicle.link import VehicleLink
from boards.config import load_pack

PACK = load_pack("ssb-23")
TICK_S = PACK.controller.tick_s
TIMEOUT_S = PACK.vehicle.heartbeat_timeout_s


class Rig:
    """A controller with a vehicle link on a virtual bus, a VCU on the same channel."""

    def __init__(self, tmp_path: Path, pack=PACK) -> None:  # noqa: ANN001
        channel = f"bms-test-{uuid.uuid4().hex}"
        self.emu = Running(seed=3)
        self.bms_bus = can.Bus(interface="virtual", channel=channel)
        self.vcu = Vcu(can.Bus(interface="virtual", channel=channel))
        self.link = VehicleLink(self.bms_bus, pack)
        self.log = tmp_path / "log"
        self.c = Controller(pack, [self.emu.path], clock="sim", log_dir=self.log,
                            vehicle=self.link)
        self.c.open()
        self.frames: list = []

    def tick(self, beat: bool = True, request: str | None = None) -> None:
        if beat:
            self.vcu.beat()
        if request:
            self.vcu.request(request)
        self.c.tick()
        self.frames += [(self.c.tick_index - 1, *f) for f in self.vcu.frames()]

    def until(self, state: ContactorState, max_ticks: int = 100, **kw: object) -> int:
        for _ in range(max_ticks):
            self.tick(**kw)  # type: ignore[arg-type]
            if self.c.contactors.state == state:
                return self.c.tick_index - 1
        raise AssertionError(f"not {state.name} after {max_ticks} ticks: "
                             f"{self.c.contactors.state.name}")

    def close(self) -> None:
        self.c.close()
        self.bms_bus.shutdown()
        self.vcu.bus.shutdown()
        self.emu.stop()

    def events(self) -> list[dict]:
        return [json.loads(x) for x in (self.log / "events.jsonl").read_text().splitlines()]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def _closed(outputs: int) -> bool:
    return bool(outputs & (CONTACTOR_POS | CONTACTOR_NEG))


def test_frames_on_their_cycles_with_counters_and_checksums(rig: Rig) -> None:
    rig.tick(request="close")
    rig.until(ContactorState.CLOSED)
    for _ in range(25):
        rig.tick()
    n_ticks = rig.c.tick_index
    by_id: dict[int, list] = {}
    for tick, msg, name, sig in rig.frames:
        assert msg.dlc == 8 and not msg.is_extended_id
        assert msg.data[0] == frame_crc(msg.arbitration_id, msg.data), name
        by_id.setdefault(msg.arbitration_id, []).append((tick, name, sig))
    bms_frames = [m for m in DB.messages if m.senders == ["BMS"]]
    assert set(by_id) == {m.frame_id for m in bms_frames}
    for m in bms_frames:
        seq = by_id[m.frame_id]
        counters = [s[f"{m.name}_Counter"] for _, _, s in seq]
        assert all((b - a) % 15 == 1 for a, b in pairwise(counters)), m.name
        assert max(counters) <= 14
        cycle_ticks = round(m.cycle_time / 1000 / TICK_S)
        mux = next((s.name for s in m.signals if s.is_multiplexer), None)
        pages: dict[int, list[int]] = {}
        for tick, _, sig in seq:
            pages.setdefault(sig[mux] if mux else 0, []).append(tick)
        for page, ticks in pages.items():
            # every page on its cycle from its first tick, none missing
            assert all(b - a == cycle_ticks for a, b in pairwise(ticks)), (m.name, page)
            assert len(ticks) >= n_ticks // cycle_ticks - 1
    last = {name: sig for _, _, name, sig in rig.frames}
    status = last["BMS_Status"]
    assert status["BmsState"] == int(ContactorState.CLOSED)
    assert status["ContactorPositive"] == status["ContactorNegative"] == 1
    assert status["VehicleHeartbeatOk"] == 1 and status["FaultLatched"] == 0
    # All 23 cells: pages 0..7 of 3 voltages, 0..5 of 4 SOCs and temperatures
    volts = {k: v for _, _, name, sig in rig.frames if name == "BMS_CellVoltage"
             for k, v in sig.items() if k.startswith("Cell") and k.endswith("_Voltage")}
    cells = [volts[f"Cell{i}_Voltage"] for i in range(1, 24)]
    assert all(3.0 < v < 4.4 for v in cells)
    assert volts["Cell24_Voltage"] == 8.191  # no cell 24: SNA (raw all ones, 8191 mV)
    pack = last["BMS_Pack"]
    assert abs(pack["PackVoltage"] - sum(rig.c.stacks[0].data.cell_voltage_v)) < 0.2
    soc = last["BMS_SOC"]
    assert 0 < soc["MinCellSOC"] <= soc["PackSOC"] <= soc["MaxCellSOC"] <= 100
    assert 1 <= soc["MinCellSOC_Index"] <= 23
    limits = {sig["LimitPage"]: sig for _, _, name, sig in rig.frames if name == "BMS_Limits"}
    assert set(limits) == {0, 1, 2}  # applied + the pack's two horizons
    assert limits[1]["Horizon1_Time"] == PACK.power_limits.horizons_s[0]
    temps = last["BMS_StackTemperature"]
    assert 10 < temps["Stack1_TemperatureMin"] <= temps["Stack1_TemperatureMax"] < 60
    press = last["BMS_StackPressure"]
    assert 0 < press["Stack1_PressureMin"] <= press["Stack1_PressureMax"]
    assert last["BMS_Faults"]["FaultListLength"] == 0


def test_open_request_reaches_the_contactor_command_in_the_same_tick(rig: Rig) -> None:
    rig.tick(request="close")
    rig.until(ContactorState.CLOSED)
    rig.tick()
    assert _closed(rig.c.contactors.outputs)
    rig.tick(request="open")
    # the tick that read the request commanded the contactors open ...
    assert not _closed(rig.c.contactors.outputs)
    # ... and the next tick's BMS_Status (frames leave first thing in a tick) says so
    rig.tick()
    status = [sig for tick, _, name, sig in rig.frames
              if name == "BMS_Status" and tick == rig.c.tick_index - 1][0]
    assert status["ContactorPositive"] == status["ContactorNegative"] == 0
    assert rig.link.counts["requests"] == 2


def test_heartbeat_loss_opens_within_timeout_plus_one_tick(rig: Rig) -> None:
    rig.tick(request="close")
    rig.until(ContactorState.CLOSED)
    rig.tick()
    last_beat_s = rig.c.time_s
    opened_s = None
    for _ in range(20):
        rig.tick(beat=False)
        if not _closed(rig.c.contactors.outputs):
            opened_s = rig.c.time_s
            break
    assert opened_s is not None
    assert opened_s - last_beat_s <= TIMEOUT_S + TICK_S + 1e-9
    assert opened_s - last_beat_s > TIMEOUT_S - 1e-9  # not before the timeout
    rec = rig.c.table.get(FaultCode.VEHICLE_HEARTBEAT_LOST)
    assert rec is not None and rec.latched and rec.severity == Severity.FAULT
    # nothing from CAN closes while it is latched: the heartbeat is back, Close is refused
    for _ in range(3):
        rig.tick()
    rig.tick(request="close")
    for _ in range(10):
        rig.tick()
    assert not _closed(rig.c.contactors.outputs)
    assert rig.c.contactors.state == ContactorState.FAULT
    assert [e for e in rig.events() if e.get("event") == "close refused"
            and e["reason"] == "a fault is latched"]
    # a reset does not close by itself; a new Close after it does
    rig.tick(request="reset")
    for _ in range(10):
        rig.tick()
    assert rig.c.contactors.state == ContactorState.STANDBY
    rig.tick(request="close")
    rig.until(ContactorState.CLOSED)


def test_bad_frames_are_counted_and_repeated_ones_open_the_pack(rig: Rig) -> None:
    rig.tick(request="close")
    rig.until(ContactorState.CLOSED)
    hb = DB.get_message_by_name("VCU_Heartbeat").frame_id
    good = rig.vcu.encode("VCU_Heartbeat", VehicleUptime=1.0)
    bad_crc = bytearray(good)
    bad_crc[0] ^= 0x5A
    rig.vcu.send_raw(hb, bytes(bad_crc))
    rig.vcu.send_raw(0x7FF, b"\x00" * 8)              # unknown ID: counted, not invalid
    rig.vcu.send_raw(0x123, b"\x01\x02")              # unknown ID, short
    rig.tick()
    counts = rig.link.counts
    assert counts["bad_checksum"] == 1 and counts["unknown_id"] == 2
    assert _closed(rig.c.contactors.outputs)           # one bad frame is noise
    assert rig.c.table.get(FaultCode.VEHICLE_FRAME_INVALID) is None
    m_before = rig.c.stacks[0].measurements
    rig.vcu.send_raw(hb, bytes(rig.vcu.encode("VCU_Heartbeat", VehicleUptime=2.0))[:6])  # DLC 6
    rig.vcu.send_raw(hb, bytes(rig.vcu.encode("VCU_Heartbeat", counter=15,
                                               VehicleUptime=3.0)))  # counter 15: never sent
    rig.tick(beat=False)
    assert counts["bad_length"] == 1 and counts["bad_counter"] == 1
    assert not _closed(rig.c.contactors.outputs)       # three within 1 s: the fault
    rec = rig.c.table.get(FaultCode.VEHICLE_FRAME_INVALID)
    assert rec is not None and rec.latched
    for _ in range(5):
        rig.tick()
    assert rig.c.stacks[0].measurements == m_before + 6  # the BMS kept controlling
    # a repeated counter is invalid too
    again = rig.vcu.encode("VCU_Heartbeat", VehicleUptime=4.0)
    rig.vcu.send_raw(hb, bytes(again))
    rig.vcu.send_raw(hb, bytes(again))
    rig.tick(beat=False)
    assert counts["repeated_counter"] == 1


def test_warn_reaction_keeps_the_pack_closed(tmp_path: Path) -> None:
    f = tmp_path / "warn.yaml"
    f.write_text("base: ssb-23\nname: ssb-23-warn\nvehicle:\n  on_heartbeat_lost: warn\n"
                 "  heartbeat_timeout_s: 0.3\n")
    r = Rig(tmp_path, load_pack(str(f)))
    try:
        r.tick(request="close")
        r.until(ContactorState.CLOSED)
        for _ in range(10):
            r.tick(beat=False)
        rec = r.c.table.get(FaultCode.VEHICLE_HEARTBEAT_LOST, Severity.WARNING)
        assert rec is not None and rec.active and not rec.latched
        assert _closed(r.c.contactors.outputs)
        r.tick()
        assert not rec.active  # back
    finally:
        r.close()


def test_close_needs_a_live_heartbeat(rig: Rig) -> None:
    for _ in range(5):
        rig.tick(beat=False, request="close")
    assert rig.c.contactors.state == ContactorState.STANDBY
    assert rig.link.counts["requests_refused"] == 5
    assert len([e for e in rig.events() if e.get("event") == "close refused"]) == 1
    rig.until(ContactorState.CLOSED, request="close")  # the held Close acts once it beats


class FailingBus(can.BusABC):
    """A bus whose interface disappeared: every call raises, as python-can backends do."""

    def __init__(self) -> None:
        super().__init__(channel="gone")

    def _recv_internal(self, timeout: float | None) -> tuple[None, bool]:
        raise can.CanOperationError("Network is down [Error Code 100]")

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        raise can.CanOperationError("No such device or address [Error Code 6]")


def test_a_failing_bus_is_counted_and_the_bms_keeps_controlling(tmp_path: Path) -> None:
    emu = Running(seed=3)
    bus = FailingBus()
    link = VehicleLink(bus, PACK)
    c = Controller(PACK, [emu.path], clock="sim", log_dir=tmp_path / "log", vehicle=link)
    try:
        c.open()
        c.run(3.0)
    finally:
        summary = c.close()
        bus.shutdown()
        emu.stop()
    assert summary["ticks"] == 30 and summary["boards"][0]["measurements"] == 30
    # one receive per tick, one send per tick from the second (frames carry the last tick)
    assert summary["vehicle"]["bus_errors"] == 30 + 29
    events = [json.loads(x) for x in (tmp_path / "log" / "events.jsonl").read_text()
              .splitlines()]
    assert len([e for e in events if e.get("event") == "bus error"]) == 1


@pytest.mark.parametrize("suffix", [".mf4", ".asc"])
def test_can_log_opens_in_python_can_and_asammdf(tmp_path: Path, suffix: str) -> None:
    r = Rig(tmp_path)
    path = tmp_path / f"can{suffix}"
    r.link.can_log = can.Logger(str(path))
    try:
        r.tick(request="close")
        for _ in range(11):
            r.tick()
    finally:
        r.close()  # stops (flushes) the log
    counts = r.link.counts
    reader = can.MF4Reader if suffix == ".mf4" else can.ASCReader
    logged = list(reader(str(path)))
    assert len(logged) == counts["rx_frames"] + counts["tx_frames"]
    by_name: dict[str, int] = {}
    for m in logged:
        name = DB.get_message_by_frame_id(m.arbitration_id).name
        DB.decode_message(m.arbitration_id, bytes(m.data))  # every frame decodes
        by_name[name] = by_name.get(name, 0) + 1
    assert by_name["VCU_Heartbeat"] == 12 and by_name["BMS_Status"] == 11  # from tick 2
    if suffix == ".mf4":
        import asammdf

        with asammdf.MDF(str(path)) as mdf:
            ids = mdf.get("CAN_DataFrame.ID").samples
            assert len(ids) == len(logged)


def test_a_stalled_serial_adapter_does_not_stop_the_tick(tmp_path: Path) -> None:
    """python-can's serial backend on a pty nobody reads (an adapter that hangs): once the
    pty's buffer is full a send fails within the write timeout instead of blocking, and the
    link counts it while the BMS keeps ticking."""
    import os
    import threading
    import time
    import tty

    from bms.app.can_bus import SERIAL_WRITE_TIMEOUT_S, open_bus

    master, slave = os.openpty()
    tty.setraw(slave)
    emu = Running(seed=3)
    bus = open_bus(f"serial:{os.ttyname(slave)}")
    link = VehicleLink(bus, PACK)
    c = Controller(PACK, [emu.path], clock="sim", log_dir=tmp_path / "log", vehicle=link)
    durations: list[float] = []

    def ticks() -> None:
        for _ in range(150):  # ~15 frames a tick: the pty's buffer fills within 100 ticks
            t0 = time.perf_counter()
            c.tick()
            durations.append(time.perf_counter() - t0)

    try:
        c.open()
        worker = threading.Thread(target=ticks, daemon=True)
        worker.start()
        worker.join(timeout=60.0)
        blocked = worker.is_alive()
        if blocked:  # closing the pty's other side ends the blocked write (EIO)
            os.close(master)
            worker.join(timeout=10.0)
    finally:
        summary = c.close()
        bus.shutdown()
        emu.stop()
        if not blocked:
            os.close(master)
        os.close(slave)
    assert not blocked, f"a send blocked the tick after {len(durations)} ticks"
    slowest = max(durations)
    assert summary["ticks"] == 150 and summary["boards"][0]["measurements"] == 150
    assert summary["vehicle"]["bus_errors"] > 0  # the sends that timed out
    assert slowest < 0.5 + SERIAL_WRITE_TIMEOUT_S  # never blocked (sim ticks take ms)


def test_bms_vcu_stops_its_heartbeat_and_requests_open_on_time(capsys) -> None:  # noqa: ANN001
    """bms vcu on a virtual bus (real clock, 1.5 s): its frames decoded here by cantools."""
    import threading
    import time

    from bms.app import vcu as vcu_cli

    channel = f"vcu-{uuid.uuid4().hex}"
    listener = can.Bus(interface="virtual", channel=channel)
    argv = [f"virtual:{channel}", "--duration", "1.5", "--stop-heartbeat-after", "0.5",
            "--open-after", "1.0", "--json"]
    t0 = time.monotonic()
    worker = threading.Thread(target=vcu_cli.main, args=(argv,), daemon=True)
    worker.start()
    got = []
    while worker.is_alive():
        msg = listener.recv(timeout=0.05)
        if msg is not None:
            got.append((time.monotonic() - t0, msg))
        if time.monotonic() - t0 > 5:
            break
    worker.join(timeout=5)
    listener.shutdown()
    t_first = got[0][0]  # the VCU's own start (after it has loaded the DBC)
    got = [(t - t_first, m) for t, m in got]
    beats = [t for t, m in got if m.arbitration_id == DB.get_message_by_name(
        "VCU_Heartbeat").frame_id]
    requests = [(t, DB.decode_message(m.arbitration_id, bytes(m.data))["StateRequest"])
                for t, m in got if m.arbitration_id == DB.get_message_by_name(
                    "VCU_Request").frame_id]
    for _, m in got:
        assert m.data[0] == frame_crc(m.arbitration_id, m.data)
    assert 4 <= len(beats) <= 7 and max(beats) < 0.65  # every 100 ms until 0.5 s, then none
    assert len(requests) >= 12
    assert all(str(r) == "Close" for t, r in requests if t < 0.9)
    assert all(str(r) == "Open" for t, r in requests if t > 1.1)
    assert '"vcu"' in capsys.readouterr().err  # the summary line
