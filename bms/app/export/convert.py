"""One chunk of ticks.csv lines -> typed columns (pyarrow's CSV parser, in C++).

Every selected column is parsed as float64: ``nan`` stays NaN (what the log writes for lost
data), an empty field (a column :meth:`bms.runlog.RunLog.row` left out) is NaN too, as in
:func:`bms.runlog.load_ticks`. Coded columns (:class:`~bms.app.export.channels.Channel` with an
integer dtype) are then checked to hold whole numbers in their type's range; NaN there is an
invalid sample (a mask beside the values).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from bms.app.errors import DataFileError
from bms.app.export.channels import Channel
from bms.app.export.reader import LineStats


@dataclass
class Chunk:
    """One chunk's columns, in channel order: float64 arrays, or (for integer channels) the
    values in their dtype and a bool mask of the invalid (NaN) samples (None: all valid)."""

    time_s: np.ndarray
    values: list[np.ndarray]
    invalid: list[np.ndarray | None]

    @property
    def rows(self) -> int:
        return len(self.time_s)


class ChunkParser:
    """Parses chunks of one ticks.csv into :class:`Chunk` of ``channels`` (time_s first)."""

    def __init__(self, path: str, columns: Sequence[str], channels: Sequence[Channel]) -> None:
        self.path = path
        self.columns = list(columns)
        self.channels = list(channels)
        names = [c.name for c in self.channels]
        self._read = pcsv.ReadOptions(column_names=self.columns, use_threads=True)
        self._parse = pcsv.ParseOptions(newlines_in_values=False)
        self._convert = pcsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.float64()), include_columns=names,
            null_values=[""], strings_can_be_null=False, quoted_strings_can_be_null=False)

    def parse(self, line_nos: Sequence[int], lines: list[bytes], stats: LineStats
              ) -> Chunk | None:
        """The chunk's columns (``line_nos``: each line's number in the file); lines whose
        values are not numbers, or without a time, are skipped (counted in ``stats``); None
        when no line is left."""
        table = self._table(lines)
        if table is None:  # a field that is not a number: find the lines, parse the rest
            good, good_nos = [], []
            for no, line in zip(line_nos, lines, strict=True):
                if self._table([line]) is None:
                    stats.bad(no)
                else:
                    good.append(line)
                    good_nos.append(no)
            if not good:
                return None
            table, line_nos = self._table(good), good_nos
            assert table is not None  # noqa: S101 - each line parsed alone
        cols = [(c if c.null_count == 0 else c.fill_null(np.nan)).to_numpy(zero_copy_only=False)
                for c in table.columns]
        time_s = cols[0]
        keep = np.isfinite(time_s)
        if not keep.all():  # a row without a time cannot be placed on a time axis
            for k in np.flatnonzero(~keep):
                stats.bad(line_nos[int(k)])
            cols = [c[keep] for c in cols]
            time_s = cols[0]
            if not len(time_s):
                return None
        values, invalid = [], []
        for ch, col in zip(self.channels[1:], cols[1:], strict=True):
            if ch.dtype == "float64":
                values.append(col)
                invalid.append(None)
            else:
                v, bad = self._integers(ch, col, time_s)
                values.append(v)
                invalid.append(bad)
        return Chunk(time_s, values, invalid)

    def _table(self, lines: list[bytes]) -> pa.Table | None:
        data = b"".join(lines)
        # One block for the chunk's longest line at least (pyarrow fails on a row that
        # straddles two blocks' limit otherwise).
        block = max(1 << 20, 2 * max(len(x) for x in lines))
        opts = pcsv.ReadOptions(column_names=self.columns, use_threads=True, block_size=block)
        try:
            return pcsv.read_csv(io.BytesIO(data), read_options=opts,
                                 parse_options=self._parse, convert_options=self._convert)
        except pa.ArrowInvalid:
            return None

    def _integers(self, ch: Channel, col: np.ndarray, time_s: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray | None]:
        info = np.iinfo(np.dtype(ch.dtype))
        nan = np.isnan(col)
        ok = nan | ((col == np.floor(col)) & (col >= info.min) & (col <= info.max))
        if not ok.all():
            k = int(np.flatnonzero(~ok)[0])
            raise DataFileError(
                f"{self.path}: column {ch.name} at time_s {time_s[k]:.6g}: {col[k]:.10g} is not "
                f"a whole number in {info.min}..{info.max} (a code, a bit mask or a count)")
        values = np.where(nan, 0.0, col).astype(ch.dtype)
        return values, (nan if nan.any() else None)
