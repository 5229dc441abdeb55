"""The host link's fast lane for the usual tick against the general path it short-cuts
(hil/client.py ``request_sample`` / ``wait_measurement_into``, hil/link.py ``send_sample`` /
``defer_heartbeat`` / ``try_lane``, csrc/ssb_wire.c ``ssb_wire_encode_sample``).

Two identical in-process boards (``emu://``, same seed) get the same random script of requests:
SAMPLEs waited in order, late, never or twice, SET_OUTPUTS waited before the SAMPLE in front of
them, deferred and immediate HEARTBEATs, polls, flushes, SAMPLEs sent past the client (stale
answers), link faults (dropped, corrupted and
silenced replies), a reboot and a reopen. One client runs as shipped, the other with the fast
lane switched off on the instance (what the code did before it). The bytes each board was
written (write by write), every answer, every error and the counters after every step must
be the same.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from hil.client import BoardClient
from hil.emulator.protocol_emu import emu_url, emulated_board, register
from hil.link import LinkError, MeasurementLane
from hil.protocol import WIRE_ENGINE, Heartbeat, InjectedFault, Measurement, Sample

pytestmark = pytest.mark.skipif(WIRE_ENGINE != "c", reason="the lane needs the C wire codec")

TIMEOUT_S = 0.05


class _VirtualTime:
    """time for hil.client, hil.link and the emu:// port: a clock that only moves when the port
    sleeps out a read that found nothing. A dropped reply then costs no wall time, and a busy
    machine cannot run a deadline out between two reads of frames already there (the general
    path checks its deadline between reads), which would make the two clients differ."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def monotonic(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.now_s += seconds


@pytest.fixture(autouse=True)
def virtual_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import hil.client
    import hil.emulator.protocol_emu
    import hil.link
    clock = _VirtualTime()
    for module in (hil.client, hil.link, hil.emulator.protocol_emu):
        monkeypatch.setattr(module, "time", clock)


def _general(client: BoardClient) -> None:
    """Switch the fast lane off on this client and its link: every request through _request,
    every HEARTBEAT framed when deferred, every wait through _wait."""
    link = client.link
    assert link is not None
    client.request_sample = lambda dt_s: client._request(  # type: ignore[method-assign]
        Sample(int(round(dt_s * 1e6))))
    link.defer_heartbeat = lambda state, ms: link.defer(  # type: ignore[method-assign]
        Heartbeat(state, ms))
    link.try_lane = lambda seq, lane: False  # type: ignore[method-assign]


def _open(fast: bool, seed: int) -> tuple[BoardClient, list[bytes], MeasurementLane]:
    register()
    client = BoardClient(emu_url("ssb-23", 0, seed=seed, scenario="udds"), timeout_s=TIMEOUT_S)
    info = client.open()
    writes: list[bytes] = []
    port = client.link.serial  # type: ignore[union-attr]
    real_write = port.write

    def write(data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(data)

    port.write = write  # type: ignore[method-assign]
    if not fast:
        _general(client)
    lane = MeasurementLane(np.zeros(4 + info.n_cells + info.n_thermistors + info.n_load_cells,
                                    dtype=np.int64))
    return client, writes, lane


def _answer(m: Any, lane: MeasurementLane) -> tuple[Any, ...]:
    if m is lane:
        return ("values", *lane.values.tolist())
    assert isinstance(m, Measurement)
    return ("values", m.timestamp_ms, m.status, m.current_raw, m.bus_voltage_raw, *m.cell_raw,
            *m.thermistor_raw, *m.load_cell_raw)


def _script(fast: bool, seed: int, steps: int) -> tuple[list[Any], list[bytes], int]:
    """Run the seed's script; (what each step gave + the counters after it, the writes, how
    many answers came by the lane)."""
    rng = random.Random(seed)
    client, writes, lane = _open(fast, seed)
    out: list[Any] = []
    samples: list[int] = []
    outputs: list[int] = []
    by_lane = 0
    try:
        for _ in range(steps):
            r = rng.random()
            try:
                if r < 0.30:
                    samples.append(client.request_sample(rng.choice((0.1, 0.1, 0.05, 0.0))))
                    got: Any = samples[-1]
                elif r < 0.58:
                    if not samples:
                        continue
                    # usually the latest; sometimes an older one, or one already waited for
                    k = -1 if rng.random() < 0.8 else rng.randrange(len(samples))
                    seq = samples[k] if rng.random() < 0.9 else samples.pop(k)
                    if k == -1 and samples and samples[-1] == seq:
                        samples.pop()
                    m = client.wait_measurement_into(seq, lane, None, rng.choice((0, 1, None)))
                    by_lane += m is lane
                    got = _answer(m, lane)
                elif r < 0.72:
                    client.heartbeat(rng.choice((0, 1, 2)), rng.randrange(2**32),
                                     defer=rng.random() < 0.85)
                    got = "beat"
                elif r < 0.80:
                    outputs.append(client.request_outputs(rng.choice((0, 3)), rng.randrange(2**23),
                                                          rng.uniform(0, 50), rng.uniform(0, 50)))
                    got = outputs[-1]
                elif r < 0.88:
                    if not outputs:
                        continue
                    client.wait_ack(outputs.pop(rng.randrange(len(outputs))), None, 0)
                    got = "ack"
                elif r < 0.93:
                    client.poll(0.0)
                    got = "poll"
                elif r < 0.95:
                    client.link.flush()  # type: ignore[union-attr]
                    got = "flush"
                elif r < 0.965:
                    # a SAMPLE the client does not know of (its answer is a stale reply), sent
                    # past any HEARTBEAT deferred
                    link = client.link
                    assert link is not None
                    got = ("raw", link.send(Sample(rng.choice((0, 100_000)))))
                elif r < 0.995:
                    fault = rng.choice((InjectedFault.LINK_DROP, InjectedFault.LINK_CORRUPT,
                                        InjectedFault.LINK_SILENCE, InjectedFault.CLEAR_ALL))
                    value = {InjectedFault.LINK_DROP: 0.3, InjectedFault.LINK_CORRUPT: 0.004,
                             InjectedFault.LINK_SILENCE: 0.25}.get(fault, 0.0)
                    clear = fault != InjectedFault.CLEAR_ALL and rng.random() < 0.4
                    client.inject_fault(int(fault), value=value, clear=clear, timeout_s=0.05)
                    got = ("fault", int(fault), clear)
                elif rng.random() < 0.5:
                    client.inject_fault(int(InjectedFault.REBOOT), timeout_s=0.05)
                    got = ("reboot", client.take_reset())
                else:
                    client.close()  # a pending SAMPLE is forgotten with the port
                    client.open()
                    port = client.link.serial  # type: ignore[union-attr]
                    real_write = port.write
                    port.write = (lambda w: lambda d: (writes.append(bytes(d)), w(d))[1])(
                        real_write)  # type: ignore[method-assign]
                    if not fast:
                        _general(client)
                    samples.clear()
                    outputs.clear()
                    got = "reopened"
            except LinkError as exc:
                got = ("error", type(exc).__name__, str(exc))
            out.append((got, client.counters))
        board = emulated_board(client)
        assert board is not None
        out.append(("board", board.counters))
    finally:
        client.close()
    return out, writes, by_lane


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_fast_lane_is_the_general_path(seed: int) -> None:
    fast, fast_writes, fast_lane = _script(True, seed, 700)
    slow, slow_writes, _ = _script(False, seed, 700)
    assert fast_writes == slow_writes
    for i, (a, b) in enumerate(zip(fast, slow, strict=True)):
        assert a == b, f"step {i}"
    # the script reaches the cases it is about
    kinds = {got[0] for got, _ in fast[:-1] if isinstance(got, tuple)}
    assert {"values", "error", "fault", "reboot"} <= kinds, kinds
    assert fast_lane > 50  # answers by the lane
    assert sum(len(w) == 30 for w in fast_writes) > 20  # a HEARTBEAT and a SAMPLE in one write
    last = fast[-2][1]
    assert last["stale_replies"] > 0 and last["retries"] > 0 and last["crc_errors"] + \
        last["cobs_errors"] > 0, last


def test_usual_tick_writes_heartbeat_and_sample_once() -> None:
    """The controller's pipelined tick: the SAMPLE and the HEARTBEAT deferred before it leave
    in one write with consecutive seqs; the answer comes by the lane; nothing stays pending."""
    client, writes, lane = _open(True, 4)
    try:
        seq = client.request_sample(0.1)
        for k in range(20):
            assert client.wait_measurement_into(seq, lane) is lane
            if k % 2:
                client.heartbeat(1, 100 * k, defer=True)
            seq = client.request_sample(0.1)
        assert client._pending == {} and client._sample_seq == seq
        hb_writes = [w for w in writes if len(w) == 30]
        assert len(hb_writes) == 10
        assert client.counters["replies"] == 20 and client.counters["stale_replies"] == 0
        # a general request with the SAMPLE still in flight: it becomes a pending record first
        out_seq = client.request_outputs(0, 0, 1.0, 1.0)
        assert sorted(client._pending) == [seq, out_seq] and client._sample_seq == 0
        client.wait_ack(out_seq)
        assert client.wait_measurement_into(seq, lane) is not None
        assert client._pending == {}
    finally:
        client.close()


def test_try_lane_on_a_closed_emu_port_is_a_lost_board() -> None:
    """The lane's inline read of an emu:// port maps a failed read as read_now does."""
    from boards.config import load_pack
    from hil.link import BoardLostError, SerialLink

    register()
    link = SerialLink(emu_url(load_pack("ssb-23").path, 0, seed=1, scenario="udds"))
    lane = MeasurementLane(np.zeros(4 + 23 + 8 + 4, dtype=np.int64))
    link.serial.close()
    with pytest.raises(BoardLostError, match="read failed: Attempting to use a port that is "
                                             "not open"):
        link.try_lane(1, lane)
