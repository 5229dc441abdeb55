"""Fault codes (DTC-like) and the fault table that records them.

Every protection in :data:`boards.config.PROTECTION_NAMES`, every sensor and link fault, board
reset, board watchdog and precharge failure has one :class:`FaultCode` (a stable number, a text
and a default severity). The :class:`FaultTable` keeps one :class:`FaultRecord` per
``(code, severity, stack, cell)``: first and last time, how often it was raised, the value that
triggered it, whether its condition is active now and whether it is latched.

Severity and reaction (docs/safety.md):

- ``WARNING``: event + derate; not latched; clears when the condition clears.
- ``FAULT``: contactors open, record latched until :meth:`FaultTable.reset`.
- ``CRITICAL``: contactors open at once, latched; only a *service* reset
  (``reset(..., include_critical=True)``) clears it.

The table never reads a clock: every call takes ``time_s`` (the controller's simulated or
monotonic clock). Raising an already active record only updates ``last_time_s``; the table only
produces an event on a transition, so the hot path costs one dict lookup per reported transition.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any

from boards.config import PROTECTION_NAMES, PROTECTIONS


class Severity(IntEnum):
    """Ordered: a higher value is more severe. Numbers are written to the run log."""

    WARNING = 1
    FAULT = 2
    CRITICAL = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Severity:
        return cls[label.upper()]


class FaultCode(IntEnum):
    """Stable DTC-like numbers: 1xx protections, 2xx sensors, 3xx link/board, 4xx contactors,
    5xx vehicle (CAN), 6xx thermal management.

    Numbers never change meaning once released; new codes get new numbers.
    """

    # 1xx: protections, same order as config.PROTECTION_NAMES (the level is the severity).
    CELL_OVERVOLTAGE = 101
    CELL_UNDERVOLTAGE = 102
    CELL_OVERTEMPERATURE_CHARGE = 103
    CELL_OVERTEMPERATURE_DISCHARGE = 104
    CELL_UNDERTEMPERATURE_CHARGE = 105
    CELL_UNDERTEMPERATURE_DISCHARGE = 106
    CHARGE_OVERCURRENT = 107
    DISCHARGE_OVERCURRENT = 108
    STACK_PRESSURE_LOW = 109
    STACK_PRESSURE_HIGH = 110
    STACK_PRESSURE_RATE = 111
    STACK_PRESSURE_RESIDUAL = 112
    LOAD_CELL_IMBALANCE = 113
    CELL_LEAK = 114
    # 2xx: sensors.
    CELL_VOLTAGE_OPEN_WIRE = 201
    CELL_VOLTAGE_IMPLAUSIBLE = 202
    THERMISTOR_OPEN = 203
    THERMISTOR_SHORT = 204
    THERMISTOR_IMPLAUSIBLE = 205
    LOAD_CELL_OPEN = 206
    LOAD_CELL_STUCK = 207
    PRESSURE_SIGNAL_INVALID = 208
    CURRENT_SENSOR = 209
    BUS_VOLTAGE_SENSOR = 210
    MONITOR_READ_ERROR = 211
    ESTIMATE_INVALID = 212
    CURRENT_SENSOR_OFFSET = 213
    # 3xx: link and board.
    MEASUREMENT_LOST = 301
    MEASUREMENT_LATE = 302
    # 303 was SEQUENCE_GAP: never raised (replies are matched by seq; a lost one is a
    # MEASUREMENT_LATE), removed; the number is not reused.
    TIMESTAMP_GAP = 304
    BOARD_RESET = 305
    BOARD_WATCHDOG_TRIPPED = 306
    BOARD_DATA_STALE = 307
    BOARD_MEASUREMENT_MISMATCH = 308
    BOARD_LOST = 309
    LINK_FRAME_ERRORS = 310
    # 4xx: contactors.
    PRECHARGE_FAILURE = 401
    CONTACTOR_FEEDBACK_MISMATCH = 402
    # 5xx: the vehicle side (CAN, bms/vehicle/).
    VEHICLE_HEARTBEAT_LOST = 501
    VEHICLE_FRAME_INVALID = 502
    # 6xx: thermal management (bms/thermal_check.py).
    COOLING_DEGRADED = 601


@dataclass(frozen=True)
class FaultInfo:
    """Static description of one code."""

    code: FaultCode
    text: str
    default_severity: Severity
    reaction: str


_W, _F, _C = Severity.WARNING, Severity.FAULT, Severity.CRITICAL
_LEVEL = "by level: warning derates, fault/critical open and latch"

FAULT_INFO: dict[FaultCode, FaultInfo] = {
    info.code: info
    for info in (
        FaultInfo(FaultCode.CELL_OVERVOLTAGE, "cell over-voltage", _F, _LEVEL),
        FaultInfo(FaultCode.CELL_UNDERVOLTAGE, "cell under-voltage", _F, _LEVEL),
        FaultInfo(FaultCode.CELL_OVERTEMPERATURE_CHARGE, "over-temperature (charge limits)", _F,
                  _LEVEL),
        FaultInfo(FaultCode.CELL_OVERTEMPERATURE_DISCHARGE, "over-temperature (discharge limits)",
                  _F, _LEVEL),
        FaultInfo(FaultCode.CELL_UNDERTEMPERATURE_CHARGE, "under-temperature (charge limits)", _F,
                  _LEVEL),
        FaultInfo(FaultCode.CELL_UNDERTEMPERATURE_DISCHARGE,
                  "under-temperature (discharge limits)", _F, _LEVEL),
        FaultInfo(FaultCode.CHARGE_OVERCURRENT, "charge over-current", _F, _LEVEL),
        FaultInfo(FaultCode.DISCHARGE_OVERCURRENT, "discharge over-current", _F, _LEVEL),
        FaultInfo(FaultCode.STACK_PRESSURE_LOW, "stack pressure low (contact loss)", _F, _LEVEL),
        FaultInfo(FaultCode.STACK_PRESSURE_HIGH, "stack pressure high", _F, _LEVEL),
        FaultInfo(FaultCode.STACK_PRESSURE_RATE, "stack pressure rate of change", _F, _LEVEL),
        FaultInfo(FaultCode.STACK_PRESSURE_RESIDUAL,
                  "stack pressure residual (swelling or gas)", _F, _LEVEL),
        FaultInfo(FaultCode.LOAD_CELL_IMBALANCE, "load-cell imbalance (tilt or delamination)", _F,
                  _LEVEL),
        FaultInfo(FaultCode.CELL_LEAK, "cell leak current (soft short)", _F, _LEVEL),
        FaultInfo(FaultCode.CELL_VOLTAGE_OPEN_WIRE, "cell voltage tap open wire", _F,
                  "open and latch: the cell is unprotected"),
        FaultInfo(FaultCode.CELL_VOLTAGE_IMPLAUSIBLE, "cell voltage invalid or implausible", _F,
                  "open and latch: the cell is unprotected"),
        FaultInfo(FaultCode.THERMISTOR_OPEN, "thermistor open", _F,
                  "open and latch: temperature unknown"),
        FaultInfo(FaultCode.THERMISTOR_SHORT, "thermistor short", _F,
                  "open and latch: temperature unknown"),
        FaultInfo(FaultCode.THERMISTOR_IMPLAUSIBLE, "temperature invalid or implausible", _F,
                  "open and latch: temperature unknown"),
        FaultInfo(FaultCode.LOAD_CELL_OPEN, "load cell open or not ready", _W,
                  "event; the stack pressure uses the remaining load cells"),
        FaultInfo(FaultCode.LOAD_CELL_STUCK, "load cell stuck", _W,
                  "event; the stack pressure uses the remaining load cells"),
        FaultInfo(FaultCode.PRESSURE_SIGNAL_INVALID, "stack pressure signal invalid", _F,
                  "open and latch: contact pressure unknown"),
        FaultInfo(FaultCode.CURRENT_SENSOR, "current sensor invalid", _F,
                  "open and latch: current unknown"),
        FaultInfo(FaultCode.BUS_VOLTAGE_SENSOR, "bus voltage sensor invalid", _W,
                  "event; precharge cannot succeed without it"),
        FaultInfo(FaultCode.MONITOR_READ_ERROR, "monitor or amplifier read error (board)", _W,
                  "event; the affected channels read invalid"),
        FaultInfo(FaultCode.ESTIMATE_INVALID, "estimate invalid (core returned NaN)", _W,
                  "event + derate"),
        FaultInfo(FaultCode.CURRENT_SENSOR_OFFSET,
                  "current sensor offset (reads current with no path, biased innovations, "
                  "or disagrees with the boards in series)", _W,
                  "event + derate; contactors stay: the cell voltage and temperature "
                  "protections read their own sensors"),
        FaultInfo(FaultCode.MEASUREMENT_LOST, "measurement lost (timeout)", _W,
                  "safe state: all open until valid data is back"),
        FaultInfo(FaultCode.MEASUREMENT_LATE, "measurement late", _W, "event"),
        FaultInfo(FaultCode.TIMESTAMP_GAP, "board timestamp gap", _W, "event"),
        FaultInfo(FaultCode.BOARD_RESET, "board reset (new boot id)", _F,
                  "open and latch: the board dropped its outputs"),
        FaultInfo(FaultCode.BOARD_WATCHDOG_TRIPPED, "board watchdog tripped", _F,
                  "open and latch: heartbeats did not reach the board"),
        FaultInfo(FaultCode.BOARD_DATA_STALE, "board data stale (timestamp frozen)", _F,
                  "open and latch: the board repeats an old sample (a sampling or firmware "
                  "hang); its data is not used"),
        FaultInfo(FaultCode.BOARD_MEASUREMENT_MISMATCH,
                  "measurement does not match the board's INFO (channel counts)", _F,
                  "open and latch; the board is lost (controller.on_board_lost)"),
        FaultInfo(FaultCode.BOARD_LOST, "board lost (port gone or silent)", _W,
                  "safe state (MEASUREMENT_LOST); the run stops (controller.on_board_lost: "
                  "stop) or the port is reopened until the board is back (reconnect)"),
        # One row per check: debounce, source and assumption in bms/tuning.py
        # (LINK_QUALITY: 3 bad frames from one board within 10 s, assumption).
        FaultInfo(FaultCode.LINK_FRAME_ERRORS,
                  "board link frame errors (CRC or framing), repeatedly", _W,
                  "event: the frames were dropped and retried; the data that arrived is "
                  "checked, a lost one is MEASUREMENT_LATE / MEASUREMENT_LOST"),
        FaultInfo(FaultCode.PRECHARGE_FAILURE, "precharge failed after all retries", _F,
                  "open and latch"),
        FaultInfo(FaultCode.CONTACTOR_FEEDBACK_MISMATCH,
                  "contactor feedback differs from command (welded or not closing)", _F,
                  "open and latch"),
        # Default FAULT: the pack's vehicle.on_heartbeat_lost / on_invalid_frames "warn" raises
        # them as WARNING (event only) instead.
        FaultInfo(FaultCode.VEHICLE_HEARTBEAT_LOST, "vehicle heartbeat lost (CAN)", _F,
                  "open and latch (vehicle.on_heartbeat_lost: open; warn: event only)"),
        FaultInfo(FaultCode.VEHICLE_FRAME_INVALID,
                  "vehicle frames invalid (counter, checksum or length), repeatedly", _F,
                  "open and latch (vehicle.on_invalid_frames: open; warn: event only)"),
        # THERMAL_CHECK (bms/tuning.py): a CUSUM of measured minus modelled stack temperature,
        # 0.3 K allowance, 20 K s limit (assumption; the model: bms/thermal_check.py).
        FaultInfo(FaultCode.COOLING_DEGRADED,
                  "stack warmer than its heat and nominal cooling explain (cooling degraded)",
                  _W, "event + derate: less current, less heat; the temperature protections "
                  "still open at their limits"),
    )
}

#: Protection name (config.PROTECTION_NAMES) -> its fault code.
PROTECTION_CODES: dict[str, FaultCode] = dict(
    zip(PROTECTION_NAMES, (FaultCode(101 + i) for i in range(len(PROTECTION_NAMES))), strict=True)
)

#: What a record's ``cell`` indexes within its stack, by code (a cell, a thermistor or a load
#: cell); a code not listed has no channel (its record is a stack's or the pack's).
CHANNEL_KIND: dict[FaultCode, str] = {
    **{PROTECTION_CODES[name]: kind for name, kind in PROTECTIONS
       if kind in ("cell", "thermistor")},
    FaultCode.CELL_VOLTAGE_OPEN_WIRE: "cell",
    FaultCode.CELL_VOLTAGE_IMPLAUSIBLE: "cell",
    FaultCode.ESTIMATE_INVALID: "cell",  # cell_leak_a's (the residual's has no channel)
    FaultCode.THERMISTOR_OPEN: "thermistor",
    FaultCode.THERMISTOR_SHORT: "thermistor",
    FaultCode.THERMISTOR_IMPLAUSIBLE: "thermistor",
    FaultCode.LOAD_CELL_OPEN: "load cell",
    FaultCode.LOAD_CELL_STUCK: "load cell",
}


def fault_where(code: FaultCode, stack: int | None, cell: int | None) -> str:
    """Where a fault is, counted as people count (from 1): "stack 1 cell 8", "stack 1
    thermistor 3", "stack 2", "" (the pack). Every report prints this; events.jsonl and
    summary.json carry it as ``where`` beside the 0-based indices ``stack`` and ``cell``."""
    parts = [] if stack is None else [f"stack {stack + 1}"]
    if cell is not None:
        parts.append(f"{CHANNEL_KIND.get(code, 'channel')} {cell + 1}")
    return " ".join(parts)


#: Protection name -> the sensor code to raise when that protection's input is NaN.
SENSOR_CODE_FOR_PROTECTION: dict[str, FaultCode] = {
    "cell_overvoltage_v": FaultCode.CELL_VOLTAGE_IMPLAUSIBLE,
    "cell_undervoltage_v": FaultCode.CELL_VOLTAGE_IMPLAUSIBLE,
    "cell_overtemperature_charge_c": FaultCode.THERMISTOR_IMPLAUSIBLE,
    "cell_overtemperature_discharge_c": FaultCode.THERMISTOR_IMPLAUSIBLE,
    "cell_undertemperature_charge_c": FaultCode.THERMISTOR_IMPLAUSIBLE,
    "cell_undertemperature_discharge_c": FaultCode.THERMISTOR_IMPLAUSIBLE,
    "charge_overcurrent_a": FaultCode.CURRENT_SENSOR,
    "discharge_overcurrent_a": FaultCode.CURRENT_SENSOR,
    "stack_pressure_low_kpa": FaultCode.PRESSURE_SIGNAL_INVALID,
    "stack_pressure_high_kpa": FaultCode.PRESSURE_SIGNAL_INVALID,
    "stack_pressure_rate_kpa_per_s": FaultCode.PRESSURE_SIGNAL_INVALID,
    "stack_pressure_residual_kpa": FaultCode.ESTIMATE_INVALID,
    "load_cell_imbalance_kpa": FaultCode.PRESSURE_SIGNAL_INVALID,
    "cell_leak_a": FaultCode.ESTIMATE_INVALID,
}


def fault_text(code: FaultCode) -> str:
    return FAULT_INFO[code].text


def _json_value(value: float | None) -> float | None:
    """JSON has no NaN/inf: write them as null so every line stays strict JSON."""
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


@dataclass
class FaultRecord:
    """One fault of one channel at one severity (a DTC with its freeze-frame value)."""

    code: FaultCode
    text: str
    severity: Severity
    first_time_s: float
    last_time_s: float
    count: int
    trigger_value: float | None
    active: bool
    latched: bool
    stack: int | None = None
    cell: int | None = None
    cleared_time_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["code"] = int(self.code)
        d["name"] = self.code.name
        d["severity"] = self.severity.label
        d["trigger_value"] = _json_value(self.trigger_value)
        d["where"] = fault_where(self.code, self.stack, self.cell)
        return d


Key = tuple[FaultCode, Severity, int | None, int | None]


class FaultTable:
    """All fault records of a run, with raise/clear/reset transitions as JSON-able events.

    Usage per tick: ``raise_fault`` when a condition is confirmed, ``clear_fault`` when it is
    gone, then ``drain_events()`` to log what changed. ``fault_latched()`` /
    ``critical_latched()`` feed the contactor state machine.
    """

    def __init__(self) -> None:
        self._records: dict[Key, FaultRecord] = {}
        self._events: list[dict[str, Any]] = []
        self._flags: tuple[bool, bool, list[FaultRecord]] | None = None
        # Counts the changes of any record's active/latched state: a caller keys what it
        # derives from the active records on it (read every tick, changed rarely).
        self.changes = 0

    # ------------------------------------------------------------------ transitions

    def raise_fault(
        self, code: FaultCode, time_s: float, severity: Severity | None = None,
        value: float | None = None, stack: int | None = None, cell: int | None = None,
        momentary: bool = False,
    ) -> FaultRecord:
        """The condition of ``code`` is confirmed now. Returns its record.

        ``severity`` defaults to the code's default severity. A record that is already active is
        only touched (``last_time_s``); an inactive one becomes active, counts one more
        occurrence and takes ``value`` as its trigger value. FAULT and CRITICAL records latch.
        ``momentary=True`` is for events without a lasting condition (precharge failure, board
        reset): the record latches (if FAULT or worse) but is not left active, so a reset can
        clear it without a separate ``clear_fault``.
        """
        sev = FAULT_INFO[code].default_severity if severity is None else Severity(severity)
        key = (code, sev, stack, cell)
        rec = self._records.get(key)
        if rec is None:
            rec = FaultRecord(code=code, text=FAULT_INFO[code].text, severity=sev,
                              first_time_s=time_s, last_time_s=time_s, count=0,
                              trigger_value=value, active=False, latched=False,
                              stack=stack, cell=cell)
            self._records[key] = rec
        rec.last_time_s = time_s
        if rec.active:
            return rec
        rec.count += 1
        rec.trigger_value = value
        rec.active = not momentary
        rec.cleared_time_s = time_s if momentary else None
        if sev >= Severity.FAULT:
            rec.latched = True
        self._event("raise", rec, time_s, value)
        return rec

    def clear_fault(
        self, code: FaultCode, time_s: float, severity: Severity | None = None,
        value: float | None = None, stack: int | None = None, cell: int | None = None,
    ) -> FaultRecord | None:
        """The condition is gone. The record goes inactive; a latch stays until ``reset``."""
        sev = FAULT_INFO[code].default_severity if severity is None else Severity(severity)
        rec = self._records.get((code, sev, stack, cell))
        if rec is None or not rec.active:
            return None
        rec.active = False
        rec.last_time_s = time_s
        rec.cleared_time_s = time_s
        self._event("clear", rec, time_s, value)
        return rec

    def reset(self, time_s: float, include_critical: bool = False) -> bool:
        """Operator reset: unlatch every record whose condition is no longer active.

        CRITICAL latches are only cleared with ``include_critical=True`` (a service reset).
        Returns True when nothing at FAULT or worse is active or latched afterwards, i.e. the
        reset's conditions hold and the contactor state machine may leave FAULT.
        """
        for rec in self._records.values():
            if not rec.latched or rec.active:
                continue
            if rec.severity >= Severity.CRITICAL and not include_critical:
                continue
            rec.latched = False
            self._event("reset", rec, time_s, None)
        ok = not self.fault_latched()
        self._events.append({"type": "fault_reset", "time_s": time_s, "accepted": ok,
                             "service": include_critical})
        return ok

    def restore_latched(self, records: list[dict[str, Any]], time_s: float) -> list[str]:
        """Latched records of an earlier run (``FaultRecord.to_dict``, from a state file) come
        back latched and inactive: the contactors stay open until an operator reset, which
        is accepted once the protections no longer see the condition. One "restored" event
        per record. Returns their names; ValueError naming a record that is not one."""
        restored: list[FaultRecord] = []
        for d in records:
            try:
                code = FaultCode[d["name"]]
                sev = Severity.from_label(d["severity"])
                stack, cell = d.get("stack"), d.get("cell")
                rec = FaultRecord(
                    code=code, text=FAULT_INFO[code].text, severity=sev,
                    first_time_s=float(d["first_time_s"]), last_time_s=float(d["last_time_s"]),
                    count=int(d["count"]), trigger_value=_json_value(d.get("trigger_value")),
                    active=False, latched=True,
                    stack=None if stack is None else int(stack),
                    cell=None if cell is None else int(cell),
                    cleared_time_s=d.get("cleared_time_s"))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"latched fault record {d!r} is not one ({exc})") from None
            restored.append(rec)
        for rec in restored:
            self._records[(rec.code, rec.severity, rec.stack, rec.cell)] = rec
            self._event("restored", rec, time_s, rec.trigger_value)
        return [r.code.name for r in restored]

    # ------------------------------------------------------------------ queries

    def _summary_flags(self) -> tuple[bool, bool, list[FaultRecord]]:
        """(fault latched, critical latched, active records), recomputed only after a
        change: the tick loop asks every tick, the records change rarely."""
        flags = self._flags
        if flags is None:
            recs = self._records.values()
            flags = self._flags = (
                any(r.severity >= Severity.FAULT and (r.active or r.latched) for r in recs),
                any(r.severity >= Severity.CRITICAL and (r.active or r.latched) for r in recs),
                [r for r in recs if r.active])
        return flags

    def fault_latched(self) -> bool:
        """Any record at FAULT or worse active or latched (contactors must stay open)."""
        return self._summary_flags()[0]

    def critical_latched(self) -> bool:
        """Any CRITICAL record active or latched."""
        return self._summary_flags()[1]

    def latched_flags(self) -> tuple[bool, bool]:
        """(fault_latched(), critical_latched()) in one call (the tick asks both)."""
        flags = self._summary_flags()
        return flags[0], flags[1]

    def warning_active(self) -> bool:
        """Any record active at any severity (warnings ask the controller to derate)."""
        return any(r.active for r in self._records.values())

    def active(self) -> list[FaultRecord]:
        return list(self._summary_flags()[2])

    def latched(self) -> list[FaultRecord]:
        return [r for r in self._records.values() if r.latched]

    def get(self, code: FaultCode, severity: Severity | None = None, stack: int | None = None,
            cell: int | None = None) -> FaultRecord | None:
        sev = FAULT_INFO[code].default_severity if severity is None else Severity(severity)
        return self._records.get((code, sev, stack, cell))

    def records(self) -> list[FaultRecord]:
        return list(self._records.values())

    def drain_events(self) -> list[dict[str, Any]]:
        """JSON-able events since the last call (one dict per raise/clear/reset)."""
        out, self._events = self._events, []
        return out

    def summary(self) -> list[dict[str, Any]]:
        """Every record as a JSON-able dict, most severe and earliest first."""
        recs = sorted(self._records.values(), key=lambda r: (-r.severity, r.first_time_s,
                                                             int(r.code)))
        return [r.to_dict() for r in recs]

    # ------------------------------------------------------------------ internals

    def _event(self, kind: str, rec: FaultRecord, time_s: float, value: float | None) -> None:
        self._flags = None  # every change of active/latched passes here
        self.changes += 1
        self._events.append({
            "type": "fault", "event": kind, "time_s": time_s, "code": int(rec.code),
            "name": rec.code.name, "text": rec.text, "severity": rec.severity.label,
            "stack": rec.stack, "cell": rec.cell, "where": fault_where(rec.code, rec.stack,
                                                                       rec.cell),
            "value": _json_value(value),
            "count": rec.count, "latched": rec.latched,
        })
