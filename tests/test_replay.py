"""``bms replay``: recorded data through the same core the controller runs.

The strongest check is a round trip: a real controller run (emulated board on a pty, real C
core) logs its inputs and its estimates in ticks.csv; replaying those inputs must give the
same estimates, to the log's resolution. Then a cycler file (one cell, 1 s samples, PyBaMM's
discharge-positive sign) made from the emulator's plant, scored against the plant's truth; the
current sign found from the data; and the one-line errors of a bad recording.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bms.app.emulators import start_emulators
from bms.app.recording import RecordingError, read_recording
from bms.app.replay import ReplayResult, read_truth_soc, replay, score
from bms.controller import Controller
from bms.runlog import load_ticks
from boards.config import load_board, load_pack
from hil.emulator.plant import CurrentProfile, Plant

PACK = load_pack("ssb-23")


def _controller_run(pack_name: str, seconds: float, log: Path) -> None:
    pack = load_pack(pack_name)
    log.mkdir()
    emus = start_emulators(pack, clock="sim", seed=4, scenario="udds", truth_dir=log)
    try:
        c = Controller(pack, [e.path for e in emus], clock="sim", log_dir=log)
        c.open()
        c.request_close()
        c.run(seconds)
        c.close()
    finally:
        for e in emus:
            e.stop()


@pytest.mark.parametrize(("pack_name", "seconds"), [("ssb-23", 300.0), ("ssb-4x23", 60.0)])
def test_replaying_a_run_log_reproduces_the_controllers_estimates(tmp_path, pack_name,
                                                                  seconds) -> None:
    log = tmp_path / "run"
    _controller_run(pack_name, seconds, log)
    pack = load_pack(pack_name)
    rec = read_recording(log / "ticks.csv")
    assert rec.n_cells == pack.n_cells and rec.pressure_kpa is not None
    res = replay(pack, rec)  # from the first row, as the controller starts (soc_start)
    logged = load_ticks(log)
    w = 3 if pack.n_cells > 99 else 2
    for i in range(pack.n_cells):
        cell = f"cell{i + 1:0{w}d}"
        # ticks.csv holds SOC and sigma to 1e-6 and leak to 1e-4 A (bms.runlog)
        np.testing.assert_allclose(res.soc[:, i], logged[f"{cell}_soc"], atol=5e-6)
        np.testing.assert_allclose(res.soc_sigma[:, i], logged[f"{cell}_soc_sigma"],
                                   atol=5e-6)
        np.testing.assert_allclose(res.leak_a[:, i], logged[f"{cell}_leak_a"], atol=2e-4)


def _cycler_file(tmp_path: Path, seconds: float = 3600.0) -> tuple[Path, Path]:
    """One cell of the emulator's plant under 1C pulses and rests, sampled at 1 s, written in
    the cycler convention (current positive on discharge, as PyBaMM's), with its truth."""
    plant = Plant(PACK, 0, load_board("emu-23"), seed=2, initial_soc=0.9)
    plant.set_outputs(contactor_pos=True, contactor_neg=True, charge_limit_a=10.0,
                      discharge_limit_a=15.0)
    t = np.arange(0.0, seconds + 1.0, 1.0)
    period = np.mod(t, 120.0)
    profile = np.where(period < 30, -5.0, np.where((period >= 60) & (period < 70), 3.75, 0.0))
    plant.set_load(CurrentProfile(t, profile))
    rows, truth = [], []
    for _ in range(len(t)):
        plant.step(1.0)
        tr = plant.truth()
        rows.append((tr.t_s, -tr.current_a, tr.cell_voltage_v[0], tr.temperature_c[0]))
        truth.append((tr.t_s, tr.soc[0]))
    data, ref = tmp_path / "cell.csv", tmp_path / "cell_truth.csv"
    with data.open("w") as fh:
        fh.write("Time [s],Current [A],Voltage [V],Temperature [degC]\n")
        np.savetxt(fh, np.array(rows), delimiter=",", fmt="%.6f")
    with ref.open("w") as fh:
        fh.write("time_s,soc\n")
        np.savetxt(fh, np.array(truth), delimiter=",", fmt="%.8f")
    return data, ref


def test_cycler_file_sign_found_from_the_data_and_scored_against_truth(tmp_path) -> None:
    data, ref = _cycler_file(tmp_path)
    rec = read_recording(data)
    assert rec.kind == "cycler" and rec.n_cells == 1
    assert "discharge-positive" in rec.sign_note
    assert rec.current_a.min() == pytest.approx(-5.0, abs=0.1)  # charge-positive inside
    res = replay(PACK, rec)  # from the OCV of the first (rested) sample
    sc = score(res, *read_truth_soc(ref, 1), settle_s=600.0)
    # The plant is richer than the estimator (second RC branch, hysteresis, its own
    # parameter spread): a few percent at most, and the bound honest most of the time.
    assert sc.rmse < 0.03 and sc.coverage > 0.8, sc
    # The model's voltage before each update, and the residual: small, but not zero (the
    # plant is not the estimator's model).
    resid = res.residual_v[:, 0]
    assert np.isfinite(resid).all()
    np.testing.assert_allclose(resid, rec.cell_voltage_v[:, 0] - res.voltage_pred_v[:, 0])
    rms = float(np.sqrt(np.mean(resid ** 2)))
    assert 1e-4 < rms < 0.02, rms
    # An explicit sign that contradicts the data is refused, naming the file.
    with pytest.raises(RecordingError, match="the sign is inverted"):
        read_recording(data, current_sign="charge-positive")
    assert "as given" in read_recording(data, current_sign="discharge-positive").sign_note


def test_score_gives_the_error_over_sigma_beside_the_coverage() -> None:
    """Coverage alone cannot tell a bound too wide from an error without a tail: an error
    that swings smoothly to +-sqrt(2) sigma is right in the RMS sense (error / sigma RMS 1)
    yet inside 3 sigma all the time; the same bound over a swing to 4 sigma passes 3 sigma
    in part of the samples."""
    t = np.arange(0.0, 3600.0)
    sigma = np.full((t.size, 1), 0.002)
    truth = np.full((t.size, 1), 0.5)

    def scored(amplitude: float):
        soc = truth + amplitude * 0.002 * np.sin(2 * np.pi * t / 600.0)[:, None]
        nan = np.full((t.size, 1), np.nan)
        res = ReplayResult(t, np.zeros(t.size), soc, sigma, nan, nan, nan, nan, nan,
                           np.zeros(t.size), np.zeros(t.size))
        return score(res, t, truth, settle_s=0.0)

    smooth = scored(np.sqrt(2.0))
    assert smooth.coverage == 1.0
    assert smooth.z_rms == pytest.approx(1.0, rel=1e-3)
    assert smooth.z_max == pytest.approx(np.sqrt(2.0), rel=1e-3)
    wide = scored(4.0)
    assert wide.z_rms == pytest.approx(4.0 / np.sqrt(2.0), rel=1e-3)
    # |sin| <= 3/4 in 2/pi asin(3/4) = 54 % of the time
    assert wide.coverage == pytest.approx(2 / np.pi * np.arcsin(0.75), abs=0.01)


def test_bad_recordings_are_one_line_errors(tmp_path) -> None:
    back = tmp_path / "back.csv"
    back.write_text("Time [s],Current [A],Voltage [V],Temperature [degC]\n"
                    "0,1,3.7,25\n1,1,3.7,25\n0.5,1,3.7,25\n")
    with pytest.raises(RecordingError, match=r"time does not increase at data row 3"):
        read_recording(back, current_sign="charge-positive")
    other = tmp_path / "other.csv"
    other.write_text("when,amps\n0,1\n")
    with pytest.raises(RecordingError, match="no time column"):
        read_recording(other)
    no_temp = tmp_path / "no_temp.csv"
    no_temp.write_text("Time [s],Current [A],Voltage [V]\n0,1,3.7\n1,1,3.7\n")
    with pytest.raises(RecordingError, match="--temperature-c"):
        read_recording(no_temp, current_sign="charge-positive")
    rec = read_recording(no_temp, current_sign="charge-positive", temperature_c=10.0)
    assert rec.temperature_c.tolist() == [[10.0], [10.0]]


def test_cli_replay_writes_the_csv_and_exits_3_on_a_bad_file(tmp_path) -> None:
    data, ref = _cycler_file(tmp_path, seconds=900.0)
    out = tmp_path / "out.csv"
    run = subprocess.run([sys.executable, "-m", "bms", "replay", "--data", str(data),
                          "--truth", str(ref), "--settle-s", "300", "-o", str(out),
                          "--json", str(tmp_path / "score.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "RMSE" in run.stdout and "M cell-samples/s" in run.stdout
    assert "voltage residual (measured - model): RMS" in run.stdout
    header = out.read_text().splitlines()[0].split(",")
    assert header[:4] == ["time_s", "current_a", "soc", "soc_3sigma"]
    assert {"max_abs_residual_v", "cell01_voltage_pred_v", "cell01_residual_v"} <= set(header)
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    assert table.shape[0] == 901 and np.all((table[:, 2] > 0) & (table[:, 2] < 1))
    bad = tmp_path / "bad.csv"
    bad.write_text("nothing useful\n")
    run = subprocess.run([sys.executable, "-m", "bms", "replay", "--data", str(bad),
                          "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 3  # a data file read but unusable (bms/app/errors.py)
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr


def test_bench_replay_speed(benchmark, tmp_path) -> None:
    """Cell-samples per second of the replay loop on a 23-cell recording (issue 11 target:
    >= 1 million; reported, not asserted: wall time is not a test)."""
    n = 5000
    rng = np.random.default_rng(0)
    rec = read_recording(_stack_file(tmp_path, n, rng))
    res = benchmark.pedantic(replay, args=(PACK, rec, 0.5), rounds=3, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable (make test)
        benchmark.extra_info["cell_samples_per_s"] = round(
            res.soc.size / benchmark.stats.stats.median)
    assert np.all(np.isfinite(res.soc))


def _stack_file(tmp_path: Path, n: int, rng: np.random.Generator) -> Path:
    cols = ["time_s", "current_a"] + [f"cell{i + 1:02d}_voltage_v" for i in range(23)] + [
        f"t{i + 1:02d}_c" for i in range(6)]
    t = np.arange(n) * 0.1
    cur = np.where(np.mod(t, 20.0) < 10.0, -5.0, 2.0)
    v = 3.7 + 0.01 * rng.standard_normal((n, 23)) + 0.02 * cur[:, None]
    temps = np.full((n, 6), 25.0)
    path = tmp_path / "stack.csv"
    with path.open("w") as fh:
        fh.write(",".join(cols) + "\n")
        np.savetxt(fh, np.column_stack([t, cur, v, temps]), delimiter=",", fmt="%.6f")
    return path
