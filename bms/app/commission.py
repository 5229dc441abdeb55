"""``bms commission``: record each stack's fixture baseline into a state file.

A healthy stack's load cells never read alike (assembly tilt, the load cells' gain and offset
spread) and its pressure never follows the pack file's nominal fixture exactly (preload and
stiffness vary from one assembly to the next). Commissioning measures both on the stack itself,
so LOAD_CELL_IMBALANCE and STACK_PRESSURE_RESIDUAL watch *change* from this baseline, not the
assembly:

- load cells: p_j = share_j P + offset_j (P the stack's mean) by least squares when the recorded
  mean pressure spans at least ``MIN_SPAN_KPA`` (a charge or a drive); at one pressure (a pack at
  rest) gain and offset cannot be told apart: shares only (p_j / P averaged), no offsets;
- pressure model: the logged residual (measured minus expected) fitted as c0 + c1 (expected -
  preload) over the run, giving the stack's preload (+ c0) and stiffness (x (1 + c1)); the
  stiffening shape stays the pack's. Without ``MIN_SPAN_KPA`` of modelled swing: preload only.

From a recorded run (``--from-run DIR``: a ``bms run`` log folder of the same pack, e.g. one
with a charge) or live (a short ``bms run --no-close`` on the pack at rest, its log kept in
``--log``). The result goes into the state file (bms/statefile.py, ``commissioning``); the next
``bms run --state FILE`` uses it from its first tick. Running ``bms commission`` again replaces
it (after the fixture is reassembled) and keeps the estimator state and latched faults. A
baseline that is itself out of bounds (static imbalance at the imbalance fault level, preload
off the pack's by the residual warning level or more, stiffness off by more than 30 %) is
refused: it is not a healthy fixture, or not the fixture this pack file describes.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bms.app.errors import DataFileError, Parser, UnreadableFileError, UsageError, positive_seconds
from bms.runlog import EVENTS, TICKS, load_events
from bms.statefile import StackCommissioning, check_writable, encode, write
from bms.statefile import load as load_state
from boards.config import PackConfig, load_board, load_pack

#: Mean-pressure swing (5th to 95th percentile) over which gain and offset of each load cell,
#: and the stiffness, are fitted (assumption: 100 kPa is 100 x the load cells' 1 kPa noise and
#: ~20 % of the ssb-23 stack's 0-100 % SOC swing; a pack at rest has ~0).
MIN_SPAN_KPA = 100.0
#: The estimator's first seconds are left out of the pressure-model fit (its SOC converges from
#: the OCV start; assumption: 60 s, or half of a shorter run).
SKIP_S = 60.0
#: At least this many rows with every load cell valid (1 s at the 10 Hz tick).
MIN_ROWS = 10
#: A commissioned stiffness more than this fraction off the pack file's is refused
#: (assumption: a spring stack within +-30 % of its design is one this pack file describes).
MAX_STIFFNESS_DEV = 0.3


@dataclass
class StackFit:
    """One stack's commissioning and the figures the report prints."""

    record: StackCommissioning
    rows: int
    p_lo_kpa: float
    p_hi_kpa: float
    imbalance_before_kpa: float
    imbalance_after_kpa: float
    resid_before: tuple[float, float, float]   # mean, std, max |r| (kPa)
    resid_after: tuple[float, float, float]
    model_from: tuple[float, float]            # preload, stiffness the run was made with
    fit_kind: str                              # "gain and offset" / "shares only"
    model_kind: str                            # "preload and stiffness" / "preload only"


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="bms commission",
        description="Record each stack's fixture baseline (load-cell shares and offsets, the "
        "stack's own preload and stiffness) into a state file, from a recorded run or live on "
        "the pack at rest; the next `bms run --state FILE` uses it. Run again after the fixture "
        "is reassembled: the new baseline replaces the old, the estimator state stays.",
        epilog="examples:\n"
        "  bms commission --pack ssb-4x23 --state s.json --from-run runs/charge1  # over a charge\n"
        "  bms commission --pack ssb-23 --state s.json --port /dev/ttyACM0 --clock real\n"
        "  bms commission --pack ssb-23 --state s.json --duration 10        # emulated, at rest\n\n"
        "exit codes: 0 ok, 2 usage, 3 pack file / state file / run log that cannot be used "
        "(or a baseline out of bounds), 4 board, 5 a file that cannot be read or written "
        "(docs/errors.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="ssb-23", help="pack file or built-in name")
    ap.add_argument("--state", type=Path, required=True, metavar="FILE",
                    help="state file to record into (created if missing; an existing one keeps "
                    "its estimator state and latched faults)")
    ap.add_argument("--from-run", type=Path, default=None, metavar="DIR",
                    help="a `bms run` log folder of this pack to commission from (no board)")
    live = ap.add_argument_group("live (without --from-run): a `bms run --no-close` at rest")
    live.add_argument("--port", action="append", default=[],
                      help="as bms run: one per stack (none: emulated boards)")
    live.add_argument("--clock", choices=("sim", "real"), default=None, help="as bms run")
    live.add_argument("--seed", default=None, help="as bms run (emulated boards)")
    live.add_argument("--soc", default=None, help="as bms run (emulated boards)")
    live.add_argument("--duration", type=positive_seconds, default=10.0,
                      help="seconds of measurement, > 0 (default 10)")
    live.add_argument("--log", type=Path, default=None,
                      help="log folder of the measurement (default runs/commission-TIME)")
    return ap


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    pack = load_pack(args.pack)
    check_writable(args.state)
    saved = load_state(args.state, pack)  # a file that cannot be read is refused, untouched
    if args.from_run is not None:
        for name in ("port", "clock", "seed", "soc", "log"):
            if getattr(args, name):
                raise UsageError(f"--{name} is for a live commissioning; --from-run "
                                 f"{args.from_run} reads a recorded run")
        run_dir = args.from_run
    else:
        run_dir = _measure(args)
    fits = commission(pack, run_dir)
    commissioning: list[StackCommissioning | None] = [f.record for f in fits]
    now = time.time()
    if saved is None:
        doc = encode(pack, [None] * len(pack.stacks), [], 0.0, "commission", now, commissioning)
    else:
        doc = encode(pack, saved.stacks, saved.latched_faults, saved.run_time_s, saved.reason,
                     saved.saved_unix_s, commissioning)
    write(args.state, doc)
    print(report(pack, run_dir, fits))
    replaced = [c for c in (saved.commissioning if saved else []) if c is not None]
    print(f"state file {args.state}: commissioning of {len(fits)} stack(s) recorded"
          + (f" (replaces the one of {replaced[0].recorded_utc})" if replaced else "")
          + ("; its estimator state and latched faults kept" if saved is not None else
             " (new file)"))
    return 0


def _measure(args: argparse.Namespace) -> Path:
    """A short ``bms run --no-close`` (contactors stay open: the pack at rest) into the log
    folder; raises its errors (the same lines and exit codes as bms run)."""
    from bms.app import run

    log = args.log or run.default_log_dir("commission")
    argv = ["--pack", args.pack, "--no-close", "--quiet", "--no-monitor", "--duration",
            repr(args.duration), "--log", str(log)]
    for port in args.port:
        argv += ["--port", port]
    for name in ("clock", "seed", "soc"):
        if getattr(args, name) is not None:
            argv += [f"--{name}", str(getattr(args, name))]
    code = run.main(argv)
    if code != 0:
        raise DataFileError(f"run log {log}: the measurement run ended with exit code {code}; "
                            f"nothing recorded", "its summary.json and events.jsonl say why")
    return log


# ------------------------------------------------------------------ the fit


def _read_columns(run_dir: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The named columns of the run's ticks.csv (streamed: a day's log has 10^6 rows)."""
    path = run_dir / TICKS
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataFileError(f"run log {path}: empty")
            missing = [n for n in names if n not in header]
            if missing:
                raise DataFileError(f"run log {path}: no column {missing[0]!r}",
                                    "the folder of a `bms run` of this pack (--pack)")
            idx = [header.index(n) for n in names]
            width = len(header)
            cols: list[list[float]] = [[] for _ in names]
            for row in reader:
                if len(row) != width:  # a torn last row
                    continue
                for c, i in zip(cols, idx, strict=True):
                    c.append(float(row[i]) if row[i] else math.nan)
    except OSError as exc:
        raise UnreadableFileError(f"run log {path}: {exc.strerror or exc}",
                                  "--from-run takes a `bms run` log folder") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataFileError(f"run log {path}: not a run log ({exc})") from None
    return {n: np.asarray(c, dtype=float) for n, c in zip(names, cols, strict=True)}


def commission(pack: PackConfig, run_dir: Path) -> list[StackFit]:
    """Each stack's commissioning from the run log in ``run_dir`` (DataFileError, one line,
    when the log is not of this pack, too short, or the baseline is out of bounds)."""
    run_dir = Path(run_dir)
    if not (run_dir / TICKS).is_file():
        raise UnreadableFileError(f"run log {run_dir}: no {TICKS}",
                                  "--from-run takes a `bms run` log folder")
    events = load_events(run_dir) if (run_dir / EVENTS).is_file() else []
    meta = next((e for e in events if e.get("type") == "meta"), {})
    if meta.get("pack") not in (None, pack.name):
        raise DataFileError(f"run log {run_dir}: a run of pack {meta.get('pack')!r}, not "
                            f"{pack.name!r}", "--pack must be the pack of the recorded run")
    used = {e["stack"]: (float(e["preload_kpa"]), float(e["stiffness_kpa_per_um"]))
            for e in events if e.get("type") == "commissioning" and e.get("event") == "applied"}
    counts = [load_board(s.board).load_cells for s in pack.stacks]
    n_st = len(pack.stacks)
    n_therm = sum(len(s.thermistor_cell_positions) for s in pack.stacks)
    width = 3 if max(pack.n_cells, n_therm, sum(counts)) > 99 else 2  # as runlog numbers them
    lc_names = [f"pressure_lc{i + 1:0{width}d}_kpa" for i in range(sum(counts))]
    sfx = [f"_s{k + 1}" if n_st > 1 else "" for k in range(n_st)]
    names = (["time_s"] + lc_names + [f"pressure_expected{x}_kpa" for x in sfx]
             + [f"pressure_residual{x}_kpa" for x in sfx])
    cols = _read_columns(run_dir, names)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    fits, j0 = [], 0
    for k, stack in enumerate(pack.stacks):
        p = np.stack([cols[n] for n in lc_names[j0:j0 + counts[k]]], axis=1)
        j0 += counts[k]
        if counts[k] == 0:
            raise DataFileError(f"pack {pack.name}: stack {stack.name} has no load cells: "
                                f"nothing to commission")
        fits.append(_fit_stack(pack, k, run_dir, cols["time_s"], p,
                               cols[f"pressure_expected{sfx[k]}_kpa"],
                               cols[f"pressure_residual{sfx[k]}_kpa"],
                               used.get(k, (pack.fixture.preload_kpa,
                                            pack.fixture.stiffness_kpa_per_um)), stamp))
    return fits


def _stats(r: np.ndarray) -> tuple[float, float, float]:
    return float(np.mean(r)), float(np.std(r)), float(np.max(np.abs(r)))


def _fit_stack(pack: PackConfig, k: int, run_dir: Path, t: np.ndarray, p: np.ndarray,
               expected: np.ndarray, resid: np.ndarray, model: tuple[float, float],
               stamp: str) -> StackFit:
    name = pack.stacks[k].name
    where = f"run log {run_dir}: stack {name}"
    ok = np.all(np.isfinite(p), axis=1)
    if ok.sum() < MIN_ROWS:
        raise DataFileError(f"{where}: {int(ok.sum())} rows with every load cell valid, at "
                            f"least {MIN_ROWS} needed", "a longer run (--duration)")
    pv = p[ok]
    mean = pv.mean(axis=1)
    lo, hi = float(np.percentile(mean, 5)), float(np.percentile(mean, 95))
    m = pv.shape[1]
    shares: list[float] | None = None
    offsets: list[float] | None = None
    fit_kind = "one load cell: no imbalance"
    raw = float(np.median(pv.max(axis=1) - pv.min(axis=1)))
    after = raw
    if m >= 2:
        if hi - lo >= MIN_SPAN_KPA:
            a = np.stack([mean, np.ones_like(mean)], axis=1)
            coef = np.linalg.lstsq(a, pv, rcond=None)[0]  # 2 x m: share, offset
            shares, offsets = coef[0].tolist(), coef[1].tolist()
            fit_kind = "gain and offset"
        else:
            shares = (pv / mean[:, None]).mean(axis=0).tolist()
            fit_kind = "shares only (one pressure)"
        s_arr = np.asarray(shares)
        b_arr = np.zeros(m) if offsets is None else np.asarray(offsets)
        corr = (pv - b_arr) / s_arr
        after = float(np.median(corr.max(axis=1) - corr.min(axis=1)))
        limit = pack.protections["load_cell_imbalance_kpa"].fault
        if raw >= limit or not np.all(s_arr > 0.0):
            raise DataFileError(f"{where}: static load-cell imbalance {raw:.1f} kPa is at or "
                                f"above the imbalance fault level {limit:g} kPa: not a "
                                f"fixture's normal, nothing recorded",
                                "check the end plate and the load cells, then commission again")
    # the pressure model: the run's residual against the model it was made with
    use = np.isfinite(expected) & np.isfinite(resid)
    skip = min(SKIP_S, 0.5 * float(t[-1] - t[0])) if len(t) else 0.0
    use &= t >= t[0] + skip
    if use.sum() < MIN_ROWS:
        raise DataFileError(f"{where}: {int(use.sum())} rows with a pressure residual, at "
                            f"least {MIN_ROWS} needed", "a longer run (--duration)")
    preload0, stiff0 = model
    x = expected[use] - preload0
    r = resid[use]
    if float(np.percentile(x, 95) - np.percentile(x, 5)) >= MIN_SPAN_KPA:
        c0, c1 = np.linalg.lstsq(np.stack([np.ones_like(x), x], axis=1), r, rcond=None)[0]
        model_kind = "preload and stiffness"
    else:
        c0, c1 = float(np.median(r)), 0.0
        model_kind = "preload only (one operating point)"
    preload, stiff = preload0 + float(c0), stiff0 * (1.0 + float(c1))
    fx = pack.fixture
    lim = pack.protections["stack_pressure_residual_kpa"].warning
    if abs(preload - fx.preload_kpa) >= lim:
        raise DataFileError(f"{where}: preload {preload:.0f} kPa is {preload - fx.preload_kpa:+.0f}"
                            f" kPa off the pack file's {fx.preload_kpa:g} kPa (limit: the "
                            f"residual warning level, {lim:g} kPa): nothing recorded",
                            "a fixture assembled to another preload, or another pack file")
    if abs(stiff / fx.stiffness_kpa_per_um - 1.0) > MAX_STIFFNESS_DEV:
        raise DataFileError(f"{where}: stiffness {stiff:.4f} kPa/um is "
                            f"{100 * (stiff / fx.stiffness_kpa_per_um - 1):+.0f} % off the pack "
                            f"file's {fx.stiffness_kpa_per_um:g} (limit "
                            f"{100 * MAX_STIFFNESS_DEV:.0f} %): nothing recorded",
                            "a fixture with other springs, or another pack file")
    record = StackCommissioning(
        name=name, recorded_utc=stamp, source=str(run_dir), load_cell_shares=shares,
        load_cell_offsets_kpa=offsets, preload_kpa=preload, stiffness_kpa_per_um=stiff)
    return StackFit(record, int(ok.sum()), lo, hi, raw, after, _stats(r),
                    _stats(r - c0 - c1 * x), model, fit_kind, model_kind)


def report(pack: PackConfig, run_dir: Path, fits: list[StackFit]) -> str:
    """What was recorded, per stack, with the figures it rests on."""
    lines = [f"bms commission: pack {pack.name}, from {run_dir}"]
    for f in fits:
        c = f.record
        lines.append(f"  {c.name}: {f.rows} rows, mean pressure {f.p_lo_kpa:.0f}-"
                     f"{f.p_hi_kpa:.0f} kPa (5-95 %)")
        if c.load_cell_shares is not None:
            off = ("" if c.load_cell_offsets_kpa is None else
                   ", offsets " + " ".join(f"{x:+.1f}" for x in c.load_cell_offsets_kpa) + " kPa")
            lines.append(f"    load cells ({f.fit_kind}): shares "
                         + " ".join(f"{x:.4f}" for x in c.load_cell_shares) + off
                         + f"; static imbalance {f.imbalance_before_kpa:.1f} kPa, "
                         f"{f.imbalance_after_kpa:.1f} kPa after the baseline")
        mb, sb, xb = f.resid_before
        ma, sa, xa = f.resid_after
        assert c.preload_kpa is not None and c.stiffness_kpa_per_um is not None
        lines.append(f"    pressure model ({f.model_kind}): preload {f.model_from[0]:.1f} -> "
                     f"{c.preload_kpa:.1f} kPa, stiffness {f.model_from[1]:.4f} -> "
                     f"{c.stiffness_kpa_per_um:.4f} kPa/um; residual over the run "
                     f"{mb:+.1f} +- {sb:.1f} kPa (max |r| {xb:.1f}) -> {ma:+.1f} +- {sa:.1f} "
                     f"(max {xa:.1f})")
    return "\n".join(lines)

