"""OCV(SOC) and capacity from an OCV test, and the OCV's temperature dependence from relaxed
rest points.

Two kinds of OCV test are recognised (Plett, *Battery Management Systems* vol. 1, Artech House
2015, ch. 2.10, the "slow-rate" and the "incremental" OCV tests; Barai et al., J. Power Sources
295 (2015) 99 compare them):

- **slow rate**: a relaxed full cell, a C/20-class constant-current discharge to the lower
  cut-off, (a rest,) and a constant-current charge. The capacity is the charge counted over the
  full discharge. OCV(SOC) is the mean of the discharge and the charge branch at equal SOC: the
  ohmic drop and most of the polarisation and hysteresis are equal and opposite on the two
  branches, their half-difference is reported. Where only one branch exists (the top of the
  window, when the charge stops at the upper cut-off before full) that branch is shifted by the
  half-difference next to it. The relaxed voltages before the discharge (SOC 1) and after it
  (SOC 0) are the curve's end points.
- **rests**: the voltage at the end of each rest of a stepped discharge (GITT-like), at the SOC
  counted from the relaxed full start; the capacity is all the charge discharged.

SOC is 1 at the relaxed full start and 0 at the end of the discharge (counted as the core
counts charge, sample k's current over its own interval).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bms.app.fit_data import FitError, Trace, runs
from bms.app.fit_hysteresis import START_STATE, Branch

#: The OCV table's SOC grid: 1 % steps (the loader resamples onto a uniform grid; 1 % keeps
#: the steep ends of NMC/graphite curves within ~1 mV of linear interpolation, assumption).
SOC_STEP = 0.01
#: A rest counts as relaxed (an OCV point) after this long: 5 min (assumption; the HPPC manuals
#: rest 1 h; docs/truth.md measures 0.015 mV/h left after 1 h for Chen2020).
LONG_REST_S = 240.0
#: OCV is stored strictly increasing (the loader refuses otherwise); flat stretches get this
#: much per SOC step (0.01 mV per 1 %: far below any cell's measurable slope).
MIN_OCV_STEP_V = 1e-5


@dataclass
class OcvResult:
    soc_grid: np.ndarray
    ocv_v: np.ndarray            # at temperature_c
    temperature_c: float
    capacity_ah: float
    method: str                  # "slow-rate" or "rests"
    half_difference_v: np.ndarray  # (charge - discharge) / 2 on the grid; NaN where one branch
    notes: list[str] = field(default_factory=list)
    discharge: Branch | None = None  # slow-rate test: the branches' samples
    charge: Branch | None = None


#: The OCV test's hysteresis for the OCV: (M over SOC, rate gamma); see fit_hysteresis.
Hysteresis = tuple[Callable[[np.ndarray], np.ndarray], float]


def soc_grid() -> np.ndarray:
    return np.round(np.linspace(0.0, 1.0, int(round(1.0 / SOC_STEP)) + 1), 6)


def strictly_increasing(v: np.ndarray) -> np.ndarray:
    """Raise flat or falling stretches to MIN_OCV_STEP_V per grid step (noise, a plateau)."""
    out = np.array(v, dtype=float)
    for k in range(1, len(out)):
        out[k] = max(out[k], out[k - 1] + MIN_OCV_STEP_V)
    return out


def fit_ocv(trace: Trace, hysteresis: Hysteresis | None = None) -> OcvResult:
    """OCV(SOC) at the test's temperature and the capacity (see the module docstring).
    ``hysteresis`` (M, gamma): the slow-rate branches are corrected for it where h has not
    saturated (the start of each branch) and the relaxed end points for h there."""
    rs = runs(trace)
    dis = [r for r in rs if r.kind < 0]
    if not dis:
        raise FitError(f"{trace.path}: the OCV test has no discharge (charge-positive current "
                       "never negative): a wrong --current-sign, or not an OCV test")
    q = trace.charge_as
    total_dis = -sum(float(np.sum(trace.current_a[r.start:r.stop] * trace.dt_s[r.start:r.stop]))
                     for r in dis)
    longest = max(dis, key=lambda r: r.stop - r.start)
    longest_q = -float(np.sum(trace.current_a[longest.start:longest.stop]
                              * trace.dt_s[longest.start:longest.stop]))
    if longest_q >= 0.8 * total_dis:
        return _slow_rate(trace, rs, longest, q, hysteresis)
    return _rests(trace, rs, q)


def _rest_end_voltage(trace: Trace, rs: list, index: int) -> float | None:
    """The last voltage of the rest run just before run ``index`` (None: no relaxed rest)."""
    if index <= 0 or rs[index - 1].kind != 0:
        return None
    rest = rs[index - 1]
    return float(trace.voltage_v[rest.stop - 1]) if rest.duration_s(trace) >= LONG_REST_S \
        else None


def _branch(trace: Trace, k: np.ndarray, soc: np.ndarray) -> Branch:
    return Branch(soc, trace.voltage_v[k], trace.current_a[k], trace.dt_s[k])


def _slow_rate(trace: Trace, rs: list, dis, q: np.ndarray,
               hysteresis: Hysteresis | None) -> OcvResult:
    grid = soc_grid()
    i_dis = rs.index(dis)
    q0 = q[dis.start - 1] if dis.start > 0 else 0.0
    cap_as = -(q[dis.stop - 1] - q0)
    duration_h = dis.duration_s(trace) / 3600.0
    notes = [f"slow-rate OCV test: {cap_as / 3600:.4f} Ah discharged in {duration_h:.1f} h "
             f"(about C/{duration_h:.0f})"]
    if duration_h < 5.0:
        notes.append(f"the discharge took {duration_h:.1f} h: faster than C/5, the branches "
                     "carry more polarisation than a C/20 test's")
    k = np.arange(dis.start, dis.stop)
    soc_d = 1.0 + (q[k] - q0) / cap_as
    v_d = np.interp(grid, soc_d[::-1], trace.voltage_v[k][::-1], left=np.nan, right=np.nan)
    chg = next((r for r in rs[i_dis + 1:] if r.kind > 0), None)
    v_top = _rest_end_voltage(trace, rs, i_dis)
    v_bottom = None
    after = rs[i_dis + 1] if i_dis + 1 < len(rs) else None
    if after is not None and after.kind == 0 and after.duration_s(trace) >= LONG_REST_S:
        v_bottom = float(trace.voltage_v[after.stop - 1])
    half = np.full_like(grid, np.nan)
    # h along each branch (Plett's model, from the relaxed charged start and, for the charge,
    # from the end of the full discharge); without hysteresis M = 0 and nothing changes
    m = np.zeros_like(grid) if hysteresis is None else hysteresis[0](grid)
    gamma = 0.0 if hysteresis is None else hysteresis[1]
    h_d = -1.0 + (1.0 + START_STATE) * np.exp(-gamma * (1.0 - grid))
    h_c = 1.0 - 2.0 * np.exp(-gamma * grid)
    branch_d, branch_c = _branch(trace, k, soc_d), None
    if chg is None:
        notes.append("no charge after the discharge: OCV = the discharge branch (it carries "
                     "the IR drop: the OCV is low by R I)")
        ocv = v_d - m * h_d
    else:
        qc0 = q[chg.start - 1]
        kc = np.arange(chg.start, chg.stop)
        soc_c = (q[kc] - qc0) / cap_as
        v_c = np.interp(grid, soc_c, trace.voltage_v[kc], left=np.nan, right=np.nan)
        both = np.isfinite(v_c) & np.isfinite(v_d)
        if both.sum() < 5:
            raise FitError(f"{trace.path}: the charge and discharge branches overlap on "
                           f"{int(both.sum())} SOC points; a slow-rate OCV test charges back "
                           "over most of the window")
        branch_c = _branch(trace, kc, soc_c)
        half[both] = 0.5 * (v_c[both] - v_d[both])
        ocv = 0.5 * (v_c + v_d) - 0.5 * m * (h_c + h_d)
        # one branch only: shifted by the polarisation (half-difference less the hysteresis)
        # of the nearest 3 % where both exist
        pol = half - 0.5 * m * (h_c - h_d)
        idx = np.flatnonzero(both)
        lo_h, hi_h = np.mean(pol[idx[:3]]), np.mean(pol[idx[-3:]])
        top = np.isfinite(v_d) & ~np.isfinite(v_c) & (grid > grid[idx[-1]])
        ocv[top] = v_d[top] - m[top] * h_d[top] + hi_h
        bot = np.isfinite(v_c) & ~np.isfinite(v_d) & (grid < grid[idx[0]])
        ocv[bot] = v_c[bot] - m[bot] * h_c[bot] - lo_h
        notes.append(f"OCV = mean of the C/{duration_h:.0f} discharge and charge branches over "
                     f"SOC {grid[idx[0]]:.2f}..{grid[idx[-1]]:.2f}; half-difference (IR drop + "
                     f"hysteresis) {1e3 * np.nanmin(half):.1f}..{1e3 * np.nanmax(half):.1f} mV")
        if top.any():
            notes.append(f"above SOC {grid[idx[-1]]:.2f} (the charge stopped at "
                         f"{trace.voltage_v[chg.stop - 1]:.3f} V): the discharge branch + "
                         f"{1e3 * hi_h:.1f} mV")
    if v_top is not None:
        ocv[-1] = v_top - m[-1] * START_STATE
    if v_bottom is not None:
        ocv[0] = v_bottom - m[0] * h_d[0]
    if hysteresis is not None:
        notes.append(f"corrected for the hysteresis (M {1e3 * m.min():.1f}..{1e3 * m.max():.1f} "
                     f"mV, gamma {gamma:.3g}) where h has not saturated: the first "
                     f"{300 / max(gamma, 1e-9):.1f} % of each branch and the relaxed end "
                     f"points (h = {START_STATE:+g} at the charged start, "
                     f"{h_d[0]:+.2f} after the discharge)")
    notes.append("end points: relaxed voltage " + (f"{v_top:.4f} V at SOC 1" if v_top else
                 "(no rest before the discharge)") + ", " + (f"{v_bottom:.4f} V at SOC 0"
                                                            if v_bottom else
                                                            "no rest after the discharge"))
    ocv = _fill(grid, ocv, trace)
    return OcvResult(grid, strictly_increasing(ocv), trace.temperature_median_c,
                     cap_as / 3600.0, "slow-rate", half, notes, branch_d, branch_c)


def _rests(trace: Trace, rs: list, q: np.ndarray) -> OcvResult:
    grid = soc_grid()
    rest_ends = [r.stop - 1 for r in rs if r.kind == 0 and r.duration_s(trace) >= LONG_REST_S]
    if len(rest_ends) < 3:
        raise FitError(f"{trace.path}: neither a slow-rate OCV test (one long discharge) nor "
                       f"rests: {len(rest_ends)} rests of at least {LONG_REST_S:g} s")
    last_dis = max(r.stop for r in rs if r.kind < 0)
    cap_as = -(q[last_dis - 1] - (q[rs[0].stop - 1] if rs[0].kind == 0 else 0.0))
    soc = 1.0 + (q[rest_ends] - q[rs[0].stop - 1] if rs[0].kind == 0 else q[rest_ends]) / cap_as
    v = trace.voltage_v[rest_ends]
    order = np.argsort(soc)
    soc, v = soc[order], v[order]
    keep = np.concatenate(([True], np.diff(soc) > 1e-3))
    soc, v = soc[keep], v[keep]
    ocv = np.interp(grid, soc, v)
    notes = [f"OCV from {len(soc)} relaxed rest points (SOC {soc[0]:.2f}..{soc[-1]:.2f}), "
             f"linear between them; capacity = all the charge discharged "
             f"({cap_as / 3600:.4f} Ah)"]
    return OcvResult(grid, strictly_increasing(ocv), trace.temperature_median_c,
                     cap_as / 3600.0, "rests", np.full_like(grid, np.nan), notes)


def _fill(grid: np.ndarray, ocv: np.ndarray, trace: Trace) -> np.ndarray:
    ok = np.isfinite(ocv)
    if ok.sum() < len(grid) // 2:
        raise FitError(f"{trace.path}: the OCV test covers {ok.sum()} of {len(grid)} SOC "
                       "points; it must run from full to the lower cut-off")
    return np.interp(grid, grid[ok], ocv[ok])


def invert(soc: np.ndarray, ocv: np.ndarray, voltage_v: float) -> float:
    """SOC whose OCV is ``voltage_v`` (clamped to the table)."""
    return float(np.interp(voltage_v, ocv, soc))


def temperature_rows(base: OcvResult, points: dict[float, tuple[np.ndarray, np.ndarray]]
                     ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """OCV rows per temperature: the base curve plus, at each temperature with relaxed rest
    points (soc, voltage), their offset from the base curve, linear in SOC between the points
    and held beyond them. Without points at a temperature the base row is used; with one
    temperature only, that row is repeated 10 K either side (the loader wants two rows; the
    OCV then has no temperature dependence), and the notes say so."""
    notes = []
    temps = sorted(points)
    if not any(abs(t - base.temperature_c) < 1.0 for t in temps):
        temps = sorted(temps + [round(base.temperature_c * 2) / 2])
    rows = []
    for t in temps:
        if t not in points:
            rows.append(base.ocv_v.copy())
            continue
        soc, v = points[t]
        off = v - np.interp(soc, base.soc_grid, base.ocv_v)
        order = np.argsort(soc)
        shift = np.interp(base.soc_grid, soc[order], off[order])
        rows.append(strictly_increasing(base.ocv_v + shift))
        notes.append(f"OCV at {t:g} C: the {base.temperature_c:.0f} C curve + the offset of "
                     f"{len(soc)} relaxed HPPC rest points ({1e3 * off.min():+.1f}.."
                     f"{1e3 * off.max():+.1f} mV)")
    if len(temps) == 1:
        t = temps[0]
        notes.append(f"one temperature only: the OCV row repeated at {t - 10:g} and "
                     f"{t + 10:g} C (no temperature dependence)")
        return np.array([t - 10.0, t + 10.0]), np.array([rows[0], rows[0]]), notes
    return np.array(temps), np.array(rows), notes
