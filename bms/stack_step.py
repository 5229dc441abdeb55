"""One stack's receive chain in one C call (csrc/ssb_stack.c): the measurement front end on the
counts the fast lane unpacked, the core tick with this tick's bleed, and the figures the
controller reads every tick (stack voltage, the tightest power limits, the innovation's median
and the SOC sigmas' sum for the current check, the coldest thermistor and lowest load cell for
the CCD limit, the load-cell imbalance once the fixture baseline is known).

It replaces, on the controller's hot path, ``StackValidator.check_wire`` (whose Python
remainder, ``after_front_end``, still runs: the diagnosis when something is wrong, the scalar
and timestamp checks), ``Core.step`` and the sums of ``Controller._collect``,
``CurrentPlausibility.innovation``, ``charging.stack_conditions`` and, with a baseline,
``LoadCellBaseline.imbalance_kpa``; those stay the reference, and a run through either path
writes the same log (tests/test_stack_step.py). The buffers are the validator's and the core's
own, bound once: nothing is copied but the stack's slice of the bleed.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from bms.core import Core, CoreError
from bms.validation import StackValidator


class StackStep:
    """The chain of one stack (its validator and core, both with their C engines)."""

    def __init__(self, validator: StackValidator, core: Core, bleed_offset: int) -> None:
        """``bleed_offset``: this stack's first cell in the pack-wide bleed arrays whose
        pointers :meth:`step` gets. Raises ValueError when the pair cannot be chained (the
        reference front end, or a core that copies its inputs: the caller keeps the calls)."""
        if validator.engine != "c":
            raise ValueError("the stack chain runs the C front end")
        if core._bound[0] is not validator._v_out or core._bound[1] is not validator._t_out \
                or core._bound[2] is not validator._p_out:
            raise ValueError("the core does not read the validator's arrays in place")
        from bms import _core  # built by pip install (setup.py cffi_modules)

        ffi, lib = _core.ffi, _core.lib
        n = core.n_cells
        self.innovation_v = np.zeros(n)
        self._scratch = np.zeros(n)
        sk = self._sk = ffi.new("ssb_stack_t *")
        (sk.fe_cfg, sk.fe_st, sk.raw, sk.values, sk.clean, sk.bad, sk.stuck,
         sk.jump) = validator._fe_args
        sk.prm, sk.st, sk.meas, sk.out = core._prm, core._st, core._meas, core._out
        sk.bleed_in = core._meas.bleed_a  # the core's own bleed buffer
        sk.innovation_v = ffi.from_buffer("double[]", self.innovation_v)
        sk.scratch = ffi.from_buffer("double[]", self._scratch)
        sk.current_plausible_a = validator.current_plausible_a
        core._bleed_set = True  # every step copies a bleed into it
        self._res = ffi.new("ssb_stack_result_t *")
        self._fn = lib.ssb_stack_step
        self._validator = validator
        self._offset = bleed_offset
        self._ffi = ffi
        self._baseline: tuple[np.ndarray, ...] = ()
        sk.lc_share = sk.lc_offset_kpa = ffi.NULL
        self.usual = False  # receive(): the usual case, the validator's state updated
        self._receive_fn = lib.ssb_stack_receive
        self._not_moved = lib.SSB_STACK_NOT_MOVED
        self._receive_keep: tuple = ()
        # The result struct read in one unpack (a tuple; no cffi attribute read per field):
        # ssb_stack_result_t's fields in order, native alignment as the C compiler lays them
        # out (checked against the ffi's offsets: a build that differs keeps the attributes).
        layout = struct.Struct("@Iiii9d2q5di")
        T = "ssb_stack_result_t"
        names = [f for f, _ in ffi.typeof(T).fields]
        offsets = [ffi.offsetof(T, f) for f in names]
        if len(names) == 21 and names[-1] == "usual" and offsets[-1] == layout.size - 4:
            self._unpack: Any = layout.unpack_from
            self._res_buf: Any = ffi.buffer(self._res)
        else:  # pragma: no cover (an ABI that pads otherwise)
            self._unpack = None
        self.vals: tuple = ()  # receive(): the result's fields when usual (RESULT_* order)

    def bind_baseline(self, shares: list[float] | None, offsets_kpa: list[float] | None
                      ) -> None:
        """The load cells' fixture baseline (LoadCellBaseline.shares and .offsets_kpa) the
        step's imbalance is corrected by from now on; None: not known (no imbalance)."""
        ffi, sk = self._ffi, self._sk
        if shares is None:
            self._baseline = ()
            sk.lc_share = sk.lc_offset_kpa = ffi.NULL
            return
        n = self._validator.load_cells.stop - self._validator.load_cells.start
        if len(shares) != n or (offsets_kpa is not None and len(offsets_kpa) != n):
            raise ValueError(f"baseline of {len(shares)} load cells for a board of {n}")
        arrays = tuple(np.array(a, dtype=np.float64) for a in (shares, offsets_kpa)
                       if a is not None)
        self._baseline = arrays  # held: the struct points into them
        sk.lc_share = ffi.from_buffer("double[]", arrays[0])
        sk.lc_offset_kpa = (ffi.from_buffer("double[]", arrays[1]) if len(arrays) > 1
                            else ffi.NULL)

    def bind_pack(self, cells: dict[str, np.ndarray], cell_start: int,
                  temperature_c: np.ndarray | None, thermistor_start: int,
                  per_stack: dict[str, np.ndarray], stack: int) -> None:
        """Where each step copies its data in the caller's pack-wide arrays (ssb_stack.h's
        ``pack_*`` fields by name, without the prefix): ``cells`` from ``cell_start``,
        ``temperature_c`` from ``thermistor_start`` (None: not copied), ``per_stack`` at
        ``stack``. The arrays must outlive the chain (held here)."""
        ffi, sk = self._ffi, self._sk
        keep = []

        def at(a: np.ndarray, i: int) -> Any:
            if not (a.dtype == np.float64 and a.ndim == 1 and a.flags.c_contiguous
                    and 0 <= i < len(a)):
                raise ValueError("pack arrays must be 1-d contiguous float64 arrays")
            keep.append(a)
            return ffi.from_buffer("double[]", a[i:])

        for name, a in cells.items():
            setattr(sk, f"pack_{name}", at(a, cell_start))
        if temperature_c is not None and len(temperature_c):
            sk.pack_temperature_c = at(temperature_c, thermistor_start)
        for name, a in per_stack.items():
            setattr(sk, f"pack_{name}", at(a, stack))
        self._pack_keep = keep

    def bind_receive(self, scaler: Any, current_check: Any, stack: int, ccd: Any) -> None:
        """What :meth:`receive` does beyond :meth:`step`: the board profile's scaling of
        current and bus voltage (``scaler``: hil.scaling.Scaler), the validator's timestamp
        gap, the status bits that need the caller (a tripped watchdog, a sensor error, a board
        that just booted: Controller._status_bits), the current check's CUSUM of stack
        ``stack`` (``current_check``: bms.current_check.CurrentPlausibility, its C engine;
        None or the reference: not run, the caller calls innovation_stats) and the CCD limit
        (``ccd``: bms.charging.CcdLimit, or None)."""
        from bms.tuning import TIMESTAMP_GAP_TICKS
        from hil.protocol import INVALID_I32, Status

        ffi, sk = self._ffi, self._sk
        p = scaler.profile
        sk.wire = ffi.from_buffer("int64_t[]", self._validator.wire_vals)
        sk.current_lsb_a, sk.current_offset_a = p.current_lsb_a, p.current_offset_a
        sk.bus_lsb_v, sk.invalid_i32 = p.bus_lsb_v, INVALID_I32
        # StackValidator._check_timestamp's bound, the same expression
        sk.timestamp_gap_ms = TIMESTAMP_GAP_TICKS * self._validator.tick_s * 1000.0
        sk.status_unusual = int(Status.WATCHDOG_TRIPPED | Status.SENSOR_ERROR
                                | Status.JUST_BOOTED)
        cc = getattr(current_check, "_c", None)
        self.runs_current_check = cc is not None
        if cc is not None:
            sk.cc_cfg, sk.cc_st, sk.cc_stack = cc[2], cc[3], stack
        else:
            sk.cc_cfg = sk.cc_st = ffi.NULL
        keep: list[Any] = [self._validator.wire_vals]
        if ccd is not None:
            axes = (np.array(ccd.pressure_kpa, dtype=np.float64),
                    np.array(ccd.temperature_c, dtype=np.float64),
                    np.ascontiguousarray(ccd.ccd_ma_cm2_table, dtype=np.float64).ravel())
            if axes[2].size != axes[0].size * axes[1].size:
                raise ValueError("CCD table shape differs from its axes")
            sk.ccd_p, sk.ccd_t, sk.ccd_table = (ffi.from_buffer("double[]", a) for a in axes)
            sk.ccd_np, sk.ccd_nt = axes[0].size, axes[1].size
            sk.ccd_amps_per_ma_cm2 = ccd._amps_per_ma_cm2
            keep.extend(axes)
        else:
            sk.ccd_np = sk.ccd_nt = 0
        self._receive_keep = tuple(keep)  # held: the struct points into them

    def receive(self, t: float, dt_s: float, last_ts_ms: int | None,
                last_timestamp_s: float | None, bleed_ptr: Any) -> Any:
        """The controller's receive of the fast lane's values in one call (ssb_stack_receive,
        after :meth:`bind_receive`): None when the board's timestamp is ``last_ts_ms`` (nothing
        ran), else the result struct of :meth:`step` with the receive's fields (usual,
        timestamp, scaled values, the core's interval, the CCD limit). :attr:`usual`: the C
        call's usual case with nothing pending in the validator, whose state is then updated
        as its own calls would. Raises as :meth:`step`."""
        v = self._validator
        last = v._last_ts_ms
        r = self._res
        rc = self._receive_fn(self._sk, t, dt_s, v._last_i, v._last_raw_lc is not None,
                              -1 if last_ts_ms is None else last_ts_ms,
                              math.nan if last_timestamp_s is None else last_timestamp_s,
                              -1 if last is None else last, bleed_ptr, r)
        if rc == 0:
            # The validator's part of the usual case (nothing for its diagnosis now or from
            # before): the state after_front_end and _check_timestamp would leave, here
            # (calling them again, as the caller's other path does, sets the same values)
            unpack = self._unpack
            if unpack is not None:
                vals = self.vals = unpack(self._res_buf)
                usual, current_in_a, timestamp_ms = vals[20], vals[15], vals[13]
            else:
                usual, current_in_a, timestamp_ms = r.usual, r.current_in_a, r.timestamp_ms
            if usual and not v._anything_prev and True not in v._bad_scalar.values():
                v._last_i, v._last_raw_lc, v._last_ts_ms = (current_in_a, v._last_raw_lc_buf,
                                                            timestamp_ms)
                self.usual = unpack is not None
            else:
                self.usual = False
            return r
        self.usual = False
        if rc == self._not_moved:
            return None
        if r.fe_rc != 0:
            raise ValueError(f"ssb_fe_step failed with {r.fe_rc}")
        if r.core_rc == 0:
            raise ValueError(f"ssb_stack_receive failed with {rc}")
        return r

    def bleed_pointer(self, pack_bleed_a: np.ndarray) -> Any:
        """A pointer to this stack's cells in a pack-wide bleed array (made once per array
        by the caller: the array must live as long as the pointer is used)."""
        return self._ffi.from_buffer("double[]", pack_bleed_a[self._offset:])

    def step(self, current_a: float, dt_s: float, bleed_ptr: Any) -> Any:
        """Front end and core on the counts in the validator's ``wire_vals``; the result
        struct (ssb_stack_result_t, valid until the next step). Raises ValueError on a front
        end error (nothing ran), CoreError on a core error (after the front end's work, which
        the caller's ``after_front_end`` then sees, as with the two calls)."""
        v = self._validator
        r = self._res
        rc = self._fn(self._sk, current_a, v._last_i, v._last_raw_lc is not None, dt_s,
                      bleed_ptr, r)
        if rc != 0 and r.fe_rc != 0:
            raise ValueError(f"ssb_fe_step failed with {r.fe_rc}")
        if rc != 0 and r.core_rc == 0:
            raise ValueError(f"ssb_stack_step failed with {rc}")
        return r

    @staticmethod
    def core_error(r: Any) -> CoreError | None:
        """The core's error of a step's result (None: it ran)."""
        return CoreError(r.core_rc, "ssb_tick") if r.core_rc != 0 else None


__all__ = ["StackStep"]
