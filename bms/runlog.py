"""Run log: ticks.csv (one row per tick), events.jsonl (one JSON object per line), summary.json.

Crash safety: every event goes to the kernel with one ``os.write`` on an unbuffered file
descriptor, and so does every row unless the log batches them (``batch_rows``: the
controller's sim clock only), so a process killed with SIGKILL leaves every complete line
readable (the data is in the page cache; only a power loss needs ``fsync``, done at ``close``).
The readers tolerate a torn last line anyway (a line without its newline is dropped). A
batching log holds at most ``batch_rows`` rows (the controller: one simulated second,
:data:`SIM_ROW_BATCH_S`) and writes them, in one ``os.write``, when the batch is full, before
and right after any event (a fault raised or cleared, a state change: the rows up to it and
its own tick's row reach the kernel with it), at :meth:`RunLog.flush` (the controller's
``run`` ends with one, whatever ends it) and at ``close``: a SIGKILL of a sim-clock run loses
at most the last simulated second of rows, and the run can be made again from its seed (the
sim clock is deterministic). The real clock keeps one write per row.

Disk full (or any OSError on write) never raises into the controller: the row or event is
dropped and counted; the first failure and a later recovery are reported as events (if the
events file can still be written) and in the summary. A partial write is truncated back to the
last complete line so that later rows are not glued to a fragment.

Ownership: a run owns its folder while it writes it: ``bms.lock`` in the folder holds an
exclusive ``flock`` and the owner's pid (the kernel releases it when the process ends, even by
SIGKILL), so a second run into the same folder is refused naming the first one's pid instead
of interleaving rows in one ticks.csv. Claims in one process are counted (``bms run`` claims
the folder before it starts emulators; the controller's RunLog claims it again).

summary.json is written atomically (temp file, fsync, rename) whenever :meth:`RunLog.
submit_summary` is called (``bms run``: every minute of run time; from a thread, so the tick
never waits on fsync) and at close, so a run killed
or stopped by a full disk keeps its last summary. A failed write removes its temp file (no
0-byte leftover); the final one, on ENOSPC, frees ``summary.reserve`` (space set aside at open,
after ticks.csv and events.jsonl are closed) and tries again once, so the final summary reaches
a disk that filled up during the run.

Column naming (units in the names): see :func:`standard_columns`. The column set is fixed when
the log is opened; rows are sequences in that order or mappings by name.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from operator import is_not
from pathlib import Path
from typing import Any

import numpy as np

TICKS = "ticks.csv"
EVENTS = "events.jsonl"
SUMMARY = "summary.json"
LOCK = "bms.lock"
RESERVE = "summary.reserve"
#: Rows a sim-clock controller's log holds before one write (in simulated seconds of ticks): the
#: row's ``os.write`` was ~6 us of a ~85 us tick (docs/architecture.md "Performance"), and a
#: sim run killed by SIGKILL can be made again from its seed. Assumption: one second bounds what
#: a kill loses to what a reader tailing ticks.csv hardly notices.
SIM_ROW_BATCH_S = 1.0
#: Space set aside for the final summary.json (a 4-stack run's summary with a few hundred
#: fault records is ~100 KiB; assumption, measured on ssb-4x23 runs with faults injected).
RESERVE_BYTES = 256 * 1024


class LogDirInUseError(RuntimeError):
    """Another live process owns the log folder (its pid read from the lock file)."""

    def __init__(self, directory: Path, pid: int | None) -> None:
        self.directory, self.pid = directory, pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"log folder {directory} is in use by {who} (a run writing it)")


# Folder (resolved) -> [lock fd, claims] for the folders this process owns.
_claims: dict[Path, list[int]] = {}


def claim_log_dir(directory: str | Path) -> Path:
    """Create ``directory`` if needed and own it (see the module doc); LogDirInUseError when a live
    process owns it, OSError when it cannot be created or locked. Returns the folder."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = d.resolve()
    held = _claims.get(key)
    if held is not None:
        held[1] += 1
        return d
    # Not inherited by child processes (Python's default): an emulator must not hold it.
    fd = os.open(key / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        finally:
            os.close(fd)
        raise LogDirInUseError(d, int(text) if text.isdigit() else None) from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _claims[key] = [fd, 1]
    return d


def release_log_dir(directory: str | Path) -> None:
    """Drop one claim of :func:`claim_log_dir`; the last one unlocks (the file stays: removing
    it could let two later runs lock two different files of one name)."""
    key = Path(directory).resolve()
    held = _claims.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _claims[key]
        os.close(held[0])  # closing the last descriptor releases the flock


def standard_columns(
    n_cells: int, n_thermistors: int, n_load_cells: int, n_stacks: int = 1,
    extra: Iterable[str] = (),
) -> list[str]:
    """The recommended column set (what ``bms plot`` knows how to draw).

    Cells and sensors are numbered pack-wide from 1, zero-padded to two digits (three above 99).
    Per-stack quantities get an ``_sN`` suffix before the unit when the pack has more than one
    stack (``pressure_expected_s2_kpa``, ``balance_mask_s2``); such a pack also logs each
    board's own current (``current_s2_a``) beside the pack current it uses (their median).
    """
    w = 3 if max(n_cells, n_thermistors, n_load_cells) > 99 else 2

    def per_stack(stem: str, unit: str) -> list[str]:
        if n_stacks == 1:
            return [f"{stem}{unit}"]
        return [f"{stem}_s{k + 1}{unit}" for k in range(n_stacks)]

    cols = ["time_s", "state", "current_a", "stack_voltage_v", "bus_voltage_v"]
    if n_stacks > 1:  # each board's own current reading (current_a is their median)
        cols += per_stack("current", "_a")
    cols += [f"cell{i + 1:0{w}d}_voltage_v" for i in range(n_cells)]
    cols += [f"cell{i + 1:0{w}d}_soc" for i in range(n_cells)]
    cols += [f"cell{i + 1:0{w}d}_soc_sigma" for i in range(n_cells)]
    cols += [f"cell{i + 1:0{w}d}_leak_a" for i in range(n_cells)]
    cols += [f"t{i + 1:0{w}d}_c" for i in range(n_thermistors)]
    cols += [f"pressure_lc{i + 1:0{w}d}_kpa" for i in range(n_load_cells)]
    cols += per_stack("pressure_expected", "_kpa") + per_stack("pressure_residual", "_kpa")
    # the stack's dendrite-safe (CCD) charge limit, bms/charging.py; NaN: the pack has none
    cols += per_stack("ccd_limit", "_a")
    cols += ["charge_limit_a", "discharge_limit_a", "outputs"]
    cols += per_stack("balance_mask", "")
    cols += ["faults_active", "tick_duration_s"]
    cols += list(extra)
    return cols


class TickRow:
    """The controller's ticks.csv row in :func:`standard_columns` order (no ``extra``), kept as
    consecutive float64 segments for :meth:`RunLog.row_segments`: the per-cell and per-sensor
    arrays themselves (formatted in place by the C formatter, never copied) with the scalars in
    two small buffers around them. ``load_cells``: load cells per stack, in pack order.
    ``segments`` changes only through the methods here, which count each change in
    ``version`` (the formatter rebinds its pointers only then)."""

    def __init__(self, load_cells: Sequence[int]) -> None:
        n_st = len(load_cells)
        self.n_stacks = n_st
        # time, state, current, stack and bus voltage (+ each board's current, several stacks)
        self._head = np.full(5 + (n_st if n_st > 1 else 0), np.nan)
        # pressure expected and residual and CCD limit per stack, limits, outputs, masks,
        # faults, duration
        self._tail = np.full(4 * n_st + 5, np.nan)
        self._no_pressure = [np.full(k, np.nan) for k in load_cells]  # a stack without data
        self.segments: list[np.ndarray] = (
            [self._head] + [np.empty(0)] * 5 + list(self._no_pressure) + [self._tail])
        self.version = 0

    def set_stack(self, k: int, current_a: float, pressure_kpa: np.ndarray,
                  pressure_expected_kpa: float, pressure_residual_kpa: float,
                  ccd_limit_a: float = math.nan) -> None:
        """Stack ``k``'s latest data (kept for later rows until the next call)."""
        if self.n_stacks > 1:
            self._head[5 + k] = current_a
        if self.segments[6 + k] is not pressure_kpa:
            self.segments[6 + k] = pressure_kpa
            self.version += 1
        self._tail[k] = pressure_expected_kpa
        self._tail[self.n_stacks + k] = pressure_residual_kpa
        self._tail[2 * self.n_stacks + k] = ccd_limit_a

    def fill(self, time_s: float, state: int, current_a: float, stack_voltage_v: float,
             bus_voltage_v: float, cells: Sequence[np.ndarray], charge_limit_a: float,
             discharge_limit_a: float, outputs: int, balance_masks: np.ndarray,
             faults_active: int, tick_duration_s: float) -> list[np.ndarray]:
        """This tick's segments. ``cells``: the pack-wide cell voltage, SOC, SOC sigma and leak
        arrays, then the thermistor temperatures (in column order)."""
        self._head[:5] = (time_s, state, current_a, stack_voltage_v, bus_voltage_v)
        tail, n_st = self._tail, self.n_stacks
        k = 3 * n_st
        tail[k:k + 3] = (charge_limit_a, discharge_limit_a, outputs)
        k += 3
        tail[k:k + n_st] = balance_masks
        tail[k + n_st:k + n_st + 2] = (faults_active, tick_duration_s)
        self.set_cells(cells)
        return self.segments

    def set_cells(self, cells: Sequence[np.ndarray]) -> None:
        """The pack-wide cell voltage, SOC, SOC sigma and leak arrays, then the thermistor
        temperatures (in column order), as this row's segments."""
        segs = self.segments
        c0, c1, c2, c3, c4 = cells
        if (segs[1] is not c0 or segs[2] is not c1 or segs[3] is not c2 or segs[4] is not c3
                or segs[5] is not c4):
            segs[1:6] = cells
            self.version += 1


def stack_snapshot(name: str, lost: bool, data: Any, out: Any, balance_mask: int
                   ) -> dict[str, Any]:
    """One stack of :func:`tick_snapshot`: ``data`` a validated measurement and ``out`` the
    core's estimates (either None before the stack's first data)."""
    d, o = data, out
    r = _snapshot_list
    return {
        "name": name,
        "lost": lost,
        # A channel validation rejected is NaN here, null on the socket: never a reading of 0.
        "cell_voltage_v": [] if d is None else r(d.cell_voltage_v, "_v"),
        "temperature_c": [] if d is None else r(d.temperature_c, "_c"),
        "soc": [] if o is None else r(o.soc, "_soc"),
        "soc_sigma": [] if o is None else r(o.soc_sigma, "_soc_sigma"),
        "leak_a": [] if o is None else r(o.leak_a, "_a"),
        # The per-cell flags and temperatures the protections act on, and the load cells behind
        # the mean: what `bms monitor` shows per cell and per stack.
        "leak_flag": [] if o is None else np.asarray(o.leak_flag).tolist(),
        "cell_temperature_c": [] if o is None else r(o.cell_temperature_c, "_c"),
        "load_cell_kpa": [] if d is None else r(d.pressure_kpa, "_kpa"),
        "load_cell_imbalance_kpa": (math.nan if o is None
                                    else float(o.load_cell_imbalance_kpa)),
        "pressure_kpa": math.nan if o is None else float(o.pressure_mean_kpa),
        "pressure_expected_kpa": math.nan if o is None else float(o.pressure_expected_kpa),
        "balance_mask": int(balance_mask),
    }


def tick_snapshot(time_s: float, state: str, outputs: int, current_a: float,
                  charge_limit_a: float, discharge_limit_a: float, active_faults: list[str],
                  latched_faults: list[str], stacks: list[dict[str, Any]]) -> dict[str, Any]:
    """The live view's JSON object of one tick (``bms monitor``, the monitor socket)."""
    return {
        "time_s": time_s, "state": state, "outputs": int(outputs),
        "current_a": current_a, "charge_limit_a": charge_limit_a,
        "discharge_limit_a": discharge_limit_a,
        "active_faults": active_faults, "latched_faults": latched_faults,
        "stacks": stacks,
    }


_FLOAT = "{:.10g}".format  # 10 significant digits: 0.1 mV on volts, 10 ms on a 10^6 s run

#: Decimals per ticks.csv column for :meth:`RunLog.row_array` (fixed point, formatted in C by
#: csrc/ssb_format.c): ``(pattern, decimals, why that resolution is enough)``. A pattern is an
#: exact column name, ``*suffix`` (the unit at the end of the name) or ``prefix*``; the first
#: match wins. Each step is at most a tenth of the finest quantum of what feeds the column, so
#: the rounding (at most half a step) never hides a measured change. A column that matches no
#: pattern keeps ``%.10g`` (decimals -1), what every column had before. Values too large for
#: exact fixed point (|v| 10^d >= 2^52) are written with ``%.17g``, so nothing is ever wrong.
COLUMN_DECIMALS: tuple[tuple[str, int, str], ...] = (
    ("time_s", 6, "1 us: the tick is 0.1 s and board timestamps are whole ms (docs/protocol.md)"),
    ("tick_duration_s", 7, "0.1 us: a tick computes for ~100 us (time.perf_counter)"),
    ("state", 0, "contactor state: an integer"),
    ("outputs", 0, "contactor output bits: an integer"),
    ("faults_active", 0, "a count"),
    ("balance_mask*", 0, "balancing bits per stack: an integer below 2^24 (23 cells per stack)"),
    ("*_soc_sigma", 6, "1e-6 of capacity (18 mA s on the 5 Ah ssb-23 cell, 0.18 A for one "
                       "0.1 s tick): far below a useful SOC sigma; assumption, not a sensor"),
    ("*_soc", 6, "same as _soc_sigma: 1e-6 of capacity"),
    ("*_v", 6, "1 uV: the LTC6811 cell ADC LSB is 100 uV (boards/emu-23.yaml, "
               "boards/mega2560-ltc6811.yaml), bus voltage 1 mV (emu) / 7.6 mV (mega)"),
    ("*_a", 4, "0.1 mA: current LSB 1 mA (emu) / 6.1 mA (mega); the leak estimate's warning "
               "is 50 mA, hysteresis 20 mA (boards/packs/ssb-23.yaml)"),
    ("*_c", 3, "1 mK: a 100 uV thermistor LSB is ~3.4 mK at 25 C (10 kOhm NTC, B 3435 K, "
               "10 kOhm pull-up to 3.0 V: ~29 mV/K; boards/emu-23.yaml)"),
    ("*_kpa", 2, "10 Pa: the smallest pressure protection step is the 5 kPa/s rate hysteresis "
                 "(boards/packs/ssb-23.yaml); load-cell LSB 0.5-0.65 Pa is far below the HX711 "
                 "noise, so 10 Pa keeps every protection-relevant change"),
)


def column_decimals(name: str) -> int:
    """Decimals for ``name`` from :data:`COLUMN_DECIMALS` (-1: ``%.10g``)."""
    for pattern, decimals, _why in COLUMN_DECIMALS:
        if pattern.startswith("*"):
            if name.endswith(pattern[1:]):
                return decimals
        elif pattern.endswith("*"):
            if name.startswith(pattern[:-1]):
                return decimals
        elif name == pattern:
            return decimals
    return -1


#: The snapshot's per-cell lists carry ticks.csv's resolution (COLUMN_DECIMALS, by unit suffix):
#: nothing the log keeps is lost, and the float text is short (3.8655, not 3.8655000000000004):
#: for ssb-4x23 a line of about 4 kB instead of 10 kB, half the time to encode.
_SNAPSHOT_DECIMALS = {suffix: column_decimals("x" + suffix)
                      for suffix in ("_v", "_c", "_soc", "_soc_sigma", "_a", "_kpa")}


def _snapshot_list(values: Any, suffix: str) -> list[float]:
    return np.round(np.asarray(values, dtype=float), _SNAPSHOT_DECIMALS[suffix]).tolist()


def _fmt(value: Any) -> str:
    if type(value) is float:  # the common case first: one type check per field
        return _FLOAT(value)
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _FLOAT(float(value))
    text = str(value)
    # A CSV field of ours never holds a separator or a newline (keeps the reader trivial).
    return text.replace(",", ";").replace("\n", " ").replace("\r", " ")


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> null, numpy scalars/arrays -> Python, so every line is strict JSON."""
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return [_json_safe(x) for x in obj.tolist()]
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(x) for x in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return _json_safe(obj.item())
    return obj


class _RowFormatter:
    """ssb_format_row over one column set: decimals, output buffer and pointers made once."""

    def __init__(self, decimals: Sequence[int]) -> None:
        from bms import _core  # built by pip install (setup.py cffi_modules)

        ffi, lib = _core.ffi, _core.lib
        self._ffi = ffi
        self.n = len(decimals)
        self.decimals = np.asarray(decimals, dtype=np.int8)
        self._dec_ptr = ffi.from_buffer("signed char[]", self.decimals)
        self.cap = self.n * lib.SSB_FMT_FIELD_MAX + 1  # the longest possible row fits
        self.out = bytearray(self.cap)
        self._out_ptr = ffi.from_buffer("char[]", self.out)
        self._view = memoryview(self.out)
        self._fmt = lib.ssb_format_row
        self._arr: np.ndarray | None = None
        self._arr_ptr = None
        self._fmt_seg = lib.ssb_format_segments
        self._segs: tuple[np.ndarray, ...] = ()
        self._fmt_tick = lib.ssb_format_tick
        self._fill_tick = lib.ssb_fill_tick
        self.gather = lib.ssb_gather_segments
        self._masks_src: np.ndarray | None = None
        self._masks_ptr = None
        self._row: TickRow | None = None  # the row bound last, at its version
        self._row_version = -1

    def format(self, values: np.ndarray) -> memoryview:
        """The row as a view into the output buffer (valid until the next call)."""
        if values is self._arr:
            return self._call(self._arr_ptr)
        if (isinstance(values, np.ndarray) and values.dtype == np.float64 and values.ndim == 1
                and values.flags.c_contiguous):
            # Keep the caller's array with its pointer: holding the reference keeps the
            # identity check above sound (the array cannot be freed and its id reused).
            self._arr, self._arr_ptr = values, self._ffi.from_buffer("double[]", values)
            return self._call(self._arr_ptr)
        arr = np.ascontiguousarray(values, dtype=np.float64).ravel()
        return self._call(self._ffi.from_buffer("double[]", arr))

    def _call(self, ptr) -> memoryview:
        size = self._fmt(ptr, self._dec_ptr, self.n, self._out_ptr, self.cap)
        if size < 0:  # pragma: no cover - the buffer holds the longest row; decimals checked
            raise RuntimeError(f"ssb_format_row failed: {size}")
        return self._view[:size]

    def format_segments(self, segments: Sequence[np.ndarray]) -> memoryview:
        """The row given as consecutive float64 arrays (their concatenation), formatted
        straight from them (ssb_format_segments): no copy into one row buffer. The pointer
        table is rebuilt only when an array differs (by identity) from the last call's; the
        arrays are held, so an identity match means the same live buffer."""
        if len(segments) != len(self._segs) or any(map(is_not, segments, self._segs)):
            self._bind_segments(segments)
        size = self._fmt_seg(self._seg_ptrs, self._seg_lens, len(self._segs), self._dec_ptr,
                             self._out_ptr, self.cap)
        if size < 0:  # pragma: no cover - the buffer holds the longest row; decimals checked
            raise RuntimeError(f"ssb_format_segments failed: {size}")
        return self._view[:size]

    def format_tick(self, row: TickRow, time_s: float, state: int, current_a: float,
                    stack_voltage_v: float, bus_voltage_v: float, charge_limit_a: float,
                    discharge_limit_a: float, outputs: int, balance_masks: np.ndarray,
                    faults_active: int, tick_duration_s: float) -> memoryview:
        """:meth:`format_segments` of ``row`` after :meth:`TickRow.fill` with these values
        (its cell arrays already in place): the fill and the format in one C call
        (ssb_format_tick), the same bytes."""
        masks_ptr = self._bind_tick(row, balance_masks)
        size = self._fmt_tick(self._seg_bufs[0], self._seg_bufs[-1], row.n_stacks, time_s,
                              state, current_a, stack_voltage_v, bus_voltage_v,
                              charge_limit_a, discharge_limit_a, outputs, masks_ptr,
                              faults_active, tick_duration_s, self._seg_ptrs, self._seg_lens,
                              len(self._segs), self._dec_ptr, self._out_ptr, self.cap)
        if size < 0:  # pragma: no cover - the buffer holds the longest row; decimals checked
            raise RuntimeError(f"ssb_format_tick failed: {size}")
        return self._view[:size]

    def fill_tick(self, row: TickRow, time_s: float, state: int, current_a: float,
                  stack_voltage_v: float, bus_voltage_v: float, charge_limit_a: float,
                  discharge_limit_a: float, outputs: int, balance_masks: np.ndarray,
                  faults_active: int, tick_duration_s: float) -> None:
        """:meth:`format_tick`'s fill of ``row`` (ssb_fill_tick), nothing formatted: a row
        counted and kept but not written (RunLog.discard_ticks)."""
        masks_ptr = self._bind_tick(row, balance_masks)
        rc = self._fill_tick(self._seg_bufs[0], self._seg_bufs[-1], row.n_stacks, time_s,
                             state, current_a, stack_voltage_v, bus_voltage_v, charge_limit_a,
                             discharge_limit_a, outputs, masks_ptr, faults_active,
                             tick_duration_s)
        if rc < 0:  # pragma: no cover - the pointers are bound above
            raise RuntimeError(f"ssb_fill_tick failed: {rc}")

    def _bind_tick(self, row: TickRow, balance_masks: np.ndarray) -> Any:
        """Bind ``row``'s segments (when they changed) and the masks; the masks' pointer."""
        segments = row.segments
        if (row is not self._row or row.version != self._row_version) and (
                len(segments) != len(self._segs) or any(map(is_not, segments, self._segs))):
            if segments[0] is not row._head or segments[-1] is not row._tail:
                raise ValueError("row segments must start with the row's head and end with "
                                 "its tail")
            self._bind_segments(segments)
        self._row, self._row_version = row, row.version
        if balance_masks is not self._masks_src:
            masks = np.ascontiguousarray(balance_masks, dtype=np.uint32)
            if masks.shape != (row.n_stacks,):
                raise ValueError(f"{masks.shape} balance masks for {row.n_stacks} stacks")
            # held with its pointer; the caller's array only when it is the one read
            self._masks_src = balance_masks if masks is balance_masks else None
            self._masks_keep, self._masks_ptr = masks, self._ffi.from_buffer("uint32_t[]",
                                                                             masks)
        return self._masks_ptr

    def _bind_segments(self, segments: Sequence[np.ndarray]) -> None:
        ffi = self._ffi
        for a in segments:
            if not (isinstance(a, np.ndarray) and a.dtype == np.float64 and a.ndim == 1
                    and a.flags.c_contiguous):
                raise TypeError("row segments must be 1-d contiguous float64 arrays")
        total = sum(len(a) for a in segments)
        if total != self.n:
            raise ValueError(f"row has {total} values for {self.n} columns")
        self._row = None  # format_tick's row is bound again at its next call
        self._segs = tuple(segments)
        self._seg_bufs = [ffi.from_buffer("double[]", a) for a in segments]
        self._seg_ptrs = ffi.new("double *[]", [ffi.cast("double *", b)
                                                for b in self._seg_bufs])
        self._seg_lens = ffi.new("size_t[]", [len(a) for a in segments])


def as_logged(values: np.ndarray, decimals: int) -> np.ndarray:
    """The floats a reader of ticks.csv gets for ``values`` written with ``decimals``
    (csrc/ssb_format.c's text, parsed): |v| 10^d rounded half away from zero, exactly (the
    formatter's fma error term decides an exact .5; here Fraction, for those few), then
    q / 10^d (both exact doubles, so the division is the double nearest q / 10^d: what
    strtod returns for the decimal text); ``%.17g`` (the value itself) where |v| 10^d >= 2^52,
    ``%.10g`` for decimals -1; nan, inf as they are."""
    v = np.asarray(values, dtype=float)
    if decimals < 0:
        return np.array([float(f"{x:.10g}") if x != 0.0 else 0.0  # "0", never "-0"
                         for x in v.ravel().tolist()]).reshape(v.shape)
    s = 10.0 ** decimals
    a = np.abs(v)
    with np.errstate(invalid="ignore", over="ignore"):
        p = a * s
        r = np.floor(p)
        f = p - r
        up = f > 0.5
        for i in np.flatnonzero((f == 0.5) & (p < _TWO_POW_52)):
            # an exact .5 in p: the product's rounding error says which way (e >= 0: up)
            up.flat[i] = Fraction(float(a.flat[i])) * Fraction(s) >= Fraction(float(p.flat[i]))
        q = r + up
        out = np.where(v < 0.0, -(q / s), q / s)
        out = np.where(q == 0.0, 0.0, out)  # "0", never "-0"
        big = ~(p < _TWO_POW_52)  # also nan and inf: kept as they are
    out[big] = v[big]
    return out


_TWO_POW_52 = 4503599627370496.0


class _ColumnTap:
    """Some columns of every row written, kept in memory (RunLog.keep_columns)."""

    CHUNK = 4096

    def __init__(self, columns: Sequence[str], keep: Sequence[str]) -> None:
        index = {c: i for i, c in enumerate(columns)}
        missing = [k for k in keep if k not in index]
        if missing:
            raise ValueError(f"no such column: {missing[0]}")
        self.cols = sorted({index[k] for k in keep})
        self.names = [columns[i] for i in self.cols]
        self._idx = np.asarray(self.cols, dtype=np.intp)
        self._chunks: list[np.ndarray] = []
        self._buf = np.empty((self.CHUNK, len(self.cols)))
        self._n = 0
        self._width = len(self.cols)
        self._cols_c: np.ndarray | None = None  # with its pointer, made on the first add_bound
        self._cols_ptr: Any = None
        self._buf_ptr: Any = None  # the chunk's pointer, made on its first add_bound
        self.valid = True

    def _next(self) -> tuple[np.ndarray, int]:
        if self._n == len(self._buf):
            self._chunks.append(self._buf)
            self._buf = np.empty_like(self._buf)
            self._buf_ptr = None
            self._n = 0
        return self._buf, self._n

    def add_bound(self, fmt: _RowFormatter) -> None:
        """The kept columns of the row ``fmt`` formatted or filled last (its bound segments)
        into the next row of the chunk: one C call (ssb_gather_segments), no Python loop."""
        if self._cols_c is None:
            self._cols_c = np.asarray(self.cols, dtype=np.uintp)
            self._cols_ptr = fmt._ffi.from_buffer("size_t[]", self._cols_c)
        buf, i = self._next()
        if self._buf_ptr is None:
            self._buf_ptr = fmt._ffi.from_buffer("double[]", buf)
        rc = fmt.gather(fmt._seg_ptrs, fmt._seg_lens, len(fmt._segs), self._cols_ptr,
                        self._width, self._buf_ptr + i * self._width)
        if rc < 0:
            raise ValueError(f"kept columns outside the row ({rc})")
        self._n = i + 1

    def add_array(self, values: np.ndarray) -> None:
        buf, i = self._next()
        buf[i] = values[self._idx]
        self._n = i + 1

    def columns(self, decimals: Sequence[int]) -> dict[str, np.ndarray]:
        data = np.concatenate(self._chunks + [self._buf[:self._n]])
        return {name: as_logged(data[:, j], decimals[col])
                for j, (name, col) in enumerate(zip(self.names, self.cols, strict=True))}


class _Sink:
    """One append-only file written with os.write; counts what it could not write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        self.size = 0
        self.written = 0
        self.dropped = 0
        self.last_error: str | None = None

    def write(self, data: bytes | memoryview | bytearray, count: int = 1) -> bool:
        """``data`` (``count`` lines, all or none counted) in as many writes as it takes."""
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                n = os.write(self.fd, view[done:] if done else view)  # no slice: usual case
                if n <= 0:  # pragma: no cover - os.write raises instead on POSIX
                    raise OSError(errno.EIO, "short write")
                done += n
        except OSError as exc:
            self.dropped += count
            self.last_error = f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror}"
            if done:
                # Remove the fragment so the next line starts on a line boundary.
                try:
                    os.ftruncate(self.fd, self.size)
                except OSError:
                    pass
            return False
        self.size += done
        self.written += count
        return True

    def close(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError:
            pass  # /dev/full, pipes, full disks: nothing more we can do here
        os.close(self.fd)


class _NullSink(_Sink):
    """Counts what it is given, writes nothing (RunLog.discard_ticks)."""

    def __init__(self, path: Path) -> None:  # no file opened
        self.path = path
        self.fd = -1
        self.size = 0
        self.written = 0
        self.dropped = 0
        self.last_error = None

    def write(self, data: bytes | memoryview | bytearray, count: int = 1) -> bool:
        self.size += len(data)
        self.written += count
        return True

    def close(self) -> None:
        pass


class RunLog:
    """Writes one run's log into ``directory`` (created if needed).

    ``columns``: the ticks.csv header (units in the names); ``meta``: written as the first
    event (pack name, seed, versions...). ``batch_rows``: rows held before one write (1: every
    row written at once; more: see the module doc). Methods never raise on I/O errors after
    opening.
    """

    def __init__(self, directory: str | Path, columns: Sequence[str],
                 meta: Mapping[str, Any] | None = None, batch_rows: int = 1) -> None:
        if batch_rows < 1:
            raise ValueError(f"batch_rows {batch_rows!r}: at least 1")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.columns = list(columns)
        if len(set(self.columns)) != len(self.columns):
            raise ValueError("duplicate column names")
        self._index = {c: i for i, c in enumerate(self.columns)}
        self._time_col = self._index.get("time_s")
        claim_log_dir(self.dir)
        try:
            self.ticks = _Sink(self.dir / TICKS)
            self.events = _Sink(self.dir / EVENTS)
        except OSError:
            release_log_dir(self.dir)
            raise
        self._notes: dict[str, Any] = {}
        self._summary_lock = threading.Lock()
        self._summary_wake = threading.Event()
        self._summary_pending: bytes | None = None
        self._summary_thread: threading.Thread | None = None
        self._summary_stop = False
        self.summaries_written = 0
        self.summary_error: str | None = None
        self._reserve = self.dir / RESERVE
        try:  # best effort: a disk already full at start has no space to set aside
            with open(self._reserve, "wb") as fh:
                os.posix_fallocate(fh.fileno(), 0, RESERVE_BYTES)
        except OSError:
            try:
                self._reserve.unlink()
            except OSError:
                pass
        self.rows = 0
        self.first_time_s: float | None = None
        self.last_time_s: float | None = None
        self._dropping = False
        self._closed = False
        # Rows held for one write (batch_rows > 1): their bytes, count, first and last time.
        self.batch_rows = int(batch_rows)
        self._held = bytearray()
        self._held_n = 0
        self._held_t0: Any = None
        self._held_t: Any = None
        self._flush_next = False  # an event was written: the next row goes out with it
        self._header = (",".join(_fmt(c) for c in self.columns) + "\n").encode()
        self._formatter: _RowFormatter | None = None  # made on the first row_array
        self._tap: _ColumnTap | None = None
        self._discard = False  # discard_ticks: row_tick's rows counted, not formatted
        self._header_ok = self.ticks.write(self._header, count=False)
        if meta is not None:
            self.event({"type": "meta", **meta})

    def row(self, values: Sequence[Any] | Mapping[str, Any] | np.ndarray) -> bool:
        """Append one tick. A sequence must have one value per column; a mapping may leave
        columns out (empty fields). Returns False when the row was dropped."""
        if isinstance(values, Mapping):
            fields = [""] * len(self.columns)
            for k, v in values.items():
                fields[self._index[k]] = _fmt(v)
            t = values.get("time_s")
        else:
            if len(values) != len(self.columns):
                raise ValueError(f"row has {len(values)} values for {len(self.columns)} columns")
            if isinstance(values, np.ndarray):
                values = values.tolist()  # numpy scalars -> Python floats/ints: fast path
            fields = [_fmt(v) for v in values]
            t = values[self._time_col] if self._time_col is not None else None
        if self._tap is not None:
            self._tap.valid = False  # %.10g text: not what as_logged reproduces
        return self._write_row((",".join(fields) + "\n").encode(), t)

    def row_array(self, values: np.ndarray) -> bool:
        """Append one tick given as a float array (one value per column): the hot path.

        Fixed point per column (:data:`COLUMN_DECIMALS`; NaN as ``nan``, infinities as
        ``inf``/``-inf``), formatted by one C call (csrc/ssb_format.c) straight into a
        preallocated buffer. Unlike :meth:`row` (``%.10g`` everywhere) the values are rounded
        to their column's resolution. The pointer to ``values`` is made once and reused while
        the same (float64, contiguous) array comes back, as the controller's row buffer does.
        """
        if len(values) != len(self.columns):
            raise ValueError(f"row has {len(values)} values for {len(self.columns)} columns")
        fmt = self._formatter
        if fmt is None:
            fmt = self._formatter = _RowFormatter([column_decimals(c) for c in self.columns])
        line = fmt.format(values)
        t = values[self._time_col] if self._time_col is not None else None
        ok = self._write_row(line, t)
        if ok and self._tap is not None:
            self._tap.add_array(np.asarray(values, dtype=float))
        return ok

    def row_segments(self, segments: Sequence[np.ndarray], time_s: float | None) -> bool:
        """Append one tick given as consecutive float64 arrays whose concatenation is the row
        (as :meth:`row_array`, without first copying the values into one array): the
        controller's hot path. ``time_s``: the row's time (for the summary)."""
        fmt = self._formatter
        if fmt is None:
            fmt = self._formatter = _RowFormatter([column_decimals(c) for c in self.columns])
        ok = self._write_row(fmt.format_segments(segments), time_s)
        if ok and self._tap is not None:
            self._tap.add_bound(fmt)  # the segments as format_segments bound them
        return ok

    def row_tick(self, row: TickRow, time_s: float, state: int, current_a: float,
                 stack_voltage_v: float, bus_voltage_v: float, cells: Sequence[np.ndarray],
                 charge_limit_a: float, discharge_limit_a: float, outputs: int,
                 balance_masks: np.ndarray, faults_active: int, tick_duration_s: float
                 ) -> bool:
        """``row_segments(row.fill(...))`` of the controller's row in one C call
        (fill and format: _RowFormatter.format_tick); the same bytes."""
        fmt = self._formatter
        if fmt is None:
            fmt = self._formatter = _RowFormatter([column_decimals(c) for c in self.columns])
        row.set_cells(cells)
        if self._discard:  # not formatted: filled (for the kept columns) and counted
            fmt.fill_tick(row, time_s, state, current_a, stack_voltage_v, bus_voltage_v,
                          charge_limit_a, discharge_limit_a, outputs, balance_masks,
                          faults_active, tick_duration_s)
            ok = self._count_row(time_s)
        else:
            ok = self._write_row(fmt.format_tick(
                row, time_s, state, current_a, stack_voltage_v, bus_voltage_v,
                charge_limit_a, discharge_limit_a, outputs, balance_masks, faults_active,
                tick_duration_s), time_s)
        if ok and self._tap is not None:
            self._tap.add_bound(fmt)  # the head and tail as the C call filled them
        return ok

    def keep_columns(self, names: Sequence[str]) -> None:
        """Also keep these columns of every row written from now on in memory
        (:meth:`kept_columns`): for a caller that scores the run at its end without reading
        ticks.csv back (bms campaign: ~0.4 s of NumPy's parser per simulated hour of ssb-23).
        The rows of :meth:`row_array`, :meth:`row_segments` and :meth:`row_tick`; a row
        dropped on a write error is not kept either, as the file does not have it (with
        ``batch_rows`` > 1 a batch that fails to be written makes :meth:`kept_columns` None:
        its rows were kept when they were held)."""
        self._tap = _ColumnTap(self.columns, names)

    def discard_ticks(self) -> None:
        """From now on rows are counted (the summary) and kept (:meth:`keep_columns`) but not
        written: ticks.csv keeps its header only (rows held by ``batch_rows`` are written
        first). :meth:`row_tick`'s rows are not even formatted (only filled, for the kept
        columns). For a caller that deletes the log when the run ends and scores it from
        :meth:`kept_columns` (bms campaign without --keep-logs: the ~32 MB per simulated hour
        of ssb-23 it would write to the page cache and then delete)."""
        if not isinstance(self.ticks, _NullSink):
            self.flush()
            self.ticks.close()
            self.ticks = _NullSink(self.ticks.path)
            self._discard = True

    def kept_columns(self) -> dict[str, np.ndarray] | None:
        """The kept columns, as :func:`load_tick_columns` reads them from ticks.csv (the
        same floats: :func:`as_logged`); None when none were asked for, or a :meth:`row`
        (``%.10g`` text) was written since."""
        tap = self._tap
        if tap is None or not tap.valid:
            return None
        fmt = self._formatter
        decimals = (fmt.decimals.tolist() if fmt is not None
                    else [column_decimals(c) for c in self.columns])
        return tap.columns(decimals)

    def _count_row(self, t: float) -> bool:
        """A discarded row (no bytes): counted as :meth:`_write_lines` counts a row that the
        null sink takes (it always does), after any rows still held."""
        if self._held_n:
            self.flush()
        self.ticks.written += 1
        self.rows += 1
        if self.first_time_s is None:
            self.first_time_s = float(t)
        self.last_time_s = float(t)
        if self._dropping:  # rows were dropped before the discard: as _write_lines tracks
            self._track(True, t)
        return True

    def _write_row(self, line: bytes | memoryview, t: Any) -> bool:
        """Write one row, or hold it (batch_rows > 1; True then: not known to fail yet)."""
        if self.batch_rows > 1:
            if not self._held_n:
                self._held_t0 = t
            self._held += line
            self._held_n += 1
            self._held_t = t
            if self._held_n >= self.batch_rows or self._flush_next:
                return self.flush()
            return True
        return self._write_lines(line, 1, t, t)

    def flush(self) -> bool:
        """Write the rows held (batch_rows > 1) in one ``os.write``; False when they were
        dropped (a full disk: counted as for single rows)."""
        self._flush_next = False
        n = self._held_n
        if not n:
            return True
        self._held_n = 0
        try:
            return self._write_lines(self._held, n, self._held_t0, self._held_t)
        finally:
            del self._held[:]

    def _write_lines(self, data: bytes | memoryview | bytearray, n: int, t0: Any, t: Any
                     ) -> bool:
        """``n`` complete rows (times ``t0`` .. ``t``) in one write, or all dropped."""
        if not self._header_ok:
            # The header could not be written (disk full at start): it must come first, so
            # retry it before any row; until it succeeds the rows are dropped too.
            self._header_ok = self.ticks.write(self._header, count=False)
        ok = self._header_ok and self.ticks.write(data, count=n)
        if not self._header_ok:
            self.ticks.dropped += n
        if not ok and n > 1 and self._tap is not None:
            # rows of this batch were kept as they were held: the file no longer has them all
            self._tap.valid = False
        if ok:
            self.rows += n
            if t is not None:
                if self.first_time_s is None:
                    self.first_time_s = float(t0)
                self.last_time_s = float(t)
        self._track(ok, t0)
        return ok

    def event(self, obj: Mapping[str, Any]) -> bool:
        """Append one event (a JSON object on one line). Returns False when dropped. A
        batching log writes the rows it holds first, and the next row at once."""
        if self._held_n:
            self.flush()
        self._flush_next = self.batch_rows > 1
        line = json.dumps(_json_safe(obj), separators=(",", ":"), allow_nan=False)
        return self.events.write((line + "\n").encode())

    def _track(self, ok: bool, t: Any) -> None:
        if not ok and not self._dropping:
            self._dropping = True
            self.event({"type": "log", "event": "rows_dropping", "time_s": t,
                        "error": self.ticks.last_error})
        elif ok and self._dropping:
            self._dropping = False
            self.event({"type": "log", "event": "rows_recovered", "time_s": t,
                        "dropped_rows": self.ticks.dropped})

    def note(self, key: str, value: Any) -> None:
        """Keep ``key: value`` in every summary written from now on (e.g. why the run ended)."""
        self._notes[key] = value

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "columns": len(self.columns),
            "events": self.events.written,
            "dropped_rows": self.ticks.dropped,
            "dropped_events": self.events.dropped,
            "ticks_error": self.ticks.last_error,
            "events_error": self.events.last_error,
            "first_time_s": self.first_time_s,
            "last_time_s": self.last_time_s,
            **self._notes,
        }

    def write_summary(self, extra: Mapping[str, Any] | None = None, final: bool = False
                      ) -> dict[str, Any]:
        """Write summary.json now (atomically: temp file, fsync, rename); never raises.
        ``final``: the run's last summary (at close). Returns the summary with
        ``summary_written`` (and ``summary_error`` when it failed)."""
        summary = {**self.summary(), **(_json_safe(dict(extra)) if extra else {}),
                   "final": final}
        text = json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n"
        error = self._write_atomic(text.encode())
        if final and error is not None and error.startswith("ENOSPC") and self._reserve.exists():
            # The disk filled during the run: the space set aside at open is for the final
            # summary (only then: rows written after a periodic one would eat it again).
            try:
                self._reserve.unlink()
            except OSError:
                pass
            error = self._write_atomic(text.encode())
        summary["summary_written"] = error is None
        if error is None:
            self.summaries_written += 1
        else:
            summary["summary_error"] = error
        self.summary_error = error
        return summary

    def submit_summary(self, extra: Mapping[str, Any] | None = None) -> None:
        """Write summary.json from a background thread (the tick never waits on fsync: up to
        8 ms here, more on a busy disk). The summary is taken now; a newer one replaces one
        not yet written. :meth:`close` waits for it before the final summary."""
        summary = {**self.summary(), **(_json_safe(dict(extra)) if extra else {}),
                   "final": False}
        data = (json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n").encode()
        with self._summary_lock:
            self._summary_pending = data
            if self._summary_thread is None:
                self._summary_thread = threading.Thread(
                    target=self._summary_writer, daemon=True, name="runlog-summary")
                self._summary_thread.start()
        self._summary_wake.set()

    def _summary_writer(self) -> None:
        while True:
            self._summary_wake.wait()
            with self._summary_lock:
                self._summary_wake.clear()
                data, self._summary_pending = self._summary_pending, None
                stop = self._summary_stop
            if data is not None:
                error = self._write_atomic(data)
                self.summary_error = error
                self.summaries_written += error is None
            if stop:
                return

    def _stop_summary_writer(self) -> None:
        with self._summary_lock:
            thread, self._summary_stop = self._summary_thread, True
        if thread is not None:
            self._summary_wake.set()
            thread.join(timeout=30.0)

    def _write_atomic(self, data: bytes) -> str | None:
        """summary.json through a temp file; None, or the error (the temp file removed)."""
        tmp = self.dir / (SUMMARY + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.dir / SUMMARY)
            return None
        except OSError as exc:
            try:
                if not tmp.is_dir():
                    tmp.unlink()  # never leave a partial (or 0-byte) temp file behind
            except OSError:
                pass
            return f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror}"

    def close(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write the final summary.json and close; release the folder. Returns the summary;
        ``summary_written`` says whether it reached the disk."""
        if self._closed:
            return self.summary()
        self._closed = True
        self.flush()
        self._stop_summary_writer()  # a periodic summary still being written goes first
        self.ticks.close()
        self.events.close()
        summary = self.write_summary(extra, final=True)
        try:
            self._reserve.unlink()
        except OSError:
            pass
        release_log_dir(self.dir)
        return summary

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- readers


def _complete_lines(path: Path) -> list[str]:
    data = Path(path).read_bytes()
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    # The piece after the last newline is either empty or a torn line: drop it.
    return lines[:-1]


def _header_and_rows(path: str | Path) -> tuple[list[str], list[str]]:
    """ticks.csv (or a run directory) -> its header's names and its complete data lines
    (([], []) for an empty file)."""
    p = Path(path)
    if p.is_dir():
        p = p / TICKS
    lines = _complete_lines(p)
    if not lines:
        return [], []
    return lines[0].split(","), lines[1:]


def load_ticks(path: str | Path) -> dict[str, np.ndarray]:
    """ticks.csv (or a run directory) -> column name -> array (float where every field parses,
    else str). Rows that are torn or have the wrong number of fields are skipped; empty fields
    read as NaN."""
    header, lines = _header_and_rows(path)
    if not header:
        return {}
    n = len(header)
    rows = [r for r in (line.split(",") for line in lines) if len(r) == n]
    out: dict[str, np.ndarray] = {}
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in header]
    for name, col in zip(header, cols, strict=True):
        try:
            out[name] = np.array([float(x) if x != "" else math.nan for x in col], dtype=float)
        except ValueError:
            out[name] = np.array(col, dtype=str)
    return out


def load_tick_columns(path: str | Path, keep: Callable[[str], bool]) -> dict[str, np.ndarray]:
    """The columns of ticks.csv (or a run directory) whose names ``keep`` accepts, as
    :func:`load_ticks` reads them (the same rows kept, the same floats), with NumPy's C parser:
    ~10x faster on a campaign's 36,000-row hour (a scorer needs 47 of ssb-23's 116 columns).
    A kept column with an empty or non-numeric field falls back to :func:`load_ticks`."""
    header, lines = _header_and_rows(path)
    if not header:
        return {}
    n = len(header)
    want = [i for i, name in enumerate(header) if keep(name)]
    # load_ticks's row filter: split(",") has n fields exactly when the line has n - 1 commas
    rows = [line for line in lines if line.count(",") == n - 1]
    if not want:
        return {}
    if not rows:
        return {header[i]: np.array([], dtype=float) for i in want}
    try:
        data = np.loadtxt(rows, delimiter=",", usecols=want, dtype=float, ndmin=2,
                          comments=None)
    except ValueError:  # an empty or text field: NaN or str columns, as load_ticks makes them
        full = load_ticks(path)
        return {header[i]: full[header[i]] for i in want}
    return {header[i]: data[:, j].copy() for j, i in enumerate(want)}


def load_events(path: str | Path) -> list[dict[str, Any]]:
    """events.jsonl (or a run directory) -> list of events; a torn or corrupt line is skipped."""
    p = Path(path)
    if p.is_dir():
        p = p / EVENTS
    out = []
    for line in _complete_lines(p):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out
