"""The current check in C (csrc/ssb_current.c, ``CurrentPlausibility(engine="c")``, what the
controller runs) against its Python reference (``engine="reference"``): long random sequences on
1 to 4 stacks drive both with the same innovations, currents and rest flags; every tick the
stacks raised, the fault table's events, the reasons and the CUSUMs must be equal, and the
sequences reach every reason, raises and clears. The C under ASan/UBSan: tests/test_c_asan.py
("current")."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bms.current_check import CurrentPlausibility
from bms.faults import FaultTable
from bms.tuning import CURRENT_CHECK


@pytest.mark.parametrize("n_stacks", [1, 2, 3, 4])
def test_c_engine_makes_the_reference_decisions(n_stacks: int) -> None:
    rng = np.random.default_rng(n_stacks)
    c = CurrentPlausibility(n_stacks, CURRENT_CHECK, engine="c")
    ref = CurrentPlausibility(n_stacks, CURRENT_CHECK, engine="reference")
    tables = FaultTable(), FaultTable()
    reasons_seen: set[str] = set()
    bias = np.zeros(n_stacks)
    for k in range(4000):
        t = 0.1 * k
        if k % 250 == 0:  # a new episode: offsets, a common-mode drift, rest or not
            bias = rng.choice([0.0, 0.0, 3.0, -4.0], size=n_stacks)
            drift = float(rng.choice([0.0, 0.02, -0.03]))
            no_path = bool(rng.random() < 0.4)
        for s in range(n_stacks):
            if rng.random() < 0.05:
                continue  # this stack sent nothing this tick
            n_valid = 23 if rng.random() < 0.97 else int(rng.choice([2, 0]))
            median = math.nan if n_valid == 0 else drift + float(rng.normal(0.0, 0.004))
            sigma_sum = 0.05 if rng.random() < 0.98 else float(rng.choice([2.0, math.nan]))
            # the model's mean overpotential: at rest, under load, or none (NaN)
            op = float(rng.choice([0.0, float(rng.uniform(0.0, 0.5)), math.nan]))
            for e in (c, ref):
                e.innovation_stats(s, t, n_valid, median, sigma_sum, 23, op)
        current = 0.0 if no_path else float(rng.normal(-10.0, 20.0))
        currents = [current + b + float(rng.normal(0.0, 0.05)) for b in bias]
        for j in range(n_stacks):
            if rng.random() < 0.03:
                currents[j] = float(rng.choice([math.nan, math.inf]))
        got = c.step(t, currents, no_path, tables[0])
        want = ref.step(t, currents, no_path, tables[1])
        assert got == want, k
        events = [tb.drain_events() for tb in tables]
        assert events[0] == events[1], k
        for s in range(n_stacks):
            assert c.reason(s) == ref.reason(s), (k, s)
            assert c.cusum_v_s(s) == ref.cusum_v_s(s), (k, s)
            reasons_seen.add(c.reason(s))
    wanted = {"", "current with contactors open", "common-mode voltage innovation"}
    if n_stacks > 1:
        wanted.add("boards in series disagree")
    assert wanted <= reasons_seen


def test_unknown_engine_refused() -> None:
    with pytest.raises(ValueError, match="engine"):
        CurrentPlausibility(1, CURRENT_CHECK, engine="fortran")
