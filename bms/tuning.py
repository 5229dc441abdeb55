"""The control path's tunables that the pack file does not carry, each with its source.

Everything a bench may want to change about *this pack* (limits, debounce times, estimator
noise, balancing thresholds, contactor timings that depend on the hardware) is in the pack
file (``boards/packs/*.yaml``, validated by ``boards/config.py``). What is here is the BMS's own
behaviour: how it paces the link, how hard it derates, how long it waits before trusting data
again. A value with no paper or datasheet behind it says "assumption" and why it is safe.

One module for them (foxBMS 2 keeps its ``*_cfg`` apart from logic the same way); the logic
modules import from here and define no numbers of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

from bms.faults import FaultCode

# ---------------------------------------------------------------------- controller (tick)

#: While a warning of a current-driven quantity is active the allowed currents sent to the
#: boards are scaled by this factor (foxBMS 2 derates at its maximum-operating level the same
#: way; the factor is an assumption). Less current cannot help a leak or a pressure imbalance,
#: so their warnings are events only.
WARNING_DERATE = 0.5
DERATING_CODES = frozenset({
    FaultCode.CELL_OVERVOLTAGE, FaultCode.CELL_UNDERVOLTAGE,
    FaultCode.CELL_OVERTEMPERATURE_CHARGE, FaultCode.CELL_OVERTEMPERATURE_DISCHARGE,
    FaultCode.CELL_UNDERTEMPERATURE_CHARGE, FaultCode.CELL_UNDERTEMPERATURE_DISCHARGE,
    FaultCode.CHARGE_OVERCURRENT, FaultCode.DISCHARGE_OVERCURRENT,
})
#: HEARTBEAT period: five beats per board watchdog timeout (read from the board's INFO), at
#: most one per tick (assumption: at 10 Hz every other tick, so one lost or late beat -- also
#: the pipelined sim clock's tick of delay -- is far from tripping a 1 s watchdog; a beat per
#: 100 Hz tick would only load the link).
HEARTBEATS_PER_TIMEOUT = 5
#: Explicit garbage collection period of Controller.run (the automatic collector is off: an
#: automatic generation-2 collection inside a tick costs milliseconds; measured with
#: ``bms bench --tick``).
GC_EVERY_TICKS = 100

# ---------------------------------------------------------------------- board I/O

#: Allowed currents sent to a board are refreshed when they move by more than this (or every
#: OUTPUT_REFRESH_S): a charger follows them within its own regulation band anyway
#: (assumption).
LIMIT_RESEND_A = 0.5
#: Unchanged outputs are sent again this often (the ACK already confirms each change; this only
#: covers a board that lost its state without us noticing; assumption).
OUTPUT_REFRESH_S = 5.0
#: A lost board's port is closed and opened again this often (USB CDC re-enumeration after a
#: board reset takes about a second on Linux; assumption).
RECONNECT_PERIOD_S = 2.0

# ---------------------------------------------------------------------- contactors


@dataclass(frozen=True)
class ContactorTiming:
    """Contactor state machine timings that the pack file does not carry (assumptions,
    documented in docs/safety.md)."""

    #: Pause with everything open between precharge attempts; lets the precharge resistor
    #: cool (assumption: 1 s; precharge resistors are rated for a few pulses in a row).
    retry_pause_s: float = 1.0
    #: Feedback may lag the command: contactors open in ~10-20 ms (TE EV200-class datasheets)
    #: and the feedback arrives with the next MEASUREMENT (the one after in the pipelined sim
    #: clock), so 0.3 s is a few ticks at 10 Hz (assumption).
    opening_timeout_s: float = 0.3
    feedback_timeout_s: float = 0.3
    #: Valid data must be back this long before SAFE returns to STANDBY (assumption: 1 s, so
    #: a flapping link does not cycle the state).
    safe_recovery_s: float = 1.0


# ---------------------------------------------------------------------- balancing

#: Bleed duty-cycle period (assumption: 10 s, a small fraction of a bleed resistor's thermal
#: time constant of minutes, so the resistor sees the average power).
BALANCE_PERIOD_S = 10.0
#: Voltage-mode balancing runs near the top of charge only, where the OCV slope turns an SOC
#: difference into a measurable voltage difference: above this SOC's OCV (assumption, the
#: flat middle of a solid-state cell's OCV hides a few % of SOC in millivolts).
TOP_OF_CHARGE_SOC = 0.9
