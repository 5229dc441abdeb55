"""Pack files and board profiles: the built-ins load, and every kind of bad input gets an error
that names the file, the key path, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from bms.app.cli import main as bms_main
from boards.config import (
    PROTECTION_NAMES,
    ConfigError,
    load_board,
    load_pack,
)

PACK_DIR = Path(__file__).resolve().parents[1] / "boards" / "packs"


def test_builtin_ssb23_loads_with_expected_topology() -> None:
    pack = load_pack("ssb-23")
    assert pack.n_cells == 23
    assert len(pack.stacks) == 1
    assert len(pack.stacks[0].thermistor_cell_positions) >= 6
    assert len(pack.fixture.load_cells_xy_mm) == 4
    assert set(pack.protections) == set(PROTECTION_NAMES)
    cell = pack.cell
    assert cell.ocv_v.shape == (len(cell.temperature_grid_c), len(cell.soc_grid))
    # Arrhenius expansion: resistance falls with temperature, equals the table at T_ref.
    i_ref = list(cell.temperature_grid_c).index(cell.reference_temperature_c)
    assert np.all(np.diff(cell.r0_ohm[:, 6]) < 0)
    assert cell.r0_ohm[i_ref, 6] == pytest.approx(0.0080)
    # Lithium plating: about 4.85 um per mAh/cm2 per layer, minus the cathode's shrink.
    assert cell.swelling_um_full == pytest.approx(10 * (4.85 * 3.5 - 1.5))


def test_ssb4x23_inherits_from_ssb23() -> None:
    base, pack = load_pack("ssb-23"), load_pack("ssb-4x23")
    assert pack.n_cells == 92 and len(pack.stacks) == 4
    assert np.array_equal(pack.cell.ocv_v, base.cell.ocv_v)
    assert pack.protections == base.protections


def test_board_profile_loads_and_thermistor_scaling_round_trips() -> None:
    board = load_board("emu-23")
    assert (board.cells, board.thermistors, board.load_cells) == (23, 6, 4)
    temps = np.array([-20.0, 0.0, 25.0, 45.0, 80.0])
    counts = board.thermistor.c_to_counts(temps)
    assert np.allclose(board.thermistor.counts_to_c(counts), temps, atol=1e-9)
    # Open NTC (reads vref) and shorted NTC (reads 0 V) must not look like temperatures.
    rail = board.thermistor.vref_v / board.thermistor.lsb_v
    assert np.all(np.isnan(board.thermistor.counts_to_c(np.array([0.0, rail]))))


def _write_pack(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load((PACK_DIR / "ssb-23.yaml").read_text())
    mutate(data)
    path = tmp_path / "pack.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "key", "fragment"),
    [
        (lambda d: d["cell"].pop("capacity_ah"), "cell.capacity_ah", "required"),
        (lambda d: d["cell"].update(capacity_ah=-5), "cell.capacity_ah", "(0.0"),
        (lambda d: d["cell"].update(capacity_ah=float("nan")), "cell.capacity_ah", "finite"),
        (lambda d: d["cell"].update(capacity_ah="five"), "cell.capacity_ah", "number"),
        (lambda d: d["cell"]["ocv_v"][2].reverse(), "cell.ocv_v", "increasing"),
        (lambda d: d["cell"]["ocv_v"].pop(), "cell.ocv_v", "rows"),
        (lambda d: d["cell"]["model"]["r0_ohm"]["values"].pop(), "cell.model.r0_ohm.values",
         "exactly 13"),
        (lambda d: d["cell"].update(soc_grid=[0.1, 0.5, 1.0]), "cell.soc_grid", "starts at 0.0"),
        (lambda d: d["stacks"][0].update(cells=0), "stacks[0].cells", "[1, 32]"),
        (lambda d: d["stacks"][0].update(thermistor_cell_positions=[0, 30]),
         "stacks[0].thermistor_cell_positions[1]", "22.0"),
        (lambda d: d["protections"]["cell_overvoltage_v"].update(fault=4.5),
         "protections.cell_overvoltage_v.fault", "warning <= fault <= critical"),
        (lambda d: d["protections"].update(cell_overpressure={}),
         "protections.cell_overpressure", "allowed here: cell_leak_a, cell_overtemperature"),
        (lambda d: d["cell"].update(r2_ohm=0.006), "cell.r2_ohm",
         "unknown key; the equivalent circuit is in cell.model"),
        (lambda d: d["cell"]["model"]["rc"][1].update(r2_ohm=0.006),
         "cell.model.rc[1].r2_ohm", "did you mean 'r_ohm'?"),
        (lambda d: d.update(thermal={"x": 1}), "thermal", "unknown key"),
        (lambda d: d["stacks"][0].update(bord="emu-23"), "stacks[0].bord",
         "did you mean 'board'?"),
        (lambda d: d["protections"]["cell_leak_a"].update(debounce=3),
         "protections.cell_leak_a.debounce", "did you mean 'debounce_s'?"),
        (lambda d: d["protections"].pop("cell_leak_a"), "protections.cell_leak_a", "required"),
        (lambda d: d["balancing"].update(mode="magic"), "balancing.mode", "soc, voltage"),
        (lambda d: d["estimator"].update(pressure_fusion="yes"),
         "estimator.pressure_fusion", "true or false"),
        (lambda d: d.update(schema="other/9"), "schema", "ssb-bms/pack/1"),
        (lambda d: d["estimator"].update(voltage_noise_v={"values": 0.002,
                                                          "activation_energy_ev": 0.3,
                                                          "reference_temperature_c": 25.0}),
         "estimator.voltage_noise_v", "no Arrhenius form"),
        (lambda d: d["estimator"].update(voltage_noise_v={"temperature_c": [0, 25],
                                                          "values": [0.002, -1]}),
         "estimator.voltage_noise_v.values[1]", "(0.0"),
    ],
)
def test_invalid_pack_names_file_key_value_and_allowed(tmp_path, mutate, key, fragment) -> None:
    path = _write_pack(tmp_path, mutate)
    with pytest.raises(ConfigError) as info:
        load_pack(path)
    err = info.value
    assert err.file == str(path)
    assert err.key == key
    assert fragment in str(err)


def test_unreadable_and_malformed_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="readable file"):
        load_pack(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cell: [unclosed\n")
    with pytest.raises(ConfigError, match="line 2, column 1"):
        load_pack(bad)
    with pytest.raises(ConfigError, match="one of"):
        load_pack("no-such-pack")


def test_messages_print_plain_numbers(tmp_path) -> None:
    path = _write_pack(tmp_path, lambda d: d["cell"].update(soc_grid=[0.1, 0.5, 1.0]))
    with pytest.raises(ConfigError) as info:
        load_pack(path)
    assert "[0.1, 0.5, 1.0]" in str(info.value) and "np." not in str(info.value)


def test_duplicate_keys_non_utf8_and_deep_yaml_are_one_line_errors(tmp_path) -> None:
    dup = tmp_path / "dup.yaml"
    dup.write_text("schema: ssb-bms/pack/1\nbase: ssb-23\nname: a\nname: b\n")
    with pytest.raises(ConfigError, match=r"line 4, column 1: duplicate key 'name'"):
        load_pack(dup)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("schema: ssb-bms/pack/1\ndescription: 25 \xb0C\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 39: 0xb0\)") as info:
        load_pack(latin)
    assert "\n" not in str(info.value)
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_pack(deep)


def test_unknown_board_profile_key(tmp_path) -> None:
    text = (Path(__file__).resolve().parents[1] / "boards" / "emu-23.yaml").read_text()
    path = tmp_path / "board.yaml"
    path.write_text(text + "sample_period: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_board(path)
    assert info.value.key == "sample_period"
    assert "did you mean 'sample_period_s'?" in str(info.value)


def test_base_cycle_is_rejected(tmp_path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text(f"schema: ssb-bms/pack/1\nbase: {a}\nname: a\n")
    with pytest.raises(ConfigError, match="does not include itself"):
        load_pack(a)


def test_cli_check_prints_one_line_error_not_a_traceback(tmp_path, capsys) -> None:
    path = _write_pack(tmp_path, lambda d: d["fixture"].update(preload_kpa=0))
    assert bms_main(["check", "--pack", str(path)]) == 3  # ExitCode.CONFIG (docs/errors.md)
    err = capsys.readouterr().err
    assert "fixture.preload_kpa" in err and "Traceback" not in err
    assert bms_main(["check", "--pack", "ssb-4x23"]) == 0
    assert "92 in 4 stack(s)" in capsys.readouterr().out


def test_voltage_noise_table_over_temperature(tmp_path) -> None:
    """estimator.voltage_noise_v as a table over temperature (what bms fit writes): the table
    goes to the core's grid, the scalar is its largest value (the leak filter's)."""
    path = _write_pack(tmp_path, lambda d: d["estimator"].update(
        voltage_noise_v={"temperature_c": [0.0, 25.0], "values": [0.003, 0.001]}))
    est = load_pack(path).estimator
    assert est.voltage_noise_v == 0.003
    assert est.voltage_noise_table is not None
    assert est.voltage_noise_table.at(np.array([0.5]), np.array([12.5]))[0, 0] == \
        pytest.approx(0.002)
    assert load_pack("ssb-23").estimator.voltage_noise_table is None
