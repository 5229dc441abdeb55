"""The state file of ``bms run --state FILE``: what the BMS keeps across a stop.

One JSON document: a format name and version, the pack (name, cell and stack counts), the
wall-clock time and run time of the save, per stack its estimator state (``Core.state_dict``:
SOC, covariance, RC and hysteresis states, SOH, leak filter, ...) and the wall-clock time that
state is of, the latched fault records, optionally what ``bms commission`` recorded per stack
(:class:`StackCommissioning`: the fixture's load-cell baseline and the stack's own pressure
model; runs carry it over, only the next ``bms commission`` replaces it), and a SHA-256 over
all of it (a flipped bit in a number is caught, not restored). NaN (e.g. no previous sample
yet) is written as null.

Written atomically: the document goes to ``FILE.tmp`` in the same folder, is fsynced, then
renamed over FILE (``os.replace``) and the folder fsynced, so FILE is always the old or the new
document, never a part. A ``FILE.tmp`` found at load is what an interrupted write left: it is
removed and FILE (the last complete save) is read. Every failure is a :class:`StateFileError`
with one line naming the file; the caller decides (``bms run`` refuses to start on a file it
cannot read, so it never overwrites one: docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bms.faults import FaultTable
from bms.tuning import STATE_SAVE_PERIOD_S
from boards.config import PackConfig

FORMAT = "ssb-bms-state"
VERSION = 1
#: The controller saves this often (of run time) and on stop: bms/tuning.py's tunable.
SAVE_PERIOD_S = STATE_SAVE_PERIOD_S
#: Integer arrays of the core's state (everything else is float).
_INT_ARRAYS = {"gated_count": np.uint32}


class StateFileError(ValueError):
    """A state file that cannot be read, does not fit the pack, or cannot be written."""


@dataclass
class SavedStack:
    """One stack's estimator state and the wall-clock time (Unix s) it is of; the fixture's
    load-cell baseline (each load cell's share of the stack mean, bms/protections.py
    LoadCellBaseline) once one was recorded (None: not yet, or a file from before it)."""

    name: str
    state_unix_s: float
    estimator: dict[str, Any]
    load_cell_shares: list[float] | None = None


@dataclass
class StackCommissioning:
    """What ``bms commission`` recorded for one stack (bms/app/commission.py): the fixture's
    static load-cell imbalance as each load cell's share of the stack mean and its offset
    (p_j = share_j mean + offset_j; None: not recorded) and the stack's own pressure model
    (preload and stiffness in place of the pack file's; None: the pack's). It stays in the
    file until the next ``bms commission`` replaces it; runs only carry it over."""

    name: str
    recorded_utc: str
    source: str
    load_cell_shares: list[float] | None = None
    load_cell_offsets_kpa: list[float] | None = None
    preload_kpa: float | None = None
    stiffness_kpa_per_um: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StackCommissioning:
        """StackCommissioning from its JSON object; ValueError/TypeError/KeyError for one
        that is not."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"commissioning has unknown key(s) {sorted(unknown)}")
        c = cls(name=str(d["name"]), recorded_utc=str(d["recorded_utc"]), source=str(d["source"]))
        for key in ("load_cell_shares", "load_cell_offsets_kpa"):
            if d.get(key) is not None:
                vals = [float(_scalar(x)) for x in d[key]]
                if not all(math.isfinite(x) for x in vals):
                    raise ValueError(f"commissioning {key} {vals} are not numbers")
                setattr(c, key, vals)
        if c.load_cell_shares is not None and not all(x > 0.0 for x in c.load_cell_shares):
            raise ValueError(f"commissioning load_cell_shares {c.load_cell_shares} are not "
                             f"positive")
        if (c.load_cell_offsets_kpa is not None and c.load_cell_shares is not None
                and len(c.load_cell_offsets_kpa) != len(c.load_cell_shares)):
            raise ValueError("commissioning load_cell_offsets_kpa and load_cell_shares differ "
                             "in length")
        for key in ("preload_kpa", "stiffness_kpa_per_um"):
            if d.get(key) is not None:
                v = float(_scalar(d[key]))
                if not (math.isfinite(v) and v > 0.0):
                    raise ValueError(f"commissioning {key} {v} is not a positive number")
                setattr(c, key, v)
        return c


@dataclass
class SavedState:
    path: Path
    pack: str
    saved_unix_s: float
    run_time_s: float
    reason: str
    stacks: list[SavedStack | None]
    latched_faults: list[dict[str, Any]] = field(default_factory=list)
    #: A FILE.tmp of an interrupted write was found and removed.
    removed_partial: bool = False
    #: Per stack (pack order) what ``bms commission`` recorded; None: nothing (or an older
    #: file). Empty: no commissioning in the file.
    commissioning: list[StackCommissioning | None] = field(default_factory=list)


def tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


# ---------------------------------------------------------------------------- encoding


def _plain(value: Any) -> Any:
    """numpy arrays and scalars -> JSON values (NaN/inf -> null)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "iu":
            return value.tolist()
        return [_plain(v) for v in value] if value.ndim > 1 else [
            x if math.isfinite(x) else None for x in value.tolist()]
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    return value


def _array(name: str, value: Any) -> np.ndarray:
    if name in _INT_ARRAYS:
        return np.asarray(value, dtype=_INT_ARRAYS[name])
    a = np.asarray(value, dtype=object)
    return np.where(a == None, np.nan, a).astype(float)  # noqa: E711 (elementwise)


def _scalar(value: Any) -> float | int:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    return value


def _digest(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _pack_shape(pack: PackConfig) -> dict[str, Any]:
    return {"pack": pack.name, "n_cells": pack.n_cells, "n_stacks": len(pack.stacks),
            "stack_cells": [s.cells for s in pack.stacks]}


def _describe(shape: dict[str, Any]) -> str:
    return (f"{shape.get('pack')!s} ({shape.get('n_cells')} cells in {shape.get('n_stacks')} "
            f"stack(s))")


# ---------------------------------------------------------------------------- write


def encode(pack: PackConfig, stacks: list[SavedStack | None], latched_faults: list[dict],
           run_time_s: float, reason: str, saved_unix_s: float,
           commissioning: list[StackCommissioning | None] | None = None) -> dict[str, Any]:
    """The document for ``pack`` (stacks in pack order; None: a stack with no state;
    ``commissioning``: what ``bms commission`` recorded, per stack, carried over)."""
    doc: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, **_pack_shape(pack),
        "saved_unix_s": saved_unix_s,
        "saved_utc": datetime.fromtimestamp(saved_unix_s, UTC).isoformat(timespec="seconds"),
        "run_time_s": _plain(run_time_s), "reason": reason,
        "stacks": [None if s is None else {
            "name": s.name, "state_unix_s": s.state_unix_s,
            "estimator": {k: _plain(v) for k, v in s.estimator.items()},
            **({} if s.load_cell_shares is None
               else {"load_cell_shares": [float(x) for x in s.load_cell_shares]})}
            for s in stacks],
        "latched_faults": latched_faults,
    }
    if commissioning and any(c is not None for c in commissioning):
        doc["commissioning"] = [None if c is None else c.to_dict() for c in commissioning]
    doc["sha256"] = _digest(doc)
    return doc


def serialize(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode()


def write(path: str | Path, doc: dict[str, Any] | bytes) -> int:
    """Write ``doc`` (or the bytes of ``serialize``) to ``path`` atomically (tmp file in the
    same folder, fsync, rename, fsync of the folder). Returns the bytes written;
    StateFileError (one line) on failure, with the old file untouched and no tmp file left."""
    path = Path(path)
    tmp = tmp_path(path)
    data = doc if isinstance(doc, bytes) else serialize(doc)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StateFileError(f"state file {path}: cannot write: {exc.strerror or exc}") from None
    # The rename is durable once the folder is synced (best effort: not every file system
    # lets a folder be opened for it).
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return len(data)


class StateWriter:
    """Writes state files from a background thread, so a tick never waits on the disk (the
    write, two fsyncs and the rename took 2-17 ms on this VM: a missed deadline at 100 Hz).
    The caller serializes (``submit`` takes bytes: the GIL-holding part stays in the caller's
    thread, the thread only makes system calls, which release it). The latest submission
    wins over one not yet started. ``results`` hands back each finished write: None for
    success or the StateFileError's line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._cv = threading.Condition()
        self._pending: bytes | None = None
        self._busy = False
        self._closed = False
        self._results: list[str | None] = []
        self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)
        self._thread.start()

    def submit(self, data: bytes) -> None:
        with self._cv:
            self._pending = data
            self._cv.notify_all()

    def results(self) -> list[str | None]:
        with self._cv:
            out, self._results = self._results, []
        return out

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every submission is written (or failed); False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: self._pending is None and not self._busy,
                                     timeout_s)

    def close(self, timeout_s: float = 10.0) -> bool:
        ok = self.flush(timeout_s)
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout_s)
        return ok

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return
                data, self._pending, self._busy = self._pending, None, True
            try:
                write(self.path, data)
                result: str | None = None
            except StateFileError as exc:
                result = str(exc)
            with self._cv:
                self._results.append(result)
                self._busy = False
                self._cv.notify_all()


def check_writable(path: str | Path) -> None:
    """Refuse early what can never be written: a folder that is missing or not a folder, a
    path that is a folder, a folder without write permission."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise StateFileError(f"state file {path}: is a folder")
    if not parent.is_dir():
        raise StateFileError(f"state file {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StateFileError(f"state file {path}: folder {parent} is not writable")


# ---------------------------------------------------------------------------- read


def load(path: str | Path, pack: PackConfig) -> SavedState | None:
    """The saved state for ``pack``, or None when ``path`` does not exist (a first run).
    A leftover ``path.tmp`` (an interrupted write) is removed. StateFileError (one line) for
    a file that cannot be read, is not a complete state file of this format version, fails
    its checksum, or is of another pack."""
    path = Path(path)
    removed = False
    tmp = tmp_path(path)
    if tmp.exists():
        try:
            tmp.unlink()
            removed = True
        except OSError as exc:
            raise StateFileError(f"state file {path}: cannot remove the partial {tmp.name} "
                                 f"of an interrupted write: {exc.strerror or exc}") from None
    if not path.exists():
        return None
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StateFileError(f"state file {path}: cannot read: {why}") from None
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise StateFileError(f"state file {path}: corrupt or truncated (not JSON: "
                             f"{getattr(exc, 'msg', exc)})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StateFileError(f"state file {path}: not an {FORMAT} file")
    if doc.get("version") != VERSION:
        raise StateFileError(f"state file {path}: format version {doc.get('version')!r}; "
                             f"this BMS reads version {VERSION}")
    if doc.get("sha256") != _digest(doc):
        raise StateFileError(f"state file {path}: corrupt (checksum mismatch)")
    want = _pack_shape(pack)
    got = {k: doc.get(k) for k in want}
    if got != want:
        raise StateFileError(f"state file {path}: saved for pack {_describe(got)}, this is "
                             f"{_describe(want)}")
    try:
        return _decode(path, doc, removed)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateFileError(f"state file {path}: malformed ({type(exc).__name__}: "
                             f"{exc})") from None


def _decode(path: Path, doc: dict[str, Any], removed: bool) -> SavedState:
    stacks: list[SavedStack | None] = []
    for entry in doc["stacks"]:
        if entry is None:
            stacks.append(None)
            continue
        est = {k: (_array(k, v) if isinstance(v, list) else _scalar(v))
               for k, v in entry["estimator"].items()}
        shares = entry.get("load_cell_shares")
        if shares is not None:
            shares = [float(x) for x in shares]
            if not all(math.isfinite(x) and x > 0.0 for x in shares):
                raise ValueError(f"load_cell_shares {shares} are not positive numbers")
        stacks.append(SavedStack(str(entry["name"]), float(entry["state_unix_s"]), est,
                                 shares))
    faults = doc["latched_faults"]
    if not isinstance(faults, list) or not all(isinstance(f, dict) for f in faults):
        raise TypeError("latched_faults is not a list of records")
    FaultTable().restore_latched(faults, 0.0)  # every record must be one (ValueError)
    commissioning: list[StackCommissioning | None] = []
    raw = doc.get("commissioning")
    if raw is not None:
        if not isinstance(raw, list) or len(raw) != len(stacks):
            raise ValueError("commissioning is not a list of one entry per stack")
        commissioning = [None if c is None else StackCommissioning.from_dict(c) for c in raw]
    return SavedState(path=path, pack=str(doc["pack"]), saved_unix_s=float(doc["saved_unix_s"]),
                      run_time_s=_scalar(doc["run_time_s"]), reason=str(doc["reason"]),
                      stacks=stacks, latched_faults=faults, removed_partial=removed,
                      commissioning=commissioning)
