"""Apache Parquet through pyarrow: the ticks in FILE (row groups of ~32 MiB, every column's
unit, comment and value texts in its field metadata, the run's properties in the schema
metadata) and the events in FILE's ``.events.parquet`` sibling (time_s, type, the JSON line).

Streaming: chunks are buffered up to a row group (:data:`ROW_GROUP_BYTES`), written with
``ParquetWriter.write_table`` and dropped. Both files are written as ``.part`` and renamed
when complete.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bms.app.export.channels import Channel
from bms.app.export.convert import Chunk
from bms.app.export.info import RunInfo, part_path
from bms.app.export.reader import Event

#: snappy: Parquet's default codec, read by every Parquet reader; zstd was 10 % smaller and
#: 1.1 s slower on an hour of ssb-4x23 (49 vs 44 MB, 4.8 vs 5.8 s).
COMPRESSION = "snappy"
#: Schema metadata keys (bytes -> bytes in Parquet; JSON values).
#: Values per row group: chunks are buffered into row groups of about this many bytes of values
#: (32 MiB: 9,576 rows of ssb-4x23's 438 columns). pyarrow's writer keeps each row group's
#: column metadata for the footer (0.3-0.4 MiB per 438-column group, measured), so the rows per
#: group set how fast memory grows with the run; larger groups also suit the readers (column
#: chunks of ~75 kB instead of ~16 kB at 2,000 rows). 32 MiB is an assumption: a compromise
#: between the values held until a group is written and that growth.
ROW_GROUP_BYTES = 32 << 20
RUN_KEY = b"ssb_bms.run"
EXPORT_KEY = b"ssb_bms.export"


def events_path(out: Path) -> Path:
    """The events file beside ``out``: run.parquet -> run.events.parquet."""
    stem = out.name[:-len(".parquet")] if out.name.endswith(".parquet") else out.name
    return out.with_name(stem + ".events.parquet")


def _field(ch: Channel) -> pa.Field:
    meta = {"unit": ch.unit, "comment": ch.comment}
    if ch.texts:
        meta["value_texts"] = json.dumps({str(k): v for k, v in sorted(ch.texts.items())})
    return pa.field(ch.name, pa.from_numpy_dtype(ch.dtype), nullable=True, metadata=meta)


class ParquetWriter:
    """Writes one export; :meth:`close` finishes both files (or :meth:`abort` drops them)."""

    def __init__(self, out: Path, channels: Sequence[Channel], info: RunInfo) -> None:
        self.out, self.events_out = out, events_path(out)
        self._parts = [part_path(out), part_path(self.events_out)]
        meta = {RUN_KEY: json.dumps(info.meta).encode(),
                b"description": info.description().encode()}
        self.schema = pa.schema([_field(c) for c in channels], metadata=meta)
        self._writer = pq.ParquetWriter(self._parts[0], self.schema, compression=COMPRESSION)
        self._events_writer: pq.ParquetWriter | None = None
        self._run_meta = meta
        self.group_rows = max(1, ROW_GROUP_BYTES // (8 * len(self.schema)))
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write(self, chunk: Chunk) -> None:
        """Buffer the chunk; a row group is written once :attr:`group_rows` are buffered."""
        arrays = [pa.array(chunk.time_s)] + [
            pa.array(v, mask=bad) for v, bad in zip(chunk.values, chunk.invalid, strict=True)]
        self._pending.append(pa.Table.from_arrays(arrays, schema=self.schema))
        self._pending_rows += chunk.rows
        if self._pending_rows >= self.group_rows:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            table = pa.concat_tables(self._pending)  # no copy: the chunks become its chunks
            self._writer.write_table(table, row_group_size=table.num_rows)
            self._pending, self._pending_rows = [], 0

    def write_events(self, chunks: Iterable[list[Event]]) -> int:
        schema = pa.schema([
            pa.field("time_s", pa.float64(), metadata={
                "unit": "s", "comment": "the event's time_s (an event without one takes the "
                                        "previous event's)"}),
            pa.field("type", pa.string(), metadata={"unit": "", "comment": "the event's type"}),
            pa.field("event", pa.string(), metadata={"unit": "", "comment": "the events.jsonl "
                                                     "line (JSON)"})],
            metadata=self._run_meta)
        self._events_writer = pq.ParquetWriter(self._parts[1], schema, compression=COMPRESSION)
        n = 0
        for events in chunks:
            n += len(events)
            self._events_writer.write_table(pa.Table.from_arrays([
                pa.array([e.time_s for e in events], pa.float64()),
                pa.array([e.type for e in events], pa.string()),
                pa.array([e.text for e in events], pa.string())], schema=schema))
        return n

    def close(self, info: RunInfo) -> list[Path]:
        self._flush()
        export = json.dumps(info.properties()).encode()
        if self._events_writer is None:
            self.write_events(())
        assert self._events_writer is not None  # noqa: S101 - made just above
        for w in (self._writer, self._events_writer):
            w.add_key_value_metadata({EXPORT_KEY: export})
            w.close()
        self._parts[0].replace(self.out)
        self._parts[1].replace(self.events_out)
        return [self.out, self.events_out]

    def abort(self) -> None:
        for w in (self._writer, self._events_writer):
            if w is not None:
                try:
                    w.close()
                except Exception:  # noqa: BLE001, S110 - already failing; the parts go next
                    pass
        for p in self._parts:
            p.unlink(missing_ok=True)
