"""Drive-cycle currents, measurement noise and the cycler / truth CSV files of the PyBaMM
truth generator (``tools/pybamm_truth.py``; docs/truth.md). Pure Python and numpy: this module
never imports PyBaMM, so its parts are tested without it.

Sign conventions, said once here and in every file's README:

- vehicle / battery power: positive = the battery delivers power (driving), negative = it is
  charged (regenerative braking);
- **cycler files** (``Time [s]``, ``Current [A]``, ``Voltage [V]``, ``Temperature [degC]``):
  PyBaMM's sign, current **positive = discharge** (``--current-sign discharge-positive``);
- **truth files** (``time_s``, ``soc``, ``voltage_v``, ``current_a``, ``temperature_c``): the
  BMS's own sign, ``current_a`` **positive = charge**, like the emulator's truth.csv and the
  run logs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MPH_TO_MS = 0.44704
CYCLER_COLUMNS = ("Time [s]", "Current [A]", "Voltage [V]", "Temperature [degC]")
TRUTH_COLUMNS = ("time_s", "soc", "voltage_v", "current_a", "temperature_c")
#: Keys every manifest.json has (tools/pybamm_truth.py writes it; tests check it).
MANIFEST_KEYS = ("generator", "pybamm_version", "numpy_version", "python", "created_utc",
                 "command", "seed", "model", "solver", "soc_definition", "sign_convention",
                 "noise", "vehicle", "drive", "hppc", "sets", "files", "wall_time_s")
MANIFEST_FILE_KEYS = ("file", "kind", "set", "temperature_c", "initial_soc", "capacity_ah",
                      "seed", "rows", "bytes", "duration_s", "stopped_early", "wall_s")
FILE_KINDS = ("ocv", "ocv_truth", "hppc", "hppc_truth", "drive", "drive_truth")


@dataclass(frozen=True)
class Vehicle:
    """Road-load model of a compact EV; every number is an assumption (the same as
    tools/make_drive_profile.py uses for the emulator's udds-current.csv).

    F = m a + m g Crr + 0.5 rho CdA v^2 (rolling and drag only while moving); battery power
    P = F v / drive_efficiency when driving and P = regen_fraction * F v when braking
    (the share of the braking power at the wheels that reaches the battery)."""

    mass_kg: float = 1500.0
    crr: float = 0.010
    cda_m2: float = 0.60
    air_density_kg_m3: float = 1.2
    g_m_s2: float = 9.81
    drive_efficiency: float = 0.90
    regen_fraction: float = 0.60

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def read_speed_trace(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(time_s, speed m/s) from the EPA trace format: a header line, then ``seconds mph``."""
    data = np.loadtxt(path, skiprows=1, ndmin=2)
    if data.shape[1] < 2 or len(data) < 2:
        raise ValueError(f"{path}: expected two columns (seconds, mph) after a header line")
    t_s = data[:, 0].astype(float)
    if np.any(np.diff(t_s) <= 0):
        raise ValueError(f"{path}: time is not increasing")
    return t_s, data[:, 1] * MPH_TO_MS


def battery_power_w(t_s: np.ndarray, speed_ms: np.ndarray, vehicle: Vehicle = Vehicle()
                    ) -> np.ndarray:
    """Battery power (W) along the trace: positive = discharge (driving), negative = regen."""
    v = np.asarray(speed_ms, dtype=float)
    a = np.gradient(v, np.asarray(t_s, dtype=float))
    moving = v > 0
    road = vehicle.mass_kg * vehicle.g_m_s2 * vehicle.crr \
        + 0.5 * vehicle.air_density_kg_m3 * vehicle.cda_m2 * v * v
    force = vehicle.mass_kg * a + np.where(moving, road, 0.0)
    wheel_w = force * v
    return np.where(wheel_w > 0, wheel_w / vehicle.drive_efficiency,
                    wheel_w * vehicle.regen_fraction)


def scale_to_peak_c(power_w: np.ndarray, capacity_ah: float, peak_c: float) -> np.ndarray:
    """Cell current (A, positive = discharge) proportional to the battery power, scaled so the
    largest discharge current is ``peak_c`` x ``capacity_ah`` (the vehicle's battery is far
    larger than one cell: only the shape of the power trace is kept; constant-voltage
    approximation, I proportional to P)."""
    p = np.asarray(power_w, dtype=float)
    if capacity_ah <= 0 or peak_c <= 0:
        raise ValueError("capacity_ah and peak_c must be positive")
    top = float(p.max()) if p.size else 0.0
    if top <= 0:
        raise ValueError("the power trace never discharges: nothing to scale")
    return p * (peak_c * capacity_ah / top)


def udds_cell_current(speed_file: str | Path, capacity_ah: float, peak_c: float,
                      vehicle: Vehicle = Vehicle()) -> tuple[np.ndarray, np.ndarray]:
    """(time_s, current A positive = discharge) of one UDDS cycle for one cell."""
    t_s, v = read_speed_trace(speed_file)
    return t_s, scale_to_peak_c(battery_power_w(t_s, v, vehicle), capacity_ah, peak_c)


def repeat_profile(t_s: np.ndarray, current_a: np.ndarray, *, capacity_ah: float,
                   soc0: float, end_soc: float, max_hours: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The cycle repeated back to back (sample spacing kept; one cycle's last sample joins the
    next one's first) and cut at the first sample where the charge-counted SOC
    (soc0 - integral of the discharge-positive current / capacity) reaches ``end_soc``, or at
    ``max_hours``, whichever comes first. Time starts at 0."""
    t = np.asarray(t_s, dtype=float) - float(t_s[0])
    i = np.asarray(current_a, dtype=float)
    period = t[-1] + (t[-1] - t[-2])  # the trace's last interval joins it to the next cycle
    dq_ah = np.trapezoid(i, t) / 3600.0
    if dq_ah <= 0 and max_hours is None:
        raise ValueError("the cycle charges the cell on balance: give max_hours")
    limit_s = math.inf if max_hours is None else max_hours * 3600.0
    n_charge = math.ceil((soc0 - end_soc) * capacity_ah / dq_ah) + 1 if dq_ah > 0 else math.inf
    n_time = math.ceil(limit_s / period) + 1 if math.isfinite(limit_s) else math.inf
    n = int(max(1, min(n_charge, n_time)))
    tt = np.concatenate([t + k * period for k in range(n)])
    ii = np.tile(i, n)
    soc = soc0 - np.concatenate([[0.0], np.cumsum(0.5 * (ii[1:] + ii[:-1]) * np.diff(tt))]
                                ) / 3600.0 / capacity_ah
    stop = len(tt)
    low = np.nonzero(soc <= end_soc)[0]
    if low.size:
        stop = int(low[0]) + 1  # the first sample at or below end_soc is the last one
    late = np.nonzero(tt > limit_s + 1e-9)[0]
    if late.size:
        stop = min(stop, int(late[0]))
    stop = max(stop, 2)
    return tt[:stop], ii[:stop]


@dataclass(frozen=True)
class Noise:
    """What a BMS measures, relative to the truth. Currents in units of C (x the set's nominal
    capacity in A), so one model fits cells of any size; every value an assumption, sources in
    docs/truth.md. Current errors act on the file's sign (positive = discharge):
    measured = (1 + current_gain) * true + current_offset + gaussian."""

    voltage_sigma_v: float = 1.0e-3
    voltage_offset_v: float = 0.5e-3
    current_sigma_c: float = 0.002
    current_offset_c: float = 0.001
    current_gain: float = 0.005
    temperature_sigma_k: float = 0.5
    temperature_offset_k: float = 0.0
    #: standard deviation of each sample's time stamp about its 1 s grid point (clipped to
    #: +-0.45 s so the order never changes); the values are the truth's at the jittered time
    jitter_s: float = 0.0
    #: share of the samples dropped at random (never the first or last): gaps in a log
    drop_fraction: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class Measured:
    time_s: np.ndarray
    current_a: np.ndarray  # positive = discharge
    voltage_v: np.ndarray
    temperature_c: np.ndarray


def measure(time_s: np.ndarray, current_a: np.ndarray, voltage_v: np.ndarray,
            temperature_c: np.ndarray, *, nominal_capacity_ah: float, noise: Noise,
            rng: np.random.Generator) -> Measured:
    """The noisy samples a BMS would log of the true (noise-free, discharge-positive) series."""
    t = np.asarray(time_s, dtype=float)
    n = len(t)
    if noise.jitter_s > 0:
        tm = t + np.clip(rng.normal(0.0, noise.jitter_s, n), -0.45, 0.45)
        tm[0], tm[-1] = t[0], t[-1]
        tm = np.maximum.accumulate(tm)
        i_true = np.interp(tm, t, current_a)
        v_true = np.interp(tm, t, voltage_v)
        temp_true = np.interp(tm, t, temperature_c)
    else:
        tm, i_true, v_true, temp_true = t, np.asarray(current_a, float), \
            np.asarray(voltage_v, float), np.asarray(temperature_c, float)
    amp = nominal_capacity_ah
    i_m = (1.0 + noise.current_gain) * i_true + noise.current_offset_c * amp \
        + rng.normal(0.0, noise.current_sigma_c * amp, n)
    v_m = v_true + noise.voltage_offset_v + rng.normal(0.0, noise.voltage_sigma_v, n)
    temp_m = temp_true + noise.temperature_offset_k + rng.normal(0.0, noise.temperature_sigma_k, n)
    keep = np.ones(n, dtype=bool)
    if noise.drop_fraction > 0 and n > 2:
        keep[1:-1] = rng.random(n - 2) >= noise.drop_fraction
    return Measured(tm[keep], i_m[keep], v_m[keep], temp_m[keep])


def _write(path: Path, header: tuple[str, ...], cols: list[np.ndarray], fmts: list[str]) -> int:
    data = np.column_stack([np.asarray(c, dtype=float) for c in cols])
    with Path(path).open("w", encoding="utf-8", newline="\n") as fh:
        fh.write(",".join(header) + "\n")
        np.savetxt(fh, data, fmt=fmts, delimiter=",")
    return len(data)


def write_cycler_csv(path: str | Path, time_s, current_a, voltage_v, temperature_c) -> int:
    """A cycler file (current positive = discharge); returns the row count. No comment lines:
    the sign is said in the directory's README.md and manifest.json."""
    return _write(Path(path), CYCLER_COLUMNS, [time_s, current_a, voltage_v, temperature_c],
                  ["%.3f", "%.6f", "%.6f", "%.3f"])


def write_truth_csv(path: str | Path, time_s, soc, voltage_v, current_a_charge_positive,
                    temperature_c) -> int:
    """A truth file (noise-free; current positive = charge); returns the row count."""
    return _write(Path(path), TRUTH_COLUMNS,
                  [time_s, soc, voltage_v, current_a_charge_positive, temperature_c],
                  ["%.3f", "%.7f", "%.6f", "%.6f", "%.4f"])


def read_csv(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(header, data) of a file written here."""
    with Path(path).open(encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split(",")
        data = np.loadtxt(fh, delimiter=",", ndmin=2)
    return header, data


def manifest_problems(manifest: dict) -> list[str]:
    """What a manifest.json lacks (empty when it has every documented key)."""
    out = [f"missing key {k!r}" for k in MANIFEST_KEYS if k not in manifest]
    for n, entry in enumerate(manifest.get("files", [])):
        out += [f"files[{n}]: missing key {k!r}" for k in MANIFEST_FILE_KEYS if k not in entry]
        if entry.get("kind") not in FILE_KINDS:
            out.append(f"files[{n}]: kind {entry.get('kind')!r} not one of {FILE_KINDS}")
    for name, info in manifest.get("sets", {}).items():
        if not info.get("capacity_ah_c20", 0) > 0:
            out.append(f"sets[{name!r}]: no positive capacity_ah_c20")
    return out
