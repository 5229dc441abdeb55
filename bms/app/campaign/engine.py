"""Running a campaign: the runs not done yet to the executor, each result to its own file as
it comes, progress with an ETA on stderr.

Layout of ``--out`` (nothing is written anywhere else)::

    OUT/spec.yaml             the spec as given (a record)
    OUT/results/KEY.json      one run's result row (KEY: a hash of the run's spec)
    OUT/runs/KEY/             the run's folder while it runs (kept with --keep-logs: the
                              scenario, ticks.csv, events.jsonl, truth_K.csv)
    OUT/results.parquet, OUT/results.csv, OUT/report.md, OUT/*.png   (bms.app.campaign.report)

A run whose result file exists is done: a campaign started again (after Ctrl-C, a crash, a
machine that went away) runs only the others; ``--retry-failed`` runs the failed ones again.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bms.app.campaign.executors import Executor
from bms.app.campaign.runner import run_task
from bms.app.campaign.spec import CampaignSpec, RunSpec


@dataclass
class Outcome:
    rows: list[dict[str, Any]]   # every run of the spec that has a result, in spec order
    ran: int                     # runs executed now
    skipped: int                 # runs already done before
    wall_s: float


def result_path(out_dir: Path, key: str) -> Path:
    return out_dir / "results" / f"{key}.json"


def load_done(out_dir: Path, runs: tuple[RunSpec, ...], retry_failed: bool) -> dict[str, Any]:
    done = {}
    for r in runs:
        p = result_path(out_dir, r.key)
        if p.exists():
            try:
                row = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # torn by a kill: run it again
            if retry_failed and row.get("status") != "ok":
                continue
            done[r.key] = row
    return done


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def check_pack(spec: CampaignSpec, out_dir: Path) -> None:
    """A pack with overrides is loaded once here (ConfigError names the key: exit 3)."""
    from boards.config import load_pack
    if spec.overrides:
        import yaml
        path = out_dir / "pack-overrides.yaml"
        path.write_text(yaml.safe_dump({"base": spec.pack, **spec.overrides}, sort_keys=False),
                        encoding="utf-8")
        load_pack(path)
    else:
        load_pack(spec.pack)


def run_campaign(spec: CampaignSpec, out_dir: Path, executor: Executor,
                 keep_logs: bool = False, retry_failed: bool = False,
                 progress: TextIO | None = sys.stderr) -> Outcome:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results").mkdir(exist_ok=True)
    _write_atomic(out_dir / "spec.yaml", spec.path.read_text(encoding="utf-8"))
    check_pack(spec, out_dir)
    done = load_done(out_dir, spec.runs, retry_failed)
    todo = [r for r in spec.runs if r.key not in done]
    t0 = time.perf_counter()
    if progress is not None:
        print(f"bms campaign {spec.name}: {len(spec.runs)} run(s), {len(done)} done before, "
              f"{len(todo)} to run on {executor.name} ({executor.workers} worker(s)); "
              f"results in {out_dir}", file=progress, flush=True)
    futures = {executor.submit(run_task, r.as_dict(), r.key, str(out_dir.resolve()),
                               spec.timeout_s, keep_logs): r for r in todo}
    # The report's imports on a core the runs leave idle: at once when there are fewer runs
    # at a time than cores, else when the last ones are running.
    cores = os.cpu_count() or 1
    warm = threading.Thread(target=_preload_report, name="campaign-report-preload")
    if min(executor.workers, len(todo)) < cores:
        warm.start()
    n = 0
    sim_s = 0.0
    for fut in executor.as_completed(futures):
        run = futures[fut]
        row = fut.result()
        _write_atomic(result_path(out_dir, run.key), json.dumps(row, indent=1))
        done[run.key] = row
        n += 1
        sim_s += float(row.get("sim_s") or 0.0)
        if progress is not None:
            _progress(progress, n, len(todo), row, time.perf_counter() - t0, sim_s)
        if warm.ident is None and min(executor.workers, len(todo) - n) < cores:
            warm.start()
    if warm.ident is not None:
        warm.join()
    rows = [done[r.key] for r in spec.runs if r.key in done]
    return Outcome(rows=rows, ran=n, skipped=len(spec.runs) - len(todo),
                   wall_s=time.perf_counter() - t0)


def _preload_report() -> None:
    try:
        from bms.app.campaign.report import preload
        preload()
    except Exception:  # noqa: BLE001 - the report imports them again and says what failed
        pass


def _progress(out: TextIO, n: int, total: int, row: dict[str, Any], elapsed_s: float,
              sim_s: float) -> None:
    eta = elapsed_s / n * (total - n)
    status = row.get("status", "?")
    what = row.get("detected_by") or ("" if status == "ok" else row.get("error", "")[:80])
    print(f"[{n}/{total}] {row.get('scenario')} seed {row.get('seed')} {row.get('fault')}: "
          f"{status}{' ' + what if what else ''} ({row.get('wall_s', 0.0):.1f} s); "
          f"{sim_s / 3600.0:.2f} sim h in {_hms(elapsed_s)}, ETA {_hms(eta)}",
          file=out, flush=True)


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
