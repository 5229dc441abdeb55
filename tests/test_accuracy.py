"""``bms accuracy``: the benchmark's plumbing on a small truth folder made from the emulator's
plant (a richer model than the estimator's: second RC branch, hysteresis, its own spread), in
the truth generator's layout (manifest.json, cycler files positive on discharge, *_truth.csv
positive on charge). The PyBaMM run itself is a bench command (docs/estimation.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bms.app.accuracy import AccuracyError, discover, run, starts
from boards.config import load_board, load_pack
from hil.emulator.plant import CurrentProfile, Plant

PACK = load_pack("ssb-23")


def _drive(path: Path, initial_soc: float, seconds: float, seed: int) -> None:
    plant = Plant(PACK, 0, load_board("emu-23"), seed=seed, initial_soc=initial_soc)
    plant.set_outputs(contactor_pos=True, contactor_neg=True, charge_limit_a=10.0,
                      discharge_limit_a=15.0)
    t = np.arange(0.0, seconds + 1.0, 1.0)
    period = np.mod(t, 90.0)
    plant.set_load(CurrentProfile(t, np.where(period < 40, -4.0, np.where(period < 55, 2.0,
                                                                            0.0))))
    rows, truth = [], []
    for _ in range(len(t)):
        plant.step(1.0)
        tr = plant.truth()
        rows.append((tr.t_s, -tr.current_a, tr.cell_voltage_v[0], tr.temperature_c[0]))
        truth.append((tr.t_s, tr.soc[0], tr.cell_voltage_v[0], tr.current_a, tr.temperature_c[0]))
    with path.open("w") as fh:
        fh.write("Time [s],Current [A],Voltage [V],Temperature [degC]\n")
        np.savetxt(fh, np.array(rows), delimiter=",", fmt="%.6f")
    with path.with_name(path.stem + "_truth.csv").open("w") as fh:
        fh.write("time_s,soc,voltage_v,current_a,temperature_c\n")
        np.savetxt(fh, np.array(truth), delimiter=",", fmt="%.8f")


@pytest.fixture(scope="module")
def truth_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("truth")
    files = [{"file": "ocv_Plant.csv", "kind": "ocv", "set": "Plant", "temperature_c": 25.0,
              "initial_soc": 1.0},
             {"file": "hppc_Plant_25C.csv", "kind": "hppc", "set": "Plant",
              "temperature_c": 25.0, "initial_soc": 1.0}]
    for f in files:  # not read when a --pack is given
        (d / f["file"]).write_text("Time [s],Current [A],Voltage [V],Temperature [degC]\n")
    for soc0, seed in ((0.9, 2), (0.6, 3)):
        name = f"drive_Plant_25C_soc{round(100 * soc0)}.csv"
        _drive(d / name, soc0, 1500.0, seed)
        files.append({"file": name, "kind": "drive", "set": "Plant", "temperature_c": 25.0,
                      "initial_soc": soc0})
    (d / "manifest.json").write_text(json.dumps({"files": files}))
    return d


def test_starts_keep_the_initial_soc_inside_0_1() -> None:
    assert starts(0.9, (-0.2, 0.2)) == [None, 0.7]
    assert starts(0.6, (-0.2, 0.2)) == [None, 0.4, 0.8]


def test_discover_lists_the_sets_and_refuses_a_folder_without_manifest(truth_dir,
                                                                       tmp_path) -> None:
    (ts,) = discover(truth_dir)
    assert ts.name == "Plant" and len(ts.drives) == 2 and len(ts.hppc) == 1
    assert all(c.truth.exists() for c in ts.drives)
    with pytest.raises(AccuracyError, match="manifest.json: not found"):
        discover(tmp_path)
    (tmp_path / "manifest.json").write_text('{"files": [{"file": "drive_x.csv", '
                                            '"kind": "drive", "set": "X", '
                                            '"temperature_c": 25, "initial_soc": 0.9}]}')
    with pytest.raises(AccuracyError, match="set X has no OCV test or no HPPC file"):
        discover(tmp_path)


def test_scores_every_start_against_the_truth(truth_dir, tmp_path) -> None:
    results = run(truth_dir, tmp_path, pack="ssb-23", settle_s=600.0, log=lambda _: None)
    assert [(r.file, r.start) for r in results] == [
        ("drive_Plant_25C_soc90.csv", "OCV"), ("drive_Plant_25C_soc90.csv", "-20 %"),
        ("drive_Plant_25C_soc60.csv", "OCV"), ("drive_Plant_25C_soc60.csv", "-20 %"),
        ("drive_Plant_25C_soc60.csv", "+20 %")]
    for r in results:
        # The plant is not the estimator's model: a few percent at most after 10 minutes,
        # the bound mostly honest, a model residual of a few mV.
        assert r.rmse < 0.03 and r.coverage > 0.7 and 0.1 < r.residual_rms_mv < 30, r
        assert r.samples == 901


def test_cli_writes_the_tables_and_check_reflects_the_targets(truth_dir, tmp_path) -> None:
    out = tmp_path / "acc"
    cmd = [sys.executable, "-m", "bms", "accuracy", "--truth-dir", str(truth_dir), "--out",
           str(out), "--pack", "ssb-23", "--soc-errors", "-0.2"]
    run_ = subprocess.run(cmd + ["--check"], capture_output=True, text=True, timeout=120)
    doc = json.loads((out / "accuracy.json").read_text())
    assert len(doc["results"]) == 4
    missed = any(r["misses"] for r in doc["results"])
    assert run_.returncode == (1 if missed else 0), run_.stderr
    assert "replays meet every target" in run_.stdout
    table = (out / "accuracy.md").read_text().splitlines()
    assert len(table) == 2 + 4 and table[2].startswith("| Plant | 25 | drive_Plant_25C_soc90")
    bad = subprocess.run(cmd[:-2] + ["--sets", "Nope"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "set Nope is not in" in bad.stderr and "Traceback" not in bad.stderr
