"""The stack chain (bms/stack_step.py, csrc/ssb_stack.c): front end, core and the stack's figures
in one C call give the run of the separate calls it replaces, byte for byte.

Each case runs the real controller twice over ``emu://`` boards with the same seeds: once as it
runs (every fast-lane answer after a stack's first through the chain), once with the chain
never made (the front end's call, ``Core.step`` and the Python sums, the reference), and the two
run logs must agree by tools/compare_runs.py. The faults tour drives the diagnosis paths
(open wire, stuck load cells, jumps, implausible current); the 4-stack run the pack-wide arrays
and the bleed pointers into them; the commissioned run the load-cell imbalance against a
baseline with offsets (the others' baselines are recorded at 1 s, after the first steps). Beside the
logs, the figures that reach them only through a threshold are compared tick by tick. The C
under ASan/UBSan: tests/test_c_asan.py ("stack").
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
         lockstep: bool = False, commissioned: bool = False) -> tuple[int, list]:
    """One run into ``log``: the number of stacks that ran on the chain, and each tick's
    figures the chain makes that reach the log only through a protection or a limit (the
    load-cell imbalance, the CCD conditions, stack voltage and SOF limits, the current check's
    CUSUM). ``commissioned``: each stack's load-cell baseline given with offsets, as ``bms
    commission`` records it."""
    register()
    pack = load_pack(pack_name)
    ports = [emu_url(pack.path, k, seed=1 + k, scenario=scenario)
             for k in range(len(pack.stacks))]
    c = Controller(pack, ports, clock="sim", log_dir=log, pipeline=not lockstep)
    if not chain:
        for s in c.stacks:
            s.chain_tried = True  # never made: the separate calls on every tick
    if commissioned:
        for s in c.stacks:
            assert s.baseline is not None
            s.baseline.restore([1.01, 0.99, 1.02, 0.98], [3.0, -2.0, 0.5, -1.0])
    figures: list = []

    def record(ctl: Controller) -> None:
        figures.append((ctl._p_imbalance_kpa.tolist(), [
            (s.ccd_pressure_kpa, s.ccd_temperature_c, s.ccd_limit_a, s.stack_voltage_v,
             s.charge_limit_a, s.discharge_limit_a, ctl.current_check.cusum_v_s(s.index),
             s.last_timestamp_s, s.measurements) for s in ctl.stacks]))

    c.open()
    c.request_close()
    c.run(seconds, on_tick=record)
    c.close()
    return sum(s.chain is not None for s in c.stacks), figures


@pytest.mark.parametrize(("pack", "scenario", "seconds", "lockstep", "commissioned"), [
    ("ssb-23", "faults-tour", 720.0, False, False),
    ("ssb-4x23", "udds", 20.0, False, False),
    ("ssb-23", "demo", 60.0, True, False),
    ("ssb-23", "udds", 30.0, False, True),
])
def test_chain_gives_the_run_of_the_separate_calls(tmp_path: Path, pack: str, scenario: str,
                                                   seconds: float, lockstep: bool,
                                                   commissioned: bool) -> None:
    n_stacks = len(load_pack(pack).stacks)
    chained, chain_figures = _run(pack, scenario, seconds, True, tmp_path / "chain", lockstep,
                                  commissioned)
    calls, call_figures = _run(pack, scenario, seconds, False, tmp_path / "calls", lockstep,
                               commissioned)
    assert (chained, calls) == (n_stacks, 0)
    assert compare(tmp_path / "chain", tmp_path / "calls") == []
    # NaN-aware equality, tick by tick (repr: the exact float, NaN equal to NaN)
    assert repr(chain_figures) == repr(call_figures)
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



def test_usual_tick_reads_the_result_and_refreshes_the_output_as_the_fields_say(
        tmp_path: Path) -> None:
    """The usual tick's shortcuts (StackStep.vals: the result struct in one unpack;
    Core.refresh_output and the ValidatedStack's scalars: the stack's one output and data
    records refreshed in place) hold what the struct's fields and a fresh Core.output() hold,
    every tick of a 4-stack run."""
    from dataclasses import astuple

    from bms import _core
    register()
    pack = load_pack("ssb-4x23")
    ports = [emu_url(pack.path, k, seed=1 + k, scenario="udds") for k in range(4)]
    c = Controller(pack, ports, clock="sim", log_dir=tmp_path / "run")
    names = [f for f, _ in _core.ffi.typeof("ssb_stack_result_t").fields]
    checked = [0, 0]

    def check(ctl: Controller) -> None:
        for s in ctl.stacks:
            if s.chain is None or not s.chain.usual:
                continue
            r = s.chain._res
            assert repr(s.chain.vals) == repr(tuple(getattr(r, f) for f in names))
            checked[0] += 1
            d, v = s.data, s.validator
            assert d.cell_voltage_v is v._v_out and d.temperature_c is v._t_out
            assert d.pressure_kpa is v._p_out
            assert repr((d.time_s, d.current_a, d.bus_voltage_v, d.status, d.timestamp_ms)) \
                == repr((ctl.time_s, r.current_a, r.bus_voltage_v, r.status, r.timestamp_ms))
            assert repr(astuple(s.out)) == repr(astuple(s.core.output()))
            checked[1] += s.out is not None

    c.open()
    c.request_close()
    c.run(10.0, on_tick=check)
    c.close()
    assert checked[0] > 300 and checked[1] == checked[0]
