"""RunLog.keep_columns: the columns kept in memory are the floats ticks.csv holds (what a
campaign run scores without reading the file back): as_logged against the C formatter's own
text on near-ties, ties, zeros, large values and non-finite ones; kept_columns against
load_tick_columns on a written log."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bms.runlog import RunLog, TickRow, _RowFormatter, as_logged, load_tick_columns


def _adversarial(decimals: int, rng: np.random.Generator) -> np.ndarray:
    s = 10.0 ** decimals
    k = rng.integers(0, 10**6, 300).astype(float)
    halves = (k + 0.5) / s  # |v| 10^d within an ulp or two of a .5
    near = np.concatenate([np.nextafter(halves, np.inf), np.nextafter(halves, -np.inf)])
    exact = np.array([0.5, 1.5, 2.5, 0.125, 0.375, 1e-9, 5e-7, 2.0**-30])  # exact binary ties
    big = np.array([2.0**52 / s, np.nextafter(2.0**52 / s, 0.0), 1e300, 4e15])
    odd = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-12, -1e-12])
    v = np.concatenate([halves, near, exact, big, rng.normal(0.0, 3.0, 300),
                        rng.uniform(0.0, 1.0, 300)])
    return np.concatenate([v, -v, odd])


def test_as_logged_is_the_formatters_text_parsed() -> None:
    rng = np.random.default_rng(7)
    for decimals in (-1, 0, 2, 3, 4, 6, 7, 9):
        values = _adversarial(decimals, rng)
        fmt = _RowFormatter([decimals] * len(values))
        text = bytes(fmt.format(values)).decode().rstrip("\n").split(",")
        parsed = np.array([float(t) for t in text])
        got = as_logged(values, decimals)
        same = (got == parsed) | (np.isnan(got) & np.isnan(parsed))
        assert same.all(), (decimals, values[~same][:5], got[~same][:5], parsed[~same][:5])
        # "0", never "-0": the sign of a zero too
        assert np.array_equal(np.signbit(got[parsed == 0.0]), np.signbit(parsed[parsed == 0.0]))


def test_kept_columns_equal_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    cols = ["time_s", "a_soc", "b_soc", "x_v", "a_soc_sigma", "b_soc_sigma", "n"]
    keep = ["b_soc_sigma", "time_s", "a_soc", "b_soc", "a_soc_sigma"]
    log = RunLog(tmp_path, cols)
    log.keep_columns(keep)
    head, socs, tail = np.zeros(1), np.zeros(2), np.zeros(4)
    for i in range(5000):  # more than one of the tap's chunks
        head[0] = i * 0.1
        socs[:] = rng.uniform(0.0, 1.0, 2)
        tail[:] = (rng.normal(), *(rng.uniform(0.0, 0.05, 2)), i)
        if i % 2:
            log.row_segments([head, socs, tail], head[0])
        else:
            log.row_array(np.concatenate([head, socs, tail]))
    log.row_array(np.array([500.1, np.nan, 0.5e-6, 1.0, np.inf, -0.0, 7.0]))
    kept = log.kept_columns()
    log.close()
    assert kept is not None and sorted(kept) == sorted(keep)
    read = load_tick_columns(tmp_path, lambda c: c in keep)
    for name in keep:
        assert np.array_equal(kept[name], read[name], equal_nan=True), name
    assert len(kept["time_s"]) == 5001


def test_a_text_row_leaves_nothing_kept(tmp_path: Path) -> None:
    log = RunLog(tmp_path, ["time_s", "a_soc"])
    assert log.kept_columns() is None  # none asked for
    log.keep_columns(["a_soc"])
    log.row_array(np.array([0.0, 0.5]))
    log.row({"time_s": 0.1, "a_soc": 0.25})  # %.10g text: not what the tap reproduces
    assert log.kept_columns() is None
    log.close()


def test_discarded_ticks_are_counted_and_kept_not_written(tmp_path: Path) -> None:
    cols = ["time_s", "a_soc", "x_v"]
    logs = {name: RunLog(tmp_path / name, cols) for name in ("written", "discarded")}
    for log in logs.values():
        log.keep_columns(["time_s", "a_soc"])
    logs["discarded"].discard_ticks()
    rng = np.random.default_rng(5)
    for i in range(300):
        values = np.array([i * 0.1, rng.uniform(), rng.normal(3.8, 0.1)])
        for log in logs.values():
            log.row_array(values)
    kept = logs["discarded"].kept_columns()
    summaries = {name: log.close() for name, log in logs.items()}
    assert kept is not None
    read = load_tick_columns(tmp_path / "written", lambda c: c in kept)
    assert all(np.array_equal(kept[c], read[c]) for c in kept) and len(kept["a_soc"]) == 300
    assert (tmp_path / "discarded" / "ticks.csv").read_text() == ",".join(cols) + "\n"
    for key in ("rows", "first_time_s", "last_time_s"):
        assert summaries["written"][key] == summaries["discarded"][key], key


def test_discarded_tick_rows_are_filled_and_kept_not_formatted(tmp_path: Path) -> None:
    """row_tick (the controller's rows) on a log that discards its ticks: not formatted (only
    filled, ssb_fill_tick), yet counted and kept as a written log has them (the C gather of
    the kept columns out of the row's segments, with batched rows and cell arrays replaced
    now and then, as the controller's stale-data rows do)."""
    load_cells = [2, 3]
    n_cells, n_temps = 4, 3
    cols = ([f"h{i}" for i in range(1, 7)] + [f"c{i}_v" for i in range(n_cells)]
            + [f"c{i}_soc" for i in range(n_cells)] + [f"c{i}_soc_sigma" for i in range(n_cells)]
            + [f"c{i}_leak_a" for i in range(n_cells)] + [f"t{i}_c" for i in range(n_temps)]
            + [f"p{i}_kpa" for i in range(sum(load_cells))] + [f"tail{i}" for i in range(13)])
    cols.insert(0, "time_s")
    keep = ["time_s", "c1_soc", "c0_soc_sigma", "c3_soc_sigma", "t2_c", "tail11", "tail12"]
    rng = np.random.default_rng(11)
    logs, rows = {}, {}
    for name in ("written", "discarded"):
        logs[name] = RunLog(tmp_path / name, cols, batch_rows=7)
        logs[name].keep_columns(keep)
        rows[name] = TickRow(load_cells)
    logs["discarded"].discard_ticks()
    cells = [rng.uniform(3.0, 4.0, n_cells), rng.uniform(0, 1, n_cells),
             rng.uniform(0, 0.05, n_cells), rng.normal(0, 1e-3, n_cells),
             rng.uniform(20, 30, n_temps)]
    masks = np.zeros(2, dtype=np.uint32)
    for i in range(300):
        for a in cells:
            a[:] = a + rng.normal(0, 1e-3, len(a))
        arrays = (tuple(a.copy() for a in cells) if i % 50 == 7 else tuple(cells))
        masks[:] = rng.integers(0, 2**23, 2)
        for name, log in logs.items():
            row = rows[name]
            row.set_stack(i % 2, rng.normal(), rng.uniform(0, 300, load_cells[i % 2]), 1.0, 2.0)
            assert log.row_tick(row, i * 0.1, 2, -5.5, 80.0, 80.1, arrays, 10.0, 20.0, 7,
                                masks, i % 3, 1e-4 * (1 + i % 5))
    kept = {name: log.kept_columns() for name, log in logs.items()}
    summaries = {name: log.close() for name, log in logs.items()}
    read = load_tick_columns(tmp_path / "written", lambda c: c in keep)
    for name in keep:
        assert np.array_equal(kept["discarded"][name], read[name]), name
        assert np.array_equal(kept["written"][name], read[name]), name
    assert len(kept["discarded"]["time_s"]) == 300
    assert (tmp_path / "discarded" / "ticks.csv").read_text() == ",".join(cols) + "\n"
    for key in ("rows", "first_time_s", "last_time_s", "dropped_rows"):
        assert summaries["written"][key] == summaries["discarded"][key], key
