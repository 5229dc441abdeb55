"""The C wire codec (csrc/ssb_wire.c over boards/firmware/src/proto.c, in bms._core) against the
Python reference (hil/cobs.py, _decode_segment, encode_frame_reference): identical frames, counters,
partial-frame buffering and errors, on the test vectors, every message type with random fields
and random streams with every kind of damage, split at random points across feed() calls."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil import protocol as proto
from hil.protocol import (
    Ack,
    FaultInject,
    FrameDecoder,
    Heartbeat,
    Hello,
    Info,
    LinkCounters,
    Measurement,
    Nack,
    Sample,
    SetOutputs,
    encode_frame,
    encode_frame_reference,
    encode_raw_frame,
)

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "hil" / "testvectors" / "protocol_v1.json").read_text())
ERROR_COUNTERS = [k for k in LinkCounters().as_dict() if k not in ("frames_ok", "bytes_in")]


def test_c_engine_is_built_and_default() -> None:
    """Not a skip: a missing or stale bms._core must fail here, not silently fall back."""
    assert proto._wire_scan is not None, "bms._core lacks ssb_wire: pip install -e ."
    assert proto.WIRE_ENGINE == "c"
    assert FrameDecoder().engine == "c"
    assert encode_frame is proto._encode_frame_c


def _key(frames: list) -> list[str]:
    # repr: NaN-safe (FaultInject.value), and tells tuples from lists, ints from bools
    return [repr(f) for f in frames]


class Pair:
    """A C and a Python decoder fed the same bytes; every feed's results must match."""

    def __init__(self) -> None:
        self.c = FrameDecoder(engine="c")
        self.py = FrameDecoder(engine="reference")
        self.frames: list = []

    def feed(self, data: bytes | bytearray | memoryview) -> list:
        fc = self.c.feed(data)
        fp = self.py.feed(data)
        assert _key(fc) == _key(fp)
        assert self.c.counters == self.py.counters
        assert self.c.pending == self.py.pending
        self.frames += fc
        return fc


# --------------------------------------------------------------------------- test vectors


@pytest.mark.parametrize("v", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vectors(v: dict) -> None:
    wire = bytes.fromhex(v["hex"])
    pair = Pair()
    (f,) = pair.feed(wire)
    assert f.error is None and f.seq == v["seq"] and f.msg_type == v["type_code"]
    assert encode_frame(f.msg, f.seq) == wire == encode_frame_reference(f.msg, f.seq)
    byte_pair = Pair()
    for i in range(len(wire)):
        byte_pair.feed(wire[i:i + 1])
    assert _key(byte_pair.frames) == _key([f])


@pytest.mark.parametrize("v", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vectors(v: dict) -> None:
    pair = Pair()
    frames = pair.feed(bytes.fromhex(v["hex"]))
    c = pair.c.counters.as_dict()
    assert [k for k in ERROR_COUNTERS if c[k]] == [v["counter"]]
    assert c[v["counter"]] == 1
    if "nack" in v:  # rules 5..7: the frame comes back with its header for the board's NACK
        (f,) = frames
        assert f.seq == v["seq"] and f.msg_type == v["type_code"]
        nack = f.nack()
        assert (nack.rejected_type, nack.error, nack.detail) == (
            v["nack"]["rejected_type"], v["nack"]["error"], v["nack"]["detail"])


@pytest.mark.parametrize("v", VECTORS["streams"], ids=lambda v: v["name"])
def test_stream_vectors(v: dict) -> None:
    data = bytes.fromhex(v["hex"])
    for chunk in (len(data) or 1, 1, 7):
        pair = Pair()
        for i in range(0, len(data), chunk):
            pair.feed(data[i:i + chunk])
        got = [[f.seq, proto.MsgType(f.msg_type).name] for f in pair.frames if f.error is None]
        assert got == v["frames"]
        assert {k: pair.c.counters.as_dict()[k] for k in v["counters"]} == v["counters"]


# --------------------------------------------------------------------------- every message type

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
i32 = st.integers(-(2**31), 2**31 - 1)
messages = st.one_of(
    st.builds(Hello, u8, u8),
    st.builds(Info, u8, u8, st.tuples(u8, u8, u8), u8, u8, u8, u16, u16, u16,
              st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=14)),
    st.builds(Sample, u32),
    st.builds(Measurement, u32, u16, i32, i32,
              st.lists(u16, max_size=32).map(tuple), st.lists(u16, max_size=16).map(tuple),
              st.lists(i32, max_size=16).map(tuple)),
    st.builds(SetOutputs, u8, u32, i32, i32),
    st.builds(Heartbeat, u8, u32),
    st.builds(Ack, u8),
    st.builds(Nack, u8, u8, u16),
    st.builds(FaultInject, u8, u8, u8, st.floats(width=32)),  # NaN and Inf included
)


@given(messages, u16, st.integers(0, 255))
@settings(max_examples=400)
def test_every_message_type_random_fields(msg: object, seq: int, version: int) -> None:
    wire = encode_frame(msg, seq, version)  # type: ignore[arg-type]
    assert wire == encode_frame_reference(msg, seq, version)  # type: ignore[arg-type]
    pair = Pair()
    (f,) = pair.feed(wire)
    if version == proto.PROTOCOL_VERSION:
        assert f.error is None and repr(f.msg) == repr(msg)
        if isinstance(msg, Measurement):  # the public type: tuples of plain ints
            for name in ("cell_raw", "thermistor_raw", "load_cell_raw"):
                t = getattr(f.msg, name)
                assert type(t) is tuple and all(type(x) is int for x in t)
            assert f.msg == msg and hash(f.msg) == hash(msg)
    else:
        assert f.error is proto.FrameErrorKind.VERSION and f.version == version


@pytest.mark.parametrize(("msg", "seq", "version"), [
    (Sample(-1), 1, 1),                       # field out of range -> ValueError
    (Sample(2**32), 1, 1),
    (Hello(1, 1), -1, 1),                     # seq not a u16 -> ValueError
    (Hello(1, 1), 0x10000, 1),
    (Hello(1, 1), 1.5, 1),                    # seq not an int -> struct.error, as before
    (Hello(1, 1), 1, 256),                    # version not a u8 -> struct.error
    (Hello(1, 1), 1, -1),
    (Measurement(0, 0, 0, 0, (1,) * 120, (), ()), 1, 1),  # payload 260 B > 240 B
    (Info(1, 1, (0, 0, 0), 1, 1, 1, 1, 1, 1, "x" * 15), 1, 1),  # board_id too long
])
def test_encode_errors_are_the_reference_errors(msg: object, seq: object, version: int) -> None:
    errors = []
    for enc in (encode_frame, encode_frame_reference):
        try:
            enc(msg, seq, version)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 (comparing whatever is raised)
            errors.append((type(exc), str(exc)))
    assert len(errors) == 2 and errors[0] == errors[1]


def test_encode_from_threads() -> None:
    """cffi releases the GIL in the C call: each call needs its own output buffer."""
    msgs = [Measurement(i, i & 0xFF, -i, i, tuple(range(i % 30)), (i & 0xFFFF,) * 3, (-i,) * 2)
            for i in range(400)]
    want = [encode_frame_reference(m, i) for i, m in enumerate(msgs)]
    bad: list[int] = []

    def work() -> None:
        for _ in range(20):
            for i, m in enumerate(msgs):
                if encode_frame(m, i) != want[i]:
                    bad.append(i)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


# --------------------------------------------------------------------------- damaged streams


def _random_msg(rng: random.Random) -> object:
    r = rng.randrange
    kind = r(9)
    if kind == 0:
        return Hello(r(256), r(256))
    if kind == 1:
        return Info(r(256), r(256), (r(256), r(256), r(256)), r(256), r(256), r(256), r(65536),
                    r(65536), r(65536), f"emu-{r(1000)}")
    if kind == 2:
        return Sample(r(2**32))
    if kind == 3:
        return Measurement(r(2**32), r(65536), r(2**32) - 2**31, r(2**32) - 2**31,
                           tuple(r(65536) for _ in range(r(33))),
                           tuple(r(65536) for _ in range(r(17))),
                           tuple(r(2**32) - 2**31 for _ in range(r(17))))
    if kind == 4:
        return SetOutputs(r(256), r(2**32), r(2**32) - 2**31, r(2**32) - 2**31)
    if kind == 5:
        return Heartbeat(r(256), r(2**32))
    if kind == 6:
        return Ack(r(256))
    if kind == 7:
        return Nack(r(256), r(256), r(65536))
    return FaultInject(r(256), r(256), r(256), struct.unpack("<f", struct.pack("<I", r(2**32)))[0])


KNOWN_TYPES = {int(t) for t in proto.MsgType}


def _piece(rng: random.Random) -> bytes:
    """One piece of a stream: a good frame or one of the ways a frame goes wrong."""
    kind = rng.randrange(14)
    msg = _random_msg(rng)
    seq = rng.randrange(65536)
    good = encode_frame_reference(msg, seq)  # type: ignore[arg-type]
    payload = msg.pack()  # type: ignore[attr-defined]
    t = msg.TYPE  # type: ignore[attr-defined]
    if kind <= 3:
        return good
    if kind == 4:  # garbage, zeros included
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))
    if kind == 5:  # truncated: the rest is lost, the next delimiter ends it
        return good[:rng.randrange(1, len(good) - 1)] + b"\x00"
    if kind == 6:  # bad CRC
        return encode_raw_frame(1, t, seq, payload, crc=(proto.crc16(bytes(6) + payload) ^ 0x5A5A))
    if kind == 7:  # wrong version
        return encode_raw_frame(rng.choice([0, 2, 3, 255]), t, seq, payload)
    if kind == 8:  # unknown type
        return encode_raw_frame(1, rng.choice(sorted(set(range(256)) - KNOWN_TYPES)), seq,
                                payload)
    if kind == 9:  # wrong payload length for the type (length field consistent)
        cut = payload[:-1] if payload and rng.random() < 0.5 else payload + b"\x01"
        return encode_raw_frame(1, t, seq, cut[:240])
    if kind == 10:  # length field lies (CRC over the lie is right)
        return encode_raw_frame(1, t, seq, payload, length=(len(payload) + rng.choice([1, -1,
                                                                                      300]))
                                & 0xFFFF)
    if kind == 11:  # oversize run without a delimiter, any length past 250
        return bytes(rng.randrange(1, 256) for _ in range(rng.randrange(240, 700))) + b"\x00"
    if kind == 12:  # COBS error: a code byte past the end; or a short frame
        if rng.random() < 0.5:
            return bytes([rng.randrange(10, 200), 1, 2, 3]) + b"\x00"
        return bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 7))) + b"\x00"
    return b"\x00" * rng.randrange(1, 4)  # idle line: empty segments are not errors


def _stream(rng: random.Random, n_pieces: int) -> bytes:
    return b"".join(_piece(rng) for _ in range(n_pieces))


@pytest.mark.parametrize("seed", range(60))
def test_random_damaged_streams_split_at_random_points(seed: int) -> None:
    rng = random.Random(seed)
    data = _stream(rng, 120)
    pair = Pair()
    i = 0
    while i < len(data):  # chunks from 1 byte to well past a frame, bytes or not
        n = rng.choice([1, 2, 3, rng.randrange(1, 40), rng.randrange(1, 400), 2000])
        chunk = data[i:i + n]
        pair.feed(rng.choice([bytes, bytearray, memoryview])(chunk))
        i += n
    whole = Pair()
    whole.feed(data)
    assert _key(whole.frames) == _key(pair.frames)
    assert whole.c.counters == pair.c.counters
    assert pair.c.counters.bytes_in == len(data)


def test_damaged_streams_raise_every_counter() -> None:
    """The fuzz above reaches every rule (so a broken rule has somewhere to show)."""
    pair = Pair()
    rng = random.Random(1234)
    pair.feed(_stream(rng, 2000))
    c = pair.c.counters.as_dict()
    assert all(c[k] > 0 for k in ERROR_COUNTERS), c
    assert c["frames_ok"] > 0
    assert {f.error for f in pair.frames} == {None, *proto._KIND_FOR_CODE.values()}


@given(st.binary(max_size=3000), st.lists(st.integers(1, 300), max_size=40))
@settings(max_examples=300)
def test_arbitrary_bytes_same_as_reference(data: bytes, cuts: list[int]) -> None:
    pair = Pair()
    i = 0
    for n in cuts:
        pair.feed(data[i:i + n])
        i += n
    pair.feed(data[i:])


def test_one_feed_larger_than_the_record_buffer() -> None:
    """10,000 frames with errors between them in one feed: several C calls, same result."""
    rng = random.Random(7)
    m = Measurement(1, 2, 3, 4, tuple(range(23)), (5,) * 6, (6,) * 4)
    parts = []
    for i in range(10_000):
        parts.append(encode_frame_reference(m, i % 65536))
        if i % 97 == 0:
            parts.append(_piece(rng))
    data = b"".join(parts)
    assert len(data) > 20 * proto._REC_CAP
    pair = Pair()
    pair.feed(data)
    assert pair.c.counters.frames_ok >= 10_000


def test_reset_while_dropping_an_oversize_run() -> None:
    pair = Pair()
    pair.feed(b"\x01" * 300)  # oversize: now dropping up to the next delimiter
    assert pair.c.counters.oversize == 1
    pair.c.reset()
    pair.py.reset()
    frames = pair.feed(encode_frame(Sample(5), 9) + b"\x01" * 251 + b"\x00" + b"\x01" * 10)
    assert [f.msg for f in frames] == [Sample(5)]
    assert pair.c.counters.oversize == 2 and pair.c.pending == 10


def test_reference_engine_selected_by_environment() -> None:
    code = ("import hil.protocol as p; d = p.FrameDecoder(); "
            "print(p.WIRE_ENGINE, d.engine, p.encode_frame is p.encode_frame_reference)")
    env = dict(os.environ, SSB_WIRE_ENGINE="reference")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.split() == ["reference", "reference", "True"]
    with pytest.raises(ValueError, match="engine"):
        FrameDecoder(engine="rust")


# --------------------------------------------------------------------------- the C API itself


def test_scan_refuses_bad_arguments() -> None:
    ffi, lib = proto._ffi, proto._lib
    s = ffi.new("ssb_wire_scan_t *")
    out = ffi.new("char[]", lib.SSB_WIRE_REC_ROOM)
    assert lib.ssb_wire_scan(b"\x00", 1, 0, s, out, lib.SSB_WIRE_REC_ROOM - 1) == \
        lib.SSB_WIRE_ERR_SIZE
    assert lib.ssb_wire_scan(b"\x00", 1, 2, s, out, lib.SSB_WIRE_REC_ROOM) == \
        lib.SSB_WIRE_ERR_SIZE
    assert lib.ssb_wire_scan(ffi.NULL, 1, 0, s, out, lib.SSB_WIRE_REC_ROOM) == \
        lib.SSB_WIRE_ERR_NULL
    # the smallest buffer still makes progress, one record per call
    data = encode_frame(Sample(1), 1) + encode_frame(Sample(2), 2)
    assert lib.ssb_wire_scan(data, len(data), 0, s, out, lib.SSB_WIRE_REC_ROOM) == 1
    assert s.more == 1 and s.pos == len(data) // 2
    assert lib.ssb_wire_scan(data, len(data), s.pos, s, out, lib.SSB_WIRE_REC_ROOM) == 1
    assert s.more == 0 and s.pos == len(data)
    buf = ffi.new("char[]", 250)
    assert lib.ssb_wire_encode(1, 0x10, 1, b"\x00" * 241, 241, buf, 250) == lib.SSB_WIRE_ERR_SIZE
    assert lib.ssb_wire_encode(1, 0x10, 1, b"\x00" * 4, 4, buf, 13) == lib.SSB_WIRE_ERR_SIZE
    assert lib.ssb_wire_encode(1, 0x10, 1, b"\x00" * 4, 4, buf, 14) == 14
    assert ffi.buffer(buf, 14)[:] == encode_frame_reference(Sample(0), 1)


@pytest.mark.parametrize("seed", range(5))
def test_unpack_measurement_matches_the_parser(seed: int) -> None:
    ffi, lib = proto._ffi, proto._lib
    rng = random.Random(seed)
    vals = ffi.new("int64_t[]", lib.SSB_WIRE_MEAS_MAX_VALUES)
    counts = ffi.new("uint8_t[3]")
    for _ in range(200):
        m = _random_msg(rng)
        if not isinstance(m, Measurement):
            continue
        payload = m.pack()
        k = lib.ssb_wire_unpack_measurement(payload, len(payload), vals, len(vals), counts)
        got = list(vals[0:k])
        assert got == [m.timestamp_ms, m.status, m.current_raw, m.bus_voltage_raw,
                       *m.cell_raw, *m.thermistor_raw, *m.load_cell_raw]
        assert list(counts) == [len(m.cell_raw), len(m.thermistor_raw), len(m.load_cell_raw)]
        assert lib.ssb_wire_unpack_measurement(payload, len(payload) + 1, vals, len(vals),
                                               counts) == lib.SSB_WIRE_ERR_SIZE
        assert lib.ssb_wire_unpack_measurement(payload, len(payload), vals, k - 1,
                                               counts) == lib.SSB_WIRE_ERR_SIZE


def test_sample_encoder_is_the_two_frames_of_the_reference() -> None:
    """SampleEncoder (the host's tick request: ssb_wire_encode_sample in one call) gives the
    bytes of encode_frame_reference(Heartbeat) + encode_frame_reference(Sample), on both
    engines, for random and extreme fields (seqs with zero bytes: COBS groups move)."""
    rng = random.Random(11)
    c, ref = proto.SampleEncoder("c"), proto.SampleEncoder("reference")
    edges = (0, 1, 0xFF, 0x100, 0xFFFF)
    for i in range(3000):
        seq = rng.choice(edges) if i % 5 == 0 else rng.randrange(65536)
        dt_us = rng.choice((0, 100_000, 0xFFFFFFFF, rng.randrange(2**32)))
        hb = None if i % 3 == 0 else (rng.randrange(65536), rng.choice((0, 1, 255)),
                                      rng.choice((0, 2**32 - 1, rng.randrange(2**32))))
        want = encode_frame_reference(Sample(dt_us), seq)
        if hb is not None:
            want = encode_frame_reference(Heartbeat(hb[1], hb[2]), hb[0]) + want
        assert c.encode(seq, dt_us, hb) == ref.encode(seq, dt_us, hb) == want
    with pytest.raises(ValueError, match="engine"):
        proto.SampleEncoder("fast")
