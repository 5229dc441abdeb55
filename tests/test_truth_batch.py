"""TruthWriter's sim-clock batches: the same bytes as one write per row, held rows reach the
file at flush/close, and a failed batch counts every row it held."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hil.emulator.truth import TruthWriter


def _rows(n_rows: int, width: int) -> list[list[float]]:
    rng = np.random.default_rng(5)
    return (rng.standard_normal((n_rows, width)) * 100.0).tolist()


def test_batches_write_the_same_bytes(tmp_path):
    n, m = 3, 2
    rows = _rows(23, 7 + 3 * n + m)
    paths = []
    for batch in (1, 4):
        path = tmp_path / f"truth_{batch}.csv"
        with TruthWriter(path, n, m, every=2, batch_rows=batch) as tw:
            for row in rows:
                tw.write_row(row)
            if batch > 1:  # 12 kept rows: 3 batches written, nothing held
                assert path.read_text().count("\n") == 1 + 12
                tw.write_row(rows[0])
                tw.write_row(rows[0])  # kept (the 25th), held until close
                assert path.read_text().count("\n") == 1 + 12
        paths.append(path)
    assert paths[1].read_bytes() == paths[0].read_bytes() + paths[0].read_bytes().splitlines(
        keepends=True)[1]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_failed_batch_counts_its_rows(tmp_path, capsys):
    tw = TruthWriter(tmp_path / "t.csv", 1, 0, batch_rows=3)
    tw._fh.close()
    tw._fh = open("/dev/full", "w", encoding="utf-8", buffering=1)  # the disk fills up
    for row in _rows(7, 10):
        tw.write_row(row)
    tw.close()
    assert tw.dropped == 7 and tw.error is not None
    assert capsys.readouterr().err.count("no more truth rows") == 1


def test_batch_rows_checked(tmp_path):
    with pytest.raises(ValueError, match="batch_rows"):
        TruthWriter(tmp_path / "t.csv", 1, 0, batch_rows=0)
