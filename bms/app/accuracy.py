"""``bms accuracy``: the SOC accuracy benchmark on foreign truth.

For each PyBaMM parameter set in a truth folder (made by ``tools/pybamm_truth.py``, listed in
its ``manifest.json``), the cell model is fitted by ``bms fit`` (with ``--charge-transfer``
unless ``--no-charge-transfer``, and ``--diffusion-slope`` unless ``--no-diffusion-slope``)
from that set's OCV test and HPPC files only, and every
noisy drive-cycle file of the set is replayed through the BMS's core by ``bms replay`` from a
wrong initial SOC (and once from the OCV of its first sample), then scored against the
noise-free truth after a settling window. The estimator never sees the physics it is scored
on: PyBaMM's SPMe is not an equivalent circuit.

Targets (issue 11; :data:`TARGETS`): SOC RMSE <= 0.5 % and max |error| <= 2 % after the first
10 minutes in every file; 3-sigma coverage 95-99.7 % with a median 3-sigma bound <= 1.5 %.
Per replay: RMSE, max, the median bound, no leak flag (issue 11: "no leak flag on any healthy
cell"; the pack's cell_leak_a warning held for its debounce), and coverage >= 95 % (a bound
that misses the truth more often is too narrow whatever the statistics); the 95-99.7 % window
over the benchmark: pooled over every replay and over each parameter set's. Not per replay:
a replay's SOC error is correlated over minutes (7-70 independent stretches after settling,
measured: docs/estimation.md "How coverage is judged"), and a calibrated bound puts two thirds
or more of such files above 99.7 % (tools/coverage_calibrated.py); the count of replays inside
the window is printed beside it.

    bms accuracy --truth-dir /tmp/truth --out runs/accuracy [--sets Chen2020] [--check]
                 [--no-charge-transfer] [--no-diffusion-slope] [--fits-from runs/accuracy]

Output: ``accuracy.json`` and ``accuracy.md`` (one row per replay), the fitted packs and their
fit reports under ``fit/<set>/``. ``--fits-from DIR`` scores the packs an earlier run fitted
(``DIR/fit/<set>/<set>.yaml``) instead of fitting again (the fits take most of the time).
``--check`` exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bms.app.errors import (
    CliError,
    DataFileError,
    ExitCode,
    OutputError,
    Parser,
    UnreadableFileError,
    UsageError,
    report,
)
from bms.app.recording import read_recording
from bms.app.replay import DEFAULT_SETTLE_S, read_truth_soc, replay, score
from boards.config import ConfigError, PackConfig, load_pack

#: Issue 11's targets, as fractions of SOC.
TARGETS = {"rmse": 0.005, "max_abs": 0.02, "coverage_min": 0.95, "coverage_max": 0.997,
           "median_3sigma": 0.015}
#: Initial SOC errors the estimator is started with (issue 11: "20 % initial SOC error
#: allowed"); an error that would put the start outside [0, 1] is skipped.
DEFAULT_SOC_ERRORS = (-0.2, 0.2)
#: The drive files' cycler sign (tools/pybamm_truth.py: PyBaMM's, positive on discharge).
TRUTH_CURRENT_SIGN = "discharge-positive"


class AccuracyError(DataFileError):
    """A truth folder the benchmark cannot use (one line for the user; exit class config)."""


@dataclass(frozen=True)
class DriveCase:
    set_name: str
    data: Path
    truth: Path
    temperature_c: float
    initial_soc: float


@dataclass(frozen=True)
class TruthSet:
    name: str
    ocv: Path
    hppc: tuple[Path, ...]
    drives: tuple[DriveCase, ...]


@dataclass
class CaseResult:
    set_name: str
    file: str
    temperature_c: float
    initial_soc: float
    soc0: float | None  # None: from the OCV of the first sample
    rmse: float
    max_abs: float
    coverage: float
    median_3sigma: float
    residual_rms_mv: float
    samples: int
    wall_s: float
    # error / sigma after the settling window: RMS (1: the bound right in the RMS sense) and
    # largest (replay.Score); not targets, they say why a coverage is missed: above 99.7 %
    # with an RMS near 1 is an error without a tail, not a bound too wide
    z_rms: float = math.nan
    z_max: float = math.nan
    # the leak protection's input over the whole replay (the lower 3-sigma bound of the
    # estimated soft-short current, bms.protections.LeakLowerBound): its largest value and
    # the longest time it stayed above the pack's cell_leak_a warning level; a flag is that
    # time reaching the level's debounce (a healthy cell: issue 11, "no leak flag")
    leak_low_max_a: float = math.nan
    leak_above_warning_s: float = 0.0
    leak_flagged: bool = False

    @property
    def start(self) -> str:
        if self.soc0 is None:
            return "OCV"
        return f"{100 * (self.soc0 - self.initial_soc):+.0f} %"

    def misses(self) -> list[str]:
        """The targets this replay misses (empty: all met)."""
        out = []
        if not self.rmse <= TARGETS["rmse"]:
            out.append("rmse")
        if not self.max_abs <= TARGETS["max_abs"]:
            out.append("max")
        if not self.coverage >= TARGETS["coverage_min"]:
            out.append("coverage")
        if not self.median_3sigma <= TARGETS["median_3sigma"]:
            out.append("bound")
        if self.leak_flagged:
            out.append("leak")
        return out


def discover(truth_dir: Path) -> list[TruthSet]:
    """The parameter sets of a truth folder, from its manifest.json."""
    manifest_path = truth_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except FileNotFoundError:
        raise UnreadableFileError(f"{manifest_path}: not found (make the truth files with "
                                  "tools/pybamm_truth.py -o DIR)") from None
    except OSError as exc:
        raise UnreadableFileError(f"{manifest_path}: cannot read ({exc.strerror or exc})"
                                  ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise AccuracyError(f"{manifest_path}: not a truth manifest ({exc})") from None
    by_set: dict[str, dict[str, Any]] = {}
    for e in files:
        s = by_set.setdefault(e["set"], {"ocv": None, "hppc": [], "drive": []})
        path = truth_dir / e["file"]
        if e["kind"] == "ocv":
            s["ocv"] = path
        elif e["kind"] == "hppc":
            s["hppc"].append(path)
        elif e["kind"] == "drive":
            s["drive"].append(DriveCase(e["set"], path, path.with_name(path.stem + "_truth.csv"),
                                        float(e["temperature_c"]), float(e["initial_soc"])))
    out = []
    for name, s in by_set.items():
        if s["ocv"] is None or not s["hppc"]:
            raise AccuracyError(f"{manifest_path}: set {name} has no OCV test or no HPPC file")
        out.append(TruthSet(name, s["ocv"], tuple(s["hppc"]), tuple(s["drive"])))
    return out


def fit_pack(ts: TruthSet, out_dir: Path, rc_branches: int, base: str,
             charge_transfer: bool = False, diffusion_slope: bool = False) -> PackConfig:
    """The set's cell model by ``bms fit`` (OCV test + HPPC files only), written and loaded
    back as the BMS would load it."""
    from bms.app import fit as fitting  # the fit's own dependencies only when fitting

    out_dir.mkdir(parents=True, exist_ok=True)
    pack_path = out_dir / f"{ts.name}.yaml"
    result = fitting.fit(ts.ocv, list(ts.hppc), current_sign=TRUTH_CURRENT_SIGN, base=base,
                         rc_branches=rc_branches, charge_transfer=charge_transfer,
                         diffusion_slope=diffusion_slope)
    result.write_pack(pack_path)
    if hasattr(result, "write_report"):
        result.write_report(out_dir)
    return load_pack(pack_path)


def score_case(pack: PackConfig, case: DriveCase, soc0: float | None,
               settle_s: float) -> CaseResult:
    rec = read_recording(case.data, TRUTH_CURRENT_SIGN)
    res = replay(pack, rec, soc0)
    truth_t, truth_soc = read_truth_soc(case.truth, rec.n_cells)
    sc = score(res, truth_t, truth_soc, settle_s=settle_s)
    resid = res.residual_v
    ok = np.isfinite(resid)
    rms_mv = float(1e3 * np.sqrt(np.mean(resid[ok] ** 2))) if ok.any() else math.nan
    level = pack.protections["cell_leak_a"]
    low_max, above_s = leak_flag_time(res.time_s, res.leak_a - 3.0 * res.leak_sigma_a,
                                      level.warning)
    return CaseResult(case.set_name, case.data.name, case.temperature_c, case.initial_soc, soc0,
                      sc.rmse, sc.max_abs, sc.coverage, sc.median_3sigma, rms_mv, sc.samples,
                      res.wall_s, sc.z_rms, sc.z_max, low_max, above_s,
                      above_s >= level.debounce_s)


def leak_flag_time(time_s: np.ndarray, leak_low_a: np.ndarray, warning_a: float
                   ) -> tuple[float, float]:
    """(largest lower bound over every cell and sample, longest continuous time any cell's
    lower bound stayed above ``warning_a``) of a replay; NaN samples count as below."""
    finite = np.isfinite(leak_low_a)
    low_max = float(np.max(leak_low_a[finite])) if finite.any() else math.nan
    longest = 0.0
    above = np.where(finite, leak_low_a, -np.inf) > warning_a  # (samples, cells)
    for cell in np.flatnonzero(above.any(axis=0)):
        a = above[:, cell]
        start = None
        for k in range(len(a)):
            if a[k] and start is None:
                start = time_s[k]
            if start is not None and (not a[k] or k == len(a) - 1):
                longest = max(longest, float(time_s[k] - start))
                start = None
    return low_max, longest


def fitted_pack(fits_from: Path, set_name: str) -> PackConfig:
    """The pack an earlier ``bms accuracy --out fits_from`` fitted for ``set_name``."""
    path = fits_from / "fit" / set_name / f"{set_name}.yaml"
    if not path.is_file():
        raise UnreadableFileError(f"--fits-from {fits_from}: {path} not found (the --out "
                                  "folder of an earlier bms accuracy run that fitted "
                                  f"{set_name})")
    return load_pack(path)


def starts(initial_soc: float, soc_errors: tuple[float, ...]) -> list[float | None]:
    """None (from the OCV) and every initial error that keeps the start inside [0, 1]."""
    out: list[float | None] = [None]
    out += [round(initial_soc + e, 6) for e in soc_errors if 0.0 <= initial_soc + e <= 1.0]
    return out


def run(truth_dir: Path, out_dir: Path, sets: list[str] | None = None,
        temperatures: list[float] | None = None,
        soc_errors: tuple[float, ...] = DEFAULT_SOC_ERRORS, settle_s: float = DEFAULT_SETTLE_S,
        rc_branches: int = 2, base: str = "ssb-23", pack: str | None = None,
        log=print, charge_transfer: bool = True, diffusion_slope: bool = True,
        fits_from: Path | None = None) -> list[CaseResult]:
    """Fit each set (or use ``pack`` for all, or the packs fitted under ``fits_from``;
    ``charge_transfer``: ``bms fit --charge-transfer``; ``diffusion_slope``:
    ``--diffusion-slope``), replay each drive file from each start, score."""
    truth_sets = discover(truth_dir)
    if sets:
        unknown = sorted(set(sets) - {t.name for t in truth_sets})
        if unknown:
            raise UsageError(f"--sets: set {unknown[0]} is not in {truth_dir / 'manifest.json'} "
                                f"(it has {', '.join(t.name for t in truth_sets)})")
        truth_sets = [t for t in truth_sets if t.name in sets]
    results = []
    for ts in truth_sets:
        t0 = time.perf_counter()
        if pack:
            model, how = load_pack(pack), f"from {pack}"
        elif fits_from is not None:
            model, how = fitted_pack(fits_from, ts.name), f"as fitted in {fits_from}"
        else:
            model, how = fit_pack(ts, out_dir / "fit" / ts.name, rc_branches, base,
                                  charge_transfer, diffusion_slope), "fitted"
        log(f"{ts.name}: model {how} ({time.perf_counter() - t0:.1f} s)")
        for case in ts.drives:
            if temperatures is not None and case.temperature_c not in temperatures:
                continue
            for soc0 in starts(case.initial_soc, soc_errors):
                r = score_case(model, case, soc0, settle_s)
                results.append(r)
                log(f"  {r.file:<34} start {r.start:>6}: RMSE {100 * r.rmse:.2f} %, "
                    f"max {100 * r.max_abs:.2f} %, coverage {100 * r.coverage:.1f} %, "
                    f"bound {100 * r.median_3sigma:.2f} %, error / sigma RMS {r.z_rms:.2f}, "
                    f"leak low max {1e3 * r.leak_low_max_a:.0f} mA"
                    + (f"  MISSES {','.join(r.misses())}" if r.misses() else ""))
    return results


def pooled_coverage(results: list[CaseResult]) -> dict[str, float]:
    """3-sigma coverage over all replays (``all``) and each parameter set's, each sample
    counted once (weighted by the replays' scored samples)."""
    groups: dict[str, list[CaseResult]] = {"all": list(results)}
    for r in results:
        groups.setdefault(r.set_name, []).append(r)
    return {k: sum(r.coverage * r.samples for r in g) / max(1, sum(r.samples for r in g))
            for k, g in groups.items() if g}


def benchmark_misses(results: list[CaseResult]) -> list[str]:
    """The targets missed over the benchmark: the pooled coverage outside 95-99.7 % (all, or
    a set's)."""
    return [f"coverage {name} {100 * c:.2f} %" for name, c in pooled_coverage(results).items()
            if not TARGETS["coverage_min"] <= c <= TARGETS["coverage_max"]]


def markdown(results: list[CaseResult]) -> str:
    lines = ["| set | T [C] | file | start | SOC RMSE | max error | 3-sigma coverage | "
             "median 3-sigma | error / sigma RMS, max | V residual RMS | leak low max | targets |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r.set_name} | {r.temperature_c:g} | {r.file} | {r.start} | "
                     f"{100 * r.rmse:.2f} % | {100 * r.max_abs:.2f} % | "
                     f"{100 * r.coverage:.1f} % | {100 * r.median_3sigma:.2f} % | "
                     f"{r.z_rms:.2f}, {r.z_max:.1f} | "
                     f"{r.residual_rms_mv:.1f} mV | {1e3 * r.leak_low_max_a:.0f} mA | "
                     f"{'met' if not r.misses() else 'missed: ' + ', '.join(r.misses())}"
                     f"{' (coverage above 99.7 %)' if r.coverage > TARGETS['coverage_max'] else ''}"
                     " |")
    lines += ["", "| 3-sigma coverage pooled over | samples | coverage | 95-99.7 % |",
              "|---|---:|---:|---|"]
    for name, c in pooled_coverage(results).items():
        n = sum(r.samples for r in results if name in ("all", r.set_name))
        ok = TARGETS["coverage_min"] <= c <= TARGETS["coverage_max"]
        lines.append(f"| {'every replay' if name == 'all' else name} | {n} | {100 * c:.2f} % | "
                     f"{'met' if ok else 'missed'} |")
    return "\n".join(lines) + "\n"


def summary_lines(results: list[CaseResult]) -> list[str]:
    if not results:
        return ["no drive file matched"]
    met = sum(not r.misses() for r in results)
    worst = max(results, key=lambda r: r.rmse)
    pooled = pooled_coverage(results)
    inside = sum(TARGETS["coverage_min"] <= r.coverage <= TARGETS["coverage_max"]
                 for r in results)
    missed = benchmark_misses(results)
    return [f"{met} of {len(results)} replays meet every per-replay target; worst RMSE "
            f"{100 * worst.rmse:.2f} % ({worst.file}, start {worst.start}); max |error| "
            f"{100 * max(r.max_abs for r in results):.2f} %; coverage "
            f"{100 * min(r.coverage for r in results):.1f}-"
            f"{100 * max(r.coverage for r in results):.1f} %; median 3-sigma up to "
            f"{100 * max(r.median_3sigma for r in results):.2f} %; error / sigma RMS "
            f"{min(r.z_rms for r in results):.2f}-{max(r.z_rms for r in results):.2f}; "
            f"leak flags {sum(r.leak_flagged for r in results)} (lower 3-sigma bound up to "
            f"{1e3 * max(r.leak_low_max_a for r in results):.0f} mA)",
            "3-sigma coverage pooled: " + ", ".join(
                f"{k} {100 * v:.2f} %" for k, v in pooled.items())
            + (f" (MISSES {'; '.join(missed)})" if missed else " (95-99.7 %: met)")
            + f"; replays inside 95-99.7 % each: {inside} of {len(results)}, "
            f"{sum(r.coverage > TARGETS['coverage_max'] for r in results)} above"]


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{what} {text!r}: expected comma-separated numbers") from None


def parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="bms accuracy", description=__doc__.split("\n\n")[0],
        epilog="examples:\n"
               "  python tools/pybamm_truth.py -o /tmp/truth        # the truth (pip install "
               "'.[truth]')\n"
               "  bms accuracy --truth-dir /tmp/truth --out runs/accuracy\n"
               "  bms accuracy --truth-dir /tmp/truth --out runs/acc --sets Chen2020 "
               "--temperatures 0,25 --check",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--truth-dir", type=Path, required=True,
                    help="folder made by tools/pybamm_truth.py (with manifest.json)")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--sets", default=None, help="parameter sets, comma separated (default all)")
    ap.add_argument("--temperatures", default=None,
                    help="drive-file temperatures to score, degC, comma separated (default all)")
    ap.add_argument("--soc-errors", default=",".join(f"{e:g}" for e in DEFAULT_SOC_ERRORS),
                    help="initial SOC errors, fractions (default %(default)s; the OCV start "
                         "is always scored too)")
    ap.add_argument("--settle-s", type=float, default=DEFAULT_SETTLE_S,
                    help="score after this long (default %(default)s s)")
    ap.add_argument("--rc-branches", type=int, choices=(1, 2), default=2,
                    help="RC branches of the fitted model (default %(default)s)")
    ap.add_argument("--charge-transfer", action=argparse.BooleanOptionalAction, default=True,
                    help="fit with a Butler-Volmer charge-transfer overpotential "
                         "(bms fit --charge-transfer; default on)")
    ap.add_argument("--diffusion-slope", action=argparse.BooleanOptionalAction, default=True,
                    help="fit the slow branch's resistance as c x dOCV/dSOC "
                         "(bms fit --diffusion-slope; default on)")
    ap.add_argument("--base", default="ssb-23",
                    help="pack the fitted cell goes into (estimator settings; default "
                         "%(default)s)")
    ap.add_argument("--pack", default=None,
                    help="score this pack for every set instead of fitting (a baseline)")
    ap.add_argument("--fits-from", type=Path, default=None, metavar="DIR",
                    help="score the packs an earlier run fitted (DIR/fit/SET/SET.yaml, DIR its "
                         "--out) instead of fitting again")
    ap.add_argument("--check", action="store_true",
                    help=f"exit {int(ExitCode.CHECK_FAILED)} when a target is missed")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # The one error path (bms/app/errors.py): a command-line value 2, a truth folder or pack
    # that cannot be used 3, a file that cannot be read or written 5.
    try:
        if not (math.isfinite(args.settle_s) and args.settle_s >= 0):
            raise UsageError(f"--settle-s {args.settle_s}: expected a number >= 0")
        errors = tuple(_floats(args.soc_errors, "--soc-errors"))
        if any(not -1.0 < e < 1.0 for e in errors):
            raise UsageError(f"--soc-errors {args.soc_errors}: fractions in (-1, 1)")
        temps = _floats(args.temperatures, "--temperatures") if args.temperatures else None
        sets = [s.strip() for s in args.sets.split(",") if s.strip()] if args.sets else None
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"--out {args.out}: cannot be made ({exc.strerror or exc})"
                              ) from exc
        t0 = time.perf_counter()
        results = run(args.truth_dir, args.out, sets, temps, errors, args.settle_s,
                      args.rc_branches, args.base, args.pack,
                      charge_transfer=args.charge_transfer,
                      diffusion_slope=args.diffusion_slope, fits_from=args.fits_from)
        wall = time.perf_counter() - t0
        (args.out / "accuracy.json").write_text(json.dumps(
            {"targets": TARGETS, "settle_s": args.settle_s, "wall_s": round(wall, 2),
             "pooled_coverage": pooled_coverage(results),
             "benchmark_misses": benchmark_misses(results),
             "results": [{**dataclasses.asdict(r), "misses": r.misses()} for r in results]},
            indent=2) + "\n")
        (args.out / "accuracy.md").write_text(markdown(results))
    except (CliError, ConfigError) as exc:
        return report("accuracy", exc)
    except OSError as exc:  # the outputs under --out
        return report("accuracy", OutputError(f"{exc.filename or args.out}: cannot write "
                                              f"({exc.strerror or exc})"))
    for line in summary_lines(results):
        print(line)
    print(f"({wall:.1f} s) -> {args.out / 'accuracy.md'}, {args.out / 'accuracy.json'}")
    if args.check and (any(r.misses() for r in results) or benchmark_misses(results)):
        return ExitCode.CHECK_FAILED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
