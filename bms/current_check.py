"""Current-sensor plausibility: an offset on a board's current sensor (docs/safety.md).

The range check of the validator (bms/validation.py) sees a current sensor that reads out of
range or NaN; an offset of a few amperes stays in range and was seen by nothing: the EKF
integrates it into every cell's SOC (the bms campaign ``faults`` case CURRENT_OFFSET +5 A: SOC
RMSE 7.4 %, nothing raised). Three signals, cheapest first, each raising
CURRENT_SENSOR_OFFSET (a warning) on the stack whose board reads wrong:

- **No current path**: the contactor state machine's outputs are all open, so the true current
  is zero; a board that reads more than ``rest_threshold_a`` for ``rest_debounce_s`` is
  offset.
- **Common-mode innovation** (contactors closed or open): each stack's EKF predicts its cells'
  voltages from the current its board measured. A biased current shifts every cell's
  prediction the same way (its R0 drop at once, then the integrated SOC), while a cell fault
  moves one cell: the stack's *median* innovation (measured minus predicted voltage) is the
  common-mode signal, and a two-sided CUSUM with an allowance above the fitted model error
  integrates it. It runs only while the stack's estimate has converged (mean SOC sigma at or
  below ``sigma_gate``): a converging estimate (a cold start, a restored state far from the
  truth) has a large common-mode innovation of its own.
- **Stacks in series** carry one current: with several boards, a board whose reading is
  further than ``disagree_a`` from the others' median for ``disagree_debounce_s`` is offset
  (two boards: both are named, neither can be told from the other).

Pure logic on the tick's ``time_s``; the controller feeds it and owns the fault table. The CUSUM
and the per-tick decision run in C (csrc/ssb_current.c, ``engine="c"``, the default); the Python
here is the reference (``engine="reference"``, tests/test_current_check_c.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bms.faults import FaultCode, FaultTable

_CODE = FaultCode.CURRENT_SENSOR_OFFSET
ENGINES = ("c", "reference")
# The record's reasons, indexed as csrc/ssb_current.h's SSB_CC_* (both engines use them)
_WHY = ("", "current with contactors open", "common-mode voltage innovation",
        "boards in series disagree")


@dataclass(frozen=True)
class CurrentCheckConfig:
    """The check's tunables (values and sources: bms/tuning.py)."""

    rest_threshold_a: float
    rest_debounce_s: float
    cusum_allowance_v: float
    cusum_allowance_rel: float
    cusum_limit_v_s: float
    sigma_gate: float
    disagree_a: float
    disagree_debounce_s: float


@dataclass
class _StackState:
    cusum_pos_v_s: float = 0.0   # integrated (median innovation - allowance), >= 0
    cusum_neg_v_s: float = 0.0   # integrated (-median innovation - allowance), >= 0
    last_t_s: float | None = None
    rest_since_s: float | None = None      # |I| past the rest threshold since
    disagree_since_s: float | None = None  # off the other boards' median since
    raised: bool = False
    why: str = ""


class CurrentPlausibility:
    """One instance per pack; ``n_stacks`` boards, each with its own current sensor."""

    def __init__(self, n_stacks: int, config: CurrentCheckConfig, engine: str = "c") -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r} not one of {', '.join(ENGINES)}")
        self.engine = engine
        self.config = config
        self._st = [_StackState() for _ in range(n_stacks)]
        self._c: tuple | None = None
        if engine == "c":
            self._init_c(n_stacks)

    def _init_c(self, n: int) -> None:
        """The C engine's config and state arrays (csrc/ssb_current.h), made once; its state
        lives there, not in ``_st``."""
        from bms import _core  # built by pip install (setup.py cffi_modules)

        ffi, lib = _core.ffi, _core.lib
        c, cfg = ffi.new("ssb_cc_config_t *"), self.config
        for name in ("rest_threshold_a", "rest_debounce_s", "cusum_allowance_v",
                     "cusum_allowance_rel",
                     "cusum_limit_v_s", "sigma_gate", "disagree_a", "disagree_debounce_s"):
            setattr(c, name, getattr(cfg, name))
        self._cusum_pos, self._cusum_neg = np.zeros(n), np.zeros(n)
        self._times = np.full((3, n), np.nan)  # last_t, rest_since, disagree_since
        self._raised = np.zeros(n, dtype=np.uint8)
        self._why = np.zeros(n, dtype=np.int32)
        self._scratch, self._currents = np.zeros(n), np.zeros(n)
        self._change, self._value = np.zeros(n, dtype=np.int8), np.zeros(n)
        s = ffi.new("ssb_cc_state_t *")
        buf = ffi.from_buffer
        s.cusum_pos_v_s, s.cusum_neg_v_s = buf("double[]", self._cusum_pos), buf(
            "double[]", self._cusum_neg)
        s.last_t_s, s.rest_since_s, s.disagree_since_s = (buf("double[]", row)
                                                          for row in self._times)
        s.raised, s.why = buf("uint8_t[]", self._raised), buf("int32_t[]", self._why)
        s.scratch = buf("double[]", self._scratch)
        self._c_keep = (s, [buf("double[]", row) for row in self._times])
        self._c = (lib.ssb_cc_innovation, lib.ssb_cc_step, c, s,
                   buf("double[]", self._currents), buf("int8_t[]", self._change),
                   buf("double[]", self._value))

    def cusum_v_s(self, stack: int) -> float:
        """The larger side of the stack's CUSUM (V s; the current_check event carries it)."""
        if self._c is not None:
            return max(float(self._cusum_pos[stack]), float(self._cusum_neg[stack]))
        s = self._st[stack]
        return max(s.cusum_pos_v_s, s.cusum_neg_v_s)

    def innovation(self, stack: int, t: float, innovation_v: np.ndarray, soc_sigma: np.ndarray,
                   overpotential_v: float = 0.0) -> None:
        """One stack's fresh estimate: its cells' innovations (measured - predicted voltage,
        NaN where a cell had none), SOC sigmas and the model's mean |R0 I + eta| (the core's
        ``OUT_MEAN_OVERPOTENTIAL``: the allowance grows with it)."""
        # Lists, not numpy reductions: ~6.5 us a stack against ~75 for nanmean + median on 23
        # values (timeit); a NaN sigma (no estimate) keeps the gate shut. The controller's
        # hot path has the same figures from C (bms/stack_step.py) and calls innovation_stats.
        vals = [x for x in innovation_v.tolist() if x == x]
        sig = soc_sigma.tolist()
        n = len(vals)
        med = math.nan
        if n:
            vals.sort()
            med = vals[n // 2] if n % 2 else 0.5 * (vals[n // 2 - 1] + vals[n // 2])
        self.innovation_stats(stack, t, n, med, sum(sig), len(sig), overpotential_v)

    def innovation_stats(self, stack: int, t: float, n_valid: int, median_v: float,
                         sigma_sum: float, n_cells: int, overpotential_v: float = 0.0) -> None:
        """:meth:`innovation` from its figures: how many cells have an innovation, their
        median, the sum of the cells' SOC sigmas (in cell order), the cell count and the
        model's mean |R0 I + eta| (NaN counts as 0)."""
        if self._c is not None:
            self._c[0](self._c[2], self._c[3], stack, t, n_valid, median_v, sigma_sum, n_cells,
                       overpotential_v)
            return
        c = self.config
        s = self._st[stack]
        dt = 0.0 if s.last_t_s is None else t - s.last_t_s
        s.last_t_s = t
        if n_valid < 3 or not sigma_sum <= c.sigma_gate * n_cells:
            # Too few cells to tell common mode from one cell, or an estimate still
            # converging: the CUSUM restarts from zero when the estimate is trusted again.
            s.cusum_pos_v_s = s.cusum_neg_v_s = 0.0
            return
        med = median_v
        # The model's common-mode error grows with its overpotential (a cold 3C load: 6.5 mV
        # at 0.37 V), so the allowance does (bms/tuning.py CURRENT_CHECK).
        allow = c.cusum_allowance_v + c.cusum_allowance_rel * (
            overpotential_v if overpotential_v > 0.0 else 0.0)
        # Capped at twice the limit: a repaired sensor clears within limit / allowance seconds.
        cap = 2.0 * c.cusum_limit_v_s
        s.cusum_pos_v_s = min(cap, max(0.0, s.cusum_pos_v_s + (med - allow) * dt))
        s.cusum_neg_v_s = min(cap, max(0.0, s.cusum_neg_v_s + (-med - allow) * dt))

    def step(self, t: float, currents_a: list[float], no_current_path: bool,
             table: FaultTable) -> list[int]:
        """After every stack's ``innovation``: decide and raise. ``currents_a``: each board's
        reading this tick (NaN: none); ``no_current_path``: every contactor commanded open
        (and, where there is feedback, reported open) for this whole tick. Returns the stacks
        raised on this tick (``reason`` says why)."""
        if self._c is not None:
            return self._step_c(t, currents_a, no_current_path, table)
        c = self.config
        raised: list[int] = []
        finite = sorted(i for i in currents_a if math.isfinite(i))
        median = (math.nan if not finite else finite[len(finite) // 2] if len(finite) % 2
                  else 0.5 * (finite[len(finite) // 2 - 1] + finite[len(finite) // 2]))
        for k, (s, i_a) in enumerate(zip(self._st, currents_a, strict=True)):
            why = ""
            value = math.nan
            # 1. at rest: the true current is zero
            if no_current_path and math.isfinite(i_a) and abs(i_a) > c.rest_threshold_a:
                if s.rest_since_s is None:
                    s.rest_since_s = t
                if t - s.rest_since_s >= c.rest_debounce_s - 1e-9:
                    why, value = _WHY[1], i_a
            else:
                s.rest_since_s = None
            # 2. the common-mode innovation
            if not why and max(s.cusum_pos_v_s, s.cusum_neg_v_s) > c.cusum_limit_v_s:
                why = _WHY[2]
                value = s.cusum_pos_v_s if s.cusum_pos_v_s > s.cusum_neg_v_s \
                    else -s.cusum_neg_v_s
            # 3. stacks in series: one current
            if len(finite) >= 2 and math.isfinite(i_a):
                others = [x for j, x in enumerate(currents_a) if j != k and math.isfinite(x)]
                ref = median if len(finite) >= 3 else others[0]
                if abs(i_a - ref) > c.disagree_a:
                    if s.disagree_since_s is None:
                        s.disagree_since_s = t
                    if not why and t - s.disagree_since_s >= c.disagree_debounce_s - 1e-9:
                        why, value = _WHY[3], i_a - ref
                else:
                    s.disagree_since_s = None
            else:
                s.disagree_since_s = None
            if why and not s.raised:
                table.raise_fault(_CODE, t, None, value, k)
                s.raised, s.why = True, why
                raised.append(k)
            elif not why and s.raised:
                table.clear_fault(_CODE, t, None, value, k)
                s.raised, s.why = False, ""
        return raised

    def _step_c(self, t: float, currents_a: list[float], no_current_path: bool,
                table: FaultTable) -> list[int]:
        """:meth:`step` with the decision in C; the records raised and cleared here, in stack
        order, as the reference does."""
        _, step, c, s, cur, change, value = self._c  # type: ignore[misc]
        if len(currents_a) != len(self._currents):
            raise ValueError(f"{len(currents_a)} currents for {len(self._currents)} stacks")
        buf = self._currents
        for k, i_a in enumerate(currents_a):
            buf[k] = i_a
        if not step(c, s, len(buf), t, cur, bool(no_current_path), change, value):
            return []
        raised: list[int] = []
        for k, ch in enumerate(self._change.tolist()):
            if ch > 0:
                table.raise_fault(_CODE, t, None, float(self._value[k]), k)
                raised.append(k)
            elif ch < 0:
                table.clear_fault(_CODE, t, None, float(self._value[k]), k)
        return raised

    def reason(self, stack: int) -> str:
        """Why the stack's record is raised ('' when it is not)."""
        if self._c is not None:
            return _WHY[int(self._why[stack])]
        return self._st[stack].why


__all__ = ["CurrentCheckConfig", "CurrentPlausibility"]
