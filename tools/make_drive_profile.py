"""Make hil/scenarios/udds-current.csv from the EPA UDDS speed trace (../shared/data).

Vehicle model (road-load equation, every number an assumption for a compact EV):
  F = m a + m g Crr + 0.5 rho CdA v^2, with m = 1500 kg, Crr = 0.010, CdA = 0.60 m2,
  rho = 1.2 kg/m3, g = 9.81 m/s2; battery power P = F v / 0.90 when driving (drivetrain
  efficiency 90 %) and P = 0.60 F v when braking (60 % of the braking power recovered).
The stack is far smaller than a car's battery, so the battery power is scaled to the stack:
current = -P / V_nominal * k, with V_nominal = 23 x 3.7 V and k chosen so that the largest
discharge current is 2.5 C of a 5 Ah cell (12.5 A). Regeneration then peaks near 1.0 C and
the mean discharge is about 0.21 C (1.06 A): a city cycle at sensible C-rates for the 23-cell stack.
Positive current = charge (regeneration). Usage: python tools/make_drive_profile.py [out.csv]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPEED_FILE = ROOT.parent / "shared" / "data" / "epa-udds-speed.txt"
OUT = ROOT / "hil" / "scenarios" / "udds-current.csv"
MPH_TO_MS = 0.44704
MASS_KG, CRR, CDA_M2, RHO, G = 1500.0, 0.010, 0.60, 1.2, 9.81
DRIVE_EFF, REGEN_FRACTION = 0.90, 0.60
V_NOMINAL = 23 * 3.7
PEAK_DISCHARGE_A = 2.5 * 5.0


def current_profile(speed_file: Path = SPEED_FILE) -> tuple[np.ndarray, np.ndarray]:
    data = np.loadtxt(speed_file, skiprows=1)
    t_s, v = data[:, 0], data[:, 1] * MPH_TO_MS
    a = np.gradient(v, t_s)
    force = MASS_KG * a + np.where(v > 0, MASS_KG * G * CRR + 0.5 * RHO * CDA_M2 * v * v, 0.0)
    wheel_w = force * v
    batt_w = np.where(wheel_w > 0, wheel_w / DRIVE_EFF, wheel_w * REGEN_FRACTION)
    current = -batt_w / V_NOMINAL
    current *= PEAK_DISCHARGE_A / -current.min()
    return t_s, current


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else OUT
    t_s, current = current_profile()
    with out.open("w", encoding="utf-8") as fh:
        fh.write("time_s,current_a\n")
        fh.write(f"# EPA UDDS via tools/make_drive_profile.py: peak discharge "
                 f"{-current.min():.2f} A, peak regen {current.max():.2f} A, mean "
                 f"{current.mean():.3f} A (+ = charge)\n")
        for t, i in zip(t_s, current, strict=True):
            fh.write(f"{t:.0f},{i:.4f}\n")
    print(f"{out}: {len(t_s)} rows, peak discharge {-current.min():.2f} A, "
          f"peak regen {current.max():.2f} A, mean {current.mean():.3f} A")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
