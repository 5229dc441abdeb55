"""Emulated board: serves protocol v1 (docs/protocol.md) on a pseudo-terminal from a Plant.

:class:`EmulatedBoard` is the protocol logic (frames in, frames out, both clocks, the board
watchdog, NACKs, boot INFO, link faults); :func:`serve_pty` runs it on the master side of a pty
(``os.openpty``) whose slave path a host opens like any serial port. In the ``sim`` clock the
server never sleeps: it blocks on the pty and advances the plant by each SAMPLE's dt_us.
"""

from __future__ import annotations

import errno
import math
import os
import select
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from boards.config import TIME_EPS_S, BoardProfile, PackConfig, load_board
from hil.emulator.board_lane import TickLane
from hil.emulator.faults import LINK_CODES, FaultError, InjectedFault, LinkFaults, apply_link_fault
from hil.emulator.plant import Plant, PlantParams, PlantSnapshot, SensorCounts
from hil.emulator.scenario import Scenario, ScenarioRunner
from hil.emulator.truth import TruthWriter
from hil.protocol import (
    PROTOCOL_VERSION,
    Ack,
    BoardKind,
    Capability,
    DecodedFrame,
    FaultFlags,
    FaultInject,
    FrameDecoder,
    Heartbeat,
    Hello,
    Info,
    Measurement,
    Message,
    MsgType,
    Nack,
    NackError,
    Outputs,
    Sample,
    SetOutputs,
    Status,
    encode_frame,
)

FW_VERSION = (0, 1, 0)
# Largest plant step the board takes inside one SAMPLE: longer dt_us are split so the scenario,
# the watchdog and the thermal network see at most 1 s at a time (assumption: ample for
# time constants of >= 10 s; the RC branches are integrated exactly anyway).
MAX_SUBSTEP_S = 1.0
# Status bits as plain ints (IntFlag arithmetic costs microseconds per sample)
_ST_POS, _ST_NEG, _ST_PRE = int(Status.CONTACTOR_POS), int(Status.CONTACTOR_NEG), int(
    Status.PRECHARGE)
_ST_WD, _ST_BOOT, _ST_BAL = int(Status.WATCHDOG_TRIPPED), int(Status.JUST_BOOTED), int(
    Status.BALANCING)
_ST_SENSOR, _ST_SIM = int(Status.SENSOR_ERROR), int(Status.SIM_CLOCK)
# Truth rows held for one write in the sim clock (TruthWriter batch_rows): a campaign keeps one
# row per simulated second, so a SIGKILL loses at most about a simulated minute of truth
SIM_TRUTH_BATCH_ROWS = 64
_OUTPUT_BITS = int(Outputs.CONTACTOR_POS | Outputs.CONTACTOR_NEG | Outputs.PRECHARGE)


@dataclass
class BoardOptions:
    pack: PackConfig
    stack_index: int = 0
    board: BoardProfile | None = None
    clock: str = "sim"                    # "sim" or "real"
    seed: int = 0
    scenario: Scenario | None = None
    truth_path: Path | None = None
    truth_every: int = 1
    initial_soc: float | None = None      # default: scenario's, else 0.5
    temperature_c: float | None = None    # default: scenario's, else 25 C
    params: PlantParams | None = None
    # the usual sim-clock tick in one C call (board_lane.py); False: every frame through the
    # general path (the reference the lane is tested against)
    fast_lane: bool = True


@dataclass
class _Speculation:
    dt_us: int
    t0_s: float
    snapshot: PlantSnapshot
    counts: SensorCounts
    truth_rows: list[list[float]] | None


@dataclass
class BoardCounters:
    frames_in: int = 0
    replies: int = 0
    dropped_replies: int = 0     # LINK_DROP / LINK_SILENCE
    corrupted_bytes: int = 0     # LINK_CORRUPT
    write_overruns: int = 0      # host not reading: frame dropped instead of blocking
    nacks: int = 0
    reboots: int = 0
    watchdog_trips: int = 0
    samples: int = 0
    speculation_hits: int = 0    # precomputed steps used
    speculation_misses: int = 0  # precomputed steps undone (another request came first)
    scenario_errors: list[str] = field(default_factory=list)


class EmulatedBoard:
    """Protocol logic of one emulated board around one Plant (no I/O: bytes in, bytes out)."""

    def __init__(self, opts: BoardOptions) -> None:
        if opts.clock not in ("sim", "real"):
            raise ValueError(f"clock must be 'sim' or 'real', got {opts.clock!r}")
        self.opts = opts
        pack = opts.pack
        stack = pack.stacks[opts.stack_index]
        self.profile = opts.board if opts.board is not None else load_board(stack.board)
        sc = opts.scenario
        soc0 = opts.initial_soc if opts.initial_soc is not None else (
            sc.initial_soc if sc and sc.initial_soc is not None else 0.5)
        t0 = opts.temperature_c if opts.temperature_c is not None else (
            sc.initial_temperature_c if sc and sc.initial_temperature_c is not None else 25.0)
        self.plant = Plant(pack, opts.stack_index, self.profile, opts.seed, opts.params,
                           initial_soc=soc0, temperature_c=t0)
        self.sim = opts.clock == "sim"
        self.link = LinkFaults()
        self._link_rng = np.random.default_rng(np.random.SeedSequence([opts.seed, 0xB0A2D]))
        self.counters = BoardCounters()
        self.decoder = FrameDecoder()
        self.runner = ScenarioRunner(sc, self.plant, self._inject) if sc else None
        # sim clock: truth rows written in batches (truth.py), flushed at close()
        self.truth = (TruthWriter(opts.truth_path, self.plant.n, self.plant.m, opts.truth_every,
                                  SIM_TRUTH_BATCH_ROWS if self.sim else 1)
                      if opts.truth_path else None)
        self.heartbeat_timeout_s = (pack.contactors.heartbeat_timeout_s
                                    if pack.contactors else 1.0)
        self.board_id = f"{self.profile.name}#{opts.stack_index}"[:14]
        self.capabilities = int(Capability.FAULT_INJECT | Capability.BALANCING
                                | (Capability.SIM_CLOCK if self.sim else 0))
        self.boot_id = int(self._link_rng.integers(1, 0xFFFF))
        self._wall0 = time.monotonic()
        self._last_counts = self.plant.sensor_counts()
        self._sample_time_s = self.board_time_s
        self._boot_state()
        self.outbox: list[bytes] = []
        self._spec: _Speculation | None = None
        self._last_dt_us = 0
        self._truth_rows: list[list[float]] | None = None
        self._lane = (TickLane(self, _ST_WD) if opts.fast_lane and self.sim
                      and self.plant._c is not None else None)
        self._send(self._info(), 0)  # boot INFO, seq 0

    # ------------------------------------------------------------------ state

    def _boot_state(self) -> None:
        self.plant.open_all()
        self.watchdog_tripped = False
        self.just_booted = True
        self.last_heartbeat_s = self.board_time_s

    @property
    def board_time_s(self) -> float:
        return self.plant.t_s if self.sim else time.monotonic() - self._wall0

    def reboot(self) -> None:
        """Board restart: new boot_id, contactors open, JUST_BOOTED, INFO seq 0. The stack (the
        plant) and its faults are physical and stay; a half-received frame is lost."""
        self._cancel_speculation()
        self.counters.reboots += 1
        self.boot_id = (self.boot_id % 0xFFFE) + 1
        self.decoder.reset()
        self._boot_state()
        self._send(self._info(), 0)

    def _info(self) -> Info:
        p = self.profile
        return Info(PROTOCOL_VERSION, int(BoardKind.EMULATOR), FW_VERSION, p.cells, p.thermistors,
                    p.load_cells, int(round(self.heartbeat_timeout_s * 1000)), self.capabilities,
                    self.boot_id, self.board_id)

    def _inject(self, code: InjectedFault, target: int, value: float, clear: bool) -> None:
        """Route a fault: link faults and REBOOT to the board, the rest to the plant."""
        code = InjectedFault(code)
        if code == InjectedFault.REBOOT:
            if not clear:
                self.reboot()
        elif code in LINK_CODES:
            apply_link_fault(self.link, code, value, clear, self.board_time_s)
        else:
            if code == InjectedFault.CLEAR_ALL:
                self.link.clear()
            self.plant.inject_fault(code, target, value, clear)

    # ------------------------------------------------------------------ time

    def advance(self, dt_s: float) -> None:
        """Advance the plant (scenario, watchdog, truth) by dt_s in substeps <= 1 s."""
        if dt_s <= 0:
            return
        n = max(1, math.ceil((dt_s - TIME_EPS_S) / MAX_SUBSTEP_S))
        h = dt_s / n
        for _ in range(n):
            if self.runner is not None:
                self.runner.advance()
            self.plant.step(h)
            self._check_watchdog()
            if self.truth is not None:
                if self._truth_rows is not None:
                    self._truth_rows.append(self.plant.truth_row())
                else:
                    self.truth.write_row_from(self.plant.truth_row)
        if self.runner is not None and self.runner.errors:
            self.counters.scenario_errors.extend(self.runner.errors)
            self.runner.errors.clear()

    def _check_watchdog(self) -> None:
        if not self.watchdog_tripped and \
                self.board_time_s - self.last_heartbeat_s > self.heartbeat_timeout_s:
            self.watchdog_tripped = True
            self.counters.watchdog_trips += 1
            self.plant.open_all()

    # ------------------------------------------------------------------ speculation
    # In the sim clock the host usually asks for the same dt again. While it digests a reply,
    # the board computes the next step ahead (from a Plant.snapshot); a matching SAMPLE then
    # only costs the encoding, anything else restores the snapshot first. Results are exactly
    # those without speculation: it only runs when the step cannot trip the watchdog, fire a
    # scenario event or send anything, and truth rows wait until the step is committed.

    def speculate(self) -> None:
        """Precompute the next SAMPLE with the last dt (sim clock; called when idle)."""
        if not self.sim or self._spec is not None or not 0 < self._last_dt_us <= 1_000_000:
            return
        dt_s = self._last_dt_us * 1e-6
        t0 = self.plant.t_s
        if not self.watchdog_tripped and t0 + dt_s - self.last_heartbeat_s \
                > self.heartbeat_timeout_s:
            return
        if self.runner is not None and self.runner.due():
            return
        snap = self.plant.snapshot()
        self._truth_rows = [] if self.truth is not None else None
        try:
            self.advance(dt_s)
            counts = self.plant.sensor_counts()
        finally:
            rows, self._truth_rows = self._truth_rows, None
        self._spec = _Speculation(self._last_dt_us, t0, snap, counts, rows)

    def _cancel_speculation(self) -> None:
        spec, self._spec = self._spec, None
        if spec is not None:
            self.counters.speculation_misses += 1
            self.plant.restore(spec.snapshot)

    def _commit_speculation(self) -> None:
        spec, self._spec = self._spec, None
        assert spec is not None  # noqa: S101 (caller checked)
        self.counters.speculation_hits += 1
        if self.truth is not None and spec.truth_rows:
            for row in spec.truth_rows:
                self.truth.write_row(row)
        self._last_counts = spec.counts

    def tick_real(self) -> None:
        """Real clock: sample on the board's own timer (called every sample period)."""
        self.advance(self.profile.sample_period_s)
        self._last_counts = self.plant.sensor_counts()
        self._sample_time_s = self.board_time_s

    # ------------------------------------------------------------------ frames

    def feed(self, data: bytes) -> None:
        """Bytes from the host; replies are appended to ``outbox``. The usual tick (a SAMPLE,
        or a HEARTBEAT and a SAMPLE) goes through the fast lane when nothing unusual is on."""
        # (a lane tick leaves _last_counts as it was: in the sim clock it is only read right
        # after a SAMPLE on the general path or a committed speculation has set it)
        lane, link = self._lane, self.link
        if (lane is not None and self._spec is None and not link.drop_probability
                and not link.corrupt_probability and self.decoder.idle
                and lane.feed(data)):
            return
        for df in self.decoder.feed(data):
            self.counters.frames_in += 1
            self.handle(df)

    def _send(self, msg: Message, seq: int) -> None:
        if self.board_time_s < self.link.silence_until_s:
            self.counters.dropped_replies += 1
            return
        if self.link.drop_probability and self._link_rng.random() < self.link.drop_probability:
            self.counters.dropped_replies += 1
            return
        frame = encode_frame(msg, seq)
        if self.link.corrupt_probability:
            buf = np.frombuffer(frame, dtype=np.uint8).copy()
            hit = self._link_rng.random(len(buf)) < self.link.corrupt_probability
            if hit.any():
                buf[hit] ^= self._link_rng.integers(1, 256, int(hit.sum()), dtype=np.uint8)
                self.counters.corrupted_bytes += int(hit.sum())
                frame = buf.tobytes()
        self.counters.replies += 1
        self.outbox.append(frame)

    def _nack(self, msg_type: int, error: NackError, seq: int, detail: int = 0) -> None:
        self.counters.nacks += 1
        self._send(Nack(int(msg_type), int(error), detail), seq)

    def handle(self, df: DecodedFrame) -> None:
        if df.error is not None:
            self._cancel_speculation()
            nack = df.nack(PROTOCOL_VERSION)
            if nack is not None:
                self.counters.nacks += 1
                self._send(nack, df.seq)
            return
        msg, seq = df.msg, df.seq
        if self._spec is not None:
            if isinstance(msg, Sample) and msg.dt_us == self._spec.dt_us:
                self._commit_speculation()
                self._send(self._measurement(), seq)
                return
            if isinstance(msg, Heartbeat):  # the beat came before the precomputed step
                self.last_heartbeat_s = self._spec.t0_s
                self.watchdog_tripped = False
                return
            self._cancel_speculation()
        if isinstance(msg, Sample):
            if self.sim:
                self._last_dt_us = msg.dt_us
                self.advance(msg.dt_us * 1e-6)
                self._last_counts = self.plant.sensor_counts()
            self._send(self._measurement(), seq)
        elif isinstance(msg, Heartbeat):
            self.last_heartbeat_s = self.board_time_s
            self.watchdog_tripped = False
        elif isinstance(msg, SetOutputs):
            self._set_outputs(msg, seq)
        elif isinstance(msg, Hello):
            if msg.min_version <= PROTOCOL_VERSION <= msg.max_version:
                self._send(self._info(), seq)
            else:
                self._nack(MsgType.HELLO, NackError.BAD_VERSION, seq, PROTOCOL_VERSION)
        elif isinstance(msg, FaultInject):
            try:
                code = InjectedFault(msg.fault)
            except ValueError:
                self._nack(MsgType.FAULT_INJECT, NackError.BAD_VALUE, seq)
                return
            clear = bool(msg.flags & FaultFlags.CLEAR)
            if code in LINK_CODES:
                # Link faults start after their ACK: a host can always learn that the fault
                # is on (a dropped ACK would look like the fault never arrived).
                try:
                    if code != InjectedFault.REBOOT:
                        apply_link_fault(self.link, code, float(msg.value), clear,
                                         self.board_time_s)
                except FaultError:
                    self._nack(MsgType.FAULT_INJECT, NackError.BAD_VALUE, seq)
                    return
                saved = (self.link.drop_probability, self.link.corrupt_probability,
                         self.link.silence_until_s)
                self.link.drop_probability = self.link.corrupt_probability = 0.0
                self.link.silence_until_s = -math.inf
                self._send(Ack(int(MsgType.FAULT_INJECT)), seq)
                (self.link.drop_probability, self.link.corrupt_probability,
                 self.link.silence_until_s) = saved
                if code == InjectedFault.REBOOT and not clear:
                    self.reboot()
                return
            try:
                self._inject(code, msg.target, float(msg.value), clear)
            except FaultError:
                self._nack(MsgType.FAULT_INJECT, NackError.BAD_VALUE, seq)
                return
            self._send(Ack(int(MsgType.FAULT_INJECT)), seq)
        else:
            # INFO, MEASUREMENT, ACK, NACK are board -> host only
            self._nack(int(msg.TYPE), NackError.UNSUPPORTED, seq)

    def _set_outputs(self, msg: SetOutputs, seq: int) -> None:
        n = self.profile.cells
        # Bits 3-7 of outputs are reserved: a host that sets them means something this board
        # does not do (the firmware refuses them the same way, boards/firmware/src/app.c).
        if (msg.outputs & ~_OUTPUT_BITS or msg.charge_limit_ma < 0 or msg.discharge_limit_ma < 0
                or msg.balance_mask >> n):
            self._nack(MsgType.SET_OUTPUTS, NackError.BAD_VALUE, seq)
            return
        closing = bool(msg.outputs & (Outputs.CONTACTOR_POS | Outputs.CONTACTOR_NEG
                                      | Outputs.PRECHARGE))
        if closing and self.watchdog_tripped:
            self._nack(MsgType.SET_OUTPUTS, NackError.STATE, seq)
            return
        self.plant.set_outputs(
            contactor_pos=bool(msg.outputs & Outputs.CONTACTOR_POS),
            contactor_neg=bool(msg.outputs & Outputs.CONTACTOR_NEG),
            precharge=bool(msg.outputs & Outputs.PRECHARGE),
            balance_mask=msg.balance_mask,
            charge_limit_a=msg.charge_limit_ma / 1000.0,
            discharge_limit_a=msg.discharge_limit_ma / 1000.0,
        )
        self._send(Ack(int(MsgType.SET_OUTPUTS)), seq)

    def _status_bits(self) -> int:
        """The MEASUREMENT's status bits but the watchdog's and the sensor error's."""
        o = self.plant.outputs
        return ((_ST_POS if o.contactor_pos else 0)
                | (_ST_NEG if o.contactor_neg else 0)
                | (_ST_PRE if o.precharge else 0)
                | (_ST_BOOT if self.just_booted else 0)
                | (_ST_BAL if o.balance_mask else 0)
                | (_ST_SIM if self.sim else 0))

    def _measurement(self) -> Measurement:
        c = self._last_counts
        status = (self._status_bits()
                  | (_ST_WD if self.watchdog_tripped else 0)
                  | (_ST_SENSOR if c.sensor_error else 0))
        self.just_booted = False
        self.counters.samples += 1
        # sim clock: the plant's time; real clock: when the board took the sample
        t_s = self.plant.t_s if self.sim else self._sample_time_s
        return Measurement(int(round(t_s * 1000.0)) & 0xFFFFFFFF, status,
                           c.current_raw, c.bus_voltage_raw, tuple(c.cell_raw),
                           tuple(c.thermistor_raw), tuple(c.load_cell_raw))

    def close(self) -> None:
        self._cancel_speculation()
        if self.truth is not None:
            self.truth.close()


# --------------------------------------------------------------------------- pty server


class PtyServer:
    """Owns the pty pair; ``serve()`` runs the board until ``stop()`` (or forever)."""

    def __init__(self, board: EmulatedBoard) -> None:
        self.board = board
        self.master_fd, self.slave_fd = os.openpty()
        # Raw slave: no echo, no CR/LF translation before the host configures the port, so the
        # boot INFO is not echoed back into our own input.
        tty.setraw(self.slave_fd)
        self.path = os.ttyname(self.slave_fd)
        os.set_blocking(self.master_fd, False)
        self._wake_r, self._wake_w = os.pipe()
        self._stopped = False

    def stop(self) -> None:
        """Ask serve() to return (thread-safe)."""
        self._stopped = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _flush(self) -> None:
        out = self.board.outbox
        while out:
            frame = out.pop(0)
            try:
                os.write(self.master_fd, frame)
            except BlockingIOError:
                self.board.counters.write_overruns += 1
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise

    def serve(self) -> None:
        serve_boards([self])

    def close(self) -> None:
        for fd in (self.master_fd, self.slave_fd, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.board.close()


def serve_boards(servers: list[PtyServer]) -> None:
    """Serve several boards (each its own pty and plant) from one process until any server's
    ``stop()``. One process for a multi-board pack instead of one per board: on a 2-core
    machine four emulator processes beside the controller cost about twice the CPU per
    SAMPLE (context switches, cold caches), measured with ``bms bench --tick``. The boards
    stay independent: each has its own pty, plant, clock and watchdog."""
    by_fd = {srv.master_fd: srv for srv in servers}
    masters = list(by_fd)
    wakes = [srv._wake_r for srv in servers]
    fds = masters + wakes
    now = time.monotonic()
    next_tick = {srv.master_fd: now + srv.board.profile.sample_period_s for srv in servers}
    any_real = any(not srv.board.sim for srv in servers)
    for srv in servers:
        srv._flush()
    while not any(srv._stopped for srv in servers):
        timeout = None
        if any_real:
            timeout = max(0.0, min(next_tick[srv.master_fd] for srv in servers
                                   if not srv.board.sim) - time.monotonic())
        ready, _, _ = select.select(fds, [], [], timeout)
        if any(w in ready for w in wakes):
            break
        for fd in ready:
            srv = by_fd[fd]
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                data = b""
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: no slave open right now
                    raise
                data = b""
            if data:
                srv.board.feed(data)
        if any_real:
            now = time.monotonic()
            for srv in servers:
                board = srv.board
                if board.sim:
                    continue
                fd, period = srv.master_fd, board.profile.sample_period_s
                missed = 0
                while now >= next_tick[fd] and missed < 10:  # catch up at most 10 samples
                    board.tick_real()
                    next_tick[fd] += period
                    missed += 1
                if now >= next_tick[fd]:
                    next_tick[fd] = now + period
        for srv in servers:
            if srv.board.outbox:
                srv._flush()
        # Sim clock: precompute the next step of every board with nothing waiting.
        waiting = select.select(masters, [], [], 0)[0]
        for srv in servers:
            if srv.board.sim and srv.master_fd not in waiting:
                srv.board.speculate()
