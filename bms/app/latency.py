"""Detection latency of every protection, end to end, and the markdown table of docs/safety.md.

Each scenario starts a real emulated board (``python -m hil.emulator``) on a real pty, runs the
real controller (C core through cffi) against it in the sim clock, closes the contactors, injects
a fault with FAULT_INJECT between two ``tick()`` calls, and records:

- ``t_inject_s``: controller time of the last tick before the injection. The SAMPLE of the next
  tick is already in flight then (the controller prefetches it), so the first measurement that
  can show the fault is the one of the tick after next: one tick of pipeline plus one plant step.
- ``t_cross_s`` (ramps only): the first tick of the run of ticks, after the injection, whose
  measured value stays past the fault threshold up to the fault raise (a slow ramp under sensor
  noise can cross and fall back before that run: debounce restarts then, as it must). Cell
  voltages, temperatures, load-cell pressures, current and leak estimates come from the run
  log (``ticks.csv`` through :func:`bms.runlog.load_ticks`); the pressure rate and the
  residual CUSUM are not logged and come from the controller's state after each tick (the
  very values its protections compared).
- ``t_raise_s``: the first time of the fault record at FAULT severity in the FaultTable;
  ``t_open_s``: the first tick after the injection whose contactor command is all open.

Latency = t_raise / t_open minus the reference (``t_inject_s`` for a step, ``t_cross_s`` for a
ramp); the requirement is ``debounce_s + 2 ticks``. After the fault the scenario asks for a
reset while the condition still holds (must be refused), removes the fault, waits until no
FAULT-level condition is active, asks again (must be accepted) and closes the contactors again.

Run: ``bms campaign latency`` (bms/app/campaign/specs/latency.yaml: every scenario a bench case
of the campaign, over ``emu://`` boards on the pool; its report.md has the table).
tests/test_controller_e2e.py runs the same scenarios on ptys and asserts on the same results;
tests/test_controller_pack4.py drives the :class:`Bench` on ssb-4x23.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bms.app.emulators import EmulatorProcess, start_emulator
from bms.contactors import ContactorState
from bms.controller import Controller
from bms.faults import FaultCode, FaultRecord, Severity
from bms.runlog import load_events, load_ticks
from bms.validation import OPEN_TAP_DEVIATION_V
from boards.config import PackConfig
from hil.protocol import InjectedFault as Inject

# Tolerance on times read back from a run log: ticks.csv writes time_s with 6 decimals
# (bms.runlog.COLUMN_DECIMALS), so a logged time is within 0.5 us of the tick's time.
LOG_TIME_TOL_S = 1e-6


class ScenarioError(RuntimeError):
    """A scenario did not reach the state it needs (setup tripped, fault never detected...)."""


# --------------------------------------------------------------------------- bench


class Bench:
    """A controller against one emulated board per stack, sim clock: each an emulator process
    on its own pty (``transport="pty"``, the default: the end-to-end tests), or in-process
    ``emu://`` boards (``"emu"``: the same bytes, no process; the ``latency`` campaign).

    ``soc`` and ``temperature_c`` set the emulators' initial state (board k seeded ``seed +
    k``). The controller owns the links; :meth:`inject` sends FAULT_INJECT through the
    controller's own board clients between ticks (the board acknowledges each one).
    """

    def __init__(self, pack: PackConfig, log_dir: Path, soc: float = 0.5,
                 temperature_c: float | None = None, seed: int = 1, timeout_s: float = 0.25,
                 retries: int = 1, pipeline: bool = True, transport: str = "pty") -> None:
        if transport not in ("pty", "emu"):
            raise ValueError(f"transport {transport!r}: pty or emu")
        self.pack = pack
        self.log_dir = Path(log_dir)
        self.emus: list[EmulatorProcess] = []
        extra = ["--temperature", str(temperature_c)] if temperature_c is not None else None
        try:
            if transport == "emu":
                from hil.emulator.protocol_emu import emu_url, register
                register()
                temp = {} if temperature_c is None else {"temperature": temperature_c}
                ports = [emu_url(str(pack.path), k, seed=seed + k, soc=soc, **temp)
                         for k in range(len(pack.stacks))]
            else:
                for k in range(len(pack.stacks)):
                    self.emus.append(start_emulator(pack, k, "sim", seed, soc=soc,
                                                    extra_args=extra))
                ports = [e.path for e in self.emus]
            self.controller = Controller(pack, ports, clock="sim",
                                         log_dir=self.log_dir, timeout_s=timeout_s,
                                         retries=retries, pipeline=pipeline)
            self.controller.open()
        except BaseException:
            for e in self.emus:
                e.stop()
            raise
        self.summary: dict[str, Any] | None = None
        self.extra: dict[str, Any] = {}

    # -- lifecycle
    def close(self) -> dict[str, Any]:
        if self.summary is None:
            try:
                self.summary = self.controller.close()
            finally:
                for e in self.emus:
                    e.stop()
        return self.summary

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- driving
    @property
    def c(self) -> Controller:
        return self.controller

    def inject(self, fault: Inject, target: int = 0xFF, value: float = 0.0, clear: bool = False,
               stacks: list[int] | None = None) -> None:
        """FAULT_INJECT on the given stacks' boards (default: every board, e.g. a pack-wide
        LOAD_CURRENT: the stacks are in series)."""
        for k in (range(len(self.c.stacks)) if stacks is None else stacks):
            self.c.stacks[k].client.inject_fault(int(fault), target, value, clear)

    def ticks(self, n: int) -> None:
        for _ in range(n):
            self.c.tick()

    def run_for(self, duration_s: float) -> None:
        self.ticks(int(round(duration_s / self.c.tick_s)))

    def tick_until(self, cond: Callable[[], bool], max_s: float,
                   each: Callable[[int], None] | None = None) -> bool:
        """Tick until ``cond()`` holds after a tick (True) or ``max_s`` of controller time
        passed (False). ``each(k)`` runs after the k-th tick (k from 1), before the check."""
        n = int(round(max_s / self.c.tick_s))
        for k in range(1, n + 1):
            self.c.tick()
            if each is not None:
                each(k)
            if cond():
                return True
        return False

    def close_contactors(self, max_s: float = 5.0) -> None:
        self.c.request_close()
        if not self.tick_until(lambda: self.c.contactors.state == ContactorState.CLOSED, max_s):
            raise ScenarioError(f"contactors did not close within {max_s} s: "
                                f"{self.c.contactors.state.name}, {active_names(self.c)}")

    # -- queries
    def state(self) -> ContactorState:
        return self.c.contactors.state


def active_names(c: Controller) -> list[str]:
    return sorted({f"{r.code.name}/{r.severity.name}" for r in c.table.active()})


def fault_conditions_active(c: Controller) -> list[FaultRecord]:
    """Records at FAULT or worse whose condition is active (a reset cannot clear them)."""
    return [r for r in c.table.records() if r.active and r.severity >= Severity.FAULT]


def first_record(c: Controller, code: FaultCode, severity: Severity) -> FaultRecord | None:
    recs = [r for r in c.table.records() if r.code == code and r.severity == severity]
    return min(recs, key=lambda r: r.first_time_s) if recs else None


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    """One protection scenario (ssb-23 class single-stack pack, stack 0)."""

    name: str                      # protection key in the pack file, or a label
    code: FaultCode                # the fault the scenario must raise
    kind: str                      # "step" (latency from injection) or "ramp" (from crossing)
    how: str                       # how it is injected, for the table
    inject: Callable[[Bench], None]
    recover: Callable[[Bench], None]
    soc: float = 0.5
    temperature_c: float | None = None
    load_a: float | None = None    # LOAD_CURRENT (forced) applied after closing
    settle_s: float = 3.0
    drive: Callable[[Bench, int], None] | None = None  # after each tick k >= 1 of the fault
    # Ramps: the measured value per tick, from the run log (ticks) or the controller state.
    from_log: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None
    from_state: Callable[[Controller], float] | None = None
    severity: Severity = Severity.FAULT
    max_detect_s: float = 60.0
    max_recover_s: float = 300.0
    # Where the fault must be attributed: (stack, cell/channel); None entries are not checked.
    where: tuple[int | None, int | None] = (None, None)
    timeout_s: float = 0.25
    retries: int = 1
    # False: the condition is expected to persist after the cause is removed (reset refused).
    recoverable: bool = True
    # Not a pack protection (sensor, link, board faults): its debounce; the pack's otherwise.
    debounce_s: float | None = None
    # The state the fault leads to: FAULT (latched, needs a reset) or SAFE (recovers itself).
    expect_state: ContactorState = ContactorState.FAULT
    # A CRITICAL record is expected to latch on the way: only a service reset clears it.
    service_reset: bool = False
    # Time the plant itself needs before the measured signal can show the fault (e.g. an
    # analog front end settling), evaluated at the injection; added to the bound.
    physical_delay_s: Callable[[Bench], float] | None = None


@dataclass
class Result:
    name: str
    code: str
    kind: str
    how: str
    tick_s: float
    debounce_s: float
    bound_s: float
    t_inject_s: float
    t_cross_s: float | None
    t_raise_s: float
    t_open_s: float | None
    t_feedback_open_s: float | None
    raise_stack: int | None
    raise_cell: int | None
    raise_value: float | None
    outputs_at_raise: int
    fault_latched_at_raise: bool
    physical_delay_s: float
    state_after_fault: str
    reset_refused: bool
    refused_event: bool
    reset_accepted: bool
    state_after_reset: str
    reclosed: bool
    other_faults_before: list[str]
    opened_by: list[str]
    still_active_after_recovery: list[str]
    log_dir: str
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reference_s(self) -> float:
        return self.t_cross_s if self.kind == "ramp" and self.t_cross_s is not None \
            else self.t_inject_s

    @property
    def latency_raise_s(self) -> float:
        return self.t_raise_s - self.reference_s

    @property
    def latency_open_s(self) -> float:
        return math.nan if self.t_open_s is None else self.t_open_s - self.reference_s

    @property
    def latency_from_inject_s(self) -> float:
        return self.t_raise_s - self.t_inject_s

    @property
    def within_bound(self) -> bool:
        return self.latency_open_s <= self.bound_s + LOG_TIME_TOL_S


# Helpers for the scenario table -------------------------------------------------------------


def _cols(ticks: dict[str, np.ndarray], prefix: str, suffix: str) -> np.ndarray:
    names = [k for k in ticks if k.startswith(prefix) and k.endswith(suffix)]
    return np.column_stack([ticks[k] for k in sorted(names)])


def max_cell_voltage(t: dict[str, np.ndarray]) -> np.ndarray:
    return np.nanmax(_cols(t, "cell", "_voltage_v"), axis=1)


def min_cell_voltage(t: dict[str, np.ndarray]) -> np.ndarray:
    return np.nanmin(_cols(t, "cell", "_voltage_v"), axis=1)


def max_temperature(t: dict[str, np.ndarray]) -> np.ndarray:
    return np.nanmax(_cols(t, "t", "_c"), axis=1)


def min_temperature(t: dict[str, np.ndarray]) -> np.ndarray:
    return np.nanmin(_cols(t, "t", "_c"), axis=1)


def mean_pressure(t: dict[str, np.ndarray]) -> np.ndarray:
    return np.nanmean(_cols(t, "pressure_lc", "_kpa"), axis=1)


def max_leak(t: dict[str, np.ndarray]) -> np.ndarray:
    return np.nanmax(_cols(t, "cell", "_leak_a"), axis=1)


def leak_lower_bound(c: Controller) -> float:
    """What the leak protection compares: the estimate's lower 3-sigma bound (controller)."""
    o = c.stacks[0].out
    return float(np.max(np.asarray(o.leak_a) - 3.0 * np.asarray(o.leak_sigma_a)))


def pressure_rate(c: Controller) -> float:
    return abs(float(c.stacks[0].out.pressure_rate_kpa_per_s))


def pressure_cusum(c: Controller) -> float:
    return float(c.stacks[0].out.pressure_cusum_kpa)


def _staircase_gas(step_kpa: float, period_ticks: int
                   ) -> tuple[Callable[[Bench], None], Callable[[Bench, int], None]]:
    """Stack pressure moved in steps of ``step_kpa`` every ``period_ticks`` ticks (GAS_SWELLING
    at step/tick for exactly one plant step, then cleared; the gas stays).

    Why steps: any smooth pressure change fast enough to reach the absolute limits before the
    residual CUSUM does (fault 200 kPa after 2 s) is faster than the rate limit (50 kPa/s for
    0.3 s). The rate is low-passed (tau 0.2 s at 0.1 s ticks: a = 1/3), so one step of 36 kPa
    keeps it above 50 kPa/s for 3 ticks only (the debounce needs 4), and repeating it every 6
    ticks averages 60 kPa/s: the pressure limit trips about 2 s before the residual would.
    """

    def pulse(b: Bench) -> None:
        b.inject(Inject.GAS_SWELLING, value=step_kpa / b.c.tick_s)

    def inject(b: Bench) -> None:
        pulse(b)

    def drive(b: Bench, k: int) -> None:
        if k % period_ticks == 0:
            pulse(b)
        elif k % period_ticks == 1:
            b.inject(Inject.GAS_SWELLING, clear=True)

    return inject, drive


def _gas_back(amount_kpa: float, rate_kpa_per_s: float) -> Callable[[Bench], None]:
    """Undo ``amount_kpa`` of gas pressure at ``rate_kpa_per_s`` (then stop the ramp)."""

    def recover(b: Bench) -> None:
        b.inject(Inject.GAS_SWELLING, value=-math.copysign(rate_kpa_per_s, amount_kpa))
        b.run_for(abs(amount_kpa) / rate_kpa_per_s)
        b.inject(Inject.GAS_SWELLING, clear=True)

    return recover


def _clear(*faults: tuple[Inject, int]) -> Callable[[Bench], None]:
    def recover(b: Bench) -> None:
        for fault, target in faults:
            b.inject(fault, target, clear=True)

    return recover


def scenarios(pack: PackConfig) -> list[Scenario]:
    """Every protection of the pack (and the lost-measurement safe state) as a scenario."""
    p = pack.protections
    tick = pack.controller.tick_s
    out: list[Scenario] = []

    # Cell voltages: the SOC ramp of a forced charge (discharge) past full (empty). The currents
    # stay below the over-current fault levels that remain when the C core's allowed current has
    # fallen to 0 A at the voltage *warning* level (charge 12 - 10 = 2 A, discharge 18 - 15 =
    # 3 A): a current step large enough to push a cell past the fault level trips the
    # over-current first, by design (docs/safety.md, dynamic over-current limits).
    # An overcharged cell stays above the fault level at rest (open contactors, balancing
    # locked out by the latch): the reset stays refused; that is the expected outcome here.
    out.append(Scenario(
        "cell_overvoltage_v", FaultCode.CELL_OVERVOLTAGE, "ramp",
        "LOAD_CURRENT +1.8 A from 99 % SOC (overcharge)",
        lambda b: b.inject(Inject.LOAD_CURRENT, value=1.8), _clear((Inject.LOAD_CURRENT, 0xFF)),
        soc=0.99, from_log=max_cell_voltage, where=(0, None), max_detect_s=180.0,
        max_recover_s=60.0, recoverable=False))
    # The same protection hit by a step: a +0.5 V offset on one cell's channel (VTAP_OFFSET: a
    # drifting monitor input) puts the reading past the fault level (4.25 V) but not the critical
    # one (4.30 V) at once, with no current, so nothing else trips first. Validation flags the
    # jump as implausible (a warning: safety data is not dropped on a guess) and the
    # over-voltage protection acts on the reading. Clearing the offset lets the reset through.
    out.append(Scenario(
        "cell_overvoltage_v (step)", FaultCode.CELL_OVERVOLTAGE, "step",
        "VTAP_OFFSET +0.5 V on cell 12's channel",
        lambda b: b.inject(Inject.VTAP_OFFSET, 11, 0.5), _clear((Inject.VTAP_OFFSET, 11)),
        where=(0, 11), debounce_s=p["cell_overvoltage_v"].debounce_s))
    # Under-voltage: a soft short of 0.15 ohm (an internal short drains the cell at ~20 A
    # without passing the shunt, so no over-current can see it) pulls one cell down at ~1 mV per
    # tick near empty, a clean ramp; the leak filter needs minutes, the heat (~70 W) tens of s.
    out.append(Scenario(
        "cell_undervoltage_v", FaultCode.CELL_UNDERVOLTAGE, "ramp",
        "CELL_SOFT_SHORT 0.15 ohm on cell 6 at 3 % SOC, at rest",
        lambda b: b.inject(Inject.CELL_SOFT_SHORT, 5, 0.15),
        _clear((Inject.CELL_SOFT_SHORT, 5)), soc=0.03, from_log=min_cell_voltage,
        where=(0, 5), max_detect_s=120.0))

    # Temperatures: CELL_HEAT on the cell under thermistor 4 (position 13.2). Currents stay
    # below the over-current levels the core's temperature derating leaves (2 A charge, 3 A
    # discharge at zero allowed current).
    heat_cell, therm = 13, 3
    for name, code, load, watts, fn in (
            ("cell_overtemperature_charge_c", FaultCode.CELL_OVERTEMPERATURE_CHARGE, 1.0, 150.0,
             max_temperature),
            ("cell_overtemperature_discharge_c", FaultCode.CELL_OVERTEMPERATURE_DISCHARGE, -1.5,
             150.0, max_temperature),
            ("cell_undertemperature_charge_c", FaultCode.CELL_UNDERTEMPERATURE_CHARGE, 1.0,
             -150.0, min_temperature),
            ("cell_undertemperature_discharge_c", FaultCode.CELL_UNDERTEMPERATURE_DISCHARGE, -1.5,
             -300.0, min_temperature)):
        out.append(Scenario(
            name, code, "ramp",
            f"{load:+g} A, CELL_HEAT {watts:+g} W in cell {heat_cell + 1}",
            lambda b, w=watts: b.inject(Inject.CELL_HEAT, heat_cell, w),
            _clear((Inject.CELL_HEAT, heat_cell), (Inject.LOAD_CURRENT, 0xFF)),
            load_a=load, from_log=fn, where=(0, therm), max_recover_s=600.0))

    # Over-current: a step of the forced load current (between the fault and critical levels).
    for name, code, amps in (("charge_overcurrent_a", FaultCode.CHARGE_OVERCURRENT,
                              0.5 * (p["charge_overcurrent_a"].fault
                                     + p["charge_overcurrent_a"].critical)),
                             ("discharge_overcurrent_a", FaultCode.DISCHARGE_OVERCURRENT,
                              -0.5 * (p["discharge_overcurrent_a"].fault
                                      + p["discharge_overcurrent_a"].critical))):
        out.append(Scenario(
            name, code, "step", f"LOAD_CURRENT step to {amps:+.1f} A",
            lambda b, a=amps: b.inject(Inject.LOAD_CURRENT, value=a),
            _clear((Inject.LOAD_CURRENT, 0xFF)), where=(None, None)))

    # Stack pressure: absolute limits by a staircase (see _staircase_gas), rate by a sudden
    # delamination of three cells, residual by a slow gas ramp, imbalance by a load-cell offset.
    inj, drv = _staircase_gas(-36.0, 6)
    out.append(Scenario(
        "stack_pressure_low_kpa", FaultCode.STACK_PRESSURE_LOW, "ramp",
        "GAS_SWELLING staircase: -36 kPa every 6 ticks", inj, _gas_back(-520.0, 150.0),
        soc=0.05, drive=drv, from_log=mean_pressure, where=(0, None), max_recover_s=600.0))
    inj, drv = _staircase_gas(36.0, 6)
    out.append(Scenario(
        "stack_pressure_high_kpa", FaultCode.STACK_PRESSURE_HIGH, "ramp",
        "GAS_SWELLING staircase: +36 kPa every 6 ticks", inj, _gas_back(560.0, 150.0),
        soc=1.0, drive=drv, from_log=mean_pressure, where=(0, None), max_recover_s=600.0))
    delaminated = (3, 10, 17)
    out.append(Scenario(
        "stack_pressure_rate_kpa_per_s", FaultCode.STACK_PRESSURE_RATE, "step",
        "CELL_CONTACT_LOSS 0.95 on 3 cells at once (delamination)",
        lambda b: [b.inject(Inject.CELL_CONTACT_LOSS, i, 0.95) for i in delaminated],
        _clear(*((Inject.CELL_CONTACT_LOSS, i) for i in delaminated)), where=(0, None)))
    out.append(Scenario(
        "stack_pressure_residual_kpa", FaultCode.STACK_PRESSURE_RESIDUAL, "ramp",
        "GAS_SWELLING +15 kPa/s (below the rate warning)",
        lambda b: b.inject(Inject.GAS_SWELLING, value=15.0), _gas_back(400.0, 150.0),
        drive=None, from_state=pressure_cusum, where=(0, None), max_recover_s=600.0))

    def imbalance_inject(b: Bench) -> None:
        # Offset the load cell that reads highest, so max - min lands between fault and
        # critical: (fault + critical) / 2 minus the imbalance already there (assembly tilt).
        lim = p["load_cell_imbalance_kpa"]
        pk = np.asarray(b.c.stacks[0].data.pressure_kpa)
        now = float(np.nanmax(pk) - np.nanmin(pk))
        b.extra["target"] = int(np.nanargmax(pk))
        b.inject(Inject.LOADCELL_OFFSET, b.extra["target"], 0.5 * (lim.fault + lim.critical) - now)

    out.append(Scenario(
        "load_cell_imbalance_kpa", FaultCode.LOAD_CELL_IMBALANCE, "step",
        "LOADCELL_OFFSET on the highest load cell, to mid fault-critical", imbalance_inject,
        lambda b: b.inject(Inject.LOADCELL_OFFSET, b.extra["target"], clear=True),
        where=(0, None)))

    # Leak: a 10 ohm soft short (0.37 A at 3.7 V) at rest; the estimate converges over minutes.
    out.append(Scenario(
        "cell_leak_a", FaultCode.CELL_LEAK, "ramp", "CELL_SOFT_SHORT 10 ohm on cell 8, at rest",
        lambda b: b.inject(Inject.CELL_SOFT_SHORT, 7, 10.0),
        _clear((Inject.CELL_SOFT_SHORT, 7)), from_state=leak_lower_bound, where=(0, 7),
        max_detect_s=900.0, max_recover_s=1800.0))

    # Sensor, link and board faults: diagnosed on the first measurement that shows them (no
    # debounce), so the bound is 2 ticks from the injection.
    # An open tap wire: the emulator's channel i decays to 0 V (tau 2 s) while channel i + 1
    # reads what channel i lost (docs/emulator.md, VTAP_OPEN). bms/validation.py knows that
    # signature (adjacent deviations of opposite sign summing to ~0) and invalidates the pair
    # as an open wire as soon as each side is OPEN_TAP_DEVIATION_V off, before channel i + 1
    # could pass an over-voltage level. The bound adds the time the emulated tap needs for
    # that: v (1 - exp(-t / 2 s)) > OPEN_TAP_DEVIATION_V, v the cell voltage.
    def tap_delay(b: Bench) -> float:
        v = float(b.c.stacks[0].data.cell_voltage_v[5])
        return -2.0 * math.log(1.0 - OPEN_TAP_DEVIATION_V / v)

    out.append(Scenario(
        "open tap wire", FaultCode.CELL_VOLTAGE_OPEN_WIRE, "step", "VTAP_OPEN on cell 6's tap",
        lambda b: b.inject(Inject.VTAP_OPEN, 5), _clear((Inject.VTAP_OPEN, 5)), where=(0, 5),
        debounce_s=0.0, physical_delay_s=tap_delay))
    for name, code, how, fault, target, where in (
            ("thermistor open", FaultCode.THERMISTOR_OPEN, "THERMISTOR_OPEN on thermistor 3",
             Inject.THERMISTOR_OPEN, 2, (0, 2)),
            ("thermistor short", FaultCode.THERMISTOR_SHORT, "THERMISTOR_SHORT on thermistor 5",
             Inject.THERMISTOR_SHORT, 4, (0, 4))):
        out.append(Scenario(
            name, code, "step", how, lambda b, f=fault, i=target: b.inject(f, i),
            _clear((fault, target)), where=where, debounce_s=0.0))

    def all_load_cells(clear: bool) -> Callable[[Bench], None]:
        def act(b: Bench) -> None:
            for j in range(b.c.stacks[0].board.load_cells):
                b.inject(Inject.LOADCELL_OPEN, j, clear=clear)
        return act

    out.append(Scenario(
        "all load cells open", FaultCode.PRESSURE_SIGNAL_INVALID, "step",
        "LOADCELL_OPEN on all 4 load cells (one alone is a warning)", all_load_cells(False),
        all_load_cells(True), where=(0, None), debounce_s=0.0))
    out.append(Scenario(
        "board reset", FaultCode.BOARD_RESET, "step", "REBOOT",
        lambda b: b.inject(Inject.REBOOT), lambda b: None, where=(0, None), debounce_s=0.0))
    # Lost measurement: the board stays silent for 1 s; the controller goes SAFE after
    # measurement_timeout_s and back to STANDBY 1 s after the data returns. Short client
    # timeouts keep the wall time of the silent ticks small.
    out.append(Scenario(
        "measurement lost", FaultCode.MEASUREMENT_LOST, "step", "LINK_SILENCE 1 s",
        lambda b: b.inject(Inject.LINK_SILENCE, value=1.0), lambda b: None,
        severity=Severity.WARNING, debounce_s=pack.controller.measurement_timeout_s,
        expect_state=ContactorState.SAFE, timeout_s=0.05, max_recover_s=30.0))
    del tick
    return out


# --------------------------------------------------------------------------- runner


def _crossing(values: np.ndarray, times: np.ndarray, threshold: float, direction: str,
              t_from: float, t_until: float | None = None) -> float | None:
    """Start of the run of ticks past ``threshold`` that ends at ``t_until`` (the raise), or
    the first tick past it after ``t_from`` when there is no such run."""
    past = values > threshold if direction == "above" else values < threshold
    window = times >= t_from - LOG_TIME_TOL_S
    if t_until is not None:
        upto = np.flatnonzero(window & (times <= t_until + LOG_TIME_TOL_S))
        if len(upto) and past[upto[-1]]:
            j = len(upto) - 1
            while j > 0 and past[upto[j - 1]]:
                j -= 1
            return float(times[upto[j]])
    idx = np.flatnonzero(past & window)
    return float(times[idx[0]]) if len(idx) else None


@dataclass
class _Trace:
    """What :func:`run_scenario` observes, phase by phase (controller times in s)."""

    before: list[str] = field(default_factory=list)  # active faults just before the injection
    t_inject: float = 0.0
    delay_s: float = 0.0
    state_values: list[tuple[float, float]] = field(default_factory=list)  # (t, from_state)
    opened: list[float] = field(default_factory=list)  # first all-open command after injection
    rec: FaultRecord | None = None
    outputs_at_raise: int = 0
    latched_at_raise: bool = False
    state_after_fault: str = ""
    refused: bool = False
    refused_event: bool = False
    state_refused: ContactorState | None = None
    t_feedback_open: float | None = None
    accepted: bool = False
    still_active: list[str] = field(default_factory=list)
    state_after_reset: str = ""
    reclosed: bool = False
    t_cross: float | None = None  # ramps: the reference time
    t_open: float | None = None
    opened_by: list[str] = field(default_factory=list)


def run_scenario(sc: Scenario, pack: PackConfig, work_dir: Path, seed: int = 1,
                 transport: str = "pty") -> Result:
    """Run one scenario (see the module docstring) on ``transport`` (Bench); raises
    ScenarioError when it cannot."""
    wall0 = time.perf_counter()
    log_dir = Path(work_dir) / sc.name
    lim = pack.protections.get(sc.name)
    debounce_s = sc.debounce_s if sc.debounce_s is not None else lim.debounce_s
    tick = pack.controller.tick_s
    tr = _Trace()
    with Bench(pack, log_dir, soc=sc.soc, temperature_c=sc.temperature_c, seed=seed,
               timeout_s=sc.timeout_s, retries=sc.retries, transport=transport) as b:
        tr.before = _set_up(sc, b)
        _inject_until_raised(sc, b, tr)
        _reset_while_active(sc, b, tr, log_dir)
        _wait_relays_open(b, tr)
        _recover_and_reset(sc, b, tr)
    ticks = load_ticks(log_dir)
    tr.t_cross = _ramp_crossing(sc, lim, tick, tr, ticks)
    tr.t_open = tr.opened[0] if tr.opened else None
    tr.opened_by = _opened_by(log_dir, tr.t_open)
    return _result(sc, tr, tick, debounce_s, log_dir, time.perf_counter() - wall0,
                   dict(b.extra))


def _set_up(sc: Scenario, b: Bench) -> list[str]:
    """Close, apply the scenario's load, settle; the faults active then (none may latch)."""
    c = b.c
    b.close_contactors()
    if sc.load_a is not None:
        b.inject(Inject.LOAD_CURRENT, value=sc.load_a)
    b.run_for(sc.settle_s)
    before = active_names(c)
    if c.table.fault_latched() or c.contactors.state != ContactorState.CLOSED:
        raise ScenarioError(f"{sc.name}: set-up tripped before the injection: "
                            f"{c.contactors.state.name}, {before}")
    return before


def _inject_until_raised(sc: Scenario, b: Bench, tr: _Trace) -> None:
    """Inject, then tick (driving the scenario, recording ramps and the open command) until
    the fault record appears; the controller's state at that tick."""
    c = b.c
    tr.t_inject = c.time_s
    tr.delay_s = sc.physical_delay_s(b) if sc.physical_delay_s is not None else 0.0
    sc.inject(b)

    def each(k: int) -> None:
        if sc.from_state is not None:
            tr.state_values.append((c.time_s, sc.from_state(c)))
        if c.contactors.outputs == 0 and not tr.opened:
            tr.opened.append(c.time_s)
        if sc.drive is not None and first_record(c, sc.code, sc.severity) is None:
            sc.drive(b, k)

    found = b.tick_until(lambda: first_record(c, sc.code, sc.severity) is not None,
                         sc.max_detect_s, each)
    if not found:
        raise ScenarioError(f"{sc.name}: {sc.code.name} not raised within "
                            f"{sc.max_detect_s} s; active {active_names(c)}, state "
                            f"{c.contactors.state.name}")
    tr.rec = first_record(c, sc.code, sc.severity)
    assert tr.rec is not None
    tr.outputs_at_raise = c.contactors.outputs
    tr.latched_at_raise = c.table.fault_latched()
    tr.state_after_fault = c.contactors.state.name
    tr.state_refused = c.contactors.state


def _reset_while_active(sc: Scenario, b: Bench, tr: _Trace, log_dir: Path) -> None:
    """A latching fault: reset asked at once, while the condition holds (must be refused)."""
    if sc.expect_state != ContactorState.FAULT:
        return
    c = b.c
    # The state is read once OPENING is over (the feedback shows open one tick after the
    # command in lockstep, two in the pipelined sim clock).
    tr.refused = not c.request_reset()
    b.ticks(1)
    if c.contactors.state == ContactorState.OPENING:
        b.tick_until(lambda: c.contactors.state != ContactorState.OPENING, 1.0)
    tr.state_refused = c.contactors.state
    tr.refused_event = any(e.get("event") == "reset_refused" for e in load_events(log_dir))


def _wait_relays_open(b: Bench, tr: _Trace) -> None:
    """The board confirms: its next MEASUREMENT shows every relay open."""
    c = b.c
    b.tick_until(lambda: c.stacks[0].data is not None
                 and int(c.stacks[0].data.status) & 0x07 == 0, 1.0,
                 lambda k: None)
    tr.t_feedback_open = c.time_s


def _recover_and_reset(sc: Scenario, b: Bench, tr: _Trace) -> None:
    """Remove the cause, wait for every FAULT-level condition to clear, reset again, re-close."""
    c = b.c
    sc.recover(b)
    if sc.expect_state == ContactorState.SAFE:
        # SAFE is not latched: it returns to STANDBY by itself once data is back.
        b.tick_until(lambda: c.contactors.state != ContactorState.SAFE, sc.max_recover_s)
        tr.accepted = c.contactors.state == ContactorState.STANDBY
    else:
        b.tick_until(lambda: not fault_conditions_active(c), sc.max_recover_s)
        if sc.service_reset:
            b.extra["plain_reset_accepted"] = c.request_reset()
            b.ticks(1)
        tr.accepted = c.request_reset(service=sc.service_reset)
        b.ticks(1)
    tr.still_active = sorted({r.code.name for r in fault_conditions_active(c)})
    tr.state_after_reset = c.contactors.state.name
    tr.reclosed = False
    if c.contactors.state == ContactorState.STANDBY:
        try:
            b.close_contactors()
            tr.reclosed = True
        except ScenarioError:
            tr.reclosed = False


def _ramp_crossing(sc: Scenario, lim: Any, tick: float, tr: _Trace,
                   ticks: dict[str, np.ndarray]) -> float | None:
    """A ramp's reference time: where its measured value crossed the fault level for good."""
    if sc.kind != "ramp":
        return None
    if sc.from_log is not None:
        values, times = sc.from_log(ticks), ticks["time_s"]
    else:
        times = np.array([t for t, _ in tr.state_values])
        values = np.array([v for _, v in tr.state_values])
    assert tr.rec is not None
    return _crossing(values, times, lim.fault, lim.direction, tr.t_inject + tick,
                     tr.rec.first_time_s)


def _opened_by(log_dir: Path, t_open: float | None) -> list[str]:
    """What opened the contactors: the FAULT-or-worse records raised at the open tick."""
    return sorted({e["name"] for e in load_events(log_dir)
                   if e.get("type") == "fault" and e.get("event") == "raise"
                   and e.get("severity") in ("fault", "critical") and t_open is not None
                   and abs(e["time_s"] - t_open) < LOG_TIME_TOL_S})


def _result(sc: Scenario, tr: _Trace, tick: float, debounce_s: float, log_dir: Path,
            wall_s: float, extra: dict[str, Any]) -> Result:
    rec = tr.rec
    assert rec is not None
    return Result(
        name=sc.name, code=sc.code.name, kind=sc.kind, how=sc.how, tick_s=tick,
        debounce_s=debounce_s, bound_s=debounce_s + tr.delay_s + 2 * tick,
        t_inject_s=tr.t_inject, t_cross_s=tr.t_cross, t_raise_s=rec.first_time_s,
        t_open_s=tr.t_open, t_feedback_open_s=tr.t_feedback_open, raise_stack=rec.stack,
        raise_cell=rec.cell, raise_value=rec.trigger_value, outputs_at_raise=tr.outputs_at_raise,
        fault_latched_at_raise=tr.latched_at_raise, physical_delay_s=tr.delay_s,
        state_after_fault=tr.state_after_fault,
        reset_refused=tr.refused and tr.state_refused == ContactorState.FAULT,
        refused_event=tr.refused_event, reset_accepted=tr.accepted,
        state_after_reset=tr.state_after_reset, reclosed=tr.reclosed,
        other_faults_before=tr.before, opened_by=tr.opened_by,
        still_active_after_recovery=tr.still_active,
        log_dir=str(log_dir), wall_s=wall_s, extra=extra)


# --------------------------------------------------------------------------- table


def markdown_table(results: list[Result]) -> str:
    lines = [
        "| protection | injected | debounce_s | bound: debounce + 2 ticks (s) | from | "
        "to fault raise (s) | to open command (s) | from injection to raise (s) | opened by |",
        "|---|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in results:
        ref = "crossing" if r.kind == "ramp" else "injection"
        lines.append(
            f"| `{r.name}` | {r.how} | {r.debounce_s:g} | {r.bound_s:.2f} | {ref} | "
            f"{r.latency_raise_s:.2f} | {r.latency_open_s:.2f} | "
            f"{r.latency_from_inject_s:.2f} | {', '.join(r.opened_by) or '-'} |")
    return "\n".join(lines)
