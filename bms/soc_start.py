"""Where each stack's estimator starts: from the OCV of its first measurement (a cold start),
or from a saved state carried over the rest since it was saved (``bms run --state``).

Both work on a core's state dict (``Core.state_dict`` / ``load_state``) and the core's own
parameter grid through the core's look-up in NumPy (``bms.core.grid_lookup``, which the NumPy
reference uses too and tests/test_core_reference.py holds to the C core).
The equations and the reasons: docs/estimation.md "Start".

Cold start. At rest (|I| < bms.tuning.REST_CURRENT_A) a cell's terminal voltage is its OCV up
to three errors: the monitor's measurement error, the unknown hysteresis state and the
relaxation still left (the rest time is unknown). Each is a bound b of a uniform error
(sigma = b / sqrt(3)); the SOC error is the voltage error over the local dOCV/dSOC, so a flat
OCV gives a wide sigma. The relaxation is the RC branches' voltage, so it is entered as their
prior with its correlation to SOC (v = OCV(SOC) + V1 + V2: a V1 taken for OCV moves SOC by
-V1 / dOCV), which lets the filter narrow SOC as the branches decay. Under load the voltage
less R0 I is inverted (the ohmic drop is the model's best-known part; the RC polarisation that
remains is covered by the pack's wide ``initial_soc_sigma``).

Restore. The saved state is predicted over the rest at zero current as the EKF would (SOC
unchanged, its variance grown by the SOC process noise; each RC voltage decayed with its tau
and its variance relaxed towards its stationary value), then updated once with the rested
voltages: after a long rest the grown SOC variance makes the OCV win, after a short one the
saved SOC. The core's own step is not used for this: over a rest of hours it would count the
rest as one interval for the SOH (a voltage change over the rest taken for an R0 step), and
its RC noise grows with dt without bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bms.core import CoreParams, ct_overpotential, fill_thermistors, grid_lookup
from bms.tuning import (
    REST_CURRENT_A,
    START_PRIOR_C_RATE,
    START_UNMODELLED_HYSTERESIS_V,
    START_VOLTAGE_ERROR_V,
)

State = dict[str, Any]

# A uniform error within +-b has sigma b / sqrt(3).
_UNIFORM = 1.0 / 3.0
# dOCV/dSOC below this (V per unit SOC) counts as flat (the sigma is then the pack's bound).
_MIN_SLOPE_V = 1e-6


@dataclass
class StartReport:
    """How one stack's estimator started (the log event)."""

    how: str                 # ocv_at_rest / ocv_under_load / ocv_current_unknown / restored ...
    current_a: float
    soc: np.ndarray
    soc_sigma: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)

    def event(self, time_s: float, stack: int) -> dict[str, Any]:
        sig = self.soc_sigma[np.isfinite(self.soc_sigma)]
        return {"type": "estimator", "event": "start", "how": self.how, "time_s": time_s,
                "stack": stack,
                "current_a": self.current_a if math.isfinite(self.current_a) else None,
                "soc_mean": float(np.mean(self.soc)),
                "soc_sigma_min": float(sig.min()) if sig.size else None,
                "soc_sigma_max": float(sig.max()) if sig.size else None, **self.extra}


class Start:
    """Start and restore for the cores of one stack (``params``: its CoreParams)."""

    def __init__(self, params: CoreParams, soc_sigma_max: float,
                 model_hysteresis: bool, capacity_ah: float) -> None:
        self.params = params
        self.soc_sigma_max = soc_sigma_max
        self.model_hysteresis = model_hysteresis
        self.capacity_ah = capacity_ah

    def _look(self, soc: np.ndarray, temp_c: np.ndarray) -> dict[str, np.ndarray]:
        return grid_lookup(self.params, soc, temp_c)

    # ------------------------------------------------------------------ shared pieces

    def cell_temperatures(self, temperature_c: np.ndarray) -> tuple[np.ndarray, bool]:
        """Per cell temperature as the core maps it (invalid thermistors take the nearest
        valid one; linear between the two nearest); (25 C, False) when none is valid or the
        stack has none (ssb_state_init's default)."""
        p = self.params
        t = fill_thermistors(temperature_c) if p.n_sensors else None
        if t is None:
            return np.full(p.n_cells, 25.0), False
        t0, t1 = t[p.temp_idx0], t[p.temp_idx1]
        return t0 + p.temp_w * (t1 - t0), True

    def invert_ocv(self, voltage_v: np.ndarray, temp_c: np.ndarray, current_a: float = 0.0,
                   r_extra_ohm: float = 0.0) -> np.ndarray:
        """SOC whose OCV at ``temp_c`` plus the ohmic drop (R0(SOC, T) of the current's
        direction + ``r_extra_ohm``) x ``current_a`` and the charge-transfer overpotential
        eta(SOC, T, current_a) (0 without one) is ``voltage_v``: bisection on [0, 1] as the C
        core's ssb_state_init (OCV + R0 I + eta rises with SOC: dOCV/dSOC dwarfs the SOC
        dependence of the drop on any table the OCV inversion is meaningful for); NaN where
        the voltage is NaN."""
        key = "r0_charge_ohm" if current_a > 0.0 else "r0_discharge_ohm"
        lo, hi = np.zeros(len(voltage_v)), np.ones(len(voltage_v))
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            look = self._look(mid, temp_c)
            model_v = look["ocv_v"] if current_a == 0.0 else \
                look["ocv_v"] + (look[key] + r_extra_ohm) * current_a + ct_overpotential(
                    look["ct_inv_2i0_per_a"], current_a, temp_c)
            below = model_v < voltage_v
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        return np.where(np.isfinite(voltage_v), 0.5 * (lo + hi), np.nan)

    def voltage_variance_v2(self, soc: np.ndarray, temp_c: np.ndarray, temp_known: bool
                            ) -> np.ndarray:
        """Variance of a rested cell's voltage as a measure of its OCV, without relaxation:
        the monitor's error, the hysteresis the model leaves unknown at start (its own M, or
        the assumed unmodelled one) and, without a valid temperature, the OCV's spread over
        the model's temperature range."""
        look = self._look(soc, temp_c)
        b_hyst = look["hysteresis_v"] if self.model_hysteresis else np.full(
            len(soc), START_UNMODELLED_HYSTERESIS_V)
        var = (START_VOLTAGE_ERROR_V ** 2 + b_hyst ** 2) * _UNIFORM
        if not temp_known:
            p = self.params
            t_lo = np.full(len(soc), p.temp_min_c)
            t_hi = t_lo + p.temp_step_c * (p.n_temp - 1)
            b_t = 0.5 * np.abs(self._look(soc, t_hi)["ocv_v"]
                               - self._look(soc, t_lo)["ocv_v"])
            var = var + b_t ** 2 * _UNIFORM
        return var

    def contact_resistance_ohm(self, pressure_kpa: np.ndarray) -> float:
        """r_ref (p_ref / p)^0.5 at the mean valid load-cell pressure (floored at 10 kPa as in
        the core); 0 without one."""
        p = self.params
        kpa = np.asarray(pressure_kpa, dtype=float)[: p.n_load_cells]
        kpa = kpa[np.isfinite(kpa)]
        if kpa.size == 0:
            return 0.0
        return p.contact_r_ref_ohm * math.sqrt(p.contact_p_ref_kpa / max(float(kpa.mean()),
                                                                         10.0))

    def _slope(self, soc: np.ndarray, temp_c: np.ndarray) -> np.ndarray:
        return np.maximum(self._look(soc, temp_c)["docv"], _MIN_SLOPE_V)

    def _bound_sigma(self, st: State, cells: np.ndarray) -> None:
        """SOC sigma at most the pack's initial_soc_sigma: scale row/column 0 of P (keeps it
        positive semi-definite: the correlations stay)."""
        p = st["p"]
        sig = np.sqrt(np.maximum(p[0], 0.0))
        f = np.where(cells & (sig > self.soc_sigma_max),
                     self.soc_sigma_max / np.where(sig > 0, sig, 1.0), 1.0)
        p[0] *= f * f
        p[1] *= f
        p[2] *= f

    # ------------------------------------------------------------------ cold start

    def cold_start(self, st: State, current_a: float, cell_voltage_v: np.ndarray,
                   temperature_c: np.ndarray, pressure_kpa: np.ndarray) -> StartReport:
        """SOC and its covariance from the OCV of the first measurement, written into ``st``
        (a fresh core's state dict: its SOH and leak parts stay as they are)."""
        p = self.params
        n = p.n_cells
        v = np.asarray(cell_voltage_v, dtype=float)
        temp_c, temp_known = self.cell_temperatures(temperature_c)
        finite = np.isfinite(v)
        at_rest = math.isfinite(current_a) and abs(current_a) < REST_CURRENT_A
        soc = self.invert_ocv(v, temp_c)
        extra: dict[str, Any] = {"temperature_known": temp_known,
                                 "cells_without_voltage": int(n - finite.sum())}
        pm = np.zeros((6, n))
        pm[0] = self.soc_sigma_max ** 2
        pm[3] = p.v_rc_sigma0 ** 2
        pm[5] = p.v_rc_sigma0 ** 2 if p.n_rc == 2 else 0.0
        if not math.isfinite(current_a):
            how = "ocv_current_unknown"   # rest or not unknown: the raw voltages, wide sigma
        elif at_rest:
            how = "ocv_at_rest"
            s0 = np.where(finite, soc, 0.5)
            look = self._look(s0, temp_c)
            d = self._slope(s0, temp_c)
            i_prior = START_PRIOR_C_RATE * self.capacity_ah
            var1 = (look["r1_ohm"] * i_prior) ** 2 * _UNIFORM
            var2 = (look["r2_ohm"] * i_prior) ** 2 * _UNIFORM if p.n_rc == 2 else 0.0 * d
            var_v = self.voltage_variance_v2(s0, temp_c, temp_known)
            rest = np.zeros((6, n))
            rest[0] = (var_v + var1 + var2) / (d * d)
            rest[1] = -var1 / d
            rest[2] = -var2 / d
            rest[3] = var1
            rest[5] = var2
            pm = np.where(finite, rest, pm)
        else:
            how = "ocv_under_load"
            # v = OCV + V1 + V2 + (R0 + R_contact) I + eta(I): the SOC whose OCV plus the
            # ohmic drop (R0 of this current's direction at that SOC and temperature) and the
            # charge-transfer overpotential is the voltage.
            r_c = self.contact_resistance_ohm(pressure_kpa)
            soc = self.invert_ocv(v, temp_c, current_a, r_c)
            key = "r0_charge_ohm" if current_a > 0.0 else "r0_discharge_ohm"
            look = self._look(np.where(finite, soc, 0.5), temp_c)
            drop = (look[key] + r_c) * current_a + ct_overpotential(
                look["ct_inv_2i0_per_a"], current_a, temp_c)
            extra["r0_drop_v_mean"] = float(np.mean(drop))
        soc = np.where(finite, soc, 0.5)
        st["soc"][...] = soc
        st["v1"][...] = 0.0
        st["v2"][...] = 0.0
        st["hyst"][...] = 0.0
        st["p"][...] = pm
        st["soc_window0"][...] = soc
        st["cell_temp_c"][...] = temp_c
        self._bound_sigma(st, finite)
        return StartReport(how, current_a, soc.copy(), np.sqrt(st["p"][0]), extra)

    # ------------------------------------------------------------------ restore

    def restore(self, st: State, rest_s: float, current_a: float, cell_voltage_v: np.ndarray,
                temperature_c: np.ndarray, pressure_kpa: np.ndarray) -> StartReport:
        """A saved state ``st`` (modified in place) carried over ``rest_s`` seconds of rest and
        updated with the voltages of the first measurement when the stack is at rest. A rest
        of unknown length (NaN, or negative: the clock went back) restarts SOC as a cold
        start, keeping everything else (SOH, leak, faults)."""
        p = self.params
        v = np.asarray(cell_voltage_v, dtype=float)
        temp_c, temp_known = self.cell_temperatures(temperature_c)
        at_rest = math.isfinite(current_a) and abs(current_a) < REST_CURRENT_A
        extra: dict[str, Any] = {"rest_s": rest_s if math.isfinite(rest_s) else None}
        self._forget_steps(st)
        if not (math.isfinite(rest_s) and rest_s >= 0.0):
            rep = self.cold_start(st, current_a, v, temperature_c, pressure_kpa)
            rep.how = "restored_rest_unknown_" + rep.how
            rep.extra.update(extra)
            return rep
        st["cell_temp_c"][...] = temp_c
        self._predict_rest(st, rest_s, temp_c)
        soc_pred = st["soc"].copy()
        if at_rest:
            finite = np.isfinite(v)
            weight = self._update_rested(st, v, temp_c, temp_known, finite, rest_s)
            how = "restored_at_rest"
            extra["ocv_weight_median"] = float(np.median(weight[finite])) if finite.any() \
                else None
            extra["soc_shift_mean"] = float(np.mean(st["soc"] - soc_pred))
        else:
            how = "restored_under_load" if math.isfinite(current_a) else \
                "restored_current_unknown"
        st["soc_window0"][...] = st["soc"]
        self._bound_sigma(st, np.ones(p.n_cells, dtype=bool))
        return StartReport(how, current_a, st["soc"].copy(),
                           np.sqrt(np.maximum(st["p"][0], 0.0)), extra)

    @staticmethod
    def _forget_steps(st: State) -> None:
        """What compares one sample with the previous one must not compare across the rest:
        the R0 estimator's last voltage and current, and the capacity window (its throughput
        would meet an SOC moved by the OCV, not by charge)."""
        st["v_prev"][...] = np.nan
        st["i_prev"] = math.nan
        st["have_prev"] = 0
        st["window_as"] = 0.0

    def _predict_rest(self, st: State, rest_s: float, temp_c: np.ndarray) -> None:
        """The EKF's prediction at zero current over the rest: SOC unchanged, P00 + q rest;
        V_k a_k with a_k = exp(-rest / tau_k); the RC variances relax exactly (an
        Ornstein-Uhlenbeck process: a^2 P + q tau / 2 (1 - a^2), which is q dt for a tick)."""
        p = self.params
        look = self._look(st["soc"], temp_c)
        a1 = np.exp(-rest_s / look["tau1_s"])
        a2 = np.exp(-rest_s / look["tau2_s"]) if p.n_rc == 2 else np.zeros_like(a1)
        q = p.q_rc_v2_per_s
        st["v1"] *= a1
        st["v2"] *= a2
        pm = st["p"]
        pm[0] += p.q_soc_per_s * rest_s
        pm[1] *= a1
        pm[2] *= a2
        pm[3] = a1 * a1 * pm[3] + q * 0.5 * look["tau1_s"] * (1.0 - a1 * a1)
        pm[4] *= a1 * a2
        pm[5] = (a2 * a2 * pm[5] + q * 0.5 * look["tau2_s"] * (1.0 - a2 * a2)
                 if p.n_rc == 2 else 0.0)

    def _update_rested(self, st: State, v: np.ndarray, temp_c: np.ndarray, temp_known: bool,
                       finite: np.ndarray, rest_s: float) -> np.ndarray:
        """One EKF update with the rested voltages, v = OCV(SOC) + M h + V1 + V2 (I = 0),
        H = [dOCV/dSOC, 1, 1], R = the rested voltage's variance x max(1, voltage_corr_s /
        rest): the core's own rule for a sample after an interval (its errors, monitor offset
        and hysteresis, are the ones the saved state's last samples already had, so a restart
        after a second adds almost nothing; no gate: after a rest the voltage is the news).
        Returns each cell's weight of the OCV in the SOC (0..1)."""
        soc = st["soc"]
        look = self._look(soc, temp_c)
        d = look["docv"]
        pm = st["p"]
        h = look["ocv_v"] + look["hysteresis_v"] * st["hyst"] + st["v1"] + st["v2"]
        nu = np.where(finite, v - h, 0.0)
        r = self.voltage_variance_v2(soc, temp_c, temp_known) * (
            max(1.0, self.params.voltage_corr_s / rest_s) if rest_s > 0.0 else math.inf)
        ph0 = pm[0] * d + pm[1] + pm[2]
        ph1 = pm[1] * d + pm[3] + pm[4]
        ph2 = pm[2] * d + pm[4] + pm[5]
        s = d * ph0 + ph1 + ph2 + r
        gain = np.where(finite, 1.0 / s, 0.0)
        st["soc"] += ph0 * nu * gain
        st["v1"] += ph1 * nu * gain
        st["v2"] += ph2 * nu * gain
        pm[0] -= ph0 * ph0 * gain
        pm[1] -= ph0 * ph1 * gain
        pm[2] -= ph0 * ph2 * gain
        pm[3] -= ph1 * ph1 * gain
        pm[4] -= ph1 * ph2 * gain
        pm[5] -= ph2 * ph2 * gain
        return d * ph0 * gain
