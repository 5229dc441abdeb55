"""ASAM MDF 4.10 through asammdf: one channel group ``ticks`` (master time_s, every exported
column with its unit, comment and, for codes, a value-to-text conversion), one group
``events`` (each events.jsonl line as a text channel ``event`` and its ``event_type``, on the
events' own time base), the run's properties in the header comment (``common_properties``),
a file-history entry of the export, and summary.json as an embedded attachment.

Streaming: the first chunk is ``MDF.append``-ed, every later one ``MDF.extend``-ed; asammdf
keeps the appended samples in a temporary file (here beside the output, so a full disk is the
output's disk), not in memory, and ``save`` copies them into the output, deflate-compressed
(DZ blocks, MDF 4.10). The output is written as ``FILE.part`` and renamed when complete.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from asammdf import MDF, Signal
from asammdf.blocks.v4_blocks import FileHistory

from bms.app.export.channels import Channel
from bms.app.export.convert import Chunk
from bms.app.export.info import RunInfo, part_path, summary_bytes
from bms.app.export.reader import Event

TICKS_GROUP = "ticks"
EVENTS_GROUP = "events"
#: deflate (asammdf compression 1): 126 MB -> 39 MB for an hour of ssb-4x23 in 1.2 s more;
#: transposed deflate (2) came out larger (54 MB) on these columns.
COMPRESSION = 1


def _conversion(texts: dict[int, str] | None) -> dict[str, object] | None:
    """An MF4 value-to-text conversion (CC type 'value to text') for a coded channel."""
    if not texts:
        return None
    conv: dict[str, object] = {}
    for k, (value, text) in enumerate(sorted(texts.items())):
        conv[f"val_{k}"] = value
        conv[f"text_{k}"] = text
    conv["default_addr"] = "unknown code"
    return conv


class Mf4Writer:
    """Writes one export; :meth:`close` saves it (or :meth:`abort` drops it)."""

    def __init__(self, out: Path, channels: Sequence[Channel], info: RunInfo) -> None:
        self.out = out
        self.channels = list(channels)
        self._part = part_path(out)
        self._mdf = MDF(version="4.10", temporary_folder=str(out.parent))
        self._group: int | None = None

    def write(self, chunk: Chunk) -> None:
        if self._group is None:
            t = chunk.time_s
            signals = [
                Signal(v, t, name=ch.name, unit=ch.unit, comment=ch.comment,
                       conversion=_conversion(ch.texts),
                       # integer channels carry an invalidation bit (a NaN in the log)
                       invalidation_bits=(None if ch.dtype == "float64" else
                                          (bad if bad is not None else np.zeros(len(t), bool))))
                for ch, v, bad in zip(self.channels[1:], chunk.values, chunk.invalid,
                                      strict=True)]
            self._group = self._mdf.append(
                signals, acq_name=TICKS_GROUP,
                comment="ticks.csv of the run: one sample per controller tick")
            self._master_comment()
            return
        n = chunk.rows
        self._mdf.extend(self._group, [(chunk.time_s, None)] + [
            (v, None if ch.dtype == "float64" else
             (bad if bad is not None else np.zeros(n, bool)))
            for ch, v, bad in zip(self.channels[1:], chunk.values, chunk.invalid, strict=True)])

    def _master_comment(self) -> None:
        master = self.channels[0]
        group = self._mdf.groups[self._group or 0]
        for ch in group.channels:
            if ch.name == "time":  # asammdf names the master it makes "time"
                ch.name, ch.unit, ch.comment = master.name, master.unit, master.comment

    def write_events(self, chunks: Iterable[list[Event]]) -> int:
        """The events as text channels; returns how many."""
        group, n = None, 0
        for events in chunks:
            t = np.array([e.time_s for e in events], dtype=np.float64)
            text = np.array([e.text.encode("utf-8") for e in events])
            kind = np.array([e.type.encode("utf-8") for e in events])
            n += len(events)
            if group is None:
                group = self._mdf.append([
                    Signal(text, t, name="event", encoding="utf-8",
                           comment="one events.jsonl line (JSON): states, faults, run events"),
                    Signal(kind, t, name="event_type", encoding="utf-8",
                           comment="the event's type (state, fault, contactor, run, ...)")],
                    acq_name=EVENTS_GROUP,
                    comment="events.jsonl of the run, on its own time base (time_s of each "
                            "event; an event without one takes the previous event's)")
            else:
                self._mdf.extend(group, [(t, None), (text, None), (kind, None)])
        return n

    def close(self, info: RunInfo) -> list[Path]:
        mdf = self._mdf
        mdf.header.comment = _header_comment(info)
        start = info.start_time()
        if start is not None:
            mdf.header.start_time = start
        summary = summary_bytes(info.run)
        if summary is not None:
            mdf.attach(summary, file_name="summary.json", comment="the run's summary.json",
                       mime="application/json", embedded=True, compression=True)
        now = dt.datetime.now(dt.UTC)
        history = FileHistory()
        history.abs_time = int(now.timestamp() * 1e9)
        history.tz_offset = history.daylight_save_time = 0
        history.comment = _history_comment(info)
        mdf.file_history = [history]
        with open(self._part, "wb+") as fh:
            mdf.save(fh, compression=COMPRESSION, add_history_block=False)
        mdf.close()
        self._part.replace(self.out)
        return [self.out]

    def abort(self) -> None:
        try:
            self._mdf.close()
        except Exception:  # noqa: BLE001, S110 - already failing; the part file goes next
            pass
        self._part.unlink(missing_ok=True)


def _header_comment(info: RunInfo) -> str:
    root = ET.Element("HDcomment")
    ET.SubElement(root, "TX").text = info.description()
    common = ET.SubElement(root, "common_properties")
    for name, value in info.properties().items():
        ET.SubElement(common, "e", name=name).text = value
    return ET.tostring(root, encoding="unicode")


def _history_comment(info: RunInfo) -> str:
    root = ET.Element("FHcomment")
    ET.SubElement(root, "TX").text = (
        f"bms export of {info.run.path}: {info.rows} rows, {info.n_events} events, "
        f"{info.ticks.skipped} tick line(s) skipped")
    props = info.properties()
    ET.SubElement(root, "tool_id").text = "bms export"
    ET.SubElement(root, "tool_vendor").text = "ssb-bms"
    ET.SubElement(root, "tool_version").text = props["exported_by"].split("ssb-bms ")[-1][:-1]
    return ET.tostring(root, encoding="unicode")
