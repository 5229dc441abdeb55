"""Fault codes and the fault table: every protection has a code, records latch and reset."""

from __future__ import annotations

import json
import math

from bms.faults import (
    FAULT_INFO,
    PROTECTION_CODES,
    SENSOR_CODE_FOR_PROTECTION,
    FaultCode,
    FaultTable,
    Severity,
    fault_where,
)
from boards.config import PROTECTION_NAMES


def test_every_protection_and_code_is_described() -> None:
    assert set(PROTECTION_CODES) == set(PROTECTION_NAMES)
    assert set(SENSOR_CODE_FOR_PROTECTION) == set(PROTECTION_NAMES)
    assert set(FAULT_INFO) == set(FaultCode)
    assert len({int(c) for c in FaultCode}) == len(FaultCode)
    for info in FAULT_INFO.values():
        assert info.text and info.reaction
    # Codes for the protections follow the PROTECTION_NAMES order (stable numbering).
    assert [int(PROTECTION_CODES[n]) for n in PROTECTION_NAMES] == list(range(101, 115))
    for name in ("MEASUREMENT_LOST", "MEASUREMENT_LATE", "TIMESTAMP_GAP",
                 "BOARD_RESET", "BOARD_WATCHDOG_TRIPPED", "PRECHARGE_FAILURE",
                 "CELL_VOLTAGE_OPEN_WIRE", "THERMISTOR_OPEN", "THERMISTOR_SHORT",
                 "LOAD_CELL_OPEN", "LOAD_CELL_STUCK", "CURRENT_SENSOR"):
        assert name in FaultCode.__members__
    assert "SEQUENCE_GAP" not in FaultCode.__members__  # never raised: removed (issue 10)


def test_raise_is_idempotent_and_counts_occurrences() -> None:
    table = FaultTable()
    rec = table.raise_fault(FaultCode.CELL_OVERVOLTAGE, 1.0, Severity.WARNING, 4.23, 0, 5)
    table.raise_fault(FaultCode.CELL_OVERVOLTAGE, 1.5, Severity.WARNING, 4.24, 0, 5)
    assert rec.count == 1 and rec.first_time_s == 1.0 and rec.last_time_s == 1.5
    assert rec.trigger_value == 4.23 and rec.active and not rec.latched
    events = table.drain_events()
    assert [e["event"] for e in events] == ["raise"]
    assert table.clear_fault(FaultCode.CELL_OVERVOLTAGE, 2.0, Severity.WARNING, 4.1, 0, 5)
    assert not rec.active and not rec.latched and rec.cleared_time_s == 2.0
    table.raise_fault(FaultCode.CELL_OVERVOLTAGE, 3.0, Severity.WARNING, 4.25, 0, 5)
    assert rec.count == 2 and rec.first_time_s == 1.0 and rec.trigger_value == 4.25
    # Clearing something never raised is a no-op.
    assert table.clear_fault(FaultCode.CELL_LEAK, 3.0) is None


def test_fault_latches_until_reset_and_reset_needs_cleared_condition() -> None:
    table = FaultTable()
    table.raise_fault(FaultCode.CELL_UNDERVOLTAGE, 1.0, Severity.FAULT, 2.85, 0, 3)
    assert table.fault_latched() and not table.critical_latched()
    # Condition still active: reset refused, latch stays.
    assert table.reset(2.0) is False
    assert table.fault_latched()
    table.clear_fault(FaultCode.CELL_UNDERVOLTAGE, 3.0, Severity.FAULT, 3.1, 0, 3)
    assert table.fault_latched(), "a fault stays latched after its value clears"
    assert table.reset(4.0) is True
    assert not table.fault_latched()
    kinds = [e.get("event", e["type"]) for e in table.drain_events()]
    assert kinds == ["raise", "fault_reset", "clear", "reset", "fault_reset"]


def test_critical_needs_a_service_reset() -> None:
    table = FaultTable()
    table.raise_fault(FaultCode.CELL_OVERVOLTAGE, 1.0, Severity.CRITICAL, 4.35)
    table.clear_fault(FaultCode.CELL_OVERVOLTAGE, 2.0, Severity.CRITICAL, 4.0)
    assert table.reset(3.0) is False and table.critical_latched()
    assert table.reset(3.0, include_critical=True) is True
    assert not table.critical_latched() and not table.fault_latched()


def test_momentary_fault_latches_but_is_not_active() -> None:
    table = FaultTable()
    rec = table.raise_fault(FaultCode.PRECHARGE_FAILURE, 5.0, value=0.4, momentary=True)
    assert rec.severity == Severity.FAULT and rec.latched and not rec.active
    assert table.fault_latched()
    assert table.reset(6.0) is True
    # A second occurrence counts again.
    table.raise_fault(FaultCode.PRECHARGE_FAILURE, 9.0, value=0.3, momentary=True)
    assert rec.count == 2 and rec.latched


def test_events_and_summary_are_strict_json() -> None:
    table = FaultTable()
    table.raise_fault(FaultCode.THERMISTOR_IMPLAUSIBLE, 1.0, value=math.nan, stack=1, cell=2)
    table.raise_fault(FaultCode.MEASUREMENT_LOST, 2.0, value=math.inf)
    for obj in table.drain_events() + table.summary():
        text = json.dumps(obj, allow_nan=False)
        assert json.loads(text) == obj
    summary = table.summary()
    assert summary[0]["severity"] == "fault" and summary[0]["trigger_value"] is None
    assert summary[0]["name"] == "THERMISTOR_IMPLAUSIBLE" and summary[0]["stack"] == 1
    assert summary[1]["severity"] == "warning"


def test_records_are_separate_per_channel_and_severity() -> None:
    table = FaultTable()
    for cell in range(3):
        table.raise_fault(FaultCode.CELL_LEAK, 1.0, Severity.WARNING, 0.06, 0, cell)
    table.raise_fault(FaultCode.CELL_LEAK, 1.0, Severity.FAULT, 0.2, 0, 1)
    assert len(table.records()) == 4
    assert table.get(FaultCode.CELL_LEAK, Severity.FAULT, 0, 1).latched
    assert not table.get(FaultCode.CELL_LEAK, Severity.WARNING, 0, 1).latched
    assert len(table.active()) == 4 and len(table.latched()) == 1
    assert table.warning_active()


def test_where_counts_from_one_and_names_the_channel_kind() -> None:
    """events.jsonl and summary.json keep 0-based `stack` and `cell`; `where` says the same as
    people count, naming what `cell` indexes (issue 14: the report said "ch 8" for "cell": 7)."""
    table = FaultTable()
    table.raise_fault(FaultCode.CELL_LEAK, 1.0, Severity.WARNING, 0.1, 0, 7)
    table.raise_fault(FaultCode.CELL_OVERTEMPERATURE_CHARGE, 1.0, Severity.FAULT, 61.0, 1, 2)
    table.raise_fault(FaultCode.LOAD_CELL_STUCK, 1.0, None, 900.0, 0, 3)
    table.raise_fault(FaultCode.STACK_PRESSURE_LOW, 1.0, Severity.FAULT, 500.0, 1)
    table.raise_fault(FaultCode.CHARGE_OVERCURRENT, 1.0, Severity.FAULT, 30.0)
    events = table.drain_events()
    assert [(e["stack"], e["cell"], e["where"]) for e in events] == [
        (0, 7, "stack 1 cell 8"), (1, 2, "stack 2 thermistor 3"), (0, 3, "stack 1 load cell 4"),
        (1, None, "stack 2"), (None, None, "")]
    assert [d["where"] for d in sorted(table.summary(), key=lambda d: d["code"])] == [
        "stack 2 thermistor 3", "", "stack 2", "stack 1 cell 8", "stack 1 load cell 4"]
    assert json.loads(json.dumps(events[0]))["where"] == fault_where(FaultCode.CELL_LEAK, 0, 7)
