"""One emulated ssb-23 run through the real controller over an ``emu://`` board in the sim
clock, for the tests of a check that the controller runs every tick (current offset, cooling,
link quality): a scenario written into the test's folder, the run, its summary. No test module
imports another; they share this."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bms.controller import Controller
from boards.config import load_pack
from hil.emulator.protocol_emu import emu_url, register

SCENARIOS = Path(__file__).resolve().parents[1] / "hil" / "scenarios"


def write_scenario(tmp_path: Path, data: dict[str, Any],
                   faults: list[dict[str, Any]]) -> Path:
    """``data`` with ``faults`` as tmp_path/scenario.yaml (a drive cycle's csv made absolute)."""
    data = dict(data, faults=faults)
    data["segments"] = [dict(seg, csv=str((SCENARIOS / seg["csv"]).resolve()))
                        if "csv" in seg else seg for seg in data["segments"]]
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def udds(tmp_path: Path, faults: list[dict[str, Any]]) -> Path:
    """hil/scenarios/udds.yaml with ``faults``, written into tmp_path."""
    data = yaml.safe_load((SCENARIOS / "udds.yaml").read_text(encoding="utf-8"))
    return write_scenario(tmp_path, data, faults)


def run_ssb23(scenario: Path, seed: int, duration_s: float, close: bool = True,
              log_dir: Path | None = None) -> tuple[Controller, dict[str, Any]]:
    """The controller over one emu:// ssb-23 board running ``scenario``: opened, contactors
    requested closed (``close``), run for ``duration_s`` simulated seconds, closed."""
    register()
    c = Controller(load_pack("ssb-23"), [emu_url("ssb-23", 0, seed=seed, scenario=str(scenario))],
                   clock="sim", log_dir=log_dir)
    c.open()
    if close:
        c.request_close()
    try:
        c.run(duration_s)
    finally:
        summary = c.close()
    return c, summary
