"""Recorded measurements from files: a cycler export of one cell, or a stack recording (the
BMS's own ``ticks.csv``, or any CSV with its column names).

Formats (the header decides):

- **cycler**, one cell: ``Time [s]``, ``Current [A]``, ``Voltage [V]``, optional
  ``Temperature [degC]`` (the PyBaMM / cycler-export convention; PyBaMM's current is positive
  on discharge, most cyclers' on charge: see ``current_sign``).
- **stack**: ``time_s``, ``current_a``, ``cellNN_voltage_v`` (one per cell), ``tNN_c`` (one per
  thermistor), optional ``pressure_lcNN_kpa`` (one per load cell): the run log's own names
  (:func:`bms.runlog.standard_columns`), so a ``ticks.csv`` replays as it is.

The BMS's sign convention is charge-positive. ``current_sign="auto"`` keeps a stack recording
as it is and decides a cycler file's sign from the data: under a correct sign the voltage rises
when the (charge-positive) current rises, whatever the cell (dV = R dI with R > 0).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bms.app.errors import DataFileError, UnreadableFileError

CURRENT_SIGNS = ("auto", "charge-positive", "discharge-positive")
CYCLER_TIME, CYCLER_CURRENT = "Time [s]", "Current [A]"
CYCLER_VOLTAGE, CYCLER_TEMPERATURE = "Voltage [V]", "Temperature [degC]"
_CELL_V = re.compile(r"^cell(\d+)_voltage_v$")
_THERM = re.compile(r"^t(\d+)_c$")
_LOAD_CELL = re.compile(r"^pressure_lc(\d+)_kpa$")
_STACK_CURRENT = re.compile(r"^current_s(\d+)_a$")
_BALANCE_MASK = re.compile(r"^balance_mask(?:_s(\d+))?$")
# Current steps that count for the sign check: larger than this fraction of the largest step
# (noise on a constant current must not decide it).
_SIGN_STEP_FRACTION = 0.2


class RecordingError(DataFileError):
    """A recording that cannot be read as one of the formats; the message names the file
    (exit class config; a file that cannot be read at all is an UnreadableFileError, I/O)."""


@dataclass
class Recording:
    """Samples in time order. Currents charge-positive. ``pressure_kpa`` None: no load cells
    in the file. ``sign_note``: how the current sign was decided."""

    path: Path
    kind: str  # "cycler" or "stack"
    time_s: np.ndarray  # (N,)
    current_a: np.ndarray  # (N,)
    cell_voltage_v: np.ndarray  # (N, cells)
    temperature_c: np.ndarray  # (N, thermistors)
    pressure_kpa: np.ndarray | None  # (N, load cells)
    sign_note: str = ""
    #: (N, stacks): each board's own current, where a pack log has them (``current_sN_a``)
    stack_current_a: np.ndarray | None = None
    #: (N, stacks): the bleed mask each stack's board was commanded in that row's tick
    #: (``balance_mask`` / ``balance_mask_sN`` of a run log); None: not in the file
    balance_mask: np.ndarray | None = None
    #: ticks from a row's command to the plant interval it acts on: 2 in the pipelined sim
    #: clock, else 1 (the run's events.jsonl meta ``pipelined``; bms.controller
    #: Controller._bleed_flowing)
    command_lag_ticks: int = 1

    @property
    def n_samples(self) -> int:
        return len(self.time_s)

    @property
    def n_cells(self) -> int:
        return self.cell_voltage_v.shape[1]


def read_recording(path: str | Path, current_sign: str = "auto",
                   temperature_c: float | None = None) -> Recording:
    """Read ``path``; ``temperature_c``: the cell temperature when a cycler file has none."""
    p = Path(path)
    if current_sign not in CURRENT_SIGNS:
        raise RecordingError(f"current sign {current_sign!r}: expected one of "
                             + ", ".join(CURRENT_SIGNS))
    header, data = read_csv(p)
    if CYCLER_TIME in header:
        rec = _cycler(p, header, data, temperature_c)
    elif "time_s" in header:
        rec = _stack(p, header, data)
    else:
        raise RecordingError(
            f"{p}: no time column: expected {CYCLER_TIME!r} (a cycler file: {CYCLER_CURRENT!r}, "
            f"{CYCLER_VOLTAGE!r}, {CYCLER_TEMPERATURE!r}) or 'time_s' (a stack recording: "
            f"current_a, cellNN_voltage_v, tNN_c); found {', '.join(header[:8])}"
            + (", ..." if len(header) > 8 else ""))
    _check_time(rec)
    apply_current_sign(rec, current_sign)
    if rec.balance_mask is not None:
        rec.command_lag_ticks = _command_lag(p)
    return rec


def _command_lag(p: Path) -> int:
    """2 when the run beside ``p`` (its events.jsonl meta) ran pipelined, else 1."""
    events = p.parent / "events.jsonl"
    try:
        with events.open(encoding="utf-8") as fh:
            meta = json.loads(fh.readline())
    except (OSError, ValueError):
        return 1
    return 2 if isinstance(meta, dict) and meta.get("pipelined") is True else 1


def read_csv(p: Path) -> tuple[list[str], np.ndarray]:
    """(header, float rows) of a numeric CSV; RecordingError naming the file otherwise
    (UnreadableFileError: the system would not let us read it)."""
    try:
        with p.open(encoding="utf-8") as fh:
            header = [h.strip() for h in fh.readline().rstrip("\n").split(",")]
            try:  # the fast path: a clean numeric file (numpy's C reader)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "input contained no data": said below
                    data = np.loadtxt(fh, delimiter=",", ndmin=2, dtype=float)
                if data.shape[1] == len(header) and len(data):
                    return header, data
            except ValueError:
                pass
            fh.seek(0)
            fh.readline()
            lines = fh.read().splitlines()
    except OSError as exc:
        raise UnreadableFileError(f"{p}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise RecordingError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    return header, _parse_tolerant(p, header, lines)


def _parse_tolerant(p: Path, header: list[str], lines: list[str]) -> np.ndarray:
    """Rows with empty fields (NaN) or a torn last line (a killed run) that numpy's reader
    refuses; a file with many bad rows is of another shape and refused."""
    n = len(header)
    rows: list[list[float]] = []
    bad = 0
    for line in lines:
        fields = line.split(",")
        if len(fields) != n:
            bad += 1
            continue
        try:
            rows.append([float(x) if x.strip() else math.nan for x in fields])
        except ValueError:
            bad += 1
    if not rows:
        raise RecordingError(f"{p}: no data rows with {n} numeric fields")
    if bad > max(1, len(lines) // 1000):
        raise RecordingError(f"{p}: {bad} of {len(lines)} rows are not {n} numbers")
    return np.asarray(rows, dtype=float)


def _cycler(p: Path, header: list[str], data: np.ndarray, temperature_c: float | None
            ) -> Recording:
    for name in (CYCLER_CURRENT, CYCLER_VOLTAGE):
        if name not in header:
            raise RecordingError(f"{p}: cycler file without a {name!r} column")
    col = header.index
    if CYCLER_TEMPERATURE in header:
        temps = data[:, [col(CYCLER_TEMPERATURE)]]
    elif temperature_c is not None:
        temps = np.full((len(data), 1), float(temperature_c))
    else:
        raise RecordingError(f"{p}: no {CYCLER_TEMPERATURE!r} column; give the cell "
                             "temperature (--temperature-c)")
    return Recording(p, "cycler", data[:, col(CYCLER_TIME)], data[:, col(CYCLER_CURRENT)],
                     data[:, [col(CYCLER_VOLTAGE)]], temps, None)


def _numbered(header: list[str], pattern: re.Pattern[str]) -> list[int]:
    found = sorted((int(m.group(1)), i) for i, h in enumerate(header)
                   if (m := pattern.match(h)))
    return [i for _, i in found]


def _stack(p: Path, header: list[str], data: np.ndarray) -> Recording:
    if "current_a" not in header:
        raise RecordingError(f"{p}: stack recording without a 'current_a' column")
    cells, therms = _numbered(header, _CELL_V), _numbered(header, _THERM)
    if not cells:
        raise RecordingError(f"{p}: no cellNN_voltage_v columns")
    if not therms:
        raise RecordingError(f"{p}: no tNN_c thermistor columns")
    loads, currents = _numbered(header, _LOAD_CELL), _numbered(header, _STACK_CURRENT)
    masks = sorted((int(m.group(1) or 1), i) for i, h in enumerate(header)
                   if (m := _BALANCE_MASK.match(h)))
    return Recording(p, "stack", data[:, header.index("time_s")],
                     data[:, header.index("current_a")], data[:, cells], data[:, therms],
                     data[:, loads] if loads else None,
                     stack_current_a=data[:, currents] if currents else None,
                     balance_mask=data[:, [i for _, i in masks]] if masks else None)


def _check_time(rec: Recording) -> None:
    t = rec.time_s
    if not np.all(np.isfinite(t)):
        k = int(np.flatnonzero(~np.isfinite(t))[0])
        raise RecordingError(f"{rec.path}: time is not a number in data row {k + 1}")
    back = np.flatnonzero(np.diff(t) <= 0.0)
    if back.size:
        k = int(back[0]) + 1
        raise RecordingError(f"{rec.path}: time does not increase at data row {k + 1} "
                             f"({t[k - 1]:g} s -> {t[k]:g} s): two runs in one file, or "
                             "unsorted rows")
    if rec.n_samples < 2:
        raise RecordingError(f"{rec.path}: fewer than two samples")


def voltage_follows_current(current_a: np.ndarray, voltage_v: np.ndarray) -> float:
    """Correlation of voltage steps with current steps at the large current steps (pulse
    edges): > 0 when the current is charge-positive. NaN without such steps."""
    di = np.diff(current_a)
    dv = np.diff(np.nanmean(voltage_v, axis=1) if voltage_v.ndim == 2 else voltage_v)
    big = np.abs(di) >= _SIGN_STEP_FRACTION * np.nanmax(np.abs(di), initial=0.0)
    big &= np.isfinite(di) & np.isfinite(dv) & (np.abs(di) > 0)
    if big.sum() < 2:
        return math.nan
    return float(np.corrcoef(di[big], dv[big])[0, 1])


def apply_current_sign(rec: Recording, current_sign: str) -> None:
    """Make ``rec``'s current charge-positive as ``current_sign`` says (auto: from the data;
    a given sign the data contradicts is refused); ``rec.sign_note`` says what was done.
    Shared with ``bms fit``."""
    corr = voltage_follows_current(rec.current_a, rec.cell_voltage_v)
    if current_sign == "discharge-positive":
        rec.current_a = -rec.current_a
        if rec.stack_current_a is not None:
            rec.stack_current_a = -rec.stack_current_a
        rec.sign_note = "current discharge-positive in the file (as given), negated"
    elif current_sign == "charge-positive":
        rec.sign_note = "current charge-positive in the file (as given)"
    elif rec.kind == "stack":
        rec.sign_note = "current charge-positive (the run log's convention)"
    elif math.isnan(corr):
        raise RecordingError(f"{rec.path}: no current steps to tell the current's sign from; "
                             "give --current-sign charge-positive|discharge-positive")
    elif corr < 0:
        rec.current_a = -rec.current_a
        rec.sign_note = (f"current discharge-positive in the file (voltage falls as it rises: "
                         f"step correlation {corr:.2f}), negated")
    else:
        rec.sign_note = (f"current charge-positive in the file (step correlation {corr:.2f})")
    after = -corr if rec.sign_note.endswith("negated") else corr
    if current_sign != "auto" and not math.isnan(after) and after < -0.5:
        raise RecordingError(
            f"{rec.path}: with --current-sign {current_sign} the voltage falls when the "
            f"charge current rises (step correlation {corr:.2f}): the sign is inverted")
