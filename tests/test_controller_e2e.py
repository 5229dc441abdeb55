"""The controller end to end against the emulated board: a real emulator process on a real pty,
the real C core, the sim clock (deterministic, faster than real time).

Every protection (and the sensor, board-reset and lost-measurement faults) runs through
bms/app/latency.py's scenarios, the same runs that make the latency table of docs/safety.md
(bms campaign latency): inject -> detected within debounce + 1 tick (of the first tick after
the injection, or of the tick the measured value crossed the threshold for a ramp) -> contactor
command all open in that tick, at most debounce + 2 ticks -> record latched and attributed to
its stack and channel -> a reset asked at once is refused -> the cause removed, a reset is
accepted -> the pack closes again. Then precharge failure with retries, the critical/service
reset, one load cell open or stuck (warnings, no opening), and a board killed mid-run (SAFE,
never FAULT).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bms.app.latency import (
    LOG_TIME_TOL_S,
    Bench,
    Scenario,
    run_scenario,
    scenarios,
)
from bms.contactors import ContactorState
from bms.faults import FaultCode, Severity
from bms.runlog import load_events
from boards.config import load_pack
from hil.protocol import InjectedFault as Inject

PACK = load_pack("ssb-23")
TICK_S = PACK.controller.tick_s
SCENARIOS = {s.name: s for s in scenarios(PACK)}


def test_every_protection_has_a_scenario() -> None:
    missing = set(PACK.protections) - set(SCENARIOS)
    assert not missing, f"protections without an end-to-end scenario: {sorted(missing)}"


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_protection_end_to_end(name: str, tmp_path: Path) -> None:
    sc: Scenario = SCENARIOS[name]
    r = run_scenario(sc, PACK, tmp_path)
    ctx = f"{name}: {r}"

    # Nothing else was wrong before the injection (checked by the runner), and the fault was
    # attributed where it was injected.
    stack, cell = sc.where
    if stack is not None:
        assert r.raise_stack == stack, ctx
    if cell is not None:
        assert r.raise_cell == cell, ctx

    # Detected within debounce + 1 tick of the first tick that could see it.
    if sc.kind == "ramp":
        assert r.t_cross_s is not None, f"{name}: measured value never crossed: {ctx}"
        first_seen = r.t_cross_s
    else:
        first_seen = r.t_inject_s + TICK_S
    bound_s = r.debounce_s + r.physical_delay_s + TICK_S
    assert r.t_raise_s - first_seen <= bound_s + LOG_TIME_TOL_S, ctx
    # Not early either: a debounced level never asserts before its debounce has run.
    assert r.t_raise_s - first_seen >= r.debounce_s - LOG_TIME_TOL_S, ctx

    if sc.expect_state == ContactorState.SAFE:
        # Lost data: SAFE (all open) in the tick it is declared lost, no latched fault.
        assert r.state_after_fault == "SAFE" and r.outputs_at_raise == 0, ctx
        assert not r.fault_latched_at_raise, ctx
        assert r.latency_open_s <= r.bound_s + LOG_TIME_TOL_S, ctx
        assert r.state_after_reset == "STANDBY" and r.reclosed, ctx
        return

    # Contactors commanded open by the time the fault is raised, at most debounce + 2 ticks
    # after the injection (steps) or the crossing (ramps); the board confirms within 2 ticks
    # in lockstep, 3 in the pipelined sim clock (the command reaches the plant a tick later).
    assert r.outputs_at_raise == 0 and r.t_open_s is not None, ctx
    assert r.t_open_s <= r.t_raise_s + LOG_TIME_TOL_S, ctx
    assert r.latency_open_s <= r.bound_s + LOG_TIME_TOL_S, ctx
    assert r.state_after_fault in ("OPENING", "FAULT"), ctx
    assert r.t_feedback_open_s is not None
    assert r.t_feedback_open_s - r.t_raise_s <= 3 * TICK_S + LOG_TIME_TOL_S, ctx
    if name in PACK.protections:
        assert r.opened_by == [r.code], f"another fault opened first: {ctx}"

    # Reset asked at once: refused while the condition holds (a board reset is an event,
    # raised momentary: nothing holds, so its reset is accepted at once). The state machine
    # logs the refusal when the request meets it in FAULT (not while still OPENING).
    if sc.code == FaultCode.BOARD_RESET:
        assert not r.reset_refused, ctx
    else:
        assert r.reset_refused, ctx
        if r.state_after_fault == "FAULT":
            assert r.refused_event, ctx
    if sc.recoverable:
        assert r.reset_accepted and r.state_after_reset == "STANDBY" and r.reclosed, ctx
        assert not r.still_active_after_recovery, ctx
    else:
        # Over-voltage: an overcharged cell stays above the fault level at rest; the reset stays
        # refused because the condition still holds.
        assert not r.reset_accepted and r.state_after_reset == "FAULT", ctx
        assert r.code in r.still_active_after_recovery, ctx
    if sc.service_reset:
        assert r.extra.get("plain_reset_accepted") is False, ctx


def _bench(tmp_path: Path, **kw) -> Bench:
    return Bench(PACK, tmp_path / "log", **kw)


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipelined", "lockstep"])
def test_sim_clock_command_timing(tmp_path: Path, pipeline: bool) -> None:
    """Lockstep: a command of tick k acts on the plant before its step to t(k+1), so the
    feedback shows it in the next MEASUREMENT; pipelined: one tick later (docs/architecture.md).
    Both close the pack without a feedback fault."""
    with _bench(tmp_path, pipeline=pipeline) as b:
        c = b.c
        assert c.pipeline is pipeline
        b.ticks(2)
        c.request_close()
        seen: list[tuple[int, int]] = []  # (commanded outputs, feedback bits) per tick
        for _ in range(40):
            c.tick()
            seen.append((c.contactors.outputs, int(c.stacks[0].data.status) & 0x07))
        assert c.contactors.state == ContactorState.CLOSED, seen
        assert not c.table.fault_latched(), [r.code.name for r in c.table.latched()]
        first_cmd = next(i for i, (cmd, _) in enumerate(seen) if cmd)
        first_fb = next(i for i, (_, fb) in enumerate(seen) if fb)
        assert first_fb - first_cmd == (2 if pipeline else 1), seen


def test_welded_contactor_is_a_fault_that_comes_back_until_repaired(tmp_path: Path) -> None:
    """CONTACTOR_WELD on POS: an open request ends in FAULT (the feedback still shows POS
    closed after the opening timeout); a reset while it is still welded is accepted (the record
    is an event) but the mismatch comes back; once repaired, a reset holds and the pack closes
    again."""
    with _bench(tmp_path) as b:
        c = b.c
        b.close_contactors()
        b.ticks(5)
        b.inject(Inject.CONTACTOR_WELD, 0)
        c.request_open()
        assert b.tick_until(lambda: c.contactors.state == ContactorState.FAULT, 2.0), \
            c.contactors.state
        assert c.contactors.outputs == 0                       # everything commanded open
        b.ticks(1)
        assert int(c.stacks[0].data.status) & 0x01             # ... but POS reads closed
        rec = c.table.get(FaultCode.CONTACTOR_FEEDBACK_MISMATCH)
        assert rec is not None and rec.latched
        # Still welded: the reset is taken, then the feedback mismatch brings FAULT back.
        assert c.request_reset()
        b.ticks(1)
        assert c.contactors.state == ContactorState.STANDBY
        assert b.tick_until(lambda: c.contactors.state == ContactorState.FAULT, 2.0)
        assert c.table.get(FaultCode.CONTACTOR_FEEDBACK_MISMATCH).count == 2
        # Repaired.
        b.inject(Inject.CONTACTOR_WELD, 0, clear=True)
        b.ticks(3)
        assert c.request_reset()
        b.ticks(1)
        assert c.contactors.state == ContactorState.STANDBY
        b.ticks(10)
        assert c.contactors.state == ContactorState.STANDBY
        b.close_contactors()


def test_precharge_failure_retries_then_fault_and_retry_after_reset(tmp_path: Path) -> None:
    cfg = PACK.contactors
    with _bench(tmp_path) as b:
        c = b.c
        b.inject(Inject.PRECHARGE_FAIL)          # shorted link: the bus never charges
        c.request_close()
        assert b.tick_until(lambda: c.contactors.state == ContactorState.FAULT, 30.0), \
            c.contactors.state
        events = load_events(b.log_dir)
        attempts = [e for e in events if e.get("event") == "precharge_attempt"]
        timeouts = [e for e in events if e.get("event") == "precharge_timeout"]
        assert len(attempts) == 1 + cfg.precharge_retries
        assert [e["attempt"] for e in timeouts] == list(range(1, 2 + cfg.precharge_retries))
        rec = c.table.get(FaultCode.PRECHARGE_FAILURE)
        assert rec is not None and rec.latched
        # The bus stayed far below the precharge fraction on every attempt.
        assert all(e["bus_ratio"] < cfg.precharge_fraction for e in timeouts)
        # POS was never commanded while precharging failed.
        assert all(not (e.get("outputs", 0) & 0x01) for e in events if e.get("type") == "state")
        # Attempt spacing: timeout + pause between attempts.
        t = [e["time_s"] for e in attempts]
        assert all(abs((t1 - t0) - (cfg.precharge_timeout_s + 1.0)) < TICK_S + LOG_TIME_TOL_S
                   for t0, t1 in zip(t, t[1:], strict=False))
        # Repaired: reset (momentary record, nothing holds) and close again.
        b.inject(Inject.PRECHARGE_FAIL, clear=True)
        assert c.request_reset()
        b.ticks(1)
        assert c.contactors.state == ContactorState.STANDBY
        b.close_contactors()


def test_critical_needs_the_service_reset(tmp_path: Path) -> None:
    lim = PACK.protections["charge_overcurrent_a"]
    with _bench(tmp_path) as b:
        c = b.c
        b.close_contactors()
        b.run_for(1.0)
        b.inject(Inject.LOAD_CURRENT, value=lim.critical + 3.0)
        assert b.tick_until(lambda: c.table.critical_latched(), 1.0)
        assert c.contactors.outputs == 0
        b.inject(Inject.LOAD_CURRENT, clear=True)
        b.run_for(1.0)                           # current is 0: no condition holds any more
        assert not any(r.active for r in c.table.records() if r.severity >= Severity.FAULT)
        assert not c.request_reset()             # operator reset: the critical latch stays
        b.ticks(1)
        assert c.contactors.state == ContactorState.FAULT
        rec = c.table.get(FaultCode.CHARGE_OVERCURRENT, Severity.CRITICAL)
        assert rec is not None and rec.latched
        assert c.request_reset(service=True)     # service reset: cleared
        b.ticks(1)
        assert c.contactors.state == ContactorState.STANDBY
        b.close_contactors()


def test_one_load_cell_open_or_stuck_is_a_warning_only(tmp_path: Path) -> None:
    with _bench(tmp_path) as b:
        c = b.c
        b.close_contactors()
        b.run_for(1.0)
        b.inject(Inject.LOADCELL_OPEN, 1)
        b.inject(Inject.LOADCELL_STUCK, 2)
        b.run_for(5.0)                           # stuck needs 20 identical samples
        assert c.table.get(FaultCode.LOAD_CELL_OPEN, stack=0, cell=1).active
        assert c.table.get(FaultCode.LOAD_CELL_STUCK, stack=0, cell=2).active
        assert c.contactors.state == ContactorState.CLOSED and not c.table.fault_latched()
        # The pressure protections keep running on the two good load cells.
        assert c.stacks[0].out.pressure_mean_kpa == pytest.approx(
            float(c.stacks[0].data.pressure_kpa[[0, 3]].mean()), rel=1e-9)


def test_board_killed_mid_run_goes_safe_not_fault(tmp_path: Path) -> None:
    timeout = PACK.controller.measurement_timeout_s
    with _bench(tmp_path, timeout_s=0.05) as b:
        c = b.c
        b.close_contactors()
        b.run_for(2.0)
        t_kill = c.time_s
        b.emus[0].kill()                         # SIGKILL: the board vanishes, pty and all
        assert b.tick_until(lambda: c.contactors.state == ContactorState.SAFE, 2.0)
        assert c.time_s - t_kill <= timeout + 2 * TICK_S + LOG_TIME_TOL_S
        assert c.contactors.outputs == 0
        b.run_for(5.0)                           # it cannot come back: stays SAFE, no latch
        assert c.contactors.state == ContactorState.SAFE
        assert not c.table.fault_latched()
        rec = c.table.get(FaultCode.MEASUREMENT_LOST)
        assert rec is not None and rec.active
        assert any(e.get("event") == "lost" for e in load_events(b.log_dir))


def test_pipelined_set_outputs_ack_is_collected_next_tick_and_a_nack_resends(
        tmp_path: Path) -> None:
    """Sim clock, pipelined: a SET_OUTPUTS leaves in step 6 and its ACK is collected after the
    next tick's MEASUREMENT (no round trip inside the tick). An ACK marks the outputs sent; a
    NACK found then makes the next tick send them again; the board is not marked lost."""
    from hil.client import BoardNackError
    from hil.protocol import MsgType, Nack, NackError

    with Bench(PACK, tmp_path / "log") as b:
        c, s = b.c, b.c.stacks[0].io  # the board's side of the stack
        b.close_contactors()
        b.ticks(3)
        assert s.ack_seq is None and s.outputs_sent is not None
        s.outputs_sent = None  # as after a change of outputs: sent again this tick
        c.tick()
        seq = s.ack_seq
        assert seq is not None and s.outputs_sent is None  # sent, not yet acknowledged
        c.tick()
        assert s.ack_seq is None and s.outputs_sent == s.outputs_pending  # ACK collected

        s.outputs_sent = None
        c.tick()
        assert s.ack_seq is not None
        real_wait_ack = s.client.wait_ack

        def refused(q: int, timeout_s: float | None = None) -> None:
            real_wait_ack(q, timeout_s)  # the board's answer is consumed ...
            raise BoardNackError(s.port, MsgType.SET_OUTPUTS,  # ... and read as a refusal
                                 Nack(int(MsgType.SET_OUTPUTS), int(NackError.BUSY), 0))

        s.client.wait_ack = refused  # type: ignore[method-assign]
        c.tick()
        s.client.wait_ack = real_wait_ack  # type: ignore[method-assign]
        assert s.outputs_sent is None and not s.lost
        assert s.ack_seq is not None  # sent again in the same tick's step 6
        c.tick()
        assert s.ack_seq is None and s.outputs_sent == s.outputs_pending
        assert c.contactors.state == ContactorState.CLOSED and not s.lost
