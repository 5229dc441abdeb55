"""Cycler files for ``bms fit``: read one test (time, current, voltage, temperature) with a
column mapping and the current-sign option, and cut it into runs of rest, charge and discharge.

The CSV reader and the current-sign decision are bms.app.recording's (``read_csv``,
``apply_current_sign``), the same as ``bms replay``'s: a file that replays also fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bms.app.errors import DataFileError, UsageError
from bms.app.recording import (
    CURRENT_SIGNS,
    CYCLER_CURRENT,
    CYCLER_TEMPERATURE,
    CYCLER_TIME,
    CYCLER_VOLTAGE,
    Recording,
    RecordingError,
    apply_current_sign,
    read_csv,
)

#: The cycler convention, recognised without a mapping (PyBaMM's and most exports' names).
DEFAULT_COLUMNS = {"time": CYCLER_TIME, "current": CYCLER_CURRENT, "voltage": CYCLER_VOLTAGE,
                   "temperature": CYCLER_TEMPERATURE}
#: A sample is at rest when |I| is below this fraction of the file's largest |I| (1 %: 50 mA
#: for a 1C pulse on a 5 Ah cell, 2.5 mA in a C/20 test; above a cycler's offset, below any
#: test current; assumption).
REST_FRACTION = 0.01
MIN_SAMPLES = 20


class FitError(DataFileError):
    """Input the fit cannot use; the message names the file and what is wrong."""


@dataclass
class Trace:
    """One cycler test, in time order; current charge-positive (the BMS's convention)."""

    path: Path
    time_s: np.ndarray
    current_a: np.ndarray
    voltage_v: np.ndarray
    temperature_c: np.ndarray  # NaN where not measured
    sign_note: str

    @property
    def dt_s(self) -> np.ndarray:
        """Each sample's interval (the core's convention: sample k's current over
        (t[k-1], t[k]]); the first sample 0."""
        return np.diff(self.time_s, prepend=self.time_s[0])

    @property
    def charge_as(self) -> np.ndarray:
        """Charge into the cell up to each sample (A s), counted as the core counts it."""
        return np.cumsum(self.current_a * self.dt_s)

    @property
    def temperature_median_c(self) -> float:
        return float(np.nanmedian(self.temperature_c))


@dataclass(frozen=True)
class Run:
    """Samples start..stop-1 of one kind: 0 rest, +1 charge, -1 discharge."""

    kind: int
    start: int
    stop: int

    def duration_s(self, trace: Trace) -> float:
        end = min(self.stop, len(trace.time_s) - 1)
        return float(trace.time_s[end] - trace.time_s[self.start])


def parse_columns(spec: str | None) -> dict[str, str]:
    """``time=..,current=..,voltage=..,temperature=..`` (any subset) over the defaults; a
    malformed spec is a UsageError (a command-line value)."""
    columns = dict(DEFAULT_COLUMNS)
    if not spec:
        return columns
    for part in spec.split(","):
        key, sep, name = part.partition("=")
        key, name = key.strip(), name.strip()
        if not sep or key not in DEFAULT_COLUMNS or not name:
            raise UsageError(f"--columns {spec!r}: expected KEY=COLUMN pairs separated by commas, "
                           f"KEY one of {', '.join(DEFAULT_COLUMNS)} (got {part!r})")
        columns[key] = name
    return columns


def read_trace(path: str | Path, current_sign: str = "auto",
               columns: dict[str, str] | None = None) -> Trace:
    """Read one cycler test. Rows with NaN time, current or voltage are refused (naming the
    row): a fit must not silently bridge a gap in the charge count."""
    p = Path(path)
    cols = columns or DEFAULT_COLUMNS
    if current_sign not in CURRENT_SIGNS:
        raise FitError(f"current sign {current_sign!r}: expected one of "
                       + ", ".join(CURRENT_SIGNS))
    try:
        header, data = read_csv(p)
    except RecordingError as exc:
        raise FitError(str(exc)) from None
    missing = [f"{k} {cols[k]!r}" for k in ("time", "current", "voltage")
               if cols[k] not in header]
    if missing:
        raise FitError(f"{p}: no column {', '.join(missing)}; found "
                       f"{', '.join(header[:8])}{', ...' if len(header) > 8 else ''} "
                       "(map yours with --columns time=..,current=..,voltage=..,temperature=..)")
    t, i, v = (data[:, header.index(cols[k])] for k in ("time", "current", "voltage"))
    if cols["temperature"] not in header:
        raise FitError(f"{p}: no temperature column {cols['temperature']!r} (each test's "
                       "temperature is its own column's median; map it with --columns "
                       "temperature=NAME)")
    temp = data[:, header.index(cols["temperature"])]
    for name, arr in (("time", t), ("current", i), ("voltage", v)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise FitError(f"{p}: {name} is not a number in data row {int(bad[0]) + 1} "
                           f"({bad.size} rows): remove or repair them")
    if len(t) < MIN_SAMPLES:
        raise FitError(f"{p}: {len(t)} samples; a test has at least {MIN_SAMPLES}")
    back = np.flatnonzero(np.diff(t) <= 0.0)
    if back.size:
        k = int(back[0]) + 1
        raise FitError(f"{p}: time does not increase at data row {k + 1} "
                       f"({t[k - 1]:g} s -> {t[k]:g} s)")
    if not np.any(np.isfinite(temp)):
        raise FitError(f"{p}: the temperature column {cols['temperature']!r} has no number")
    if not np.all((v > 0.5) & (v < 6.0)):
        k = int(np.flatnonzero(~((v > 0.5) & (v < 6.0)))[0])
        raise FitError(f"{p}: voltage {v[k]:g} V in data row {k + 1} is not a cell voltage "
                       "(0.5..6 V): a stack file, or the wrong column?")
    rec = Recording(p, "cycler", t, i.copy(), v[:, None], temp[:, None], None)
    try:
        apply_current_sign(rec, current_sign)
    except RecordingError as exc:
        raise FitError(str(exc)) from None
    return Trace(p, t, rec.current_a, v, temp, rec.sign_note)


def runs(trace: Trace) -> list[Run]:
    """The test as runs of rest / charge / discharge (REST_FRACTION of the largest |I|)."""
    i = trace.current_a
    limit = REST_FRACTION * float(np.max(np.abs(i)))
    kind = np.where(np.abs(i) <= limit, 0, np.sign(i)).astype(int)
    edges = np.flatnonzero(np.diff(kind)) + 1
    starts = np.concatenate(([0], edges))
    stops = np.concatenate((edges, [len(i)]))
    return [Run(int(kind[a]), int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


def describe_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.0f} s"
