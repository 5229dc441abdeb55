"""Protections: vectorised debounce and hysteresis over every channel of every limit.

Two layers:

- :class:`ProtectionEngine` is generic: a set of :class:`~bms.config.ProtectionLimit` with a
  number of channels each, flattened into one array so that one tick is a dozen numpy
  operations over all channels of all limits (no per-cell Python loop). ``update`` returns the
  level transitions (rare; usually an empty list).
- :class:`PackProtections` applies the pack's rules on top: charge versus discharge temperature
  limits chosen by the current's sign, over-current against the fixed levels and the C core's
  dynamic limits, channel -> (stack, cell) mapping, and writing transitions into a
  :class:`~bms.faults.FaultTable`.

Semantics of one level (warning, fault, critical) on one channel, with ``dt`` the tick:

- *past*: ``value > threshold`` (direction ``above``) or ``value < threshold`` (``below``).
- The first tick past the threshold starts a timer; the level asserts on the first tick where
  ``time_s - start >= debounce_s`` while the value stayed past on every tick in between. A
  tick not past resets the timer. So with ``debounce_s = 0`` it asserts on the first tick past,
  and the worst-case latency from a step to the assertion is ``debounce_s + dt`` (the step can
  land just after a tick), plus one tick for the contactor command: ``debounce_s + 2 dt``.
- An asserted level clears (at once) when the value is back past ``threshold - hysteresis``
  (``above``) or ``threshold + hysteresis`` (``below``). FAULT and CRITICAL records stay latched
  in the FaultTable after the value clears, until an explicit reset.
- NaN never asserts, clears, starts or resets anything: the channel's state is frozen and the
  channel is reported as ``invalid`` (a transition with level ``"invalid"``) so that the caller
  raises the sensor fault (:data:`bms.faults.SENSOR_CODE_FOR_PROTECTION`). When the channel is
  valid again a transition with level ``"invalid"`` and ``asserted=False`` is reported.
- A disabled protection (e.g. the discharge temperature limits while charging) has its timers
  reset and its asserted levels cleared; its FaultTable latches stay.

Nothing here reads a clock: ``time_s`` is passed in by the tick loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from bms.config import PROTECTION_NAMES, PackConfig, ProtectionLimit
from bms.faults import PROTECTION_CODES, SENSOR_CODE_FOR_PROTECTION, FaultTable, Severity

LEVELS = ("warning", "fault", "critical")
LEVEL_SEVERITY = (Severity.WARNING, Severity.FAULT, Severity.CRITICAL)
INVALID = "invalid"
# Timer comparison tolerance: tick times like 0.1 * k accumulate ~1e-16 relative error, so
# "elapsed >= debounce" must not miss a tick by one ulp.
_TIME_EPS_S = 1e-9


@dataclass(frozen=True)
class Transition:
    """One level of one channel changed.

    ``level`` is ``"warning"``, ``"fault"``, ``"critical"`` or ``"invalid"`` (NaN input).
    ``value`` is the raw input value at the transition (NaN for ``invalid`` asserts).
    ``stack``/``cell`` are filled by :class:`PackProtections` (cell = index within the stack for
    per-cell channels, thermistor index within the stack for temperatures, None otherwise).
    """

    name: str
    level: str
    channel: int
    asserted: bool
    time_s: float
    value: float
    stack: int | None = None
    cell: int | None = None

    @property
    def severity(self) -> Severity | None:
        return None if self.level == INVALID else LEVEL_SEVERITY[LEVELS.index(self.level)]


class ProtectionEngine:
    """Debounce + hysteresis for many limits and channels at once.

    ``limits``: protection name -> ProtectionLimit. ``channels``: name -> number of channels
    (cells, thermistors, stacks, or 1). Names in ``limits`` without an entry in ``channels``
    default to one channel.
    """

    def __init__(self, limits: Mapping[str, ProtectionLimit], channels: Mapping[str, int]) -> None:
        self.names: tuple[str, ...] = tuple(limits)
        self.limits = dict(limits)
        self.slices: dict[str, slice] = {}
        start = 0
        for name in self.names:
            n = int(channels.get(name, 1))
            if n < 1:
                raise ValueError(f"{name}: needs at least one channel, got {n}")
            self.slices[name] = slice(start, start + n)
            start += n
        self.n = start
        n = self.n
        # Work in "sign space": x = sign * value, so every limit is "above" and one comparison
        # serves both directions.
        self._sign = np.empty(n)
        self._thr = np.empty((3, n))
        self._hyst = np.empty(n)
        self._debounce = np.empty(n)
        self._name_of = np.empty(n, dtype=object)
        for name in self.names:
            lim, sl = self.limits[name], self.slices[name]
            s = 1.0 if lim.direction == "above" else -1.0
            self._sign[sl] = s
            for i, (_, thr) in enumerate(lim.level_thresholds()):
                self._thr[i, sl] = s * thr
            self._hyst[sl] = lim.hysteresis
            self._debounce[sl] = lim.debounce_s - _TIME_EPS_S
            self._name_of[sl] = name
        self._clear_thr = self._thr - self._hyst[None, :]
        self._offset = np.zeros(n)
        self._enabled = np.ones(n, dtype=bool)
        self._values = np.full(n, np.nan)
        self._present = np.zeros(n, dtype=bool)
        self.start_s = np.full((3, n), np.nan)   # timer start per level and channel
        self.asserted = np.zeros((3, n), dtype=bool)
        self.invalid = np.zeros(n, dtype=bool)

    # ------------------------------------------------------------------ per tick

    def update(
        self, time_s: float, values: Mapping[str, np.ndarray | float],
        offsets: Mapping[str, float] | None = None,
        enabled: Mapping[str, bool] | None = None,
    ) -> list[Transition]:
        """Advance every channel to ``time_s``; return the transitions (usually none).

        ``values``: name -> array of that protection's channel values (or a scalar for one
        channel). A name missing from ``values`` is not evaluated this tick (state frozen, not
        reported invalid): use it for estimates that do not exist yet.
        ``offsets``: name -> amount added to the compared value in the limit's direction (the
        thresholds move towards the value by that much); the transition still reports the raw
        value. Used for the dynamic over-current limits.
        ``enabled``: name -> False to switch a protection off (timers reset, levels clear).
        """
        v, present = self._values, self._present
        v.fill(np.nan)
        present.fill(False)
        for name, val in values.items():
            sl = self.slices[name]
            v[sl] = val
            present[sl] = True
        off = self._offset
        if offsets:
            off.fill(0.0)
            for name, o in offsets.items():
                off[self.slices[name]] = o
            x = self._sign * v + off
        else:
            x = self._sign * v
        en = self._enabled
        en.fill(True)
        if enabled:
            for name, on in enabled.items():
                if not on:
                    en[self.slices[name]] = False

        nan = np.isnan(x)
        past = (x > self._thr) & en                     # NaN compares False
        # Timers: reset where a valid value is not past (or the protection is off); start where
        # past and not running. NaN channels keep their timers frozen.
        stop = (~past) & ~(nan & en)
        start_s = self.start_s
        start_s[stop] = np.nan
        start_new = past & np.isnan(start_s)
        start_s[start_new] = time_s
        with np.errstate(invalid="ignore"):
            due = past & ((time_s - start_s) >= self._debounce)
            back = (x < self._clear_thr) | ~en             # NaN compares False: never clears
        asserted = self.asserted
        new_on = due & ~asserted
        new_off = asserted & back
        bad = nan & present
        inv_change = bad != self.invalid
        if not (new_on.any() or new_off.any() or inv_change.any()):
            return []
        asserted |= new_on
        asserted &= ~new_off
        out: list[Transition] = []
        for flag, mask in ((True, new_on), (False, new_off)):
            for lvl, ch in zip(*np.nonzero(mask), strict=True):
                out.append(Transition(str(self._name_of[ch]), LEVELS[lvl], int(ch), flag,
                                      time_s, float(v[ch])))
        for ch in np.nonzero(inv_change)[0]:
            out.append(Transition(str(self._name_of[ch]), INVALID, int(ch), bool(bad[ch]),
                                  time_s, float(v[ch])))
        self.invalid[:] = bad
        # Local channel index within its protection (the flat index is an internal detail).
        return [_localise(t, self.slices[t.name].start) for t in out]

    # ------------------------------------------------------------------ queries

    def is_asserted(self, name: str, level: str) -> np.ndarray:
        """Bool array over the protection's channels: is ``level`` asserted now."""
        return self.asserted[LEVELS.index(level), self.slices[name]].copy()

    def any_asserted(self, level: str) -> bool:
        return bool(self.asserted[LEVELS.index(level)].any())

    def reset_channel_state(self) -> None:
        """Forget timers and asserted levels (e.g. after a board reset re-initialises data)."""
        self.start_s.fill(np.nan)
        self.asserted.fill(False)
        self.invalid.fill(False)


def _localise(t: Transition, start: int) -> Transition:
    return Transition(t.name, t.level, t.channel - start, t.asserted, t.time_s, t.value)


# --------------------------------------------------------------------------- pack rules


@dataclass
class ProtectionInputs:
    """One tick's inputs. ``None`` = not available this tick (that protection is skipped).

    Arrays are pack-wide, stacks concatenated in pack order. Current is positive on charge.
    """

    cell_voltage_v: np.ndarray | None = None           # (n_cells,)
    temperature_c: np.ndarray | None = None            # (n_thermistors,)
    current_a: float | None = None
    charge_limit_a: float = math.nan                   # C core's allowed charge current, >= 0
    discharge_limit_a: float = math.nan                # C core's allowed discharge current, >= 0
    stack_pressure_kpa: np.ndarray | None = None       # (n_stacks,) mean of the valid load cells
    pressure_rate_kpa_per_s: np.ndarray | None = None  # (n_stacks,) |dp/dt|
    pressure_residual_kpa: np.ndarray | None = None    # (n_stacks,) CUSUM of measured - expected
    load_cell_imbalance_kpa: np.ndarray | None = None  # (n_stacks,) max - min of the load cells
    cell_leak_a: np.ndarray | None = None              # (n_cells,) estimated soft-short current


@dataclass
class _Layout:
    """Channel -> (stack, index within stack) per protection."""

    stack: dict[str, np.ndarray] = field(default_factory=dict)
    local: dict[str, np.ndarray | None] = field(default_factory=dict)


_PER_CELL = ("cell_overvoltage_v", "cell_undervoltage_v", "cell_leak_a")
_PER_THERMISTOR = ("cell_overtemperature_charge_c", "cell_overtemperature_discharge_c",
                   "cell_undertemperature_charge_c", "cell_undertemperature_discharge_c")
_PER_STACK = ("stack_pressure_low_kpa", "stack_pressure_high_kpa", "stack_pressure_rate_kpa_per_s",
              "stack_pressure_residual_kpa", "load_cell_imbalance_kpa")
_PACK = ("charge_overcurrent_a", "discharge_overcurrent_a")


class PackProtections:
    """The pack's protections: rules on top of :class:`ProtectionEngine`.

    Temperature limits: the *charge* limits apply while the current is above
    ``+rest_current_a``, the *discharge* limits while it is below ``-rest_current_a``; inside the
    band the last mode holds (no chatter at rest; at start-up the discharge limits apply since
    nothing charges yet). The other pair is disabled.

    Over-current rule: the pack's fixed levels apply at full power. When the C core lowers the
    allowed current below the pack's static maximum (``power_limits.max_*_current_a``), every
    level moves down by the same amount, so each level keeps its margin above the allowed
    current but never exceeds its fixed value: ``threshold = level - clip(max_static - dynamic,
    0, max_static)``. A NaN dynamic limit leaves the fixed levels alone.

    Lost measurements: when a tick has no fresh MEASUREMENT, do not call ``step`` with NaN-filled
    inputs (that would raise sensor faults, which latch); skip the call (every timer and level
    stays frozen) and pass ``measurement_valid=False`` to the contactor state machine, which
    goes to SAFE. NaN inside a measurement that did arrive is a sensor fault, as intended.
    """

    #: Assumption: 2 % of the ssb-23 maximum charge current; above the shunt noise
    #: (estimator.current_noise_a = 0.05 A) so the mode does not flip on noise at rest.
    DEFAULT_REST_CURRENT_A = 0.2

    def __init__(self, pack: PackConfig, rest_current_a: float = DEFAULT_REST_CURRENT_A) -> None:
        self.pack = pack
        self.rest_current_a = rest_current_a
        self.charge_mode = False
        n_cells = pack.n_cells
        n_therm = sum(len(s.thermistor_cell_positions) for s in pack.stacks)
        n_stacks = len(pack.stacks)
        counts = {**dict.fromkeys(_PER_CELL, n_cells), **dict.fromkeys(_PER_THERMISTOR, n_therm),
                  **dict.fromkeys(_PER_STACK, n_stacks), **dict.fromkeys(_PACK, 1)}
        self.engine = ProtectionEngine({n: pack.protections[n] for n in PROTECTION_NAMES}, counts)
        cell_stack = np.concatenate([np.full(s.cells, k) for k, s in enumerate(pack.stacks)])
        cell_local = np.concatenate([np.arange(s.cells) for s in pack.stacks])
        th_stack = np.concatenate([np.full(len(s.thermistor_cell_positions), k)
                                   for k, s in enumerate(pack.stacks)])
        th_local = np.concatenate([np.arange(len(s.thermistor_cell_positions))
                                   for s in pack.stacks])
        self._layout = _Layout()
        for name in _PER_CELL:
            self._layout.stack[name], self._layout.local[name] = cell_stack, cell_local
        for name in _PER_THERMISTOR:
            self._layout.stack[name], self._layout.local[name] = th_stack, th_local
        for name in _PER_STACK:
            self._layout.stack[name], self._layout.local[name] = np.arange(n_stacks), None
        self._max_charge_a = pack.power_limits.max_charge_current_a
        self._max_discharge_a = pack.power_limits.max_discharge_current_a

    def update(self, time_s: float, inputs: ProtectionInputs) -> list[Transition]:
        """Evaluate every protection at ``time_s``; transitions carry stack and cell indices."""
        values: dict[str, np.ndarray | float] = {}
        enabled: dict[str, bool] = {}
        offsets: dict[str, float] = {}
        if inputs.cell_voltage_v is not None:
            values["cell_overvoltage_v"] = inputs.cell_voltage_v
            values["cell_undervoltage_v"] = inputs.cell_voltage_v
        current = inputs.current_a
        if current is not None:
            if current > self.rest_current_a:
                self.charge_mode = True
            elif current < -self.rest_current_a:
                self.charge_mode = False
            values["charge_overcurrent_a"] = current
            values["discharge_overcurrent_a"] = -current
            offsets["charge_overcurrent_a"] = _derate(inputs.charge_limit_a, self._max_charge_a)
            offsets["discharge_overcurrent_a"] = _derate(inputs.discharge_limit_a,
                                                         self._max_discharge_a)
        if inputs.temperature_c is not None:
            for name in _PER_THERMISTOR:
                values[name] = inputs.temperature_c
                enabled[name] = ("_charge_" in name) == self.charge_mode
        for name, arr in (("stack_pressure_low_kpa", inputs.stack_pressure_kpa),
                          ("stack_pressure_high_kpa", inputs.stack_pressure_kpa),
                          ("stack_pressure_rate_kpa_per_s", inputs.pressure_rate_kpa_per_s),
                          ("stack_pressure_residual_kpa", inputs.pressure_residual_kpa),
                          ("load_cell_imbalance_kpa", inputs.load_cell_imbalance_kpa),
                          ("cell_leak_a", inputs.cell_leak_a)):
            if arr is not None:
                values[name] = arr
        raw = self.engine.update(time_s, values, offsets=offsets, enabled=enabled)
        return [self._place(t) for t in raw]

    def _place(self, t: Transition) -> Transition:
        stacks = self._layout.stack.get(t.name)
        if stacks is None:
            return t
        local = self._layout.local[t.name]
        cell = None if local is None else int(local[t.channel])
        return Transition(t.name, t.level, t.channel, t.asserted, t.time_s, t.value,
                          int(stacks[t.channel]), cell)

    @staticmethod
    def apply(transitions: Sequence[Transition], table: FaultTable) -> None:
        """Write transitions into the fault table (protection codes and sensor codes)."""
        for t in transitions:
            if t.level == INVALID:
                code = SENSOR_CODE_FOR_PROTECTION[t.name]
                if t.asserted:
                    table.raise_fault(code, t.time_s, None, t.value, t.stack, t.cell)
                else:
                    table.clear_fault(code, t.time_s, None, t.value, t.stack, t.cell)
                continue
            code = PROTECTION_CODES[t.name]
            sev = t.severity
            if t.asserted:
                table.raise_fault(code, t.time_s, sev, t.value, t.stack, t.cell)
            else:
                table.clear_fault(code, t.time_s, sev, t.value, t.stack, t.cell)

    def step(self, time_s: float, inputs: ProtectionInputs, table: FaultTable) -> list[Transition]:
        """``update`` then ``apply``: the one call the tick loop needs."""
        transitions = self.update(time_s, inputs)
        if transitions:
            self.apply(transitions, table)
        return transitions


def _derate(dynamic_limit_a: float, max_static_a: float) -> float:
    """How far the core lowered the allowed current below the static maximum (>= 0)."""
    if dynamic_limit_a is None or not math.isfinite(dynamic_limit_a):
        return 0.0
    return min(max(max_static_a - dynamic_limit_a, 0.0), max_static_a)
