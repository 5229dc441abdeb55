"""The C row formatter (csrc/ssb_format.c) against exact Python references, RunLog.row_array
through the readers, and the row_array benchmark."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from bms import _core
from bms.runlog import (
    COLUMN_DECIMALS,
    RunLog,
    TickRow,
    column_decimals,
    load_ticks,
    standard_columns,
)

ffi, lib = _core.ffi, _core.lib
TWO_POW_52 = 2.0 ** 52


def c_value(v: float, d: int) -> str:
    buf = ffi.new("char[]", lib.SSB_FMT_FIELD_MAX)
    n = lib.ssb_format_value(v, d, buf)
    assert 0 < n <= lib.SSB_FMT_FIELD_MAX
    return ffi.unpack(buf, n).decode()


def _trim(text: str) -> str:
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def exact_reference(v: float, d: int) -> str:
    """The documented rule, from the exact binary value: correctly rounded, exact ties half
    away from zero, trailing zeros trimmed, zero as "0"."""
    q = Fraction(abs(v)) * 10 ** d
    n = math.floor(q)
    if q - n >= Fraction(1, 2):
        n += 1
    if n == 0:
        return "0"
    ip, fp = divmod(n, 10 ** d)
    text = ("-" if v < 0 else "") + str(ip)
    if fp:
        text += "." + str(fp).rjust(d, "0").rstrip("0")
    return text


def is_exact_tie(v: float, d: int) -> bool:
    q = Fraction(abs(v)) * 10 ** d
    return q - math.floor(q) == Fraction(1, 2)


def _values(rng: np.random.Generator, k: int) -> np.ndarray:
    mags = 10.0 ** rng.uniform(-12, 16, k)
    v = mags * rng.choice([-1.0, 1.0], k)
    # Decimal-looking values (3.8123 V ...) and values near rounding boundaries.
    dec = np.round(rng.uniform(-5000, 5000, k), int(rng.integers(0, 8)))
    near = (np.floor(rng.uniform(-1e6, 1e6, k)) + 0.5) / 10.0 ** rng.integers(0, 9, k)
    ties = rng.integers(-10 ** 6, 10 ** 6, k) / 2.0 ** rng.integers(1, 12, k)  # dyadic
    raw = np.frombuffer(rng.bytes(8 * k), dtype=np.float64)  # any bit pattern
    return np.concatenate([v, dec, near, np.nextafter(near, np.inf), ties, raw])


EDGE = [0.0, -0.0, 5e-324, -5e-324, 0.5, -0.5, 1.5, 2.5, 0.125, -0.125, 0.05, 0.15, 1e-7,
        -4.9999999e-7, 5e-7, 0.9999995, 9.9999995, 4503599627370495.0, 4503599627370496.0,
        TWO_POW_52 - 0.5, 1e15, 1e16, 1.7976931348623157e308, -1.7976931348623157e308,
        2.2250738585072014e-308, 123456789.123456789, 3.8, 4.2199999999999998]


@pytest.mark.parametrize("d", range(0, 10))
def test_fixed_point_matches_exact_reference_and_python_format(d: int) -> None:
    rng = np.random.default_rng(d)
    ties = 0
    for v in list(_values(rng, 1500)) + EDGE:
        v = float(v)
        if not math.isfinite(v):
            continue
        got = c_value(v, d)
        if abs(v) * 10.0 ** d >= TWO_POW_52:
            # Too large for exact fixed point: %.17g, which reads back exactly.
            assert got == ("0" if v == 0 else f"{v:.17g}"), v
            assert float(got) == v
            continue
        assert got == exact_reference(v, d), (v, d)
        # Python's own format: identical except on exact ties (it rounds them to even).
        python = _trim(f"{v:.{d}f}")
        if is_exact_tie(v, d):
            ties += 1
        else:
            assert got == python, (v, d)
        # Within half an LSB of the value (plus the parse's own rounding).
        assert abs(float(got) - v) <= 0.5 * 10.0 ** -d * (1 + 1e-12) + abs(v) * 2 ** -52, v
    assert ties > 0, "the sample must contain exact ties"


def test_special_values_and_g10_fallback() -> None:
    for d in (-1, 0, 3, 9):
        assert c_value(math.nan, d) == "nan"
        assert c_value(-math.nan, d) == "nan"
        assert c_value(math.inf, d) == "inf"
        assert c_value(-math.inf, d) == "-inf"
        assert c_value(-0.0, d) == "0"
    rng = np.random.default_rng(5)
    for v in list(_values(rng, 3000)) + EDGE:
        v = float(v)
        if math.isfinite(v) and v != 0.0:
            assert c_value(v, -1) == f"{v:.10g}", v
    assert c_value(-1e-300, 6) == "0" and c_value(-4e-7, 6) == "0"
    assert c_value(-6e-7, 6) == "-0.000001"
    assert c_value(3.80000, 6) == "3.8" and c_value(12.0, 0) == "12" and c_value(2.5, 0) == "3"
    buf = ffi.new("char[]", lib.SSB_FMT_FIELD_MAX)
    assert lib.ssb_format_value(1.0, 10, buf) == lib.SSB_FMT_ERR_PARAM
    assert lib.ssb_format_value(1.0, -2, buf) == lib.SSB_FMT_ERR_PARAM
    assert lib.ssb_format_value(1.0, 2, ffi.NULL) == lib.SSB_FMT_ERR_NULL


def _row(values, decimals, cap: int, guard: int = 16) -> tuple[int, bytes, bytes]:
    vals = np.ascontiguousarray(values, dtype=np.float64)
    dec = np.ascontiguousarray(decimals, dtype=np.int8)
    out = bytearray(b"\xa5" * (cap + guard))
    n = lib.ssb_format_row(ffi.from_buffer("double[]", vals), ffi.from_buffer("signed char[]", dec),
                           len(vals), ffi.from_buffer("char[]", out), cap)
    return n, bytes(out[:max(n, 0)]), bytes(out[cap:])


def test_row_layout_capacity_and_errors() -> None:
    rng = np.random.default_rng(3)
    for n in list(range(0, 40)) + [115, 300]:
        vals = np.resize(_values(rng, 1), n)  # random, edge and any-bit-pattern values
        dec = rng.integers(-1, 10, n)
        size, text, _ = _row(vals, dec, 32 * n + 1)
        expected = ",".join(c_value(float(v), int(k)) for v, k in zip(vals, dec, strict=True))
        assert text == (expected + "\n").encode() and size == len(text)
        # Exactly enough room works; one byte less fails, and nothing lands past cap.
        assert _row(vals, dec, size)[:2] == (size, text)
        got, _, tail = _row(vals, dec, size - 1)
        assert got == lib.SSB_FMT_ERR_FULL and tail == b"\xa5" * 16
        if n:
            for cap in range(0, size, max(1, size // 7)):
                got, _, tail = _row(vals, dec, cap)
                assert got == lib.SSB_FMT_ERR_FULL and tail == b"\xa5" * 16
            bad = dec.copy()
            bad[-1] = 10
            assert _row(vals, bad, 32 * n + 1)[0] == lib.SSB_FMT_ERR_PARAM
    out = ffi.new("char[]", 4)
    assert lib.ssb_format_row(ffi.NULL, ffi.NULL, 0, out, 4) == 1 and out[0] == b"\n"
    assert lib.ssb_format_row(ffi.NULL, ffi.NULL, 3, out, 4) == lib.SSB_FMT_ERR_NULL
    assert lib.ssb_format_row(ffi.NULL, ffi.NULL, 0, ffi.NULL, 4) == lib.SSB_FMT_ERR_NULL


# --------------------------------------------------------------------------- RunLog


def test_column_decimals_table() -> None:
    cols = standard_columns(23, 6, 4)
    dec = {c: column_decimals(c) for c in cols}
    assert dec["time_s"] == 6 and dec["tick_duration_s"] == 7 and dec["state"] == 0
    assert dec["cell01_voltage_v"] == 6 and dec["cell01_soc"] == 6
    assert dec["cell01_soc_sigma"] == 6 and dec["cell01_leak_a"] == 4 and dec["t01_c"] == 3
    assert dec["pressure_lc01_kpa"] == 2 and dec["balance_mask"] == 0
    assert dec["ccd_limit_a"] == 4  # 0.1 mA, as every current
    assert column_decimals("balance_mask_s3") == 0 and column_decimals("whatever") == -1
    assert column_decimals("pressure_rate_kpa_per_s") == -1  # unknown unit: %.10g
    assert all(d >= 0 for d in dec.values()), "every standard column has a resolution"
    assert all(why for _, _, why in COLUMN_DECIMALS), "every resolution says why"


def test_row_array_round_trips_within_half_a_step(tmp_path: Path) -> None:
    cols = standard_columns(23, 6, 4, extra=["custom_thing"])
    rng = np.random.default_rng(11)
    rows = rng.normal(size=(50, len(cols))) * 10.0 ** rng.integers(-4, 4, size=(50, len(cols)))
    rows[:, 0] = 0.1 * np.arange(50)
    rows[3, 7] = np.nan
    rows[4, 8] = np.inf
    rows[5, 9] = -np.inf
    rows[6, 10] = -0.0
    rows[7, 11] = 1e300  # too large for fixed point: %.17g
    with RunLog(tmp_path, cols) as log:
        buf = np.empty(len(cols))
        for r in rows:
            buf[:] = r  # the controller reuses one buffer (cached pointer)
            assert log.row_array(buf)
        assert log.row_array(list(rows[0]))  # any sequence works (slow path)
        with pytest.raises(ValueError):
            log.row_array(rows[0][:-1])
    ticks = load_ticks(tmp_path)
    assert list(ticks) == cols
    for j, c in enumerate(cols):
        got, want = ticks[c][:50], rows[:, j]
        d = column_decimals(c)
        tol = 0.5 * 10.0 ** -d if d >= 0 else 0.0
        finite = np.isfinite(want) & np.isfinite(got)
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(got[~finite & ~np.isnan(want)],
                                      want[~finite & ~np.isnan(want)])
        if d < 0:
            np.testing.assert_allclose(got[finite], want[finite], rtol=5e-10)
        else:
            big = np.abs(want) * 10.0 ** d >= TWO_POW_52
            np.testing.assert_array_equal(got[finite & big], want[finite & big])
            err = np.abs(got[finite] - want[finite])
            assert np.all(err <= tol * (1 + 1e-9) + np.abs(want[finite]) * 2 ** -52), c
    text = (tmp_path / "ticks.csv").read_text()
    assert "-0," not in text and ",inf," in text and ",-inf," in text and ",nan," in text
    assert log.summary()["last_time_s"] == 0.0 and log.summary()["rows"] == 51


@pytest.mark.parametrize("shape", [(23, 6, 4, 1), (92, 24, 16, 4)], ids=["ssb-23", "ssb-4x23"])
def test_bench_row_array(benchmark, tmp_path: Path, shape) -> None:
    """RunLog.row_array on the controller's column sets (115 and 434 columns) with realistic
    values, into a real file. Measured, not asserted."""
    n_cells, n_th, n_lc, n_st = shape
    cols = standard_columns(n_cells, n_th, n_lc, n_stacks=n_st)
    rng = np.random.default_rng(2)
    row = np.empty(len(cols))
    for j, c in enumerate(cols):
        d = column_decimals(c)
        row[j] = (rng.uniform(3.0, 4.2) if c.endswith("_v") else rng.uniform(0, 1)
                  if "_soc" in c else rng.uniform(-20, 60) if d in (3, 4) else
                  rng.uniform(500, 1500) if c.endswith("_kpa") else rng.integers(0, 100))
    log = RunLog(tmp_path, cols)
    benchmark(log.row_array, row)
    log.close()
    assert len(load_ticks(tmp_path)["time_s"]) >= 1


def test_row_segments_write_the_same_bytes_as_row_array(tmp_path: Path) -> None:
    """The controller's path (formatting straight from its arrays) against row_array: byte
    for byte, over random splits, rebinding when an array is replaced, and bad segments."""
    cols = standard_columns(23, 6, 4)
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(40, len(cols))) * 10.0 ** rng.integers(-4, 4, size=(40, len(cols)))
    rows[2, 5] = np.nan
    with RunLog(tmp_path / "a", cols) as a, RunLog(tmp_path / "b", cols) as b:
        cuts = np.sort(rng.choice(np.arange(1, len(cols)), size=6, replace=False))
        bounds = [0, *cuts.tolist(), len(cols)]
        segs = [np.empty(hi - lo) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        for k, r in enumerate(rows):
            if k == 20:  # a new array object in one place: the pointer table is rebuilt
                segs[2] = np.empty_like(segs[2])
            for seg, lo in zip(segs, bounds, strict=False):
                seg[:] = r[lo:lo + len(seg)]
            assert a.row_array(r.copy())
            assert b.row_segments(segs, float(r[0]))
        with pytest.raises(ValueError, match="values for"):
            b.row_segments(segs[:-1], 0.0)
        with pytest.raises(TypeError, match="contiguous float64"):
            b.row_segments([*segs[:-1], segs[-1].astype(np.float32)], 0.0)
        assert b.last_time_s == float(rows[-1, 0])
    want = (tmp_path / "a" / "ticks.csv").read_bytes()
    assert (tmp_path / "b" / "ticks.csv").read_bytes() == want


@pytest.mark.parametrize("load_cells", [[4], [4, 4, 3, 4]])
def test_row_tick_writes_the_bytes_of_fill_and_row_segments(tmp_path: Path,
                                                            load_cells: list[int]) -> None:
    """The controller's row in one C call (RunLog.row_tick: ssb_format_tick fills the head and
    tail and formats) against TickRow.fill + row_segments: byte for byte, over random values
    with NaN and infinities, masks of every dtype the balancer could hand over, a replaced
    cell array and a stack whose pressure segment is swapped (a stale board)."""
    n_st = len(load_cells)
    n_cells, n_th = 23 * n_st, 6 * n_st
    cols = standard_columns(n_cells, n_th, sum(load_cells), n_st)
    rng = np.random.default_rng(11)
    rows = [TickRow(load_cells), TickRow(load_cells)]
    cells = [rng.normal(size=n_cells) for _ in range(4)] + [rng.normal(size=n_th)]
    with RunLog(tmp_path / "a", cols) as a, RunLog(tmp_path / "b", cols) as b:
        for k in range(60):
            for arr in cells:
                arr[:] = rng.normal(size=len(arr)) * 10.0 ** rng.integers(-3, 3)
            if k == 30:
                cells[2] = cells[2].copy()  # a new array: the pointer table is rebuilt
            for row in rows:
                for j in range(n_st):
                    if k % 17 == 5 and j == 0:
                        row.set_stack(j, math.nan, row._no_pressure[j], math.nan, math.nan)
                    else:
                        row.set_stack(j, float(k), np.full(load_cells[j], 1000.0 + k),
                                      1.5 * k, -0.25, math.inf if k % 3 else math.nan)
            masks = rng.integers(0, 2**32, size=n_st, dtype=np.uint64)
            masks = masks.astype((np.uint32, np.int64, np.uint64)[k % 3])
            vals = (0.1 * k, k % 6, rng.normal() * 100.0, 80.0 + k, math.nan if k % 7 == 0
                    else 79.5)
            args = (float(rng.normal() * 50.0), math.inf, k % 8)
            tail = (k % 4, 1e-4 * k)
            assert a.row_segments(rows[0].fill(*vals, cells, *args, masks, *tail), vals[0])
            assert b.row_tick(rows[1], *vals, cells, *args, masks, *tail)
        with pytest.raises(ValueError, match="balance masks"):
            b.row_tick(rows[1], *vals, cells, *args, masks[:-1] if n_st > 1 else masks[:0],
                       *tail)
    want = (tmp_path / "a" / "ticks.csv").read_bytes()
    assert (tmp_path / "b" / "ticks.csv").read_bytes() == want
