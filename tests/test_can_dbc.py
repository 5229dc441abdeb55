"""The shipped DBC (bms/vehicle/ssb_bms.dbc): it loads in cantools strictly, it is what
tools/gen_can_dbc.py writes, every frame has the E2E layout and a cycle that is a whole number
of ticks, every signal's raw range covers its [minimum, maximum] (with SNA outside it), and the
ranges cover the physical ranges of the shipped packs; a DBC that does not fit is refused with
one line naming the frame."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import cantools
import pytest

from bms.vehicle.codec import DBC_PATH, Codec, DbcError, crc8_sae_j1850
from boards.config import load_pack

ROOT = Path(__file__).resolve().parents[1]
DB = cantools.database.load_file(str(DBC_PATH), strict=True)
PACKS = [load_pack(name) for name in ("ssb-23", "ssb-4x23", "ssb-23-fw")]


def test_the_generator_wrote_the_shipped_dbc() -> None:
    res = subprocess.run([sys.executable, "tools/gen_can_dbc.py", "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_crc_is_sae_j1850() -> None:
    # The AUTOSAR CRC library's check value of CRC-8 SAE J1850 and its zero-data values.
    assert crc8_sae_j1850(b"123456789") == 0x4B
    assert crc8_sae_j1850(bytes(4)) == 0x59
    assert crc8_sae_j1850(b"\xf2\x01\x83") == 0x37


def test_every_frame_has_e2e_layout_cycle_units_and_comments() -> None:
    assert {m.name for m in DB.messages} >= {"VCU_Request", "VCU_Heartbeat", "BMS_Status",
                                             "BMS_Pack", "BMS_Limits", "BMS_SOC", "BMS_SOH",
                                             "BMS_StackTemperature", "BMS_StackPressure",
                                             "BMS_CellVoltage", "BMS_CellSOC",
                                             "BMS_CellTemperature", "BMS_Faults"}
    for m in DB.messages:
        assert m.length == 8 and not m.is_extended_frame
        assert m.cycle_time and m.comment, m.name
        for pack in PACKS:
            ticks = m.cycle_time / 1000 / pack.controller.tick_s
            assert abs(ticks - round(ticks)) < 1e-9, (m.name, pack.name)
        names = {s.name: s for s in m.signals}
        assert names[f"{m.name}_CRC"].start == 0 and names[f"{m.name}_CRC"].length == 8
        assert names[f"{m.name}_Counter"].start == 8 and names[f"{m.name}_Counter"].maximum == 14
        for s in m.signals:
            assert s.comment or s.is_multiplexer or s.choices, (m.name, s.name)
            if s.scale != 1 or s.offset:
                assert s.unit, (m.name, s.name)


def test_raw_ranges_cover_min_max_and_sna_is_outside() -> None:
    for m in DB.messages:
        for s in m.signals:
            lo_raw = -(1 << (s.length - 1)) if s.is_signed else 0
            hi_raw = (1 << (s.length - 1)) - 1 if s.is_signed else (1 << s.length) - 1
            lo, hi = sorted((lo_raw * s.scale + s.offset, hi_raw * s.scale + s.offset))
            assert lo - 1e-9 <= s.minimum < s.maximum <= hi + 1e-9, (m.name, s.name)
            for raw, name in (s.choices or {}).items():
                if str(name) == "SNA":
                    phys = raw * s.scale + s.offset
                    assert not s.minimum <= phys <= s.maximum, (m.name, s.name)


def _sig(name: str) -> cantools.database.can.Signal:
    for m in DB.messages:
        for s in m.signals:
            if s.name == name:
                return s
    raise KeyError(name)


@pytest.mark.parametrize("pack", PACKS, ids=[p.name for p in PACKS])
def test_signal_ranges_cover_the_packs_physical_ranges(pack) -> None:  # noqa: ANN001
    prot = pack.protections
    v_cell = prot["cell_overvoltage_v"].critical
    n_cells = pack.n_cells
    assert _sig("PackVoltage").maximum >= n_cells * v_cell
    assert _sig("BusVoltage").maximum >= n_cells * v_cell
    assert _sig("Stack1_Voltage").maximum >= max(s.cells for s in pack.stacks) * v_cell
    assert _sig("Cell1_Voltage").maximum >= v_cell and _sig("Cell1_Voltage").minimum <= 0
    i_max = max(prot["charge_overcurrent_a"].critical, prot["discharge_overcurrent_a"].critical)
    assert _sig("PackCurrent").maximum >= i_max and _sig("PackCurrent").minimum <= -i_max
    for name in ("ChargeCurrentLimit", "Horizon1_ChargeLimit", "Horizon1_DischargeLimit"):
        assert _sig(name).maximum >= max(pack.power_limits.max_charge_current_a,
                                         pack.power_limits.max_discharge_current_a)
    assert _sig("Horizon1_Time").maximum >= max(pack.power_limits.horizons_s)
    t_lo = min(prot[k].critical for k in ("cell_undertemperature_charge_c",
                                          "cell_undertemperature_discharge_c"))
    t_hi = max(prot[k].critical for k in ("cell_overtemperature_charge_c",
                                          "cell_overtemperature_discharge_c"))
    for name in ("Cell1_Temperature", "Stack1_TemperatureMin"):
        assert _sig(name).minimum <= t_lo - 10 and _sig(name).maximum >= t_hi + 40
    assert _sig("Stack1_PressureMax").maximum >= prot["stack_pressure_high_kpa"].critical * 2
    assert _sig("PackSOC").minimum <= 0 and _sig("PackSOC").maximum >= 100
    assert _sig("MinCellSOC_Index").maximum >= n_cells
    # every cell, stack and horizon has a page
    pages = {m.name: len({i for s in m.signals for i in s.multiplexer_ids or ()})
             for m in DB.messages}
    assert pages["BMS_CellVoltage"] * 3 >= n_cells
    assert pages["BMS_CellSOC"] * 4 >= n_cells and pages["BMS_CellTemperature"] * 4 >= n_cells
    assert pages["BMS_StackTemperature"] >= len(pack.stacks)
    assert pages["BMS_Limits"] >= 1 + len(pack.power_limits.horizons_s)
    assert math.isfinite(pack.vehicle.heartbeat_timeout_s)


def test_a_dbc_that_does_not_fit_is_one_line(tmp_path: Path) -> None:
    text = DBC_PATH.read_text()
    bad = tmp_path / "bad.dbc"
    bad.write_text(text.replace("SG_ BMS_Pack_Counter : 8|4@1+", "SG_ BMS_Pack_Counter : 8|5@1+"))
    with pytest.raises(DbcError, match=r"frame BMS_Pack \(0x101\): signal BMS_Pack_Counter "
                                       r"must be Intel bits 8\|4"):
        Codec(bad)
    junk = tmp_path / "junk.dbc"
    junk.write_text("BO_ this is not a DBC\n")
    with pytest.raises(DbcError, match="cannot be loaded as a DBC"):
        Codec(junk)
    with pytest.raises(DbcError, match="no frame BMS_Nope"):
        Codec().frame("BMS_Nope")


def test_a_dbc_whose_signals_this_bms_does_not_fill_is_refused_at_start(tmp_path: Path) -> None:
    import can

    from bms.vehicle.link import VehicleLink, VehicleLinkError

    bad = tmp_path / "renamed.dbc"
    bad.write_text(DBC_PATH.read_text().replace(" PackVoltage ", " PackVolts "))
    bus = can.Bus(interface="virtual", channel=f"dbc-{tmp_path.name}")
    try:
        with pytest.raises(VehicleLinkError, match=r"frame BMS_Pack page 0: its signals are "
                                                   r"not the ones this BMS fills"):
            VehicleLink(bus, PACKS[1], codec=Codec(bad))
    finally:
        bus.shutdown()
