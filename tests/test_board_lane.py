"""The emulated board's fast lane (csrc/ssb_board.c through hil/emulator/board_lane.py) against
its general path: the same host bytes into two boards, one with the lane and one without, give
the same reply bytes after every write, and the same counters, plant state (bit for bit), noise
stream and truth file. The host is a scripted one that goes through every case the lane must
refuse or mirror (dt splits, watchdog trips, link faults, sensor faults, loads, partial and
damaged frames), and a real controller's bytes (bms.controller over emu://, recorded)."""

from __future__ import annotations

import dataclasses
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest

from bms.controller import Controller
from boards.config import load_pack
from hil.emulator import board_lane, protocol_emu
from hil.emulator.board import BoardOptions, EmulatedBoard
from hil.emulator.protocol_emu import emu_url, parse_emu_url, register
from hil.emulator.scenario import load_scenario
from hil.protocol import (
    FaultFlags,
    FaultInject,
    Heartbeat,
    InjectedFault,
    Outputs,
    Sample,
    SetOutputs,
    encode_frame,
)

PACK = load_pack("ssb-23")
UDDS_CSV = Path(__file__).resolve().parents[1] / "hil" / "scenarios" / "udds-current.csv"
CLOSE = int(Outputs.CONTACTOR_POS | Outputs.CONTACTOR_NEG)
PRE = int(Outputs.CONTACTOR_NEG | Outputs.PRECHARGE)

# every load kind (a CC-CV charge that reaches its cutoff, a current with a stop voltage, a
# drive profile past its end) and scheduled faults, so events fall due between ticks
SCENARIO = f"""
schema: ssb-bms/scenario/1
name: lane
initial: {{soc: 0.55, temperature_c: 25.0}}
segments:
  - {{kind: rest, duration_s: 3}}
  - {{kind: cccv, current_a: 20.0, cv_cell_v: 3.9, cutoff_a: 12.0, duration_s: 25}}
  - {{kind: current, current_a: -8.0, duration_s: 8, until_min_cell_v: 3.7}}
  - {{kind: drive, csv: {UDDS_CSV}, scale: 1.0}}
faults:
  - {{at_s: 6, fault: CELL_SOFT_SHORT, target: 4, value: 20.0}}
  - {{at_s: 9, fault: GAS_SWELLING, value: 5.0}}
  - {{at_s: 12, fault: VTAP_OPEN, target: 3}}
  - {{at_s: 15, fault: THERMISTOR_OPEN, target: 1}}
  - {{at_s: 17, fault: CLEAR_ALL}}
  - {{at_s: 19, fault: LOADCELL_STUCK, target: 0}}
  - {{at_s: 21, fault: LOADCELL_STUCK, target: 0, clear: true}}
  - {{at_s: 23, fault: LOAD_CURRENT, value: -3.0}}
  - {{at_s: 26, fault: LOAD_CURRENT, clear: true}}
ambient:
  - {{at_s: 30, temperature_c: 31.0}}
"""


def _pair(tmp_path: Path, opts: BoardOptions) -> tuple[EmulatedBoard, EmulatedBoard]:
    a = EmulatedBoard(dataclasses.replace(opts, truth_path=tmp_path / "lane.csv"))
    b = EmulatedBoard(dataclasses.replace(opts, truth_path=tmp_path / "general.csv",
                                          fast_lane=False))
    assert a._lane is not None and b._lane is None
    return a, b


def _bits(x: object) -> object:
    """A comparable form of a snapshot value: arrays by their bytes, dicts by their items."""
    if isinstance(x, np.ndarray):
        return (x.dtype.str, x.shape, x.tobytes())
    if isinstance(x, dict):
        return {k: _bits(v) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return tuple(_bits(v) for v in x)
    if isinstance(x, float) and x != x:
        return "nan"
    return x


def _state(board: EmulatedBoard) -> object:
    snap = board.plant.snapshot().values
    return _bits((snap[:5], snap[6:], board.counters, board.decoder.counters,
                  board.watchdog_tripped, board.last_heartbeat_s, board.just_booted,
                  board._last_dt_us, board.boot_id, board.plant.outputs,
                  board.plant.load.__dict__))


class _Both:
    """Feeds two boards the same bytes and checks them after every write."""

    def __init__(self, a: EmulatedBoard, b: EmulatedBoard) -> None:
        self.a, self.b = a, b
        self.lane_ticks = 0
        self.last_hit = False

    def feed(self, data: bytes) -> None:
        before = self.a.counters.samples
        lane = self.a._lane
        hit = False
        if lane is not None:
            real = lane.feed

            def counted(d: bytes) -> bool:
                nonlocal hit
                hit = real(d)
                return hit
            lane.feed = counted  # type: ignore[method-assign]
        errors = []
        for board in (self.a, self.b):
            try:
                board.feed(data)
            except ValueError as exc:
                errors.append(str(exc))
        if lane is not None:
            del lane.feed
        assert len(errors) in (0, 2) and (not errors or errors[0] == errors[1]), errors
        assert self.a.outbox == self.b.outbox, data
        assert _state(self.a) == _state(self.b), data
        self.a.outbox.clear()
        self.b.outbox.clear()
        self.last_hit = hit and self.a.counters.samples > before
        self.lane_ticks += self.last_hit


def _host_session(both: _Both, rng: random.Random, ticks: int) -> None:
    """A host that mostly does what the controller does, with every oddity mixed in."""
    seq = 0

    def frame(msg: object) -> bytes:
        nonlocal seq
        seq = (seq + 1) & 0xFFFF
        return encode_frame(msg, seq)  # type: ignore[arg-type]

    hb = Heartbeat(1, 0)
    outputs = 0
    quiet = 0  # ticks without a heartbeat (the watchdog trips after 1 s)
    clear_at: dict[int, list[InjectedFault]] = {}  # faults the host clears a few ticks later
    for i in range(ticks):
        for code in clear_at.pop(i, []):
            both.feed(frame(FaultInject(int(code), 1 if code == InjectedFault.LOADCELL_OPEN
                                        else 0xFF, int(FaultFlags.CLEAR))))
        r = rng.random()
        dt_us = 100_000
        if r < 0.04:
            dt_us = rng.choice([0, 50_000, 250_000, 999_999, 1_000_000, 1_000_001, 1_500_000])
        sample = frame(Sample(dt_us))
        if quiet:
            quiet -= 1
            both.feed(sample)
            continue
        if r < 0.45:
            both.feed(frame(hb) + sample)
        elif r < 0.80:
            both.feed(sample)
        elif r < 0.83:
            both.feed(frame(hb))
        elif r < 0.86:
            both.feed(sample + frame(hb))  # the heartbeat after the step
        elif r < 0.88:
            both.feed(sample + frame(Sample(100_000)))
        elif r < 0.90:  # split across writes: the decoder holds a partial frame
            data = frame(hb) + sample
            k = rng.randrange(1, len(data))
            both.feed(data[:k])
            both.feed(data[k:])
        elif r < 0.91:  # damaged bytes
            data = bytearray(frame(hb) + sample)
            data[rng.randrange(len(data) - 1)] ^= 1 << rng.randrange(8)
            both.feed(bytes(data))
        elif r < 0.95:
            outputs = rng.choice([0, PRE, CLOSE, CLOSE, CLOSE])
            mask = rng.choice([0, 0, 0b1010, 1 << 22])
            limits = rng.choice([(30_000, 40_000), (2_000, 3_000), (0, 0)])
            both.feed(frame(SetOutputs(outputs, mask, *limits)))
        elif r < 0.955:
            quiet = rng.randrange(5, 20)
        else:
            code = rng.choice([InjectedFault.LINK_SILENCE, InjectedFault.LINK_DROP,
                               InjectedFault.LINK_CORRUPT, InjectedFault.PRECHARGE_FAIL,
                               InjectedFault.CURRENT_OFFSET, InjectedFault.COOLANT_LOSS,
                               InjectedFault.AMBIENT_TEMP, InjectedFault.REBOOT,
                               InjectedFault.LOADCELL_OPEN])
            value = {InjectedFault.LINK_SILENCE: 0.3, InjectedFault.LINK_DROP: 0.3,
                     InjectedFault.LINK_CORRUPT: 0.01, InjectedFault.CURRENT_OFFSET: 0.4,
                     InjectedFault.AMBIENT_TEMP: 40.0}.get(code, 0.0)
            target = 1 if code == InjectedFault.LOADCELL_OPEN else 0xFF
            both.feed(frame(FaultInject(int(code), target, 0, value)))
            clear_at.setdefault(i + rng.randrange(3, 30), []).append(code)


def test_scripted_host_same_bytes_and_state(tmp_path: Path) -> None:
    scen_path = tmp_path / "lane.yaml"
    scen_path.write_text(SCENARIO, encoding="utf-8")
    opts = BoardOptions(PACK, seed=3, scenario=load_scenario(scen_path))
    a, b = _pair(tmp_path, opts)
    both = _Both(a, b)
    _host_session(both, random.Random(7), 1500)
    a.close()
    b.close()
    assert (tmp_path / "lane.csv").read_bytes() == (tmp_path / "general.csv").read_bytes()
    # the lane served most ticks, and the run went through what it must refuse
    assert both.lane_ticks > 500, both.lane_ticks
    assert a.counters.watchdog_trips > 0 and a.counters.reboots > 0
    assert a.counters.dropped_replies > 0 and a.counters.nacks > 0
    assert a.plant.load.__class__.__name__ == "CurrentProfile"


def _recorded_writes(pack_name: str, scenario: str, duration_s: float) -> dict[str, list[bytes]]:
    """The bytes a real controller writes to each emu:// board in a short run."""
    register()
    pack = load_pack(pack_name)
    ports = [emu_url(pack.path, k, seed=1 + k, scenario=scenario)
             for k in range(len(pack.stacks))]
    writes: dict[str, list[bytes]] = {}
    orig = protocol_emu.EmuSerial.write

    def write(self: protocol_emu.EmuSerial, data: bytes) -> int:
        writes.setdefault(str(self._port), []).append(bytes(data))
        return orig(self, data)

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(protocol_emu.EmuSerial, "write", write)
        c = Controller(pack, ports, clock="sim", log_dir=Path(tmp))
        c.open()
        c.request_close()
        c.run(duration_s)
        c.close()
    return writes


@pytest.mark.parametrize(("pack", "scenario", "duration_s"), [
    ("ssb-23", "demo", 150.0), ("ssb-23", "faults-tour", 130.0), ("ssb-4x23", "udds", 30.0)])
def test_controller_bytes_same_replies(tmp_path: Path, pack: str, scenario: str,
                                       duration_s: float) -> None:
    """A real controller's bytes replayed: the lane takes nearly every tick, same replies."""
    for k, (url, writes) in enumerate(_recorded_writes(pack, scenario, duration_s).items()):
        folder = tmp_path / str(k)
        folder.mkdir()
        a, b = _pair(folder, parse_emu_url(url))
        both = _Both(a, b)
        for data in writes:
            both.feed(data)
        a.close()
        b.close()
        assert (folder / "lane.csv").read_bytes() == (folder / "general.csv").read_bytes()
        assert both.lane_ticks > 0.85 * a.counters.samples, (both.lane_ticks, a.counters)


def test_lane_refuses_without_changing_anything() -> None:
    """Bytes that are not a tick: the C call returns FALLBACK and the plant is untouched."""
    board = EmulatedBoard(BoardOptions(PACK, seed=1))
    lane = board._lane
    assert isinstance(lane, board_lane.TickLane)
    board.feed(encode_frame(Sample(100_000), 1))  # the thermal matrices for 0.1 s
    board.outbox.clear()
    before = _state(board)
    for data in (b"", b"\x00", encode_frame(Sample(100_000), 2)[:-1],
                 encode_frame(Heartbeat(1, 0), 3),
                 encode_frame(Sample(100_000), 4) + encode_frame(Heartbeat(1, 0), 5),
                 encode_frame(Sample(200_000), 6), encode_frame(Sample(0), 7),
                 encode_frame(SetOutputs(CLOSE, 0, 1000, 1000), 8)):
        assert lane.feed(data) is False, data
        assert _state(board) == before and not board.outbox


def test_cccv_cutoff_reached_in_the_lane(tmp_path: Path) -> None:
    """The CC-CV charger's demand is computed in the C call: its taper to the cutoff ends the
    load there (load.done) exactly as CcCvCharge.demand_a does on the general path."""
    scen_path = tmp_path / "cccv.yaml"
    scen_path.write_text("schema: ssb-bms/scenario/1\nname: cv\ninitial: {soc: 0.55}\n"
                         "segments:\n  - {kind: cccv, current_a: 20.0, cv_cell_v: 3.95, "
                         "cutoff_a: 12.0, duration_s: 600}\n", encoding="utf-8")
    a, b = _pair(tmp_path, BoardOptions(PACK, seed=2, scenario=load_scenario(scen_path)))
    both = _Both(a, b)
    both.feed(encode_frame(SetOutputs(CLOSE, 0, 30_000, 30_000), 1))
    ended_in_lane = False
    for seq in range(2, 3000):
        was_done = a.plant.load.done
        both.feed(encode_frame(Heartbeat(1, 0), seq) + encode_frame(Sample(100_000), seq))
        if a.plant.load.done and not was_done:
            ended_in_lane = both.last_hit
            break
    assert ended_in_lane and a.plant.load.done and b.plant.load.done
    assert both.lane_ticks > 10
