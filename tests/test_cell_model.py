"""The cell model format (cell.model): tables on their own breakpoints, 1 or 2 RC branches,
R0 on charge, hysteresis, Arrhenius or per-temperature; the first format still loads as the
same model; the solid-state parts and the load cells are optional."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from bms.app.check import main as check_main
from bms.core import (
    GRID_COLUMNS,
    MAX_SOC_DIVISIONS,
    MAX_TEMPERATURE_DIVISIONS,
    Core,
    make_params,
)
from boards.config import (
    V1_FORMAT_R2_OVER_R1,
    V1_FORMAT_TAU2_OVER_TAU1,
    ConfigError,
    load_pack,
)

PACK_DIR = Path(__file__).resolve().parents[1] / "boards" / "packs"


def _ssb23() -> dict:
    return yaml.safe_load((PACK_DIR / "ssb-23.yaml").read_text())


def _write(tmp_path: Path, data: dict, name: str = "pack.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _v1_cell(data: dict) -> dict:
    """The ssb-23 cell written in the first format (lists on the OCV grid)."""
    cell = dict(data["cell"])
    model = cell.pop("model")
    cell["reference_temperature_c"] = 25.0
    cell["activation_energy_ev"] = 0.30
    cell["r0_ohm"] = model["r0_ohm"]["values"]
    cell["r1_ohm"] = model["rc"][0]["r_ohm"]["values"]
    cell["c1_f"] = model["rc"][0]["c_f"]["values"]
    return cell


def test_first_format_loads_as_the_same_two_branch_model(tmp_path) -> None:
    data = _ssb23()
    new = make_params(load_pack("ssb-23"))
    data["cell"] = _v1_cell(data)
    old = make_params(load_pack(_write(tmp_path, data)))
    assert old.grid.shape == new.grid.shape and old.n_rc == new.n_rc == 2
    np.testing.assert_allclose(old.grid, new.grid, rtol=1e-12, atol=0)
    # the implied branch: R2 = 0.5 R1, tau2 = 15 tau1 on every node
    col = {name: k for k, name in enumerate(GRID_COLUMNS)}
    np.testing.assert_allclose(old.grid[..., col["r2_ohm"]],
                               V1_FORMAT_R2_OVER_R1 * old.grid[..., col["r1_ohm"]], rtol=1e-12)
    np.testing.assert_allclose(old.grid[..., col["tau2_s"]],
                               V1_FORMAT_TAU2_OVER_TAU1 * old.grid[..., col["tau1_s"]],
                               rtol=1e-12)


def test_tables_on_their_own_breakpoints_are_reproduced_exactly(tmp_path) -> None:
    data = _ssb23()
    data["cell"]["model"] = {
        "rc_branches": 2,
        "r0_ohm": {"soc": [0.15, 0.55, 0.85], "temperature_c": [0.0, 10.0, 25.0, 40.0],
                   "values": [[0.04, 0.03, 0.035], [0.02, 0.016, 0.018], [0.01, 0.008, 0.009],
                              [0.007, 0.0055, 0.006]]},
        "rc": [{"r_ohm": 0.004, "tau_s": {"temperature_c": [0.0, 40.0], "values": [60.0, 20.0]}},
               {"r_ohm": {"soc": [0.5], "values": [0.002]}, "c_f": 200000.0}],
    }
    pack = load_pack(_write(tmp_path, data))
    prm = make_params(pack)
    core = Core(pack)
    col = {name: k for k, name in enumerate(GRID_COLUMNS)}
    soc_u = np.arange(prm.n_soc) * prm.soc_step
    t_u = prm.temp_min_c + np.arange(prm.n_temp) * prm.temp_step_c
    for s, t, r0 in [(0.15, 10.0, 0.02), (0.55, 25.0, 0.008), (0.85, 40.0, 0.006),
                     (0.0, 0.0, 0.04), (1.0, 40.0, 0.006)]:  # beyond the ends: held
        i, j = int(np.argmin(np.abs(t_u - t))), int(np.argmin(np.abs(soc_u - s)))
        assert abs(t_u[i] - t) < 1e-9 and abs(soc_u[j] - s) < 1e-9
        assert prm.grid[i, j, col["r0_discharge_ohm"]] == pytest.approx(r0, rel=1e-12)
        assert prm.grid[i, j, col["r0_charge_ohm"]] == pytest.approx(r0, rel=1e-12)
    assert prm.grid[0, 0, col["tau1_s"]] == pytest.approx(60.0)
    assert prm.grid[-1, 0, col["tau1_s"]] == pytest.approx(20.0)
    np.testing.assert_allclose(prm.grid[..., col["tau2_s"]], 400.0)  # 0.002 x 200000
    np.testing.assert_allclose(prm.grid[..., col["hysteresis_v"]], 0.0)
    core.reset(0.5)
    out = core.step(1.0, -5.0, np.full(23, 3.75), np.full(6, 25.0), np.full(4, 1000.0))
    assert np.all(np.isfinite(out.voltage_pred_v))


def test_awkward_breakpoints_give_a_bounded_close_grid(tmp_path) -> None:
    """Fitted breakpoints (24.7 C, SOC 0.1234) share no coarse uniform grid with the OCV's:
    the grid is capped (MAX_*_DIVISIONS) and the look-up stays within the table's own change
    over one grid step."""
    data = _ssb23()
    data["cell"]["model"] = {
        "rc_branches": 1,
        "r0_ohm": {"soc": [0.1234, 0.5, 0.9], "temperature_c": [-3.3, 24.7, 41.1],
                   "values": [[0.05, 0.04, 0.045], [0.012, 0.01, 0.011], [0.008, 0.006, 0.007]]},
        "rc": [{"r_ohm": 0.004, "tau_s": 30.0}],
    }
    prm = make_params(load_pack(_write(tmp_path, data)))
    assert prm.n_soc <= MAX_SOC_DIVISIONS + 1 and prm.n_temp <= MAX_TEMPERATURE_DIVISIONS + 1
    col = {name: k for k, name in enumerate(GRID_COLUMNS)}
    soc_u = np.arange(prm.n_soc) * prm.soc_step
    t_u = prm.temp_min_c + np.arange(prm.n_temp) * prm.temp_step_c
    i, j = int(np.argmin(np.abs(t_u - 24.7))), int(np.argmin(np.abs(soc_u - 0.5)))
    # slope near (0.5, 24.7): ~0.03 ohm per 28 K and ~0.01 ohm per 0.4 SOC -> within 1 mOhm
    assert prm.grid[i, j, col["r0_discharge_ohm"]] == pytest.approx(0.01, abs=1e-3)


def test_predicted_voltage_and_residual(tmp_path) -> None:
    """voltage_pred_v is the model's voltage before the update: on a cell that follows the
    model exactly (here the OCV at rest) the residual is the measurement noise only."""
    pack = load_pack("ssb-23")
    core = Core(pack)
    core.reset(0.6)
    ocv = float(np.interp(0.6, pack.cell.soc_grid, pack.cell.ocv_v[2]))
    out = core.step(1.0, 0.0, np.full(23, ocv), np.full(6, 25.0), np.full(4, 1000.0))
    assert np.max(np.abs(out.voltage_pred_v - ocv)) < 1e-9
    out = core.step(1.0, float("nan"), np.full(23, ocv), np.full(6, 25.0), np.full(4, 1000.0))
    assert np.all(np.isnan(out.voltage_pred_v))


def test_child_model_replaces_the_base_model_whole(tmp_path) -> None:
    path = _write(tmp_path, {"schema": "ssb-bms/pack/1", "base": "ssb-23", "name": "fitted",
                             "cell": {"capacity_ah": 5.1, "model": {
                                 "rc_branches": 1, "r0_ohm": 0.02,
                                 "rc": [{"r_ohm": 0.01, "tau_s": 30.0}]}}})
    pack = load_pack(path)
    assert pack.cell.capacity_ah == 5.1 and pack.cell.ecm.rc_branches == 1
    assert pack.cell.solid_state  # the base's swelling description is kept
    # a first-format base: its r0_ohm/r1_ohm/c1_f give way to the child's model
    base = _ssb23()
    base["cell"] = _v1_cell(base)
    base_path = _write(tmp_path, base, "v1-base.yaml")
    path2 = _write(tmp_path, {"schema": "ssb-bms/pack/1", "base": str(base_path),
                              "name": "fitted2", "cell": {"model": {
                                  "rc_branches": 1, "r0_ohm": 0.02,
                                  "rc": [{"r_ohm": 0.01, "tau_s": 30.0}]}}}, "child.yaml")
    assert load_pack(path2).cell.ecm.rc_branches == 1


@pytest.mark.parametrize(("model", "key", "fragment"), [
    ({"rc_branches": 3}, "cell.model.rc_branches", "[1, 2]"),
    ({"rc_branches": 2, "r0_ohm": 0.01, "rc": [{"r_ohm": 0.01, "tau_s": 30}]},
     "cell.model.rc", "exactly rc_branches = 2"),
    ({"rc_branches": 1, "r0_ohm": 0.01, "rc": [{"r_ohm": 0.01, "tau_s": 30, "c_f": 3000}]},
     "cell.model.rc[0].tau_s", "exactly one of tau_s and c_f"),
    ({"rc_branches": 1, "r0_ohm": {"soc": [0.2, 0.8], "valuez": [0.01, 0.02]},
      "rc": [{"r_ohm": 0.01, "tau_s": 30}]}, "cell.model.r0_ohm.values", "required"),
    ({"rc_branches": 1, "r0_ohm": {"soc": [0.2, 0.8], "values": [0.01, 0.02], "vals": 1},
      "rc": [{"r_ohm": 0.01, "tau_s": 30}]}, "cell.model.r0_ohm.vals",
     "did you mean 'values'"),
    ({"rc_branches": 1, "r0_ohm": {"soc": [0.8, 0.2], "values": [0.01, 0.02]},
      "rc": [{"r_ohm": 0.01, "tau_s": 30}]}, "cell.model.r0_ohm.soc", "increasing"),
    ({"rc_branches": 1, "r0_ohm": {"soc": [0.2, 0.8], "temperature_c": [0, 25],
                                   "values": [[0.01, 0.02]]},
      "rc": [{"r_ohm": 0.01, "tau_s": 30}]}, "cell.model.r0_ohm.values", "2 rows"),
    ({"rc_branches": 1, "r0_ohm": {"soc": [0.2, 0.8], "temperature_c": [0, 25],
                                   "activation_energy_ev": 0.3, "values": [0.01, 0.02]},
      "rc": [{"r_ohm": 0.01, "tau_s": 30}]}, "cell.model.r0_ohm.temperature_c", "not both"),
    ({"rc_branches": 1, "r0_ohm": -0.01, "rc": [{"r_ohm": 0.01, "tau_s": 30}]},
     "cell.model.r0_ohm", "(0.0, 10.0]"),
    ({"rc_branches": 1, "r0_ohm": 0.01, "rc": [{"r_ohm": 0.01, "tau_s": 30}],
      "hysteresis": {"max_v": 0.01}}, "cell.model.hysteresis.rate", "required"),
    ({"rc_branches": 1, "r0_ohm": 0.01, "rc": [{"r_ohm": 0.01, "tau_s": 30}],
      "charge_transfer": {"exchange_current_a": 1.0, "exchange_current": 1.0}},
     "cell.model.charge_transfer.exchange_current", "did you mean 'exchange_current_a'"),
    ({"rc_branches": 1, "r0_ohm": 0.01, "rc": [{"r_ohm": 0.01, "tau_s": 30}],
      "charge_transfer": {"exchange_current_a": 0.0}},
     "cell.model.charge_transfer.exchange_current_a", "(0.0, 1000000.0]"),
    ({"rc_branches": 1, "r0_ohm": 0.01, "rc": [{"r_ohm": 0.01, "tau_s": 30}],
      "charge_transfer": 2.0}, "cell.model.charge_transfer", "a mapping"),
])
def test_bad_models_name_the_key(tmp_path, model, key, fragment) -> None:
    data = _ssb23()
    data["cell"]["model"] = model
    with pytest.raises(ConfigError) as info:
        load_pack(_write(tmp_path, data))
    assert info.value.key == key, str(info.value)
    assert fragment in str(info.value) and "np." not in str(info.value)


def test_first_format_keys_with_a_model_are_refused(tmp_path) -> None:
    data = _ssb23()
    data["cell"]["r1_ohm"] = [0.005] * 13
    with pytest.raises(ConfigError, match="cell.r1_ohm: .*cell.model"):
        load_pack(_write(tmp_path, data))


def test_solid_state_parts_are_all_or_none(tmp_path, capsys) -> None:
    data = _ssb23()
    for key in ("unit_layers", "electrode_area_cm2", "areal_capacity_mah_cm2", "thickness_um",
                "lithium_um_per_mah_cm2", "cathode_um_per_layer_full"):
        data["cell"].pop(key)
    data.pop("charging")
    path = _write(tmp_path, data)
    pack = load_pack(path)
    assert not pack.cell.solid_state and pack.cell.swelling_um_full == 0.0
    assert make_params(pack).pressure_fusion == 0
    assert check_main(["--pack", str(path)]) == 0
    assert "not fused as SOC: the cell has no solid-state description" in capsys.readouterr().out
    data["cell"]["unit_layers"] = 10
    with pytest.raises(ConfigError, match="all of unit_layers.*or none"):
        load_pack(_write(tmp_path, data))


def test_no_load_cells_turns_the_pressure_features_off(tmp_path, capsys) -> None:
    data = _ssb23()
    data["fixture"]["load_cells_xy_mm"] = []
    path = _write(tmp_path, data)
    pack = load_pack(path)
    prm = make_params(pack)
    assert prm.n_load_cells == 0 and prm.pressure_fusion == 0
    core = Core(pack)
    core.reset(0.5)
    out = core.step(0.1, -2.0, np.full(23, 3.76), np.full(6, 25.0), np.zeros(0))
    assert np.isnan(out.pressure_mean_kpa) and np.all(np.isfinite(out.soc))
    # bms check prints what the pack means, then refuses it for a board with load-cell
    # channels (bms run would: the board's four readings have no place in the model)
    with pytest.raises(ConfigError, match="0 load cell.*4 load-cell channels"):
        check_main(["--pack", str(path)])
    assert "pressure  off: fixture.load_cells_xy_mm is []" in capsys.readouterr().out
    # with a board profile without load-cell channels the pack is accepted as bms run would
    board = yaml.safe_load((PACK_DIR.parent / "emu-23.yaml").read_text())
    board.update(name="emu-23-no-load-cells", load_cells=0,
                 load_cell={k: ([] if isinstance(v, list) else v)
                            for k, v in board["load_cell"].items()})
    data["stacks"][0]["board"] = str(_write(tmp_path, board, "board.yaml"))
    assert check_main(["--pack", str(_write(tmp_path, data))]) == 0
    out = capsys.readouterr().out
    assert "0 load cells): ok" in out and "ok        bms run accepts this pack" in out


def test_charging_section(tmp_path) -> None:
    pack = load_pack("ssb-23")
    assert pack.charging is not None and pack.charging.ccd_ma_cm2.shape == (3, 5)
    assert pack.cell.plating_area_cm2 == pytest.approx(1430.0)
    data = _ssb23()
    data["charging"]["ccd_ma_cm2"] = data["charging"]["ccd_ma_cm2"][:2]
    with pytest.raises(ConfigError, match="charging.ccd_ma_cm2: .*3 rows"):
        load_pack(_write(tmp_path, data))
    data = _ssb23()
    data["charging"]["margin"] = 1.5
    with pytest.raises(ConfigError, match="charging.margin"):
        load_pack(_write(tmp_path, data))
