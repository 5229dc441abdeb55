"""Protections: vectorised debounce and hysteresis over every channel of every limit.

Two layers:

- :class:`ProtectionEngine` is generic: a set of :class:`~boards.config.ProtectionLimit` with a
  number of channels each, flattened into one array so that one tick is one C call
  (csrc/ssb_protect.c) over all channels of all limits. ``update`` returns the level
  transitions (rare; usually an empty list). :class:`ReferenceProtectionEngine` is the same
  engine in NumPy (a dozen array operations per tick), the reference the tests hold the C
  engine to (identical transitions and state).
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

import abc
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import is_not

import numpy as np

from bms.faults import PROTECTION_CODES, SENSOR_CODE_FOR_PROTECTION, FaultTable, Severity
from bms.tuning import REST_CURRENT_A
from boards.config import (
    PROTECTION_CHANNEL,
    PROTECTION_NAMES,
    TIME_EPS_S,
    PackConfig,
    ProtectionLimit,
)

LEVELS = ("warning", "fault", "critical")
LEVEL_SEVERITY = (Severity.WARNING, Severity.FAULT, Severity.CRITICAL)
INVALID = "invalid"


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


class _EngineBase(abc.ABC):
    """Layout, buffers and the dict-based ``update`` shared by the C engine and its reference.

    ``limits``: protection name -> ProtectionLimit. ``channels``: name -> number of channels
    (cells, thermistors, stacks, or 1). Names in ``limits`` without an entry in ``channels``
    default to one channel. Channels are flattened in the order of ``limits``.

    Per-tick inputs live in flat buffers (``values``, ``offset``, ``enabled``, ``present``, one
    entry per flat channel) that a caller may fill directly through ``slices`` and then call
    :meth:`evaluate` (what :class:`PackProtections` does: no dict per tick). State: ``start_s``
    (3, n) timer starts (NaN = not running), ``asserted`` (3, n), ``invalid`` (n,).
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
        # Work in "sign space": x = sign * value + offset, so every limit is "above" and one
        # comparison serves both directions.
        self._sign = np.empty(n)
        self._thr = np.empty((3, n))
        self._hyst = np.empty(n)
        self._debounce_raw_s = np.empty(n)
        self._name_of: list[str] = [""] * n   # flat channel -> protection name
        self._start_of: list[int] = [0] * n   # flat channel -> its protection's first channel
        for name in self.names:
            lim, sl = self.limits[name], self.slices[name]
            s = 1.0 if lim.direction == "above" else -1.0
            self._sign[sl] = s
            for i, (_, thr) in enumerate(lim.level_thresholds()):
                self._thr[i, sl] = s * thr
            self._hyst[sl] = lim.hysteresis
            self._debounce_raw_s[sl] = lim.debounce_s
            self._name_of[sl] = [name] * (sl.stop - sl.start)
            self._start_of[sl] = [sl.start] * (sl.stop - sl.start)
        # inputs (one tick)
        self.values = np.full(n, np.nan)
        self.offset = np.zeros(n)
        self.enabled = np.ones(n, dtype=bool)
        self.present = np.zeros(n, dtype=bool)
        # state
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
        v, present = self.values, self.present
        v.fill(np.nan)
        present.fill(False)
        for name, val in values.items():
            sl = self.slices[name]
            v[sl] = val
            present[sl] = True
        off = self.offset
        off.fill(0.0)
        if offsets:
            for name, o in offsets.items():
                off[self.slices[name]] = o
        en = self.enabled
        en.fill(True)
        if enabled:
            for name, on in enabled.items():
                if not on:
                    en[self.slices[name]] = False
        return self.evaluate(time_s)

    @abc.abstractmethod
    def evaluate(self, time_s: float) -> list[Transition]:
        """Advance every channel to ``time_s`` from the input buffers as they are."""

    def _transition(self, level: int, ch: int, asserted: bool, time_s: float,
                    value: float) -> Transition:
        # Local channel index within its protection (the flat index is an internal detail).
        return Transition(self._name_of[ch], INVALID if level == 3 else LEVELS[level],
                          ch - self._start_of[ch], asserted, time_s, value)

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


class ReferenceProtectionEngine(_EngineBase):
    """The pure-NumPy engine: a dozen numpy operations over all channels of all levels.

    The reference for the C engine (csrc/ssb_protect.c): tests drive both with the same inputs
    and require identical transitions and identical state. About 50 us per tick, against a few
    us for :class:`ProtectionEngine`.
    """

    def __init__(self, limits: Mapping[str, ProtectionLimit], channels: Mapping[str, int]) -> None:
        super().__init__(limits, channels)
        self._debounce = self._debounce_raw_s - TIME_EPS_S
        self._clear_thr = self._thr - self._hyst[None, :]

    def evaluate(self, time_s: float) -> list[Transition]:
        v = self.values
        x = self._sign * v + self.offset
        en = self.enabled
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
        bad = nan & self.present
        inv_change = bad != self.invalid
        if not (new_on.any() or new_off.any() or inv_change.any()):
            return []
        asserted |= new_on
        asserted &= ~new_off
        out: list[Transition] = []
        for flag, mask in ((True, new_on), (False, new_off)):
            for lvl, ch in zip(*np.nonzero(mask), strict=True):
                out.append(self._transition(int(lvl), int(ch), flag, time_s, float(v[ch])))
        for ch in np.nonzero(inv_change)[0]:
            out.append(self._transition(3, int(ch), bool(bad[ch]), time_s, float(v[ch])))
        self.invalid[:] = bad
        return out


class ProtectionEngine(_EngineBase):
    """Debounce + hysteresis for many limits and channels at once, in C (csrc/ssb_protect.c).

    Same semantics, inputs and state as :class:`ReferenceProtectionEngine`; the state lives in
    the numpy buffers, which the C code reads and writes through cffi pointers made once here.
    One tick is one C call (a few us for a hundred channels).
    """

    def __init__(self, limits: Mapping[str, ProtectionLimit], channels: Mapping[str, int]) -> None:
        super().__init__(limits, channels)
        from bms import _core  # built by pip install (setup.py cffi_modules)

        ffi, lib = _core.ffi, _core.lib
        self._keep = keep = [self._sign, self._thr, self._hyst, self._debounce_raw_s,
                             self.values, self.offset, self.enabled, self.present,
                             self.start_s, self.asserted, self.invalid]

        def buf(arr: np.ndarray, ctype: str = "double[]"):
            assert arr.flags.c_contiguous and any(arr is k for k in keep)
            return ffi.from_buffer(ctype, arr)

        lim = self._lim = ffi.new("ssb_protect_limits_t *")
        lim.n = self.n
        lim.sign, lim.thr = buf(self._sign), buf(self._thr)
        lim.hyst, lim.debounce_s = buf(self._hyst), buf(self._debounce_raw_s)
        self._ptrs = [lim.sign, lim.thr, lim.hyst, lim.debounce_s]
        rc = lib.ssb_protect_check(lim)
        if rc != 0:
            raise ValueError(f"ssb_protect_check: {_PROT_ERRORS.get(rc, rc)}")
        st = self._st = ffi.new("ssb_protect_state_t *")
        st.start_s = buf(self.start_s)
        st.asserted = buf(self.asserted, "uint8_t[]")
        st.invalid = buf(self.invalid, "uint8_t[]")
        inp = self._in = ffi.new("ssb_protect_inputs_t *")
        inp.value, inp.offset = buf(self.values), buf(self.offset)
        inp.enabled = buf(self.enabled, "uint8_t[]")
        inp.present = buf(self.present, "uint8_t[]")
        self._ptrs += [st.start_s, st.asserted, st.invalid, inp.value, inp.offset, inp.enabled,
                       inp.present]
        # The worst case (3 levels + invalid on every channel) fits: the C call never fails
        # for lack of room and needs no counting pass.
        self._cap = 4 * self.n
        self._out = ffi.new("ssb_transition_t[]", self._cap)
        self._update = lib.ssb_protect_update

    def evaluate(self, time_s: float) -> list[Transition]:
        count = self._update(self._lim, self._st, self._in, time_s, self._out, self._cap)
        return self.transitions(count, time_s) if count else []

    def transitions(self, count: int, time_s: float) -> list[Transition]:
        """The ``count`` transitions a C call (ssb_protect_update or _tick) wrote."""
        if count == 0:
            return []
        if count < 0:  # pragma: no cover - only bad pointers or sizes, excluded at __init__
            raise RuntimeError(f"ssb_protect_update: {_PROT_ERRORS.get(count, count)}")
        out = self._out
        return [self._transition(tr.level, tr.channel, bool(tr.asserted), time_s, tr.value)
                for tr in (out[k] for k in range(count))]


def _prot_errors() -> dict[int, str]:
    from bms import _core

    return {getattr(_core.lib, n): n for n in dir(_core.lib) if n.startswith("SSB_PROT_ERR_")}


_PROT_ERRORS = _prot_errors()
#: engine="c" (csrc/ssb_protect.c, what the BMS runs) or "reference" (the NumPy engine the C
#: one is tested against; tests and benchmarks only): the project's one way to pick an engine.
ENGINES = {"c": ProtectionEngine, "reference": ReferenceProtectionEngine}


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


def _watching(kind: str) -> tuple[str, ...]:
    return tuple(n for n in PROTECTION_NAMES if PROTECTION_CHANNEL[n] == kind)


_PER_CELL, _PER_THERMISTOR = _watching("cell"), _watching("thermistor")
_PER_STACK, _PACK = _watching("stack"), _watching("pack")


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

    #: Below this |current| the pack is at rest (bms.tuning.REST_CURRENT_A).
    DEFAULT_REST_CURRENT_A = REST_CURRENT_A

    def __init__(self, pack: PackConfig, rest_current_a: float = DEFAULT_REST_CURRENT_A,
                 engine: str = "c") -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r} not one of {', '.join(ENGINES)}")
        self.pack = pack
        self.rest_current_a = rest_current_a
        self.charge_mode = False
        n_cells = pack.n_cells
        n_therm = sum(len(s.thermistor_cell_positions) for s in pack.stacks)
        n_stacks = len(pack.stacks)
        counts = {**dict.fromkeys(_PER_CELL, n_cells), **dict.fromkeys(_PER_THERMISTOR, n_therm),
                  **dict.fromkeys(_PER_STACK, n_stacks), **dict.fromkeys(_PACK, 1)}
        limits = {n: pack.protections[n] for n in PROTECTION_NAMES}
        self.engine = eng = ENGINES[engine](limits, counts)
        # Views into the engine's flat input buffers, one per input (protections that share an
        # input are adjacent in PROTECTION_NAMES, so a (k, channels) view takes the input once
        # by broadcasting): update() writes each input with one numpy copy, no dict per tick.
        self._groups = [
            (attr, _rows(eng.values, eng, names), _rows(eng.present, eng, names))
            for attr, names in (("cell_voltage_v", ("cell_overvoltage_v", "cell_undervoltage_v")),
                                ("temperature_c", _PER_THERMISTOR),
                                ("stack_pressure_kpa", ("stack_pressure_low_kpa",
                                                        "stack_pressure_high_kpa")),
                                ("pressure_rate_kpa_per_s", ("stack_pressure_rate_kpa_per_s",)),
                                ("pressure_residual_kpa", ("stack_pressure_residual_kpa",)),
                                ("load_cell_imbalance_kpa", ("load_cell_imbalance_kpa",)),
                                ("cell_leak_a", ("cell_leak_a",)))]
        self._group_present = [False] * len(self._groups)  # what the buffers hold now
        self._gather_src: tuple[np.ndarray, ...] = ()
        self._gather_args: tuple | None = None
        self._tick = None  # ssb_protect_tick's arguments, made with the gather's (C engine)
        self._ich = eng.slices["charge_overcurrent_a"].start
        self._idis = eng.slices["discharge_overcurrent_a"].start
        self._current_present = False
        self._temp_enabled = _rows(eng.enabled, eng, _PER_THERMISTOR)
        # Enabled rows per (temperature present, charge mode): with no temperature input every
        # temperature protection stays enabled (NaN-frozen, as a missing input must be).
        rows = {mode: np.array([[("_charge_" in n) == mode] for n in _PER_THERMISTOR])
                for mode in (False, True)}  # (4, 1): broadcast over the thermistors
        self._temp_enabled_rows = {(False, False): True, (False, True): True,
                                   (True, False): rows[False], (True, True): rows[True]}
        self._temp_key: tuple[bool, bool] | None = None
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
        eng = self.engine
        present_now = self._group_present
        arrays = (inputs.cell_voltage_v, inputs.temperature_c, inputs.stack_pressure_kpa,
                  inputs.pressure_rate_kpa_per_s, inputs.pressure_residual_kpa,
                  inputs.load_cell_imbalance_kpa, inputs.cell_leak_a)
        src = self._gather_src
        gathered = bool(src and not any(map(is_not, arrays, src))) or self._bind_gather(arrays)
        current = inputs.current_a
        charge_limit_a, discharge_limit_a = inputs.charge_limit_a, inputs.discharge_limit_a
        if (gathered and self._tick is not None and current is not None
                and self._current_present and charge_limit_a is not None
                and discharge_limit_a is not None):
            # The usual tick (every input present, as the last tick, the current too): the
            # gather, the over-current pair and the engine in one C call (ssb_protect_tick).
            if current > self.rest_current_a:
                self.charge_mode = True
            elif current < -self.rest_current_a:
                self.charge_mode = False
            key = (present_now[1], self.charge_mode)
            if key != self._temp_key:
                self._temp_enabled[:] = self._temp_enabled_rows[key]
                self._temp_key = key
            count = self._tick_fn(self._tick, time_s, current, charge_limit_a,
                                  discharge_limit_a, eng._out, eng._cap)
            raw = eng.transitions(count, time_s) if count else []
            return [self._place(t) for t in raw] if raw else raw
        if gathered:
            # Every input present, as the last tick: one C call copies them all.
            rc = self._gather(*self._gather_args)
            if rc != 0:  # pragma: no cover - sizes and pointers checked when bound
                raise RuntimeError(f"ssb_protect_gather: {_PROT_ERRORS.get(rc, rc)}")
        else:
            for k, ((_, vrows, prows), arr) in enumerate(zip(self._groups, arrays, strict=True)):
                if arr is not None:
                    vrows[:] = arr
                    if not present_now[k]:
                        prows[:] = present_now[k] = True
                elif present_now[k]:
                    # Not available this tick: not evaluated (NaN, not present: frozen, not
                    # invalid).
                    vrows[:] = np.nan
                    prows[:] = present_now[k] = False
        values, offset = eng.values, eng.offset
        ich, idis = self._ich, self._idis
        if current is not None:
            if current > self.rest_current_a:
                self.charge_mode = True
            elif current < -self.rest_current_a:
                self.charge_mode = False
            values[ich] = current
            values[idis] = -current
            offset[ich] = _derate(inputs.charge_limit_a, self._max_charge_a)
            offset[idis] = _derate(inputs.discharge_limit_a, self._max_discharge_a)
            if not self._current_present:
                eng.present[ich] = eng.present[idis] = self._current_present = True
        elif self._current_present:
            values[ich] = values[idis] = np.nan
            offset[ich] = offset[idis] = 0.0
            eng.present[ich] = eng.present[idis] = self._current_present = False
        key = (present_now[1], self.charge_mode)
        if key != self._temp_key:
            self._temp_enabled[:] = self._temp_enabled_rows[key]
            self._temp_key = key
        raw = eng.evaluate(time_s)
        return [self._place(t) for t in raw] if raw else raw

    def _bind_gather(self, arrays: tuple[np.ndarray | None, ...]) -> bool:
        """Prepare the one-call copy (ssb_protect_gather) of these input arrays into the
        engine's value rows, when every one is present (and was last tick, so the present
        flags hold), float64, contiguous and of its rows' width. False: take the numpy path
        (it also sets the present flags and raises on a wrong shape)."""
        self._gather_src, self._gather_args, self._tick = (), None, None
        if not all(self._group_present):
            return False
        srcs, lens, offs = [], [], []
        values = self.engine.values
        for (_, vrows, _), arr in zip(self._groups, arrays, strict=True):
            if not (isinstance(arr, np.ndarray) and arr.dtype == np.float64 and arr.ndim == 1
                    and arr.flags.c_contiguous and len(arr) == vrows.shape[1]):
                return False
            start = (vrows.__array_interface__["data"][0]
                     - values.__array_interface__["data"][0]) // values.itemsize
            for row in range(vrows.shape[0]):
                srcs.append(arr)
                lens.append(len(arr))
                offs.append(start + row * vrows.shape[1])
        from bms import _core  # built by pip install (setup.py cffi_modules)

        ffi = _core.ffi
        bufs = [ffi.from_buffer("double[]", a) for a in srcs]
        self._gather = _core.lib.ssb_protect_gather
        # the cffi objects hold the buffers; the tuple of arrays keeps the identity check sound
        self._gather_keep = bufs
        self._gather_args = (ffi.from_buffer("double[]", values), len(values),
                             ffi.new("double *[]", [ffi.cast("double *", b) for b in bufs]),
                             ffi.new("size_t[]", lens), ffi.new("size_t[]", offs), len(srcs))
        self._gather_src = arrays
        eng = self.engine
        if isinstance(eng, ProtectionEngine):
            # The usual tick's one call (update): this gather, the current, the engine.
            tk = ffi.new("ssb_protect_tick_t *")
            tk.lim, tk.st, tk.inputs = eng._lim, eng._st, eng._in
            tk.value = ffi.from_buffer("double[]", eng.values)
            tk.offset = ffi.from_buffer("double[]", eng.offset)
            _, _, tk.src, tk.src_len, tk.dst_off, tk.n_src = self._gather_args
            tk.i_charge, tk.i_discharge = self._ich, self._idis
            tk.max_charge_a, tk.max_discharge_a = self._max_charge_a, self._max_discharge_a
            self._tick_keep = (tk.value, tk.offset)
            self._tick, self._tick_fn = tk, _core.lib.ssb_protect_tick
        return True

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


def _rows(buf: np.ndarray, engine: _EngineBase, names: Sequence[str]) -> np.ndarray:
    """(len(names), channels) view of ``buf`` over protections that are adjacent in the flat
    layout with equal channel counts (raises if the layout says otherwise)."""
    sls = [engine.slices[n] for n in names]
    width = sls[0].stop - sls[0].start
    for a, b in itertools.pairwise(sls):
        if b.start != a.stop or b.stop - b.start != width:
            raise ValueError(f"{names}: not adjacent with equal channel counts")
    view = buf[sls[0].start:sls[-1].stop].reshape(len(names), width)
    assert np.shares_memory(view, buf)
    return view


def _derate(dynamic_limit_a: float, max_static_a: float) -> float:
    """How far the core lowered the allowed current below the static maximum (>= 0)."""
    if dynamic_limit_a is None or not math.isfinite(dynamic_limit_a):
        return 0.0
    return min(max(max_static_a - dynamic_limit_a, 0.0), max_static_a)


class LeakLowerBound:
    """The leak protection's input: each cell's leak estimate less ``sigmas`` of its sigma
    (``leak + k sigma``, k = -3: the lower 3-sigma bound, so a leak that is only possible is
    not a confirmed one), written into ``out`` (the controller's pack-wide buffer, which the
    protections and the cooling check read). One C call a tick (ssb_protect_leak_low, pointers
    kept while the same arrays come back); ``engine="reference"`` is the NumPy it replaces."""

    def __init__(self, out: np.ndarray, k: float = -3.0, engine: str = "c") -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r} not one of {', '.join(ENGINES)}")
        self.out, self.k, self.engine = out, float(k), engine
        self._src: tuple[np.ndarray, np.ndarray] | None = None
        self._args: tuple | None = None

    def update(self, leak_a: np.ndarray, leak_sigma_a: np.ndarray) -> np.ndarray:
        """``out`` = leak_a + k leak_sigma_a (NaN where either is); returns ``out``."""
        src = self._src
        if src is None or leak_a is not src[0] or leak_sigma_a is not src[1]:
            self._bind(leak_a, leak_sigma_a)
        if self._args is None:
            np.multiply(leak_sigma_a, self.k, out=self.out)
            self.out += leak_a
        else:
            self._call(*self._args)
        return self.out

    def _bind(self, leak_a: np.ndarray, leak_sigma_a: np.ndarray) -> None:
        self._src, self._args = (leak_a, leak_sigma_a), None
        arrays = (leak_a, leak_sigma_a, self.out)
        if self.engine != "c" or not all(
                isinstance(a, np.ndarray) and a.dtype == np.float64 and a.ndim == 1
                and a.flags.c_contiguous and len(a) == len(self.out) for a in arrays):
            return  # the NumPy path (it raises on a wrong shape)
        from bms import _core  # built by pip install (setup.py cffi_modules)

        ffi = _core.ffi
        self._call = _core.lib.ssb_protect_leak_low
        # the arrays are held in _src (and out), so the pointers stay valid while they match
        self._args = (ffi.from_buffer("double[]", leak_a),
                      ffi.from_buffer("double[]", leak_sigma_a), self.k,
                      ffi.from_buffer("double[]", self.out), len(self.out))


class LoadCellBaseline:
    """The fixture's static load-cell imbalance, so LOAD_CELL_IMBALANCE watches its change.

    A stack's end plate never loads its load cells equally: assembly tilt and the load cells'
    gain spread give each a fixed share of the force (the emulator's ssb-23 stack reads 90 kPa
    max - min at 1200 kPa, over the 80 kPa warning, on a healthy pack). Both scale with the
    force, so the baseline is each load cell's share of the stack mean (``p_j / mean(p)``),
    averaged over the first ``window_s`` in which every load cell of the stack is valid; from
    then on the imbalance is max - min of ``p_j / share_j``. The additive part (offsets, a few
    kPa) then moves the imbalance by its fraction of the pressure change: ~2 kPa for a 5 kPa
    offset over the stack's 1130-1600 kPa swing. Before the baseline is set, and when it was
    refused, the imbalance is the plain max - min.

    A baseline whose own imbalance is at or above ``accept_below_kpa`` (the pack's fault
    level) is refused (an event): a stack that already shows a fault-level imbalance is not
    taken for its fixture's normal. Imbalance below it at start is taken as static: a contact
    already partly lost when the run starts is not seen until it changes (docs/safety.md).
    With a state file (``bms run --state``) the first baseline is kept there and restored by
    later runs (:meth:`restore`): the first run on a known-good pack is its commissioning.
    """

    def __init__(self, stack: int, n_load: int, window_s: float, accept_below_kpa: float
                 ) -> None:
        self.stack = stack
        self.window_s = window_s
        self.accept_below_kpa = accept_below_kpa
        self.shares: list[float] | None = None
        self.offsets_kpa: list[float] | None = None
        self.refused = n_load < 2  # one load cell has no imbalance to correct
        self._sum = [0.0] * n_load
        self._count = 0
        self._start_s = math.nan
        self.restored = False

    def restore(self, shares: list[float], offsets_kpa: list[float] | None = None) -> None:
        """A baseline recorded earlier (the state file; ``offsets_kpa`` from ``bms
        commission`` over a pressure swing, p_j = share_j mean + offset_j): used from the first
        sample, so this run watches the change since that commissioning, not since its own
        start."""
        if len(shares) != len(self._sum):
            raise ValueError(f"{len(shares)} load-cell shares for a stack of "
                             f"{len(self._sum)} load cells")
        if offsets_kpa is not None and len(offsets_kpa) != len(shares):
            raise ValueError(f"{len(offsets_kpa)} load-cell offsets for a stack of "
                             f"{len(shares)} load cells")
        self.shares = [float(x) for x in shares]
        self.offsets_kpa = None if offsets_kpa is None else [float(x) for x in offsets_kpa]
        self.refused = False
        self.restored = True

    def imbalance_kpa(self, time_s: float, pressure_kpa: np.ndarray
                      ) -> tuple[float, dict | None]:
        """This sample's imbalance (NaN: no valid load cell; 0 with one) and, when the baseline
        was set or refused by this sample, its event."""
        p = pressure_kpa.tolist()
        valid = [x for x in p if x == x]
        if not valid:
            return math.nan, None
        if len(valid) < 2:
            return 0.0, None
        event = None
        shares = self.shares
        if shares is None and not self.refused and len(valid) == len(p):
            event = self._record(time_s, p)
            shares = self.shares
        if shares is None:
            return max(valid) - min(valid), event
        if self.offsets_kpa is None:
            corrected = [x / s for x, s in zip(p, shares, strict=True) if x == x]
        else:
            corrected = [(x - b) / s for x, s, b in zip(p, shares, self.offsets_kpa, strict=True)
                         if x == x]
        return max(corrected) - min(corrected), event

    def _record(self, time_s: float, p: list[float]) -> dict | None:
        mean = sum(p) / len(p)
        if not mean > 0.0:
            return None
        if self._count == 0:
            self._start_s = time_s
        for j, x in enumerate(p):
            self._sum[j] += x / mean
        self._count += 1
        if time_s - self._start_s < self.window_s - TIME_EPS_S:
            return None
        shares = [v / self._count for v in self._sum]
        raw_kpa = (max(shares) - min(shares)) * mean
        event = {"type": "load_cell_baseline", "time_s": time_s, "stack": self.stack,
                 "shares": [round(s, 5) for s in shares], "static_imbalance_kpa": raw_kpa,
                 "samples": self._count}
        if raw_kpa >= self.accept_below_kpa:
            self.refused = True
            event["event"] = "refused"
            event["reason"] = (f"static imbalance {raw_kpa:.1f} kPa is at or above the fault "
                               f"level {self.accept_below_kpa:g} kPa: not a fixture's normal")
        else:
            self.shares = shares
            event["event"] = "set"
        return event
