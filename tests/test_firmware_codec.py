"""The firmware's protocol codec (boards/firmware/src/proto.c, compiled for the host) against
the test vectors the Python codec uses (hil/testvectors/protocol_v1.json), and the firmware's
dispatch against the vectors' expected board NACKs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from firmware_tools import make, require_tools

from hil.firmware import BUILD_DIR

pytestmark = pytest.mark.firmware

VECTORS = Path(__file__).resolve().parents[1] / "hil" / "testvectors" / "protocol_v1.json"
RESULT_TO_COUNTER = {
    "cobs": "cobs_errors", "short": "short_errors", "crc": "crc_errors",
    "length": "length_errors", "version": "version_errors", "unknown_type": "unknown_type",
    "payload": "payload_errors", "oversize": "oversize",
}
TYPE_NAMES = {1: "HELLO", 2: "INFO", 0x10: "SAMPLE", 0x11: "MEASUREMENT", 0x20: "SET_OUTPUTS",
              0x21: "HEARTBEAT", 0x30: "ACK", 0x31: "NACK", 0x40: "FAULT_INJECT"}


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    return json.loads(VECTORS.read_text())


def run_codec(lines: list[str], board: bool = False) -> list[dict[str, Any]]:
    require_tools()
    make("vectors")
    args = [str(BUILD_DIR / "host" / "vectors")] + (["--board"] if board else [])
    proc = subprocess.run(args, input="".join(x + "\n" for x in lines), capture_output=True,
                          text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(out) == len(lines)
    return out


def counters(result: dict[str, Any]) -> dict[str, int]:
    c = dict.fromkeys(RESULT_TO_COUNTER.values(), 0)
    c["oversize"] = result["oversize"]
    c["frames_ok"] = 0
    for f in result["frames"]:
        if f["result"] == "ok":
            c["frames_ok"] += 1
        else:
            c[RESULT_TO_COUNTER[f["result"]]] += 1
    return c


def expected_fields(v: dict[str, Any]) -> dict[str, Any]:
    fields = dict(v["fields"])
    if v["type"] == "INFO":
        fields["fw_major"], fields["fw_minor"], fields["fw_patch"] = fields.pop("fw_version")
    if v["type"] == "MEASUREMENT":
        fields["n_cells"] = len(fields["cell_raw"])
        fields["n_thermistors"] = len(fields["thermistor_raw"])
        fields["n_load_cells"] = len(fields["load_cell_raw"])
    return fields


def test_valid_vectors_decode_and_reencode(vectors) -> None:
    valid = vectors["valid"]
    results = run_codec([v["hex"] for v in valid])
    for v, r in zip(valid, results, strict=True):
        assert len(r["frames"]) == 1, v["name"]
        f = r["frames"][0]
        assert f["result"] == "ok", v["name"]
        assert (f["type"], f["seq"]) == (v["type_code"], v["seq"]), v["name"]
        assert f["fields"] == expected_fields(v), v["name"]
        assert f["reencoded"] == v["hex"], v["name"]  # encoder gives exactly the wire bytes


def test_invalid_vectors_count_exactly_one_error(vectors) -> None:
    invalid = vectors["invalid"]
    results = run_codec([v["hex"] for v in invalid])
    for v, r in zip(invalid, results, strict=True):
        c = counters(r)
        want = dict.fromkeys(c, 0)
        want[v["counter"]] = 1
        assert c == want, v["name"]
        if "seq" in v:  # header intact: the firmware sees type and seq for its NACK
            assert (r["frames"][0]["seq"], r["frames"][0]["type"]) == (v["seq"], v["type_code"])


def test_streams(vectors) -> None:
    """The firmware reader takes one byte at a time (as from its UART ISR queue), so a stream in
    one piece and byte by byte are the same code path here."""
    for s in vectors["streams"]:
        (r,) = run_codec([s["hex"]])
        frames = [[f["seq"], TYPE_NAMES[f["type"]]] for f in r["frames"] if f["result"] == "ok"]
        assert frames == s["frames"], s["name"]
        want = {k: v for k, v in s["counters"].items() if k != "bytes_in"}
        assert counters(r) == want, s["name"]


def nack_of(reply_hex: str) -> tuple[int, int, int, int, int]:
    """(type, seq, rejected_type, error, detail) of a board reply, via the firmware codec."""
    (r,) = run_codec([reply_hex])
    f = r["frames"][0]
    assert f["result"] == "ok"
    p = f["fields"]
    return f["type"], f["seq"], p.get("rejected_type", -1), p.get("error", -1), p.get("detail", -1)


def test_board_answers_invalid_vectors_with_the_expected_nack(vectors) -> None:
    cases = [v for v in vectors["invalid"] if "nack" in v]
    assert cases
    results = run_codec([v["hex"] for v in cases], board=True)
    for v, r in zip(cases, results, strict=True):
        assert len(r["replies"]) == 1, v["name"]
        n = v["nack"]
        assert nack_of(r["replies"][0]) == (0x31, v["seq"], n["rejected_type"], n["error"],
                                            n["detail"]), v["name"]
    silent = [v for v in vectors["invalid"] if "nack" not in v]
    for v, r in zip(silent, run_codec([v["hex"] for v in silent], board=True), strict=True):
        assert r["replies"] == [], v["name"]  # dropped and counted, never answered


def test_board_nacks_every_fault_inject_vector(vectors) -> None:
    cases = [v for v in vectors["valid"] if v["type"] == "FAULT_INJECT"]
    results = run_codec([v["hex"] for v in cases], board=True)
    for v, r in zip(cases, results, strict=True):
        assert [nack_of(x) for x in r["replies"]] == [(0x31, v["seq"], 0x40, 5, 0)], v["name"]
