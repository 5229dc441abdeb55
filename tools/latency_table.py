"""Detection latency of every protection, end to end, and the markdown table of docs/safety.md.

The command line over :mod:`bms.app.latency` (the scenarios, the bench and the runner; its
docstring says what is measured and how):

    python tools/latency_table.py [--pack ssb-23] [--only NAME ...] [--seed 1] [--keep DIR]

prints each scenario's figures on stderr and the markdown table on stdout; exits 1 when a
scenario's open command came later than its bound (debounce + 2 ticks).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bms.app.latency import markdown_table, run_scenario, scenarios
from bms.faults import FaultCode, fault_where
from boards.config import load_pack


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", default="ssb-23")
    ap.add_argument("--only", nargs="*", default=None, help="scenario names")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", type=Path, default=None, help="keep the run logs here")
    args = ap.parse_args(argv)
    pack = load_pack(args.pack)
    todo = [s for s in scenarios(pack) if not args.only or s.name in args.only]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        for sc in todo:
            r = run_scenario(sc, pack, work, args.seed)
            results.append(r)
            print(f"{r.name}: raise {r.latency_raise_s:.2f} s, open {r.latency_open_s:.2f} s "
                  f"(bound {r.bound_s:.2f}), from injection {r.latency_from_inject_s:.2f} s, "
                  f"{r.code} {fault_where(FaultCode[r.code], r.raise_stack, r.raise_cell)}, "
                  f"reset refused "
                  f"{r.reset_refused}, accepted {r.reset_accepted} -> {r.state_after_reset}, "
                  f"still active {r.still_active_after_recovery}, before {r.other_faults_before}, "
                  f"wall {r.wall_s:.1f} s", file=sys.stderr)
    print(markdown_table(results))
    return 0 if all(r.within_bound for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
