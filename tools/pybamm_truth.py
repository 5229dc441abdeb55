#!/usr/bin/env python3
"""Foreign truth for the BMS: cell data made by PyBaMM (an optional extra: pip install
'.[truth]', pinned), in the cycler format ``bms fit`` and ``bms replay`` read.

Per parameter set, into the output directory (-o):

  ocv_<set>.csv                 C/20 discharge from full (after 1 h rest), 1 h rest, C/20 charge
                                back to the upper cut-off, at 25 degC (10 s samples)
  hppc_<set>_<T>C.csv           HPPC (USABC/INL structure) from full, at each temperature (1 s)
  drive_<set>_<T>C_soc<XX>.csv  UDDS-derived current through a vehicle model, repeated down to
                                --end-soc (or --hours), with measurement noise (1 s samples)
  *_truth.csv                   the noise-free truth of each of these files
  manifest.json, README.md      what was made, how, with which seeds and capacities

Cycler files: columns Time [s], Current [A], Voltage [V], Temperature [degC]; CURRENT POSITIVE
= DISCHARGE (PyBaMM's sign: give the BMS commands --current-sign discharge-positive).
Truth files: time_s, soc, voltage_v, current_a, temperature_c; current_a POSITIVE = CHARGE
(the BMS's sign, as in its run logs); soc a fraction = 1 - (charge discharged since the relaxed
full cell) / (the set's C/20 discharge capacity at 25 degC from its OCV test).

Model: PyBaMM SPMe with a lumped thermal model, IDAKLU solver (rtol 1e-6, atol 1e-8); ambient
and initial temperature both set to the test temperature. docs/truth.md says more.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bms.app import drive_cycles as dc  # noqa: E402

PYBAMM_PIN = "26.10.1.1"
DEFAULT_SETS = ("Chen2020", "Mohtat2020")
DEFAULT_TEMPERATURES = (0.0, 10.0, 25.0, 40.0)
DEFAULT_INITIAL_SOCS = (0.9, 0.6)
SPEED_FILE = ROOT.parent / "shared" / "data" / "epa-udds-speed.txt"
OCV_TEMPERATURE_C = 25.0
RTOL, ATOL = 1e-6, 1e-8
K0 = 273.15


def _pybamm():
    os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")
    import pybamm

    pybamm.set_logging_level("ERROR")
    return pybamm


def _params(pybamm, name: str, temperature_c: float):
    pv = pybamm.ParameterValues(name)
    pv["Ambient temperature [K]"] = K0 + temperature_c
    pv["Initial temperature [K]"] = K0 + temperature_c
    return pv


def _solve(pybamm, pv, steps, period_s: float, pybamm_soc: float):
    model = pybamm.lithium_ion.SPMe(options={"thermal": "lumped"})
    exp = pybamm.Experiment(steps, period=f"{period_s:g} seconds")
    sim = pybamm.Simulation(model, parameter_values=pv, experiment=exp,
                            solver=pybamm.IDAKLUSolver(rtol=RTOL, atol=ATOL))
    return sim.solve(initial_soc=pybamm_soc)


def _series(sol) -> dict[str, np.ndarray]:
    """Time, current (discharge +), voltage, temperature, discharged charge; the repeated time
    points where one step ends and the next begins are merged (the later sample kept)."""
    t = sol["Time [s]"].entries
    out = {"t": t, "i": sol["Current [A]"].entries, "v": sol["Voltage [V]"].entries,
           "temp": sol["Volume-averaged cell temperature [C]"].entries,
           "q": sol["Discharge capacity [A.h]"].entries}
    keep = np.ones(len(t), dtype=bool)
    keep[:-1] = np.diff(t) > 1e-9
    return {k: v[keep] for k, v in out.items()}


def _pybamm_soc(soc: float, info: dict) -> float:
    """PyBaMM's initial_soc (linear in stoichiometry between its 0 and 100 %) of the relaxed
    cell whose charge-defined SOC is ``soc``: the cell with (1 - soc) x Q20 removed from full.
    Exact for this model (no side reactions): removed charge moves both stoichiometries
    linearly; checked against a C/20 partial discharge + 24 h rest (6 nV apart)."""
    return 1.0 - (1.0 - soc) * info["capacity_ah_c20"] / info["theoretical_capacity_ah"]


def _entry(path: Path, kind: str, name: str, temp_c: float, soc0: float, info: dict, seed,
           rows: int, duration_s: float, stopped_early: bool, wall_s: float, **extra) -> dict:
    e = {"file": path.name, "kind": kind, "set": name, "temperature_c": temp_c,
         "initial_soc": soc0, "capacity_ah": info["capacity_ah_c20"], "seed": seed, "rows": rows,
         "bytes": path.stat().st_size, "duration_s": round(duration_s, 3),
         "stopped_early": stopped_early, "wall_s": round(wall_s, 2)}
    e.update(extra)
    return e


def _truth(path: Path, s: dict, soc0: float, q20: float) -> int:
    soc = soc0 - (s["q"] - s["q"][0]) / q20
    return dc.write_truth_csv(path, s["t"], soc, s["v"], 0.0 - s["i"], s["temp"])


# --- the three tests ---------------------------------------------------------------------

def ocv_test(name: str, out: Path, period_s: float) -> tuple[dict, list[dict]]:
    pybamm = _pybamm()
    t0 = time.perf_counter()
    pv = _params(pybamm, name, OCV_TEMPERATURE_C)
    vmin, vmax = pv["Lower voltage cut-off [V]"], pv["Upper voltage cut-off [V]"]
    steps = ["Rest for 1 hour", f"Discharge at C/20 until {vmin} V", "Rest for 1 hour",
             f"Charge at C/20 until {vmax} V"]
    sol = _solve(pybamm, pv, steps, period_s, 1.0)
    dis = sol.cycles[1]["Discharge capacity [A.h]"].entries
    chg = sol.cycles[3]["Discharge capacity [A.h]"].entries
    x100, _ = pybamm.lithium_ion.get_initial_stoichiometries(1, pv)
    x0, _ = pybamm.lithium_ion.get_initial_stoichiometries(0, pv)
    q_n = float(sol["Negative electrode capacity [A.h]"].entries[0])
    info = {"capacity_ah_c20": float(dis[-1] - dis[0]),
            "capacity_ah_c20_charge": float(chg[0] - chg[-1]),
            "theoretical_capacity_ah": q_n * float(x100 - x0),
            "nominal_capacity_ah": float(pv["Nominal cell capacity [A.h]"]),
            "lower_voltage_cutoff_v": float(vmin), "upper_voltage_cutoff_v": float(vmax)}
    s = _series(sol)
    path = out / f"ocv_{name}.csv"
    rows = dc.write_cycler_csv(path, s["t"], s["i"], s["v"], s["temp"])
    wall = time.perf_counter() - t0
    tpath = out / f"ocv_{name}_truth.csv"
    trows = _truth(tpath, s, 1.0, info["capacity_ah_c20"])
    files = [_entry(path, "ocv", name, OCV_TEMPERATURE_C, 1.0, info, None, rows, s["t"][-1],
                    False, wall, period_s=period_s),
             _entry(tpath, "ocv_truth", name, OCV_TEMPERATURE_C, 1.0, info, None, trows,
                    s["t"][-1], False, 0.0)]
    return info, files


def hppc_steps(info: dict, *, pulse_c: float, charge_ratio: float, segment_c: float,
               rest_min: float, levels: int, step_soc: float) -> list:
    """Rest 1 h at full; at each level (SOC 1, 1 - step, ...): 10 s discharge pulse at
    pulse_c, 40 s rest, 10 s charge pulse at charge_ratio x pulse_c (none at 100 %: the cell
    is at its upper cut-off), 40 s rest; then step_soc x Q20 at segment_c and rest_min."""
    seg_s = step_soc * info["capacity_ah_c20"] / (segment_c * info["nominal_capacity_ah"]) * 3600
    steps = ["Rest for 1 hour"]
    for k in range(levels):
        steps += [f"Discharge at {pulse_c:g}C for 10 seconds", "Rest for 40 seconds"]
        if k > 0:
            steps += [f"Charge at {charge_ratio * pulse_c:g}C for 10 seconds",
                      "Rest for 40 seconds"]
        if k < levels - 1:
            steps += [f"Discharge at {segment_c:g}C for {seg_s:.3f} seconds",
                      f"Rest for {rest_min:g} minutes"]
    return steps


def hppc_test(name: str, temp_c: float, info: dict, out: Path, args) -> list[dict]:
    pybamm = _pybamm()
    t0 = time.perf_counter()
    pv = _params(pybamm, name, temp_c)
    steps = hppc_steps(info, pulse_c=args.hppc_pulse_c, charge_ratio=0.75,
                       segment_c=args.hppc_segment_c, rest_min=args.hppc_rest_min,
                       levels=args.hppc_levels, step_soc=0.10)
    sol = _solve(pybamm, pv, steps, 1.0, 1.0)
    s = _series(sol)
    stopped = bool(len(sol.cycles) < len(steps))
    tag = f"{name}_{temp_c:g}C"
    path = out / f"hppc_{tag}.csv"
    rows = dc.write_cycler_csv(path, s["t"], s["i"], s["v"], s["temp"])
    wall = time.perf_counter() - t0
    tpath = out / f"hppc_{tag}_truth.csv"
    trows = _truth(tpath, s, 1.0, info["capacity_ah_c20"])
    # how far from rest the voltage still was at the end of each long rest (V/h)
    relax = _end_of_rest_slopes(s, args.hppc_rest_min * 60.0)
    return [_entry(path, "hppc", name, temp_c, 1.0, info, None, rows, s["t"][-1], stopped,
                   wall, steps_done=len(sol.cycles), steps_asked=len(steps),
                   end_of_rest_dv_dt_mv_per_h_max=relax),
            _entry(tpath, "hppc_truth", name, temp_c, 1.0, info, None, trows, s["t"][-1],
                   stopped, 0.0)]


def _end_of_rest_slopes(s: dict, rest_s: float) -> float | None:
    """Largest |dV/dt| (mV/h) over the last 5 minutes of each rest of at least rest_s."""
    idle = np.abs(s["i"]) < 1e-6
    best, start = None, None
    for k in range(len(idle) + 1):
        if k < len(idle) and idle[k]:
            start = k if start is None else start
            continue
        if start is not None and s["t"][k - 1] - s["t"][start] >= 0.9 * rest_s:
            w = s["t"] >= s["t"][k - 1] - 300
            w[:start] = False
            w[k:] = False
            slope = abs(np.polyfit(s["t"][w], s["v"][w], 1)[0]) * 3.6e6
            best = slope if best is None else max(best, slope)
        start = None
    return None if best is None else round(float(best), 3)


def drive_test(name: str, temp_c: float, soc0: float, info: dict, out: Path, args) -> list[dict]:
    pybamm = _pybamm()
    t0 = time.perf_counter()
    pv = _params(pybamm, name, temp_c)
    t1, i1 = dc.udds_cell_current(args.speed_file, info["nominal_capacity_ah"], args.peak_c)
    t, i = dc.repeat_profile(t1, i1, capacity_ah=info["capacity_ah_c20"], soc0=soc0,
                             end_soc=args.end_soc, max_hours=args.hours)
    step = pybamm.step.current(np.column_stack([t, i]))
    sol = _solve(pybamm, pv, [step], 1.0, _pybamm_soc(soc0, info))
    s = _series(sol)
    stopped = bool(s["t"][-1] < t[-1] - 0.5)
    seed = [int(args.seed), zlib.crc32(f"{name}|{temp_c:g}|{soc0:g}".encode())]
    rng = np.random.default_rng(seed)
    m = dc.measure(s["t"], s["i"], s["v"], s["temp"], nominal_capacity_ah=info[
        "nominal_capacity_ah"], noise=args.noise, rng=rng)
    tag = f"{name}_{temp_c:g}C_soc{round(100 * soc0):02d}"
    path = out / f"drive_{tag}.csv"
    rows = dc.write_cycler_csv(path, m.time_s, m.current_a, m.voltage_v, m.temperature_c)
    wall = time.perf_counter() - t0
    tpath = out / f"drive_{tag}_truth.csv"
    trows = _truth(tpath, s, soc0, info["capacity_ah_c20"])
    soc_end = soc0 - (s["q"][-1] - s["q"][0]) / info["capacity_ah_c20"]
    extra = {"final_soc": round(float(soc_end), 5), "pybamm_initial_soc": _pybamm_soc(soc0, info)}
    return [_entry(path, "drive", name, temp_c, soc0, info, seed, rows, s["t"][-1], stopped,
                   wall, truth=tpath.name, **extra),
            _entry(tpath, "drive_truth", name, temp_c, soc0, info, None, trows, s["t"][-1],
                   stopped, 0.0, **extra)]


# --- command line -----------------------------------------------------------------------

README = """# PyBaMM truth files

Made by `tools/pybamm_truth.py` (ssb-bms; docs/truth.md) with PyBaMM {pybamm}: SPMe, lumped
thermal, IDAKLU solver (rtol 1e-6, atol 1e-8). manifest.json lists every file with its
parameter set, temperature, initial SOC, capacity, seed and the generation wall time.

## Sign convention

- Cycler files (`ocv_*.csv`, `hppc_*.csv`, `drive_*.csv` without `_truth`): columns
  `Time [s]`, `Current [A]`, `Voltage [V]`, `Temperature [degC]`.
  **Current is positive on DISCHARGE** (PyBaMM's sign). Tell the BMS:
  `bms fit --current-sign discharge-positive ...`,
  `bms replay --current-sign discharge-positive ...`.
- Truth files (`*_truth.csv`): `time_s`, `soc`, `voltage_v`, `current_a`, `temperature_c`,
  noise-free. **`current_a` is positive on CHARGE** (the BMS's own sign, as in its run logs).

## SOC

`soc` (a fraction) = 1 - (charge discharged since the relaxed full cell, A h) / Q20, with Q20 the
set's C/20 discharge capacity at 25 degC from its `ocv_<set>.csv` (manifest: `capacity_ah_c20`).
"Full" is PyBaMM's 100 % (both electrodes at the stoichiometry of the upper cut-off voltage,
relaxed). A drive file starting at SOC 0.9 starts from the relaxed cell with 0.1 x Q20 removed.

## Noise (drive files only; OCV and HPPC files are noise-free lab data)

{noise}
Seeds: manifest `files[].seed` ([--seed, crc32 of "set|T|soc"], numpy default_rng).
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="tools/pybamm_truth.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    ap.add_argument("--sets", default=",".join(DEFAULT_SETS),
                    help="PyBaMM parameter sets, comma separated (default %(default)s)")
    ap.add_argument("--temperatures", default=",".join(f"{t:g}" for t in DEFAULT_TEMPERATURES),
                    help="HPPC and drive temperatures, degC (default %(default)s)")
    ap.add_argument("--initial-socs", default=",".join(f"{s:g}" for s in DEFAULT_INITIAL_SOCS),
                    help="drive-cycle initial SOCs (default %(default)s)")
    ap.add_argument("--hours", type=float, default=None,
                    help="stop each drive file after this long (default: at --end-soc)")
    ap.add_argument("--end-soc", type=float, default=0.15,
                    help="drive cycles repeat until this SOC (default %(default)s)")
    ap.add_argument("--peak-c", type=float, default=2.0,
                    help="largest drive discharge current, C (default %(default)s)")
    ap.add_argument("--seed", type=int, default=20261203, help="noise seed (default %(default)s)")
    ap.add_argument("--jitter-s", type=float, default=0.0,
                    help="drive files: sample time jitter sigma, s (default 0)")
    ap.add_argument("--drop-fraction", type=float, default=0.0,
                    help="drive files: share of samples dropped at random (default 0)")
    ap.add_argument("--hppc-pulse-c", type=float, default=1.0, help="default %(default)s C")
    ap.add_argument("--hppc-segment-c", type=float, default=0.5,
                    help="10 %% SOC discharge segments, C (default %(default)s)")
    ap.add_argument("--hppc-rest-min", type=float, default=60.0,
                    help="rest after each segment, minutes (default %(default)s)")
    ap.add_argument("--hppc-levels", type=int, default=10,
                    help="pulse levels: SOC 1.0, 0.9, ... (default %(default)s: down to 0.1)")
    ap.add_argument("--ocv-period-s", type=float, default=10.0, help="default %(default)s s")
    ap.add_argument("--speed-file", type=Path, default=SPEED_FILE,
                    help="EPA speed trace (default ../shared/data/epa-udds-speed.txt)")
    ap.add_argument("--jobs", type=int, default=1, help="processes (default 1)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: first set only, 25 degC, SOC 0.9, 5 min drive, 2 HPPC levels "
                         "with 5 min rests")
    args = ap.parse_args(argv)
    args.sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    args.temperatures = [float(x) for x in args.temperatures.split(",") if x.strip()]
    args.initial_socs = [float(x) for x in args.initial_socs.split(",") if x.strip()]
    args.quick_drive_s = 300.0
    if args.quick:
        args.sets, args.temperatures, args.initial_socs = args.sets[:1], [25.0], [0.9]
        args.hppc_levels, args.hppc_rest_min = 2, 5.0
        args.hours = args.quick_drive_s / 3600.0 if args.hours is None else args.hours
    args.noise = dc.Noise(jitter_s=args.jitter_s, drop_fraction=args.drop_fraction)
    return args


def _noise_text(noise: dc.Noise) -> str:
    n = noise
    return (f"- voltage: +{1e3 * n.voltage_offset_v:g} mV fixed offset, gaussian sigma "
            f"{1e3 * n.voltage_sigma_v:g} mV\n"
            f"- current (on the file's discharge-positive value): gain error "
            f"{100 * n.current_gain:+g} %, offset {n.current_offset_c:+g} C, gaussian sigma "
            f"{n.current_sigma_c:g} C (C = the set's nominal capacity in A)\n"
            f"- temperature: offset {n.temperature_offset_k:+g} K, gaussian sigma "
            f"{n.temperature_sigma_k:g} K\n"
            f"- time: jitter sigma {n.jitter_s:g} s, dropped samples {100 * n.drop_fraction:g} %")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    pybamm = _pybamm()
    if pybamm.__version__ != PYBAMM_PIN:
        print(f"warning: PyBaMM {pybamm.__version__}, the files were checked with {PYBAMM_PIN}",
              file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    files: list[dict] = []
    sets: dict[str, dict] = {}
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futs = {name: pool.submit(ocv_test, name, args.out, args.ocv_period_s)
                for name in args.sets}
        for name, fut in futs.items():
            sets[name], got = fut.result()
            files += got
            print(f"{name}: Q20 {sets[name]['capacity_ah_c20']:.4f} Ah "
                  f"({got[0]['wall_s']:.1f} s)", flush=True)
        jobs = []
        for name in args.sets:
            for temp in args.temperatures:
                jobs.append(pool.submit(hppc_test, name, temp, sets[name], args.out, args))
                for soc0 in args.initial_socs:
                    jobs.append(pool.submit(drive_test, name, temp, soc0, sets[name], args.out,
                                            args))
        for fut in jobs:
            got = fut.result()
            files += got
            e = got[0]
            print(f"{e['file']}: {e['rows']} rows, {e['duration_s'] / 3600:.2f} h, "
                  f"{e['wall_s']:.1f} s" + (" (stopped early)" if e["stopped_early"] else ""),
                  flush=True)
    wall = time.perf_counter() - t_start
    manifest = {
        "generator": "tools/pybamm_truth.py", "pybamm_version": pybamm.__version__,
        "numpy_version": np.__version__, "python": platform.python_version(),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": ["tools/pybamm_truth.py", *(sys.argv[1:] if argv is None else argv)],
        "seed": args.seed,
        "model": "pybamm.lithium_ion.SPMe(options={'thermal': 'lumped'})",
        "solver": {"name": "IDAKLUSolver", "rtol": RTOL, "atol": ATOL},
        "soc_definition": "1 - (charge discharged since the relaxed full cell) / capacity_ah_c20"
                          " (the set's C/20 discharge capacity at 25 degC)",
        "sign_convention": {"cycler_files": "Current [A] positive = discharge",
                            "truth_files": "current_a positive = charge"},
        "noise": args.noise.to_dict(), "vehicle": dc.Vehicle().to_dict(),
        "drive": {"speed_file": str(args.speed_file), "peak_c": args.peak_c,
                  "end_soc": args.end_soc, "hours": args.hours, "sample_s": 1.0,
},
        "hppc": {"pulse_c": args.hppc_pulse_c, "charge_pulse_c": 0.75 * args.hppc_pulse_c,
                 "segment_c": args.hppc_segment_c, "segment_soc": 0.10,
                 "rest_min": args.hppc_rest_min, "levels": args.hppc_levels, "sample_s": 1.0},
        "sets": sets, "files": files, "wall_time_s": round(wall, 2), "jobs": args.jobs,
        "quick": args.quick,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n",
                                            encoding="utf-8")
    (args.out / "README.md").write_text(
        README.format(pybamm=pybamm.__version__, noise=_noise_text(args.noise)), encoding="utf-8")
    print(f"{len(files)} files in {args.out} ({wall:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
