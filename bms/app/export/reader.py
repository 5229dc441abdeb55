"""A run folder read in chunks: ticks.csv lines and events.jsonl objects, never the whole run.

The run log is append-only and kill-safe (bms/runlog.py): every complete line ends with a
newline, a run killed mid-row leaves a last line without one, and a run still being written
grows while we read. So the readers take the file's size once, at open, and read up to the last
newline within it: what a later write adds is not part of this export, a torn last line is
skipped and counted. A line with the wrong number of fields is skipped and counted too.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from bms.app.errors import DataFileError, UnreadableFileError
from bms.runlog import EVENTS, SUMMARY, TICKS

#: Rows per chunk: ~7 MB of ticks.csv text for ssb-4x23's 438 columns, ~3.5 MB as float64;
#: larger chunks did not export faster on this machine (docs/architecture.md "Logs and export").
CHUNK_ROWS = 2000
#: Events per chunk (an event line is ~100-300 bytes).
EVENT_CHUNK = 5000
_TAIL = 1 << 16  # bytes read back from the end to find the last newline
_HINT = ("bms export takes a run's log folder (the --log DIR of bms run or bms demo), or its "
         "ticks.csv")


@dataclass
class LineStats:
    """What a reader skipped, by reason (line numbers are 1-based, the header is line 1)."""

    lines: int = 0            # complete data lines read
    torn: int = 0             # a last line without its newline (killed mid-row, or still writing)
    malformed: int = 0        # a wrong number of fields, or values that are not numbers
    first_bad_lines: list[int] = field(default_factory=list)  # up to 5, for the message

    def bad(self, line_no: int) -> None:
        self.malformed += 1
        if len(self.first_bad_lines) < 5:
            self.first_bad_lines.append(line_no)

    @property
    def skipped(self) -> int:
        return self.torn + self.malformed


@dataclass(frozen=True)
class RunFolder:
    """A run's folder: its ticks.csv and, when present, events.jsonl and summary.json."""

    path: Path
    ticks: Path
    events: Path | None
    summary: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        """The run wrote its final summary (not still running, not killed)."""
        return bool(self.summary and self.summary.get("final"))


def open_run(path: str | Path) -> RunFolder:
    """The run folder at ``path`` (or the folder of a ticks.csv given itself); a clear error
    when it is missing (exit 5) or not a run (exit 3)."""
    p = Path(path)
    if not p.exists():
        raise UnreadableFileError(f"{p}: cannot read (No such file or directory)", _HINT)
    if p.is_file() and p.name == TICKS:
        p = p.parent
    if not p.is_dir():
        raise DataFileError(f"{p}: not a run folder (a file)", _HINT)
    ticks = p / TICKS
    if not ticks.is_file():
        raise DataFileError(f"{p}: not a run folder (no {TICKS})", _HINT)
    events = p / EVENTS
    return RunFolder(p, ticks, events if events.is_file() else None, _summary(p / SUMMARY))


def _summary(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent (killed before its first minute) or unreadable
        return None
    return obj if isinstance(obj, dict) else None


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise UnreadableFileError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _complete_end(fh: BinaryIO) -> tuple[int, bool]:
    """Offset just past the last newline of the file as it is now, and whether bytes follow it
    (a torn last line)."""
    size = os.fstat(fh.fileno()).st_size
    pos = size
    while pos > 0:
        start = max(0, pos - _TAIL)
        fh.seek(start)
        block = fh.read(pos - start)
        k = block.rfind(b"\n")
        if k >= 0:
            end = start + k + 1
            fh.seek(0)
            return end, end < size
        pos = start
    fh.seek(0)
    return 0, size > 0


class TickLines:
    """ticks.csv as its header and chunks of complete data lines (bytes, each with its
    newline), at most ``chunk_rows`` per chunk. Use as a context manager."""

    def __init__(self, path: Path, chunk_rows: int = CHUNK_ROWS) -> None:
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        self.path, self.chunk_rows = path, chunk_rows
        self.stats = LineStats()
        self._fh = _open(path)
        try:
            self._end, torn = _complete_end(self._fh)
            self.stats.torn = int(torn)
            header = self._fh.readline() if self._end > 0 else b""
        except OSError as exc:
            self._fh.close()
            raise UnreadableFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
        if not header:
            self._fh.close()
            raise DataFileError(f"{path}: empty (no header line): the run wrote nothing")
        try:
            names = header.decode("utf-8").rstrip("\n").split(",")
        except UnicodeDecodeError:
            self._fh.close()
            raise DataFileError(f"{path}: not a run log (the header is not UTF-8 text)"
                                  ) from None
        if names[0] != "time_s":
            self._fh.close()
            raise DataFileError(f"{path}: not a run log: the header's first column is "
                                  f"{names[0][:40]!r}, not time_s")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            self._fh.close()
            raise DataFileError(f"{path}: not a run log: column {dup[0]!r} appears twice")
        self.columns = names
        self._pos = len(header)
        self._line_no = 1

    def chunks(self) -> Iterator[tuple[Sequence[int], list[bytes]]]:
        """(each line's number in the file, the lines); lines with the wrong number of fields
        are left out (counted in :attr:`stats`)."""
        commas = len(self.columns) - 1
        fh, end, n = self._fh, self._end, self.chunk_rows
        while self._pos < end:
            lines: list[bytes] = []
            first = self._line_no + 1
            skipped: list[int] = []
            while len(lines) < n and self._pos < end:
                line = fh.readline()
                if not line:  # the file shrank under us: stop at what we have
                    self._pos = end
                    break
                self._pos += len(line)
                self._line_no += 1
                self.stats.lines += 1
                if line.count(b",") == commas:
                    lines.append(line)
                else:
                    self.stats.bad(self._line_no)
                    skipped.append(self._line_no)
            if lines:
                nos: Sequence[int] = range(first, first + len(lines))
                if skipped:
                    gone = set(skipped)
                    nos = [k for k in range(first, self._line_no + 1) if k not in gone]
                yield nos, lines

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> TickLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Event:
    """One events.jsonl line: its time (the previous event's when it has none, so that the
    events' time base never goes back), its type and the line itself (JSON)."""

    time_s: float
    type: str
    text: str


def read_meta(events: Path | None) -> dict[str, Any]:
    """The run's ``meta`` event (pack, clock, tick, ports, ...; the first line), or {}."""
    if events is None:
        return {}
    try:
        with open(events, "rb") as fh:
            line = fh.readline()
        obj = json.loads(line) if line.endswith(b"\n") else None
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) and obj.get("type") == "meta" else {}


def event_chunks(path: Path, stats: LineStats, chunk: int = EVENT_CHUNK
                 ) -> Iterator[list[Event]]:
    """events.jsonl in chunks of :class:`Event`; torn and corrupt lines skipped (counted)."""
    with _open(path) as fh:
        end, torn = _complete_end(fh)
        stats.torn += int(torn)
        pos, line_no, last_t = 0, 0, 0.0
        out: list[Event] = []
        while pos < end:
            line = fh.readline()
            if not line:
                break
            pos += len(line)
            line_no += 1
            stats.lines += 1
            text = line.decode("utf-8", errors="replace").rstrip("\n")
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                stats.bad(line_no)
                continue
            t = obj.get("time_s")
            if isinstance(t, (int, float)) and math.isfinite(t):
                last_t = max(last_t, float(t))
            out.append(Event(last_t, str(obj.get("type", "")), text))
            if len(out) >= chunk:
                yield out
                out = []
        if out:
            yield out
