"""Estimator quality against the emulator's plant, with and without pressure fusion.

The command line over :mod:`bms.app.eval_estimator` (whose docstring has the scenario): SOC RMSE
and max error after convergence, coverage of the 3-sigma bound, soft-short flag time, false leak
flags. With --seeds, a sweep over plant seeds (fusion on) that reports per seed the false leak
warnings on healthy cells under the pack's cell_leak_a protection (cell, start, duration), the
short's warning and fault times, and SOC RMSE / max / coverage.

    python tools/eval_estimator.py [--minutes 120] [--short-ohm 10] [--no-fusion] [--json]
    python tools/eval_estimator.py --seeds 1-20 --minutes 120 [--short-ohm 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from bms.app.eval_estimator import EvalResult, parse_seeds, run, sweep


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} s"


def _print_sweep(results: list[EvalResult]) -> None:
    print("seed  RMSE %  max %  cover %  short warn / fault   healthy max low A  false warnings")
    for r in results:
        fw = ", ".join(f"cell {e.cell} {e.level} at {e.start_s:.0f} s for {e.duration_s:.0f} s"
                       for e in r.false_warnings) or "none"
        short = (f"{_fmt_s(r.short_warning_s):>7} / {_fmt_s(r.short_fault_s):<7}"
                 if r.short_ohm is not None else f"{'-':>7} / {'-':<7}")
        print(f"{r.seed:4d}  {r.soc_rmse_pct:6.2f} {r.soc_max_err_pct:6.2f} "
              f"{100 * r.coverage_3sigma:7.1f}   {short}   {r.healthy_leak_low_max_a:+17.3f}"
              f"  {fw}")
    n_false = sum(len(r.false_warnings) for r in results)
    rmse = [r.soc_rmse_pct for r in results]
    print(f"{len(results)} seeds: {n_false} false leak warning episodes on healthy cells; "
          f"SOC RMSE {min(rmse):.2f}..{max(rmse):.2f} % (mean {sum(rmse) / len(rmse):.2f} %), "
          f"max error {max(r.soc_max_err_pct for r in results):.2f} %, coverage "
          f"{100 * min(r.coverage_3sigma for r in results):.1f}.."
          f"{100 * max(r.coverage_3sigma for r in results):.1f} %")
    if results and results[0].short_ohm is not None:
        warn = [r.short_warning_s for r in results]
        fault = [r.short_fault_s for r in results]
        missed = sum(w is None or f is None for w, f in zip(warn, fault, strict=True))
        got_w = [w for w in warn if w is not None]
        got_f = [f for f in fault if f is not None]
        def span(xs: list[float]) -> str:
            return f"{min(xs):.0f}..{max(xs):.0f} s" if xs else "-"

        print(f"short: warning {span(got_w)}, fault {span(got_f)} after injection; {missed} "
              f"seeds without warning or fault")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=120.0)
    ap.add_argument("--short-ohm", type=float, default=None)
    ap.add_argument("--no-fusion", action="store_true", help="only the run without fusion")
    ap.add_argument("--seeds", default=None,
                    help="plant seeds to sweep, e.g. 1-20 or 1,3,5 (fusion on)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not args.minutes > 0 or args.minutes > 1e5:
        print(f"eval_estimator: --minutes {args.minutes}: must be > 0 and <= 100000",
              file=sys.stderr)
        return 2
    if args.short_ohm is not None and not args.short_ohm > 0:
        print(f"eval_estimator: --short-ohm {args.short_ohm}: must be > 0", file=sys.stderr)
        return 2
    if args.seeds is not None:
        try:
            seeds = parse_seeds(args.seeds)
        except ValueError as exc:
            print(f"eval_estimator: {exc}", file=sys.stderr)
            return 2
        results = sweep(seeds, args.minutes, short_ohm=args.short_ohm,
                        fusion=not args.no_fusion)
        if args.json:
            print(json.dumps([asdict(r) for r in results], indent=1))
        else:
            _print_sweep(results)
        return 0
    results = []
    for fusion in ([False] if args.no_fusion else [False, True]):
        results.append(run(args.minutes, fusion=fusion, short_ohm=args.short_ohm))
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))
    else:
        for r in results:
            print(f"fusion={r.fusion!s:5} RMSE {r.soc_rmse_pct:.2f} %  "
                  f"max {r.soc_max_err_pct:.2f} %"
                  f"  3-sigma coverage {100 * r.coverage_3sigma:.1f} %  mean-SOC RMSE "
                  f"{r.mean_soc_rmse_pct:.2f} %  short flag {r.short_flag_s} s  false flags "
                  f"{r.false_leak_flags}  gated {r.gated_total}  true SOC "
                  f"{r.true_soc_range[0]:.2f}..{r.true_soc_range[1]:.2f}  short warning / "
                  f"fault {_fmt_s(r.short_warning_s)} / {_fmt_s(r.short_fault_s)}  false "
                  f"warnings {len(r.false_warnings)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
