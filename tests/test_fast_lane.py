"""The controller's fast lane for the MEASUREMENT it waits for (csrc/ssb_wire.c
ssb_wire_take_measurement -> FrameDecoder.take_measurement -> SerialLink.recv(seq, lane) ->
BoardClient.wait_measurement_into -> StackValidator.check_wire): the same result as the general
decoder, or no result at all, and the same run log end to end."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
import pytest

from bms.app.emulators import start_emulators
from bms.controller import Controller
from bms.runlog import load_ticks
from boards.config import load_pack
from hil import protocol as proto
from hil.link import MeasurementLane
from hil.protocol import FrameDecoder, Measurement, Sample, encode_frame_reference

pytestmark = pytest.mark.skipif(proto.WIRE_ENGINE != "c", reason="needs the C wire codec")


def _measurement(rng: random.Random, nc: int = 23, nt: int = 4, nl: int = 4) -> Measurement:
    r = rng.randrange
    return Measurement(r(2**32), r(65536), r(2**32) - 2**31, r(2**32) - 2**31,
                       tuple(r(65536) for _ in range(nc)), tuple(r(65536) for _ in range(nt)),
                       tuple(r(2**32) - 2**31 for _ in range(nl)))


def _values(m: Measurement) -> list[int]:
    return [m.timestamp_ms, m.status, m.current_raw, m.bus_voltage_raw, *m.cell_raw,
            *m.thermistor_raw, *m.load_cell_raw]


def _vals_buffer(n: int):
    vals = np.full(n, -7, dtype=np.int64)
    return vals, proto._ffi.from_buffer("int64_t[]", vals)


def test_take_agrees_with_the_general_decoder_or_declines() -> None:
    """Random reads: a lone MEASUREMENT with the awaited seq, or a different seq, other
    channel counts, a second frame, a missing delimiter, a damaged byte, another type, a
    wrong version. Whenever the fast lane takes the bytes, the general decoder reads exactly
    that MEASUREMENT from them; whenever it declines, the buffer is untouched."""
    rng = random.Random(4)
    n_vals = 4 + 23 + 4 + 4
    taken = declined = 0
    for _ in range(3000):
        m = _measurement(rng) if rng.random() < 0.8 else _measurement(rng, 22, 4, 4)
        seq = rng.randrange(65536)
        data = encode_frame_reference(m, seq)
        kind = rng.randrange(8)
        want_seq = seq
        if kind == 1:
            want_seq = (seq + 1) % 65536
        elif kind == 2:
            data += encode_frame_reference(Sample(5), 3)
        elif kind == 3:
            data = data[:-1]
        elif kind == 4:
            i = rng.randrange(len(data) - 1)
            data = data[:i] + bytes([data[i] ^ (1 << rng.randrange(8)) or 1]) + data[i + 1:]
        elif kind == 5:
            data = encode_frame_reference(Sample(9), seq)
        elif kind == 6:
            data = encode_frame_reference(m, seq, version=2)
        vals, ptr = _vals_buffer(n_vals)
        dec, ref = FrameDecoder("c"), FrameDecoder("reference")
        frames = ref.feed(data)
        if dec.take_measurement(data, want_seq, ptr, n_vals):
            taken += 1
            assert len(frames) == 1 and frames[0].error is None and frames[0].seq == want_seq
            assert isinstance(frames[0].msg, Measurement)
            assert vals.tolist() == _values(frames[0].msg)
            assert dec.counters == ref.counters  # counted as feed() would
            assert dec.pending == 0
        else:
            declined += 1
            assert (vals == -7).all()
            assert dec.counters == proto.LinkCounters()
            # the general path on the same bytes still gives what the reference gives
            got = dec.feed(data)
            assert [(f.seq, f.msg, f.error) for f in got] == \
                [(f.seq, f.msg, f.error) for f in frames]
    assert taken > 400 and declined > 1500


def test_take_declines_while_a_frame_is_partial_or_dropped() -> None:
    rng = random.Random(5)
    m = _measurement(rng)
    frame = encode_frame_reference(m, 77)
    vals, ptr = _vals_buffer(35)
    dec = FrameDecoder("c")
    dec.feed(frame[:10])  # half a frame buffered
    assert not dec.take_measurement(frame, 77, ptr, 35)
    dec = FrameDecoder("c")
    dec.feed(b"\x01" * 300)  # an oversize run: dropping until the next delimiter
    assert not dec.take_measurement(frame, 77, ptr, 35)
    assert (vals == -7).all()
    assert not FrameDecoder("reference").take_measurement(frame, 77, ptr, 35)  # the reference
    assert FrameDecoder("c").take_measurement(frame, 77, ptr, 35)


def _run(fast: bool, seconds: float) -> tuple[dict[str, np.ndarray], list[dict]]:
    pack = load_pack("ssb-23")
    emus = start_emulators(pack, clock="sim", seed=3, scenario="udds")
    log = Path(tempfile.mkdtemp())
    try:
        c = Controller(pack, [e.path for e in emus], clock="sim", log_dir=log)
        taken = [0]
        if fast:  # count the answers the fast lane brought (then the stack chain's one C call)
            real = c._receive

            def counted(s, m, t, dt_s, _real=real):
                taken[0] += isinstance(m, MeasurementLane) and s.chain is not None
                return _real(s, m, t, dt_s)

            c._receive = counted  # type: ignore[method-assign]
        else:
            for s in c.stacks:
                s.io.lane = None  # no fast lane: every answer as a Measurement
        c.open()
        c.request_close()
        c.run(seconds)
        summary = c.close()
    finally:
        for e in emus:
            e.stop()
    if fast:
        assert taken[0] > 1100, taken  # nearly every answer came by the lane and the chain
    return load_ticks(log), summary["boards"]


def test_controller_logs_the_same_run_with_and_without_the_fast_lane() -> None:
    """Same seed, same scenario: the ticks.csv of a run on the fast lane equals, value for
    value, that of a run where every MEASUREMENT takes the general path (bar the wall-clock
    column), and both links count the same frames."""
    fast, fast_boards = _run(True, 120.0)
    slow, slow_boards = _run(False, 120.0)
    assert len(fast["time_s"]) == len(slow["time_s"]) == 1200
    for col in fast:
        if col != "tick_duration_s":
            np.testing.assert_array_equal(fast[col], slow[col], err_msg=col)
    for a, b in zip(fast_boards, slow_boards, strict=True):
        assert a["link"]["frames_ok"] == b["link"]["frames_ok"]
        assert a["link"]["replies"] == b["link"]["replies"]
        assert a["measurements"] == b["measurements"] == 1200
