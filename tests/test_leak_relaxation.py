"""A heavy discharge then a rest is not a leak (the leak filter's relaxation bias).

After a 3C discharge at 10 C the cells relax for many minutes, each a little differently;
before the leak filter carried the voltage's relaxation bias as a state, that difference
moving at zero current read as a leak: CELL_LEAK warnings at rest in 9 of 10 plant seeds, and
in seed 4 two CELL_LEAK faults (docs/estimation.md, "Leak"). The real controller over an
emu:// board, sim clock."""

from __future__ import annotations

from pathlib import Path

from emu_runs import run_ssb23, write_scenario

DISCHARGE_3C = {
    "schema": "ssb-bms/scenario/1", "name": "discharge-3c-rest",
    "initial": {"soc": 0.95, "temperature_c": 10.0},
    "segments": [{"kind": "rest", "duration_s": 10},
                 {"kind": "current", "current_a": -15.0, "duration_s": 1500,
                  "until_min_cell_v": 3.1},
                 {"kind": "rest", "duration_s": 1800}],
}


def test_rest_after_3c_discharge_at_10c_raises_no_leak(tmp_path: Path) -> None:
    # seed 4: the worst of the seeds before (warnings on cells 1, 4, 20; faults on 1 and 4)
    c, summary = run_ssb23(write_scenario(tmp_path, DISCHARGE_3C, []), seed=4,
                           duration_s=1700.0)
    names = [f["name"] for f in summary["faults"]]
    assert "CELL_LEAK" not in names, summary["faults"]
    # the discharge happened and ended: the rest is what is judged
    assert c.stacks[0].core.soc.mean() < 0.25
    # what took the relaxation: the bias state, non-zero on the cells at the end of the rest
    # judged (the filter still runs; it is not switched off at rest)
    assert abs(c.stacks[0].core.leak_r).max() > 1e-4
