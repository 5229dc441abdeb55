"""``bms commission`` (issue 14 item 6): the fit of a stack's fixture baseline from a run log,
the load-cell baseline with offsets, and, end to end through real processes and emulated
boards, that the next ``bms run --state`` uses the commissioned baseline and that commissioning
again replaces it while the estimator state stays."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bms.app.commission import commission
from bms.core import make_params
from bms.protections import LoadCellBaseline
from bms.reference import ReferenceCore
from bms.runlog import load_events, load_ticks
from bms.statefile import StackCommissioning, StateFileError, _digest, encode, write
from bms.statefile import load as load_state
from boards.config import load_board, load_pack
from hil.emulator.plant import Plant

ROOT = Path(__file__).resolve().parents[1]
HEADER = ("time_s,pressure_lc01_kpa,pressure_lc02_kpa,pressure_lc03_kpa,pressure_lc04_kpa,"
          "pressure_expected_kpa,pressure_residual_kpa")


def _write_run(folder: Path, mean_kpa: np.ndarray, shares: list[float],
               offsets: list[float], expected_kpa: np.ndarray, resid_kpa: np.ndarray) -> Path:
    """A run log of ssb-23 with the columns bms commission reads (10 Hz rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [HEADER]
    for k, (p, e, r) in enumerate(zip(mean_kpa, expected_kpa, resid_kpa, strict=True)):
        cells = [s * p + b for s, b in zip(shares, offsets, strict=True)]
        rows.append(",".join(f"{x:.4f}" for x in (0.1 * k, *cells, e, r)))
    (folder / "ticks.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_fit_recovers_gains_offsets_preload_and_stiffness(tmp_path: Path) -> None:
    """Over a pressure swing (a charge): each load cell's share and offset, and the stack's
    preload and stiffness from the residual, as they were put in."""
    pack = load_pack("ssb-23")
    n = 3000
    mean = np.linspace(1100.0, 1500.0, n)
    shares, offsets = [1.03, 0.97, 1.01, 0.99], [2.0, -4.0, 5.0, -3.0]
    expected = mean - 20.0
    x = expected - pack.fixture.preload_kpa
    resid = 12.0 + 0.05 * x  # the stack: preload +12 kPa, stiffness +5 %
    fit = commission(pack, _write_run(tmp_path / "run", mean, shares, offsets, expected,
                                      resid))[0]
    c = fit.record
    assert np.allclose(c.load_cell_shares, shares, atol=1e-6)
    assert np.allclose(c.load_cell_offsets_kpa, offsets, atol=1e-3)
    assert c.preload_kpa == pytest.approx(pack.fixture.preload_kpa + 12.0, abs=1e-3)
    assert c.stiffness_kpa_per_um == pytest.approx(pack.fixture.stiffness_kpa_per_um * 1.05,
                                                   rel=1e-6)
    assert fit.fit_kind == "gain and offset" and fit.model_kind == "preload and stiffness"
    assert fit.imbalance_after_kpa < 0.01 < 30.0 < fit.imbalance_before_kpa
    assert abs(fit.resid_after[0]) < 1e-3 and fit.resid_after[2] < 1e-3


def test_one_pressure_gives_shares_and_preload_only(tmp_path: Path) -> None:
    """A pack at rest: gain and offset cannot be told apart, nor preload and stiffness."""
    pack = load_pack("ssb-23")
    mean = np.full(50, 1240.0)
    fit = commission(pack, _write_run(tmp_path / "run", mean, [1.03, 0.97, 1.01, 0.99],
                                      [0.0] * 4, mean + 5.0, np.full(50, -5.0)))[0]
    c = fit.record
    assert c.load_cell_offsets_kpa is None and np.allclose(c.load_cell_shares,
                                                           [1.03, 0.97, 1.01, 0.99])
    assert c.preload_kpa == pytest.approx(995.0)
    assert c.stiffness_kpa_per_um == pack.fixture.stiffness_kpa_per_um


def test_baseline_with_offsets_is_flat_over_the_pressure_swing() -> None:
    """p_j = share_j P + offset_j: with the offsets the corrected imbalance stays ~0 from 1100
    to 1600 kPa; with the shares alone (taken at 1100 kPa) it grows with the pressure."""
    shares, offsets = np.array([1.03, 0.97, 1.01, 0.99]), np.array([8.0, -8.0, 6.0, -6.0])
    with_off = LoadCellBaseline(0, 4, 1.0, 150.0)
    with_off.restore(shares.tolist(), offsets.tolist())
    alone = LoadCellBaseline(0, 4, 1.0, 150.0)
    alone.restore(((shares * 1100.0 + offsets) / 1100.0).tolist())
    for p in (1100.0, 1600.0):
        reading = shares * p + offsets
        assert with_off.imbalance_kpa(0.0, reading)[0] < 1e-9
    assert alone.imbalance_kpa(0.0, shares * 1600.0 + offsets)[0] > 4.0


def _bms(*args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "bms", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    return res


def _run(state: Path, log: Path, duration: str = "3") -> list[dict]:
    _bms("run", "--pack", "ssb-23", "--state", str(state), "--duration", duration, "--log",
         str(log), "--quiet", "--no-monitor")
    return load_events(log)


def _imbalance_raised(events: list[dict]) -> bool:
    return any(e.get("type") == "fault" and e.get("event") == "raise"
               and e.get("name") == "LOAD_CELL_IMBALANCE" for e in events)


def test_commissioned_baseline_is_used_and_recommissioning_replaces_it(tmp_path: Path
                                                                        ) -> None:
    state = tmp_path / "ssb-23.json"
    # live commissioning of the emulated stack at rest (its fixture's ~75 kPa static tilt)
    res = _bms("commission", "--pack", "ssb-23", "--state", str(state), "--duration", "3",
               "--log", str(tmp_path / "commission"))
    assert "commissioning of 1 stack(s) recorded (new file)" in res.stdout
    first = json.loads(state.read_text())["commissioning"][0]
    assert len(first["load_cell_shares"]) == 4 and "load_cell_offsets_kpa" not in first

    # the next run uses it from its first tick: no baseline of its own, the stack's preload
    events = _run(state, tmp_path / "run1")
    applied = [e for e in events if e.get("type") == "commissioning"]
    assert len(applied) == 1 and applied[0]["preload_kpa"] == first["preload_kpa"]
    assert applied[0]["load_cell_shares"] == first["load_cell_shares"]
    assert not [e for e in events if e.get("type") == "load_cell_baseline"]
    assert not _imbalance_raised(events)
    # the expected pressure is the commissioned model's: the same first tick as a run without
    # the file (same seed, same OCV start), moved by the preload difference
    _bms("run", "--pack", "ssb-23", "--duration", "1", "--log", str(tmp_path / "plain"),
         "--quiet", "--no-monitor")
    e1 = load_ticks(tmp_path / "run1")["pressure_expected_kpa"][0]
    e0 = load_ticks(tmp_path / "plain")["pressure_expected_kpa"][0]
    assert e1 - e0 == pytest.approx(first["preload_kpa"] - 1000.0, abs=0.02)

    saved = json.loads(state.read_text())
    assert saved["stacks"][0] is not None  # the run kept its estimator state in the file
    # the fixture reassembled: a new baseline from a recorded run (here one whose load cells
    # share the force differently: ~8 % of the pressure apart from what the emulator reads)
    new = np.array(first["load_cell_shares"]) * [0.96, 1.04, 1.0, 1.0]
    new_shares = (new / new.mean()).tolist()  # shares of the stack mean average 1
    rerun = _write_run(tmp_path / "reassembled", np.full(40, 1240.0), new_shares, [0.0] * 4,
                       np.full(40, 1240.0), np.zeros(40))
    res = _bms("commission", "--pack", "ssb-23", "--state", str(state), "--from-run",
               str(rerun))
    assert "replaces the one of" in res.stdout and "estimator state and latched faults kept" \
        in res.stdout
    after = json.loads(state.read_text())
    assert after["stacks"] == saved["stacks"] and after["latched_faults"] == saved[
        "latched_faults"]
    second = after["commissioning"][0]
    assert second["source"] == str(rerun)
    assert np.allclose(second["load_cell_shares"], new_shares, atol=1e-4)

    # the next run watches the change from the new baseline: the emulator's real tilt now
    # differs from it by ~100 kPa, over the 80 kPa warning level
    events = _run(state, tmp_path / "run2")
    applied = [e for e in events if e.get("type") == "commissioning"]
    assert applied[0]["source"] == str(rerun)
    assert _imbalance_raised(events)
    starts = [e for e in events if e.get("type") == "estimator" and e.get("event") == "start"]
    assert len(starts) == 1 and starts[0]["how"].startswith("restored")  # state kept


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_expected_pressure_follows_the_stiffening_fixture(seed: int) -> None:
    """The cause of the false STACK_PRESSURE_RESIDUAL on healthy ssb-4x23 stacks: the core's
    expected pressure at the plant's true SOC and temperatures against the plant's true stack
    pressure, at rest from 5 % to 100 % SOC. The linear model (stiffening 0) ran 63-69 kPa low
    near full charge, over the CUSUM's 60 kPa allowance; the pack's stiffening keeps it within
    the per-stack spread of swelling (2 %) and capacity (1 %): 0.4-5.1 kPa."""
    pack = load_pack("ssb-4x23")
    params = make_params(pack, 0)
    assert params.fixture_stiffening == pytest.approx(0.15)
    new, linear = ReferenceCore(params), ReferenceCore(replace(params, fixture_stiffening=0.0))
    worst_new = worst_linear = 0.0
    for soc in np.linspace(0.05, 1.0, 12):
        plant = Plant(pack, seed, load_board("emu-23"), seed=seed, initial_soc=float(soc))
        truth = plant.truth()
        for ref in (new, linear):
            ref.soc = np.asarray(plant.soc, dtype=float).copy()
            ref.cell_temp_c = np.asarray(truth.temperature_c, dtype=float).copy()
        worst_new = max(worst_new, abs(truth.pressure_kpa - new.expected_pressure()))
        worst_linear = max(worst_linear, truth.pressure_kpa - linear.expected_pressure())
    print(f"seed {seed}: worst |model - plant| {worst_new:.1f} kPa, linear {worst_linear:.1f}")
    assert worst_new < 20.0 < 50.0 < worst_linear


def test_state_file_keeps_the_commissioning_and_refuses_a_bad_one(tmp_path: Path) -> None:
    """encode/write/load round trip of the commissioning record; a non-positive share or a
    record per stack that does not match the pack is a one-line StateFileError (the file is
    refused, as any state file that cannot be used)."""
    pack = load_pack("ssb-23")
    rec = StackCommissioning(name="stack-1", recorded_utc="2026-12-07T18:00:00+00:00",
                             source="runs/x", load_cell_shares=[1.03, 0.97, 1.01, 0.99],
                             load_cell_offsets_kpa=[1.0, -1.0, 0.5, -0.5], preload_kpa=1004.0,
                             stiffness_kpa_per_um=0.126)
    path = tmp_path / "s.json"
    write(path, encode(pack, [None], [], 0.0, "commission", 1.8e9, [rec]))
    got = load_state(path, pack)
    assert got is not None and got.commissioning == [rec]
    older = tmp_path / "older.json"  # a file written before commissioning existed
    write(older, encode(pack, [None], [], 0.0, "stop", 1.8e9))
    assert load_state(older, pack).commissioning == []

    def tampered(**change: object) -> Path:
        doc = json.loads(path.read_text())
        doc.pop("sha256")
        doc["commissioning"][0].update(change)
        bad = tmp_path / "bad.json"
        doc["sha256"] = _digest(doc)
        bad.write_text(json.dumps(doc))
        return bad

    with pytest.raises(StateFileError, match="load_cell_shares .* are not positive"):
        load_state(tampered(load_cell_shares=[1.0, -0.1, 1.0, 1.1]), pack)
    with pytest.raises(StateFileError, match="unknown key"):
        load_state(tampered(preload=1.0), pack)
    with pytest.raises(StateFileError, match="preload_kpa -5.0 is not a positive number"):
        load_state(tampered(preload_kpa=-5.0), pack)
