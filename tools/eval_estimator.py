"""Estimator quality against the emulator's plant, with and without pressure fusion.

The command line over :mod:`bms.app.eval_estimator` (whose docstring has the scenario): SOC RMSE
and max error after convergence, coverage of the 3-sigma bound, soft-short flag time, false leak
flags.

    python tools/eval_estimator.py [--minutes 120] [--short-ohm 10] [--no-fusion] [--json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from bms.app.eval_estimator import run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=120.0)
    ap.add_argument("--short-ohm", type=float, default=None)
    ap.add_argument("--no-fusion", action="store_true", help="only the run without fusion")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
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
                  f"{r.true_soc_range[0]:.2f}..{r.true_soc_range[1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
