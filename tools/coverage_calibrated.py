"""How often a *calibrated* 3-sigma bound lands inside 95-99.7 % coverage on one drive file.

A replay's SOC error is not white: it is correlated over minutes (the model's error follows
the SOC, the EKF's correction takes a while). This tool measures, per drive file of a
``bms accuracy`` run, the integral time scale tau of error / sigma after the settling window
(its autocorrelation summed to the first zero crossing) and so the file's number of
independent stretches N = T / (2 tau); then it draws many files of a calibrated estimator with
that correlation (error / sigma a unit Gauss-Markov process, time constant tau, sampled as the
file is) and counts how often their coverage of +-3 sigma falls inside 95-99.7 %, above, below.
Not a test; the figures are in docs/estimation.md "Accuracy on PyBaMM truth".

    .venv/bin/python tools/coverage_calibrated.py --accuracy-dir runs/acc --truth-dir /tmp/truth
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def integral_time_s(x: np.ndarray, dt_s: float) -> float:
    """The autocorrelation of ``x`` (mean removed) summed up to its first zero crossing."""
    x = x - x.mean()
    n = len(x)
    f = np.fft.rfft(x, 2 * n)
    ac = np.fft.irfft(f * np.conj(f))[:n]
    ac = ac / ac[0]
    k = int(np.argmax(ac < 0.0)) if np.any(ac < 0.0) else n
    return float(ac[:k].sum() * dt_s)


def calibrated_coverage(n_samples: int, dt_s: float, tau_s: float, draws: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Coverage of +-3 of ``draws`` unit Gauss-Markov series (time constant ``tau_s``)."""
    a = float(np.exp(-dt_s / max(tau_s, dt_s)))
    w = float(np.sqrt(1.0 - a * a))
    z = rng.standard_normal(draws)
    inside = np.zeros(draws)
    for _ in range(n_samples):
        inside += np.abs(z) <= 3.0
        z = a * z + w * rng.standard_normal(draws)
    return inside / n_samples


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="tools/coverage_calibrated.py",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--accuracy-dir", type=Path, required=True,
                    help="a `bms accuracy --out` folder (its fit/SET/SET.yaml packs)")
    ap.add_argument("--truth-dir", type=Path, required=True)
    ap.add_argument("--settle-s", type=float, default=600.0)
    ap.add_argument("--draws", type=int, default=2000)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(11)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for data in sorted(args.truth_dir.glob("drive_*.csv")):
            if data.stem.endswith("_truth"):
                continue
            set_name = data.stem.split("_")[1]
            pack = args.accuracy_dir / "fit" / set_name / f"{set_name}.yaml"
            truth = data.with_name(data.stem + "_truth.csv")
            if not (pack.is_file() and truth.is_file()):
                continue
            out = Path(tmp) / f"{data.stem}.csv"
            subprocess.run([sys.executable, "-m", "bms", "replay", "--pack", str(pack),
                            "--data", str(data), "-o", str(out)], check=True,
                           capture_output=True, cwd=ROOT)
            d = np.genfromtxt(out, delimiter=",", names=True, usecols=(0, 2, 3))
            tr = np.genfromtxt(truth, delimiter=",", names=True)
            t = d["time_s"]
            keep = t >= args.settle_s
            dt_s = float(np.median(np.diff(t)))
            err = (d["soc"] - np.interp(t, tr["time_s"], tr["soc"]))[keep]
            z = err / (d["soc_3sigma"][keep] / 3.0)
            tau = integral_time_s(z, dt_s)
            cov = calibrated_coverage(int(keep.sum()), dt_s, tau, args.draws, rng)
            rows.append((data.name, keep.sum() * dt_s, tau, float(np.mean(np.abs(z) <= 3.0)),
                         float(np.mean((cov >= 0.95) & (cov <= 0.997))),
                         float(np.mean(cov > 0.997)), float(np.mean(cov < 0.95))))
            r = rows[-1]
            print(f"{r[0]:<34} {r[1] / 3600:5.2f} h  tau {r[2] / 60:5.1f} min  "
                  f"N {r[1] / (2 * r[2]):5.1f}  measured {100 * r[3]:6.2f} %  calibrated: "
                  f"inside {100 * r[4]:5.1f} %, above {100 * r[5]:5.1f} %, "
                  f"below {100 * r[6]:4.1f} %", flush=True)
    if not rows:
        print("no drive file with a fitted pack found", file=sys.stderr)
        return 2
    inside = sum(95.0 <= 100 * r[3] <= 99.7 for r in rows)
    print(f"{len(rows)} files: measured inside 95-99.7 % {inside}; a calibrated bound would "
          f"put {sum(r[4] for r in rows):.1f} inside, {sum(r[5] for r in rows):.1f} above, "
          f"{sum(r[6] for r in rows):.1f} below (expected counts)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
