"""Fault state of one emulated board and its stack, one field per FAULT_INJECT code.

The codes and their parameters are the table in docs/protocol.md (FAULT_INJECT). Plant faults
(cells, sensors, coolant, precharge, load, ambient) change the plant; link faults (drop, corrupt,
silence, reboot) are acted on by the board server (hil/emulator/board.py), which reads them from
:class:`LinkFaults`.

Clearing a fault stops the fault, not its physical consequences: charge drained through a soft
short, heat, and gas pressure already built up stay in the plant (a real cell does not recover
them either).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hil.protocol import InjectedFault

# Codes the board server handles itself; everything else goes to the plant.
LINK_CODES = frozenset(
    {InjectedFault.LINK_DROP, InjectedFault.LINK_CORRUPT, InjectedFault.LINK_SILENCE,
     InjectedFault.REBOOT}
)
NO_TARGET = 0xFF


class FaultError(ValueError):
    """A FAULT_INJECT with a bad target or value; the board answers NACK BAD_VALUE."""


def fault_code(name_or_code: str | int) -> InjectedFault:
    """InjectedFault from its name (``"CELL_SOFT_SHORT"``, case-insensitive) or its number."""
    if isinstance(name_or_code, str):
        try:
            return InjectedFault[name_or_code.strip().upper()]
        except KeyError:
            names = ", ".join(c.name for c in InjectedFault)
            raise FaultError(f"unknown fault {name_or_code!r}; one of {names}") from None
    try:
        return InjectedFault(int(name_or_code))
    except ValueError:
        raise FaultError(f"unknown fault code {name_or_code!r}") from None


@dataclass
class LinkFaults:
    """Link faults, applied by the board server to the bytes it sends."""

    drop_probability: float = 0.0     # each reply dropped with this probability
    corrupt_probability: float = 0.0  # each byte sent flipped with this probability
    silence_until_s: float = -math.inf  # board time until which nothing is sent

    def clear(self) -> None:
        self.drop_probability = 0.0
        self.corrupt_probability = 0.0
        self.silence_until_s = -math.inf


@dataclass
class PlantFaults:
    """Plant-side fault state for a stack of n cells, m load cells and k thermistors."""

    n_cells: int
    n_load_cells: int
    n_thermistors: int
    soft_short_ohm: np.ndarray = field(init=False)      # inf = no short
    contact_loss: np.ndarray = field(init=False)        # fraction 0..0.95
    cell_heat_w: np.ndarray = field(init=False)
    vtap_open_since_s: np.ndarray = field(init=False)   # nan = wire intact
    vtap_offset_v: np.ndarray = field(init=False)
    contactor_welded: list[bool] = field(init=False)  # [POS, NEG]
    loadcell_stuck: np.ndarray = field(init=False)
    loadcell_offset_kpa: np.ndarray = field(init=False)
    loadcell_open: np.ndarray = field(init=False)
    thermistor_open: np.ndarray = field(init=False)
    thermistor_short: np.ndarray = field(init=False)
    gas_ramp_kpa_per_s: float = 0.0
    current_offset_a: float = 0.0
    coolant_lost: bool = False
    precharge_fail: bool = False
    forced_current_a: float | None = None
    ambient_override_c: float | None = None

    def __post_init__(self) -> None:
        self.clear_all()

    def clear_all(self) -> None:
        n, m, k = self.n_cells, self.n_load_cells, self.n_thermistors
        self.soft_short_ohm = np.full(n, np.inf)
        self.contact_loss = np.zeros(n)
        self.cell_heat_w = np.zeros(n)
        self.vtap_open_since_s = np.full(n, np.nan)
        self.vtap_offset_v = np.zeros(n)
        self.contactor_welded = [False, False]
        self.loadcell_stuck = np.zeros(m, dtype=bool)
        self.loadcell_offset_kpa = np.zeros(m)
        self.loadcell_open = np.zeros(m, dtype=bool)
        self.thermistor_open = np.zeros(k, dtype=bool)
        self.thermistor_short = np.zeros(k, dtype=bool)
        self.gas_ramp_kpa_per_s = 0.0
        self.current_offset_a = 0.0
        self.coolant_lost = False
        self.precharge_fail = False
        self.forced_current_a = None
        self.ambient_override_c = None

    @property
    def any_cell_fault(self) -> bool:
        return bool(
            np.isfinite(self.soft_short_ohm).any() or self.contact_loss.any()
            or self.cell_heat_w.any()
        )

    def _index(self, code: InjectedFault, target: int, count: int, what: str) -> int:
        if not 0 <= target < count:
            raise FaultError(f"{code.name}: target {target} is not a {what} index (0..{count - 1})")
        return target

    @staticmethod
    def _finite(code: InjectedFault, value: float, lo: float, hi: float) -> float:
        if not math.isfinite(value) or not lo <= value <= hi:
            raise FaultError(f"{code.name}: value {value!r} outside [{lo}, {hi}]")
        return float(value)

    def apply(self, code: InjectedFault, target: int, value: float, clear: bool,
              now_s: float) -> None:
        """Add (or, with clear, remove) one plant fault. Raises FaultError on a bad target/value."""
        c = InjectedFault(code)
        if c == InjectedFault.CLEAR_ALL:
            self.clear_all()
        elif c == InjectedFault.CELL_SOFT_SHORT:
            i = self._index(c, target, self.n_cells, "cell")
            # 1 mOhm .. 1 MOhm: below ~1 mOhm the short is a hard short, not a soft one.
            self.soft_short_ohm[i] = np.inf if clear else self._finite(c, value, 1e-3, 1e6)
        elif c == InjectedFault.CELL_CONTACT_LOSS:
            i = self._index(c, target, self.n_cells, "cell")
            # Capped at 0.95: a cell with no contact at all is an open string, not modelled.
            self.contact_loss[i] = 0.0 if clear else min(self._finite(c, value, 0.0, 1.0), 0.95)
        elif c == InjectedFault.GAS_SWELLING:
            self.gas_ramp_kpa_per_s = 0.0 if clear else self._finite(c, value, -1e4, 1e4)
        elif c == InjectedFault.LOADCELL_STUCK:
            j = self._index(c, target, self.n_load_cells, "load cell")
            self.loadcell_stuck[j] = not clear
        elif c == InjectedFault.LOADCELL_OFFSET:
            j = self._index(c, target, self.n_load_cells, "load cell")
            self.loadcell_offset_kpa[j] = 0.0 if clear else self._finite(c, value, -1e5, 1e5)
        elif c == InjectedFault.LOADCELL_OPEN:
            j = self._index(c, target, self.n_load_cells, "load cell")
            self.loadcell_open[j] = not clear
        elif c == InjectedFault.VTAP_OPEN:
            i = self._index(c, target, self.n_cells, "cell")
            self.vtap_open_since_s[i] = np.nan if clear else now_s
        elif c == InjectedFault.VTAP_OFFSET:
            i = self._index(c, target, self.n_cells, "cell")
            self.vtap_offset_v[i] = 0.0 if clear else self._finite(c, value, -5.0, 5.0)
        elif c == InjectedFault.CONTACTOR_WELD:
            # target 0 = POS, 1 = NEG. Welded: it closes when commanded and then cannot open
            # (contacts fused by an arc at closing or a short-circuit current).
            self.contactor_welded[self._index(c, target, 2, "contactor (0 POS, 1 NEG)")] = \
                not clear
        elif c == InjectedFault.THERMISTOR_OPEN:
            j = self._index(c, target, self.n_thermistors, "thermistor")
            self.thermistor_open[j] = not clear
        elif c == InjectedFault.THERMISTOR_SHORT:
            j = self._index(c, target, self.n_thermistors, "thermistor")
            self.thermistor_short[j] = not clear
        elif c == InjectedFault.CURRENT_OFFSET:
            self.current_offset_a = 0.0 if clear else self._finite(c, value, -1e4, 1e4)
        elif c == InjectedFault.COOLANT_LOSS:
            self.coolant_lost = not clear
        elif c == InjectedFault.PRECHARGE_FAIL:
            self.precharge_fail = not clear
        elif c == InjectedFault.LOAD_CURRENT:
            self.forced_current_a = None if clear else self._finite(c, value, -1e4, 1e4)
        elif c == InjectedFault.AMBIENT_TEMP:
            self.ambient_override_c = None if clear else self._finite(c, value, -60.0, 150.0)
        elif c == InjectedFault.CELL_HEAT:
            i = self._index(c, target, self.n_cells, "cell")
            self.cell_heat_w[i] = 0.0 if clear else self._finite(c, value, -1e3, 1e3)
        elif c in LINK_CODES:
            raise FaultError(f"{c.name} is a link fault: the board server handles it")
        else:  # pragma: no cover - every InjectedFault is handled above
            raise FaultError(f"unhandled fault {c.name}")


def apply_link_fault(
    link: LinkFaults, code: InjectedFault, value: float, clear: bool, now_s: float
) -> None:
    """Add or remove a link fault (REBOOT is an event; the board handles it itself)."""
    c = InjectedFault(code)
    if c == InjectedFault.LINK_DROP:
        link.drop_probability = 0.0 if clear else PlantFaults._finite(c, value, 0.0, 1.0)
    elif c == InjectedFault.LINK_CORRUPT:
        link.corrupt_probability = 0.0 if clear else PlantFaults._finite(c, value, 0.0, 1.0)
    elif c == InjectedFault.LINK_SILENCE:
        link.silence_until_s = -math.inf if clear else (
            now_s + PlantFaults._finite(c, value, 0.0, 86400.0))
    else:
        raise FaultError(f"{c.name} is not a link fault")
