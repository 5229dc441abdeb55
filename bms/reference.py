"""NumPy reference of the C core (csrc/ssb_core.c): the same equations, written to be read.

Every per-cell quantity is a numpy vector over the cells of one stack; the order of the steps
follows ssb_tick. tests/test_core_reference.py holds the C core to this within 1e-9 relative
over long random runs. Equations and the reasons behind them: docs/estimation.md.
"""

from __future__ import annotations

import math

import numpy as np

from bms.core import (
    CELL_GATED,
    CELL_NO_CURRENT,
    CELL_OK,
    CELL_REJECTED_NAN,
    IMP_LPX0,
    IMP_LPX1,
    IMP_LPY,
    IMP_P01,
    IMP_P11,
    IMP_ROWS,
    IMP_SOCOL,
    IMP_V1OL,
    OUT_CUSUM,
    OUT_EXPECTED,
    OUT_IMBALANCE,
    OUT_MEAN,
    OUT_MEAN_OVERPOTENTIAL,
    OUT_MEAN_SOC,
    OUT_MEAN_SOC_SIGMA,
    OUT_N,
    OUT_RATE,
    OUT_RESIDUAL,
    OUT_STACK_STATUS,
    ST_CURRENT_INVALID,
    ST_FUSION_GATED,
    ST_FUSION_USED,
    ST_PRESSURE_INVALID,
    ST_TEMP_FALLBACK,
    ST_TEMP_INVALID,
    CoreParams,
    ct_overpotential,
    fill_thermistors,
    grid_lookup,
    two_rt_over_f,
)

T_INIT_C = 25.0


#: Newton steps of the charge-transfer power-limit refinement (as csrc/ssb_core.c)
CT_NEWTON_STEPS = 3


def ct_limit(x_lin: np.ndarray, a: np.ndarray, r: np.ndarray, k: np.ndarray, c: np.ndarray
             ) -> np.ndarray:
    """Largest x with r x + k asinh(c x) = a by Newton steps from x_lin (the linearised
    solution, below the root: the left side is concave in x > 0, so every step stays below);
    x_lin <= 0 or c = 0: x_lin."""
    x = np.array(x_lin, dtype=float)
    go = (x > 0.0) & (c != 0.0)
    for _ in range(CT_NEWTON_STEPS):
        cx = c * x
        f = r * x + k * np.arcsinh(cx) - a
        fp = r + k * c / np.sqrt(1.0 + cx * cx)
        x = np.where(go, x - f / fp, x)
    return x


def d_feedback(p: CoreParams, d: np.ndarray, pdd: np.ndarray) -> np.ndarray:
    """The capacity mismatch the EKF predicts with: the leak filter's d once its variance is
    below cap_fb_d_sigma^2 (else 0), clamped to +-3 prior sigmas (ssb_core.c d_feedback)."""
    dmax = 3.0 * p.leak_d_sigma0
    return np.where(pdd < p.cap_fb_d_sigma * p.cap_fb_d_sigma, np.clip(d, -dmax, dmax), 0.0)


class ReferenceCore:
    """State and one tick of one stack, in NumPy. Same attribute names as bms.core.Core."""

    def __init__(self, params: CoreParams) -> None:
        self.prm = params
        self.bleed_a = np.zeros(params.n_cells)  # this tick's bleed per cell, A (tick)
        self.reset()

    # ------------------------------------------------------------------ model pieces

    def lookup(self, soc: np.ndarray, temp_c: np.ndarray) -> dict[str, np.ndarray]:
        """Bilinear look-up of every grid column and docv/dsoc (bms.core.grid_lookup)."""
        return grid_lookup(self.prm, np.asarray(soc, dtype=float), temp_c)

    def cell_temperatures(self, t_c: np.ndarray) -> int:
        p = self.prm
        if p.n_sensors == 0:
            return 0
        t_c = np.asarray(t_c, dtype=float)
        valid = np.isfinite(t_c) & (t_c > -273.15)
        if not valid.any():
            return ST_TEMP_INVALID
        ts = fill_thermistors(t_c)
        flags = 0 if valid.all() else ST_TEMP_FALLBACK
        t0, t1 = ts[p.temp_idx0], ts[p.temp_idx1]
        self.cell_temp_c = t0 + p.temp_w * (t1 - t0)
        return flags

    def pressure_stats(self, p_kpa: np.ndarray) -> tuple[int, float, float, float]:
        p_kpa = np.asarray(p_kpa, dtype=float)[: self.prm.n_load_cells]
        v = p_kpa[np.isfinite(p_kpa)]
        if len(v) == 0:
            return 0, math.nan, 0.0, 0.0
        return len(v), float(v.mean()), float(v.min()), float(v.max())

    def contact_resistance(self, cnt: int, mean_kpa: float) -> float:
        """r_ref (p_ref / p)^0.5 at this tick's pressure, else the last measured, else p_ref."""
        p = self.prm
        last = self.p_prev if math.isfinite(self.p_prev) else p.contact_p_ref_kpa
        press = max(mean_kpa if cnt > 0 else last, 10.0)
        return p.contact_r_ref_ohm * math.sqrt(p.contact_p_ref_kpa / press)

    # ------------------------------------------------------------------ init

    def reset(self, soc0: np.ndarray | None = None, v_rest: np.ndarray | None = None,
              t_rest_c: np.ndarray | None = None, soc_sigma0: float | None = None) -> None:
        p, n = self.prm, self.prm.n_cells
        sigma0 = p.soc_sigma0 if soc_sigma0 is None else soc_sigma0
        soc = np.full(n, np.nan) if soc0 is None else np.broadcast_to(
            np.asarray(soc0, dtype=float), (n,)).copy()
        t_init = np.full(n, T_INIT_C) if t_rest_c is None else np.where(
            np.isfinite(t_rest_c), t_rest_c, T_INIT_C)
        for i in np.flatnonzero(~np.isfinite(soc)):
            v = math.nan if v_rest is None else float(v_rest[i])
            if math.isfinite(v):
                lo, hi = 0.0, 1.0
                for _ in range(60):  # bisection on the OCV at 25 C
                    mid = 0.5 * (lo + hi)
                    ocv = self.lookup(np.array([mid]), np.array([t_init[i]]))["ocv_v"][0]
                    lo, hi = (mid, hi) if ocv < v else (lo, mid)
                soc[i] = 0.5 * (lo + hi)
            else:
                soc[i] = 0.5
        self.soc = soc
        self.v1 = np.zeros(n)
        self.v2 = np.zeros(n)
        self.hyst = np.zeros(n)  # unknown at start: between the branches
        self.p = np.zeros((6, n))  # 00, 01, 02, 11, 12, 22
        self.p[0] = sigma0 ** 2
        self.p[3] = p.v_rc_sigma0 ** 2
        self.p[5] = p.v_rc_sigma0 ** 2 if p.n_rc == 2 else 0.0
        self.cell_temp_c = np.asarray(t_init, dtype=float).copy()
        self.r0_scale = np.ones(n)
        self.r0_p = np.full(n, p.soh_r0_p_max)
        self.rc_scale = np.ones(n)
        self.imp = np.zeros((IMP_ROWS, n))
        self.imp[IMP_P11] = p.soh_r0_p_max
        self.cap_ratio = np.ones(n)
        self.cap_p = np.full(n, 0.01)
        self.soc_window0 = soc.copy()
        self.leak_e = np.zeros(n)
        self.leak_a = np.zeros(n)
        self.leak_d = np.zeros(n)
        self.leak_p = np.zeros((6, n))  # ee, el, ed, ll, ld, dd
        self.leak_p[0] = p.leak_r_soc2
        self.leak_p[3] = p.leak_sigma0_a ** 2
        self.leak_p[5] = p.leak_d_sigma0 ** 2
        self.leak_r = np.zeros(n)
        self.leak_rp = np.zeros((4, n))  # rr, er, lr, dr
        self.v_prev = np.full(n, np.nan)
        self.gated_count = np.zeros(n, dtype=np.int64)
        self.i_prev = math.nan
        self.window_as = 0.0
        self.p_prev = math.nan
        self.rate_f = 0.0
        self.cusum_pos = 0.0
        self.cusum_neg = 0.0
        self.have_prev = False
        self.have_pressure = False
        # outputs
        self.soc_sigma = np.sqrt(self.p[0])
        self.voltage_pred_v = np.full(n, np.nan)
        self.status = np.zeros(n, dtype=np.int32)
        self.leak_sigma_a = np.sqrt(self.leak_p[3])
        self.leak_flag = np.zeros(n, dtype=np.int32)
        self.r0_ohm = np.zeros(n)
        self.capacity_ah = np.zeros(n)
        self.stack_out = np.full(OUT_N, np.nan)
        self.charge_limit_a = np.zeros(p.n_horizons)
        self.discharge_limit_a = np.zeros(p.n_horizons)
        self._w: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ EKF

    def _set_bleed(self, bleed_a: np.ndarray | None) -> None:
        """This tick's bleed per cell (None: none; NaN/Inf count as 0), as ssb_core.c."""
        if bleed_a is None:
            self.bleed_a = np.zeros(self.prm.n_cells)
        else:
            b = np.asarray(bleed_a, dtype=float)
            self.bleed_a = np.where(np.isfinite(b), b, 0.0)

    def ekf(self, v_meas: np.ndarray, dt_s: float, current_a: float, r_contact: float) -> int:
        """Per-cell EKF on x = [SOC, V1, V2]: predict over dt with each cell's current (the
        tick's minus its bleed, ``self.bleed_a``), then a gated scalar update with the cell
        voltage. Returns stack status bits."""
        p = self.prm
        if not math.isfinite(current_a):
            self.status[:] = CELL_NO_CURRENT
            self.soc_sigma = np.sqrt(self.p[0])
            self.voltage_pred_v = np.full(p.n_cells, np.nan)
            return ST_CURRENT_INVALID
        eta = p.coulombic_eff if current_a > 0.0 else 1.0  # of the sensor's noise
        ic = current_a - self.bleed_a  # each cell's current
        eta_c = np.where(ic > 0.0, p.coulombic_eff, 1.0)
        # the cell's own capacity: Q cap_ratio / (1 + d), d fed back from the leak filter
        dfb = d_feedback(p, self.leak_d, self.leak_p[5])
        dsoc_nom = eta_c * ic * dt_s / p.capacity_as
        soc_pred = self.soc + dsoc_nom * (1.0 + dfb) / self.cap_ratio
        w = self.lookup(soc_pred, self.cell_temp_c)
        # R0 of the cell current's direction (charge: current > 0)
        w["r0"] = np.where(ic > 0.0, w["r0_charge_ohm"], w["r0_discharge_ohm"])
        w["soc_pred"] = soc_pred
        w["dsoc"] = dsoc_nom * (1.0 + dfb) / self.cap_ratio
        w["eta"] = ct_overpotential(w["ct_inv_2i0_per_a"], ic, self.cell_temp_c)
        self._w = w
        docv = w["docv"]
        use2 = 1.0 if p.n_rc == 2 else 0.0  # one branch: V2 stays exactly 0
        # predict: exact discretisation of dV/dt = -V / tau + I / C for both RC branches
        a1 = np.exp(-dt_s / w["tau1_s"])
        a2 = np.exp(-dt_s / w["tau2_s"])
        w["a1"], w["a2"] = a1, a2
        # R1 and R2 with the cell's own scale (the impedance estimator in soh)
        v1 = a1 * self.v1 + self.rc_scale * w["r1_ohm"] * (1.0 - a1) * ic
        v2 = a2 * self.v2 + use2 * self.rc_scale * w["r2_ohm"] * (1.0 - a2) * ic
        # one-state hysteresis (Plett 2004): h moves towards sgn(I) with the SOC throughput
        a_h = np.exp(-p.hyst_rate * np.abs(dsoc_nom))
        self.hyst = a_h * self.hyst + (1.0 - a_h) * np.sign(ic)
        q_i = p.current_noise_a * eta * dt_s / p.capacity_as
        # the random walk follows the cell's voltage noise when the pack ties it (as ssb_core.c)
        q_rw = (p.q_soc_per_s * dt_s * np.sqrt(w["voltage_noise_v2"] * (1.0 / p.q_soc_ref_v2))
                if p.q_soc_ref_v2 > 0.0 else p.q_soc_per_s * dt_s)
        q_soc = q_rw + q_i * q_i
        q_rc = p.q_rc_v2_per_s * dt_s
        c00 = self.p[0] + q_soc
        c01 = self.p[1] * a1
        c02 = self.p[2] * a2
        c11 = self.p[3] * a1 * a1 + q_rc
        c12 = self.p[4] * a1 * a2
        c22 = self.p[5] * a2 * a2 + q_rc * use2
        # measurement: v = OCV(SOC, T) + M h + V1 + V2 + R0 I + eta(I), H = [dOCV/dSOC, 1, 1]
        # (eta depends on I and T, not on the state)
        r0e = self.r0_scale * (w["r0"] + r_contact)
        op = r0e * ic + w["eta"]  # instantaneous overpotential
        w["op_abs"] = np.abs(op)
        h = w["ocv_v"] + w["hysteresis_v"] * self.hyst + v1 + v2 + op
        self.voltage_pred_v = h
        z = np.asarray(v_meas, dtype=float)
        fin = np.isfinite(z)
        nu = np.where(fin, z - h, 0.0)
        ph0 = c00 * docv + c01 + c02
        ph1 = c01 * docv + c11 + c12
        ph2 = c02 * docv + c12 + c22
        corr = max(1.0, p.voltage_corr_s / dt_s)  # as ssb_core.c
        # R_v = (sigma_v^2 + (k (R0 I + eta))^2) corr: the relative error k of the
        # instantaneous overpotential under load
        # (sigma_v^2 the grid's voltage_noise_v2 at the cell's SOC and temperature)
        rv = (w["voltage_noise_v2"] + (p.r_voltage_r0_rel * op) ** 2) * corr
        s = docv * ph0 + ph1 + ph2 + rv + r0e * r0e * p.current_noise_a ** 2
        gated = fin & (nu * nu > p.gate_sigma ** 2 * s)
        gain = np.where(fin & ~gated, 1.0 / s, 0.0)
        kn = nu * gain
        self.soc = soc_pred + ph0 * kn
        self.v1 = v1 + ph1 * kn
        self.v2 = v2 + ph2 * kn
        self.p = np.array([c00 - ph0 * ph0 * gain, c01 - ph0 * ph1 * gain,
                           c02 - ph0 * ph2 * gain, c11 - ph1 * ph1 * gain,
                           c12 - ph1 * ph2 * gain, c22 - ph2 * ph2 * gain])
        self.status = np.where(fin, np.where(gated, CELL_GATED, CELL_OK),
                               CELL_REJECTED_NAN).astype(np.int32)
        self.gated_count = self.gated_count + gated
        self.soc_sigma = np.sqrt(self.p[0])
        return 0

    def ekf_step(self, dt_s: float, current_a: float, v: np.ndarray, t_c: np.ndarray,
                 p_kpa: np.ndarray, bleed_a: np.ndarray | None = None) -> None:
        if not (math.isfinite(dt_s) and dt_s > 0.0):
            raise ValueError("dt_s must be finite and > 0")
        self._set_bleed(bleed_a)
        flags = self.cell_temperatures(t_c)
        cnt, mean, _, _ = self.pressure_stats(p_kpa)
        flags |= self.ekf(v, dt_s, current_a, self.contact_resistance(cnt, mean))
        self.stack_out[OUT_STACK_STATUS] = flags

    # ------------------------------------------------------------------ SOH

    def soh(self, v_meas: np.ndarray, dt_s: float, current_a: float, r_contact: float) -> None:
        """Impedance scales theta0 (R0 + contact) and theta_rc (R1, R2) by a two-parameter RLS
        with forgetting on high-passed signals: y = v - OCV(SOCol) - M h - eta (the
        charge-transfer overpotential of the table at this current, not scaled) against
        x0 = (R0 + Rc) I and x1 = V1ol, the fast RC voltage of the nominal table driven by the
        current alone (open loop); SOCol is counted from the current and follows the EKF's SOC
        with soh_soc_anchor_s (its fast corrections would pass the high-pass). Updates only
        with excitation (|x0h| >= soh_min_di_a (R0 + Rc)). High-pass = signal minus its
        low-pass (soh_hp_tau_s): the
        slow part (slow branch, SOC error through the OCV, unmodelled hysteresis) drops out;
        the slow branch, which ramps under a constant current, is not a regressor (ssb_core.c
        says why) and takes theta_rc. After a reset or gap (have_prev False) the filters
        restart from the present values and the open-loop voltage from the EKF's. Then the
        capacity ratio."""
        p, w = self.prm, self._w
        v_meas = np.asarray(v_meas, dtype=float)
        lam, pmax = p.soh_lambda, p.soh_r0_p_max
        # correlated model error, as the EKF's R; the scales walk randomly (soh_q_per_s)
        rn = p.soh_noise_v * p.soh_noise_v * max(1.0, p.voltage_corr_s / dt_s)
        qd = p.soh_q_per_s * dt_s
        al = dt_s / (p.soh_hp_tau_s + dt_s)
        anchor = not self.have_prev
        imp = self.imp
        fin = np.isfinite(v_meas)
        ic = current_a - self.bleed_a  # each cell's current (ekf)
        if anchor:
            socol = self.soc.copy()
        else:
            aa = dt_s / (p.soh_soc_anchor_s + dt_s)
            socol = imp[IMP_SOCOL] + w["dsoc"] + aa * (self.soc - imp[IMP_SOCOL])
        ocv = self.lookup(socol, self.cell_temp_c)["ocv_v"]
        # the charge-transfer overpotential is the table's, not scaled: out of y before the fit
        y = np.where(fin, v_meas - ocv - w["hysteresis_v"] * self.hyst - w["eta"], 0.0)
        x0 = (w["r0"] + r_contact) * ic
        if anchor:
            x1 = self.v1 / self.rc_scale
            ly, lx0, lx1 = y, x0, x1
        else:
            x1 = w["a1"] * imp[IMP_V1OL] + w["r1_ohm"] * (1.0 - w["a1"]) * ic
            ly, lx0, lx1 = imp[IMP_LPY], imp[IMP_LPX0], imp[IMP_LPX1]
        yh, x0h, x1h = y - ly, x0 - lx0, x1 - lx1
        # only with excitation: the current away from its low-pass by soh_min_di_a
        excited = np.abs(x0h) >= p.soh_min_di_a * (w["r0"] + r_contact)
        ok = (self.status == CELL_OK) & excited & (not anchor)
        a00, a01, a11 = self.r0_p, imp[IMP_P01], imp[IMP_P11]
        g0 = a00 * x0h + a01 * x1h
        g1 = a01 * x0h + a11 * x1h
        wgt = np.where(ok, 1.0, 0.0) / (rn + x0h * g0 + x1h * g1)
        err = yh - self.r0_scale * x0h - self.rc_scale * x1h
        self.r0_scale = np.clip(self.r0_scale + g0 * wgt * err, p.soh_scale_min,
                                p.soh_scale_max)
        self.rc_scale = np.clip(self.rc_scale + g1 * wgt * err, p.soh_scale_min,
                                p.soh_scale_max)
        n00 = np.minimum(a00 - g0 * g0 * wgt + qd, pmax)
        n11 = np.minimum(a11 - g1 * g1 * wgt + qd, pmax)
        lim = np.sqrt(n00 * n11)
        n01 = np.clip(a01 - g0 * g1 * wgt, -lim, lim)
        self.imp = np.array(imp)
        self.r0_p = n00
        self.imp[IMP_P01], self.imp[IMP_P11] = n01, n11
        self.imp[IMP_LPY] = ly + np.where(fin, 1.0, 0.0) * al * (y - ly)
        self.imp[IMP_LPX0] = lx0 + al * (x0 - lx0)
        self.imp[IMP_LPX1] = lx1 + al * (x1 - lx1)
        self.imp[IMP_V1OL] = x1
        self.imp[IMP_SOCOL] = socol
        self.v_prev = v_meas.copy()
        self.r0_ohm = self.r0_scale * (w["r0"] + r_contact)
        self.i_prev = current_a
        self.have_prev = True
        # capacity ratio: throughput / Q_nominal = ratio (SOC_now - SOC_window_start)
        eta = p.coulombic_eff if current_a > 0.0 else 1.0
        self.window_as += eta * current_a * dt_s
        y = self.window_as / p.capacity_as
        if abs(y) >= p.soh_cap_window:
            # the cell's part of the capacity (d, relative to the stack) is the EKF's; the ratio
            # is the rest
            x = (self.soc - self.soc_window0) / (
                1.0 + d_feedback(p, self.leak_d, self.leak_p[5]))
            ok = np.abs(x - y) < 0.5 * abs(y)
            g = np.where(ok, self.cap_p * x / (lam + x * self.cap_p * x), 0.0)
            self.cap_ratio = self.cap_ratio + g * (y - self.cap_ratio * x)
            self.cap_p = np.where(ok, (self.cap_p - g * x * self.cap_p) / lam, self.cap_p)
            self.soc_window0 = self.soc.copy()
            self.window_as = 0.0

    # ------------------------------------------------------------------ leak

    def leak(self, v_meas: np.ndarray, dt_s: float, current_a: float) -> None:
        """Per cell, x = [e, I_leak, d, r]: e = SOC - median SOC of the stack,
        de/dt = (-I_leak + I d) / Q, where d = Q/Q_i - 1 is the cell's capacity mismatch.
        A leak drains at any current; a small cell drifts in proportion to the current, so
        the two separate whenever the current varies, and under a constant current the
        leak's sigma stays large instead of a mismatch being called a leak. e is observed
        from the EKF SOCs; common-mode errors (current offset, hysteresis, temperature)
        cancel in e. e is measured from the SOC the voltage alone gives (predicted SOC +
        innovation / dOCV/dSOC), not the EKF's posterior, which lags a cell whose capacity it
        does not know yet (the lag, released at rest, looked like a leak; ssb_core.c)."""
        p, w = self.prm, self._w
        v_meas = np.asarray(v_meas, dtype=float)
        nu_v = np.where(np.isfinite(v_meas), v_meas - self.voltage_pred_v, 0.0)
        raw = w["soc_pred"] + nu_v / np.where(w["docv"] > 1e-3, w["docv"], 1e-3)
        med = float(np.median(raw))
        b = dt_s / p.capacity_as
        c = b * (current_a - self.bleed_a)  # each cell's current
        # the bleed moves a cell against the median, which moves by the median bleed
        med_bleed = float(np.median(self.bleed_a)) if np.any(self.bleed_a != 0.0) else 0.0
        # x = [e, I_leak, d, r] per cell, r the voltage's relaxation bias (Gauss-Markov with
        # the slowest RC branch's time constant x leak_relax_tau_factor; its level follows
        # that branch's polarisation): the measurement is z = e + r + noise. Written here as
        # 4x4 matrices per cell (the C expands the products).
        n = raw.size
        ee, el, ed, ll, ld, dd = self.leak_p
        rr, er, lr, dr = self.leak_rp
        P = np.empty((n, 4, 4))
        rows = ((ee, el, ed, er), (el, ll, ld, lr), (ed, ld, dd, dr), (er, lr, dr, rr))
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                P[:, i, j] = v
        v_slow, tau_slow = ((self.v2, w["tau2_s"]) if p.n_rc == 2 else (self.v1, w["tau1_s"]))
        ar = np.exp(-dt_s / (p.leak_relax_tau_factor * tau_slow))
        slope = np.maximum(w["docv"], 1e-3)
        F = np.zeros((n, 4, 4))
        F[:, 0, 0] = 1.0
        F[:, 0, 1] = -b
        F[:, 0, 2] = c
        F[:, 1, 1] = 1.0
        F[:, 2, 2] = 1.0
        F[:, 3, 3] = ar
        Q = np.zeros((n, 4, 4))
        Q[:, 0, 0] = p.leak_q_soc_per_s * dt_s
        Q[:, 1, 1] = p.leak_q_a2_per_s * dt_s
        Q[:, 2, 2] = p.leak_q_d_per_s * dt_s
        Q[:, 3, 3] = (1.0 - ar ** 2) * (p.leak_relax_rel_sigma * v_slow / slope) ** 2
        x = np.stack([self.leak_e, self.leak_a, self.leak_d, self.leak_r], axis=1)
        x = np.einsum("nij,nj->ni", F, x)
        x[:, 0] -= b * (self.bleed_a - med_bleed)
        P = F @ P @ np.transpose(F, (0, 2, 1)) + Q
        # Slow polarisation the model gets wrong per cell also counts as white measurement
        # noise, (k V2 / dOCV/dSOC)^2; and the voltage's SOC is as uncertain as one voltage
        # sample over the slope, sigma_v^2 / (dOCV/dSOC)^2.
        r_v2 = (p.leak_v2_rel_sigma ** 2 * self.v2 ** 2 + p.r_voltage_v2) / slope ** 2
        ph = P[:, :, 0] + P[:, :, 3]  # P H', H = [1, 0, 0, 1]
        s_inn = ph[:, 0] + ph[:, 3] + p.leak_r_soc2 + r_v2
        gain = np.where(self.status == CELL_OK, 1.0 / s_inn, 0.0)
        nu = raw - med - x[:, 0] - x[:, 3]
        x = x + ph * (gain * nu)[:, None]
        P = P - ph[:, :, None] * ph[:, None, :] * gain[:, None, None]
        self.leak_e, self.leak_a, self.leak_d, self.leak_r = (x[:, k].copy() for k in range(4))
        self.leak_p = np.array([P[:, 0, 0], P[:, 0, 1], P[:, 0, 2], P[:, 1, 1], P[:, 1, 2],
                                P[:, 2, 2]])
        self.leak_rp = np.array([P[:, 3, 3], P[:, 0, 3], P[:, 1, 3], P[:, 2, 3]])
        self.leak_sigma_a = np.sqrt(self.leak_p[3])
        self.leak_flag = ((self.leak_a - 3.0 * self.leak_sigma_a) > p.leak_alarm_a).astype(
            np.int32)
        # the capacity the EKF predicts with from the next tick on
        self.capacity_ah = p.capacity_as / 3600.0 * self.cap_ratio / (
            1.0 + d_feedback(p, self.leak_d, self.leak_p[5]))

    # ------------------------------------------------------------------ pressure

    def _pressure_dx(self) -> tuple[float, float]:
        """dx = swell_full sum SOC_i + thermal (T_mean - T_ref) (um) and q = s / dx_full."""
        p = self.prm
        t_mean = float(np.sum(self.cell_temp_c)) / p.n_cells
        dx = p.swell_um_full * float(np.sum(self.soc)) + p.thermal_um_per_k * (
            t_mean - p.fixture_t_ref_c)
        dx_full = p.swell_um_full * p.n_cells
        return dx, (p.fixture_stiffening / dx_full if dx_full != 0.0 else 0.0)

    def expected_pressure(self) -> float:
        """preload + k dx (1 + s dx / dx_full), dx_full = n swell_full (a stiffening fixture)."""
        dx, q = self._pressure_dx()
        return self.prm.preload_kpa + self.prm.stiffness_kpa_per_um * dx * (1.0 + q * dx)

    def pressure_slope(self) -> float:
        """d expected / d dx (kPa/um): the fusion's Jacobian per um of stack growth."""
        dx, q = self._pressure_dx()
        return self.prm.stiffness_kpa_per_um * (1.0 + 2.0 * q * dx)

    def pressure(self, p_kpa: np.ndarray, dt_s: float, ekf_ran: bool) -> int:
        p, so = self.prm, self.stack_out
        flags = 0
        cnt, mean, pmin, pmax = self.pressure_stats(p_kpa)
        expected, slope = self.expected_pressure(), self.pressure_slope()
        so[OUT_EXPECTED] = expected
        if cnt == 0:
            flags |= ST_PRESSURE_INVALID
            self.have_pressure = False
            so[[OUT_MEAN, OUT_RESIDUAL, OUT_RATE, OUT_IMBALANCE]] = np.nan
        else:
            resid = mean - expected
            imbalance = pmax - pmin if cnt >= 2 else 0.0
            if self.have_pressure:
                a = dt_s / (p.rate_tau_s + dt_s)
                self.rate_f += a * ((mean - self.p_prev) / dt_s - self.rate_f)
            else:
                self.rate_f = 0.0
            self.p_prev = mean
            self.have_pressure = True
            c = dt_s / p.cusum_tau_s
            self.cusum_pos = max(self.cusum_pos + (resid - p.cusum_k_kpa) * c, 0.0)
            self.cusum_neg = max(self.cusum_neg + (-resid - p.cusum_k_kpa) * c, 0.0)
            so[OUT_MEAN], so[OUT_RESIDUAL], so[OUT_RATE] = mean, resid, self.rate_f
            so[OUT_IMBALANCE] = imbalance
            if p.pressure_fusion and ekf_ran:
                # mean pressure as a measurement of every cell's SOC, H_i = slope * swell
                hc = slope * p.swell_um_full
                s = hc * hc * float(np.sum(self.p[0])) + p.r_pressure_kpa2 * max(
                    1.0, p.pressure_corr_s / dt_s)
                nu = mean - expected
                if nu * nu <= p.gate_sigma ** 2 * s:
                    flags |= ST_FUSION_USED
                    ph = self.p[[0, 1, 2]] * hc
                    self.soc = self.soc + ph[0] / s * nu
                    self.v1 = self.v1 + ph[1] / s * nu
                    self.v2 = self.v2 + ph[2] / s * nu
                    self.p = self.p - np.array([ph[0] * ph[0], ph[0] * ph[1], ph[0] * ph[2],
                                                ph[1] * ph[1], ph[1] * ph[2], ph[2] * ph[2]]) / s
                    self.soc_sigma = np.sqrt(self.p[0])
                else:
                    flags |= ST_FUSION_GATED
        so[OUT_CUSUM] = max(self.cusum_pos, self.cusum_neg)
        return flags

    # ------------------------------------------------------------------ power limits

    def power_limits(self, r_contact: float) -> None:
        """Largest constant current over each horizon that keeps every cell inside
        [v_min, v_max] (RC transients and the OCV slope over the horizon), inside SOC [0, 1],
        derated linearly inside t_derate_band_c of the temperature window."""
        p, w = self.prm, self._w
        use2 = 1.0 if p.n_rc == 2 else 0.0
        for hz, h in enumerate(p.horizons_s):
            e1 = np.exp(-h / w["tau1_s"])
            e2 = np.exp(-h / w["tau2_s"])
            d = w["docv"]
            # posterior OCV (linearised from the predicted SOC), hysteresis held over h
            ocv = w["ocv_v"] + d * (self.soc - w["soc_pred"]) + w["hysteresis_v"] * self.hyst
            v0 = ocv + self.v1 * e1 + self.v2 * e2
            rc = self.rc_scale * (w["r1_ohm"] * (1.0 - e1) + use2 * w["r2_ohm"] * (1.0 - e2)) \
                + d * h / p.capacity_as
            reff_c = self.r0_scale * (w["r0_charge_ohm"] + r_contact) + rc
            reff_d = self.r0_scale * (w["r0_discharge_ohm"] + r_contact) + rc
            c = w["ct_inv_2i0_per_a"]
            if np.any(c != 0.0):
                # charge transfer: from its zero-current linearisation R_ct = (2RT/F) c (a
                # safe limit), Newton steps on r x + k asinh(c x) = a (stay below the root)
                k = two_rt_over_f(self.cell_temp_c)
                ic = ct_limit((p.v_max - v0) / (reff_c + k * c), p.v_max - v0, reff_c, k, c)
                idis = ct_limit((v0 - p.v_min) / (reff_d + k * c), v0 - p.v_min, reff_d, k, c)
            else:
                ic, idis = (p.v_max - v0) / reff_c, (v0 - p.v_min) / reff_d
            ic = np.minimum(ic, (1.0 - self.soc) * p.capacity_as / h)
            idis = np.minimum(idis, self.soc * p.capacity_as / h)
            t = self.cell_temp_c
            band = p.t_derate_band_c
            fc = np.clip((t - p.t_charge_min_c) / band, 0, 1) * np.clip(
                (p.t_charge_max_c - t) / band, 0, 1)
            fd = np.clip((t - p.t_discharge_min_c) / band, 0, 1) * np.clip(
                (p.t_discharge_max_c - t) / band, 0, 1)
            ic = np.minimum(ic, fc * p.i_charge_max_a)
            idis = np.minimum(idis, fd * p.i_discharge_max_a)
            self.charge_limit_a[hz] = max(min(float(ic.min()), p.i_charge_max_a), 0.0)
            self.discharge_limit_a[hz] = max(min(float(idis.min()), p.i_discharge_max_a), 0.0)

    # ------------------------------------------------------------------ tick

    def tick(self, dt_s: float, current_a: float, v: np.ndarray, t_c: np.ndarray,
             p_kpa: np.ndarray, bleed_a: np.ndarray | None = None) -> None:
        if not (math.isfinite(dt_s) and dt_s > 0.0):
            raise ValueError("dt_s must be finite and > 0")
        self._set_bleed(bleed_a)
        p = self.prm
        flags = self.cell_temperatures(t_c)
        cnt, mean, _, _ = self.pressure_stats(p_kpa)
        r_contact = self.contact_resistance(cnt, mean)
        flags |= self.ekf(v, dt_s, current_a, r_contact)
        ekf_ran = not flags & ST_CURRENT_INVALID
        flags |= self.pressure(p_kpa, dt_s, ekf_ran)
        if ekf_ran:
            self.soh(v, dt_s, current_a, r_contact)
            self.leak(v, dt_s, current_a)
            self.power_limits(r_contact)
        else:
            self.capacity_ah = p.capacity_as / 3600.0 * self.cap_ratio / (
                1.0 + d_feedback(p, self.leak_d, self.leak_p[5]))
            self.r0_ohm = np.full(p.n_cells, np.nan)
            self.voltage_pred_v = np.full(p.n_cells, np.nan)
            self.leak_sigma_a = np.sqrt(self.leak_p[3])
            self.leak_flag = np.zeros(p.n_cells, dtype=np.int32)
            self.charge_limit_a[:] = 0.0
            self.discharge_limit_a[:] = 0.0
        self.stack_out[OUT_MEAN_SOC] = float(np.sum(self.soc)) / p.n_cells
        self.stack_out[OUT_MEAN_SOC_SIGMA] = math.sqrt(float(np.sum(self.p[0]))) / p.n_cells
        self.stack_out[OUT_STACK_STATUS] = flags
        self.stack_out[OUT_MEAN_OVERPOTENTIAL] = (
            math.fsum(self._w["op_abs"]) / p.n_cells if ekf_ran else math.nan)


__all__ = ["ReferenceCore", "CELL_OK", "CELL_GATED", "CELL_REJECTED_NAN", "ST_FUSION_GATED",
           "ST_FUSION_USED"]
