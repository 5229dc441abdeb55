"""One compiled module per layer (csrc/build_core.py): an emulator process loads the wire codec
and the plant, never the BMS's estimator binary; the BMS side loads no plant."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BMS = Path(sys.executable).with_name("bms")


def _mapped_modules(pid: int) -> set[str]:
    """File names of the shared objects mapped into process pid (/proc/PID/maps)."""
    names = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[5].endswith(".so"):
            names.add(Path(parts[5]).name)
    return names


def test_running_emulator_never_maps_the_estimator_binary() -> None:
    p = subprocess.Popen([str(BMS), "emulate", "--pack", "ssb-23", "--clock", "sim"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert p.stdout is not None
        path = p.stdout.readline().decode().strip()
        assert path.startswith("/dev/"), p.stderr.read().decode() if p.stderr else ""
        # The plant is built before the path is printed; read the maps until both modules show
        # (bounded), rather than sleeping a fixed time.
        deadline = time.monotonic() + 5.0
        mapped = _mapped_modules(p.pid)
        while not any(n.startswith("_plant.") for n in mapped) and time.monotonic() < deadline:
            mapped = _mapped_modules(p.pid)
        assert any(n.startswith("_wire.") for n in mapped), sorted(mapped)
        assert any(n.startswith("_plant.") for n in mapped), sorted(mapped)
        assert not any(n.startswith("_core.") for n in mapped), sorted(mapped)
    finally:
        p.kill()
        p.wait(timeout=5)


def test_bms_control_path_loads_no_plant() -> None:
    code = ("import sys, bms.controller, bms.core, bms.protections, bms.validation, bms.runlog\n"
            "print(sorted(m for m in sys.modules if m.startswith(('hil.emulator', 'bms._core',"
            " 'hil._wire'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert "hil.emulator" not in out, out


def test_emulator_modules_import_without_the_bms_package() -> None:
    code = ("import sys, hil.emulator.board, hil.emulator.cli, hil.emulator.plant\n"
            "from hil.emulator.plant import Plant\n"
            "from boards.config import load_board, load_pack\n"
            "Plant(load_pack('ssb-23'), 0, load_board('emu-23'), seed=1).step(0.1)\n"
            "print(sorted(m for m in sys.modules if m == 'bms' or m.startswith('bms.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", out
