"""Dendrite-safe charging: a stack's charge current limit from the critical current density
(CCD) of its lithium-metal anodes over stack pressure and temperature (pack file ``charging:``).

Lithium plated from a solid electrolyte forms dendrites above the CCD, and the CCD falls as the
stack pressure falls (voids open at the interface faster than lithium creep refills them) and as
the cell cools (slower creep and self-diffusion): Kasemchainan et al., Nature Materials 18
(2019) 1105; Doux et al., Adv. Energy Mater. 10 (2020) 1903253. So the limit is

    limit_a = margin x CCD(pressure, temperature) x plating area (electrode area x unit layers)

with CCD bilinear over the pack's table. Which pressure and temperature (:func:`stack_conditions`):
the lowest valid load cell of the stack, not the mean (a local contact loss lowers the pressure
on one side of the end plate; the dendrite risk is local, where the contact is worst), and the
coldest valid thermistor (the core interpolates cells linearly between thermistors, so no cell
is colder than the coldest thermistor).

Outside the table (:meth:`CcdLimit.ccd_ma_cm2`): above the highest pressure or temperature the
edge value holds (the CCD rises with both, so the edge is a lower bound: conservative). Below
the lowest pressure or temperature the CCD is unknown and lower than anything tabulated, so the
limit is 0 A: no charging. An unknown pressure or temperature (NaN: every load cell or
thermistor invalid, or a stack without them) is treated the same way, 0 A, with one event
(:class:`CcdWatch`): the BMS cannot show that the current is below a CCD it cannot evaluate.
A pack without a ``charging`` section or without a plating area has no CCD limit
(:meth:`CcdLimit.from_pack` is None), as ``bms check`` says.

Pure: no I/O; the controller logs the events this module returns.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from boards.config import PackConfig


@dataclass(frozen=True)
class CcdLimit:
    """The CCD table of a pack, ready to evaluate (plain floats: a few microseconds a call)."""

    pressure_kpa: tuple[float, ...]
    temperature_c: tuple[float, ...]
    ccd_ma_cm2_table: tuple[tuple[float, ...], ...]  # one row per temperature
    margin: float
    plating_area_cm2: float

    @classmethod
    def from_pack(cls, pack: PackConfig) -> CcdLimit | None:
        """The pack's CCD limit; None without a ``charging`` section or a plating area."""
        ch, area = pack.charging, pack.cell.plating_area_cm2
        if ch is None or area is None:
            return None
        return cls(pressure_kpa=tuple(float(p) for p in ch.ccd_pressure_kpa),
                   temperature_c=tuple(float(t) for t in ch.ccd_temperature_c),
                   ccd_ma_cm2_table=tuple(tuple(float(v) for v in row)
                                          for row in np.asarray(ch.ccd_ma_cm2)),
                   margin=float(ch.margin), plating_area_cm2=float(area))

    def ccd_ma_cm2(self, pressure_kpa: float, temperature_c: float) -> float:
        """CCD in mA/cm2: bilinear inside the table, the edge above it, 0 below its lowest
        pressure or temperature and for NaN (unknown: see the module docstring)."""
        ps, ts = self.pressure_kpa, self.temperature_c
        # "not >=" is also true for NaN
        if not pressure_kpa >= ps[0] or not temperature_c >= ts[0]:
            return 0.0
        rows = self.ccd_ma_cm2_table
        # Bracket each axis: index i and fraction f in [0, 1); beyond the last breakpoint (or
        # on a one-point axis) the last value holds (f = 0). One function, plain floats: this
        # runs every tick for every stack (about 1 us).
        i = len(ps) - 1
        fp = 0.0
        if pressure_kpa < ps[i]:
            i = bisect_right(ps, pressure_kpa) - 1
            fp = (pressure_kpa - ps[i]) / (ps[i + 1] - ps[i])
        j = len(ts) - 1
        lo = hi = rows[j]
        ft = 0.0
        if temperature_c < ts[j]:
            j = bisect_right(ts, temperature_c) - 1
            ft = (temperature_c - ts[j]) / (ts[j + 1] - ts[j])
            lo, hi = rows[j], rows[j + 1]
        if fp > 0.0:
            at_lo = lo[i] + fp * (lo[i + 1] - lo[i])
            at_hi = hi[i] + fp * (hi[i + 1] - hi[i])
        else:
            at_lo, at_hi = lo[i], hi[i]
        return at_lo + ft * (at_hi - at_lo)

    def limit_a(self, pressure_kpa: float, temperature_c: float) -> float:
        """The stack's charge current limit (A): margin x CCD x plating area."""
        return self.ccd_ma_cm2(pressure_kpa, temperature_c) * self._amps_per_ma_cm2

    @property
    def _amps_per_ma_cm2(self) -> float:
        return self.margin * self.plating_area_cm2 * 1e-3


def stack_conditions(load_cell_kpa: np.ndarray, temperature_c: np.ndarray
                     ) -> tuple[float, float]:
    """(lowest valid load-cell pressure, coldest valid thermistor) of one stack; NaN where no
    channel is valid (invalid channels are NaN after validation)."""
    return _lowest(load_cell_kpa.tolist()), _lowest(temperature_c.tolist())


def _lowest(values: list[float]) -> float:
    low = math.inf
    for v in values:  # a few channels: a Python loop beats a NaN-aware numpy reduction
        if v < low:  # False for NaN
            low = v
    return low if low != math.inf else math.nan


@dataclass
class CcdWatch:
    """Events of one stack's CCD limit, for the run log: when it becomes the binding charge
    limit (below the core's SOF limit) and when it stops being binding, each change only after
    the new condition held for ``debounce_s`` and with ``hysteresis_a`` on release (so a limit
    hovering at the SOF limit gives no event per tick); and, once per run, that the stack's
    pressure or temperature is unknown (the limit is then 0 A)."""

    stack: int
    debounce_s: float
    hysteresis_a: float
    binding: bool = False
    _pending_since_s: float | None = None
    _reported_unknown: set[str] = field(default_factory=set)

    def update(self, time_s: float, ccd_limit_a: float, sof_limit_a: float,
               pressure_kpa: float, temperature_c: float) -> list[dict[str, Any]]:
        """This tick's events (usually none)."""
        events: list[dict[str, Any]] = []
        # Both known (the usual tick): nothing to report, no tuple of pairs built.
        for name, value in (() if pressure_kpa == pressure_kpa and temperature_c == temperature_c
                            else (("pressure", pressure_kpa), ("temperature", temperature_c))):
            if value != value and name not in self._reported_unknown:  # NaN
                self._reported_unknown.add(name)
                events.append({
                    "type": "charging", "event": f"ccd {name} unknown", "time_s": time_s,
                    "stack": self.stack, "ccd_limit_a": ccd_limit_a,
                    "why": f"no valid {name} reading: the CCD cannot be evaluated, charging "
                           "limited to 0 A"})
        if self.binding:
            want = not ccd_limit_a >= sof_limit_a + self.hysteresis_a
        else:
            want = ccd_limit_a < sof_limit_a
        if want == self.binding:
            self._pending_since_s = None
            return events
        if self._pending_since_s is None:
            self._pending_since_s = time_s
        if time_s - self._pending_since_s < self.debounce_s - 1e-9:
            return events
        self.binding = want
        self._pending_since_s = None
        events.append({
            "type": "charging",
            "event": "ccd limit binding" if want else "ccd limit released",
            "time_s": time_s, "stack": self.stack, "ccd_limit_a": ccd_limit_a,
            "sof_limit_a": sof_limit_a, "pressure_kpa": pressure_kpa,
            "temperature_c": temperature_c})
        return events


class HeldLimit:
    """The highest value of a limit over the last ``window_s``: what the over-current
    protection follows, so that a charger gets ``window_s`` to follow a lowered limit before
    its current counts as over-current (a rising limit is followed at once)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._recent: deque[tuple[float, float]] = deque()  # (time, value), values decreasing

    def update(self, time_s: float, value: float) -> float:
        recent = self._recent
        while recent and recent[-1][1] <= value:
            recent.pop()
        recent.append((time_s, value))
        while recent[0][0] < time_s - self.window_s:
            recent.popleft()
        return recent[0][1]


__all__ = ["CcdLimit", "CcdWatch", "HeldLimit", "stack_conditions"]
