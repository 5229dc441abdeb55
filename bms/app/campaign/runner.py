"""One campaign run: an emulated pack over ``emu://`` ports in the sim clock, through the real
controller, codec and client, scored from its own log and the emulator's truth.

:func:`run_task` is what an executor runs: it has the worker's fork server
(:mod:`.forkserver`: the run's modules imported once) fork a child process for the run (a run
that hangs is killed at its timeout, one that crashes, even in C, takes only its child down)
and returns the result row; :func:`main` (also ``python -m bms.app.campaign.runner RUN.json``)
and :func:`execute` are the child's work.

The run: the scenario file with the run's fault injections and ambient temperature added
(written into the run's folder), one ``emu://`` URL per stack (seed = the run's plant seed +
stack, as ``bms run --seed``), the controller asked to close at the start and run for
``duration_s``, then opened as ``bms run`` ends (a welded contactor shows there; the final
state is the one before). An initial SOC error: each stack's estimator starts at its first
measurement at the scenario's initial SOC + the error, with the pack's ``initial_soc_sigma``
(``Controller(initial_soc=...)``: a wrong saved state, or no OCV start); ``null`` keeps the
controller's own cold start from the OCV.

Scoring (bms.app.evaluate's soc_error and DETECTED_BY, as ``bms demo``): SOC RMSE, max error
and 3-sigma coverage after evaluate.CONVERGENCE_S (each stack's cells against its own truth
file, pooled); each injected fault detected or not by one of its expected codes (cell codes
must name the injected cell, a fault on one stack that stack), by which code, its latency from
the injection; the other codes raised after it (its consequences); every warning and fault of
a healthy run, and those of a faulted run before its injection (false alarms).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from bms.app.campaign.spec import NO_FAULT, FaultSpec, RunSpec

RESULT_MARK = "CAMPAIGN-RESULT "
#: The child's option for a run whose log is not kept: its ticks are scored from memory and
#: not written (RunLog.discard_ticks).
NO_TICKS = "--no-ticks"

#: The BMS codes that count as detecting each emulator fault when the spec names none
#: (bms.app.evaluate.DETECTED_BY for the faults ``bms demo`` scores, and the link, board,
#: current and contactor faults that the controller diagnoses: docs/safety.md).
DEFAULT_EXPECT: dict[str, tuple[str, ...]] = {
    "LOADCELL_OFFSET": ("LOAD_CELL_IMBALANCE",),
    "CURRENT_OFFSET": ("CURRENT_SENSOR_OFFSET", "CURRENT_SENSOR"),
    # The cooling check (bms/thermal_check.py); an over-temperature if it came first.
    "COOLANT_LOSS": ("COOLING_DEGRADED", "CELL_OVERTEMPERATURE_DISCHARGE",
                     "CELL_OVERTEMPERATURE_CHARGE"),
    "CELL_HEAT": ("CELL_OVERTEMPERATURE_DISCHARGE", "CELL_OVERTEMPERATURE_CHARGE"),
    "AMBIENT_TEMP": ("CELL_OVERTEMPERATURE_DISCHARGE", "CELL_OVERTEMPERATURE_CHARGE",
                     "CELL_UNDERTEMPERATURE_DISCHARGE", "CELL_UNDERTEMPERATURE_CHARGE"),
    "VTAP_OFFSET": ("CELL_OVERVOLTAGE", "CELL_UNDERVOLTAGE", "CELL_VOLTAGE_IMPLAUSIBLE"),
    "LINK_DROP": ("MEASUREMENT_LATE", "MEASUREMENT_LOST", "BOARD_LOST"),
    # A corrupted frame is dropped by the decoder and retried: the wire's fault is the frame
    # errors (bms/link_quality.py), whether or not a retry saved the data (a late or lost
    # measurement it caused is listed in also_raised).
    "LINK_CORRUPT": ("LINK_FRAME_ERRORS",),
    "LINK_SILENCE": ("MEASUREMENT_LOST",),
    "REBOOT": ("BOARD_RESET",),
    "PRECHARGE_FAIL": ("PRECHARGE_FAILURE",),
    "CONTACTOR_WELD": ("CONTACTOR_FEEDBACK_MISMATCH",),
    "LOAD_CURRENT": ("CHARGE_OVERCURRENT", "DISCHARGE_OVERCURRENT"),
}
# Faults whose codes name the injected cell (temperature codes name a thermistor, pressure
# codes none): a raise on another cell does not count.
_CELL_FAULTS = {"CELL_SOFT_SHORT", "VTAP_OPEN", "VTAP_OFFSET"}


def expected_codes(fault: FaultSpec) -> tuple[str, ...]:
    from bms.app.evaluate import DETECTED_BY
    return fault.expect or DETECTED_BY.get(fault.fault) or DEFAULT_EXPECT.get(fault.fault, ())


# --------------------------------------------------------------------------- parent side


def run_task(run: dict[str, Any], key: str, out_dir: str, timeout_s: float,
             keep_logs: bool) -> dict[str, Any]:
    """Run one campaign run in a child process (what an executor's worker calls): the result
    row, with status ``ok``, ``error`` (its message and traceback) or ``timeout`` (killed).
    Never raises: a worker that cannot even start the run (its folder, its process) records
    that as the run's error, and the campaign goes on."""
    wall0 = time.perf_counter()
    try:
        row = _run_child(run, key, Path(out_dir) / "runs" / key, timeout_s, keep_logs)
    except Exception as exc:  # noqa: BLE001 - recorded as the run's result
        row = _failed(run, "error", f"{type(exc).__name__}: {exc}", traceback.format_exc())
    row["wall_s"] = time.perf_counter() - wall0
    row["key"] = key
    return row


def _run_child(run: dict[str, Any], key: str, run_dir: Path, timeout_s: float,
               keep_logs: bool) -> dict[str, Any]:
    from bms.app.campaign.forkserver import server
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a run interrupted before: start it over
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps(run, indent=1), encoding="utf-8")
    out, err = run_dir / "child.out", run_dir / "child.err"
    row: dict[str, Any]
    argv = [str(run_dir / "run.json")] + ([] if keep_logs else [NO_TICKS])
    code, timed_out = server().run(argv, str(out), str(err), timeout_s, pack=run["pack"])
    if timed_out:
        row = _failed(run, "timeout", f"no result after {timeout_s:g} s wall: killed", "")
    else:
        stdout = _read(out)
        line = next((ln for ln in reversed(stdout.splitlines())
                     if ln.startswith(RESULT_MARK)), None)
        if line is not None:
            row = json.loads(line[len(RESULT_MARK):])
        else:
            tail = (_read(err) or stdout).strip().splitlines()[-20:]
            row = _failed(run, "error", f"the run's process ended with code {code} "
                          "and no result", "\n".join(tail))
    if not keep_logs:
        shutil.rmtree(run_dir, ignore_errors=True)
    return row


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _failed(run: dict[str, Any], status: str, error: str, tb: str) -> dict[str, Any]:
    return {**describe(run), "status": status, "error": error, "traceback": tb}


def describe(run: dict[str, Any]) -> dict[str, Any]:
    """The run's axes as table columns."""
    fault = run.get("fault")
    bench = fault.get("bench") if fault else None
    return {"scenario": "bench" if bench else Path(run["scenario"]).stem, "seed": run["seed"],
            "fault": fault["name"] if fault else NO_FAULT,
            "injected": (f"bench: {bench}" if bench else fault["fault"]) if fault else "",
            "soc_error": run["soc_error"], "ambient_c": run["ambient_c"],
            "duration_s": run["duration_s"], "pack": Path(run["pack"]).stem,
            "overrides": run["overrides"]}


def run_from_dict(d: dict[str, Any]) -> RunSpec:
    fault = d.get("fault")
    f = None if fault is None else FaultSpec(**{**fault, "targets": tuple(fault["targets"]),
                                                "expect": tuple(fault["expect"])})
    return RunSpec(**{**d, "fault": f})


# --------------------------------------------------------------------------- child side


def write_scenario(run: RunSpec, run_dir: Path, with_fault: bool = True,
                   name: str = "scenario.yaml") -> Path:
    """The run's scenario: its file with the run's injections (unless ``with_fault`` is false:
    the stacks the fault is not on) and ambient added."""
    data = yaml.safe_load(run.scenario_path.read_text(encoding="utf-8"))
    base = run.scenario_path.parent
    for seg in data.get("segments", []):
        if isinstance(seg, dict) and "csv" in seg and (base / seg["csv"]).exists():
            seg["csv"] = str((base / seg["csv"]).resolve())  # beside the original file
    faults = list(data.get("faults") or [])
    f = run.fault if with_fault else None
    if f is not None:
        for t in f.targets:
            faults.append({"at_s": f.at_s, "fault": f.fault, "target": t, "value": f.value})
            if f.clear_at_s is not None:
                faults.append({"at_s": f.clear_at_s, "fault": f.fault, "target": t,
                               "clear": True})
    data["faults"] = faults
    data["ambient"] = [{"at_s": 0.0, "temperature_c": run.ambient_c}]
    data.setdefault("initial", {})["temperature_c"] = run.ambient_c
    data["name"] = f"{data.get('name', 'scenario')}+{run.fault_name}"
    path = run_dir / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def pack_file(run: RunSpec, run_dir: Path) -> str:
    """The pack: its name or file, or a file of the overrides over it."""
    overrides = json.loads(run.overrides)
    if not overrides:
        return run.pack
    path = run_dir / "pack.yaml"
    path.write_text(yaml.safe_dump({"base": run.pack, **overrides}, sort_keys=False),
                    encoding="utf-8")
    return str(path)


def initial_soc(soc_error: float | None, scenario_soc: float | None) -> float | None:
    """The estimator's start (Controller initial_soc): the scenario's initial SOC (0.5 when
    it gives none) + the run's error, clipped to [0, 1]; None (an error of null): the
    controller's own OCV cold start."""
    if soc_error is None:
        return None
    return min(1.0, max(0.0, (0.5 if scenario_soc is None else scenario_soc) + soc_error))


def execute(run: RunSpec, run_dir: Path, write_ticks: bool = True) -> dict[str, Any]:
    """The child's work: run, then score. Raises on a run that cannot be made or fails.
    ``write_ticks`` false: ticks.csv keeps its header only (the log is not kept)."""
    if run.fault is not None and run.fault.bench:
        return execute_bench(run, run_dir)
    from bms.app.run import final_open
    from bms.controller import Controller, SafetyDataLostError
    from boards.config import load_pack
    from hil.emulator.protocol_emu import emu_url, emulated_board, register
    from hil.emulator.scenario import load_scenario

    register()
    pack_ref = pack_file(run, run_dir)
    pack = load_pack(pack_ref)
    scenario_path = write_scenario(run, run_dir)
    scenario = load_scenario(scenario_path)
    tick_s = pack.controller.tick_s
    every = max(1, int(round(1.0 / tick_s)))
    seed = run.plant_seed
    f = run.fault
    if f is not None and f.stack is not None and not f.stack < len(pack.stacks):
        raise ValueError(f"fault {f.name}: stack {f.stack} is not a stack of pack {pack.name} "
                         f"(0..{len(pack.stacks) - 1})")
    healthy_path = scenario_path
    if f is not None and f.stack is not None and len(pack.stacks) > 1:
        healthy_path = write_scenario(run, run_dir, with_fault=False, name="scenario-other.yaml")
    urls = [emu_url(pack_ref, k, seed=seed + k,
                    scenario=str(scenario_path if f is None or f.stack in (None, k)
                                 else healthy_path),
                    truth=str(run_dir / f"truth_{k}.csv"), truth_every=every)
            for k in range(len(pack.stacks))]
    log_dir = run_dir / "log"
    c = Controller(pack, urls, clock="sim", log_dir=log_dir,
                   meta={"command": "campaign", "run": run.as_dict()},
                   initial_soc=initial_soc(run.soc_error, scenario.initial_soc))
    assert c.log is not None
    # the score's columns kept as the rows are written: not read back from ticks.csv
    c.log.keep_columns([n for n in c.log.columns if _scored(n)])
    if not write_ticks:
        c.log.discard_ticks()
    boards: list[Any] = []
    cells: list[slice] = []
    try:
        c.open()
        boards = [emulated_board(s.client) for s in c.stacks]
        cells = [s.cells for s in c.stacks]
        c.request_close()
        try:
            c.run(run.duration_s)
            state = c.contactors.state.name
            final_open(c)  # as bms run ends: a welded contactor shows here
        except SafetyDataLostError:
            # the pack's on_board_lost: stop, the BMS's own decision (contactors commanded
            # open): the run's outcome, scored like any other
            state = "STOPPED"
    finally:
        summary = c.close()
    summary["state"] = state
    errors = [e for b in boards if b is not None for e in b.counters.scenario_errors]
    if errors:
        raise RuntimeError(f"the emulator refused the scenario: {errors[0]}")
    kept = c.log.kept_columns()
    if kept is None and not write_ticks:  # pragma: no cover - the controller logs by row_tick
        raise RuntimeError("the run log kept no columns and wrote no ticks: nothing to score")
    report = {"soc": soc_all_stacks(log_dir, run_dir, cells, tick_s, kept)}
    return score(run, report, summary, log_dir)


def execute_bench(run: RunSpec, run_dir: Path) -> dict[str, Any]:
    """A bench case (bms.app.latency.run_scenario over emu:// boards, seeded with the spec's
    seed, as the bench always was): its Result as the row, its open command's
    latency against the bound (debounce + 2 ticks, + the plant's own delay) as the run's
    latency (from the crossing for a ramp, the injection for a step) and the raise as the
    fault latency; the whole Result in the ``bench`` column (the report's latency table).
    No false alarms are counted: a case sets its plant up past warning levels on purpose (99 %
    SOC for the over-voltage ramp); what was active before its injection is in the Result
    (``other_faults_before``). A case that cannot reach its state (ScenarioError) fails the
    run, recorded."""
    from dataclasses import asdict

    from bms.app.latency import run_scenario, scenarios
    from boards.config import load_pack

    assert run.fault is not None and run.fault.bench
    pack = load_pack(pack_file(run, run_dir))
    sc = next(s for s in scenarios(pack) if s.name == run.fault.bench)
    r = run_scenario(sc, pack, run_dir / "bench", seed=run.seed, transport="emu")
    open_s = None if math.isnan(r.latency_open_s) else r.latency_open_s
    return {**describe(run.as_dict()), "status": "ok", "error": "", "traceback": "",
            "plant_seed": run.seed, "sim_s": _bench_end_s(Path(r.log_dir)),
            "final_state": r.state_after_reset, "soc_rmse_pct": None, "soc_max_err_pct": None,
            "soc_cover_3sigma_pct": None, "expected": r.code, "detected": True,
            "detected_by": r.code, "detect_severity": sc.severity.name.lower(),
            "latency_s": open_s, "fault_latency_s": r.latency_raise_s, "bound_s": r.bound_s,
            "also_raised": ",".join(c for c in r.opened_by if c != r.code),
            "false_warnings": 0, "false_faults": 0, "false_warning_codes": "{}",
            "false_fault_codes": "{}", "bench": json.dumps(asdict(r), default=_plain)}


def _bench_end_s(log_dir: Path) -> float:
    """The bench's simulated time: its last logged tick."""
    from bms.runlog import load_ticks
    t = load_ticks(log_dir).get("time_s")
    return float(t[-1]) if t is not None and len(t) else 0.0


def _scored(column: str) -> bool:
    """The ticks.csv columns the score reads."""
    return column == "time_s" or column.endswith(("_soc", "_soc_sigma"))


def soc_all_stacks(log_dir: Path, run_dir: Path, cells: list[slice], tick_s: float,
                   ticks: dict[str, Any] | None = None) -> dict[str, Any]:
    """bms.app.evaluate.soc_error per stack (its cells' columns against its own truth file),
    pooled over every cell-sample of the pack. ``ticks``: the scored columns as the run log
    kept them (RunLog.kept_columns: the floats ticks.csv holds); None: read from ticks.csv."""
    from bms.app.evaluate import soc_error
    from bms.runlog import load_tick_columns

    if ticks is None:
        # only the columns scored (parsing all 116 of ssb-23's took ~7 s per simulated hour)
        ticks = load_tick_columns(log_dir, _scored)
    soc_cols = sorted(c for c in ticks if c.endswith("_soc"))
    parts = []
    for k, sl in enumerate(cells):
        own = {"time_s": ticks["time_s"]} if ticks else {}
        for c in soc_cols[sl]:
            own[c] = ticks[c]
            own[c.replace("_soc", "_soc_sigma")] = ticks[c.replace("_soc", "_soc_sigma")]
        part = soc_error(own, run_dir / f"truth_{k}.csv", tick_s) if ticks else {}
        if part:
            parts.append(part)
    if not parts:
        return {}
    n = sum(p["samples"] for p in parts)
    return {"rmse_pct": math.sqrt(sum(p["rmse_pct"] ** 2 * p["samples"] for p in parts) / n),
            "max_abs_pct": max(p["max_abs_pct"] for p in parts),
            "within_3sigma_pct": sum(p["within_3sigma_pct"] * p["samples"] for p in parts) / n,
            "samples": n}


def score(run: RunSpec, report: dict[str, Any], summary: dict[str, Any],
          log_dir: Path) -> dict[str, Any]:
    from bms.runlog import load_events

    soc = report.get("soc") or {}
    row: dict[str, Any] = {**describe(run.as_dict()), "status": "ok", "error": "",
                           "traceback": "", "plant_seed": run.plant_seed,
                           "sim_s": summary["time_s"], "final_state": summary["state"],
                           "soc_rmse_pct": soc.get("rmse_pct"),
                           "soc_max_err_pct": soc.get("max_abs_pct"),
                           "soc_cover_3sigma_pct": soc.get("within_3sigma_pct")}
    expect = set(expected_codes(run.fault)) if run.fault else set()
    f = run.fault
    raised = [e for e in load_events(log_dir)
              if e.get("type") == "fault" and e.get("event") == "raise"]
    hits = []
    if f is not None:
        cells = set(f.targets) if f.fault in _CELL_FAULTS else None
        hits = [e for e in raised if e.get("name") in expect and e["time_s"] >= f.at_s - 1e-9
                and (cells is None or e.get("cell") is None or e.get("cell") in cells)
                and (f.stack is None or e.get("stack") is None or e.get("stack") == f.stack)]
    first = min(hits, key=lambda e: e["time_s"], default=None)
    severe = min((e for e in hits if e.get("severity") in ("fault", "critical")),
                 key=lambda e: e["time_s"], default=None)
    row.update({
        "expected": ",".join(sorted(expect)),
        "detected": None if f is None else first is not None,
        "detected_by": first["name"] if first else "",
        "detect_severity": first["severity"] if first else "",
        "latency_s": (first["time_s"] - f.at_s) if first and f else None,
        "fault_latency_s": (severe["time_s"] - f.at_s) if severe and f else None,
        "bound_s": f.bound_s if f else None,
    })
    # False alarms: every raise of a healthy run, and those of a faulted run before its
    # injection; after it, other codes are the fault's consequences (listed, not counted).
    false = [e for e in raised if f is None or e["time_s"] < f.at_s - 1e-9]
    after = sorted({e["name"] for e in raised if f is not None
                    and e["time_s"] >= f.at_s - 1e-9 and e.get("name") not in expect})
    warn = Counter(e["name"] for e in false if e.get("severity") == "warning")
    flt = Counter(e["name"] for e in false if e.get("severity") in ("fault", "critical"))
    row.update({"false_warnings": sum(warn.values()), "false_faults": sum(flt.values()),
                "false_warning_codes": json.dumps(dict(sorted(warn.items()))),
                "false_fault_codes": json.dumps(dict(sorted(flt.items()))),
                "also_raised": ",".join(after)})
    return row


def main(argv: list[str]) -> int:
    run_json = Path(argv[0])
    d = json.loads(run_json.read_text(encoding="utf-8"))
    run = run_from_dict(d)
    try:
        row = execute(run, run_json.parent, write_ticks=NO_TICKS not in argv[1:])
    except Exception as exc:  # noqa: BLE001 - a run's failure is its result, recorded
        row = _failed(d, "error", f"{type(exc).__name__}: {exc}", traceback.format_exc())
    sys.stdout.write(RESULT_MARK + json.dumps(row, default=_plain) + "\n")
    sys.stdout.flush()
    return 0


def _plain(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    return str(x)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
