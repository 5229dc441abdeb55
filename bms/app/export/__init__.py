"""``bms export RUN_DIR --to mf4|parquet|csv``: a run log for engineers' tools.

ticks.csv stays the run's kill-safe live log (bms/runlog.py); this turns a finished, killed or
still running run into ASAM MDF4 (asammdf, CANape, INCA), Parquet (pyarrow, pandas, polars,
DuckDB) or a cleaned CSV, every channel with its unit and comment (:mod:`.channels`), the
events, and the run's properties. The run is streamed: chunks of ``--chunk-rows`` lines are
read (:mod:`.reader`), parsed (:mod:`.convert`) and handed to the writer (:mod:`.mf4`,
:mod:`.parquet`, :mod:`.csvout`) one at a time, so memory does not grow with the run's length.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import fnmatch
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bms.app.errors import (
    CliError,
    DataFileError,
    OutputError,
    Parser,
    UsageError,
    positive_int,
    report,
)
from bms.app.export.channels import Channel, describe
from bms.app.export.info import RunInfo
from bms.app.export.reader import (
    CHUNK_ROWS,
    RunFolder,
    TickLines,
    event_chunks,
    open_run,
    read_meta,
)

FORMATS = ("mf4", "parquet", "csv")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote and read."""

    files: list[Path]
    info: RunInfo
    channels: int
    seconds: float


def select_channels(columns: Sequence[str], globs: Sequence[str] | None) -> list[str]:
    """The columns matching any of ``globs`` (fnmatch, case-sensitive), in file order, time_s
    always first; every column without globs. A glob that matches nothing is a usage error."""
    if not globs:
        return list(columns)
    chosen = set()
    for g in globs:
        hit = fnmatch.filter(columns, g)
        if not hit:
            folded = [c for c in columns if fnmatch.fnmatchcase(c.lower(), g.lower())]
            close = difflib.get_close_matches(g, columns, n=1, cutoff=0.5)
            raise UsageError(
                f"--channels {g!r}: matches no column of ticks.csv"
                + (f" (globs are case-sensitive: {g.lower()!r} matches {len(folded)})"
                   if folded else f"; did you mean {close[0]!r}?" if close else ""),
                "globs as in a shell: 'cell*_voltage_v', 't0?_c', 'pressure_*', 'state' "
                f"(the run has {len(columns)} columns)")
        chosen.update(hit)
    return [c for c in columns if c == "time_s" or c in chosen]


def default_output(run: RunFolder, fmt: str) -> Path:
    return run.path / f"run.{fmt}"


_OUT_HINT = "give -o a file in a folder you can write"


def _writable(out: Path, run: RunFolder) -> None:
    if out.resolve() == run.ticks.resolve() or out.resolve() == (run.path / "events.jsonl"
                                                                 ).resolve():
        raise UsageError(f"-o {out}: is the run's own log; give another file")
    if out.is_dir():
        raise OutputError(f"-o {out}: cannot write (Is a directory)", _OUT_HINT)
    parent = out.parent
    if not parent.is_dir():
        raise OutputError(f"-o {out}: folder {parent} does not exist", _OUT_HINT)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"-o {out}: cannot write (Permission denied: {parent})", _OUT_HINT)


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None,
               channels: Sequence[str] | None = None, chunk_rows: int = CHUNK_ROWS
               ) -> ExportResult:
    """Export the run in ``run_dir`` to ``fmt`` (one of :data:`FORMATS`) at ``out`` (default
    RUN_DIR/run.FMT), the columns matching ``channels`` (globs; all by default), reading
    ``chunk_rows`` lines (of ticks.csv, and of events.jsonl) at a time. Raises
    :class:`~bms.app.errors.CliError` on bad input or an output that cannot be written (nothing
    is left behind then)."""
    if fmt not in FORMATS:
        raise UsageError(f"--to {fmt!r}: not one of {', '.join(FORMATS)}")
    t0 = time.perf_counter()
    run = open_run(run_dir)
    out_path = Path(out) if out is not None else default_output(run, fmt)
    _writable(out_path, run)
    with TickLines(run.ticks, chunk_rows) as ticks:
        names = select_channels(ticks.columns, channels)
        if fmt == "mf4" and len(names) == 1:
            raise UsageError(f"--channels {' '.join(channels or ())}: selects only time_s, the "
                             "MF4 file's master; select a channel besides it")
        chans = [describe(n) for n in names]
        info = RunInfo(run, read_meta(run.events), ticks=ticks.stats)
        writer = None
        try:
            writer = _write_ticks(fmt, out_path, ticks, chans, info)
            if writer is None:
                raise _no_rows(run, ticks)
            if run.events is not None:
                info.n_events = writer.write_events(
                    event_chunks(run.events, info.events, chunk_rows))
            files = writer.close(info)
        except OSError as exc:
            if writer is not None:
                writer.abort()
            raise _output_error(out_path, exc) from None
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
    return ExportResult(files, info, len(chans), time.perf_counter() - t0)


def _write_ticks(fmt: str, out: Path, ticks: TickLines, chans: list[Channel], info: RunInfo):
    """Stream every chunk into a new writer; the writer, or None when no row was complete."""
    writer = None
    if fmt == "csv":
        from bms.app.export.csvout import CsvWriter

        try:
            for _nos, lines in ticks.chunks():
                if writer is None:
                    writer = CsvWriter(out, ticks.columns, chans, info)
                writer.write_lines(lines)
                info.rows += len(lines)
                if info.first_time_s is None:
                    info.first_time_s = _float(lines[0].split(b",", 1)[0])
                info.last_time_s = _float(lines[-1].split(b",", 1)[0])
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        return writer
    from bms.app.export.convert import ChunkParser

    if fmt == "mf4":
        from bms.app.export.mf4 import Mf4Writer as Writer
    else:
        from bms.app.export.parquet import ParquetWriter as Writer  # type: ignore[assignment]
    parser = ChunkParser(str(ticks.path), ticks.columns, chans)
    try:
        for nos, lines in ticks.chunks():
            chunk = parser.parse(nos, lines, ticks.stats)
            if chunk is None:
                continue
            if writer is None:
                writer = Writer(out, chans, info)
            writer.write(chunk)
            info.rows += chunk.rows
            if info.first_time_s is None:
                info.first_time_s = float(chunk.time_s[0])
            info.last_time_s = float(chunk.time_s[-1])
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return writer


def _float(text: bytes) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _no_rows(run: RunFolder, ticks: TickLines) -> DataFileError:
    s = ticks.stats
    why = ("header only" if s.lines == 0 and not s.torn else
           f"{_plural(s.skipped, 'line')} skipped, none complete")
    return DataFileError(f"{run.ticks}: no complete rows ({why}): nothing to export",
                           "the run stopped before its first tick was logged")


def _output_error(out: Path, exc: OSError) -> OutputError:
    why = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC or "No space left" in why:
        return OutputError(f"{out}: cannot write (No space left on device); the partial "
                           "output was removed",
                           "free space on that disk, or give -o a file on another one")
    where = f": {exc.filename}" if exc.filename and str(exc.filename) != str(out) else ""
    return OutputError(f"{out}: cannot write ({why}{where}); the partial output was removed",
                       _OUT_HINT)


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def describe_result(res: ExportResult) -> list[str]:
    """The lines ``bms export`` prints."""
    info = res.info
    span = ""
    if info.first_time_s is not None and info.last_time_s is not None:
        span = f", {info.last_time_s - info.first_time_s:.1f} s of run time"
    lines = [f"wrote {', '.join(str(f) for f in res.files)}: {_plural(info.rows, 'row')} x "
             f"{_plural(res.channels, 'channel')}, {_plural(info.n_events, 'event')}{span} "
             f"in {res.seconds:.1f} s"]
    s = info.ticks
    if s.torn:
        lines.append("skipped the last line of ticks.csv: incomplete (the run was killed "
                     "mid-row, or is still writing)")
    if s.malformed:
        at = ", ".join(str(k) for k in s.first_bad_lines)
        more = ", ..." if s.malformed > len(s.first_bad_lines) else ""
        lines.append(f"skipped {_plural(s.malformed, 'malformed line')} of ticks.csv (wrong "
                     f"number of fields, not a number, or no time_s): line {at}{more}")
    if info.events.skipped:
        lines.append(f"skipped {_plural(info.events.skipped, 'line')} of events.jsonl (torn or "
                     "not a JSON object)")
    if not info.run.finished:
        lines.append("the run has no final summary.json (still running, or killed): exported "
                     "what it had written when the export started")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(
        prog="bms export",
        description="Export a run log (ticks.csv, events.jsonl, summary.json) to ASAM MDF4 "
                    "(asammdf, CANape), Parquet (pyarrow, pandas) or a cleaned CSV: every "
                    "channel with its unit and comment, the events, the run's properties. "
                    "Reads the run in chunks, never whole; a run killed mid-row or still "
                    "running exports its complete lines.",
        epilog="examples:\n"
               "  bms export runs/demo --to mf4                      # -> runs/demo/run.mf4\n"
               "  bms export runs/r1 --to parquet -o r1.parquet      # + r1.events.parquet\n"
               "  bms export runs/r1 --to csv --channels 'cell*_voltage_v' state -o v.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN_DIR", help="the run's log folder (bms run --log "
                        "DIR), or its ticks.csv")
    parser.add_argument("--to", required=True, choices=FORMATS, help="output format")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="FILE",
                        help="file to write (default RUN_DIR/run.FORMAT)")
    parser.add_argument("--channels", nargs="+", metavar="GLOB", default=None,
                        help="only the columns matching these globs (time_s always), e.g. "
                             "'cell*_voltage_v' state 'pressure_*'")
    parser.add_argument("--chunk-rows", type=positive_int, default=CHUNK_ROWS, metavar="N",
                        help=f"rows read and written at a time (default {CHUNK_ROWS})")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        res = export_run(args.run, args.to, args.output, args.channels, args.chunk_rows)
    except CliError as exc:
        return report("export", exc)
    for line in describe_result(res):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
