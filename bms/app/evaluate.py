"""Scoring a run against the emulator's truth: SOC error per cell and each injected fault's
detection latency, read from the run's own files (ticks.csv, events.jsonl) and truth.csv.

Evaluation, not control: the BMS never sees the truth. ``bms demo`` prints this report; a
campaign scores its runs with it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from bms.faults import FaultCode, fault_where
from bms.runlog import load_events, load_ticks

# Faults the scenario injects -> the BMS codes that count as detecting them.
DETECTED_BY = {
    "CELL_SOFT_SHORT": ("CELL_LEAK",),
    "CELL_CONTACT_LOSS": ("STACK_PRESSURE_RATE", "STACK_PRESSURE_LOW", "LOAD_CELL_IMBALANCE",
                          "STACK_PRESSURE_RESIDUAL"),
    "GAS_SWELLING": ("STACK_PRESSURE_RESIDUAL", "STACK_PRESSURE_HIGH"),
    "VTAP_OPEN": ("CELL_VOLTAGE_OPEN_WIRE",),
    "THERMISTOR_OPEN": ("THERMISTOR_OPEN",),
    "THERMISTOR_SHORT": ("THERMISTOR_SHORT",),
    "LOADCELL_OPEN": ("LOAD_CELL_OPEN",),
    "LOADCELL_STUCK": ("LOAD_CELL_STUCK",),
}
# SOC accuracy is scored after the estimator has had this long to converge from its initial
# guess (the pack file's initial_soc_sigma is 15 %).
CONVERGENCE_S = 600.0

def evaluate(log_dir: Path, truth_path: Path, scenario, tick_s: float) -> dict[str, Any]:
    """SOC error against ground truth and fault-detection latencies from the run's files."""
    ticks = load_ticks(log_dir)
    events = load_events(log_dir)
    report: dict[str, Any] = {"soc": soc_error(ticks, truth_path, tick_s)}
    detections = []
    for f in scenario.faults:
        if f.clear:
            continue
        name = f.code.name
        codes = DETECTED_BY.get(name, ())
        # Cell-level codes must name the injected cell; stack-level codes have no cell.
        hits = [e for e in events
                if e.get("type") == "fault" and e.get("event") == "raise"
                and e.get("name") in codes and e["time_s"] >= f.at_s
                and (e.get("cell") is None or f.target == 0xFF or e.get("cell") == f.target)]
        first = min(hits, key=lambda e: e["time_s"], default=None)
        severe = min((e for e in hits if e.get("severity") in ("fault", "critical")),
                     key=lambda e: e["time_s"], default=None)
        opened = None
        if severe is not None:
            opened = next((e for e in events if e.get("type") == "state"
                           and e.get("to") in ("OPENING", "FAULT")
                           and severe["time_s"] <= e["time_s"] <= severe["time_s"] + 1.0), None)
        detections.append({
            "fault": name, "target": f.target, "at_s": f.at_s,
            "detected_by": first["name"] if first else None,
            "severity": first["severity"] if first else None,
            "latency_s": (first["time_s"] - f.at_s) if first else None,
            "fault_by": severe["name"] if severe else None,
            "fault_severity": severe["severity"] if severe else None,
            "fault_latency_s": (severe["time_s"] - f.at_s) if severe else None,
            "open_latency_s": (opened["time_s"] - f.at_s) if opened else None,
        })
    report["detections"] = detections
    report["warnings"] = warnings_raised(events)
    report["contactor_actions"] = [
        {"time_s": e["time_s"], "from": e["from"], "to": e["to"], "reason": e.get("reason", "")}
        for e in events if e.get("type") == "state"]
    return report


def warnings_raised(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every warning the run raised, false or not (name, stack, cell, first time, count), in
    the order first raised: a report that lists only what an injection explains hides a
    false alarm that the plot and the events show."""
    out: dict[tuple, dict[str, Any]] = {}
    for e in events:
        if e.get("type") != "fault" or e.get("event") != "raise" or \
                e.get("severity") != "warning":
            continue
        key = (e["name"], e.get("stack"), e.get("cell"))
        w = out.setdefault(key, {"name": e["name"], "stack": e.get("stack"),
                                 "cell": e.get("cell"), "where": _where(e),
                                 "first_s": e["time_s"], "count": 0})
        w["count"] += 1
    return list(out.values())


def _where(event: dict[str, Any]) -> str:
    """The event's own ``where`` (1-based, as every report prints it); for a log written
    before events carried it, the same text from its code and 0-based indices."""
    if "where" in event:
        return str(event["where"])
    return fault_where(FaultCode(event["code"]), event.get("stack"), event.get("cell"))


def _read_truth(path: Path) -> np.ndarray:
    """The truth file as a structured array (np.genfromtxt's names=True), read by NumPy's C
    parser (genfromtxt took ~0.4 s per simulated hour of ssb-23); a file that parser refuses
    (a torn row, an empty field) goes to genfromtxt as before."""
    with open(path, encoding="utf-8") as fh:
        names = fh.readline().strip().split(",")
        try:
            data = np.loadtxt(fh, delimiter=",", dtype=float, ndmin=2, comments=None)
        except ValueError:
            data = None
    if data is None or data.shape[1] != len(names) or not all(n.isidentifier() for n in names):
        return np.genfromtxt(path, delimiter=",", names=True)
    out = np.empty(data.shape[0], dtype=[(n, float) for n in names])
    for j, n in enumerate(names):
        out[n] = data[:, j]
    return out


def soc_error(ticks: dict[str, np.ndarray], truth_path: Path, tick_s: float) -> dict[str, Any]:
    """Per-cell SOC estimate vs the plant's true SOC, after convergence."""
    if not ticks or not truth_path.exists():
        return {}
    truth = _read_truth(truth_path)
    if truth.size < 2:
        return {}
    soc_cols = sorted(c for c in ticks if c.endswith("_soc"))
    n = len(soc_cols)
    # The MEASUREMENT of the tick at time t was taken after the plant advanced by one tick.
    t_meas = ticks["time_s"] + tick_s
    keep = t_meas >= CONVERGENCE_S
    if not keep.any():
        return {}
    idx = np.clip(np.searchsorted(truth["t_s"], t_meas[keep]), 0, truth.size - 1)
    est = np.column_stack([ticks[c][keep] for c in soc_cols])
    sig = np.column_stack([ticks[c.replace("_soc", "_soc_sigma")][keep] for c in soc_cols])
    true = np.column_stack([truth[f"soc_{i}"][idx] for i in range(n)])
    err = est - true
    ok = np.isfinite(err)
    inside = np.abs(err[ok]) <= 3.0 * sig[ok]
    return {
        "rmse_pct": float(100.0 * math.sqrt(np.mean(err[ok] ** 2))),
        "max_abs_pct": float(100.0 * np.max(np.abs(err[ok]))),
        "within_3sigma_pct": float(100.0 * np.mean(inside)),
        "from_s": CONVERGENCE_S,
        "samples": int(ok.sum()),
    }
