"""The campaign's table (Parquet through pyarrow, and CSV) and its report (Markdown + PNG).

The report: runs and their status, detection rate and latency per fault, false alarms per
simulated hour per code (fault-free time: all of a healthy run, a faulted run up to its
injection), SOC error over the initial errors and ambient temperatures.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

# (column, pyarrow type name): the table's schema, in order (wall_s last: the one column that
# differs between two executions of the same spec)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("key", "string"), ("pack", "string"), ("overrides", "string"), ("scenario", "string"),
    ("seed", "int64"), ("plant_seed", "int64"), ("fault", "string"), ("injected", "string"),
    ("soc_error", "float64"), ("ambient_c", "float64"), ("duration_s", "float64"),
    ("status", "string"), ("sim_s", "float64"), ("final_state", "string"),
    ("soc_rmse_pct", "float64"), ("soc_max_err_pct", "float64"),
    ("soc_cover_3sigma_pct", "float64"), ("expected", "string"), ("detected", "bool_"),
    ("detected_by", "string"), ("detect_severity", "string"), ("latency_s", "float64"),
    ("fault_latency_s", "float64"), ("bound_s", "float64"), ("also_raised", "string"),
    ("false_warnings", "int64"), ("false_faults", "int64"), ("false_warning_codes", "string"),
    ("false_fault_codes", "string"), ("bench", "string"), ("error", "string"),
    ("traceback", "string"), ("wall_s", "float64"),
)


def preload() -> None:
    """Import what :func:`write_table` and :func:`write_report` use (pyarrow.parquet; pandas,
    which pyarrow imports at its first conversion of Python values when it is installed,
    0.2-0.8 s; matplotlib's pyplot on Agg): 1-2 s of CPU that the end of a campaign would
    otherwise wait for (the engine imports them while a core is idle)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import pyarrow as pa
    import pyarrow.parquet  # noqa: F401

    pa.array([0])  # (pyarrow's pandas check, at its first conversion)


def normalise(row: dict[str, Any]) -> dict[str, Any]:
    """A row with every column (None where a run has no value: a failed run's scores)."""
    return {name: row.get(name) for name, _ in COLUMNS}


def write_table(rows: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, getattr(pa, typ)()) for name, typ in COLUMNS])
    table = pa.Table.from_pylist([normalise(r) for r in rows], schema=schema)
    parquet = out_dir / "results.parquet"
    pq.write_table(table, parquet)
    path = out_dir / "results.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([n for n, _ in COLUMNS])
        for r in rows:
            w.writerow(["" if v is None else v for v in normalise(r).values()])
    return parquet, path


def _fault_free_s(row: dict[str, Any], at_s: float | None) -> float:
    sim = float(row.get("sim_s") or 0.0)
    return sim if at_s is None else min(sim, at_s)


def summarise(rows: list[dict[str, Any]], inject_at: dict[str, float]) -> dict[str, Any]:
    """The figures of the report (also printed by bms campaign): per fault, per code, SOC."""
    ok = [r for r in rows if r.get("status") == "ok"]
    per_fault: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["fault"] for r in ok if r["fault"] != "none"):
        rs = [r for r in ok if r["fault"] == name]
        lat = [r["latency_s"] for r in rs if r.get("latency_s") is not None]
        bound = rs[0].get("bound_s")
        per_fault[name] = {
            "injected": rs[0].get("injected"), "runs": len(rs),
            "detected": sum(bool(r.get("detected")) for r in rs),
            "by": sorted({r["detected_by"] for r in rs if r.get("detected_by")}),
            "latency_s": lat, "bound_s": bound,
            "within_bound": (sum(x <= bound + 1e-9 for x in lat) if bound is not None
                             else None),
            "also": sorted({c for r in rs for c in (r.get("also_raised") or "").split(",")
                            if c})}
    hours = sum(_fault_free_s(r, inject_at.get(r["fault"])) for r in ok) / 3600.0
    codes: dict[str, dict[str, int]] = defaultdict(lambda: {"warning": 0, "fault": 0})
    for r in ok:
        for col, sev in (("false_warning_codes", "warning"), ("false_fault_codes", "fault")):
            for code, n in json.loads(r.get(col) or "{}").items():
                codes[code][sev] += n
    soc = defaultdict(list)
    for r in ok:  # healthy runs: a fault's run scores the fault, not the estimator
        if r.get("soc_rmse_pct") is not None and r["fault"] == "none":
            soc[(r.get("soc_error"), r.get("ambient_c"))].append(r)
    return {"runs": len(rows), "ok": len(ok),
            "errors": sum(r.get("status") == "error" for r in rows),
            "timeouts": sum(r.get("status") == "timeout" for r in rows),
            "sim_h": sum(float(r.get("sim_s") or 0.0) for r in ok) / 3600.0,
            "run_wall_h": sum(float(r.get("wall_s") or 0.0) for r in rows) / 3600.0,
            "faults": per_fault, "false_free_h": hours, "false_codes": dict(codes),
            "false_faults": sum(int(r.get("false_faults") or 0) for r in ok),
            "false_warnings": sum(int(r.get("false_warnings") or 0) for r in ok),
            "soc": dict(soc)}


def _span(xs: list[float], fmt: str = ".2f") -> str:
    if not xs:
        return "-"
    return (f"{min(xs):{fmt}} / {float(np.median(xs)):{fmt}} / {max(xs):{fmt}}")


def latency_table(rows: list[dict[str, Any]]) -> str:
    """The bench cases' table (bms.app.latency.markdown_table of their Results, in spec
    order); "" when the campaign has none."""
    bench = [json.loads(r["bench"]) for r in rows if r.get("status") == "ok" and r.get("bench")]
    if not bench:
        return ""  # (bms.app.latency not imported: 0.1 s of a campaign without bench cases)
    from bms.app.latency import Result, markdown_table
    return markdown_table([Result(**b) for b in bench])


def per_seed_table(rows: list[dict[str, Any]]) -> str:
    """One line per seed (and start, ambient, scenario): the healthy run's SOC figures and
    false alarms, and each fault's detection: latency to its first raise / to its first
    FAULT-level raise (s from the injection), by which code."""
    ok = [r for r in rows if r.get("status") == "ok"]
    faults = list(dict.fromkeys(r["fault"] for r in ok if r["fault"] != "none"))
    head = ["seed", "start", "ambient C", "SOC RMSE %", "max %", "3-sigma %",
            "false alarms (healthy run)"] + [f"{f}: first / fault raise (s), by" for f in faults]
    out = ["| " + " | ".join(head) + " |", "|" + "---:|" * 6 + "---|" + "---|" * len(faults)]
    groups: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in ok:
        groups[(r["seed"], r.get("soc_error"), r.get("ambient_c"), r.get("scenario"))][
            r["fault"]] = r

    def num(x: Any, fmt: str) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{fmt}}"

    for (seed, err, amb, _sc), by in sorted(groups.items(), key=lambda kv: (
            kv[0][0], kv[0][1] is not None, kv[0][1] or 0.0, kv[0][2], kv[0][3])):
        h = by.get("none", {})
        false = {**json.loads(h.get("false_warning_codes") or "{}"),
                 **json.loads(h.get("false_fault_codes") or "{}")}
        cells = [str(seed), "OCV" if err is None else f"{err:+.2f}", f"{amb:g}",
                 num(h.get("soc_rmse_pct"), ".2f"), num(h.get("soc_max_err_pct"), ".2f"),
                 num(h.get("soc_cover_3sigma_pct"), ".1f"),
                 (", ".join(f"{c} x{n}" for c, n in sorted(false.items())) or "none")
                 if h else "-"]
        for f in faults:
            r = by.get(f)
            cells.append("-" if r is None else "missed" if not r.get("detected") else
                         f"{num(r.get('latency_s'), '.1f')} / "
                         f"{num(r.get('fault_latency_s'), '.1f')}, {r.get('detected_by')}")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def markdown(name: str, s: dict[str, Any], rows: list[dict[str, Any]], wall_s: float,
             workers: int, plots: list[str], tables: tuple[str, ...] = ()) -> str:
    out = [f"# Campaign `{name}`", "",
           f"{s['runs']} runs: {s['ok']} ok, {s['errors']} failed, {s['timeouts']} timed out; "
           f"{s['sim_h']:.2f} simulated pack-hours; the runs' own wall time "
           f"{s['run_wall_h'] * 3600:.0f} s "
           + (f"({s['sim_h'] / s['run_wall_h']:.0f} simulated h per wall h per worker); "
              if s["run_wall_h"] > 0 else "")
           + f"this execution {wall_s:.0f} s on {workers} worker(s).", ""]
    if s["faults"]:
        out += ["## Detection per fault", "",
                "| fault | injected | runs | detected | by | latency s (min / median / max) "
                "| within bound | also raised |", "|---|---|---:|---:|---|---|---|---|"]
        for fname, f in s["faults"].items():
            wb = "-" if f["within_bound"] is None else \
                f"{f['within_bound']}/{len(f['latency_s'])} (<= {f['bound_s']:g} s)"
            out.append(f"| {fname} | {f['injected']} | {f['runs']} | "
                       f"{f['detected']}/{f['runs']} | {', '.join(f['by']) or '-'} | "
                       f"{_span(f['latency_s'])} | {wb} | {', '.join(f['also']) or '-'} |")
        out.append("")
    out += ["## False alarms", "",
            f"{s['false_faults']} false fault(s) and {s['false_warnings']} false warning(s) in "
            f"{s['false_free_h']:.2f} fault-free simulated hours (healthy runs, and faulted "
            "runs before their injection).", ""]
    if s["false_codes"]:
        out += ["| code | warnings | faults | per simulated hour |", "|---|---:|---:|---:|"]
        for code, c in sorted(s["false_codes"].items()):
            per_h = (c["warning"] + c["fault"]) / s["false_free_h"] if s["false_free_h"] else 0
            out.append(f"| {code} | {c['warning']} | {c['fault']} | {per_h:.3f} |")
        out.append("")
    if s["soc"]:
        out += ["## SOC error (after the estimator's convergence time)", "",
                "| initial SOC error | ambient C | runs | RMSE % (min / median / max) | "
                "max error % | 3-sigma coverage % (min) |", "|---:|---:|---:|---|---:|---:|"]
        for (err, amb), rs in sorted(s["soc"].items(), key=lambda kv: (
                kv[0][0] is not None, kv[0][0] or 0.0, kv[0][1])):
            out.append(
                f"| {'OCV start' if err is None else f'{err:+.2f}'} | {amb:g} | {len(rs)} | "
                f"{_span([r['soc_rmse_pct'] for r in rs])} | "
                f"{max(r['soc_max_err_pct'] for r in rs):.2f} | "
                f"{min(r['soc_cover_3sigma_pct'] for r in rs):.1f} |")
        out.append("")
    bench = latency_table(rows)
    if bench:
        out += ["## Detection latency (bench cases)", "",
                "Per protection, the open command's latency against its bound (debounce + 2 "
                "ticks; from the crossing of the fault level for a ramp, the injection for a "
                "step), as docs/safety.md \"Detection latencies\" gives it "
                "(bms/app/latency.py).", "", bench, ""]
    if "per_seed" in tables:
        out += ["## Per seed", "", per_seed_table(rows), ""]
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        out += ["## Failed runs", "", "| key | fault | seed | status | error |",
                "|---|---|---:|---|---|"]
        out += [f"| {r['key']} | {r['fault']} | {r['seed']} | {r['status']} | "
                f"{(r.get('error') or '').replace('|', '/')[:200]} |" for r in failed]
        out.append("")
    out += [f"![{p}]({p})" for p in plots]
    return "\n".join(out) + "\n"


def plots(s: dict[str, Any], out_dir: Path) -> list[str]:
    """PNG plots beside the report; their file names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if s["faults"]:
        names = list(s["faults"])
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, max(3, 0.35 * len(names) + 1.5)))
        rate = [100.0 * f["detected"] / f["runs"] for f in s["faults"].values()]
        a1.barh(names, rate)
        a1.set_xlabel("detected (% of runs)")
        a1.set_xlim(0, 105)
        a1.invert_yaxis()
        lat = [f["latency_s"] or [math.nan] for f in s["faults"].values()]
        a2.boxplot(lat, orientation="horizontal", tick_labels=names)
        a2.set_xscale("symlog", linthresh=1.0)  # 0.1 s steps and 20-min ramps on one axis
        a2.set_xlabel("latency from injection (s)")
        a2.invert_yaxis()
        fig.tight_layout()
        fig.savefig(out_dir / "detection.png", dpi=90)
        plt.close(fig)
        made.append("detection.png")
    if s["false_codes"] and s["false_free_h"] > 0:
        codes = sorted(s["false_codes"])
        fig, ax = plt.subplots(figsize=(8, max(2.5, 0.35 * len(codes) + 1.5)))
        ax.barh(codes, [(s["false_codes"][c]["warning"] + s["false_codes"][c]["fault"])
                        / s["false_free_h"] for c in codes])
        ax.set_xlabel("false alarms per simulated hour")
        fig.tight_layout()
        fig.savefig(out_dir / "false_alarms.png", dpi=90)
        plt.close(fig)
        made.append("false_alarms.png")
    rmse = [r["soc_rmse_pct"] for rs in s["soc"].values() for r in rs]
    if rmse:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.hist(rmse, bins=min(30, max(5, len(rmse) // 2)))
        ax.set_xlabel("SOC RMSE per run (%)")
        ax.set_ylabel("runs")
        fig.tight_layout()
        fig.savefig(out_dir / "soc_error.png", dpi=90)
        plt.close(fig)
        made.append("soc_error.png")
    return made


def write_report(name: str, rows: list[dict[str, Any]], inject_at: dict[str, float],
                 out_dir: Path, wall_s: float, workers: int,
                 tables: tuple[str, ...] = ()) -> dict[str, Any]:
    """``tables``: the spec's extra tables (spec.TABLES); a bench case's latency table is
    always there when the campaign has bench cases."""
    s = summarise(rows, inject_at)
    made = plots(s, out_dir)
    (out_dir / "report.md").write_text(markdown(name, s, rows, wall_s, workers, made, tables),
                                       encoding="utf-8")
    return s
