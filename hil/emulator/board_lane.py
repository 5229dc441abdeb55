"""The emulated board's fast lane: the usual sim-clock tick in one C call.

Per tick the host sends a SAMPLE, or a HEARTBEAT and a SAMPLE in one write, and waits for the
MEASUREMENT. :meth:`TickLane.feed` hands exactly those bytes to ``ssb_board_tick``
(csrc/ssb_board.c, in the plant's cffi module): frame check (the firmware's proto.c), plant
step, sensor read and the reply frame, in place of the decoder, the message objects,
``advance``, ``Plant.step``, ``sensor_counts``, the Measurement and ``encode_frame``. It is the
board's mirror of the host's ``hil.link.MeasurementLane``.

Python keeps what changes rarely or needs Python: the scenario (the lane only runs when no
event is due), the load's demand (evaluated here once per tick, as ``Plant._stack_current``
does), faults that act on counts, link faults, speculation, the truth row, and every other frame.
When any of that applies, or the C call refuses (other bytes, a dt without thermal matrices, a
step that would trip the watchdog, a silenced reply), nothing has changed and the caller runs
the general path (``EmulatedBoard.handle``) on the same bytes, which stays the reference:
tests/test_board_lane.py holds the two to the same bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from hil.emulator.loads import CcCvCharge, ConstantCurrent, CurrentProfile, Load, Rest
from hil.emulator.plant_c import c_error

if TYPE_CHECKING:
    from hil.emulator.board import EmulatedBoard

# Loads the lane serves: their demand is evaluated here, or (a CC-CV charger still charging,
# whose demand needs this step's v_open / r_eff) in the C call; any other Load subclass takes
# the general path.
_FAST_LOADS = frozenset({Rest, ConstantCurrent, CurrentProfile, CcCvCharge})
# Loads whose observe() is Load's no-op (no stop condition to check after a step)
_NO_OBSERVE = frozenset(cls for cls in _FAST_LOADS if cls.observe is Load.observe)
_BLOCK = 256  # CurrentProfile demands computed at once (TickLane.profile_demand)
_STAGES = {1: "ssb_plant_begin", 2: "ssb_plant_finish", 3: "ssb_plant_sense"}


class TickLane:
    """One board's fast lane (C plant engine, sim clock)."""

    def __init__(self, board: EmulatedBoard, watchdog_bit: int) -> None:
        self.board = board
        plant = board.plant
        c = plant._c
        assert c is not None  # noqa: S101 (the caller checked the engine)
        self.engine = c
        ffi, lib = c.ffi, c.lib
        if not hasattr(lib, "ssb_board_tick"):
            raise RuntimeError("hil.emulator._plant was built before csrc/ssb_board.c: rebuild "
                               "it (python setup.py build_ext --inplace)")
        self.tick = lib.ssb_board_tick_kept
        self.fallback, self.unencodable = lib.SSB_BOARD_FALLBACK, lib.SSB_BOARD_UNENCODABLE
        self.bus_open, self.bus_pre, self.bus_closed, self.bus_cv = (
            lib.SSB_BOARD_BUS_OPEN, lib.SSB_BOARD_BUS_PRECHARGE, lib.SSB_BOARD_BUS_CLOSED,
            lib.SSB_BOARD_BUS_CLOSED_CV)
        self.n_res = lib.SSB_BOARD_RES_COUNT
        p = plant.params
        b = self.b = ffi.new("ssb_board_t *")
        b.cfg, b.st, b.scfg = c.cfg, c.st, c.scfg
        b.sense_buf, b.raw = c.sense_buf_p, c.raw_p
        b.heartbeat_timeout_s = board.heartbeat_timeout_s
        b.path_resistance_ohm = p.path_resistance_ohm
        b.link_capacitance_f = p.link_capacitance_f
        b.precharge_resistance_ohm = p.precharge_resistance_ohm
        b.watchdog_status_bit = watchdog_bit
        self.g_bus0 = 1.0 / p.link_discharge_resistance_ohm
        self.g_fail = 1.0 / p.precharge_fail_short_ohm
        self.res = ffi.new(f"double[{lib.SSB_BOARD_RES_COUNT}]")
        self.out = ffi.new(f"char[{lib.SSB_BOARD_OUT_MIN}]")
        # kept in the struct between ticks (ssb_board_tick_kept): the buffers, and the
        # thermal matrices and noise batch of the engine, set again when they change
        b.res, b.out, b.out_cap = self.res, self.out, lib.SSB_BOARD_OUT_MIN
        self._th: Any = None
        self._th_dt = np.nan
        self._noise: Any = None
        b.minv = b.c_dt = b.amb = b.noise = ffi.NULL
        b.noise_rows = 0
        self.unpack = ffi.unpack
        m = plant.m
        # Sensors.lc_last_counts of a lane tick: the C call copies the load cells' counts here
        self.lc_last = np.zeros(m, dtype=np.int64) if m else None
        b.lc_last = c.ptr(self.lc_last, "int64_t *") if m else ffi.NULL
        self.bus_profile = lib.SSB_BOARD_BUS_CLOSED_PROFILE
        self.need_block = lib.SSB_BOARD_NEED_BLOCK
        # CurrentProfile demands ahead: (load, load_t0, dt, plant times, demands), the last
        # two as arrays the C call reads (ssb_board_t.blk_*) and moves its index along
        self._block: tuple[Any, float, float, np.ndarray, np.ndarray] | None = None
        b.blk_t = b.blk_d = ffi.NULL
        b.blk_n = b.blk_i = 0
        # What the usual tick's checks read, kept while it cannot have changed: the scenario's
        # quiet time (ScenarioRunner.quiet_before_s, until its next advance), the status bits
        # (until the outputs object is replaced or the board boots)
        self._runner_advances = -1
        self._quiet_before_s = -np.inf
        self._status_outputs: Any = None
        self._status = 0
        # The struct's SET_OUTPUTS limits are those of this outputs object (set when it is
        # replaced: an Outputs is never changed in place, as _status_outputs assumes) and its
        # heartbeat timeout this float (a test may change the board's): a cffi field write
        # costs more than the identity test
        self._limits_outputs: Any = None
        self._hb_timeout_s = board.heartbeat_timeout_s

    def profile_demand(self, load: CurrentProfile, t_s: float, load_t0_s: float) -> float:
        """``load.demand_a(t_s - load_t0_s, ...)``, from a block computed ahead: one call
        costs ~2.3 us on the udds scenario's 2,740-point profile, a block of 256 ~12 us.
        The block holds the plant times the next ticks will have if dt stays (t += dt, as
        the step adds it; np.cumsum adds in the same order) and the demands there (np.interp's
        one loop for scalars and arrays: the same value per point); a tick at any other time,
        another load or segment start, or past the profile's end asks the load itself."""
        blk = self._block
        b = self.b
        i = b.blk_i
        if (blk is not None and i < len(blk[3]) and blk[3][i] == t_s and blk[0] is load
                and blk[1] == load_t0_s):
            b.blk_i = i + 1
            return float(blk[4][i])
        dt_s = self.board._last_dt_us * 1e-6
        if not dt_s > 0.0:
            self._unbind_block()
            return load.demand_a(t_s - load_t0_s, self.engine.v_open, self.engine.r_eff)
        steps = np.full(_BLOCK, dt_s)
        steps[0] = t_s
        times = np.cumsum(steps)
        t_rel = times - load_t0_s
        if load.loop:
            x = load.time_s[0] + np.fmod(t_rel, load.duration_s)
        else:
            x = load.time_s[0] + t_rel
            x = x[:int(np.searchsorted(x, load.time_s[-1], side="right"))]
        if not len(x):  # past the end: the load sets done
            self._unbind_block()
            return load.demand_a(t_s - load_t0_s, self.engine.v_open, self.engine.r_eff)
        demands = load.scale * np.interp(x, load.time_s, load.current_a)
        blk_t = np.ascontiguousarray(times[:len(x)])
        self._block = (load, load_t0_s, dt_s, blk_t, demands)
        ptr = self.engine.ptr
        b.blk_t, b.blk_d, b.blk_n, b.blk_i = ptr(blk_t), ptr(demands), len(blk_t), 1
        return float(demands[0])

    def _unbind_block(self) -> None:
        self._block = None
        b = self.b
        b.blk_t = b.blk_d = self.engine.ffi.NULL
        b.blk_n = b.blk_i = 0

    def feed(self, data: bytes) -> bool:
        """Serve ``data`` as one tick: True when done (reply in the outbox, counters as the
        general path keeps them), False when nothing changed and the general path must run."""
        board = self.board
        plant = board.plant
        s = plant._sensors
        if s.th_fault_any or s.lc_fault_any:
            return False
        runner = board.runner
        if runner is not None:
            # ScenarioRunner.due() is False before its quiet time (kept until it advances)
            # unless the load is done; at or after it, due() itself decides
            if runner.advances != self._runner_advances:
                self._runner_advances = runner.advances
                self._quiet_before_s = runner.quiet_before_s()
            if (plant.t_s >= self._quiet_before_s or plant.load.done) and runner.due():
                return False
        o, f = plant.outputs, plant.faults
        if o is not self._status_outputs or board.just_booted:  # EmulatedBoard._status_bits
            self._status = board._status_bits()
            self._status_outputs = None if board.just_booted else o
        b = self.b
        g_bus = self.g_bus0
        if f.precharge_fail:
            g_bus += self.g_fail
        demand = 0.0
        if o.contactor_pos and o.contactor_neg:
            mode = self.bus_closed
            if f.forced_current_a is not None:
                demand = f.forced_current_a
            else:
                load = plant.load
                cls = load.__class__
                if cls is CurrentProfile:
                    blk = self._block
                    if blk is not None and blk[0] is load and blk[1] == plant._load_t0:
                        # this tick's demand from the block in the C call (NEED_BLOCK: not
                        # there, then profile_demand below, as before)
                        mode = self.bus_profile
                        b.respect_limits = load.respect_limits
                        if o is not self._limits_outputs:
                            self._limits_outputs = o
                            b.charge_limit_a, b.discharge_limit_a = (o.charge_limit_a,
                                                                     o.discharge_limit_a)
                    else:
                        demand = self._profile_limited(load, plant, o)
                elif cls is CcCvCharge and not load.done:
                    # its demand needs this step's v_open / r_eff: computed in the C call
                    mode = self.bus_cv
                    b.cv_cell_v, b.cc_current_a, b.cv_cutoff_a = (
                        load.cv_cell_v, load.current_a, load.cutoff_a)
                    if o is not self._limits_outputs:
                        self._limits_outputs = o
                        b.charge_limit_a, b.discharge_limit_a = (o.charge_limit_a,
                                                                 o.discharge_limit_a)
                elif cls in _FAST_LOADS:
                    c = self.engine
                    demand = load.demand_a(plant.t_s - plant._load_t0, c.v_open, c.r_eff)
                    if load.respect_limits:
                        demand = min(max(demand, -o.discharge_limit_a), o.charge_limit_a)
                else:
                    return False
        elif o.precharge and o.contactor_neg:
            mode = self.bus_pre
        else:
            mode = self.bus_open
        c = self.engine
        row, th = s.noise_i, c.th
        if row >= len(s.noise) or th is None:
            return False  # a new batch of noise is drawn on the general path (same stream)
        noise = s.noise
        if noise is not self._noise:  # a new batch, or one put back by restore()
            self._noise = noise  # (kept: the struct's pointer does not hold the array)
            b.noise, b.noise_rows = c.ptr(noise), len(noise)
        if th is not self._th or c.th_dt != self._th_dt:  # new matrices (CEngine.step)
            self._th, self._th_dt = th, c.th_dt
            b.minv, b.c_dt, b.amb = th
            b.th_dt_s = c.th_dt
        t0 = plant.t_s
        if board.heartbeat_timeout_s != self._hb_timeout_s:  # a test may change it
            b.heartbeat_timeout_s = self._hb_timeout_s = board.heartbeat_timeout_s
        rc = self.tick(b, data, len(data), t0, plant.pressure_kpa, plant.bus_v, plant.gas_kpa,
                       f.gas_ramp_kpa_per_s, board.last_heartbeat_s, board.watchdog_tripped,
                       board.link.silence_until_s, self._status, mode, demand, g_bus, row)
        if rc == self.need_block:  # the block ran out (or this tick is off it): as before
            rc = self.tick(b, data, len(data), t0, plant.pressure_kpa, plant.bus_v,
                           plant.gas_kpa, f.gas_ramp_kpa_per_s, board.last_heartbeat_s,
                           board.watchdog_tripped, board.link.silence_until_s, self._status,
                           self.bus_closed, self._profile_limited(plant.load, plant, o), g_bus,
                           row)
        if rc == self.fallback:
            return False
        t_s, i_s, bus_v, p_kpa, gas, dt_us, seq, frames, load_done = self.unpack(self.res,
                                                                                 self.n_res)
        n_frames = int(frames)
        counters = board.counters
        counters.frames_in += n_frames
        dc = board.decoder.counters
        dc.bytes_in += len(data)
        dc.frames_ok += n_frames
        if frames == 2:  # HEARTBEAT first
            board.last_heartbeat_s = t0
            board.watchdog_tripped = False
        board._last_dt_us = int(dt_us)
        plant.bus_v = bus_v
        if load_done:  # the charger's current fell below its cutoff (CcCvCharge.demand_a)
            plant.load.done = True
        if rc < 0 and rc != self.unencodable:
            stage, code = divmod(-rc, 100)
            if stage != 3:
                raise c_error(_STAGES.get(stage, "ssb_board_tick"), -code)
        # the step is done: what CEngine.step and advance() do after ssb_plant_finish
        plant.gas_kpa = gas
        plant.t_s = t_s
        plant.pressure_kpa = p_kpa
        plant.current_a = i_s
        load = plant.load
        if load.__class__ not in _NO_OBSERVE:
            load.observe(plant.cell_v)
        if board.truth is not None:
            board.truth.write_row_from(plant.truth_row)
        if rc < 0 and rc != self.unencodable:  # the row stays unused, as in CEngine
            raise c_error("ssb_plant_sense", -((-rc) % 100))
        s.noise_i = row + 1
        if rc < 0:
            # a count or the payload does not fit: the general path raises as it would
            board._last_counts = s.finish(c.raw, f)
            board._send(board._measurement(), int(seq))
            return True
        if self.lc_last is not None and s.lc_last_counts is not self.lc_last:
            # Sensors.finish keeps them for a stuck load cell; the C call copied them here
            s.lc_last_counts = self.lc_last
            s.lc_have_last = True
        board.just_booted = False
        counters.samples += 1
        counters.replies += 1
        board.outbox.append(self.unpack(self.out, rc))  # bytes, as buffer(...)[:]
        return True

    def _profile_limited(self, load: CurrentProfile, plant: Any, o: Any) -> float:
        """profile_demand and the SET_OUTPUTS limits (Plant._stack_current)."""
        demand = self.profile_demand(load, plant.t_s, plant._load_t0)
        if load.respect_limits:
            demand = min(max(demand, -o.discharge_limit_a), o.charge_limit_a)
        return demand


__all__ = ["TickLane"]
