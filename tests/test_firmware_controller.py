"""The controller end to end against the reference firmware on the simulated MCU (a shorter
scenario than against the Python emulator): handshake, precharge over the firmware's relay pins
and bus-voltage ADC, closed contactors under a plant load, then the board's own watchdog when the
controller goes silent."""

from __future__ import annotations

from pathlib import Path

import pytest
from firmware_tools import require_tools

from boards.config import load_pack
from hil.firmware import FirmwareBoard

pytestmark = pytest.mark.firmware

PACK_YAML = """schema: ssb-bms/pack/1
base: ssb-23
name: ssb-23-fw
stacks:
  - name: stack-1
    cells: 23
    board: mega2560-ltc6811
    thermistor_cell_positions: [0.0, 4.4, 8.8, 13.2, 17.6, 22.0]
"""


def test_controller_closes_runs_and_board_watchdog_opens(tmp_path: Path) -> None:
    require_tools()
    controller_mod = pytest.importorskip(
        "bms.controller", reason="the controller needs the C core (bms.core), not built yet")
    from hil.emulator.plant import ConstantCurrent

    (tmp_path / "pack.yaml").write_text(PACK_YAML)
    pack = load_pack(tmp_path / "pack.yaml")
    with FirmwareBoard(pack, seed=2, initial_soc=0.7,
                       load=ConstantCurrent(current_a=-3.0)) as fw:
        ctl = controller_mod.Controller(pack, [fw.path], clock="sim", timeout_s=5.0)
        ctl.open()
        ctl.request_close()
        summary = ctl.run(15.0)
        assert summary["state"] == "CLOSED", summary
        latched = [f for f in summary["faults"] if f.get("latched")]
        assert not latched, latched
        truth = fw.plant.truth()
        assert fw.plant.outputs.contactor_pos and fw.plant.outputs.contactor_neg
        assert truth.current_a == pytest.approx(-3.0, abs=0.2)  # the load runs through the pins
        board = summary["boards"][0]
        assert board["measurements"] >= 140 and not board["lost"]
        # Controller silent (no more ticks), host keeps sampling only: the board opens itself.
        client = ctl.stacks[0].client
        for _ in range(15):
            m = client.sample(0.1)
        assert m.status & (1 << 3)  # WATCHDOG_TRIPPED
        assert not fw.plant.outputs.contactor_pos
        ctl.close()
