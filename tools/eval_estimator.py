"""Estimator quality against the emulator's plant, with and without pressure fusion.

The command line over :mod:`bms.app.eval_estimator` (whose docstring has the scenario): the
core alone against the plant, no controller, with and without pressure fusion: SOC RMSE and max
error after convergence, coverage of the 3-sigma bound, soft-short flag time, false leak flags.

    python tools/eval_estimator.py [--minutes 120] [--short-ohm 10] [--no-fusion] [--json]

The sweep over plant seeds (false leak warnings on healthy cells, the 10 ohm short's warning and
fault times, SOC RMSE / max / coverage) is the built-in campaign ``bms campaign leak``, end to
end through the controller on the pool (docs/campaign.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from bms.app.eval_estimator import run


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=120.0)
    ap.add_argument("--short-ohm", type=float, default=None)
    ap.add_argument("--no-fusion", action="store_true", help="only the run without fusion")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not args.minutes > 10 or args.minutes > 1e5:
        # scored after the 600 s convergence time: a shorter run has nothing to score
        print(f"eval_estimator: --minutes {args.minutes}: must be > 10 (the convergence time) "
              "and <= 100000", file=sys.stderr)
        return 2
    if args.short_ohm is not None and not args.short_ohm > 0:
        print(f"eval_estimator: --short-ohm {args.short_ohm}: must be > 0", file=sys.stderr)
        return 2
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
