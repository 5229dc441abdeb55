"""The steady-CLOSED shortcut of ContactorStateMachine.update against the full path.

Two machines get the same random sequence of inputs and requests (feedback that follows the
command, welds, a contactor that drops out, faults, invalid data, close/open/reset requests),
one with the shortcut and one without: every tick's state, outputs, events and faults, and
the machines' whole state after it, must agree. (Dropping any one of the shortcut's
conditions fails it: checked for the feedback, the supervised outputs, the critical flag and
the precharge relay.)
"""

from __future__ import annotations

import copy
import random

import pytest

from bms.contactors import (
    ALL_RELAYS,
    CONTACTOR_POS,
    ContactorInputs,
    ContactorState,
    ContactorStateMachine,
)
from boards.config import load_pack

CFG = load_pack("ssb-23").contactors
STACK_V = 86.0


def _run(seed: int, shortcut: bool, n: int = 3000) -> tuple[list[tuple], int]:
    rng = random.Random(seed)
    sm = ContactorStateMachine(CFG)
    sm.steady_shortcut = shortcut
    trace: list[tuple] = []
    fb, bus, t = 0, 0.0, 0.0
    fault = critical = False
    valid, no_feedback, welded, dropped = True, False, False, False
    shortcuts = 0
    for _ in range(n):
        r = rng.random()
        if r < 0.003:
            sm.request_open()
        elif r < 0.03:
            sm.request_close()
        elif r < 0.04:
            sm.request_reset()
        if rng.random() < (0.002 if not fault else 0.05):
            fault = not fault
        if rng.random() < (0.001 if not critical else 0.05):
            critical = not critical
        if rng.random() < (0.002 if valid else 0.1):
            valid = not valid
        if rng.random() < 0.005:
            no_feedback = not no_feedback
        if rng.random() < (0.001 if not welded else 0.05):
            welded = not welded
        if rng.random() < (0.002 if not dropped else 0.2):
            dropped = not dropped
        steady = (sm.state is ContactorState.CLOSED and valid and not fault and not critical)
        out = sm.update(t, ContactorInputs(STACK_V, bus, None if no_feedback else fb, fault,
                                           critical, valid))
        shortcuts += steady and not out.events
        trace.append((t, out.state, out.outputs, out.events, out.faults,
                      copy.deepcopy({k: v for k, v in vars(sm).items()
                                     if k != "steady_shortcut"})))
        # The relays follow the command one tick later (or stay closed when welded, or POS
        # reads open for a few ticks when dropped); the bus follows the relays.
        fb = (out.outputs | (fb & CONTACTOR_POS)) if welded else out.outputs
        if dropped:
            fb &= ~CONTACTOR_POS
        bus = STACK_V if fb & ALL_RELAYS else bus * 0.5
        t = round(t + 0.1, 9)
    return trace, shortcuts


@pytest.mark.parametrize("seed", range(6))
def test_shortcut_equals_full_path(seed: int) -> None:
    fast, steady_ticks = _run(seed, True)
    full, _ = _run(seed, False)
    assert steady_ticks > 200  # the shortcut's conditions held on many ticks
    for a, b in zip(fast, full, strict=True):
        assert a == b, f"seed {seed}, t = {a[0]}"
