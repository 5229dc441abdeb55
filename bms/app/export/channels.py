"""What each ticks.csv column is: unit, comment, storage type and value texts, in one table.

The run log names its columns with the unit at the end (``cell07_voltage_v``, ``t03_c``,
``pressure_expected_s2_kpa``; bms/runlog.py :func:`~bms.runlog.standard_columns`), so the unit
of a column follows from its name. :data:`CHANNELS` adds what the name alone does not say: the
comment an engineer sees in asammdf, CANape or a Parquet schema, and, for the state and output
codes, the text of each value (an MF4 value-to-text conversion: CANape shows "CLOSED", not 2).
A column that matches no row of the table keeps the unit of its suffix and a generic comment;
tests/test_export.py checks that every column of :func:`~bms.runlog.standard_columns` has a row
of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bms.contactors import ContactorState
from hil.protocol import Outputs

#: Units by name suffix (the same suffixes bms/runlog.py's COLUMN_DECIMALS rounds by). The
#: longest suffix that matches wins (``_soc_sigma`` before ``_soc``, ``_kpa`` before ``_a``).
UNITS: dict[str, str] = {
    "_v": "V",
    "_a": "A",
    "_c": "°C",
    "_kpa": "kPa",
    "_s": "s",
    "_soc": "",        # a fraction of the cell's capacity, 0..1 (the comment says so)
    "_soc_sigma": "",
}


def _relays(bits: int) -> str:
    names = [f.name for f in Outputs if bits & f.value and f.name]
    return "+".join(names) if names else "all open"


#: Value texts of the coded columns (MF4 value-to-text conversion, Parquet field metadata).
STATE_TEXTS: dict[int, str] = {int(s): s.name for s in ContactorState}
OUTPUT_TEXTS: dict[int, str] = {b: _relays(b) for b in range(1 << len(Outputs))}


@dataclass(frozen=True)
class Channel:
    """One ticks.csv column as the export writes it. ``dtype``: ``float64`` (NaN for lost
    data, kept as NaN), or an unsigned integer type for codes, bit masks and counts (a NaN
    there becomes an invalid sample: MF4 invalidation bit, Parquet null). ``texts``: value ->
    text for a coded column."""

    name: str
    unit: str
    comment: str
    dtype: str = "float64"
    texts: dict[int, str] | None = None


# (pattern, comment, dtype, texts): a full-match regex over the column name; its groups fill the
# comment ({0}: the cell/sensor number as in the name, {s}: the stack number of an _sN suffix).
_S = r"(?:_s(?P<s>\d+))?"
_TABLE: tuple[tuple[str, str, str, dict[int, str] | None], ...] = (
    ("time_s", "run time of the tick (sim clock: simulated pack time; real clock: seconds "
               "since the run's start)", "float64", None),
    ("state", "contactor state machine state (bms/contactors.py ContactorState)", "uint8",
     STATE_TEXTS),
    ("current_a", "pack current the BMS acts on (the median of the stacks' boards), "
                  "positive = charge", "float64", None),
    (r"current_s(\d+)_a", "current measured by stack {0}'s board, positive = charge",
     "float64", None),
    ("stack_voltage_v", "pack voltage: the sum of the measured cell voltages", "float64", None),
    ("bus_voltage_v", "bus voltage behind the contactors (sum over the boards' bus inputs)",
     "float64", None),
    (r"cell(\d+)_voltage_v", "cell {0} terminal voltage measured by the board", "float64",
     None),
    (r"cell(\d+)_soc", "cell {0} state of charge estimated by the EKF (fraction of capacity, "
                       "0..1)", "float64", None),
    (r"cell(\d+)_soc_sigma", "cell {0} SOC estimate's standard deviation (1 sigma, fraction of "
                             "capacity)", "float64", None),
    (r"cell(\d+)_leak_a", "cell {0} estimated self-discharge (leak) current", "float64", None),
    (r"t(\d+)_c", "thermistor {0} temperature", "float64", None),
    (r"pressure_lc(\d+)_kpa", "load cell {0}: stack pressure at the cell's position",
     "float64", None),
    (rf"pressure_expected{_S}_kpa", "stack {s}pressure the model expects at the cells' SOC "
                                    "and temperature", "float64", None),
    (rf"pressure_residual{_S}_kpa", "stack {s}measured mean pressure minus the expected one",
     "float64", None),
    (rf"ccd_limit{_S}_a", "stack {s}dendrite-safe (critical current density) charge limit; NaN: "
                          "the pack has none (bms/charging.py)", "float64", None),
    ("charge_limit_a", "allowed charge current of the pack (after derating)", "float64", None),
    ("discharge_limit_a", "allowed discharge current of the pack (after derating)", "float64",
     None),
    ("outputs", "relay outputs commanded (bit 0 CONTACTOR_POS, 1 CONTACTOR_NEG, 2 PRECHARGE)",
     "uint8", OUTPUT_TEXTS),
    (rf"balance_mask{_S}", "stack {s}balancing: bit i set = the stack's cell i+1 bleeds",
     "uint32", None),
    ("faults_active", "number of active fault records (warnings included)", "uint32", None),
    ("tick_duration_s", "wall-clock time the controller computed this tick", "float64", None),
)
_COMPILED = tuple((re.compile(p), c, d, t) for p, c, d, t in _TABLE)


def unit_of(name: str) -> str:
    """The unit of a column from its name's suffix ('' when none matches)."""
    best = ""
    for suffix in UNITS:
        if name.endswith(suffix) and len(suffix) > len(best):
            best = suffix
    return UNITS[best] if best else ""


def describe(name: str) -> Channel:
    """The :class:`Channel` of a ticks.csv column (a generic comment for an unknown one)."""
    for pattern, comment, dtype, texts in _COMPILED:
        m = pattern.fullmatch(name)
        if m is None:
            continue
        groups = [g for g in m.groups() if g is not None]
        stack = m.groupdict().get("s")
        text = comment.format(*groups, s=f"{stack} " if stack else "")
        return Channel(name, unit_of(name), text, dtype, texts)
    return Channel(name, unit_of(name), f"ticks.csv column {name} (no description in "
                                        "bms/app/export/channels.py)")


def is_described(name: str) -> bool:
    """True when a row of the table (not the fallback) describes ``name``."""
    return any(p.fullmatch(name) for p, _c, _d, _t in _COMPILED)
