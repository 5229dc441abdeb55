"""The control path's tunables that the pack file does not carry, each with its source.

Everything a bench may want to change about *this pack* (limits, debounce times, estimator
noise, balancing thresholds, contactor timings that depend on the hardware) is in the pack
file (``boards/packs/*.yaml``, validated by ``boards/config.py``). What is here is the BMS's own
behaviour: how it paces the link, how hard it derates, how long it waits before trusting data
again. A value with no paper or datasheet behind it says "assumption" and why it is safe.

One module for them (foxBMS 2 keeps its ``*_cfg`` apart from logic the same way); the logic
modules import from here and define no numbers of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

from bms.current_check import CurrentCheckConfig
from bms.faults import FaultCode
from bms.link_quality import LinkQualityConfig
from bms.thermal_check import ThermalCheckConfig

# ---------------------------------------------------------------------- controller (tick)

#: While a warning of a current-driven quantity is active the allowed currents sent to the
#: boards are scaled by this factor (foxBMS 2 derates at its maximum-operating level the same
#: way; the factor is an assumption). Less current cannot help a leak or a pressure imbalance,
#: so their warnings are events only.
WARNING_DERATE = 0.5
DERATING_CODES = frozenset({
    FaultCode.CELL_OVERVOLTAGE, FaultCode.CELL_UNDERVOLTAGE,
    FaultCode.CELL_OVERTEMPERATURE_CHARGE, FaultCode.CELL_OVERTEMPERATURE_DISCHARGE,
    FaultCode.CELL_UNDERTEMPERATURE_CHARGE, FaultCode.CELL_UNDERTEMPERATURE_DISCHARGE,
    FaultCode.CHARGE_OVERCURRENT, FaultCode.DISCHARGE_OVERCURRENT,
    # A biased current sensor: the over-current levels compare a reading that is off by the
    # offset, so the allowed currents keep a margin (assumption: the same factor).
    FaultCode.CURRENT_SENSOR_OFFSET,
    # Cooling that cannot reject the heat: half the current is a quarter of the I^2 R heat.
    FaultCode.COOLING_DEGRADED,
})
#: HEARTBEAT period: five beats per board watchdog timeout (read from the board's INFO), at
#: most one per tick (assumption: at 10 Hz every other tick, so one lost or late beat -- also
#: the pipelined sim clock's tick of delay -- is far from tripping a 1 s watchdog; a beat per
#: 100 Hz tick would only load the link).
HEARTBEATS_PER_TIMEOUT = 5
#: Dendrite-safe charging (bms/charging.py): an event says when the CCD limit becomes the
#: binding charge limit and when it stops being, each change only after the new condition held
#: this long (assumption: 1 s, at most one event a second per stack; the limit itself acts
#: every tick) ...
CCD_EVENT_DEBOUNCE_S = 1.0
#: ... and released only once the CCD limit is this far above the SOF limit (assumption: the
#: LIMIT_RESEND_A step that a board sees anyway).
CCD_EVENT_HYSTERESIS_A = 0.5
#: The charge over-current levels follow a lowered CCD limit this late (the highest CCD limit
#: of this window): a charger needs time to follow a lower allowed current, and the limits
#: reach the board only in LIMIT_RESEND_A steps. 5 s is the time IEC 61851-1 gives an EV to
#: follow a lowered charging-current signal; dendrites grow over minutes of plating above the
#: CCD, not seconds.
CCD_CHARGER_RESPONSE_S = 5.0
#: Explicit garbage collection period of Controller.run (the automatic collector is off: an
#: automatic generation-2 collection inside a tick costs milliseconds; measured with
#: ``bms bench --tick``).
GC_EVERY_TICKS = 100

# ---------------------------------------------------------------------- estimator (C core)


@dataclass(frozen=True)
class Tuning:
    """Estimator settings that the pack file does not hold (each an assumption; see
    docs/estimation.md for how they were tuned against the emulator).

    ``voltage_corr_s``: the voltage model error (hysteresis, unmodelled branch, offsets) is
    correlated over about this time, so one sample carries dt / voltage_corr_s of an independent
    sample's information: R = voltage_noise_v^2 * max(1, voltage_corr_s / dt) over the actual
    dt of each step (the board's own sample interval, a replayed file's), likewise for the
    pressure with ``pressure_corr_s``.
    """

    voltage_corr_s: float = 15.0
    v_rc_sigma0_v: float = 0.02
    leak_sigma0_a: float = 0.1
    leak_q_soc_per_s: float = 1e-10
    leak_q_a2_per_s: float = 1e-8
    leak_r_soc: float = 0.04
    # Capacity mismatch d = Q/Q_i - 1 in the leak filter: prior sigma 3 % (cells of one lot
    # spread 1-3 % in capacity; assumption) and a slow random walk (ageing).
    leak_d_sigma0: float = 0.03
    leak_q_d_per_s: float = 1e-12
    # Per-cell error of the slow RC branch relative to its estimate (assumption: 30 %, the
    # estimator has one R2/R1 and tau2/tau1 for all cells): inflates the leak filter's noise
    # while the slow branch is polarised (docs/estimation.md).
    leak_v2_rel_sigma: float = 0.3
    # The voltage's SOC also carries a per-cell relaxation bias r (a state of the leak
    # filter: Gauss-Markov, decaying with leak_relax_tau_factor x the slowest RC branch's
    # time constant, level leak_relax_rel_sigma x that branch's polarisation over the OCV
    # slope), so a cell that relaxes a little slower than the others after a heavy load is not
    # read as a leak at rest: without it a 3C discharge at 10 C raised false CELL_LEAK
    # warnings (and faults) at rest in 9 of 10 plant seeds (docs/estimation.md, "Leak").
    # 10 %: the per-cell error of the slow branch's polarisation (cells of one lot spread a
    # few % in resistance, the slow branch's share and time constant more; assumption).
    # 2x: a real cell's slow relaxation (solid diffusion) has a longer tail than one
    # exponential (assumption).
    leak_relax_rel_sigma: float = 0.1
    leak_relax_tau_factor: float = 2.0
    # Per-cell impedance scales (theta0 on R0 + contact, theta_rc on R1/R2) by RLS on
    # high-passed signals, fed back into the EKF (docs/estimation.md, "SOH"). Variance ceiling
    # 0.01: prior sigma 10 % (a cell's resistances spread a few % in one lot, contact more;
    # assumption). High-pass 60 s: longer than the drive cycle's current changes, shorter than
    # the minutes over which an SOC error moves (assumption). Model error of the high-passed
    # voltage 5 mV, correlated over voltage_corr_s as the EKF's (a fitted model's voltage error
    # is of that order: bms fit's core RMSE 4.2-6.7 mV on PyBaMM HPPC, docs/estimation.md; with
    # 2 mV the scales followed early transients of PyBaMM cells and the SOC max error grew).
    # Random walk 1e-8 /s: ~0.6 % per hour (assumption: a cell's impedance moves with ageing
    # over months, the rest is temperature and SOC, which the tables carry). Scales bounded to
    # 0.5..2 (assumption: beyond, the table is wrong, not the cell's spread).
    # An update needs excitation: the current 1 A or more away from its 60 s low-pass
    # (assumption: 0.2 C, far above the shunt noise, 0.05 A).
    soh_min_di_a: float = 1.0
    soh_r0_p_max: float = 0.01
    soh_hp_tau_s: float = 60.0
    soh_noise_v: float = 0.005
    soh_q_per_s: float = 1e-8
    soh_scale_min: float = 0.5
    soh_scale_max: float = 2.0
    # The impedance estimator reads the OCV at an SOC counted from the current that follows
    # the EKF's with a time constant of an hour (assumption: 60x the high-pass, so the EKF's
    # corrections barely reach it, yet a counting drift of ~1 %/h stays bounded).
    soh_soc_anchor_s: float = 3600.0
    soh_cap_window: float = 0.1
    # The leak filter's capacity mismatch d enters the EKF's prediction (Q_i = Q / (1 + d))
    # once its sigma is below 1 %, a third of its prior (assumption: then it carries
    # information beyond the lot's spread); clamped to +-3 prior sigmas.
    cap_fb_d_sigma: float = 0.01
    pressure_corr_s: float = 60.0      # pressure model error (fixture non-linearity) correlation
    rate_tau_s: float = 0.2
    cusum_k_kpa: float = 60.0          # assumption: unmodelled fixture stiffening (~10 % of the
    #                                    450 kPa swing, seen against the emulator) + offsets
    cusum_tau_s: float = 10.0
    t_derate_band_c: float = 5.0
    pressure_fusion: bool | None = None  # None: the pack's estimator.pressure_fusion


# ---------------------------------------------------------------------- measurement validation

#: Plausible ranges (assumptions, documented in docs/safety.md):
#: - a lithium-metal/NMC cell never reads below 1.5 V or above 5.0 V while connected; the
#:   LTC6811 open-wire signature is ~0 V, so anything outside is a tap or monitor fault;
CELL_VOLTAGE_PLAUSIBLE_V = (1.5, 5.0)
#: - NTC thermistors (10k, B 3435) are specified over -40..125 C;
TEMPERATURE_PLAUSIBLE_C = (-40.0, 125.0)
#: - load cells: 0 to 4x the critical high-pressure limit is a physical reading;
PRESSURE_PLAUSIBLE_FACTOR = 4.0
#: - the shunt: +-10x the pack's maximum current is still a reading (a short), beyond is a fault.
CURRENT_PLAUSIBLE_FACTOR = 10.0
#: A load cell whose raw count is identical this many samples in a row is stuck: a 24-bit HX711
#: on a bridge always shows a few counts of noise (datasheet: ~50 nV RMS input noise at gain 128).
LOAD_CELL_STUCK_SAMPLES = 20
#: A cell voltage cannot jump by more than the worst table resistance times the current step plus
#: this margin in one tick (monitor noise and sampling skew).
VOLTAGE_JUMP_MARGIN_V = 0.1
#: Open tap wire signature: the wire between cells i and i+1 opens, channel i falls and channel
#: i+1 rises by the same amount (the pair still sums to the two cells' voltage). Adjacent
#: deviations from the stack median of opposite sign, each beyond this, whose sum stays within
#: it, are a tap, not two cells: no cell pair of one stack moves +-0.15 V against each other
#: (assumption; the LTC6811 datasheet's ADOW open-wire test uses a similar pair criterion).
OPEN_TAP_DEVIATION_V = 0.15
#: A board timestamp that advances by more than this many ticks (or goes backwards) is a gap.
TIMESTAMP_GAP_TICKS = 3.0

#: Below this |current| the pack is at rest: the protections keep their charge or discharge
#: temperature limits until the current passes it either way, and the balancer does not bleed
#: while the pack discharges by more than it. Assumption: 2 % of the ssb-23
#: maximum charge current, above the shunt noise (estimator.current_noise_a = 0.05 A) so the
#: mode does not flip on noise at rest.
REST_CURRENT_A = 0.2

# ---------------------------------------------------------------------- estimator start

# SOC from the OCV at start (bms/soc_start.py, docs/estimation.md "Start"): the SOC sigma of
# each cell is the voltage uncertainty of a rested cell over the local dOCV/dSOC. Each term is
# a bound b of a uniformly distributed error (sigma = b / sqrt(3)).
#: Cell-voltage measurement error: the LTC6811's 1.2 mV maximum total measurement error
#: (datasheet, the monitor class of the reference board).
START_VOLTAGE_ERROR_V = 1.2e-3
#: OCV hysteresis that the cell model does not carry (used only when the pack's model has no
#: hysteresis; with one, its M(SOC, T) is the bound, the state h being unknown at start).
#: Assumption: NMC-class cathodes show an OCV hysteresis of the order of 10 mV (Plett's
#: one-state model, J. Power Sources 134 (2004) 277, is fitted with M of that order).
START_UNMODELLED_HYSTERESIS_V = 0.010
#: Relaxation left at a cold start, when the rest time is unknown: at most what the model's RC
#: branches hold after this current (R_k(SOC, T) x this C-rate x capacity, either sign).
#: Assumption: C/2, the order of a drive's mean current and above a charge's tapered end.
START_PRIOR_C_RATE = 0.5
#: The state file is written this often (of run time) and on stop (issue 11: every minute).
STATE_SAVE_PERIOD_S = 60.0

# ---------------------------------------------------------------------- board I/O

#: Allowed currents sent to a board are refreshed when they move by more than this (or every
#: OUTPUT_REFRESH_S): a charger follows them within its own regulation band anyway
#: (assumption).
LIMIT_RESEND_A = 0.5
#: Unchanged outputs are sent again this often (the ACK already confirms each change; this only
#: covers a board that lost its state without us noticing; assumption).
OUTPUT_REFRESH_S = 5.0
#: A lost board's port is closed and opened again this often (USB CDC re-enumeration after a
#: board reset takes about a second on Linux; assumption).
RECONNECT_PERIOD_S = 2.0
#: Real clock: a tick waits for the boards' MEASUREMENTs until this fraction of its period
#: has passed, and for SET_OUTPUTS ACKs until this one, then goes on without them (a miss, a
#: resend next tick): a silent board costs no more than the tick's own period, never the
#: client's whole timeout and retries (which made a silent board slow every tick to 0.5 s).
#: Assumption: half a tick leaves the other half for the tick's own work (~1 ms at 23 cells).
BOARD_SAMPLE_WAIT_FRACTION = 0.5
BOARD_ACK_WAIT_FRACTION = 0.8

# ---------------------------------------------------------------------- load-cell baseline

#: The fixture's static load-cell imbalance (assembly tilt, load-cell gain spread) is recorded
#: over this long at the start of a run, as each load cell's share of the stack mean, and
#: LOAD_CELL_IMBALANCE then watches the change from it (bms/protections.py LoadCellBaseline).
#: Assumption: 1 s, ten samples at 10 Hz against ~1 kPa of load-cell noise, and shorter than
#: the imbalance protection's debounce (2 s for ssb-23), so the static tilt never asserts.
LOAD_CELL_BASELINE_WINDOW_S = 1.0

# ---------------------------------------------------------------------- current plausibility

#: CURRENT_SENSOR_OFFSET (bms/current_check.py, docs/safety.md "Current-sensor offset").
CURRENT_CHECK = CurrentCheckConfig(
    # With every contactor open no current flows: a reading above 0.5 A is an offset. 1 % of
    # the reference board's +-50 A range (boards/mega2560-ltc6811.yaml: shunt + AMC1301-class
    # amplifier; such chains are specified at 0.5-1 % of full scale over temperature,
    # assumption for this chain), 10x the estimator's current_noise_a (0.05 A).
    rest_threshold_a=0.5,
    # 1 s: above the ~10-20 ms a contactor takes to open and the one-tick-old measurement of
    # the pipelined sim clock (assumption).
    rest_debounce_s=1.0,
    # The stack's median innovation is allowed 5 mV: above the core's fitted model error on
    # foreign truth (bms fit on PyBaMM Chen2020: 2.3-3.8 mV RMSE per temperature,
    # docs/estimation.md) and the emulator's (0.5-1.4 mV); measured on healthy ssb-23 runs:
    # |median| below 2 mV once converged (docs/safety.md).
    cusum_allowance_v=0.005,
    # ... plus 3 % of the model's mean instantaneous overpotential |R0 I + eta| (the core's
    # OUT_MEAN_OVERPOTENTIAL): the model's common-mode error grows with the load. A 3C
    # discharge at 0-5 C put the healthy median innovation at +6.5 mV with an overpotential of
    # 0.37 V (1.8 %; emulator, seeds 2-3) and raised false CURRENT_SENSOR_OFFSET warnings in 3
    # of 5 seeds with the 5 mV alone; 3 % leaves a margin (assumption: a real cell's relative
    # model error under load is of that order, the estimator assumes 10 % of the overpotential
    # as a cell's own noise, ssb-23's voltage_noise_r0_rel). At UDDS load (~30 mV) it adds ~1 mV.
    cusum_allowance_rel=0.03,
    # 0.05 V s: 10 s of a median innovation 10 mV (the +5 A offset's lasting bias on ssb-23),
    # ~2 s of its first 30 mV (measured, docs/safety.md); a healthy median stays under the
    # allowance (assumption: the margin against false alarms, checked by the campaigns).
    cusum_limit_v_s=0.05,
    # Only a converged estimate (stack mean SOC sigma <= 3 %): a cold start or a state far
    # from the truth has a common-mode innovation of its own (assumption; the pack's
    # initial_soc_sigma is 15 %).
    sigma_gate=0.03,
    # Stacks in series carry one current: two boards further apart than twice the 0.5 A
    # accuracy above disagree (assumption) ...
    disagree_a=1.0,
    # ... for 1 s (the boards sample within a tick of each other; a UDDS step moves the
    # current by a few A per 0.1 s, assumption).
    disagree_debounce_s=1.0,
)

# ---------------------------------------------------------------------- cooling plausibility

#: COOLING_DEGRADED (bms/thermal_check.py, docs/safety.md "Degraded cooling").
THERMAL_CHECK = ThermalCheckConfig(
    # The model steps once a second: the stack's thermal time constant is minutes (ssb-23:
    # 70 J/K over 0.30 W/K, 230 s); the heat is integrated every tick in between.
    period_s=1.0,
    # The stack may run 0.3 K warmer than the model before anything is integrated: above the
    # model's error on healthy runs (measured on ssb-23 over emu://, docs/safety.md "Degraded
    # cooling": at most +0.1 K over 2C charges, 3C discharges, UDDS, CC-CV and the demo) and
    # the mean of six NTCs' noise (assumption).
    allowance_k=0.3,
    # 20 K s: a minute at 0.33 K over the allowance (assumption; a cooling loss moves the
    # stack's temperature over minutes, so a minute of evidence costs little latency).
    limit_k_s=20.0,
    # The heat uses the OCV at the estimated SOC: only a converged estimate (the current
    # check's gate, bms/tuning.py CURRENT_CHECK).
    sigma_gate=0.03,
)

# ---------------------------------------------------------------------- link quality

#: LINK_FRAME_ERRORS (bms/link_quality.py, docs/safety.md "Link frame errors"): 3 frames of
#: one board dropped (CRC, COBS, length) within 10 s. Assumption: a healthy UART link drops
#: none in hours of running (0 in every fault-free campaign run, docs/safety.md), one noise
#: hit stays an event-free count, and 3 in 10 s is a rate ~1 in 30 frames at 10 Hz, as
#: VEHICLE_FRAME_INVALID counts 3 bad frames in its window.
LINK_QUALITY = LinkQualityConfig(errors=3, window_s=10.0)

# ---------------------------------------------------------------------- contactors


@dataclass(frozen=True)
class ContactorTiming:
    """Contactor state machine timings that the pack file does not carry (assumptions,
    documented in docs/safety.md)."""

    #: Pause with everything open between precharge attempts; lets the precharge resistor
    #: cool (assumption: 1 s; precharge resistors are rated for a few pulses in a row).
    retry_pause_s: float = 1.0
    #: Feedback may lag the command: contactors open in ~10-20 ms (TE EV200-class datasheets)
    #: and the feedback arrives with the next MEASUREMENT (the one after in the pipelined sim
    #: clock), so 0.3 s is a few ticks at 10 Hz (assumption).
    opening_timeout_s: float = 0.3
    feedback_timeout_s: float = 0.3
    #: Valid data must be back this long before SAFE returns to STANDBY (assumption: 1 s, so
    #: a flapping link does not cycle the state).
    safe_recovery_s: float = 1.0


# ---------------------------------------------------------------------- balancing

#: Bleed duty-cycle period (assumption: 10 s, a small fraction of a bleed resistor's thermal
#: time constant of minutes, so the resistor sees the average power).
BALANCE_PERIOD_S = 10.0
#: Voltage-mode balancing runs near the top of charge only, where the OCV slope turns an SOC
#: difference into a measurable voltage difference: above this SOC's OCV (assumption, the
#: flat middle of a solid-state cell's OCV hides a few % of SOC in millivolts).
TOP_OF_CHARGE_SOC = 0.9
