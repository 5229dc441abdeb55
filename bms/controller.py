"""The control tick: boards -> validation -> C core -> protections -> contactors -> balancing
-> SET_OUTPUTS/HEARTBEAT -> run log and live view.

One :class:`Controller` runs a whole pack (one board per stack). Each tick it asks every board
for a sample before it waits on any, so the boards sample in parallel. Nothing here reads a clock
in the ``sim`` clock: time is ``tick * tick_s`` and every SAMPLE carries ``dt``; in the ``real``
clock the tick keeps deadlines on ``time.monotonic()`` and records its latency.

The order inside a tick is the safety order: a confirmed fault changes the contactor command in
the same tick it is confirmed, and that command is the first thing sent to the boards.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bms.balancing import Balancer
from bms.board_io import BoardIO
from bms.charging import CcdLimit, CcdWatch, HeldLimit, stack_conditions
from bms.contactors import ContactorInputs, ContactorOutput, ContactorState, ContactorStateMachine
from bms.core import OUT_MEAN_OVERPOTENTIAL, Core
from bms.current_check import CurrentPlausibility
from bms.faults import FaultCode, FaultTable, Severity
from bms.link_quality import LinkQuality
from bms.monitor import MonitorServer
from bms.protections import LeakLowerBound, LoadCellBaseline, PackProtections, ProtectionInputs
from bms.runlog import (
    SIM_ROW_BATCH_S,
    RunLog,
    TickRow,
    stack_snapshot,
    standard_columns,
    tick_snapshot,
)
from bms.soc_start import Start, StartReport
from bms.stack_step import StackStep
from bms.statefile import (
    SAVE_PERIOD_S,
    SavedStack,
    SavedState,
    StackCommissioning,
    StateFileError,
    StateWriter,
)
from bms.statefile import encode as encode_state
from bms.statefile import serialize as serialize_state
from bms.thermal_check import CoolingCheck
from bms.tickstats import TickStats
from bms.tuning import (
    BOARD_ACK_WAIT_FRACTION,
    BOARD_SAMPLE_WAIT_FRACTION,
    CCD_CHARGER_RESPONSE_S,
    CCD_EVENT_DEBOUNCE_S,
    CCD_EVENT_HYSTERESIS_A,
    CURRENT_CHECK,
    DERATING_CODES,
    GC_EVERY_TICKS,
    HEARTBEATS_PER_TIMEOUT,
    LINK_QUALITY,
    LOAD_CELL_BASELINE_WINDOW_S,
    THERMAL_CHECK,
    WARNING_DERATE,
)
from bms.validation import StackValidator, ValidatedStack
from bms.vehicle.tick import VehicleTick
from boards.config import TIME_EPS_S, BoardProfile, PackConfig, StackConfig, load_board
from hil.client import BoardClient
from hil.link import LinkError, MeasurementLane
from hil.protocol import Measurement, Outputs, Status
from hil.scaling import Scaler

if TYPE_CHECKING:  # the link imports python-can and cantools (the optional extra "can")
    from bms.vehicle.link import VehicleLink

# Status bits as plain ints (IntFlag arithmetic costs microseconds per tick).
_ST_JUST_BOOTED = int(Status.JUST_BOOTED)
_ST_WATCHDOG = int(Status.WATCHDOG_TRIPPED)
_ST_SENSOR = int(Status.SENSOR_ERROR)
# Sensor faults that make a stack's heat estimate (bms/thermal_check.py) untrustworthy.
_HEAT_INPUT_CODES = frozenset({
    FaultCode.CELL_VOLTAGE_IMPLAUSIBLE, FaultCode.CELL_VOLTAGE_OPEN_WIRE,
    FaultCode.CURRENT_SENSOR, FaultCode.CURRENT_SENSOR_OFFSET})
# The status bits that feed back the output bits (same positions: hil.protocol.Outputs).
_FEEDBACK_MASK = int(Outputs.CONTACTOR_POS | Outputs.CONTACTOR_NEG | Outputs.PRECHARGE)


class SafetyDataLostError(LinkError):
    """A board's safety data was lost (port gone, or no fresh data for the pack's
    ``controller.board_lost_after_s``) and the pack's ``controller.on_board_lost`` is
    ``stop``: the run ended (contactors commanded open). ``bms run`` exits non-zero."""


class WatchdogTooShortError(LinkError):
    """A board's watchdog timeout (its INFO) is too short for this pack's tick to feed."""


@dataclass
class StackRuntime:
    """Everything the controller keeps for one stack: its board (``io``), the validator and
    core that turn the board's counts into estimates, and the latest of both."""

    index: int
    config: StackConfig
    board: BoardProfile
    io: BoardIO
    scaler: Scaler
    validator: StackValidator
    core: Core
    last_valid_s: float = -math.inf
    last_timestamp_s: float | None = None
    data: ValidatedStack | None = None
    out: Any = None
    watchdog_tripped: bool = False
    sensor_error: bool = False
    measurements: int = 0
    # This stack's cells and thermistors in the pack-wide arrays.
    cells: slice = field(default_factory=lambda: slice(0))
    thermistors: slice = field(default_factory=lambda: slice(0))
    stack_voltage_v: float = math.nan
    charge_limit_a: float = math.nan
    discharge_limit_a: float = math.nan
    # Dendrite-safe charging (bms/charging.py): the limit and what it was evaluated at.
    ccd_limit_a: float = math.inf
    ccd_pressure_kpa: float = math.nan
    ccd_temperature_c: float = math.nan
    ccd_watch: CcdWatch | None = None
    # Set once the estimator has started from the first measurement (OCV or saved state).
    estimator_started: bool = False
    baseline: LoadCellBaseline | None = None
    # The board's timestamp: its last value and the controller time it last moved (a frozen
    # timestamp is stale data: BOARD_DATA_STALE).
    last_ts_ms: int | None = None
    ts_moved_s: float = -math.inf
    stale: bool = False
    board_lost: bool = False  # BOARD_LOST raised (port gone or silent too long)
    mismatch: bool = False  # BOARD_MEASUREMENT_MISMATCH active
    # Measured minus predicted cell voltage of the last core step (the current check's input).
    innovation_v: np.ndarray = field(default_factory=lambda: np.empty(0))
    # The receive chain in one C call (bms/stack_step.py), made after the first fast-lane
    # measurement; None: the separate calls.
    chain: StackStep | None = None
    chain_tried: bool = False
    bleed_ptrs: tuple = ()  # the chain's pointers into the two pack-wide bleed arrays
    chain_shares: list[float] | None = None  # the load-cell baseline the chain corrects by

    @property
    def client(self) -> BoardClient:
        return self.io.client

    @property
    def lost(self) -> bool:
        return self.io.lost


class Controller:
    """A pack's BMS. ``ports``: one device path or pyserial URL per stack, in pack order."""

    def __init__(
        self, pack: PackConfig, ports: list[str], clock: str = "sim",
        log_dir: str | Path | None = None, monitor: MonitorServer | None = None,
        timeout_s: float = 0.25, retries: int = 1, meta: dict[str, Any] | None = None,
        pipeline: bool | None = None, state_path: str | Path | None = None,
        saved_state: SavedState | None = None, wall_clock: Callable[[], float] = time.time,
        vehicle: VehicleLink | None = None, initial_soc: float | None = None,
    ) -> None:
        """``state_path``: the state file to save to (every SAVE_PERIOD_S of run time
        and on close); ``saved_state``: what was loaded from it (bms.statefile.load), restored
        at each stack's first measurement; ``wall_clock``: Unix time (the rest between runs).
        ``initial_soc``: start every stack's estimator at this SOC (0..1, every cell) with the
        pack's ``initial_soc_sigma`` at its first measurement, instead of from the OCV: a
        known (or deliberately wrong) start for campaigns and tests; not with a saved state."""
        if len(ports) != len(pack.stacks):
            raise ValueError(f"pack {pack.name} has {len(pack.stacks)} stack(s): give one port "
                             f"per stack, got {len(ports)}")
        if clock not in ("sim", "real"):
            raise ValueError("clock must be 'sim' or 'real'")
        self.pack = pack
        self.clock = clock
        # Sim clock: ask for tick k+1's sample as soon as tick k's has arrived, so the board
        # steps its plant and the frames cross the pty while this process works on tick k.
        # The price: tick k's commands reach the plant after its step to t(k+1), one tick
        # later than in lockstep (as on a board whose conversion started just before the
        # command came). Detection is unchanged; docs/architecture.md has the timing.
        self.pipeline = (clock == "sim") if pipeline is None else bool(pipeline)
        if self.pipeline and clock != "sim":
            raise ValueError("pipelining needs the sim clock (real boards sample on a timer)")
        self.tick_s = pack.controller.tick_s
        self.timeout_s = timeout_s
        self.table = FaultTable()
        boards = [load_board(stack.board) for stack in pack.stacks]
        self.columns = standard_columns(
            pack.n_cells, sum(len(s.thermistor_cell_positions) for s in pack.stacks),
            sum(b.load_cells for b in boards), len(pack.stacks))
        # Sim clock: the rows of a simulated second in one write (bms/runlog.py: a kill loses
        # at most those, and the run can be made again); real clock: one write per row.
        batch = max(1, int(SIM_ROW_BATCH_S / self.tick_s + 1e-9)) if clock == "sim" else 1
        self.log = RunLog(log_dir, self.columns, meta={
            "pack": pack.name, "pack_file": str(pack.path), "ports": ports, "clock": clock,
            "tick_s": self.tick_s, "pipelined": self.pipeline,
            **(meta or {})}, batch_rows=batch) if log_dir else None
        self.stacks = [self._stack_runtime(k, stack, board, port, timeout_s, retries)
                       for k, (stack, board, port)
                       in enumerate(zip(pack.stacks, boards, ports, strict=True))]
        self.protections = PackProtections(pack)
        self.current_check = CurrentPlausibility(len(self.stacks), CURRENT_CHECK)
        # None when the pack's cell gives no cooling_w_per_k (bms/thermal_check.py).
        self.cooling_check = CoolingCheck.from_pack(pack, THERMAL_CHECK)
        self.link_quality = LinkQuality(len(self.stacks), LINK_QUALITY)
        self.contactors = ContactorStateMachine(pack.contactors)
        self.balancer = Balancer(
            pack.balancing, [s.cells for s in pack.stacks],
            [len(s.thermistor_cell_positions) for s in pack.stacks])
        self._balance_sigma_max = pack.balancing.start_delta_soc
        self.monitor = monitor
        self._row = TickRow([s.board.load_cells for s in self.stacks])
        # Dendrite-safe charging: None when the pack has no CCD table (bms/charging.py).
        self.ccd = CcdLimit.from_pack(pack)
        self._ccd_held = HeldLimit(CCD_CHARGER_RESPONSE_S)
        if self.ccd is not None:
            for s in self.stacks:
                s.ccd_watch = CcdWatch(s.index, CCD_EVENT_DEBOUNCE_S, CCD_EVENT_HYSTERESIS_A)
        self._allocate_pack_arrays()
        self._single_stack = len(self.stacks) == 1
        self._measurement_lost = False
        self._boards_lost = False
        self._all_fresh = False  # every board answered this tick (_check_freshness)
        # What the tick derives from the active fault records, keyed on the table's change
        # count (FaultTable.changes): the heat-input suspects (_check_cooling) and (derate,
        # number active) (_balance_and_derate).
        self._suspect_stamp = self._derate_stamp = -1
        self._suspect: set[int | None] = set()
        self._derate = (False, 0)
        self._measurement_timeout_s = self.pack.controller.measurement_timeout_s + TIME_EPS_S
        self._contactor_in = ContactorInputs(stack_voltage_v=0.0, bus_voltage_v=0.0)
        # Set when a lost board ends the run (controller.on_board_lost: stop); run() raises
        # SafetyDataLostError with it after the tick, close() records it in the summary.
        self.stop_reason: str | None = None
        self._stack_v = self._bus_v = 0.0  # this tick's sums (_contactors -> _record)
        self.tick_index = 0
        self.time_s = 0.0
        self.stats = TickStats()
        self.contactor_events: list[dict[str, Any]] = []
        self.fault_events: list[dict[str, Any]] = []
        self._last: tuple | None = None
        self._t0_wall: float | None = None
        self._close_wanted = False
        self._pending_reset = False
        # Set by open() from the boards' INFO; until then a beat every tick (the safe side).
        self.heartbeat_period_s = 0.0
        self._next_heartbeat_s = -math.inf
        if initial_soc is not None and (saved_state is not None
                                        or not 0.0 <= float(initial_soc) <= 1.0):
            raise ValueError(f"initial_soc {initial_soc!r}: a SOC in [0, 1], and not with a "
                             "saved state")
        self.initial_soc = initial_soc
        self._init_state_file(state_path, saved_state, wall_clock)
        # The vehicle over CAN (bms/vehicle/, docs/can.md); None: no vehicle side at all.
        self.vehicle = vehicle
        if vehicle is not None:
            vehicle.attach(self.table, self.log.event if self.log else None)

    def _stack_runtime(self, k: int, stack: StackConfig, board: BoardProfile, port: str,
                       timeout_s: float, retries: int) -> StackRuntime:
        scaler = Scaler(board)
        validator = StackValidator(self.pack, k, board, self.table, scaler)
        # The client refuses a board that runs another clock (INFO SIM_CLOCK) at the handshake.
        io = BoardIO(k, port, BoardClient(port, board, timeout_s=timeout_s, retries=retries,
                                          clock=self.clock),
                     self.table, MeasurementLane(validator.wire_vals),
                     self.log.event if self.log else None)
        io.reconnect = self.pack.controller.on_board_lost == "reconnect"
        io.reconnect_in_background = self.clock == "real"  # an attempt must not stall the tick
        baseline = LoadCellBaseline(k, board.load_cells, LOAD_CELL_BASELINE_WINDOW_S,
                                    self.pack.protections["load_cell_imbalance_kpa"].fault)
        return StackRuntime(index=k, config=stack, board=board, io=io, scaler=scaler,
                            validator=validator, core=Core(self.pack, k), baseline=baseline)

    def _allocate_pack_arrays(self) -> None:
        """Pack-wide arrays (stacks concatenated in pack order), filled in place as each
        board's data arrives: the tick never concatenates. A stack that has not answered yet
        is NaN."""
        c0 = t0 = 0
        for s in self.stacks:
            s.cells = slice(c0, c0 + s.config.cells)
            s.thermistors = slice(t0, t0 + len(s.config.thermistor_cell_positions))
            c0, t0 = s.cells.stop, s.thermistors.stop
        self.n_cells, self.n_therm = c0, t0
        self.n_load = sum(s.board.load_cells for s in self.stacks)
        n, n_st = self.n_cells, len(self.stacks)
        self._cell_v, self._soc, self._soc_sigma = (np.full(n, np.nan) for _ in range(3))
        self._leak_a, self._leak_sigma_a = np.full(n, np.nan), np.full(n, np.nan)
        self._leak_low_a, self._soc_balancing = np.full(n, np.nan), np.full(n, np.nan)
        self._leak_low = LeakLowerBound(self._leak_low_a)
        # Each stack's part of the leaks' lower bounds (the cooling check's input), made once.
        self._leak_low_views = [self._leak_low_a[s.cells] for s in self.stacks]
        self._temps = np.full(self.n_therm, np.nan)
        (self._p_mean_kpa, self._p_rate_kpa_per_s, self._p_cusum_kpa,
         self._p_imbalance_kpa) = (np.full(n_st, np.nan) for _ in range(4))
        self._p_rate_abs = np.full(n_st, np.nan)
        self._prot_in = ProtectionInputs(
            stack_pressure_kpa=self._p_mean_kpa, pressure_rate_kpa_per_s=self._p_rate_abs,
            pressure_residual_kpa=self._p_cusum_kpa,
            load_cell_imbalance_kpa=self._p_imbalance_kpa, cell_leak_a=self._leak_low_a)
        # The bleed currents commanded in the last tick and the one before (A, per cell): the
        # estimator subtracts from each cell's current the bleed that flowed over the interval
        # it predicts (_bleed_flowing).
        self._bleed_cmd_1, self._bleed_cmd_2 = np.zeros(n), np.zeros(n)
        self._bleed_arrays = (self._bleed_cmd_1, self._bleed_cmd_2)  # swapped, never replaced
        self._bleed_zero_1 = self._bleed_zero_2 = True  # each holds zeros (tick)

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Handshake with every board (version, clock, board id, channel counts), then, once
        all have answered, read each board's status, beat and open its outputs (a watchdog
        that tripped before this run is an event and is cleared here: BoardIO.arm), and pace
        the heartbeat by the shortest watchdog timeout the boards report."""
        for s in self.stacks:
            s.io.open()
        # A second pass: a board's handshake can take seconds (2.5 s on an Arduino port), so
        # the first board's watchdog would trip while the last one is opened.
        for s in self.stacks:
            if s.io.arm(read_status=self.clock == "real") and self.log:
                self.log.event({"type": "board", "event": "watchdog tripped before this run",
                                "time_s": self.time_s, "stack": s.index, "port": s.io.port,
                                "detail": "the board's own safe state (outputs open) held; "
                                "cleared by the handshake's HEARTBEAT, not a fault of this run"})
        self._pace_heartbeat()

    def _pace_heartbeat(self) -> None:
        timeout_s = min(s.io.watchdog_timeout_s() for s in self.stacks)
        # Beats go out at most once per tick: a timeout under two ticks cannot be fed (one
        # late tick would trip it).
        if timeout_s < 2.0 * self.tick_s:
            s = min(self.stacks, key=lambda s: s.io.watchdog_timeout_s())
            raise WatchdogTooShortError(
                f"{s.io.port}: board {s.client.info.board_id!r} reports a watchdog timeout of "
                f"{timeout_s * 1000:g} ms, shorter than two ticks of {self.tick_s:g} s "
                f"(controller.tick_s in {self.pack.path}): the heartbeat cannot keep it fed")
        pack_s = self.pack.contactors.heartbeat_timeout_s if self.pack.contactors else None
        if pack_s is not None and abs(timeout_s - pack_s) > 1e-3 and self.log:
            self.log.event({"type": "board", "event": "watchdog differs from pack",
                            "time_s": self.time_s, "board_s": timeout_s, "pack_s": pack_s})
        self.heartbeat_period_s = timeout_s / HEARTBEATS_PER_TIMEOUT

    def close(self) -> dict[str, Any]:
        """Save the state file (when kept), open the contactors (best effort), close the ports
        and the log; the run summary."""
        if self._state_writer is not None:
            self.save_state("stop")
            self._state_writer.close()
            self._state_results()
            self._state_writer, self._next_state_save_s = None, math.inf  # closed: once
        for s in self.stacks:
            s.io.close()
        if self.vehicle is not None:
            self.vehicle.close()
        summary = self.summary()
        if self.log:
            summary["log"] = self.log.close(extra={"run": summary})
        if self.monitor:
            self.monitor.close()
        return summary

    def request_close(self) -> None:
        """Ask to connect the pack (precharge, then close); it stays asked until a fault."""
        self._close_wanted = True
        self.contactors.request_close()

    def request_open(self) -> None:
        self._close_wanted = False
        self.contactors.request_open()

    def request_reset(self, service: bool = False) -> bool:
        """Operator reset of latched faults; True when the conditions hold (no active fault)."""
        ok = self.table.reset(self.time_s, include_critical=service)
        self.contactors.request_reset()
        return ok

    # ------------------------------------------------------------------ the tick

    def _now(self) -> float:
        if self.clock == "sim":
            return self.tick_index * self.tick_s
        if self._t0_wall is None:
            self._t0_wall = time.monotonic()
        return time.monotonic() - self._t0_wall

    def tick(self) -> None:
        """One control cycle: the steps of docs/architecture.md, in the safety order."""
        wall0 = time.perf_counter()
        t = self.time_s = self._now()
        if self.vehicle is not None and self._last is not None:
            self._vehicle_frames()
        self._sample(t)
        valid, all_fresh = self._check_freshness(t)
        charge_a, discharge_a, protect_charge_a = self._power_limits(t)
        current_a = self._pack_current()
        if all_fresh:
            self._protect(t, current_a, protect_charge_a, discharge_a)
            self._check_current(t)
            if self.cooling_check is not None:
                self._check_cooling(t)
        self._check_link(t)
        if self.vehicle is not None:
            self._vehicle_requests(t)
        c_out, fault_latched = self._contactors(t, valid)
        bal, charge_a, discharge_a, n_active = self._balance_and_derate(
            t, c_out, current_a, fault_latched, charge_a, discharge_a)
        self._command(t, c_out, int(c_out.state), bal, charge_a, discharge_a)
        self._bleed_cmd_1, self._bleed_cmd_2 = self._bleed_cmd_2, self._bleed_cmd_1
        self._bleed_zero_1, self._bleed_zero_2 = self._bleed_zero_2, self._bleed_zero_1
        # Every decision but "balancing" bleeds nothing (zeros): into a buffer that holds
        # zeros already (most ticks), nothing to copy.
        zero = bal.reason != "balancing"
        if not (zero and self._bleed_zero_1):
            np.copyto(self._bleed_cmd_1, bal.bleed_current_a)
        self._bleed_zero_1 = zero
        self._record(t, wall0, c_out, current_a, charge_a, discharge_a, bal, n_active)
        self.tick_index += 1
        if t >= self._next_state_save_s:
            self.save_state("periodic")

    def _sample(self, t: float) -> None:
        """1. Ask every board, then wait on each (they sample in parallel); validate and
        estimate each answer. In the sim clock this tick's SAMPLE already left in the
        previous tick (pipelined: right after the answers came; lockstep: after the
        commands, in _command)."""
        sample_dt = self.tick_s if self.clock == "sim" else 0.0
        seqs = []
        for s in self.stacks:  # BoardIO.take_prefetched_or_request, its usual case inline
            io = s.io
            seq = io.prefetched
            if seq is not None:
                io.prefetched = None
            else:
                seq = io.request_sample(sample_dt, t)
            seqs.append(seq)
        if self.clock == "sim":  # _wait_bound's sim-clock bound, inline: one call a stack less
            missed_after_s = self.tick_s + TIME_EPS_S
            answers = [s.io.await_measurement(seq, t, None, 0 if s.measurements > 0 and
                                              t - s.last_valid_s > missed_after_s else None)
                       for s, seq in zip(self.stacks, seqs, strict=True)]
        else:
            answers = [s.io.await_measurement(seq, t, *self._wait_bound(
                s, t, BOARD_SAMPLE_WAIT_FRACTION))
                for s, seq in zip(self.stacks, seqs, strict=True)]
        if self.pipeline:
            # All answers are in (usually they were waiting): the next SAMPLEs leave together,
            # so a process serving several boards wakes once for all of them.
            t_next = (self.tick_index + 1) * self.tick_s
            for s, m in zip(self.stacks, answers, strict=True):
                if m is not None:
                    s.io.prefetched = s.io.request_sample(self.tick_s, t_next)
        for s, m in zip(self.stacks, answers, strict=True):
            if m is not None:
                self._receive(s, m, t, self.tick_s)
            if s.io.ack_seq is not None:  # last tick's SET_OUTPUTS (pipelined, _command)
                s.io.collect_pending_ack(t)

    def _bleed_flowing(self) -> np.ndarray:
        """The bleed per cell that flowed over the interval this tick's MEASUREMENT ends
        (t - tick, t]. Lockstep and the real clock: the command of the last tick (it reached
        the board before its step to t). Pipelined: the command of the tick before that (the
        board read it after its step to the last tick's time, docs/architecture.md "Sim clock
        timing")."""
        return self._bleed_cmd_2 if self.pipeline else self._bleed_cmd_1

    def _wait_bound(self, s: StackRuntime, t: float, fraction: float
                    ) -> tuple[float | None, int | None]:
        """(timeout, retries) of one wait on a board. Real clock: until ``fraction`` of this
        tick's period, no retry (the next tick's request is the retry), so a silent board
        never slows the tick rate. Sim clock (no tick rate to keep): the client's timeout,
        and no retry for a board that missed its last answer, so a silent board costs one
        timeout per tick, not the retries too."""
        if self.clock == "real":
            assert self._t0_wall is not None  # noqa: S101 (set by _now in the real clock)
            end = self._t0_wall + t + fraction * self.tick_s
            return min(s.client.timeout_s, max(end - time.monotonic(), 0.0)), 0
        missed = s.measurements > 0 and t - s.last_valid_s > self.tick_s + TIME_EPS_S
        return None, (0 if missed else None)

    def _check_freshness(self, t: float) -> tuple[bool, bool]:
        """2. Safety data present? Missing for longer than the timeout -> MEASUREMENT_LOST
        (the contactors go SAFE). Returns (valid, all boards answered this tick)."""
        timeout = self._measurement_timeout_s
        all_fresh = valid = True
        for s in self.stacks:
            d = s.data
            if d is None or d.time_s != t:
                all_fresh = False
            if t - s.last_valid_s > timeout:
                valid = False
        if valid:
            if self._measurement_lost:
                self._measurement_lost = False
                self.table.clear_fault(FaultCode.MEASUREMENT_LOST, t)
        else:
            self._measurement_lost = True
            value = max(t - s.last_valid_s for s in self.stacks)
            self.table.raise_fault(FaultCode.MEASUREMENT_LOST, t, None,
                                   value if math.isfinite(value) else None)
        if not valid or self._boards_lost:
            self._check_lost(t)
        self._all_fresh = all_fresh  # the row's test too (_record): no board data moves after
        return valid, all_fresh

    def _check_lost(self, t: float) -> None:
        """A board whose port is gone, or that sent no fresh data for the pack's
        ``controller.board_lost_after_s`` (counted from the run's start for one that never
        answered), is lost: BOARD_LOST. With ``on_board_lost: stop`` the run ends after this
        tick (its command is already all-open: the data was missing, SAFE), with
        ``reconnect`` the pack stays in SAFE and BoardIO reopens the port."""
        cfg = self.pack.controller
        n_lost = 0
        for s in self.stacks:
            silent_s = t - max(s.last_valid_s, 0.0)
            lost = s.io.lost or silent_s > cfg.board_lost_after_s + TIME_EPS_S
            if lost and not s.board_lost:
                why = (s.io.lost_reason if s.io.lost
                       else f"no fresh data for {silent_s:.2f} s")
                self.table.raise_fault(FaultCode.BOARD_LOST, t, None, silent_s, s.index)
                if cfg.on_board_lost == "stop" and self.stop_reason is None:
                    self.stop_reason = (
                        f"board of stack {s.config.name} on {s.io.port} lost at t = {t:.1f} s "
                        f"({why}): safety data lost, the run stops with the contactors "
                        f"commanded open (pack {self.pack.name}: controller.on_board_lost: "
                        "stop; 'reconnect' keeps it in SAFE and reopens the port)")
                    if self.log:
                        self.log.event({"type": "run", "event": "stopped: board lost",
                                        "time_s": t, "stack": s.index, "port": s.io.port,
                                        "reason": self.stop_reason})
            elif s.board_lost and not lost:
                self.table.clear_fault(FaultCode.BOARD_LOST, t, None, None, s.index)
            s.board_lost = lost
            n_lost += lost
        self._boards_lost = n_lost > 0

    def _protect(self, t: float, current_a: float, charge_a: float, discharge_a: float
                 ) -> None:
        """3. Protections over the pack (only on a tick where every board answered: a missing
        board must not look like NaN sensors; its absence is MEASUREMENT_LOST)."""
        self.protections.step(t, self._protection_inputs(current_a, charge_a, discharge_a),
                              self.table)

    def _check_current(self, t: float) -> None:
        """3b. Current-sensor plausibility (bms/current_check.py): no current path means the
        outputs commanded open last tick and, with feedback, reported open (a welded
        contactor conducts)."""
        no_path = self.contactors.outputs == 0 and not self._feedback_bits()
        raised = self.current_check.step(t, [s.data.current_a if s.data is not None
                                             else math.nan for s in self.stacks],
                                         no_path, self.table)
        if raised and self.log:
            for k in raised:
                self.log.event({"type": "current_check", "event": "offset suspected",
                                "time_s": t, "stack": k, "reason": self.current_check.reason(k),
                                "cusum_v_s": self.current_check.cusum_v_s(k)})

    def _check_cooling(self, t: float) -> None:
        """3c. Cooling plausibility (bms/thermal_check.py): each stack's temperature against
        its heat and the pack's nominal cooling."""
        cc = self.cooling_check
        assert cc is not None  # noqa: S101 (called only with a check)
        # A stack whose voltage or current sensors are in fault has an untrustworthy heat (a
        # tap offset, a biased shunt): the check restarts there instead of raising.
        if self._suspect_stamp != self.table.changes:
            self._suspect_stamp = self.table.changes
            self._suspect = {r.stack for r in self.table.active()
                             if r.code in _HEAT_INPUT_CODES}
        suspect = self._suspect
        for s, leak_low in zip(self.stacks, self._leak_low_views, strict=True):
            d, o = s.data, s.out
            if d is not None and o is not None:
                cc.observe(s.index, t, d.current_a, s.stack_voltage_v / s.config.cells, o.soc,
                           o.soc_sigma, leak_low, d.temperature_c,
                           inputs_ok=s.index not in suspect)
        raised = cc.step(t, self.table)
        if raised and self.log:
            for k in raised:
                self.log.event({"type": "thermal_check", "event": "cooling degraded",
                                "time_s": t, "stack": k, "residual_k": cc.residual_k(k),
                                "model_c": cc.model_c(k), "cusum_k_s": cc.cusum_k_s(k),
                                "heat_w_per_cell": cc.heat_w(k)})

    def _check_link(self, t: float) -> None:
        """3d. Link quality (bms/link_quality.py): frames each board's decoder dropped."""
        counts: list[int | None] = [None if (link := s.client.link) is None
                                    else link.counters.errors for s in self.stacks]
        raised = self.link_quality.step(t, counts, self.table)
        if raised and self.log:
            for k in raised:
                self.log.event({"type": "link_quality", "event": "frame errors",
                                "time_s": t, "stack": k,
                                "in_window": self.link_quality.in_window(k),
                                "total": self.link_quality.total(k)})

    def _contactors(self, t: float, valid: bool) -> tuple[ContactorOutput, bool]:
        """4. The contactor state machine on this tick's faults and voltages; the faults it
        reports (precharge, feedback) are raised at once. Returns (output, fault latched)."""
        stack_v = bus_v = 0.0
        for s in self.stacks:
            d = s.data
            if d is not None:
                stack_v += s.stack_voltage_v
                bus_v += d.bus_voltage_v
        self._stack_v, self._bus_v = stack_v, bus_v
        table = self.table
        fault_latched, critical_latched = table.latched_flags()
        # One inputs object, refreshed in place (the state machine keeps no reference).
        inp = self._contactor_in
        inp.stack_voltage_v, inp.bus_voltage_v = stack_v, bus_v
        inp.feedback_bits = self._feedback_bits()
        inp.fault_active, inp.critical_active = fault_latched, critical_latched
        inp.measurement_valid = valid
        c_out = self.contactors.update(t, inp)
        if c_out.faults:
            for code, value in c_out.faults:
                table.raise_fault(code, t, None, value, momentary=True)
            fault_latched = table.fault_latched()
        if c_out.events:
            self.contactor_events.extend(c_out.events)
        return c_out, fault_latched

    def _balance_and_derate(self, t: float, c_out: ContactorOutput, current_a: float,
                            fault_latched: bool, charge_a: float, discharge_a: float
                            ) -> tuple[Any, float, float, int]:
        """5. Bleed masks, and the allowed currents derated while a current-driven warning is
        active. Balance only on SOCs known better than the imbalance that would start a bleed:
        an estimate still converging (sigma above start_delta_soc) counts as no data, so no
        charge is burnt on an estimation error. Returns (decision, limits, active faults)."""
        soc_bal = self._soc_balancing
        state = int(c_out.state)
        # The SOC input (Balancer.soc_input): made only on a tick whose decision reads it
        # (most ticks are gated: discharging, a fault, another state).
        balancer = self.balancer
        if balancer.reads_soc and not balancer.idle_reason(state, current_a, fault_latched):
            balancer.soc_input(self._soc, self._soc_sigma, self._balance_sigma_max, soc_bal)
        bal = balancer.update(t, soc_bal, self._cell_v, self._temps, state, current_a,
                              fault_latched)
        table = self.table
        if self._derate_stamp != table.changes:
            self._derate_stamp = table.changes
            active = table.active()
            self._derate = (any(r.code in DERATING_CODES for r in active), len(active))
        derate, n_active = self._derate
        if derate:
            charge_a *= WARNING_DERATE
            discharge_a *= WARNING_DERATE
        return bal, charge_a, discharge_a, n_active

    def _command(self, t: float, c_out: ContactorOutput, state: int, bal: Any,
                 charge_a: float, discharge_a: float) -> None:
        """6. Commands to the boards: outputs first, then the heartbeat. In the sim clock the
        heartbeat leaves in one write with the next tick's SAMPLE (the board's watchdog runs
        on sim time, so nothing is later than it would be); in the real clock now.
        7. Sim clock in lockstep: ask for the next tick's sample after this tick's commands
        (so the board applies them before it advances), and let the board compute while this
        process logs. (Pipelined: already asked in _sample.)"""
        masks = bal.masks.tolist()  # Python ints at once, not one numpy scalar per board
        outputs = c_out.outputs
        pending = [(s, s.io.send_outputs(outputs, masks[s.index], charge_a, discharge_a, t))
                   for s in self.stacks]
        for s, seq in pending:
            if seq is None:
                continue
            if self.pipeline:
                # The ACK follows the MEASUREMENT already in flight: collect it next tick,
                # after that answer, instead of stopping here for a whole round trip. (The
                # commands reach the plant at the same step either way.)
                s.io.ack_seq = seq
            else:
                s.io.collect_ack(seq, t, *self._wait_bound(s, t, BOARD_ACK_WAIT_FRACTION))
        if t >= self._next_heartbeat_s - TIME_EPS_S:
            self._next_heartbeat_s = t + self.heartbeat_period_s
            host_ms = int(t * 1000.0)
            for s in self.stacks:
                s.io.heartbeat(state, host_ms, self.clock == "sim", t)
        if self.clock == "sim" and not self.pipeline:
            t_next = (self.tick_index + 1) * self.tick_s
            for s in self.stacks:
                s.io.prefetched = s.io.request_sample(self.tick_s, t_next)

    def _vehicle_requests(self, t: float) -> None:
        """3a. The vehicle's frames (CAN): its requests act before the contactor state machine
        of this tick, so an open request reaches this tick's command; a lost heartbeat or
        repeated invalid frames are raised here (bms/vehicle/link.py)."""
        assert self.vehicle is not None  # noqa: S101 (called only with a link)
        for request in self.vehicle.receive(t, self.table.fault_latched()):
            if request == "close":
                self.request_close()
            elif request == "open":
                self.request_open()
            else:
                self.request_reset()

    def _vehicle_frames(self) -> None:
        """0. The BMS's CAN frames due on this tick, first thing on its deadline, with the
        last tick's values: their period is the tick's, not the tick's deadline plus its
        varying work (measured: docs/can.md). A command changed in tick k shows on CAN at the
        start of tick k + 1."""
        assert self.vehicle is not None and self._last is not None  # noqa: S101
        t, c_out, current_a, charge_a, discharge_a, _ = self._last
        table = self.table
        self.vehicle.send(self.tick_index, VehicleTick(
            state=int(c_out.state), outputs=int(c_out.outputs), close_wanted=self._close_wanted,
            fault_latched=table.fault_latched(), critical_latched=table.critical_latched(),
            warning_active=bool(table.active()), current_a=current_a,
            pack_voltage_v=self._stack_v, bus_voltage_v=self._bus_v, charge_limit_a=charge_a,
            discharge_limit_a=discharge_a, cell_voltage_v=self._cell_v, soc=self._soc,
            stacks=self.stacks, faults=[r for r in table.records() if r.active or r.latched]),
            self.time_s)

    def _record(self, t: float, wall0: float, c_out: ContactorOutput, current_a: float,
                charge_a: float, discharge_a: float, bal: Any, n_active: int) -> None:
        """8. Record: events and the ticks.csv row to the run log, the live view."""
        events = self.table.drain_events()
        if events:
            self.fault_events.extend(e for e in events if e.get("type") == "fault")
        duration = time.perf_counter() - wall0
        self.stats.record(duration)
        self._last = (t, c_out, current_a, charge_a, discharge_a, bal)
        if self.log:
            for e in c_out.events:
                self.log.event(e)
            for e in events:
                self.log.event(e)
            arrays = (self._cell_v, self._soc, self._soc_sigma, self._leak_a, self._temps)
            stack_v, bus_v = self._stack_v, self._bus_v
            if not self._all_fresh:
                arrays, current_a = self._without_stale(t, arrays)
                stack_v = bus_v = math.nan
            self.log.row_tick(self._row, t, int(c_out.state), current_a, stack_v, bus_v,
                              arrays, charge_a, discharge_a, int(c_out.outputs), bal.masks,
                              n_active, duration)
        if self.monitor and self.monitor.poll_viewers():
            self.monitor.publish(self.snapshot())

    def _without_stale(self, t: float, arrays: tuple[np.ndarray, ...]
                       ) -> tuple[tuple[np.ndarray, ...], float]:
        """The row's arrays with NaN for every stack that sent no fresh data this tick (the
        last values are kept for control, never logged as this tick's measurement; the
        events say why: MEASUREMENT_LATE, MEASUREMENT_LOST, BOARD_LOST, BOARD_DATA_STALE),
        and the current over the fresh boards only. Only on such ticks: copies."""
        out = tuple(np.array(a, dtype=float, copy=True) for a in arrays)
        fresh_i = []
        for s in self.stacks:
            if s.data is not None and s.data.time_s == t:
                if math.isfinite(s.data.current_a):
                    fresh_i.append(s.data.current_a)
                continue
            for a in out[:4]:
                a[s.cells] = np.nan
            out[4][s.thermistors] = np.nan
            self._row.set_stack(s.index, math.nan, self._row._no_pressure[s.index],
                                math.nan, math.nan, math.nan)
        fresh_i.sort()
        mid = len(fresh_i) // 2
        current = (math.nan if not fresh_i else fresh_i[mid] if len(fresh_i) % 2
                   else 0.5 * (fresh_i[mid - 1] + fresh_i[mid]))
        return out, current

    def snapshot(self) -> dict[str, Any]:
        """The last tick as a JSON-able dict (live view, monitor); built only when asked."""
        if self._last is None:
            return {}
        t, c_out, current_a, charge_a, discharge_a, bal = self._last
        return tick_snapshot(
            t, ContactorState(c_out.state).name, int(c_out.outputs), current_a, charge_a,
            discharge_a,
            sorted({r.code.name for r in self.table.active() if r.severity >= Severity.WARNING}),
            sorted({r.code.name for r in self.table.latched()}),
            [stack_snapshot(s.config.name, s.lost, s.data, s.out, int(bal.masks[s.index]))
             for s in self.stacks])

    def run(self, duration_s: float, on_tick: Callable[[Controller], None] | None = None,
            stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Tick until ``duration_s`` of controller time has passed (or ``stop()`` is true).
        ``on_tick(controller)`` runs after every tick (e.g. a live view that calls
        :meth:`snapshot` when it wants to draw).

        Python's cyclic garbage collector is switched off for the run and called explicitly
        every GC_EVERY_TICKS ticks, in the real clock only when the tick left slack: an
        automatic generation-2 collection in the middle of a tick costs milliseconds (a
        missed 100 Hz deadline). Objects that exist before the run are frozen out of it."""
        n_ticks = int(round(duration_s / self.tick_s))
        gc_was_enabled = gc.isenabled()
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            for k in range(n_ticks):
                if stop is not None and stop():
                    break
                self.tick()
                if on_tick is not None:
                    on_tick(self)
                if self.stop_reason is not None:
                    raise SafetyDataLostError(self.stop_reason)
                if self.clock == "real":
                    self._wait_for_deadline(collect=k % GC_EVERY_TICKS == GC_EVERY_TICKS - 1)
                elif k % GC_EVERY_TICKS == GC_EVERY_TICKS - 1:
                    gc.collect(1)
        finally:
            gc.unfreeze()
            if gc_was_enabled:
                gc.enable()
            if self.log:  # the rows a sim-clock log holds, whatever ended the run
                self.log.flush()
        return self.summary()

    def _wait_for_deadline(self, collect: bool = False) -> None:
        assert self._t0_wall is not None
        deadline = self._t0_wall + self.tick_index * self.tick_s
        remaining = deadline - time.monotonic()
        if remaining < 0:
            self.stats.missed_deadlines += 1
            return
        if collect and remaining > 0.5 * self.tick_s:
            gc.collect(1)  # ~0.1 ms with the pre-run objects frozen (bms bench --tick)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
        time.sleep(remaining)

    # ------------------------------------------------------------------ estimator start, state

    def _init_state_file(self, state_path: str | Path | None, saved: SavedState | None,
                         wall_clock: Callable[[], float]) -> None:
        """Keep the state file (bms/statefile.py): latched faults of the saved run come back
        latched now (their events go out with the first tick); each stack's estimator state
        is restored at its first measurement (_start_estimator)."""
        self.state_path = Path(state_path) if state_path is not None else None
        self._state_writer = StateWriter(self.state_path) if self.state_path else None
        self._saved = saved
        self._wall_clock = wall_clock
        self._next_state_save_s = SAVE_PERIOD_S if self.state_path else math.inf
        self.state_saves = 0
        self.state_error: str | None = None
        self.estimator_starts: list[dict[str, Any]] = []
        if saved is None:
            return
        fresh: list[str] = []
        for s, entry in zip(self.stacks, saved.stacks, strict=True):
            if entry is not None:
                fresh += self._check_saved_stack(s, entry)
                if entry.load_cell_shares is not None:
                    assert s.baseline is not None  # noqa: S101 (made with the stack)
                    try:
                        s.baseline.restore(entry.load_cell_shares)
                    except ValueError as exc:
                        raise StateFileError(f"state file {saved.path}: stack "
                                             f"{s.config.name}: {exc}") from None
        for s, c in zip(self.stacks, saved.commissioning, strict=False):
            if c is not None:
                self._apply_commissioning(s, c, saved.path)
        if saved.removed_partial and self.log:
            self.log.event({"type": "state_file", "event": "partial file removed", "time_s": 0.0,
                            "path": str(saved.path) + ".tmp"})
        names = self.table.restore_latched(saved.latched_faults, 0.0)  # checked at load
        if self.log:
            self.log.event({"type": "state_file", "event": "restored", "time_s": 0.0,
                            "path": str(saved.path), "saved_unix_s": saved.saved_unix_s,
                            "saved_run_time_s": saved.run_time_s, "reason": saved.reason,
                            "latched_faults": names, "started_fresh": sorted(set(fresh)),
                            "load_cell_baseline_restored": [
                                s.index for s in self.stacks
                                if s.baseline is not None and s.baseline.restored]})

    def _apply_commissioning(self, s: StackRuntime, c: StackCommissioning, path: Path) -> None:
        """What ``bms commission`` recorded for this stack (bms/app/commission.py): its
        load-cell baseline in place of the one a run records at its start, its own preload
        and stiffness in the core's pressure model; one event (what ``bms commission`` reads
        back as the model a recorded run was made with)."""
        if c.load_cell_shares is not None:
            assert s.baseline is not None  # noqa: S101 (made with the stack)
            try:
                s.baseline.restore(c.load_cell_shares, c.load_cell_offsets_kpa)
            except ValueError as exc:
                raise StateFileError(f"state file {path}: stack {s.config.name} "
                                     f"commissioning: {exc}") from None
        prm = s.core.params
        if c.preload_kpa is not None or c.stiffness_kpa_per_um is not None:
            prm = replace(prm, preload_kpa=c.preload_kpa or prm.preload_kpa,
                          stiffness_kpa_per_um=c.stiffness_kpa_per_um or prm.stiffness_kpa_per_um)
            s.core = Core(self.pack, s.index, params=prm)  # before the first tick: no state yet
        if self.log:
            self.log.event({"type": "commissioning", "event": "applied", "time_s": 0.0,
                            "stack": s.index, "recorded_utc": c.recorded_utc,
                            "source": c.source, "preload_kpa": prm.preload_kpa,
                            "stiffness_kpa_per_um": prm.stiffness_kpa_per_um,
                            "load_cell_shares": c.load_cell_shares,
                            "load_cell_offsets_kpa": c.load_cell_offsets_kpa})

    def _check_saved_stack(self, s: StackRuntime, entry: SavedStack) -> list[str]:
        """A saved estimator state must have each quantity of this core in its shape (another
        stack layout is refused at start, not in a tick). A quantity the file lacks (written
        before the estimator had it) starts as in a fresh core: returns their names."""
        assert self._saved is not None
        where = f"state file {self._saved.path}: stack {s.config.name}"
        missing = []
        for name, own in s.core.state_dict().items():
            if name not in entry.estimator:
                entry.estimator[name] = own
                missing.append(name)
            elif np.shape(entry.estimator[name]) != np.shape(own):
                raise StateFileError(f"{where}: '{name}' has shape "
                                     f"{np.shape(entry.estimator[name])}, expected "
                                     f"{np.shape(own)}")
        return missing

    def _start_estimator(self, s: StackRuntime, data: ValidatedStack, t: float) -> None:
        """The first measurement of a stack starts its estimator: at ``initial_soc`` when
        given, from its saved state carried over the rest since it was saved, else from the
        OCV (bms/soc_start.py). One event says how ("given", "restored", "ocv_...")."""
        s.estimator_started = True
        core, pack = s.core, self.pack
        start = Start(core.params, pack.estimator.initial_soc_sigma,
                      pack.cell.ecm.hysteresis_max_v is not None, pack.cell.capacity_ah)
        saved = self._saved.stacks[s.index] if self._saved is not None else None
        args = (data.current_a, data.cell_voltage_v, data.temperature_c, data.pressure_kpa)
        if self.initial_soc is not None:
            core.reset(self.initial_soc, temperature_c=data.temperature_c,
                       soc_sigma0=pack.estimator.initial_soc_sigma)
            report = StartReport("given", data.current_a, core.soc.copy(),
                                 core.soc_sigma.copy())
            state = core.state_dict()
        elif saved is not None:
            core.load_state(saved.estimator)  # shapes checked in _init_state_file
            rest_s = self._wall_clock() - saved.state_unix_s
            state = core.state_dict()
            report = start.restore(state, rest_s, *args)
        else:
            state = core.state_dict()
            report = start.cold_start(state, *args)
        core.load_state(state)
        event = report.event(t, s.index)
        self.estimator_starts.append(event)
        if self.log:
            self.log.event(event)

    def save_state(self, reason: str) -> None:
        """Hand the state to the state file's writer thread (the tick never waits on the
        disk; bms.statefile.StateWriter). The outcome of earlier writes is logged here: a
        failure is an event (the first of a run of failures, and the recovery), never an
        exception into the tick."""
        assert self._state_writer is not None
        self._next_state_save_s = self.time_s + SAVE_PERIOD_S
        self._state_results()
        now = self._wall_clock()
        stacks: list[SavedStack | None] = []
        for s in self.stacks:
            if s.estimator_started:
                stacks.append(SavedStack(s.config.name, now, s.core.state_dict(),
                                         s.baseline.shares if s.baseline else None))
            else:  # never measured this run: keep what was saved (loses nothing)
                stacks.append(self._saved.stacks[s.index] if self._saved is not None else None)
        self._state_writer.submit(serialize_state(encode_state(
            self.pack, stacks, [r.to_dict() for r in self.table.latched()], self.time_s,
            reason, now, self._saved.commissioning if self._saved is not None else None)))

    def wait_state_saved(self, timeout_s: float = 10.0) -> None:
        """Wait for the state file's writes handed over so far, and log their outcome."""
        if self._state_writer is not None:
            self._state_writer.flush(timeout_s)
            self._state_results()

    def _state_results(self) -> None:
        if self._state_writer is None:
            return
        for error in self._state_writer.results():
            if error is None:
                if self.state_error is not None and self.log:
                    self.log.event({"type": "state_file", "event": "save recovered",
                                    "time_s": self.time_s})
                self.state_error = None
                self.state_saves += 1
            else:
                if self.log and error != self.state_error:
                    self.log.event({"type": "state_file", "event": "save failed",
                                    "time_s": self.time_s, "error": error})
                self.state_error = error

    # ------------------------------------------------------------------ boards

    def _receive(self, s: StackRuntime, m: Measurement | MeasurementLane, t: float,
                 dt_s: float) -> None:
        """Validate one board's MEASUREMENT (a message, or the values in its fast lane) and run
        its stack's core. A fast-lane measurement after the stack's first goes through the
        chain's one C call (_receive_chain); these calls are its reference."""
        if s.chain is not None and isinstance(m, MeasurementLane):
            self._receive_chain(s, s.chain, t, dt_s)
            return
        timestamp_ms = (int(s.validator.wire_vals[0]) if isinstance(m, MeasurementLane)
                        else m.timestamp_ms)
        if not self._timestamp_moved(s, timestamp_ms, t):
            return  # stale: the same sample again for too long, not used (BOARD_DATA_STALE)
        if isinstance(m, MeasurementLane):
            data = s.validator.check_wire(t)
        else:
            try:
                data = s.validator.check_measurement(t, m, s.scaler.current_a(m),
                                                     s.scaler.bus_voltage_v(m))
            except ValueError as exc:  # channel counts differ from the INFO and the profile
                # One fault that names it (the board is then lost: reconnecting finds the
                # same board, and the record stays active, so no new event per attempt).
                self.table.raise_fault(FaultCode.BOARD_MEASUREMENT_MISMATCH, t, None,
                                       float(len(m.cell_raw)), s.index)
                s.mismatch = True
                if self.log:
                    self.log.event({"type": "board", "event": "measurement mismatch",
                                    "time_s": t, "stack": s.index, "port": s.io.port,
                                    "detail": str(exc)})
                s.io.mark_lost(exc, t)
                return
        self._status_bits(s, int(data.status), t)
        core_dt = self._core_dt(s, data.timestamp_ms, dt_s)
        if not s.estimator_started:
            self._start_estimator(s, data, t)
        o = s.out = s.core.step(core_dt, data.current_a, data.cell_voltage_v,
                                data.temperature_c, data.pressure_kpa,
                                self._bleed_flowing()[s.cells])
        s.data = data
        s.last_valid_s = s.ts_moved_s
        if s.innovation_v.shape != o.voltage_pred_v.shape:
            s.innovation_v = np.empty_like(o.voltage_pred_v)
        np.subtract(data.cell_voltage_v, o.voltage_pred_v, out=s.innovation_v)
        self.current_check.innovation(s.index, t, s.innovation_v, o.soc_sigma,
                                      float(s.core.stack_out[OUT_MEAN_OVERPOTENTIAL]))
        # sum() over a list: under half the cost of a numpy reduction on 23 values (timeit)
        self._collect(s, data, o, t, sum(data.cell_voltage_v.tolist()),
                      min(o.charge_limit_a.tolist()), min(o.discharge_limit_a.tolist()))
        if not s.chain_tried and isinstance(m, MeasurementLane):
            self._make_chain(s)

    def _make_chain(self, s: StackRuntime) -> None:
        """After a stack's first fast-lane measurement (its estimator started, its core
        bound to the validator's arrays): its receive chain in one C call."""
        s.chain_tried = True
        try:
            s.chain = StackStep(s.validator, s.core, s.cells.start)
        except ValueError:
            return  # the reference front end, or a core that copies its inputs: the calls
        s.bleed_ptrs = tuple(s.chain.bleed_pointer(a) for a in self._bleed_arrays)
        s.innovation_v = s.chain.innovation_v
        # The chain writes this stack's data into the pack-wide arrays itself (_collect then
        # copies nothing); with one stack those arrays are the validator's and core's own.
        cells = {} if self._single_stack else {
            "cell_v": self._cell_v, "soc": self._soc, "soc_sigma": self._soc_sigma,
            "leak_a": self._leak_a, "leak_sigma_a": self._leak_sigma_a}
        no_temps = self._single_stack or s.thermistors.stop == s.thermistors.start
        s.chain.bind_pack(cells, s.cells.start, None if no_temps else self._temps,
                          s.thermistors.start,
                          {"p_mean_kpa": self._p_mean_kpa,
                           "p_rate_kpa_per_s": self._p_rate_kpa_per_s,
                           "p_rate_abs_kpa_per_s": self._p_rate_abs,
                           "p_cusum_kpa": self._p_cusum_kpa,
                           "p_imbalance_kpa": self._p_imbalance_kpa}, s.index)
        s.chain.bind_receive(s.scaler, self.current_check, s.index, self.ccd)

    def _receive_chain(self, s: StackRuntime, chain: StackStep, t: float, dt_s: float) -> None:
        """:meth:`_receive` of a fast-lane measurement: scaling, the core's interval, front
        end, core, the current check's CUSUM and the stack's figures in one C call
        (bms/stack_step.py, ``StackStep.receive``); when it reports the usual case and nothing
        is pending here (no stale, mismatch, watchdog, sensor or scalar record to clear, no
        board reset to raise, the load-cell baseline known), the state the calls would leave;
        otherwise the same checks and faults in the same order around its results."""
        # _bleed_flowing, inline
        flowing = self._bleed_cmd_2 if self.pipeline else self._bleed_cmd_1
        bleed = s.bleed_ptrs[0] if flowing is self._bleed_arrays[0] else s.bleed_ptrs[1]
        b = s.baseline
        if b is not None and b.shares is not s.chain_shares:  # set (or restored) since
            chain.bind_baseline(b.shares, b.offsets_kpa)
            s.chain_shares = b.shares
        r = chain.receive(t, dt_s, s.last_ts_ms, s.last_timestamp_s, bleed)
        if r is None:  # the same timestamp again: stale, or a repeat that is used
            self._receive_repeat(s, chain, t, dt_s, bleed)
            return
        v = s.validator
        if (chain.usual and s.chain_shares is not None and chain.runs_current_check
                and not (s.stale or s.mismatch or s.watchdog_tripped or s.sensor_error
                         or s.io.client.reset_pending)):
            # _timestamp_moved, _core_dt, after_front_end, _status_bits and _collect, each
            # with nothing to raise, clear or diagnose (the validator's state: chain.receive);
            # the result's fields from the one unpack of StackStep.receive (chain.vals)
            (_, _, _, _, current_a, stack_voltage_v, charge_limit_a, discharge_limit_a, _, _,
             min_pressure_kpa, min_temperature_c, _, timestamp_ms, status, _, bus_voltage_v,
             timestamp_s, _, ccd_limit_a, _) = chain.vals
            s.last_ts_ms, s.ts_moved_s = timestamp_ms, t
            s.last_timestamp_s = timestamp_s
            data = s.data
            if data is None:
                s.data = data = ValidatedStack(t, v._v_out, v._t_out, v._p_out, current_a,
                                               bus_voltage_v, status, timestamp_ms)
            else:  # its arrays are the validator's buffers (every ValidatedStack's): the
                # stack's one record, its scalars refreshed (no new object per tick)
                data.time_s, data.current_a, data.bus_voltage_v = t, current_a, bus_voltage_v
                data.status, data.timestamp_ms = status, timestamp_ms
            s.measurements += 1
            o = s.out
            if o is None:
                o = s.out = s.core.output()
            else:  # the stack's record of the core's output, its stack values refreshed
                s.core.refresh_output(o)
            s.last_valid_s = t
            s.stack_voltage_v = stack_voltage_v
            s.charge_limit_a, s.discharge_limit_a = charge_limit_a, discharge_limit_a
            if self.ccd is not None:
                s.ccd_pressure_kpa, s.ccd_temperature_c = min_pressure_kpa, min_temperature_c
                s.ccd_limit_a = ccd_limit_a
            else:
                ccd_limit_a = math.nan
            self._row.set_stack(s.index, current_a, data.pressure_kpa,
                                o.pressure_expected_kpa, o.pressure_residual_kpa, ccd_limit_a)
            return
        timestamp_ms, status = r.timestamp_ms, r.status
        self._timestamp_moved(s, timestamp_ms, t)  # it moved: clears a stale record
        s.last_timestamp_s = r.timestamp_s
        data = v.after_front_end(t, r.current_in_a, r.bus_voltage_v, timestamp_ms, status,
                                 r.fe_summary)
        self._status_bits(s, status, t)
        self._chain_result(s, chain, r, data, t, current_check=not chain.runs_current_check)

    def _receive_repeat(self, s: StackRuntime, chain: StackStep, t: float, dt_s: float,
                        bleed: Any) -> None:
        """:meth:`_receive_chain` of a measurement with the last one's timestamp: dropped when
        it has been frozen for too long (stale), else the chain's calls one by one."""
        v = s.validator
        timestamp_ms, status, current_raw, bus_raw = v.wire_vals[:4].tolist()
        if not self._timestamp_moved(s, timestamp_ms, t):
            return  # stale (see _receive)
        sc = s.scaler
        current_a = sc.current_from_raw(current_raw)
        core_dt = self._core_dt(s, timestamp_ms, dt_s)
        r = chain.step(current_a, core_dt, bleed)
        data = v.after_front_end(t, current_a, sc.bus_voltage_from_raw(bus_raw), timestamp_ms,
                                 status, r.fe_summary)
        self._status_bits(s, status, t)
        self._chain_result(s, chain, r, data, t, current_check=True)

    def _chain_result(self, s: StackRuntime, chain: StackStep, r: Any, data: ValidatedStack,
                      t: float, current_check: bool) -> None:
        """A chain step's result taken in (the general paths of :meth:`_receive_chain` and
        :meth:`_receive_repeat`): the core's error raised, its output and the data kept, the
        current check's CUSUM (unless the C call ran it) and the stack's figures."""
        error = chain.core_error(r)
        if error is not None:
            raise error
        o = s.out = s.core.output()
        s.data = data
        s.last_valid_s = s.ts_moved_s
        if current_check:
            self.current_check.innovation_stats(s.index, t, r.innovation_n,
                                                r.innovation_median_v, r.soc_sigma_sum,
                                                s.core.n_cells,
                                                float(s.core.stack_out[OUT_MEAN_OVERPOTENTIAL]))
        self._collect(s, data, o, t, r.stack_voltage_v, r.charge_limit_a, r.discharge_limit_a,
                      r)

    def _status_bits(self, s: StackRuntime, status: int, t: float) -> None:
        """A measurement was accepted: the mismatch cleared, the board's status bits (reset,
        watchdog, sensor error) raised or cleared."""
        if s.mismatch:  # a matching measurement again (the board was fixed or replaced)
            s.mismatch = False
            self.table.clear_fault(FaultCode.BOARD_MEASUREMENT_MISMATCH, t, None, None,
                                   s.index)
        s.measurements += 1
        if s.client.take_reset() or (status & _ST_JUST_BOOTED and s.measurements > 1):
            self.table.raise_fault(FaultCode.BOARD_RESET, t, None, None, s.index,
                                   momentary=True)
        if status & _ST_WATCHDOG:
            self.table.raise_fault(FaultCode.BOARD_WATCHDOG_TRIPPED, t, None, None, s.index)
        elif s.watchdog_tripped:
            self.table.clear_fault(FaultCode.BOARD_WATCHDOG_TRIPPED, t, None, None, s.index)
        s.watchdog_tripped = bool(status & _ST_WATCHDOG)
        if status & _ST_SENSOR:
            self.table.raise_fault(FaultCode.MONITOR_READ_ERROR, t, None, None, s.index)
        elif s.sensor_error:
            self.table.clear_fault(FaultCode.MONITOR_READ_ERROR, t, None, None, s.index)
        s.sensor_error = bool(status & _ST_SENSOR)

    @staticmethod
    def _core_dt(s: StackRuntime, timestamp_ms: int, dt_s: float) -> float:
        """The estimator integrates over the board's own sample interval when it is plausible
        (real clock: jitter), else over the nominal tick."""
        timestamp_s = timestamp_ms / 1000.0
        core_dt = dt_s
        if s.last_timestamp_s is not None:
            board_dt = (timestamp_s - s.last_timestamp_s) % 4294967.296
            if 0.0 < board_dt <= 5.0 * dt_s:
                core_dt = board_dt
        s.last_timestamp_s = timestamp_s
        return core_dt

    def _timestamp_moved(self, s: StackRuntime, timestamp_ms: int, t: float) -> bool:
        """False when the board's timestamp has not moved for longer than the measurement
        timeout: the board repeats an old sample (a sampling loop or firmware hang behind a
        live UART), so the data is stale, not a measurement: BOARD_DATA_STALE, the sample
        is dropped and the data counts as missing (MEASUREMENT_LOST, SAFE). A timestamp
        that repeats for less (a real-clock board sampling slower than the tick, a retried
        SAMPLE) is used; freshness (last_valid_s) counts from when it last moved."""
        if timestamp_ms != s.last_ts_ms:
            s.last_ts_ms, s.ts_moved_s = timestamp_ms, t
            if s.stale:
                s.stale = False
                self.table.clear_fault(FaultCode.BOARD_DATA_STALE, t, None, None, s.index)
            return True
        frozen_s = t - s.ts_moved_s
        if frozen_s > self.pack.controller.measurement_timeout_s + TIME_EPS_S:
            if not s.stale:
                s.stale = True
                self.table.raise_fault(FaultCode.BOARD_DATA_STALE, t, None, frozen_s, s.index)
            return False
        return True

    def _collect(self, s: StackRuntime, data: ValidatedStack, o: Any, t: float,
                 stack_voltage_v: float, charge_limit_a: float, discharge_limit_a: float,
                 chained: Any = None) -> None:
        """Copy one stack's fresh data and estimates into the pack-wide arrays. With a single
        stack the pack-wide arrays *are* the validator's and the core's buffers (both are
        updated in place every tick): bound once, on the first data, never copied.
        ``chained``: the stack chain's result (bms/stack_step.py), whose figures replace the
        Python's here (None: computed here)."""
        cells, k = s.cells, s.index
        v = data.cell_voltage_v
        if self._single_stack:
            if self._cell_v is not v:
                self._cell_v, self._temps = v, data.temperature_c
                self._soc, self._soc_sigma = o.soc, o.soc_sigma
                self._leak_a, self._leak_sigma_a = o.leak_a, o.leak_sigma_a
        elif chained is None:  # (else the chain copied them: StackStep.bind_pack)
            self._cell_v[cells] = v
            self._temps[s.thermistors] = data.temperature_c
            self._soc[cells] = o.soc
            self._soc_sigma[cells] = o.soc_sigma
            self._leak_a[cells] = o.leak_a
            self._leak_sigma_a[cells] = o.leak_sigma_a
        # The sum of the cells (NaN when one is) and the horizons' tightest limits come from
        # the caller: the chain's C or lists (_receive).
        total = stack_voltage_v
        s.stack_voltage_v = total if total == total else float(np.nansum(v))
        s.charge_limit_a, s.discharge_limit_a = charge_limit_a, discharge_limit_a
        if chained is None:  # (the chain wrote these)
            self._p_mean_kpa[k] = o.pressure_mean_kpa
            self._p_rate_kpa_per_s[k] = rate = o.pressure_rate_kpa_per_s
            self._p_rate_abs[k] = abs(rate)  # the protection's input (a numpy call less)
            self._p_cusum_kpa[k] = o.pressure_cusum_kpa
        # The imbalance against the fixture's static one (the core's is the plain max - min).
        assert s.baseline is not None  # noqa: S101 (made with the stack)
        if chained is None or s.chain_shares is None:  # (else the chain wrote it too)
            imbalance, event = s.baseline.imbalance_kpa(t, data.pressure_kpa)
            self._p_imbalance_kpa[k] = imbalance
            if event is not None and self.log:
                self.log.event(event)
        if self.ccd is not None:
            if chained is not None:
                s.ccd_pressure_kpa = chained.min_pressure_kpa
                s.ccd_temperature_c = chained.min_temperature_c
            else:
                s.ccd_pressure_kpa, s.ccd_temperature_c = stack_conditions(
                    data.pressure_kpa, data.temperature_c)
            s.ccd_limit_a = self.ccd.limit_a(s.ccd_pressure_kpa, s.ccd_temperature_c)
        self._row.set_stack(k, data.current_a, data.pressure_kpa, o.pressure_expected_kpa,
                            o.pressure_residual_kpa,
                            s.ccd_limit_a if self.ccd is not None else math.nan)

    # ------------------------------------------------------------------ pack-wide values

    def _feedback_bits(self) -> int | None:
        """Per bit: AND over boards where commanded closed, OR where commanded open, so any
        board that disagrees with the command shows up as a mismatch."""
        if self._single_stack:  # AND and OR of one board: its own bits
            d = self.stacks[0].data
            return None if d is None else int(d.status) & _FEEDBACK_MASK
        bits = [int(s.data.status) & _FEEDBACK_MASK for s in self.stacks if s.data is not None]
        if not bits:
            return None
        cmd = self.contactors.outputs
        and_bits, or_bits = bits[0], 0
        for b in bits:
            and_bits &= b
            or_bits |= b
        return (and_bits & cmd) | (or_bits & ~cmd & _FEEDBACK_MASK)

    def _pack_current(self) -> float:
        """The stacks are in series: one current, measured by every board. The median of the
        valid readings outvotes one bad shunt in packs of three or more stacks."""
        if self._single_stack:
            d = self.stacks[0].data
            return d.current_a if d is not None else math.nan  # NaN when not valid
        values = sorted(s.data.current_a for s in self.stacks
                        if s.data is not None and math.isfinite(s.data.current_a))
        if not values:
            return math.nan
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])

    def _power_limits(self, t: float) -> tuple[float, float, float]:
        """The allowed currents over the stacks: the core's SOF limits, the charge limit also
        under each stack's dendrite-safe CCD limit (bms/charging.py). Returns (charge,
        discharge, the charge limit the over-current levels follow: the SOF limit under the
        highest CCD limit of the last CCD_CHARGER_RESPONSE_S, time for a charger to follow)."""
        charge = discharge = sof = ccd = math.inf
        seen = False
        for s in self.stacks:
            if s.out is None:
                continue
            seen = True
            # min(x, v) as comparisons (x kept unless v < x: NaN never replaces it)
            if s.charge_limit_a < sof:
                sof = s.charge_limit_a
            if s.ccd_limit_a < ccd:
                ccd = s.ccd_limit_a
            if s.discharge_limit_a < discharge:
                discharge = s.discharge_limit_a
            if s.ccd_watch is not None:
                self._ccd_events(s.ccd_watch.update(t, s.ccd_limit_a, s.charge_limit_a,
                                                    s.ccd_pressure_kpa, s.ccd_temperature_c))
        if not seen:
            return 0.0, 0.0, 0.0
        charge = min(sof, ccd)
        protect = min(sof, self._ccd_held.update(t, ccd)) if self.ccd is not None else charge
        return (charge if math.isfinite(charge) else 0.0), \
            (discharge if math.isfinite(discharge) else 0.0), \
            (protect if math.isfinite(protect) else 0.0)

    def _ccd_events(self, events: list[dict[str, Any]]) -> None:
        if events and self.log:
            for e in events:
                self.log.event(e)

    def _protection_inputs(self, current_a: float, charge_limit_a: float,
                           discharge_limit_a: float) -> ProtectionInputs:
        # The leak protection acts on the lower 3-sigma bound: a leak that is only possible
        # (large sigma, e.g. under constant current where a capacity mismatch looks the same)
        # is not a confirmed leak (pack: estimator.leak_alarm_a).
        self._leak_low.update(self._leak_a, self._leak_sigma_a)
        # One object, refreshed in place (its arrays are the pack-wide buffers; with a single
        # stack they are bound to the validator's and core's once, on the first data).
        p = self._prot_in
        p.cell_voltage_v, p.temperature_c = self._cell_v, self._temps
        p.current_a, p.charge_limit_a, p.discharge_limit_a = (current_a, charge_limit_a,
                                                              discharge_limit_a)
        return p

    def summary(self) -> dict[str, Any]:
        return {
            "pack": self.pack.name,
            "clock": self.clock,
            "ticks": self.stats.ticks,
            "time_s": self.time_s,
            "state": self.contactors.state.name,
            "missed_deadlines": self.stats.missed_deadlines,
            "tick_latency_ms": self.stats.percentiles_ms(),
            "faults": self.table.summary(),
            **({"stopped": self.stop_reason} if self.stop_reason else {}),
            "boards": [{"stack": s.index, "port": s.io.port, "lost": s.io.lost or s.board_lost,
                        "lost_reason": s.io.lost_reason or (
                            "no fresh data" if s.board_lost else ""),
                        "reconnects": s.io.reconnects,
                        "watchdog_tripped_before_run": s.io.watchdog_tripped_before_run,
                        "measurements": s.measurements,
                        "misses": s.io.misses, "link": s.io.counters(),
                        "validation": dict(s.validator.counts)} for s in self.stacks],
            **({"state_file": {"path": str(self.state_path), "saves": self.state_saves,
                               "error": self.state_error}} if self.state_path else {}),
            **({"vehicle": self.vehicle.summary()} if self.vehicle is not None else {}),
        }

