"""CSV: the complete rows of ticks.csv, with the selected columns, their fields copied as the
log wrote them (no re-rounding), so the file reads like a ticks.csv (``bms plot``,
:func:`bms.runlog.load_ticks`); beside it ``FILE.channels.csv`` (name, unit, comment, value
texts) and ``FILE.events.jsonl`` (the complete events lines). Written as ``.part`` files and
renamed when complete. Fields are not parsed: a line is checked by its number of fields only.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from bms.app.export.channels import Channel
from bms.app.export.info import RunInfo, part_path
from bms.app.export.reader import Event


def sidecars(out: Path) -> tuple[Path, Path]:
    """(channels file, events file) beside ``out``: run.csv -> run.channels.csv,
    run.events.jsonl."""
    stem = out.name[:-len(".csv")] if out.name.endswith(".csv") else out.name
    return out.with_name(stem + ".channels.csv"), out.with_name(stem + ".events.jsonl")


class CsvWriter:
    """Writes one export from raw lines; :meth:`close` renames the parts into place."""

    def __init__(self, out: Path, columns: Sequence[str], channels: Sequence[Channel],
                 info: RunInfo) -> None:
        self.out = out
        self.channels_out, self.events_out = sidecars(out)
        self._parts = [part_path(p) for p in (out, self.channels_out, self.events_out)]
        names = [c.name for c in channels]
        self._all = names == list(columns)
        index = {c: k for k, c in enumerate(columns)}
        self._keep = [index[n] for n in names]
        self._fh = open(self._parts[0], "wb")  # noqa: SIM115 - closed in close/abort
        self._fh.write((",".join(names) + "\n").encode())
        self._channels = list(channels)

    def write_lines(self, lines: list[bytes]) -> None:
        if self._all:
            self._fh.write(b"".join(lines))
            return
        keep = self._keep
        out = []
        for line in lines:
            fields = line[:-1].split(b",")
            out.append(b",".join([fields[k] for k in keep]) + b"\n")
        self._fh.write(b"".join(out))

    def write_events(self, chunks: Iterable[list[Event]]) -> int:
        n = 0
        with open(self._parts[2], "wb") as fh:
            for events in chunks:
                n += len(events)
                fh.write("".join(e.text + "\n" for e in events).encode("utf-8"))
        return n

    def close(self, info: RunInfo) -> list[Path]:
        self._fh.close()
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["name", "unit", "comment", "value_texts"])
        for ch in self._channels:
            texts = json.dumps({str(k): v for k, v in sorted(ch.texts.items())}) if ch.texts \
                else ""
            w.writerow([ch.name, ch.unit, ch.comment, texts])
        self._parts[1].write_text(buf.getvalue(), encoding="utf-8")
        if not self._parts[2].exists():
            self._parts[2].write_bytes(b"")
        for part, final in zip(self._parts, (self.out, self.channels_out, self.events_out),
                               strict=True):
            part.replace(final)
        return [self.out, self.channels_out, self.events_out]

    def abort(self) -> None:
        self._fh.close()
        for p in self._parts:
            p.unlink(missing_ok=True)
