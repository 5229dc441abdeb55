"""The PyBaMM truth generator (tools/pybamm_truth.py, docs/truth.md): its pure-Python parts
(bms.app.drive_cycles) always; one --quick smoke run when PyBaMM is installed (the optional
'truth' extra, not part of make test's install)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bms.app import drive_cycles as dc

ROOT = Path(__file__).resolve().parent.parent
SPEED_FILE = ROOT.parent / "shared" / "data" / "epa-udds-speed.txt"


def _synthetic_trace() -> tuple[np.ndarray, np.ndarray]:
    """Accelerate 0 -> 15 m/s over 30 s, cruise 30 s, brake to 0 over 15 s, stand 10 s."""
    t = np.arange(0.0, 86.0)
    v = np.interp(t, [0, 30, 60, 75, 85], [0, 15, 15, 0, 0])
    return t, v


def test_vehicle_power_sign_regen_charges():
    t, v = _synthetic_trace()
    p = dc.battery_power_w(t, v)
    assert np.all(p[2:29] > 0)  # accelerating: the battery delivers
    assert np.all(p[32:59] > 0)  # cruising against drag and rolling resistance
    assert np.all(p[61:75] < 0)  # braking: regeneration
    assert np.all(p[76:] == 0)  # standing still
    i = dc.scale_to_peak_c(p, capacity_ah=5.0, peak_c=2.0)
    assert np.all(i[61:75] < 0)  # discharge-positive file sign: regen is a charge current
    # less energy comes back than the car took: drivetrain losses and partial regen
    assert -p[p < 0].sum() < 0.6 * p[p > 0].sum()


def test_vehicle_regen_fraction_and_efficiency():
    t, v = _synthetic_trace()
    lossless = dc.Vehicle(drive_efficiency=1.0, regen_fraction=1.0)
    p1 = dc.battery_power_w(t, v, lossless)
    p = dc.battery_power_w(t, v)
    np.testing.assert_allclose(p[p1 > 0], p1[p1 > 0] / 0.90)
    np.testing.assert_allclose(p[p1 < 0], p1[p1 < 0] * 0.60)


@pytest.mark.parametrize("peak_c,cap", [(1.0, 5.0), (2.5, 0.68), (3.0, 2.3)])
def test_scaling_hits_peak_c_rate(peak_c, cap):
    t, i = dc.udds_cell_current(SPEED_FILE, cap, peak_c)
    assert i.max() == pytest.approx(peak_c * cap, rel=1e-12)
    assert i.min() < 0  # the UDDS brakes: regen
    assert -i.min() < i.max()
    assert np.trapezoid(i, t) > 0  # a net discharge


def test_scaling_refuses_no_discharge():
    with pytest.raises(ValueError):
        dc.scale_to_peak_c(np.array([0.0, -1.0]), 5.0, 2.0)


def test_repeat_profile_stops_at_end_soc_or_hours():
    t, i = dc.udds_cell_current(SPEED_FILE, 5.0, 2.0)
    tt, ii = dc.repeat_profile(t, i, capacity_ah=5.0, soc0=0.9, end_soc=0.15)
    assert np.all(np.diff(tt) > 0) and tt[0] == 0
    soc = 0.9 - np.trapezoid(ii, tt) / 3600 / 5.0
    assert 0.15 - 0.002 <= soc <= 0.15
    th, _ = dc.repeat_profile(t, i, capacity_ah=5.0, soc0=0.9, end_soc=0.15, max_hours=0.5)
    assert th[-1] <= 1800 and th[-1] > 1790


def _truth_series(n: int = 20000):
    t = np.arange(float(n))
    i = 5.0 * np.sin(t / 50.0)  # discharge-positive
    v = 3.7 + 0.01 * np.sin(t / 300.0)
    temp = 25.0 + 0.1 * np.cos(t / 900.0)
    return t, i, v, temp


def test_noise_statistics_as_documented():
    noise = dc.Noise()
    t, i, v, temp = _truth_series()
    m = dc.measure(t, i, v, temp, nominal_capacity_ah=5.0, noise=noise,
                   rng=np.random.default_rng(1))
    dv = m.voltage_v - v
    assert dv.mean() == pytest.approx(noise.voltage_offset_v, abs=5e-5)
    assert dv.std() == pytest.approx(noise.voltage_sigma_v, rel=0.05)
    di = m.current_a - (1 + noise.current_gain) * i
    assert di.mean() == pytest.approx(noise.current_offset_c * 5.0, abs=5e-4)
    assert di.std() == pytest.approx(noise.current_sigma_c * 5.0, rel=0.05)
    gain = np.polyfit(i, m.current_a, 1)[0]
    assert gain == pytest.approx(1 + noise.current_gain, abs=5e-4)
    dt = m.temperature_c - temp
    assert dt.std() == pytest.approx(noise.temperature_sigma_k, rel=0.05)
    np.testing.assert_array_equal(m.time_s, t)  # no jitter, no gaps by default


def test_noise_seeded_jitter_and_gaps():
    t, i, v, temp = _truth_series(5000)
    noise = dc.Noise(jitter_s=0.2, drop_fraction=0.05)
    a = dc.measure(t, i, v, temp, nominal_capacity_ah=5.0, noise=noise,
                   rng=np.random.default_rng([7, 1]))
    b = dc.measure(t, i, v, temp, nominal_capacity_ah=5.0, noise=noise,
                   rng=np.random.default_rng([7, 1]))
    np.testing.assert_array_equal(a.voltage_v, b.voltage_v)
    assert np.all(np.diff(a.time_s) >= 0)
    assert a.time_s[0] == 0 and a.time_s[-1] == t[-1]
    assert 0.03 < 1 - len(a.time_s) / len(t) < 0.07
    assert np.abs(a.time_s - np.round(a.time_s)).max() <= 0.45 + 1e-12
    assert np.abs(a.time_s - np.round(a.time_s)).std() > 0.1


def test_csv_columns_round_trip(tmp_path):
    t, i, v, temp = _truth_series(100)
    n = dc.write_cycler_csv(tmp_path / "c.csv", t, i, v, temp)
    header, data = dc.read_csv(tmp_path / "c.csv")
    assert header == list(dc.CYCLER_COLUMNS) == ["Time [s]", "Current [A]", "Voltage [V]",
                                                 "Temperature [degC]"]
    assert n == len(data) == 100
    np.testing.assert_allclose(data[:, 2], v, atol=1e-6)
    dc.write_truth_csv(tmp_path / "t.csv", t, np.linspace(1, 0.9, 100), v, -i, temp)
    header, data = dc.read_csv(tmp_path / "t.csv")
    assert header == ["time_s", "soc", "voltage_v", "current_a", "temperature_c"]
    np.testing.assert_allclose(data[:, 3], -i, atol=1e-6)


def test_cycler_file_reads_as_a_recording(tmp_path):
    from bms.app.recording import read_recording

    t, i, v, temp = _truth_series(600)
    dc.write_cycler_csv(tmp_path / "c.csv", t, i, v, temp)
    rec = read_recording(tmp_path / "c.csv", current_sign="discharge-positive")
    assert rec.kind == "cycler"
    np.testing.assert_allclose(rec.current_a, -i, atol=1e-6)  # the BMS's charge-positive


def test_manifest_schema():
    good = {k: None for k in dc.MANIFEST_KEYS}
    good["sets"] = {"Chen2020": {"capacity_ah_c20": 5.14}}
    good["files"] = [{k: None for k in dc.MANIFEST_FILE_KEYS} | {"kind": "drive"}]
    assert dc.manifest_problems(good) == []
    bad = dict(good)
    del bad["seed"]
    bad["files"] = [{"file": "x.csv", "kind": "other"}]
    problems = dc.manifest_problems(bad)
    assert "missing key 'seed'" in problems
    assert any("kind 'other'" in p for p in problems)
    assert any("'capacity_ah'" in p for p in problems)


def test_drive_cycles_does_not_import_pybamm():
    code = ("import sys; import bms.app.drive_cycles; "
            "sys.exit(1 if 'pybamm' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_quick_generation_smoke(tmp_path):
    pytest.importorskip("pybamm")
    out = tmp_path / "truth"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "pybamm_truth.py"), "--quick",
                           "-o", str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYBAMM_DISABLE_TELEMETRY": "true"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert dc.manifest_problems(manifest) == []
    assert (out / "README.md").exists()
    for e in manifest["files"]:
        assert (out / e["file"]).stat().st_size == e["bytes"]
    drive = next(e for e in manifest["files"] if e["kind"] == "drive")
    assert drive["truth"].endswith("_truth.csv")
    header, meas = dc.read_csv(out / drive["file"])
    assert header == list(dc.CYCLER_COLUMNS)
    _, truth = dc.read_csv(out / drive["truth"])
    # truth SOC starts at the asked SOC and falls under the net discharge
    assert truth[0, 1] == pytest.approx(drive["initial_soc"], abs=1e-9)
    assert truth[-1, 1] < truth[0, 1]
    assert np.trapezoid(-truth[:, 3], truth[:, 0]) > 0  # net discharge (truth: charge +)
    discharging = (truth[1:, 3] < -1e-6) & (truth[:-1, 3] < -1e-6)
    assert np.all(np.diff(truth[:, 1])[discharging] <= 1e-12)
    # the noisy voltage minus the truth has the stated sigma (and offset)
    noise = manifest["noise"]
    dv = meas[:, 2] - np.interp(meas[:, 0], truth[:, 0], truth[:, 2])
    assert dv.std() == pytest.approx(noise["voltage_sigma_v"], rel=0.2)
    assert dv.mean() == pytest.approx(noise["voltage_offset_v"], abs=3e-4)
    # the cycler file's current is discharge-positive: the truth's with the sign flipped
    di = meas[:, 1] + np.interp(meas[:, 0], truth[:, 0], truth[:, 3])
    cap = manifest["sets"][drive["set"]]["nominal_capacity_ah"]
    assert np.abs(di).max() < 0.02 * np.abs(truth[:, 3]).max() + 6 * noise["current_sigma_c"] * cap
    ocv = next(e for e in manifest["files"] if e["kind"] == "ocv")
    assert 0.9 < ocv["capacity_ah"] / manifest["sets"][ocv["set"]]["nominal_capacity_ah"] < 1.2
