"""``bms campaign SPEC [--executor local|dask|dask://HOST:PORT] [--workers N] [--out DIR]``.

SPEC is a spec file or a built-in campaign (``reliability``, ``faults``, ``estimation``;
``--quick`` takes a built-in's small size). Prints the summary; the table and the report are in
``--out``. Exit codes: 0 every run ok, 2 usage, 3 the spec (or its pack or a scenario), 5 the
output folder; a campaign whose runs failed or timed out still exits 0 (they are in the
table) unless ``--check``: then 6.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bms.app.campaign.spec import SpecError, builtin_names, load_spec
from bms.app.errors import (
    ConfigFileError,
    ExitCode,
    OutputError,
    Parser,
    UsageError,
    positive_int,
)


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="bms campaign",
        description="Run a campaign of emulated packs (fault matrix, Monte-Carlo sweep): "
        "every run through the real controller over emu:// boards in the sim clock; one "
        "table (Parquet, CSV) and a report (Markdown, PNG) in --out.",
        epilog="examples:\n"
        "  bms campaign reliability --quick --out runs/rel\n"
        "  bms campaign my-spec.yaml --workers 2 --out runs/c1\n"
        "  bms campaign faults --executor dask --workers 2 --out runs/f\n"
        "  bms campaign faults --executor dask://10.0.0.5:8786 --out /shared/f\n\n"
        f"built-in campaigns: {', '.join(builtin_names())} (docs/campaign.md)\n"
        "exit codes: 0 ok, 2 usage, 3 spec / pack / scenario, 5 output folder, 6 --check "
        "failed, 1 internal error",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", help="spec file (YAML) or built-in campaign name")
    ap.add_argument("--executor", default="local",
                    help="local (default: a pool of --workers processes), dask (a local Dask "
                    "cluster on 127.0.0.1) or dask://HOST:PORT (an existing cluster)")
    ap.add_argument("--workers", type=positive_int, default=None,
                    help="runs at once (default: the CPU count)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default runs/campaign-NAME); a folder with results "
                    "of the same runs resumes: done runs are skipped")
    ap.add_argument("--quick", action="store_true", help="the spec's quick: size")
    ap.add_argument("--keep-logs", action="store_true",
                    help="keep each run's log, scenario and truth in OUT/runs/KEY/")
    ap.add_argument("--retry-failed", action="store_true",
                    help="run the runs that failed or timed out before again")
    ap.add_argument("--check", action="store_true",
                    help="exit 6 when a run failed or timed out, a fault was missed or a false "
                    "fault was raised")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from bms.app.campaign.executors import ExecutorError, make_executor, parse_executor
    try:
        parse_executor(args.executor)
    except ValueError as exc:
        raise UsageError(str(exc), "`bms campaign --help` lists the executors") from None
    try:
        spec = load_spec(args.spec, quick=args.quick)
    except SpecError as exc:
        raise ConfigFileError(str(exc), "docs/campaign.md describes the spec") from None
    except OSError as exc:
        raise OutputError(f"{args.spec}: cannot be read: {exc.strerror or exc}") from None
    out_dir = args.out or Path("runs") / f"campaign-{spec.name}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"--out {out_dir}: cannot be written: {exc.strerror or exc}",
                          "give a folder that can be created and written") from None
    workers = args.workers or os.cpu_count() or 1
    try:
        executor = make_executor(args.executor, workers)
    except ExecutorError as exc:
        raise UsageError(str(exc)) from None
    from bms.app.campaign.engine import run_campaign
    from bms.app.campaign.report import write_report, write_table
    try:
        outcome = run_campaign(spec, out_dir, executor, keep_logs=args.keep_logs,
                               retry_failed=args.retry_failed,
                               progress=None if args.quiet else sys.stderr)
    finally:
        executor.shutdown()
    write_table(outcome.rows, out_dir)
    inject_at = {f.name: f.at_s for f in spec.faults if f is not None}
    s = write_report(spec.name, outcome.rows, inject_at, out_dir, outcome.wall_s,
                     executor.workers, spec.tables)
    missed = sum(f["runs"] - f["detected"] for f in s["faults"].values())
    print(f"campaign {spec.name}: {s['runs']} runs ({outcome.ran} now, {outcome.skipped} done "
          f"before): {s['ok']} ok, {s['errors']} failed, {s['timeouts']} timed out; "
          f"{s['sim_h']:.2f} simulated h; faults missed {missed}; false faults "
          f"{s['false_faults']}, false warnings {s['false_warnings']} in "
          f"{s['false_free_h']:.2f} fault-free h; {outcome.wall_s:.0f} s wall")
    print(f"table: {out_dir / 'results.parquet'} (and .csv); report: {out_dir / 'report.md'}")
    bad = s["errors"] + s["timeouts"] + missed + s["false_faults"]
    return ExitCode.CHECK_FAILED if args.check and bad else ExitCode.OK
