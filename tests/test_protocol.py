"""Protocol v1 codec: COBS, frames, stream decoder, committed test vectors, scaling."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boards.config import load_board
from hil import cobs
from hil.protocol import (
    INVALID_I32,
    INVALID_U16,
    MAX_PAYLOAD,
    MESSAGE_CLASSES,
    PROTOCOL_VERSION,
    Ack,
    FaultInject,
    FrameDecoder,
    FrameError,
    FrameErrorKind,
    Heartbeat,
    Hello,
    Info,
    LinkCounters,
    Measurement,
    MsgType,
    Nack,
    NackError,
    Sample,
    SetOutputs,
    crc16,
    decode_frame,
    encode_frame,
    encode_raw_frame,
    message_fields,
    next_seq,
)
from hil.scaling import HX711_MAX, HX711_MIN, Readings, Scaler, to_measurement, to_readings

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "hil" / "testvectors" / "protocol_v1.json"
ERROR_COUNTERS = [k for k in LinkCounters().as_dict() if k not in ("frames_ok", "bytes_in")]


# --------------------------------------------------------------------------- CRC and COBS


def test_crc_check_value() -> None:
    # CRC-16/CCITT-FALSE catalogue check value (Greg Cook's CRC catalogue).
    assert crc16(b"123456789") == 0x29B1


# Examples from the COBS article on Wikipedia (which follow Cheshire and Baker).
COBS_EXAMPLES = [
    ("00", "0101"),
    ("0000", "010101"),
    ("001100", "01021101"),
    ("11220033", "0311220233"),
    ("11223344", "0511223344"),
    ("11000000", "0211010101"),
    (bytes(range(1, 255)).hex(), "ff" + bytes(range(1, 255)).hex()),
    (bytes(range(0, 255)).hex(), "01ff" + bytes(range(1, 255)).hex()),
    (bytes(range(1, 256)).hex(), "ff" + bytes(range(1, 255)).hex() + "02ff"),
    (bytes(range(2, 256)).hex() + "00", "ff" + bytes(range(2, 256)).hex() + "0101"),
    (bytes(range(3, 256)).hex() + "0001", "fe" + bytes(range(3, 256)).hex() + "0201"),
]


@pytest.mark.parametrize(("raw", "encoded"), COBS_EXAMPLES)
def test_cobs_reference_examples(raw: str, encoded: str) -> None:
    assert cobs.encode(bytes.fromhex(raw)).hex() == encoded
    assert cobs.decode(bytes.fromhex(encoded)) == bytes.fromhex(raw)


@given(st.binary(max_size=1200))
def test_cobs_round_trip(data: bytes) -> None:
    enc = cobs.encode(data)
    assert b"\x00" not in enc
    assert len(enc) <= cobs.max_encoded_len(len(data))
    assert cobs.decode(enc) == data


def test_cobs_decode_errors() -> None:
    with pytest.raises(cobs.CobsError):
        cobs.decode(b"\x05\x01\x02")
    with pytest.raises(cobs.CobsError):
        cobs.decode(b"\x02\x00\x01")
    # A non-canonical trailing 0x01 after a full block is accepted.
    assert cobs.decode(b"\xff" + bytes(range(1, 255)) + b"\x01") == bytes(range(1, 255))


# --------------------------------------------------------------------------- frames


def test_hello_frame_by_hand() -> None:
    """HELLO seq 1 built from the spec's tables, not from the codec."""
    body = bytes([1, 0x01, 1, 0, 2, 0, 1, 1])
    crc = crc16(body)
    lo, hi = crc & 0xFF, crc >> 8
    assert lo and hi  # the hand-made COBS below assumes no zero in the CRC
    expected = bytes([4, 1, 1, 1, 2, 2, 5, 1, 1, lo, hi, 0])
    assert encode_frame(Hello(), 1) == expected
    assert decode_frame(expected[:-1]) == (1, Hello(1, 1))


def test_measurement_layout_by_hand() -> None:
    m = Measurement(0x01020304, 0x0081, -2, 0x7FFFFFFF, (0x1234, INVALID_U16), (0x0AB0,),
                    (-(2**23),))
    frame = cobs.decode(encode_frame(m, 0x0102)[:-1])
    version, mtype, seq, length = struct.unpack_from("<BBHH", frame)
    assert (version, mtype, seq) == (1, 0x11, 0x0102)
    assert length == 20 + 2 * 2 + 2 * 1 + 4 * 1 == len(frame) - 8
    payload = frame[6:-2]
    assert payload[:4] == bytes([4, 3, 2, 1])
    assert payload[4:6] == bytes([0x81, 0])
    assert payload[6:10] == bytes([2, 1, 1, 0])
    assert payload[10:14] == bytes([0xFE, 0xFF, 0xFF, 0xFF])
    assert payload[14:18] == bytes([0xFF, 0xFF, 0xFF, 0x7F])
    assert payload[18:20] == b"\x00\x00"
    assert payload[20:] == bytes([0x34, 0x12, 0xFF, 0xFF, 0xB0, 0x0A, 0, 0, 0x80, 0xFF])
    assert frame[-2:] == crc16(frame[:-2]).to_bytes(2, "little")


u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
i32 = st.integers(-(2**31), 2**31 - 1)
board_ids = st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=14)

messages = st.one_of(
    st.builds(Hello, u8, u8),
    st.builds(Info, u8, u8, st.tuples(u8, u8, u8), u8, u8, u8, u16, u16, u16, board_ids),
    st.builds(Sample, u32),
    st.builds(Measurement, u32, u16, i32, i32,
              st.lists(u16, max_size=32).map(tuple), st.lists(u16, max_size=16).map(tuple),
              st.lists(i32, max_size=16).map(tuple)),
    st.builds(SetOutputs, u8, u32, i32, i32),
    st.builds(Heartbeat, u8, u32),
    st.builds(Ack, u8),
    st.builds(Nack, u8, u8, u16),
    st.builds(FaultInject, u8, u8, u8, st.floats(width=32, allow_nan=False)),
)


@given(messages, u16)
def test_round_trip_random_messages(msg: object, seq: int) -> None:
    wire = encode_frame(msg, seq)  # type: ignore[arg-type]
    assert wire.endswith(b"\x00") and wire.count(b"\x00") == 1
    assert len(wire) <= 250
    assert decode_frame(wire[:-1]) == (seq, msg)


@given(st.lists(st.tuples(messages, u16, st.binary(max_size=40)), max_size=12),
       st.integers(1, 64))
@settings(max_examples=150)
def test_garbage_between_frames_is_survived(items: list, chunk: int) -> None:
    """Every frame after a delimiter decodes, whatever garbage sits between frames."""
    stream = bytearray()
    for msg, seq, garbage in items:
        stream += garbage + b"\x00" + encode_frame(msg, seq)
    d = FrameDecoder()
    got = []
    for i in range(0, len(stream), chunk):
        got.extend(d.feed(bytes(stream[i:i + chunk])))
    assert [(f.seq, f.msg) for f in got if f.error is None] == [(s, m) for m, s, _ in items]
    assert d.counters.frames_ok == len(items)
    assert d.counters.bytes_in == len(stream)


def _expected_segments(data: bytes) -> int:
    """Non-empty segments the spec counts: each complete one once, an overlong tail once."""
    parts = data.split(b"\x00")
    complete = sum(1 for p in parts[:-1] if p)
    return complete + (1 if len(parts[-1]) > 250 else 0)


@given(st.binary(max_size=3000), st.integers(1, 300))
@settings(max_examples=300)
def test_arbitrary_bytes_never_raise_and_counters_add_up(data: bytes, chunk: int) -> None:
    whole = FrameDecoder()
    frames_whole = whole.feed(data)
    pieces = FrameDecoder()
    frames_pieces = []
    for i in range(0, len(data), chunk):
        frames_pieces.extend(pieces.feed(data[i:i + chunk]))
    c = whole.counters
    assert c.frames_ok + c.errors == _expected_segments(data)
    assert c.bytes_in == len(data)
    assert pieces.counters == c
    assert frames_pieces == frames_whole
    assert pieces.pending <= 250


@given(st.lists(st.sampled_from([b"\x00", b"\x01", b"\xff", b"\x02\x11"]), max_size=600))
def test_decoder_sparse_alphabet_never_raises(parts: list[bytes]) -> None:
    data = b"".join(parts)
    d = FrameDecoder()
    d.feed(data)
    assert d.counters.frames_ok + d.counters.errors == _expected_segments(data)


def test_decode_frame_errors_carry_header() -> None:
    with pytest.raises(FrameError) as e:
        decode_frame(encode_frame(Sample(1), 77, version=2)[:-1])
    assert (e.value.kind, e.value.seq, e.value.msg_type, e.value.version) == (
        FrameErrorKind.VERSION, 77, MsgType.SAMPLE, 2)
    with pytest.raises(FrameError) as e:
        decode_frame(b"\x01" * 300)
    assert e.value.kind is FrameErrorKind.OVERSIZE
    with pytest.raises(FrameError) as e:
        decode_frame(encode_raw_frame(1, 0x10, 5, b"\x00" * 4, crc=0)[:-1])
    assert e.value.kind is FrameErrorKind.CRC and e.value.seq is None


def test_rejected_frames_answer_with_the_right_nack() -> None:
    d = FrameDecoder()
    frames = d.feed(encode_frame(Hello(1, 1), 9, version=3)
                    + encode_raw_frame(1, 0x55, 10, b"")
                    + encode_raw_frame(1, MsgType.SET_OUTPUTS, 11, b"\x01")
                    + encode_frame(Ack(0x20), 12))
    assert [f.nack() for f in frames] == [
        Nack(MsgType.HELLO, NackError.BAD_VERSION, PROTOCOL_VERSION),
        Nack(0x55, NackError.UNKNOWN_TYPE, 0),
        Nack(MsgType.SET_OUTPUTS, NackError.BAD_LENGTH, 0),
        None,
    ]
    assert [f.seq for f in frames] == [9, 10, 11, 12]
    assert (d.counters.version_errors, d.counters.unknown_type, d.counters.payload_errors,
            d.counters.frames_ok) == (1, 1, 1, 1)


def test_encode_rejects_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="Sample"):
        encode_frame(Sample(-1), 1)
    with pytest.raises(ValueError, match="board_id"):
        encode_frame(Info(1, 1, (0, 0, 0), 1, 0, 0, 0, 0, 0, "x" * 15), 1)
    with pytest.raises(ValueError, match="payload"):
        encode_frame(Measurement(0, 0, 0, 0, (0,) * 111, (), ()), 1)  # 242 bytes
    with pytest.raises(ValueError, match="seq"):
        encode_frame(Ack(1), 65536)
    # The largest MEASUREMENT that fits is exactly MAX_PAYLOAD.
    wire = encode_frame(Measurement(0, 0, 0, 0, (1,) * 110, (), ()), 1)
    assert decode_frame(wire[:-1])[1].cell_raw == (1,) * 110  # type: ignore[union-attr]
    assert 20 + 2 * 110 == MAX_PAYLOAD


def test_next_seq_wraps_and_skips_zero() -> None:
    assert next_seq(0) == 1
    assert next_seq(1) == 2
    assert next_seq(65534) == 65535
    assert next_seq(65535) == 1


def test_message_classes_cover_every_type() -> None:
    assert sorted(MESSAGE_CLASSES) == sorted(int(t) for t in MsgType)


# --------------------------------------------------------------------------- test vectors

VEC = json.loads(VECTORS.read_text(encoding="utf-8"))


def _from_fields(type_name: str, fields: dict) -> object:
    cls = MESSAGE_CLASSES[MsgType[type_name]]
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return cls(**kw)


@pytest.mark.parametrize("vec", VEC["valid"], ids=[v["name"] for v in VEC["valid"]])
def test_valid_vector_decodes_and_encodes(vec: dict) -> None:
    wire = bytes.fromhex(vec["hex"])
    seq, msg = decode_frame(wire[:-1])
    assert seq == vec["seq"]
    assert MsgType(msg.TYPE).name == vec["type"] and msg.TYPE == vec["type_code"]
    as_json = json.loads(json.dumps({k: v for k, v in message_fields(msg).items()}))
    assert as_json == vec["fields"]
    # The other direction: fields -> bytes.
    assert encode_frame(_from_fields(vec["type"], vec["fields"]), vec["seq"]) == wire
    assert cobs.decode(wire[:-1]).hex() == vec["decoded_hex"]
    d = FrameDecoder()
    (frame,) = d.feed(wire)
    assert frame.msg == msg and d.counters.frames_ok == 1 and d.counters.errors == 0


def test_vectors_cover_what_the_spec_asks() -> None:
    names = {v["type"] for v in VEC["valid"]}
    assert names == {t.name for t in MsgType}
    fields = [v["fields"] for v in VEC["valid"] if v["type"] == "MEASUREMENT"]
    assert any(len(f["cell_raw"]) == 23 for f in fields)
    assert any(f["cell_raw"] == [] and f["load_cell_raw"] == [] for f in fields)
    assert any(INVALID_U16 in f["cell_raw"] and INVALID_I32 in f["load_cell_raw"]
               and f["current_raw"] == INVALID_I32 for f in fields)
    assert any(f["current_raw"] < 0 for f in fields)
    assert any(v["seq"] == 65535 for v in VEC["valid"])
    counters = {v["counter"] for v in VEC["invalid"]}
    assert counters == set(ERROR_COUNTERS)
    assert VEC["crc"]["check_value"] == 0x29B1


@pytest.mark.parametrize("vec", VEC["invalid"], ids=[v["name"] for v in VEC["invalid"]])
def test_invalid_vector_counts_its_counter(vec: dict) -> None:
    d = FrameDecoder()
    frames = d.feed(bytes.fromhex(vec["hex"]))
    counts = {k: n for k, n in d.counters.as_dict().items() if n and k != "bytes_in"}
    assert counts == {vec["counter"]: 1}
    assert all(f.msg is None for f in frames)
    if "nack" in vec:
        (f,) = frames
        assert f.seq == vec["seq"] and f.msg_type == vec["type_code"]
        nack = f.nack()
        assert nack is not None
        assert {"rejected_type": nack.rejected_type, "error": nack.error,
                "detail": nack.detail} == vec["nack"]
    else:
        assert frames == []


@pytest.mark.parametrize("vec", VEC["streams"], ids=[v["name"] for v in VEC["streams"]])
def test_stream_vectors(vec: dict) -> None:
    data = bytes.fromhex(vec["hex"])
    for chunk in (len(data), 1, 7):
        d = FrameDecoder()
        frames = []
        for i in range(0, len(data), chunk):
            frames.extend(d.feed(data[i:i + chunk]))
        assert [[f.seq, MsgType(f.msg_type).name] for f in frames if f.error is None] == \
            vec["frames"]
        assert d.counters.as_dict() == vec["counters"]


def test_committed_vectors_match_the_generator() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_testvectors.py"), "--check"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- scaling

PROFILE = load_board("emu-23")


def test_scaling_round_trip_within_half_lsb() -> None:
    s = Scaler(PROFILE)
    cells = np.linspace(2.5, 4.3, 23)
    temps = np.array([-20.0, 0.0, 25.0, 45.0, 60.0, 80.0])
    press = np.array([300.0, 350.5, 1.25, -4.0])
    m = s.measurement(12.3456, 0x81, cells, temps, press, -123.4567, 85.1234)
    r = s.readings(m)
    assert isinstance(r, Readings)
    assert r.timestamp_s == pytest.approx(12.346)
    assert np.all(np.abs(r.cell_voltage_v - cells) <= PROFILE.cell_lsb_v / 2 + 1e-12)
    assert np.all(np.abs(r.temperature_c - temps) < 0.05)  # 100 uV LSB on the NTC divider
    assert np.all(np.abs(r.pressure_kpa - press) <= 0.0005 / 2 + 1e-12)
    assert abs(r.current_a + 123.4567) <= PROFILE.current_lsb_a / 2 + 1e-12
    assert abs(r.bus_voltage_v - 85.1234) <= PROFILE.bus_lsb_v / 2 + 1e-12
    # And the message survives the wire.
    assert decode_frame(encode_frame(m, 1)[:-1])[1] == m


def test_scaling_sentinels_and_clamping() -> None:
    s = Scaler(PROFILE)
    m = s.measurement(0.0, 0, np.r_[np.nan, 100.0, -1.0, np.full(20, 3.7)],
                      np.array([np.nan, 25, 25, 25, 25, 25]),
                      np.array([np.nan, 1e9, -1e9, 0.0]), math.nan, math.nan)
    assert m.cell_raw[:3] == (INVALID_U16, INVALID_U16 - 1, 0)  # clamped, never the sentinel
    assert m.thermistor_raw[0] == INVALID_U16
    assert m.load_cell_raw[:3] == (INVALID_I32, HX711_MAX, HX711_MIN)
    assert m.current_raw == INVALID_I32 and m.bus_voltage_raw == INVALID_I32
    assert s.current_counts(1e12) == INVALID_I32 - 1
    assert s.current_counts(-1e12) == -(2**31)
    r = to_readings(m, PROFILE)
    assert math.isnan(r.cell_voltage_v[0]) and math.isnan(r.temperature_c[0])
    assert math.isnan(r.pressure_kpa[0]) and math.isnan(r.current_a)
    assert math.isnan(r.bus_voltage_v)
    assert np.isfinite(r.cell_voltage_v[1:]).all()


def test_scaling_rejects_a_measurement_of_another_board() -> None:
    m = to_measurement(PROFILE, 0.0, 0, np.full(23, 3.7), np.full(6, 25.0), np.full(4, 300.0),
                       0.0, 0.0)
    other = Measurement(m.timestamp_ms, m.status, m.current_raw, m.bus_voltage_raw,
                        m.cell_raw[:22], m.thermistor_raw, m.load_cell_raw)
    with pytest.raises(ValueError, match="22 cells.*emu-23.*23"):
        to_readings(other, PROFILE)
