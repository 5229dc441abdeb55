/*
 * ssb_core.h - numeric core of ssb-bms: per-cell EKF (SOC, two RC voltages), differential leak
 * (soft-short) estimate, SOH (resistance and capacity by recursive least squares), stack
 * pressure model and monitor (its quantities; the limits on them are the protection engine's,
 * ssb_protect.h), power limits (SOF).
 *
 * C11. No global state, no allocation: the caller owns every buffer (the Python wrapper
 * bms/core.py keeps them in numpy arrays). One call per tick per stack. Equations:
 * docs/estimation.md; the same equations in NumPy: bms/reference.py.
 *
 * Sign convention: current positive = charge (into the stack), as in docs/protocol.md.
 */
#ifndef SSB_CORE_H
#define SSB_CORE_H

#include <stdint.h>

#define SSB_CORE_VERSION 9
#define SSB_MAX_SENSORS 64
#define SSB_MAX_LOAD_CELLS 16
#define SSB_MAX_HORIZONS 4
#define SSB_WORK_ROWS 21 /* ssb_state_t.work holds SSB_WORK_ROWS x n_cells doubles */
/* rows of ssb_state_t.imp (the impedance estimator, n_cells each): RLS covariance entries
 * P01 and P11 (P00 is r0_p), the open-loop fast RC voltage of the nominal table, the
 * coulomb-counted SOC it reads the OCV at, and the low-pass states of its three signals (the
 * high-pass is the signal minus its low-pass) */
enum { SSB_IMP_P01 = 0, SSB_IMP_P11, SSB_IMP_V1OL, SSB_IMP_SOCOL, SSB_IMP_LPY, SSB_IMP_LPX0,
       SSB_IMP_LPX1, SSB_IMP_ROWS };
/* per grid node: ocv_v, r0_discharge_ohm, r0_charge_ohm, r1_ohm, tau1_s, r2_ohm, tau2_s,
 * hysteresis_v (the OCV hysteresis magnitude M), ct_inv_2i0_per_a (1 / (2 I0) of the
 * charge-transfer overpotential, 1/A; 0: none) */
#define SSB_TABLE_STRIDE 10

/* return codes: nothing is written to the state when a call returns an error */
#define SSB_OK 0
#define SSB_ERR_NULL (-1)  /* a required pointer is NULL */
#define SSB_ERR_SIZE (-2)  /* n_cells, n_sensors, n_load_cells, n_horizons or table out of range */
#define SSB_ERR_PARAM (-3) /* a parameter is not finite or out of its range */
#define SSB_ERR_DT (-4)    /* dt_s not finite or <= 0 */

/* per-cell status code (one value per cell per tick) */
#define SSB_CELL_OK 0
#define SSB_CELL_REJECTED_NAN 1 /* voltage NaN/Inf: prediction only, never enters the state */
#define SSB_CELL_GATED 2        /* innovation beyond gate_sigma: rejected and counted */
#define SSB_CELL_NO_CURRENT 3   /* current NaN/Inf: the whole stack skipped this tick */

/* stack status bits */
#define SSB_ST_CURRENT_INVALID (1u << 0)  /* current NaN: no prediction, no update */
#define SSB_ST_TEMP_INVALID (1u << 1)     /* no valid thermistor: last cell temperatures kept */
#define SSB_ST_PRESSURE_INVALID (1u << 2) /* no valid load cell: pressure monitor frozen */
#define SSB_ST_FUSION_USED (1u << 3)      /* pressure fused as a mean-SOC measurement */
#define SSB_ST_FUSION_GATED (1u << 4)     /* pressure pseudo-measurement gated out */
#define SSB_ST_TEMP_FALLBACK (1u << 5)    /* some thermistors invalid: nearest valid used */

/* stack scalar outputs: index into ssb_output_t.stack. The pressure quantities are what the
 * protection engine (ssb_protect.h, bms/protections.py) compares with the pack's limits: mean
 * (stack_pressure_low/high), |rate| (rate), CUSUM (residual), imbalance (load_cell_imbalance). */
enum {
    SSB_OUT_PRESSURE_EXPECTED_KPA = 0,
    SSB_OUT_PRESSURE_MEAN_KPA,
    SSB_OUT_PRESSURE_RESIDUAL_KPA,
    SSB_OUT_PRESSURE_RATE_KPA_PER_S,
    SSB_OUT_PRESSURE_CUSUM_KPA,
    SSB_OUT_LOAD_CELL_IMBALANCE_KPA,
    SSB_OUT_STACK_STATUS,    /* bits SSB_ST_*, as a double (exact) */
    SSB_OUT_MEAN_SOC,
    SSB_OUT_MEAN_SOC_SIGMA, /* sum of the per-cell variances / n^2 (cells independent) */
    SSB_OUT_MEAN_OVERPOTENTIAL_V, /* mean over the cells of the model's |R0 I + eta| this tick,
                                     V (NaN when the EKF did not run): the size of the model
                                     error the current check allows (docs/safety.md) */
    SSB_OUT_N               /* number of stack scalars */
};

/* Everything that does not change during a run. Arrays are owned by the caller. */
typedef struct ssb_params {
    int32_t n_cells;      /* 1 .. 1e6 */
    int32_t n_sensors;    /* 0 .. SSB_MAX_SENSORS thermistors */
    int32_t n_load_cells; /* 0 .. SSB_MAX_LOAD_CELLS */
    int32_t n_horizons;   /* 1 .. SSB_MAX_HORIZONS */

    /* parameter table on a uniform grid, SOC from 0 to 1 in soc_step, temperature from
     * temp_min_c in temp_step_c; node (t, s) holds SSB_TABLE_STRIDE values at
     * grid[(t * n_soc + s) * SSB_TABLE_STRIDE]: ocv_v, r0_discharge_ohm, r0_charge_ohm,
     * r1_ohm, tau1_s, r2_ohm, tau2_s, hysteresis_v, ct_inv_2i0_per_a, voltage_noise_v2 (the
     * model's voltage error variance of one sample, V^2: the EKF's R before the correlation
     * and load terms; a pack without a table has voltage_noise_v^2 everywhere). R0 on charge is used
     * when the current is > 0. With n_rc = 1 the r2 column is ignored (V2 stays 0). The
     * charge-transfer overpotential (symmetric Butler-Volmer) is
     * eta = (2 R T / F) asinh(I ct_inv_2i0_per_a), T the cell temperature in K. */
    int32_t n_soc, n_temp;
    double soc_step, temp_min_c, temp_step_c;
    const double *grid;

    /* cell temperature = (1 - w) T[idx0] + w T[idx1] over the thermistors (per cell) */
    const int32_t *temp_idx0;
    const int32_t *temp_idx1;
    const double *temp_w;

    /* cell model */
    double capacity_as;       /* nominal capacity, A s */
    double coulombic_eff;     /* on charge */
    int32_t n_rc;             /* RC branches, 1 or 2 */
    double hyst_rate;         /* one-state OCV hysteresis rate gamma per unit SOC throughput:
                                 h += (1 - exp(-gamma |dSOC|)) (sgn I - h); 0: none */
    double contact_r_ref_ohm; /* R_contact = r_ref (p_ref / p)^0.5 */
    double contact_p_ref_kpa;

    /* EKF */
    double q_soc_per_s;      /* SOC random-walk variance rate, 1/s */
    double q_soc_ref_v2;     /* > 0: the random walk follows the model's voltage error, per
                                cell q_soc_per_s x sqrt(r_v2(SOC, T) / q_soc_ref_v2) (r_v2 the
                                voltage-noise grid column), V^2; 0: constant */
    double q_rc_v2_per_s;    /* RC voltage variance rate, V^2/s */
    double r_voltage_v2;     /* voltage model error variance of one sample, V^2 */
    double voltage_corr_s;   /* its correlation time: a sample over dt counts as
                                min(1, dt / voltage_corr_s) of an independent one, s */
    double r_voltage_r0_rel; /* relative uncertainty k of the model's instantaneous
                                overpotential: the sample's variance grows by
                                (k (R0 I + eta))^2 (R0 the EKF's own: r0_scale x
                                (table R0 + contact); eta the charge-transfer
                                overpotential), so samples under high current count less */
    double current_noise_a;  /* current sensor noise sigma, A */
    double gate_sigma;       /* innovation gate k: reject nu^2 > k^2 S */

    /* differential leak filter (per cell, relative to the stack median SOC) */
    double leak_q_soc_per_s; /* variance rate of the relative SOC, 1/s */
    double leak_q_a2_per_s;  /* variance rate of the leak current, A^2/s */
    double leak_r_soc2;      /* variance of the relative-SOC pseudo-measurement */
    double leak_alarm_a;     /* flag when leak - 3 sigma > this */
    double leak_q_d_per_s;   /* variance rate of the capacity-mismatch term d, 1/s */
    double leak_d_sigma0;    /* prior sigma of d (relative capacity spread of the cells) */
    double leak_v2_rel_sigma; /* relative per-cell error of the slow RC branch: the leak
                                 measurement's variance grows by (k V2 / dOCV/dSOC)^2 */
    double leak_relax_rel_sigma;  /* per-cell error of the slowest RC branch's polarisation,
                                     relative: the relaxation bias's level is k |V| / slope */
    double leak_relax_tau_factor; /* the relaxation bias decays with this x the slowest
                                     branch's time constant */

    /* SOH: recursive least squares */
    double soh_lambda;     /* forgetting factor per update, (0, 1] */
    double soh_min_di_a;   /* excitation: update only while |I - its low-pass| >= this */
    double soh_r0_p_max;   /* ceiling of the impedance scales' variances (no wind-up) */
    double soh_cap_window; /* SOC throughput (fraction of capacity) per capacity update */
    /* per-cell impedance scales (theta0 on R0 + contact, theta_rc on R1 and R2) by a
     * two-parameter RLS on high-passed signals: v - OCV - M h - eta = theta0 (R0 + Rc) I +
     * theta_rc V1 (the fast branch of the nominal table, open loop; eta the charge-transfer
     * overpotential of the table, not scaled), both fed back into the EKF and the power
     * limits */
    double soh_hp_tau_s;   /* high-pass time constant: removes the slow OCV/SOC error, s */
    double soh_noise_v;    /* model error of the high-passed voltage, V; correlated over
                              voltage_corr_s like the EKF's (a sample over dt counts as
                              min(1, dt / voltage_corr_s) of an independent one) */
    double soh_q_per_s;    /* random walk of both scales (variance per second): how fast a
                              cell's impedance may move; replaces forgetting, so the memory
                              is the same at any sample interval */
    double soh_scale_min, soh_scale_max; /* bounds of both scales */
    double soh_soc_anchor_s;  /* the coulomb-counted SOC of the impedance estimator follows
                                 the EKF's with this time constant (bounds its drift), s */
    /* per-cell capacity fed into the EKF's prediction: Q_i = Q cap_ratio / (1 + d_i) with d_i
     * the leak filter's capacity mismatch, once its sigma is below cap_fb_d_sigma (clamped
     * to +-3 leak_d_sigma0) */
    double cap_fb_d_sigma;

    /* pressure model and monitor */
    int32_t pressure_fusion; /* 1: use the pressure as a measurement of mean SOC */
    double preload_kpa, stiffness_kpa_per_um, swell_um_full, thermal_um_per_k, fixture_t_ref_c;
    double fixture_stiffening; /* stiffness rises by this fraction over the stack's full
                                  swelling stroke: k (1 + s dx / dx_full), dx_full =
                                  n_cells swell_um_full (springs and pouch stiffen as they
                                  compress); 0: a linear fixture */
    double r_pressure_kpa2; /* pressure model error variance of one sample, kPa^2 */
    double pressure_corr_s; /* its correlation time (as voltage_corr_s), s */
    double rate_tau_s;      /* low-pass time constant of the rate of change */
    double cusum_k_kpa;     /* CUSUM allowance (drift that is not counted) */
    double cusum_tau_s;     /* CUSUM time scale: S += (|r| - k) dt / tau */

    /* power limits */
    double horizons_s[SSB_MAX_HORIZONS];
    double v_max, v_min;           /* cell voltage bounds */
    double t_charge_min_c, t_charge_max_c, t_discharge_min_c, t_discharge_max_c;
    double t_derate_band_c;        /* linear derate inside the temperature window */
    double i_charge_max_a, i_discharge_max_a;
} ssb_params_t;

/* The state of one stack. All arrays of n_cells unless noted; owned by the caller. */
typedef struct ssb_state {
    double *soc, *v1, *v2;
    double *hyst;        /* OCV hysteresis state h in [-1, 1] (deterministic, not in p) */
    double *p;           /* EKF covariance, 6 per cell, structure of arrays: p[k * n + i],
                            k = 00, 01, 02, 11, 12, 22 */
    double *cell_temp_c;
    double *r0_scale, *r0_p; /* RLS: R0 (+ contact) multiplier theta0 and its variance */
    double *rc_scale;        /* RLS: R1/R2 multiplier theta_rc */
    double *imp;             /* impedance estimator, SSB_IMP_ROWS per cell (SoA) */
    double *cap_ratio, *cap_p, *soc_window0; /* RLS: capacity / nominal, variance, window start */
    double *leak_e, *leak_a, *leak_d; /* leak filter: relative SOC, leak A, capacity mismatch */
    double *leak_p; /* its covariance, 6 per cell SoA: ee, el, ed, ll, ld, dd */
    double *leak_r;  /* the voltage's relaxation bias r (Gauss-Markov), relative SOC */
    double *leak_rp; /* its covariance with the above, 4 per cell SoA: rr, er, lr, dr */
    double *v_prev;
    uint32_t *gated_count;
    double *work; /* scratch, SSB_WORK_ROWS per cell */
    /* scalars */
    double i_prev;
    double window_as; /* charge throughput since the capacity window began, A s */
    double p_prev, rate_f, cusum_pos, cusum_neg;
    int32_t have_prev, have_pressure;
} ssb_state_t;

/* One tick's measurements (NaN allowed anywhere). */
typedef struct ssb_meas {
    const double *cell_voltage_v; /* n_cells */
    const double *temperature_c;  /* n_sensors */
    const double *pressure_kpa;   /* n_load_cells */
    /* n_cells, A, or NULL (none): the balancing bleed current that flowed out of each cell
     * over this tick's interval (>= 0 while bleeding; NaN/Inf count as 0). A cell's current
     * is the stack current minus its bleed: the EKF, the impedance estimator and the leak
     * filter's prediction use it, so a bled cell's charge loss is not taken for a leak. */
    const double *bleed_a;
} ssb_meas_t;

typedef struct ssb_output {
    double *soc_sigma;    /* n_cells */
    double *voltage_pred_v; /* n_cells: the model's terminal voltage before the update (the
                               residual is the measurement minus this); NaN without current */
    double *leak_sigma_a; /* n_cells */
    double *r0_ohm;       /* n_cells: R0 multiplier x (table R0 + contact) */
    double *capacity_ah;  /* n_cells: the capacity the EKF predicts with */
    int32_t *status;      /* n_cells: SSB_CELL_* */
    int32_t *leak_flag;   /* n_cells: 1 when leak - 3 sigma > leak_alarm_a */
    double *stack;        /* SSB_OUT_N scalars */
    double *charge_limit_a;    /* n_horizons */
    double *discharge_limit_a; /* n_horizons */
} ssb_output_t;

/* Check the parameters (sizes, finite values, ranges). SSB_OK or an error code. */
int ssb_params_check(const ssb_params_t *prm);

/* Initialise the state: soc0[i] (or NaN: from the OCV of v_rest[i] at the cell temperature
 * t_rest_c[i], or 0.5 when v_rest[i] is NaN too), SOC sigma soc_sigma0, RC voltages 0 with
 * sigma v_rc_sigma0, leak 0 with sigma leak_sigma0_a, SOH at nominal, cell temperatures
 * t_rest_c. v_rest and t_rest_c may be NULL; a NULL or non-finite temperature is 25 C. */
int ssb_state_init(const ssb_params_t *prm, ssb_state_t *st, const double *soc0,
                   const double *v_rest, const double *t_rest_c, double soc_sigma0,
                   double v_rc_sigma0, double leak_sigma0_a);

/* EKF alone (temperature map, table lookup, predict, gated update) for all cells. */
int ssb_ekf_step(const ssb_params_t *prm, ssb_state_t *st, const ssb_meas_t *m, double dt_s,
                 double current_a, ssb_output_t *out);

/* The whole tick: EKF, SOH, leak, pressure model, fusion and monitor, power limits. */
int ssb_tick(const ssb_params_t *prm, ssb_state_t *st, const ssb_meas_t *m, double dt_s,
             double current_a, ssb_output_t *out);

/* exp(x) for x <= 0 (x < -700 gives 0), vectorisable; relative error < 4e-16. Exposed for tests. */
double ssb_exp_neg(double x);

#endif /* SSB_CORE_H */
