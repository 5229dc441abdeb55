"""Contactor state machine: STANDBY, PRECHARGE, CLOSED, OPENING, FAULT (latched), SAFE.

Pure logic: one :meth:`ContactorStateMachine.update` per tick with the tick's time and inputs;
it returns the output bits for SET_OUTPUTS (docs/protocol.md) and JSON-able events. No clock is
read here. The diagram and the rationale are in docs/safety.md.

Transitions (checked in this order every tick; the first that applies wins):

1. any state except FAULT, measurement invalid            -> SAFE (all open this tick)
2. fault flag (fault or critical latched) in PRECHARGE/CLOSED -> OPENING(cause fault), all open
   this tick; in STANDBY/SAFE -> FAULT; in OPENING the cause becomes fault
3. contactor feedback differs from the command for ``feedback_timeout_s`` -> FAULT
   (CONTACTOR_FEEDBACK_MISMATCH), through OPENING if anything was commanded closed
4. per state:
   - STANDBY: close requested, no fault -> PRECHARGE (attempt 1)
   - PRECHARGE: close NEG + PRECHARGE; bus >= fraction x stack voltage -> CLOSED (POS closes,
     PRECHARGE stays closed until POS feedback is seen: make before break). No success within
     ``precharge_timeout_s`` -> all open for ``retry_pause_s``, then the next attempt; after
     ``1 + precharge_retries`` failed attempts -> FAULT (PRECHARGE_FAILURE). Open requested ->
     OPENING.
   - CLOSED: POS + NEG. Open requested -> OPENING(cause request).
   - OPENING: all open; feedback all open, or ``opening_timeout_s`` -> STANDBY (request) or
     FAULT (fault). Still closed at the timeout -> FAULT (CONTACTOR_FEEDBACK_MISMATCH: welded).
   - FAULT: all open, latched. A reset request is accepted only when the fault flags are clear
     and the measurement is valid -> STANDBY; otherwise an event says why it was refused.
   - SAFE: all open. Measurement valid again for ``safe_recovery_s`` -> STANDBY.

A close request is an intent that holds until it is served or cancelled: any forced opening
(SAFE, FAULT) cancels it, so the pack never re-closes by itself after a fault or lost data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from bms.faults import FaultCode, FaultTable
from bms.tuning import ContactorTiming
from boards.config import TIME_EPS_S, ContactorConfig
from hil.protocol import Outputs

__all__ = ["ContactorState", "ContactorTiming", "ContactorInputs", "ContactorOutput",
           "ContactorStateMachine", "CONTACTOR_POS", "CONTACTOR_NEG", "PRECHARGE", "ALL_RELAYS"]

# The relay bits of SET_OUTPUTS and of the MEASUREMENT status feedback (one definition:
# hil.protocol.Outputs), as plain ints for the per-tick arithmetic.
CONTACTOR_POS = int(Outputs.CONTACTOR_POS)
CONTACTOR_NEG = int(Outputs.CONTACTOR_NEG)
PRECHARGE = int(Outputs.PRECHARGE)
ALL_RELAYS = CONTACTOR_POS | CONTACTOR_NEG | PRECHARGE


class ContactorState(IntEnum):
    """Numbers are HEARTBEAT ``bms_state`` (docs/protocol.md)."""

    STANDBY = 0
    PRECHARGE = 1
    CLOSED = 2
    OPENING = 3
    FAULT = 4
    SAFE = 5


@dataclass
class ContactorInputs:
    """One tick's inputs.

    ``feedback_bits``: MEASUREMENT status bits 0..2 (POS, NEG, PRECHARGE closed); None when the
    board gives no feedback (then the command is taken as the state).
    ``fault_active``: the fault table has a FAULT or CRITICAL record active or latched
    (``FaultTable.fault_latched()``); ``critical_active``: a CRITICAL one
    (``FaultTable.critical_latched()``). ``measurement_valid``: the safety data of this tick
    arrived in time and is usable.
    """

    stack_voltage_v: float
    bus_voltage_v: float
    feedback_bits: int | None = None
    fault_active: bool = False
    critical_active: bool = False
    measurement_valid: bool = True


@dataclass
class ContactorOutput:
    """What to send: ``outputs`` for SET_OUTPUTS, ``state`` for HEARTBEAT, events to log,
    ``faults`` (code, value) for the controller to raise (momentary) in its FaultTable."""

    state: ContactorState
    outputs: int
    events: list[dict[str, Any]] = field(default_factory=list)
    faults: list[tuple[FaultCode, float]] = field(default_factory=list)


class ContactorStateMachine:
    """See the module docstring for every transition."""

    def __init__(self, config: ContactorConfig, timing: ContactorTiming | None = None) -> None:
        self.config = config
        self.timing = timing or ContactorTiming()
        self.state = ContactorState.STANDBY
        self.outputs = 0
        self.attempt = 0                      # precharge attempt number, 1-based
        self._want_closed = False
        self._open_requested = False
        self._reset_requested = False
        self._service_reset = False
        self._state_since_s: float | None = None
        self._attempt_start_s = math.nan
        self._pausing = False
        self._opening_cause = "request"
        self._mismatch_since_s: float | None = None
        self._supervised_outputs: int | None = None
        self._mismatch_reported = False
        self._valid_since_s: float | None = None
        self._events: list[dict[str, Any]] = []
        self._faults: list[tuple[FaultCode, float]] = []
        self._now = 0.0

    # ------------------------------------------------------------------ requests

    def request_close(self) -> None:
        """Ask to connect the pack (served on the next update if allowed)."""
        self._want_closed = True
        self._open_requested = False

    def request_open(self) -> None:
        """Ask to disconnect the pack (normal opening, not a fault)."""
        self._want_closed = False
        self._open_requested = True

    def request_reset(self) -> None:
        """Ask to leave FAULT; accepted on the next update only if the reset's conditions hold
        (no FAULT/CRITICAL active or latched in the fault table, measurement valid). Call
        ``FaultTable.reset`` first so that cleared conditions are unlatched."""
        self._reset_requested = True

    # ------------------------------------------------------------------ per tick

    #: Take the steady-CLOSED shortcut of ``update`` (tests turn it off to hold it to the
    #: full path).
    steady_shortcut = True

    def update(self, time_s: float, inp: ContactorInputs) -> ContactorOutput:
        self._now = time_s
        outputs = self.outputs
        if (self.steady_shortcut and self.state is ContactorState.CLOSED
                and inp.measurement_valid and not inp.fault_active and not inp.critical_active
                and self._want_closed and not self._open_requested and not outputs & PRECHARGE
                and self._valid_since_s is not None and outputs == self._supervised_outputs
                and (inp.feedback_bits is None or inp.feedback_bits & ALL_RELAYS == outputs)):
            # Closed with valid data, no fault, no request, the feedback as commanded (the
            # usual tick): the full path changes nothing but these two, and emits nothing.
            self._mismatch_since_s = None
            self._reset_requested = False
            return ContactorOutput(self.state, outputs, [], [])
        if self._state_since_s is None:
            self._state_since_s = time_s
        self._step(time_s, inp)
        self._supervise_feedback(time_s, inp)
        self._reset_requested = False
        self._open_requested = False
        out = ContactorOutput(self.state, self.outputs, self._events, self._faults)
        self._events, self._faults = [], []
        return out

    @property
    def state_number(self) -> int:
        return int(self.state)

    # ------------------------------------------------------------------ internals

    def _go(self, state: ContactorState, reason: str, outputs: int | None = None) -> None:
        if outputs is not None:
            self.outputs = outputs
        if state != self.state:
            self._events.append({"type": "state", "time_s": self._now, "from": self.state.name,
                                 "to": state.name, "reason": reason,
                                 "outputs": self.outputs})
            self.state = state
            self._state_since_s = self._now
            self._mismatch_reported = False

    def _fault(self, reason: str, code: FaultCode | None = None, value: float = math.nan) -> None:
        """Force everything open; through OPENING if anything was closed."""
        self._want_closed = False
        if code is not None:
            self._faults.append((code, value))
        if self.outputs & ALL_RELAYS:
            self._opening_cause = "fault"
            self._go(ContactorState.OPENING, reason, 0)
        else:
            self._go(ContactorState.FAULT, reason, 0)

    def _step(self, t: float, inp: ContactorInputs) -> None:
        s = self.state
        S = ContactorState
        # 1. Missing safety data: SAFE wins over everything except the FAULT latch.
        if not inp.measurement_valid:
            self._valid_since_s = None
            if s == S.FAULT and self._reset_requested:
                self._events.append({"type": "contactor", "event": "reset_refused",
                                     "time_s": t, "reason": "measurement invalid"})
            if s != S.FAULT and s != S.SAFE:
                self._want_closed = False
                self._go(S.SAFE, "measurement invalid or lost", 0)
            return
        if self._valid_since_s is None:
            self._valid_since_s = t
        # 2. Confirmed fault or critical: open within this tick.
        if inp.fault_active or inp.critical_active:
            why = "critical fault" if inp.critical_active else "fault"
            if s in (S.PRECHARGE, S.CLOSED):
                self._fault(why)
                return
            if s in (S.STANDBY, S.SAFE):
                self._want_closed = False
                self._go(S.FAULT, why, 0)
                return
            if s == S.OPENING:
                self._opening_cause = "fault"
        if s == S.STANDBY:
            self.outputs = 0
            if self._want_closed:
                self.attempt = 1
                self._start_attempt(t)
                self._go(S.PRECHARGE, "close requested", CONTACTOR_NEG | PRECHARGE)
        elif s == S.PRECHARGE:
            self._precharge(t, inp)
        elif s == S.CLOSED:
            if self._open_requested or not self._want_closed:
                self._opening_cause = "request"
                self._go(S.OPENING, "open requested", 0)
            elif self.outputs & PRECHARGE:
                # Make before break: drop the precharge relay once POS is seen closed (or at
                # once without feedback).
                fb = inp.feedback_bits
                if fb is None or fb & CONTACTOR_POS:
                    self.outputs = CONTACTOR_POS | CONTACTOR_NEG
        elif s == S.OPENING:
            self.outputs = 0
            fb = inp.feedback_bits
            done = fb is None or (fb & ALL_RELAYS) == 0
            timed_out = t - self._state_since_s >= self.timing.opening_timeout_s
            if done or timed_out:
                if not done:
                    self._faults.append((FaultCode.CONTACTOR_FEEDBACK_MISMATCH, float(fb)))
                    self._go(S.FAULT, "contactor still closed after opening timeout")
                    self._mismatch_reported = True
                elif self._opening_cause == "fault":
                    self._go(S.FAULT, "opened after fault")
                else:
                    self._go(S.STANDBY, "opened")
        elif s == S.FAULT:
            self.outputs = 0
            if self._reset_requested:
                if inp.fault_active or inp.critical_active:
                    self._events.append({"type": "contactor", "event": "reset_refused",
                                         "time_s": t, "reason": "fault condition latched"})
                else:
                    self._go(S.STANDBY, "reset")
        elif s == S.SAFE:
            self.outputs = 0
            if t - self._valid_since_s >= self.timing.safe_recovery_s - TIME_EPS_S:
                self._go(S.STANDBY, "measurements valid again")

    def _start_attempt(self, t: float) -> None:
        self._attempt_start_s = t
        self._pausing = False
        self._events.append({"type": "contactor", "event": "precharge_attempt", "time_s": t,
                             "attempt": self.attempt})

    def _precharge(self, t: float, inp: ContactorInputs) -> None:
        S = ContactorState
        if self._open_requested or not self._want_closed:
            self._opening_cause = "request"
            self._go(S.OPENING, "open requested during precharge", 0)
            return
        if self._pausing:
            self.outputs = 0
            if t - self._attempt_start_s >= self.timing.retry_pause_s - TIME_EPS_S:
                self.attempt += 1
                self._start_attempt(t)
                self.outputs = CONTACTOR_NEG | PRECHARGE
            return
        self.outputs = CONTACTOR_NEG | PRECHARGE
        stack, bus = inp.stack_voltage_v, inp.bus_voltage_v
        ratio = bus / stack if (math.isfinite(stack) and math.isfinite(bus) and stack > 0) \
            else math.nan
        if ratio >= self.config.precharge_fraction:
            self._events.append({"type": "contactor", "event": "precharge_done", "time_s": t,
                                 "attempt": self.attempt, "bus_ratio": ratio,
                                 "duration_s": t - self._attempt_start_s})
            self._go(S.CLOSED, "precharge done", CONTACTOR_POS | CONTACTOR_NEG | PRECHARGE)
            return
        if t - self._attempt_start_s >= self.config.precharge_timeout_s - TIME_EPS_S:
            value = ratio if math.isfinite(ratio) else math.nan
            self._events.append({"type": "contactor", "event": "precharge_timeout", "time_s": t,
                                 "attempt": self.attempt,
                                 "bus_ratio": value if math.isfinite(value) else None})
            if self.attempt >= 1 + self.config.precharge_retries:
                self._fault("precharge failed", FaultCode.PRECHARGE_FAILURE, value)
                return
            self._pausing = True
            self._attempt_start_s = t
            self.outputs = 0

    def _supervise_feedback(self, t: float, inp: ContactorInputs) -> None:
        """Feedback must follow the command within feedback_timeout_s (OPENING has its own)."""
        fb = inp.feedback_bits
        if fb is None or self.state == ContactorState.OPENING or not inp.measurement_valid:
            self._mismatch_since_s = None
            return
        # The feedback of this tick answers a command sent one tick ago (two in the pipelined
        # sim clock); only a mismatch that outlasts the timeout counts, timed from the latest
        # change of the command (each command gets the whole timeout to show in the feedback:
        # precharge -> close -> drop precharge are three commands in a row).
        if self.outputs != self._supervised_outputs:
            self._supervised_outputs = self.outputs
            self._mismatch_since_s = None
        # PRECHARGE is only checked when the precharge relay should be closed (not during the
        # pause between attempts).
        if (fb & ALL_RELAYS) == self.outputs:
            self._mismatch_since_s = None
            return
        if self.state == ContactorState.CLOSED and self.outputs & PRECHARGE:
            # Make-before-break phase: PRECHARGE drops as soon as POS is seen.
            if fb & (CONTACTOR_POS | CONTACTOR_NEG) == CONTACTOR_POS | CONTACTOR_NEG:
                self._mismatch_since_s = None
                return
        if self._mismatch_since_s is None:
            self._mismatch_since_s = t
            return
        if t - self._mismatch_since_s >= self.timing.feedback_timeout_s - TIME_EPS_S:
            self._mismatch_since_s = None
            if self._mismatch_reported:
                return  # reported once per stay in a state (a welded contactor stays welded)
            self._events.append({"type": "contactor", "event": "feedback_mismatch", "time_s": t,
                                 "commanded": self.outputs, "feedback": fb & ALL_RELAYS})
            self._faults.append((FaultCode.CONTACTOR_FEEDBACK_MISMATCH, float(fb & ALL_RELAYS)))
            if self.state != ContactorState.FAULT:
                self._fault("contactor feedback mismatch")
            self._mismatch_reported = True


def record_faults(output: ContactorOutput, table: FaultTable, time_s: float) -> None:
    """Raise the state machine's faults (precharge failure, feedback mismatch) in the table.

    They are events without a condition the table could watch clear, so they are raised
    ``momentary``: latched (severity FAULT) until the next accepted reset.
    """
    for code, value in output.faults:
        table.raise_fault(code, time_s, value=value, momentary=True)
