"""What an export says about its run (MF4 header, Parquet schema metadata, the CSV's sidecar):
the run's meta event, its summary's key figures, and what the export read and skipped."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bms.app.export.reader import LineStats, RunFolder
from bms.runlog import LOCK, SUMMARY

#: The meta event's keys an export repeats as properties (the rest stays in the events).
META_KEYS = ("pack", "pack_file", "clock", "tick_s", "ports", "scenario", "command",
             "pipelined", "scheduling", "truth_dir")


@dataclass
class RunInfo:
    """The run and the export's counts (filled while the export reads)."""

    run: RunFolder
    meta: dict[str, Any]
    ticks: LineStats = field(default_factory=LineStats)
    events: LineStats = field(default_factory=LineStats)
    rows: int = 0
    n_events: int = 0
    first_time_s: float | None = None
    last_time_s: float | None = None

    def properties(self) -> dict[str, str]:
        """Flat name -> text: the run's meta, its summary's end state, the export's counts."""
        out = {k: _text(self.meta[k]) for k in META_KEYS if k in self.meta}
        s = self.run.summary or {}
        run = s.get("run") if isinstance(s.get("run"), dict) else {}
        stop = s.get("stop") if isinstance(s.get("stop"), dict) else {}
        out.update({
            "run_folder": str(self.run.path),
            "run_finished": "yes" if self.run.finished else
                            "no (no final summary.json: still running, or killed)",
            "final_state": _text(run.get("state", stop.get("state", ""))),
            "stopped_by": _text(stop.get("by", "")),
            "rows": str(self.rows),
            "first_time_s": _text(self.first_time_s),
            "last_time_s": _text(self.last_time_s),
            "events": str(self.n_events),
            "skipped_tick_lines": str(self.ticks.skipped),
            "skipped_event_lines": str(self.events.skipped),
            "exported_by": f"bms export (ssb-bms {_version()})",
        })
        return {k: v for k, v in out.items() if v != ""}

    def description(self) -> str:
        m = self.meta
        what = f"ssb-bms run of pack {m.get('pack', '?')}"
        if "clock" in m:
            what += f", {m['clock']} clock"
        if "tick_s" in m:
            what += f", tick {m['tick_s']} s"
        return f"{what}; exported by bms export from {self.run.path}"

    def start_time(self) -> dt.datetime | None:
        """When the run claimed its folder (bms.lock's mtime; bms/runlog.py writes the owner's
        pid into it at the start); None without the lock file."""
        try:
            mtime = (self.run.path / LOCK).stat().st_mtime
        except OSError:
            return None
        return dt.datetime.fromtimestamp(mtime, tz=dt.UTC)


def _version() -> str:
    try:
        return importlib.metadata.version("ssb-bms")
    except importlib.metadata.PackageNotFoundError:  # a checkout run without an install
        return "unknown version"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.10g}"
    if isinstance(value, (dict, bool)):
        return json.dumps(value)
    return str(value)


def summary_bytes(run: RunFolder) -> bytes | None:
    """summary.json as written (for an MF4 attachment)."""
    try:
        return (run.path / SUMMARY).read_bytes()
    except OSError:
        return None


def part_path(out: Path) -> Path:
    """Where a writer writes before the final rename (same folder: the rename is atomic)."""
    return out.with_name(out.name + ".part")
