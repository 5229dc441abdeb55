"""The stack chain (bms/stack_step.py, csrc/ssb_stack.c): front end, core and the stack's figures
in one C call give the run of the separate calls it replaces, byte for byte.

Each case runs the real controller twice over ``emu://`` boards with the same seeds: once as it
runs (every fast-lane answer after a stack's first through the chain), once with the chain
never made (the front end's call, ``Core.step`` and the Python sums, the reference), and the two
run logs must agree by tools/compare_runs.py. The faults tour drives the diagnosis paths
(open wire, stuck load cells, jumps, implausible current); the 4-stack run the pack-wide arrays
and the bleed pointers into them. The C under ASan/UBSan: tests/test_c_asan.py ("stack").
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bms.controller import Controller
from boards.config import load_pack
from hil.emulator.protocol_emu import emu_url, register

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from compare_runs import compare  # noqa: E402


def _run(pack_name: str, scenario: str, seconds: float, chain: bool, log: Path,
         lockstep: bool = False) -> int:
    """One run into ``log``; the number of stacks that ran on the chain."""
    register()
    pack = load_pack(pack_name)
    ports = [emu_url(pack.path, k, seed=1 + k, scenario=scenario)
             for k in range(len(pack.stacks))]
    c = Controller(pack, ports, clock="sim", log_dir=log, pipeline=not lockstep)
    if not chain:
        for s in c.stacks:
            s.chain_tried = True  # never made: the separate calls on every tick
    c.open()
    c.request_close()
    c.run(seconds)
    c.close()
    return sum(s.chain is not None for s in c.stacks)


@pytest.mark.parametrize(("pack", "scenario", "seconds", "lockstep"), [
    ("ssb-23", "faults-tour", 720.0, False),
    ("ssb-4x23", "udds", 30.0, False),
    ("ssb-23", "demo", 120.0, True),
])
def test_chain_gives_the_run_of_the_separate_calls(tmp_path: Path, pack: str, scenario: str,
                                                   seconds: float, lockstep: bool) -> None:
    n_stacks = len(load_pack(pack).stacks)
    assert _run(pack, scenario, seconds, True, tmp_path / "chain", lockstep) == n_stacks
    assert _run(pack, scenario, seconds, False, tmp_path / "calls", lockstep) == 0
    assert compare(tmp_path / "chain", tmp_path / "calls") == []
    if scenario == "faults-tour":  # the tour reached its faults: the diagnosis ran
        events = (tmp_path / "chain" / "events.jsonl").read_text()
        assert events.count('"type":"fault"') >= 10


def test_chain_is_not_made_for_the_reference_front_end(tmp_path: Path) -> None:
    """A validator on the NumPy reference cannot be chained: the stack keeps the calls."""
    register()
    pack = load_pack("ssb-23")
    c = Controller(pack, [emu_url(pack.path, 0, seed=1, scenario="udds")], clock="sim",
                   log_dir=tmp_path / "ref")
    c.stacks[0].validator.engine = "reference"
    c.open()
    c.run(1.0)
    c.close()
    assert c.stacks[0].chain_tried and c.stacks[0].chain is None
