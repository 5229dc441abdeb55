"""What the BMS's CAN frames carry from one controller tick. Apart from bms.vehicle.link so
that the controller imports no CAN library (python-can and cantools are the optional extra
``can``: a run without ``--can`` does not need them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bms.faults import FaultRecord


@dataclass
class VehicleTick:
    """References to the controller's values of this tick, no copies. ``stacks``: the
    controller's stack runtimes (``data``, ``out``, ``stack_voltage_v``, ``cells``)."""

    state: int
    outputs: int
    close_wanted: bool
    fault_latched: bool
    critical_latched: bool
    warning_active: bool
    current_a: float
    pack_voltage_v: float
    bus_voltage_v: float
    charge_limit_a: float
    discharge_limit_a: float
    cell_voltage_v: np.ndarray
    soc: np.ndarray
    stacks: Sequence[Any]
    faults: list[FaultRecord]
