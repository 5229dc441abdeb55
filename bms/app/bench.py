"""``bms bench``: ns per cell-step and us per stack step of the estimation core.

For N = 23, 92, 368, 2000, 10000 cells (one stack of N cells, the ssb-23 cell model):

- ``cffi``: the C core called through cffi with pointers made once (EKF alone, whole tick);
- ``c-loop``: the same C step looped in a small C program (tools/bench_core.c), no Python;
- ``numpy``: the NumPy reference (bms/reference.py);
- ``filterpy``: a per-cell Python loop of FilterPy's ExtendedKalmanFilter on the same model
  (what a Python user would pick; ``[bench]`` extra). Above 368 cells it is timed on 368 cells
  and reported per cell (its cost is linear in N; the record says ``sampled_cells``).

Medians of repeated timings, all from one run, so the ratios compare like with like.
``--json`` prints a list of records {impl, part, n_cells, ns_per_cell_step, us_per_stack_step}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bms.app.errors import Parser, positive_seconds
from bms.core import Core, CoreParams, make_params
from bms.reference import ReferenceCore
from boards.config import load_pack

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
BENCH_C = ROOT / "tools" / "bench_core.c"
SIZES = (23, 92, 368, 2000, 10000)
FILTERPY_MAX_CELLS = 368


def _median_time(fn, number: int, repeat: int) -> float:
    """Median over ``repeat`` of the mean time of one call in ``number`` calls, seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def _inputs(params: CoreParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ref = ReferenceCore(params)
    n = params.n_cells
    v = ref.lookup(np.full(n, 0.5), np.full(n, 25.0))["ocv_v"]
    return v, np.full(params.n_sensors, 25.0), np.full(params.n_load_cells, ref.expected_pressure())


def _number(n: int, budget_s: float, per_call_guess_s: float) -> int:
    return max(3, int(budget_s / max(per_call_guess_s, 1e-9)))


def bench_cffi(params: CoreParams, pack, part: str, budget_s: float) -> float:
    core = Core(pack, 0, params=params)
    core.reset(0.5)
    v, t, p = _inputs(params)
    vb, tb, pb = core.input_buffers()
    vb[:], tb[: len(t)], pb[: len(p)] = v, t, p
    fn, args = core.raw_ekf_call() if part == "ekf" else core.raw_call()
    out = core.out_struct
    currents = [-2.0, -3.5]
    state = [0]

    def call() -> None:
        state[0] ^= 1
        fn(*args, 0.1, currents[state[0]], out)

    per = _median_time(call, 20, 3)
    return _median_time(call, _number(params.n_cells, budget_s / 7, per), 7)


def bench_numpy(params: CoreParams, part: str, budget_s: float) -> float:
    ref = ReferenceCore(params)
    v, t, p = _inputs(params)
    fn = ref.ekf_step if part == "ekf" else ref.tick
    per = _median_time(lambda: fn(0.1, -2.0, v, t, p), 3, 3)
    return _median_time(lambda: fn(0.1, -2.0, v, t, p),
                        _number(params.n_cells, budget_s / 5, per), 5)


def bench_filterpy(params: CoreParams, budget_s: float) -> tuple[float, int]:
    """Per-cell loop of filterpy.kalman.ExtendedKalmanFilter on x = [SOC, V1, V2] with the same
    look-ups (vectorised once per step, as a Python user would) and the same noise."""
    from filterpy.kalman import ExtendedKalmanFilter

    n = min(params.n_cells, FILTERPY_MAX_CELLS)
    sub = CoreParams(**{**params.__dict__, "n_cells": n, "temp_idx0": params.temp_idx0[:n],
                        "temp_idx1": params.temp_idx1[:n], "temp_w": params.temp_w[:n]})
    ref = ReferenceCore(sub)
    v, _, _ = _inputs(sub)
    filters = []
    for _ in range(n):
        f = ExtendedKalmanFilter(dim_x=3, dim_z=1, dim_u=1)
        f.x = np.array([[0.5], [0.0], [0.0]])
        f.P = np.diag([sub.soc_sigma0 ** 2, sub.v_rc_sigma0 ** 2, sub.v_rc_sigma0 ** 2])
        f.R = np.array([[sub.r_voltage_v2]])
        filters.append(f)
    dt, cur = 0.1, -2.0
    temps = np.full(n, 25.0)

    def step() -> None:
        soc = np.array([f.x[0, 0] for f in filters])
        w = ref.lookup(soc, temps)
        ocv, docv, r0, r1, r2 = (w["ocv_v"], w["docv"], w["r0_discharge_ohm"], w["r1_ohm"],
                                 w["r2_ohm"])
        a1 = np.exp(-dt / w["tau1_s"])
        a2 = np.exp(-dt / w["tau2_s"])
        for i, f in enumerate(filters):
            f.F = np.diag([1.0, a1[i], a2[i]])
            f.B = np.array([[dt / sub.capacity_as], [r1[i] * (1 - a1[i])],
                            [r2[i] * (1 - a2[i])]])
            f.Q = np.diag([sub.q_soc_per_s * dt, sub.q_rc_v2_per_s * dt,
                           sub.q_rc_v2_per_s * dt])
            f.predict(u=np.array([[cur]]))
            d, o, r = docv[i], ocv[i], r0[i]
            f.update(np.array([[v[i]]]),
                     HJacobian=lambda x, d=d: np.array([[d, 1.0, 1.0]]),
                     Hx=lambda x, o=o, r=r: np.array([[o + x[1, 0] + x[2, 0] + r * cur]]))

    per = _median_time(step, 1, 1)
    per = _median_time(step, max(1, int(budget_s / 5 / per)), 5)
    return per, n


def _c_header(params: CoreParams, v: np.ndarray, t: np.ndarray, p: np.ndarray) -> str:
    def arr(name: str, ctype: str, values) -> str:
        body = ",".join(repr(float(x)) if ctype == "double" else str(int(x)) for x in values)
        return f"static const {ctype} {name}[] = {{{body}}};\n"

    lines = ["#include <string.h>\n",
             f"#define BP_N {params.n_cells}\n#define BP_K {params.n_sensors}\n",
             f"#define BP_M {params.n_load_cells}\n#define BP_V {float(v[0])!r}\n",
             f"#define BP_T {float(t[0]) if len(t) else 25.0!r}\n",
             f"#define BP_P {float(p[0]) if len(p) else 1000.0!r}\n",
             arr("BP_GRID", "double", params.grid.ravel()),
             arr("BP_I0", "int32_t", params.temp_idx0), arr("BP_I1", "int32_t", params.temp_idx1),
             arr("BP_W", "double", params.temp_w),
             "static void bench_fill_params(ssb_params_t *p) {\n  memset(p, 0, sizeof *p);\n",
             "  p->grid = BP_GRID; p->temp_idx0 = BP_I0; p->temp_idx1 = BP_I1; p->temp_w = BP_W;\n"]
    for name, value in params.__dict__.items():
        if name in ("grid", "temp_idx0", "temp_idx1", "temp_w", "extra", "soc_sigma0",
                    "v_rc_sigma0", "leak_sigma0_a"):
            continue
        if isinstance(value, tuple):
            for k, x in enumerate(value):
                lines.append(f"  p->{name}[{k}] = {x!r};\n")
        else:
            lines.append(f"  p->{name} = {value!r};\n")
    lines.append("}\n")
    return "".join(lines)


def c_flags() -> list[str]:
    """The compiler flags of the cffi build (csrc/build_core.py: one place), loaded by path
    rather than by putting csrc/ on sys.path."""
    spec = importlib.util.spec_from_file_location("ssb_build_core", CSRC / "build_core.py")
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {CSRC / 'build_core.py'}")
    build_core = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_core)
    return list(build_core.CFLAGS)


def bench_c_loop(params: CoreParams, workdir: Path, budget_s: float,
                 per_step_guess_s: float) -> dict[str, float] | None:
    cc = os.environ.get("CC") or shutil.which("cc")
    if cc is None:
        return None
    v, t, p = _inputs(params)
    (workdir / "bench_params.h").write_text(_c_header(params, v, t, p), encoding="utf-8")
    exe = workdir / f"bench_core_{params.n_cells}"
    subprocess.run([cc, *c_flags(), f"-I{CSRC}", f"-I{workdir}", str(CSRC / "ssb_core.c"),
                    str(BENCH_C), "-lm", "-o", str(exe)], check=True, capture_output=True)
    steps = max(10, int(budget_s / 2 / 7 / max(per_step_guess_s, 1e-9)))
    res = subprocess.run([str(exe), str(steps), "7"], check=True, capture_output=True, text=True)
    return json.loads(res.stdout)


def record(impl: str, part: str, n: int, seconds: float, **extra) -> dict:
    return {"impl": impl, "part": part, "n_cells": n,
            "ns_per_cell_step": seconds * 1e9 / n, "us_per_stack_step": seconds * 1e6, **extra}


def run(sizes=SIZES, budget_s: float = 1.0, filterpy: bool = True) -> list[dict]:
    pack = load_pack("ssb-23")
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ssb-bench-") as tmp:
        for n in sizes:
            params = make_params(pack, 0, n_cells=n)
            t_ekf = bench_cffi(params, pack, "ekf", budget_s)
            t_tick = bench_cffi(params, pack, "tick", budget_s)
            records.append(record("cffi", "ekf", n, t_ekf))
            records.append(record("cffi", "tick", n, t_tick))
            c = bench_c_loop(params, Path(tmp), budget_s, t_tick)
            if c is not None:
                records.append(record("c-loop", "ekf", n, c["ekf_ns_per_step"] * 1e-9))
                records.append(record("c-loop", "tick", n, c["tick_ns_per_step"] * 1e-9))
            records.append(record("numpy", "ekf", n, bench_numpy(params, "ekf", budget_s)))
            records.append(record("numpy", "tick", n, bench_numpy(params, "tick", budget_s)))
            if filterpy:
                try:
                    per, used = bench_filterpy(params, budget_s)
                except ImportError:
                    filterpy = False
                else:
                    records.append(record("filterpy", "ekf", n, per * n / used,
                                          sampled_cells=used))
    return records


def ratios(records: list[dict]) -> list[str]:
    by = {(r["impl"], r["part"], r["n_cells"]): r["us_per_stack_step"] for r in records}
    lines = []
    for n in sorted({r["n_cells"] for r in records}):
        parts = []
        if ("filterpy", "ekf", n) in by:
            fp = by["filterpy", "ekf", n] / by["cffi", "ekf", n]
            parts.append(f"filterpy/cffi EKF {fp:.0f}x")
        parts.append(f"numpy/cffi tick {by['numpy', 'tick', n] / by['cffi', 'tick', n]:.1f}x")
        if ("c-loop", "ekf", n) in by:
            parts.append(f"cffi/c-loop EKF {by['cffi', 'ekf', n] / by['c-loop', 'ekf', n]:.2f}x"
                         f", tick {by['cffi', 'tick', n] / by['c-loop', 'tick', n]:.2f}x")
        lines.append(f"N={n}: " + ", ".join(parts))
    return lines


def _cell_counts(text: str) -> tuple[int, ...]:
    """argparse type of --sizes: comma-separated whole numbers >= 1."""
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated cell counts >= 1")
    return sizes


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--tick" in argv:  # the whole control tick against emulated boards: bms/app/bench_tick.py
        from bms.app.bench_tick import main as tick_main

        return tick_main([a for a in argv if a != "--tick"])
    ap = Parser(
        prog="bms bench", description=__doc__.splitlines()[0],
        epilog="examples:\n  bms bench\n  bms bench --json --sizes 23,2000\n"
        "  bms bench --tick            # whole control tick (see bms bench --tick --help)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print the records as JSON")
    ap.add_argument("--sizes", type=_cell_counts, default=SIZES,
                    help="comma-separated cell counts")
    ap.add_argument("--budget-s", type=positive_seconds, default=1.0,
                    help="time per measurement")
    ap.add_argument("--no-filterpy", action="store_true",
                    help="skip the FilterPy reference (slow at large N)")
    ap.add_argument("--tick", action="store_true",
                    help="benchmark the whole control tick against emulated boards instead "
                    "(bms/app/bench_tick.py; bms bench --tick --help for its options)")
    args = ap.parse_args(argv)
    records = run(args.sizes, args.budget_s, filterpy=not args.no_filterpy)
    if args.json:
        print(json.dumps(records, indent=1))
        return 0
    print(f"# {platform.processor() or platform.machine()}, flags {' '.join(c_flags())}")
    print(f"{'impl':<9} {'part':<5} {'N':>6} {'ns/cell-step':>13} {'us/stack-step':>14}")
    for r in records:
        print(f"{r['impl']:<9} {r['part']:<5} {r['n_cells']:>6} {r['ns_per_cell_step']:>13.1f} "
              f"{r['us_per_stack_step']:>14.2f}")
    print("\n".join(ratios(records)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
