"""OCV hysteresis for ``bms fit``: Plett's one-state model from the OCV test (and a check
against the relaxed HPPC rests), or none when the data do not show it.

Model (the core's, docs/estimation.md "Hysteresis"; Plett, J. Power Sources 134 (2004) 262):
v = OCV(SOC) + M(SOC) h + ..., h moves towards sgn(I) by 1 - exp(-gamma |dSOC|) per sample and
holds at rest. On a slow-rate test's branches h saturates: -1 on the discharge, +1 on the charge.

- **M(SOC)**: the branches' half-difference is M + the polarisation at the test current,
  half = M (h_c - h_d) / 2 + (P_c + P_d) / 2, with P = I (R0 + sum R_k) at steady state from
  the HPPC fit at the OCV test's temperature (R0 of each branch's direction; + the charge
  transfer's eta(I) when the fit has one: the caller's ``steady_pol`` adds it). So
  M = (half - (P_c + P_d) / 2) / ((h_c - h_d) / 2) where both branches have saturated
  ((h_c - h_d) / 2 >= ``SATURATED``), medians over +-5 % SOC at 10 % breakpoints, >= 0, held
  beyond the ends.
- **Check**: an HPPC file at the OCV test's temperature (+-``REST_CHECK_K``) rests after each
  discharge segment on the discharge branch (h ~ -1): its relaxed voltage is OCV - M, whatever
  the resistances. That gives a second estimate of M from voltages alone.
- **Criterion**: hysteresis is written when the median M exceeds ``MIN_HYSTERESIS_V`` and three
  times its uncertainty. With a rest check that is the two estimates' disagreement (at least
  ``REST_FLOOR_V``): the check does not depend on the resistances. Without one it is
  ``POLARISATION_REL_UNCERTAINTY`` of the polarisation subtracted (a linear model's at C/20,
  fitted on ~1C pulses). Otherwise none (and the report says why).
- **gamma**: from the start of the charge branch after the full discharge: h goes from -1 to
  +1 as 1 - 2 exp(-gamma s) over the charged SOC s, so the half-difference (less the
  polarisation, its RC transients simulated with the fitted branches) rises as
  A (1 - exp(-gamma s)) (+ B s for a slow drift); gamma by least squares over a log grid.
  Identified when the best gamma lies inside the grid and A agrees with M (within a factor
  ``RATE_AMPLITUDE_RATIO``); else ``DEFAULT_RATE`` (stated as an assumption).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

#: Tests start from a charged, relaxed cell (the OCV test's and the HPPC manuals' procedure:
#: charge to full, rest): h = +1 there (Plett's h holds at rest). Assumption.
START_STATE = 1.0
#: Both branches count as saturated where (h_c - h_d) / 2 is at least this.
SATURATED = 0.9
#: M breakpoints every 10 % SOC (median of +-5 %): hysteresis varies slowly with SOC, and a
#: coarse table keeps the branches' noise out (choice).
TABLE_STEP = 0.1
#: M is read only inside this SOC range of the OCV test: at the ends the OCV is steep (an SOC
#: misalignment of the branches reads as M) and the resistances are held beyond the HPPC levels.
SOC_RANGE = (0.05, 0.95)
#: Hysteresis below this is not written: 2 mV, about the total error of a cell-monitor IC
#: (LTC6811 datasheet 1.2 mV) plus margin (assumption).
MIN_HYSTERESIS_V = 0.002
#: The C/20 polarisation predicted by the linear R0 + RC fit is trusted to +-25 % (assumption;
#: Butler-Volmer charge transfer makes the small-current resistance higher: PyBaMM Chen2020's
#: HPPC step R at C/2 is 15-40 % above 1C's, docs/estimation.md).
POLARISATION_REL_UNCERTAINTY = 0.25
#: With a rest check, the uncertainty of M is at least this: 0.5 mV, for the relaxation a rest
#: of 20-60 min may leave after a segment (assumption; the plant test's slow branch, tau 600 s,
#: leaves ~0.4 mV after 20 min at C/2).
REST_FLOOR_V = 0.0005
#: An HPPC file within this of the OCV test's temperature checks M at its relaxed rests (the
#: OCV's entropic shift, ~0.1-0.3 mV/K for NMC/graphite class cells, stays below ~1 mV).
REST_CHECK_K = 2.5
#: The rests used are at h <= -this (after a discharge segment).
REST_CHECK_STATE = 0.8
#: gamma (per unit SOC) is searched over this log grid; the transition at the charge start is
#: fitted over the first RATE_WINDOW_SOC of the charge.
RATE_GRID = np.geomspace(3.0, 3000.0, 61)
RATE_WINDOW_SOC = 0.15
#: The transition's amplitude A must be within this factor of M for gamma to count as found.
RATE_AMPLITUDE_RATIO = 2.0
#: gamma when the data do not give it: 50 per unit SOC, h saturates (1/e) over 2 % of the
#: capacity (assumption, the emulator plant's value; Plett 2004 fits rates of this order).
DEFAULT_RATE = 50.0


@dataclass
class HysteresisFit:
    """What the fit found. ``max_v`` is None when no hysteresis is written."""

    soc: np.ndarray
    max_v: np.ndarray | None
    rate: float
    rate_found: bool
    median_v: float                 # median M over the saturated SOC range
    uncertainty_v: float
    polarisation_v: float           # median (P_c + P_d) / 2 subtracted
    rest_median_v: float            # NaN without a rest check
    rest_points: int
    rate_amplitude_v: float         # A of the transition fit (NaN: no charge branch)
    notes: list[str] = field(default_factory=list)

    @property
    def written(self) -> bool:
        return self.max_v is not None

    def at(self, soc: np.ndarray) -> np.ndarray:
        """M at ``soc`` (0 when none is written)."""
        if self.max_v is None:
            return np.zeros_like(np.asarray(soc, dtype=float))
        return np.interp(soc, self.soc, self.max_v)

    def summary(self) -> dict:
        def f(x: float) -> float | None:
            return None if not math.isfinite(x) else float(x)
        return {"written": self.written, "soc": self.soc.tolist(),
                "max_v": None if self.max_v is None else self.max_v.tolist(),
                "rate": self.rate, "rate_found": self.rate_found,
                "median_v": f(self.median_v), "uncertainty_v": f(self.uncertainty_v),
                "polarisation_v": f(self.polarisation_v), "rest_median_v": f(self.rest_median_v),
                "rest_points": self.rest_points, "rate_amplitude_v": f(self.rate_amplitude_v),
                "start_state": START_STATE, "notes": self.notes}


def trajectory(dsoc: np.ndarray, current_a: np.ndarray, rate: float,
               h0: float = START_STATE) -> np.ndarray:
    """h per sample, the core's update: h = a h + (1 - a) sgn(I), a = exp(-rate |dSOC|)."""
    a = np.exp(-rate * np.abs(dsoc))
    target = np.sign(current_a)
    h = np.empty(len(dsoc))
    acc = h0
    for k in range(len(dsoc)):
        acc = a[k] * acc + (1.0 - a[k]) * target[k]
        h[k] = acc
    return h


def fit_rate(s: np.ndarray, z: np.ndarray) -> tuple[float, float, float]:
    """(gamma, A, rms residual) of z = A (1 - exp(-gamma s)) + B s by least squares over
    RATE_GRID; gamma NaN when the best lies on the grid's edge."""
    best = (math.inf, math.nan, math.nan)
    sses = []
    for g in RATE_GRID:
        m = np.column_stack([1.0 - np.exp(-g * s), s])
        c, *_ = np.linalg.lstsq(m, z, rcond=None)
        sse = float(np.sum((z - m @ c) ** 2))
        sses.append(sse)
        if sse < best[0]:
            best = (sse, float(g), float(c[0]))
    k = int(np.argmin(sses))
    rms = math.sqrt(best[0] / max(len(z), 1))
    if k in (0, len(RATE_GRID) - 1):
        return math.nan, best[2], rms
    return best[1], best[2], rms


@dataclass
class Branch:
    """One C/20 branch: SOC, voltage, current (charge +) and interval per sample."""

    soc: np.ndarray
    voltage_v: np.ndarray
    current_a: np.ndarray
    dt_s: np.ndarray


def assess(discharge: Branch, charge: Branch | None, half_soc: np.ndarray,
           half_v: np.ndarray, temperature_c: float,
           steady_pol: Callable[[np.ndarray, float], tuple[np.ndarray, np.ndarray]],
           charge_pol: Callable[[Branch], np.ndarray],
           rests: Callable[[float], list[tuple[np.ndarray, np.ndarray, np.ndarray]]],
           ocv_at: Callable[[np.ndarray], np.ndarray]) -> HysteresisFit:
    """M(SOC), gamma and the decision (module docstring).

    ``half_soc``, ``half_v``: the OCV test's half-difference on its grid (NaN: one branch);
    ``steady_pol(soc, i_abs)``: the steady-state polarisation (discharge, charge) at |I| =
    i_abs, R0 of each direction; ``charge_pol(branch)``: the polarisation along the charge
    branch simulated from relaxed (RC transients); ``rests(gamma)``: per HPPC file at the OCV
    test's temperature its relaxed rest points (SOC, voltage, h there at this gamma);
    ``ocv_at``: the mean-branch OCV."""
    grid = np.arange(0.0, 1.0 + 1e-9, TABLE_STEP)
    none = HysteresisFit(np.round(grid, 6), None, DEFAULT_RATE, False, math.nan, math.nan,
                         math.nan, math.nan, 0, math.nan)
    if charge is None or not np.any(np.isfinite(half_v)):
        none.notes.append("no hysteresis: the OCV test has no charge branch to compare")
        return none
    i_d = float(np.median(np.abs(discharge.current_a)))
    i_c = float(np.median(np.abs(charge.current_a)))
    # -- gamma from the transition at the start of the charge branch
    w = charge.soc <= charge.soc[0] + RATE_WINDOW_SOC
    sc = charge.soc[w]
    vd = np.interp(sc, discharge.soc[::-1], discharge.voltage_v[::-1])
    pc = charge_pol(Branch(sc, charge.voltage_v[w], charge.current_a[w], charge.dt_s[w]))
    pd = steady_pol(sc, i_d)[0]
    z = 0.5 * (charge.voltage_v[w] - vd) - 0.5 * (pc + pd)
    # sc is the SOC charged since the charge began (the branch starts at SOC 0, h = -1)
    rate, amp, rate_rms = fit_rate(sc, z) if len(sc) >= 10 else (math.nan, math.nan, math.nan)
    # -- M where both branches have saturated
    s = half_soc
    p_d, _ = steady_pol(s, i_d)
    _, p_c = steady_pol(s, i_c)
    pol = 0.5 * (p_c + p_d)

    def m_at_rate(gamma: float) -> tuple[np.ndarray, np.ndarray]:
        h_c = 1.0 - 2.0 * np.exp(-gamma * s)
        h_d = -1.0 + (1.0 + START_STATE) * np.exp(-gamma * (1.0 - s))
        sat = 0.5 * (h_c - h_d)
        ok = (np.isfinite(half_v) & (sat >= SATURATED) & (s >= SOC_RANGE[0])
              & (s <= SOC_RANGE[1]))
        return (half_v - pol) / sat, ok

    gamma = rate if math.isfinite(rate) else DEFAULT_RATE
    m_raw, ok = m_at_rate(gamma)
    m_med = float(np.median(m_raw[ok])) if ok.any() else math.nan
    found = (math.isfinite(rate) and amp > 0.0
             and 1.0 / RATE_AMPLITUDE_RATIO <= amp / max(m_med, 1e-12) <= RATE_AMPLITUDE_RATIO)
    if not found and gamma != DEFAULT_RATE:
        gamma = DEFAULT_RATE
        m_raw, ok = m_at_rate(gamma)
    if ok.sum() < 5:
        none.notes.append(f"no hysteresis: the branches overlap on {int(ok.sum())} SOC points "
                          f"inside {SOC_RANGE[0]:g}..{SOC_RANGE[1]:g}")
        return none
    m_med = float(np.median(m_raw[ok]))
    pol_med = float(np.median(pol[ok]))
    # -- the rest check (voltages only)
    m_rest = []
    for soc, v, h in rests(gamma):
        sel = (h <= -REST_CHECK_STATE) & (soc >= SOC_RANGE[0]) & (soc <= SOC_RANGE[1])
        m_rest.extend(((v[sel] - ocv_at(soc[sel])) / h[sel]).tolist())
    rest_med = float(np.median(m_rest)) if m_rest else math.nan
    u = (max(abs(m_med - rest_med), REST_FLOOR_V) if m_rest
         else POLARISATION_REL_UNCERTAINTY * abs(pol_med))
    table = np.full(len(grid), np.nan)
    for k, b in enumerate(grid):
        near = ok & (np.abs(s - b) <= 0.5 * TABLE_STEP + 1e-9)
        if near.any():
            table[k] = np.median(m_raw[near])
    have = np.isfinite(table)
    table = np.maximum(np.interp(grid, grid[have], table[have]), 0.0)
    out = HysteresisFit(np.round(grid, 6), table, gamma, found, m_med, u, pol_med, rest_med,
                        len(m_rest), amp)
    hours = float(np.sum(discharge.dt_s)) / 3600.0
    how = (f"M from the C/{hours:.0f} branches: half-difference less the "
           f"polarisation I (R0 + sum R_k) (+ eta(I) with a charge transfer) of the HPPC fit "
           f"at {temperature_c:.1f} C (median "
           f"{1e3 * pol_med:.2f} mV) over SOC {s[ok][0]:.2f}..{s[ok][-1]:.2f}: median "
           f"{1e3 * m_med:.2f} mV; uncertainty {1e3 * u:.2f} mV (" +
           (f"its difference from the rest check's {1e3 * rest_med:.2f} mV, OCV less the "
            f"voltage of {len(m_rest)} relaxed HPPC rests after discharge, at least "
            f"{1e3 * REST_FLOOR_V:g} mV" if m_rest else
            f"{POLARISATION_REL_UNCERTAINTY:.0%} of the polarisation: no HPPC file within "
            f"{REST_CHECK_K:g} K of the OCV test to check it against relaxed rests") + ")")
    out.notes.append(how)
    if m_med > MIN_HYSTERESIS_V and m_med > 3.0 * u:
        out.notes.append(f"hysteresis written: M {1e3 * table.min():.2f}..{1e3 * table.max():.2f}"
                         f" mV over SOC (10 % breakpoints)")
    else:
        why = [f"{1e3 * MIN_HYSTERESIS_V:g} mV"] if m_med <= MIN_HYSTERESIS_V else []
        why += [f"3x its uncertainty ({1e3 * 3 * u:.2f} mV)"] if m_med <= 3.0 * u else []
        out.max_v = None
        out.notes.append(f"no hysteresis written: the median M {1e3 * m_med:.2f} mV is not above "
                         + " nor ".join(why))
        return out
    if found:
        out.notes.append(f"rate gamma {gamma:.3g} (h saturates over {100 / gamma:.2g} % SOC) from "
                         f"the start of the charge branch (transition amplitude "
                         f"{1e3 * amp:.2f} mV, residual {1e3 * rate_rms:.2f} mV)")
    else:
        if len(sc) < 10:
            reason = (f"the charge branch's first {RATE_WINDOW_SOC:.0%} has {len(sc)} samples")
        elif not math.isfinite(rate):
            reason = ("the best rate lies on the edge of the searched "
                      f"{RATE_GRID[0]:g}..{RATE_GRID[-1]:g}")
        else:
            reason = (f"the transition's amplitude {1e3 * amp:.2f} mV is not within a factor "
                      f"{RATE_AMPLITUDE_RATIO:g} of M")
        out.notes.append(f"rate gamma {DEFAULT_RATE:g} assumed (not identified: {reason})")
    return out
