/*
 * ssb_core.c - see ssb_core.h and docs/estimation.md. The NumPy reference bms/reference.py
 * implements the same equations in the same order; tests/test_core_reference.py holds them to
 * 1e-9 relative.
 *
 * Performance layout (docs/estimation.md, "Benchmark"): each per-cell pass is split into a
 * scalar pass that does the table look-ups (indexed loads, which do not vectorise without
 * gathers) and a branch-free pass over structure-of-arrays buffers that the compiler
 * vectorises (selects instead of branches, a polynomial exp instead of libm's).
 */
#include "ssb_core.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#define SSB_RESTRICT restrict

/* GCC does not apply restrict to block-scope pointers derived from struct members, so the hot
 * loops also carry "no loop-carried dependence" (the buffers are distinct by construction). */
#if defined(__clang__)
#define SSB_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define SSB_IVDEP _Pragma("GCC ivdep")
#else
#define SSB_IVDEP
#endif

/* work array rows (each n_cells long) */
enum {
    W_OCV = 0, /* OCV at the predicted SOC, hysteresis not included */
    W_DOCV,
    W_R0,      /* R0 of this tick's current direction */
    W_R0CHG,
    W_R0DIS,
    W_R1,
    W_TAU1,
    W_R2,
    W_TAU2,
    W_HYST,    /* hysteresis magnitude M */
    W_SOCPRED,
    W_CT,      /* 1 / (2 I0) of the charge-transfer overpotential, 1/A (0: none) */
    W_ETA,     /* charge-transfer overpotential at this tick's current, V */
    W_A1,      /* exp(-dt / tau1) of this tick */
    W_A2,
    W_SOCRAW,  /* the SOC the voltage alone gives: predicted SOC + innovation / slope */
    W_DSOC,    /* this tick's SOC increment of each cell (its own capacity) */
    W_VN2,     /* voltage model error variance of one sample at the cell's SOC and T, V^2 */
    W_BLEED,   /* this tick's bleed current of each cell, A (ssb_meas_t.bleed_a, NaN -> 0) */
    W_OP,      /* |instantaneous overpotential| R0 I + eta of this tick, V */
    W_SCRATCH,
    W_ROWS
};
/* grid columns (SSB_TABLE_STRIDE) */
enum { G_OCV = 0, G_R0DIS, G_R0CHG, G_R1, G_TAU1, G_R2, G_TAU2, G_HYST, G_CT, G_VN2, G_N };
_Static_assert(G_N == SSB_TABLE_STRIDE, "grid columns and SSB_TABLE_STRIDE differ");
_Static_assert(W_ROWS == SSB_WORK_ROWS, "SSB_WORK_ROWS (the caller's work size) out of date");

/* R / F = kB / e, V/K (CODATA 2018 exact constants): the symmetric Butler-Volmer
 * charge-transfer overpotential is eta = (2 R T / F) asinh(I / (2 I0)) (Plett, Battery
 * Management Systems vol. 1, 2015, ch. 3; Bard and Faulkner, Electrochemical Methods, 2001,
 * eq. 3.4.11 with alpha = 1/2), its small-current limit R_ct = R T / (F I0). */
#define SSB_R_OVER_F_V_PER_K 8.617333262e-5
#define SSB_KELVIN 273.15

static inline double two_rt_over_f(double temp_c)
{
    return 2.0 * SSB_R_OVER_F_V_PER_K * (temp_c + SSB_KELVIN);
}

/* eta at current_a for 1 / (2 I0) = c; exactly 0 without charge transfer (c = 0) */
static inline double ct_overpotential(double c, double current_a, double temp_c)
{
    return c != 0.0 ? two_rt_over_f(temp_c) * asinh(current_a * c) : 0.0;
}

/* ------------------------------------------------------------------ vectorisable exp */

static inline uint64_t bits_of(double x)
{
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline double double_of(uint64_t u)
{
    double x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* exp(x) for x <= 0: x = n ln2 + r, |r| <= ln2 / 2, Taylor to r^12 (truncation < 2e-16),
 * 2^n built in the exponent bits. Round-to-nearest n by the 1.5 * 2^52 shifter, so no
 * double -> int conversion (which AVX2 lacks) is needed. */
static inline double exp_neg(double x)
{
    const double shifter = 6755399441055744.0; /* 0x1.8p52 */
    const double log2e = 1.4426950408889634;
    const double ln2_hi = 6.93147180369123816490e-01;
    const double ln2_lo = 1.90821492927058770002e-10;
    x = x < -708.0 ? -708.0 : x;
    double kd = x * log2e + shifter;
    uint64_t kb = bits_of(kd);
    double n = kd - shifter;
    double r = x - n * ln2_hi - n * ln2_lo;
    double p = 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    return p * double_of((kb + 1023u) << 52);
}

double ssb_exp_neg(double x)
{
    return exp_neg(x);
}

static inline double clampd(double x, double lo, double hi)
{
    return x < lo ? lo : (x > hi ? hi : x);
}

static inline int finite(double x)
{
    return (x - x) == 0.0; /* false for NaN and +-Inf, no libm call */
}

/* ------------------------------------------------------------------ validation */

static int finite_in(double x, double lo, double hi)
{
    return finite(x) && x >= lo && x <= hi;
}

int ssb_params_check(const ssb_params_t *prm)
{
    if (prm == NULL || prm->grid == NULL)
        return SSB_ERR_NULL;
    if (prm->n_cells < 1 || prm->n_cells > 1000000 || prm->n_sensors < 0 ||
        prm->n_sensors > SSB_MAX_SENSORS || prm->n_load_cells < 0 ||
        prm->n_load_cells > SSB_MAX_LOAD_CELLS || prm->n_horizons < 1 ||
        prm->n_horizons > SSB_MAX_HORIZONS || prm->n_soc < 2 || prm->n_temp < 2 ||
        prm->n_soc > 100001 || prm->n_temp > 10001)
        return SSB_ERR_SIZE;
    if (prm->n_sensors > 0 &&
        (prm->temp_idx0 == NULL || prm->temp_idx1 == NULL || prm->temp_w == NULL))
        return SSB_ERR_NULL;
    if (!finite_in(prm->soc_step * (prm->n_soc - 1), 1.0 - 1e-9, 1.0 + 1e-9) ||
        !finite_in(prm->temp_step_c, 1e-6, 1e3) || !finite_in(prm->temp_min_c, -273.0, 1e3))
        return SSB_ERR_PARAM;
    if (prm->n_rc < 1 || prm->n_rc > 2 || !finite_in(prm->hyst_rate, 0.0, 1e9))
        return SSB_ERR_PARAM;
    size_t nodes = (size_t)prm->n_soc * (size_t)prm->n_temp;
    for (size_t k = 0; k < nodes; k++) {
        const double *g = prm->grid + k * SSB_TABLE_STRIDE;
        /* ocv, R0 (both directions), R1 and both tau > 0; R2 and the hysteresis >= 0 */
        if (!finite_in(g[G_OCV], 1e-12, 1e7) || !finite_in(g[G_R0DIS], 1e-12, 1e7) ||
            !finite_in(g[G_R0CHG], 1e-12, 1e7) || !finite_in(g[G_R1], 1e-12, 1e7) ||
            !finite_in(g[G_TAU1], 1e-12, 1e7) || !finite_in(g[G_R2], 0.0, 1e7) ||
            !finite_in(g[G_TAU2], 1e-12, 1e7) || !finite_in(g[G_HYST], 0.0, 10.0) ||
            !finite_in(g[G_CT], 0.0, 1e9) || !finite_in(g[G_VN2], 1e-18, 1.0))
            return SSB_ERR_PARAM;
    }
    for (int32_t i = 0; i < prm->n_cells && prm->n_sensors > 0; i++) {
        if (prm->temp_idx0[i] < 0 || prm->temp_idx0[i] >= prm->n_sensors ||
            prm->temp_idx1[i] < 0 || prm->temp_idx1[i] >= prm->n_sensors ||
            !finite_in(prm->temp_w[i], 0.0, 1.0))
            return SSB_ERR_PARAM;
    }
    const double positive[] = {prm->capacity_as, prm->coulombic_eff, prm->contact_p_ref_kpa, prm->r_voltage_v2, prm->gate_sigma,
                               prm->leak_r_soc2, prm->leak_alarm_a, prm->soh_lambda,
                               prm->soh_min_di_a, prm->soh_r0_p_max, prm->soh_cap_window,
                               prm->soh_hp_tau_s,
                               prm->soh_noise_v, prm->soh_soc_anchor_s,
                               prm->r_pressure_kpa2, prm->rate_tau_s, prm->cusum_tau_s,
                               prm->t_derate_band_c, prm->leak_relax_tau_factor};
    if (!finite_in(prm->voltage_corr_s, 0.0, 1e6) || !finite_in(prm->pressure_corr_s, 0.0, 1e6) ||
        !finite_in(prm->r_voltage_r0_rel, 0.0, 100.0))
        return SSB_ERR_PARAM;
    for (size_t k = 0; k < sizeof positive / sizeof positive[0]; k++) {
        if (!finite_in(positive[k], 1e-300, 1e300))
            return SSB_ERR_PARAM;
    }
    const double non_negative[] = {prm->contact_r_ref_ohm, prm->q_soc_per_s, prm->q_soc_ref_v2,
                                   prm->q_rc_v2_per_s, prm->current_noise_a,
                                   prm->leak_q_soc_per_s, prm->leak_q_a2_per_s,
                                   prm->leak_q_d_per_s, prm->leak_d_sigma0,
                                   prm->leak_v2_rel_sigma, prm->leak_relax_rel_sigma,
                                   prm->cap_fb_d_sigma,
                                   prm->soh_q_per_s,
                                   prm->preload_kpa, prm->stiffness_kpa_per_um,
                                   prm->cusum_k_kpa, prm->i_charge_max_a,
                                   prm->i_discharge_max_a};
    for (size_t k = 0; k < sizeof non_negative / sizeof non_negative[0]; k++) {
        if (!finite_in(non_negative[k], 0.0, 1e300))
            return SSB_ERR_PARAM;
    }
    if (!finite_in(prm->soh_scale_min, 1e-3, 1.0) || !finite_in(prm->soh_scale_max, 1.0, 1e3))
        return SSB_ERR_PARAM;
    if (prm->coulombic_eff > 1.0 || prm->soh_lambda > 1.0 ||
        !finite_in(prm->swell_um_full, -1e6, 1e6) ||
        !finite_in(prm->thermal_um_per_k, -1e6, 1e6) ||
        !finite_in(prm->fixture_t_ref_c, -273.0, 1e3) ||
        !finite_in(prm->fixture_stiffening, 0.0, 1.0) || !finite_in(prm->v_min, 0.0, 100.0) ||
        !finite_in(prm->v_max, prm->v_min, 100.0))
        return SSB_ERR_PARAM;
    if (!(prm->t_charge_min_c < prm->t_charge_max_c) ||
        !(prm->t_discharge_min_c < prm->t_discharge_max_c))
        return SSB_ERR_PARAM;
    for (int32_t h = 0; h < prm->n_horizons; h++) {
        if (!finite_in(prm->horizons_s[h], 1e-6, 1e6))
            return SSB_ERR_PARAM;
    }
    return SSB_OK;
}

static int state_ok(const ssb_state_t *st)
{
    return st != NULL && st->soc != NULL && st->v1 != NULL && st->v2 != NULL &&
           st->hyst != NULL && st->p != NULL &&
           st->cell_temp_c != NULL && st->r0_scale != NULL && st->r0_p != NULL &&
           st->rc_scale != NULL && st->imp != NULL &&
           st->cap_ratio != NULL && st->cap_p != NULL && st->soc_window0 != NULL &&
           st->leak_e != NULL && st->leak_a != NULL && st->leak_d != NULL &&
           st->leak_p != NULL && st->leak_r != NULL && st->leak_rp != NULL &&
           st->v_prev != NULL && st->gated_count != NULL && st->work != NULL;
}

static int output_ok(const ssb_output_t *out)
{
    return out != NULL && out->soc_sigma != NULL && out->voltage_pred_v != NULL &&
           out->leak_sigma_a != NULL &&
           out->r0_ohm != NULL && out->capacity_ah != NULL && out->status != NULL &&
           out->leak_flag != NULL && out->stack != NULL &&
           out->charge_limit_a != NULL && out->discharge_limit_a != NULL;
}

static int call_check(const ssb_params_t *prm, const ssb_state_t *st, const ssb_meas_t *m,
                      double dt_s, const ssb_output_t *out)
{
    if (prm == NULL || prm->grid == NULL || !state_ok(st) || m == NULL ||
        m->cell_voltage_v == NULL || !output_ok(out))
        return SSB_ERR_NULL;
    if ((prm->n_sensors > 0 && m->temperature_c == NULL) ||
        (prm->n_load_cells > 0 && m->pressure_kpa == NULL))
        return SSB_ERR_NULL;
    if (prm->n_cells < 1 || prm->n_cells > 1000000 || prm->n_sensors < 0 ||
        prm->n_sensors > SSB_MAX_SENSORS || prm->n_load_cells < 0 ||
        prm->n_load_cells > SSB_MAX_LOAD_CELLS || prm->n_horizons < 1 ||
        prm->n_horizons > SSB_MAX_HORIZONS || prm->n_soc < 2 || prm->n_temp < 2)
        return SSB_ERR_SIZE;
    if (!finite(dt_s) || !(dt_s > 0.0))
        return SSB_ERR_DT;
    return SSB_OK;
}

/* ------------------------------------------------------------------ table look-up */

/* The grid cell around (soc, temp_c): its four corners (a, b along SOC; c, d one temperature
 * up), the SOC fraction f (unclamped in [-1/n, ...]: the OCV extrapolates along its end
 * segment), the same clamped to [0, 1] (the other columns hold their end values) and the
 * temperature fraction gt (temperature clamped to the grid). One place for lookup() and
 * ocv_at(). */
typedef struct {
    const double *a, *b, *c, *d;
    double f, fc, gt;
} grid_cell_t;

static inline grid_cell_t grid_cell(const ssb_params_t *prm, double soc, double temp_c)
{
    const int32_t ns = prm->n_soc;
    /* clamped to [0, ns - 2] before the (truncating) conversion, so no floor() is needed */
    const double fs = clampd(soc / prm->soc_step, -1.0, (double)ns);
    const int32_t is = (int32_t)clampd(fs, 0.0, (double)(ns - 2));
    const double ft = clampd((temp_c - prm->temp_min_c) / prm->temp_step_c, 0.0,
                             (double)(prm->n_temp - 1));
    const int32_t it = (int32_t)clampd(ft, 0.0, (double)(prm->n_temp - 2));
    grid_cell_t gc;
    gc.a = prm->grid + ((size_t)it * (size_t)ns + (size_t)is) * SSB_TABLE_STRIDE;
    gc.b = gc.a + SSB_TABLE_STRIDE;
    gc.c = gc.a + (size_t)ns * SSB_TABLE_STRIDE;
    gc.d = gc.c + SSB_TABLE_STRIDE;
    gc.f = fs - (double)is;
    gc.fc = clampd(gc.f, 0.0, 1.0);
    gc.gt = ft - (double)it;
    return gc;
}

/* Bilinear look-up at (soc, temp_c) of every grid column into g[SSB_TABLE_STRIDE], and the
 * OCV slope. OCV is extrapolated linearly beyond the SOC grid (its end segment), the others
 * are held at the end values; temperature is clamped. */
static inline void lookup(const ssb_params_t *prm, double soc, double temp_c,
                          double g[SSB_TABLE_STRIDE], double *docv)
{
    const grid_cell_t gc = grid_cell(prm, soc, temp_c);
    for (int q = 0; q < SSB_TABLE_STRIDE; q++) {
        double lo = gc.a[q] + gc.gt * (gc.c[q] - gc.a[q]);
        double hi = gc.b[q] + gc.gt * (gc.d[q] - gc.b[q]);
        if (q == G_OCV) {
            g[q] = lo + gc.f * (hi - lo);
            *docv = (hi - lo) / prm->soc_step;
        } else {
            g[q] = lo + gc.fc * (hi - lo);
        }
    }
}

/* The OCV column alone, as lookup() computes it (extrapolated beyond the SOC grid). */
static inline double ocv_at(const ssb_params_t *prm, double soc, double temp_c)
{
    const grid_cell_t gc = grid_cell(prm, soc, temp_c);
    const double lo = gc.a[G_OCV] + gc.gt * (gc.c[G_OCV] - gc.a[G_OCV]);
    const double hi = gc.b[G_OCV] + gc.gt * (gc.d[G_OCV] - gc.b[G_OCV]);
    return lo + gc.f * (hi - lo);
}

/* ------------------------------------------------------------------ helpers */

/* Cell temperatures from the thermistors. Invalid thermistors take the value of the nearest
 * valid one (by index; ties: the lower); with none valid the last temperatures stay. */
static uint32_t cell_temperatures(const ssb_params_t *prm, ssb_state_t *st, const double *t_c)
{
    const int32_t k = prm->n_sensors;
    if (k == 0)
        return 0u;
    double ts[SSB_MAX_SENSORS];
    int32_t n_valid = 0;
    for (int32_t j = 0; j < k; j++) {
        ts[j] = t_c[j];
        n_valid += finite(t_c[j]) && t_c[j] > -273.15 ? 1 : 0;
    }
    if (n_valid == 0)
        return SSB_ST_TEMP_INVALID;
    uint32_t flags = 0u;
    if (n_valid < k) {
        flags = SSB_ST_TEMP_FALLBACK;
        for (int32_t j = 0; j < k; j++) {
            if (finite(t_c[j]) && t_c[j] > -273.15)
                continue;
            for (int32_t d = 1; d < k; d++) {
                if (j - d >= 0 && finite(t_c[j - d]) && t_c[j - d] > -273.15) {
                    ts[j] = t_c[j - d];
                    break;
                }
                if (j + d < k && finite(t_c[j + d]) && t_c[j + d] > -273.15) {
                    ts[j] = t_c[j + d];
                    break;
                }
            }
        }
    }
    const int32_t *SSB_RESTRICT i0 = prm->temp_idx0;
    const int32_t *SSB_RESTRICT i1 = prm->temp_idx1;
    const double *SSB_RESTRICT w = prm->temp_w;
    double *SSB_RESTRICT tc = st->cell_temp_c;
    for (int32_t i = 0; i < prm->n_cells; i++)
        tc[i] = ts[i0[i]] + w[i] * (ts[i1[i]] - ts[i0[i]]);
    return flags;
}

/* Mean, min, max and count of the valid load cells. */
static int32_t pressure_stats(const ssb_params_t *prm, const double *p_kpa, double *mean,
                              double *pmin, double *pmax)
{
    int32_t cnt = 0;
    double sum = 0.0, lo = 0.0, hi = 0.0;
    for (int32_t j = 0; j < prm->n_load_cells; j++) {
        double v = p_kpa[j];
        if (!finite(v))
            continue;
        if (cnt == 0 || v < lo)
            lo = v;
        if (cnt == 0 || v > hi)
            hi = v;
        sum += v;
        cnt++;
    }
    *mean = cnt > 0 ? sum / cnt : NAN;
    *pmin = lo;
    *pmax = hi;
    return cnt;
}

static double contact_resistance(const ssb_params_t *prm, const ssb_state_t *st, int32_t cnt,
                                 double mean_kpa)
{
    /* R_contact = r_ref (p_ref / p)^0.5 (assumption, boards/packs/ssb-23.yaml). Without a
     * pressure reading this tick: the last one measured; with none ever: p = p_ref. Floor
     * 10 kPa avoids 1/0 (the same floor as the emulator, an assumption). */
    double p = cnt > 0 ? mean_kpa : (finite(st->p_prev) ? st->p_prev : prm->contact_p_ref_kpa);
    p = p > 10.0 ? p : 10.0;
    return prm->contact_r_ref_ohm * sqrt(prm->contact_p_ref_kpa / p);
}

/* k-th smallest of x[0..n) (x is permuted). Hoare partition, median-of-three pivot. */
static double select_kth(double *x, int32_t n, int32_t k)
{
    int32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        double a = x[lo], b = x[mid], c = x[hi];
        double pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (x[i] < pivot)
                i++;
            while (x[j] > pivot)
                j--;
            if (i <= j) {
                double t = x[i];
                x[i] = x[j];
                x[j] = t;
                i++;
                j--;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            return x[k];
    }
    return x[k];
}

static double median(double *x, int32_t n)
{
    double upper = select_kth(x, n, n / 2);
    if (n % 2 == 1)
        return upper;
    /* lower middle: the largest of x[0 .. n/2) after the selection */
    double lower = x[0];
    for (int32_t i = 1; i < n / 2; i++)
        lower = x[i] > lower ? x[i] : lower;
    return 0.5 * (lower + upper);
}

/* The capacity mismatch d = Q / Q_i - 1 that the EKF's prediction uses: the leak filter's d
 * once its variance pdd is below cap_fb_d_sigma^2 (before: 0, the nominal capacity), clamped
 * to +-3 prior sigmas. The EKF predicts with Q_i = Q cap_ratio / (1 + d). */
static inline double d_feedback(const ssb_params_t *prm, double d, double pdd)
{
    const double dmax = 3.0 * prm->leak_d_sigma0;
    const double dc = clampd(d, -dmax, dmax);
    return pdd < prm->cap_fb_d_sigma * prm->cap_fb_d_sigma ? dc : 0.0;
}

/* ------------------------------------------------------------------ init */

int ssb_state_init(const ssb_params_t *prm, ssb_state_t *st, const double *soc0,
                   const double *v_rest, const double *t_rest_c, double soc_sigma0,
                   double v_rc_sigma0, double leak_sigma0_a)
{
    if (prm == NULL || !state_ok(st) || soc0 == NULL)
        return SSB_ERR_NULL;
    int rc = ssb_params_check(prm);
    if (rc != SSB_OK)
        return rc;
    if (!finite_in(soc_sigma0, 1e-9, 10.0) || !finite_in(v_rc_sigma0, 0.0, 10.0) ||
        !finite_in(leak_sigma0_a, 1e-9, 1e6))
        return SSB_ERR_PARAM;
    const int32_t n = prm->n_cells;
    /* without a measured temperature: 25 C (the usual reference of cell data) */
    const double t_default = 25.0;
    for (int32_t i = 0; i < n; i++) {
        const double t_init =
            (t_rest_c != NULL && finite(t_rest_c[i])) ? t_rest_c[i] : t_default;
        double s = soc0[i];
        if (!finite(s)) {
            s = 0.5;
            double v = v_rest != NULL ? v_rest[i] : NAN;
            if (finite(v)) {
                /* invert the OCV by bisection (OCV strictly increasing in SOC) */
                double lo = 0.0, hi = 1.0, g[SSB_TABLE_STRIDE], docv;
                for (int it = 0; it < 60; it++) {
                    double mid = 0.5 * (lo + hi);
                    lookup(prm, mid, t_init, g, &docv);
                    if (g[G_OCV] < v)
                        lo = mid;
                    else
                        hi = mid;
                }
                s = 0.5 * (lo + hi);
            }
        }
        st->soc[i] = s;
        st->v1[i] = 0.0;
        st->v2[i] = 0.0;
        st->hyst[i] = 0.0; /* unknown: between the charge and the discharge branch */
        st->p[0 * (size_t)n + i] = soc_sigma0 * soc_sigma0;
        st->p[1 * (size_t)n + i] = 0.0;
        st->p[2 * (size_t)n + i] = 0.0;
        st->p[3 * (size_t)n + i] = v_rc_sigma0 * v_rc_sigma0;
        st->p[4 * (size_t)n + i] = 0.0;
        st->p[5 * (size_t)n + i] = prm->n_rc == 2 ? v_rc_sigma0 * v_rc_sigma0 : 0.0;
        st->cell_temp_c[i] = t_init;
        st->r0_scale[i] = 1.0;
        st->r0_p[i] = prm->soh_r0_p_max;
        st->rc_scale[i] = 1.0;
        for (int r = 0; r < SSB_IMP_ROWS; r++)
            st->imp[(size_t)r * (size_t)n + i] = 0.0;
        st->imp[(size_t)SSB_IMP_P11 * (size_t)n + i] = prm->soh_r0_p_max;
        st->cap_ratio[i] = 1.0;
        st->cap_p[i] = 0.01; /* 10 % prior sigma on capacity (assumption) */
        st->soc_window0[i] = s;
        st->leak_e[i] = 0.0;
        st->leak_a[i] = 0.0;
        st->leak_d[i] = 0.0;
        st->leak_p[0 * (size_t)n + i] = prm->leak_r_soc2;
        st->leak_p[1 * (size_t)n + i] = 0.0;
        st->leak_p[2 * (size_t)n + i] = 0.0;
        st->leak_p[3 * (size_t)n + i] = leak_sigma0_a * leak_sigma0_a;
        st->leak_p[4 * (size_t)n + i] = 0.0;
        st->leak_p[5 * (size_t)n + i] = prm->leak_d_sigma0 * prm->leak_d_sigma0;
        st->leak_r[i] = 0.0;
        for (int r = 0; r < 4; r++)
            st->leak_rp[(size_t)r * (size_t)n + i] = 0.0;
        st->v_prev[i] = NAN;
        st->gated_count[i] = 0u;
    }
    memset(st->work, 0, sizeof(double) * (size_t)W_ROWS * (size_t)n);
    st->i_prev = NAN;
    st->window_as = 0.0;
    st->p_prev = NAN;
    st->rate_f = 0.0;
    st->cusum_pos = 0.0;
    st->cusum_neg = 0.0;
    st->have_prev = 0;
    st->have_pressure = 0;
    return SSB_OK;
}

/* ------------------------------------------------------------------ EKF */

/* The EKF over all cells; returns stack status bits. Temperatures must be current. */
static uint32_t ekf_core(const ssb_params_t *prm, ssb_state_t *st, const double *v_meas,
                         const double *bleed_a, double dt_s, double current_a,
                         double r_contact, int32_t *status, double *soc_sigma,
                         double *v_pred)
{
    const int32_t n = prm->n_cells;
    const size_t nn = (size_t)n;
    double *SSB_RESTRICT soc = st->soc;
    double *SSB_RESTRICT w = st->work;
    if (!finite(current_a)) {
        for (int32_t i = 0; i < n; i++) {
            status[i] = SSB_CELL_NO_CURRENT;
            soc_sigma[i] = sqrt(st->p[i]);
            v_pred[i] = NAN;
        }
        return SSB_ST_CURRENT_INVALID;
    }
    /* each cell's current: the stack's minus its bleed (the balancer's resistor draws from
     * that cell alone); the coulombic efficiency, R0 and the hysteresis follow its sign */
    double *SSB_RESTRICT bl = w + W_BLEED * nn;
    for (int32_t i = 0; i < n; i++) {
        const double b = bleed_a != NULL ? bleed_a[i] : 0.0;
        bl[i] = (b - b) == 0.0 ? b : 0.0;
    }
    const double eta = current_a > 0.0 ? prm->coulombic_eff : 1.0;

    /* pass 1 (scalar): predicted SOC with the cell's own capacity (capacity ratio and the
     * leak filter's capacity mismatch, fed back), table look-ups; R0 of the cell current's
     * direction */
    {
        const double *SSB_RESTRICT pdd_a = st->leak_p + 5 * nn;
        const double *SSB_RESTRICT d_a = st->leak_d;
        const double *SSB_RESTRICT cr = st->cap_ratio;
        double *SSB_RESTRICT inc = w + W_DSOC * nn;
        SSB_IVDEP
        for (int32_t i = 0; i < n; i++) {
            const double ic = current_a - bl[i];
            const double eta_i = ic > 0.0 ? prm->coulombic_eff : 1.0;
            const double dsoc = eta_i * ic * dt_s / prm->capacity_as;
            inc[i] = dsoc * (1.0 + d_feedback(prm, d_a[i], pdd_a[i])) / cr[i];
        }
    }
    for (int32_t i = 0; i < n; i++) {
        const double ic = current_a - bl[i];
        double s = soc[i] + w[W_DSOC * nn + i], g[SSB_TABLE_STRIDE];
        w[W_SOCPRED * nn + i] = s;
        lookup(prm, s, st->cell_temp_c[i], g, &w[W_DOCV * nn + i]);
        w[W_OCV * nn + i] = g[G_OCV];
        w[W_R0CHG * nn + i] = g[G_R0CHG];
        w[W_R0DIS * nn + i] = g[G_R0DIS];
        w[W_R0 * nn + i] = ic > 0.0 ? g[G_R0CHG] : g[G_R0DIS];
        w[W_R1 * nn + i] = g[G_R1];
        w[W_TAU1 * nn + i] = g[G_TAU1];
        w[W_R2 * nn + i] = g[G_R2];
        w[W_TAU2 * nn + i] = g[G_TAU2];
        w[W_HYST * nn + i] = g[G_HYST];
        w[W_CT * nn + i] = g[G_CT];
        w[W_VN2 * nn + i] = g[G_VN2];
        w[W_ETA * nn + i] = ct_overpotential(g[G_CT], ic, st->cell_temp_c[i]);
    }

    /* pass 2 (vectorised): predict and gated update */
    const double *SSB_RESTRICT ocv_a = w + W_OCV * nn;
    const double *SSB_RESTRICT docv_a = w + W_DOCV * nn;
    const double *SSB_RESTRICT r0_a = w + W_R0 * nn;
    const double *SSB_RESTRICT r1_a = w + W_R1 * nn;
    const double *SSB_RESTRICT tau1_a = w + W_TAU1 * nn;
    const double *SSB_RESTRICT r2_a = w + W_R2 * nn;
    const double *SSB_RESTRICT tau2_a = w + W_TAU2 * nn;
    const double *SSB_RESTRICT m_a = w + W_HYST * nn;
    const double *SSB_RESTRICT socp_a = w + W_SOCPRED * nn;
    const double *SSB_RESTRICT eta_a = w + W_ETA * nn;
    const double *SSB_RESTRICT vn2_a = w + W_VN2 * nn;
    double *SSB_RESTRICT v1_a = st->v1;
    double *SSB_RESTRICT v2_a = st->v2;
    double *SSB_RESTRICT hy_a = st->hyst;
    double *SSB_RESTRICT vp_a = v_pred;
    double *SSB_RESTRICT op_a = w + W_OP * nn;
    double *SSB_RESTRICT p00 = st->p;
    double *SSB_RESTRICT p01 = st->p + nn;
    double *SSB_RESTRICT p02 = st->p + 2 * nn;
    double *SSB_RESTRICT p11 = st->p + 3 * nn;
    double *SSB_RESTRICT p12 = st->p + 4 * nn;
    double *SSB_RESTRICT p22 = st->p + 5 * nn;
    const double *SSB_RESTRICT r0s = st->r0_scale;
    const double *SSB_RESTRICT rcs = st->rc_scale;
    double *SSB_RESTRICT a1_a = w + W_A1 * nn;
    double *SSB_RESTRICT a2_a = w + W_A2 * nn;
    const double *SSB_RESTRICT vm = v_meas;
    uint32_t *SSB_RESTRICT gcount = st->gated_count;
    int32_t *SSB_RESTRICT stat = status;
    double *SSB_RESTRICT sig = soc_sigma;
    const double *SSB_RESTRICT bl_a = bl;
    const double q_cur = (prm->current_noise_a * eta * dt_s / prm->capacity_as) *
                         (prm->current_noise_a * eta * dt_s / prm->capacity_as);
    /* the SOC random walk follows the model's voltage error at the cell's SOC and temperature
       when the pack ties it to a reference noise v_ref (docs/estimation.md, "Noise"):
       q = q_soc_per_s x v / v_ref, so the SOC sigma's floor is wider where the fitted model is
       worse and narrower where it is better */
    const double q_rw = prm->q_soc_per_s * dt_s;
    const double q_follow = prm->q_soc_ref_v2 > 0.0 ? 1.0 : 0.0;
    const double inv_ref_v2 = q_follow != 0.0 ? 1.0 / prm->q_soc_ref_v2 : 0.0;
    const double q_rc = prm->q_rc_v2_per_s * dt_s;
    /* one branch: V2 stays exactly 0 (no gain, no noise, no input) */
    const double use2 = prm->n_rc == 2 ? 1.0 : 0.0;
    const double q_rc2 = q_rc * use2;
    /* hysteresis: h moves towards sgn(I) by 1 - exp(-gamma |dSOC|) (Plett 2004) with the
       cell's own current and nominal-capacity SOC step; at zero current it stays */
    /* the loop reads locals only (a load through prm inside it stops the vectoriser) */
    const double ce = prm->coulombic_eff;
    const double h_dt = prm->hyst_rate * dt_s / prm->capacity_as;
    const double hyst_on = prm->hyst_rate != 0.0 ? 1.0 : 0.0;
    const double g2 = prm->gate_sigma * prm->gate_sigma;
    /* the model error is correlated over voltage_corr_s: over a short dt a sample carries
       dt / voltage_corr_s of an independent sample's information (docs/estimation.md) */
    const double corr = fmax(1.0, prm->voltage_corr_s / dt_s);
    /* the model's own error under load: a relative error k of the instantaneous overpotential
       (R0 I + eta), correlated like the rest of the model error (docs/estimation.md,
       "Noise") */
    const double kr2 = prm->r_voltage_r0_rel * prm->r_voltage_r0_rel * corr;
    const double sig_i2 = prm->current_noise_a * prm->current_noise_a;
    SSB_IVDEP
    for (int32_t i = 0; i < n; i++) {
        const double i_a = current_a - bl_a[i];
        const double eta_i = i_a > 0.0 ? ce : 1.0;
        const double a_h = hyst_on != 0.0 ? exp_neg(-h_dt * fabs(eta_i * i_a)) : 1.0;
        const double h_in = (1.0 - a_h) * (i_a > 0.0 ? 1.0 : (i_a < 0.0 ? -1.0 : 0.0));
        const double a1 = exp_neg(-dt_s / tau1_a[i]);
        const double a2 = exp_neg(-dt_s / tau2_a[i]);
        a1_a[i] = a1;
        a2_a[i] = a2;
        /* R1 and R2 with the cell's own scale (impedance estimator, soh_update) */
        const double v1 = a1 * v1_a[i] + rcs[i] * r1_a[i] * (1.0 - a1) * i_a;
        const double v2 = a2 * v2_a[i] + use2 * rcs[i] * r2_a[i] * (1.0 - a2) * i_a;
        const double hy = a_h * hy_a[i] + h_in;
        double s = socp_a[i];
        const double q_soc =
            (q_follow != 0.0 ? q_rw * sqrt(vn2_a[i] * inv_ref_v2) : q_rw) + q_cur;
        double c00 = p00[i] + q_soc;
        double c01 = p01[i] * a1;
        double c02 = p02[i] * a2;
        double c11 = p11[i] * a1 * a1 + q_rc;
        double c12 = p12[i] * a1 * a2;
        double c22 = p22[i] * a2 * a2 + q_rc2;
        const double r0e = r0s[i] * (r0_a[i] + r_contact);
        const double op = r0e * i_a + eta_a[i]; /* instantaneous overpotential */
        op_a[i] = fabs(op);
        const double h = ocv_a[i] + m_a[i] * hy + v1 + v2 + op;
        vp_a[i] = h;
        hy_a[i] = hy;
        const double d = docv_a[i];
        const double z = vm[i];
        /* masks as doubles (1.0 / 0.0): mixing int and double lanes stops the vectoriser */
        const double fin = (z - z) == 0.0 ? 1.0 : 0.0;
        const double nu = fin != 0.0 ? z - h : 0.0; /* a NaN never reaches the arithmetic */
        const double ph0 = c00 * d + c01 + c02;
        const double ph1 = c01 * d + c11 + c12;
        const double ph2 = c02 * d + c12 + c22;
        /* the model's voltage error at this cell's SOC and temperature (grid column) */
        const double sv = d * ph0 + ph1 + ph2 + vn2_a[i] * corr + r0e * r0e * sig_i2 +
                          kr2 * op * op;
        const double gated = nu * nu > g2 * sv ? fin : 0.0;
        const double gain = (fin - gated) / sv;
        const double kn = nu * gain;
        s += ph0 * kn;
        v1_a[i] = v1 + ph1 * kn;
        v2_a[i] = v2 + ph2 * kn;
        c00 -= ph0 * ph0 * gain;
        c01 -= ph0 * ph1 * gain;
        c02 -= ph0 * ph2 * gain;
        c11 -= ph1 * ph1 * gain;
        c12 -= ph1 * ph2 * gain;
        c22 -= ph2 * ph2 * gain;
        soc[i] = s;
        p00[i] = c00;
        p01[i] = c01;
        p02[i] = c02;
        p11[i] = c11;
        p12[i] = c12;
        p22[i] = c22;
        const int32_t gi = (int32_t)gated;
        stat[i] = (int32_t)(1.0 - fin) * SSB_CELL_REJECTED_NAN + gi * SSB_CELL_GATED;
        gcount[i] += (uint32_t)gi;
        sig[i] = sqrt(c00);
    }
    return 0u;
}

int ssb_ekf_step(const ssb_params_t *prm, ssb_state_t *st, const ssb_meas_t *m, double dt_s,
                 double current_a, ssb_output_t *out)
{
    int rc = call_check(prm, st, m, dt_s, out);
    if (rc != SSB_OK)
        return rc;
    uint32_t flags = cell_temperatures(prm, st, m->temperature_c);
    double mean, pmin, pmax;
    int32_t cnt = pressure_stats(prm, m->pressure_kpa, &mean, &pmin, &pmax);
    double r_contact = contact_resistance(prm, st, cnt, mean);
    flags |= ekf_core(prm, st, m->cell_voltage_v, m->bleed_a, dt_s, current_a, r_contact,
                      out->status, out->soc_sigma, out->voltage_pred_v);
    out->stack[SSB_OUT_STACK_STATUS] = (double)flags;
    return SSB_OK;
}

/* ------------------------------------------------------------------ SOH */

static void soh_update(const ssb_params_t *prm, ssb_state_t *st, const double *v_meas,
                       double dt_s, double current_a, double r_contact, ssb_output_t *out)
{
    /* Impedance scales by a two-parameter RLS with forgetting, per cell:
     *   y = v - OCV(SOCol) - M h - eta = theta0 (R0 + Rc) I + theta_rc V1ol + slow part
     * with eta the charge-transfer overpotential of the table at this current (W_ETA, the
     * EKF's own term, 0 without a charge transfer): it is not scaled, so it is taken out of y
     * before the fit, else its nonlinear part would be fitted into theta0 (large at low
     * temperature, where I0 is small);
     * with V1ol the fast RC voltage of the nominal table driven by the current alone (open
     * loop, so the regressor does not contain the EKF's own corrections) and SOCol the SOC
     * counted from the current, which follows the EKF's SOC only slowly (soh_soc_anchor_s):
     * the EKF's corrections, fast while it converges from a wrong start, would pass the
     * high-pass, a counted SOC's error moves slowly. The slow part (the
     * slow branch V2, the SOC error seen through the OCV, unmodelled hysteresis) is removed
     * from y and both regressors alike by a high-pass (signal minus its low-pass,
     * soh_hp_tau_s). The slow branch is left out of the regressor: under a constant current it
     * ramps for minutes, and a ramp's high-pass is a constant that any ramp of the model error
     * (OCV slope, temperature) would be fitted to; its scale is taken as theta_rc. Every tick
     * with a valid, ungated voltage and a current that moved
     * away from its low-pass by soh_min_di_a or more (|x0h| >= soh_min_di_a (R0 + Rc): without
     * excitation the high-passed voltage is model error alone, which one tick would otherwise
     * be fitted to) updates. The scales walk randomly (soh_q_per_s) between updates; the
     * covariance ceiling stops wind-up. The EKF
     * uses both scales from the next tick on. After a reset or a gap (have_prev = 0) the
     * filters restart from the present values and the open-loop voltage from the EKF's. */
    const int32_t n = prm->n_cells;
    const size_t nn = (size_t)n;
    const double *SSB_RESTRICT w = st->work;
    const double *SSB_RESTRICT r0_a = w + W_R0 * nn;
    const double *SSB_RESTRICT r1_a = w + W_R1 * nn;
    const double *SSB_RESTRICT a1_a = w + W_A1 * nn;
    const double *SSB_RESTRICT m_a = w + W_HYST * nn;
    const double *SSB_RESTRICT ct_eta = w + W_ETA * nn;
    const double *SSB_RESTRICT soc = st->soc;
    const double *SSB_RESTRICT hy = st->hyst;
    const double *SSB_RESTRICT v1_a = st->v1;
    double *SSB_RESTRICT th0 = st->r0_scale;
    double *SSB_RESTRICT th1 = st->rc_scale;
    double *SSB_RESTRICT p00 = st->r0_p;
    double *SSB_RESTRICT p01 = st->imp + SSB_IMP_P01 * nn;
    double *SSB_RESTRICT p11 = st->imp + SSB_IMP_P11 * nn;
    double *SSB_RESTRICT v1ol = st->imp + SSB_IMP_V1OL * nn;
    double *SSB_RESTRICT socol = st->imp + SSB_IMP_SOCOL * nn;
    double *SSB_RESTRICT lpy = st->imp + SSB_IMP_LPY * nn;
    double *SSB_RESTRICT lpx0 = st->imp + SSB_IMP_LPX0 * nn;
    double *SSB_RESTRICT lpx1 = st->imp + SSB_IMP_LPX1 * nn;
    double *SSB_RESTRICT vp = st->v_prev;
    const int32_t *SSB_RESTRICT stat = out->status;
    const double *SSB_RESTRICT vm = v_meas;
    double *SSB_RESTRICT r0_out = out->r0_ohm;
    const double lam = prm->soh_lambda, pmax = prm->soh_r0_p_max;
    /* the model error is correlated in time, as in the EKF: per sample it weighs
       dt / voltage_corr_s of an independent one */
    const double rn = prm->soh_noise_v * prm->soh_noise_v * fmax(1.0, prm->voltage_corr_s / dt_s);
    const double qd = prm->soh_q_per_s * dt_s;
    const double lo = prm->soh_scale_min, hi = prm->soh_scale_max;
    const double al = dt_s / (prm->soh_hp_tau_s + dt_s);
    const double aa = dt_s / (prm->soh_soc_anchor_s + dt_s);
    const double anchor = st->have_prev ? 0.0 : 1.0;
    const double *SSB_RESTRICT bl = w + W_BLEED * nn;
    /* pass 1 (scalar, a table look-up): the counted SOC, with the EKF's own prediction step
     * (the cell's capacity), and its OCV */
    const double eta = current_a > 0.0 ? prm->coulombic_eff : 1.0;
    double *SSB_RESTRICT ocv_ol = st->work + W_SCRATCH * nn;
    const double *SSB_RESTRICT inc = w + W_DSOC * nn;
    for (int32_t i = 0; i < n; i++) {
        const double s = anchor != 0.0 ? soc[i] : socol[i] + inc[i] + aa * (soc[i] - socol[i]);
        socol[i] = s;
        ocv_ol[i] = ocv_at(prm, s, st->cell_temp_c[i]);
    }
    SSB_IVDEP
    for (int32_t i = 0; i < n; i++) {
        const double z = vm[i];
        const double fin = (z - z) == 0.0 ? 1.0 : 0.0;
        const double y = fin != 0.0 ? z - ocv_ol[i] - m_a[i] * hy[i] - ct_eta[i] : 0.0;
        const double i_a = current_a - bl[i]; /* the cell's current (ekf_core) */
        const double x0 = (r0_a[i] + r_contact) * i_a;
        const double x1 = anchor != 0.0
                              ? v1_a[i] / th1[i]
                              : a1_a[i] * v1ol[i] + r1_a[i] * (1.0 - a1_a[i]) * i_a;
        const double ly = anchor != 0.0 ? y : lpy[i];
        const double lx0 = anchor != 0.0 ? x0 : lpx0[i];
        const double lx1 = anchor != 0.0 ? x1 : lpx1[i];
        const double yh = y - ly, x0h = x0 - lx0, x1h = x1 - lx1;
        const int excited = fabs(x0h) >= prm->soh_min_di_a * (r0_a[i] + r_contact);
        const double ok = (stat[i] == SSB_CELL_OK && excited ? 1.0 : 0.0) * (1.0 - anchor);
        const double a00 = p00[i], a01 = p01[i], a11 = p11[i];
        const double g0 = a00 * x0h + a01 * x1h;
        const double g1 = a01 * x0h + a11 * x1h;
        const double wgt = ok / (rn + x0h * g0 + x1h * g1);
        const double err = yh - th0[i] * x0h - th1[i] * x1h;
        th0[i] = clampd(th0[i] + g0 * wgt * err, lo, hi);
        th1[i] = clampd(th1[i] + g1 * wgt * err, lo, hi);
        double n00 = a00 - g0 * g0 * wgt + qd;
        double n11 = a11 - g1 * g1 * wgt + qd;
        n00 = n00 < pmax ? n00 : pmax;
        n11 = n11 < pmax ? n11 : pmax;
        const double lim = sqrt(n00 * n11);
        p00[i] = n00;
        p11[i] = n11;
        p01[i] = clampd(a01 - g0 * g1 * wgt, -lim, lim);
        lpy[i] = ly + fin * al * (y - ly);
        lpx0[i] = lx0 + al * (x0 - lx0);
        lpx1[i] = lx1 + al * (x1 - lx1);
        v1ol[i] = x1;
        vp[i] = z;
        r0_out[i] = th0[i] * (r0_a[i] + r_contact);
    }
    st->i_prev = current_a;
    st->have_prev = 1;

    /* capacity ratio by RLS over windows of soh_cap_window of SOC throughput:
     * throughput / Q_nominal = ratio * (SOC_now - SOC_window_start) / (1 + d_i), d_i the
     * capacity mismatch the EKF uses (d_feedback: the cell's part, relative to the stack; the
     * ratio is the rest); windows whose SOC change differs from the nominal one by more than
     * half (convergence, big corrections) are skipped. */
    st->window_as += eta * current_a * dt_s;
    double *SSB_RESTRICT cr = st->cap_ratio;
    double *SSB_RESTRICT cp = st->cap_p;
    double *SSB_RESTRICT s0 = st->soc_window0;
    const double *SSB_RESTRICT socn = st->soc;
    const double y = st->window_as / prm->capacity_as;
    if (fabs(y) >= prm->soh_cap_window) {
        SSB_IVDEP
        for (int32_t i = 0; i < n; i++) {
            const double dfb = d_feedback(prm, st->leak_d[i], st->leak_p[5 * nn + i]);
            const double x = (socn[i] - s0[i]) / (1.0 + dfb);
            const int ok = fabs(x - y) < 0.5 * fabs(y);
            const double g = ok ? cp[i] * x / (lam + x * cp[i] * x) : 0.0;
            cr[i] += g * (y - cr[i] * x);
            cp[i] = ok ? (cp[i] - g * x * cp[i]) / lam : cp[i];
            s0[i] = socn[i];
        }
        st->window_as = 0.0;
    }
}

/* ------------------------------------------------------------------ leak */

static void leak_update(const ssb_params_t *prm, ssb_state_t *st, const double *v_meas,
                        double dt_s, double current_a, ssb_output_t *out)
{
    /* Per cell x = [e, l, d]: e = SOC - median SOC, l = leak current (A), d = capacity
     * mismatch (Q/Q_i - 1). de/dt = (-l + I d) / Q: a leak drains at any current, a small
     * cell drifts in proportion to the current. Under a constant current the two are not
     * separable, and the filter says so (large sigma of l) instead of calling it a leak.
     * e is measured from the SOC the voltage alone gives (predicted SOC + innovation /
     * dOCV/dSOC), not from the EKF's posterior: the EKF lags a cell whose capacity it does
     * not know yet (during a fast charge its SOC rises with the nominal capacity and the
     * voltage pulls it to the truth over minutes), and that lag, released at rest, moved the
     * posterior's e at zero current like a leak. The voltage has no lag; what differs
     * between cells in it is the cell (impedances are per cell, soh_update). */
    const int32_t n = prm->n_cells;
    const size_t nn = (size_t)n;
    double *SSB_RESTRICT raw = st->work + W_SOCRAW * nn;
    {
        const double *SSB_RESTRICT socp = st->work + W_SOCPRED * nn;
        const double *SSB_RESTRICT dv = st->work + W_DOCV * nn;
        const double *SSB_RESTRICT vpred = out->voltage_pred_v;
        const double *SSB_RESTRICT vm = v_meas;
        SSB_IVDEP
        for (int32_t i = 0; i < n; i++) {
            const double z = vm[i];
            const double nu = (z - z) == 0.0 ? z - vpred[i] : 0.0;
            raw[i] = socp[i] + nu / (dv[i] > 1e-3 ? dv[i] : 1e-3);
        }
    }
    double *scratch = st->work + W_SCRATCH * nn;
    memcpy(scratch, raw, sizeof(double) * nn);
    const double med = median(scratch, n);
    const double b = dt_s / prm->capacity_as;
    /* the bleed moves a cell's SOC against the median's, which moves by the median bleed
     * (all cells but the lowest bleed when one is low) */
    const double *SSB_RESTRICT bl = st->work + W_BLEED * nn;
    int32_t any_bleed = 0;
    for (int32_t i = 0; i < n; i++)
        any_bleed |= bl[i] != 0.0;
    double med_bleed = 0.0;
    if (any_bleed) {
        memcpy(scratch, bl, sizeof(double) * nn);
        med_bleed = median(scratch, n);
    }
    const double qe = prm->leak_q_soc_per_s * dt_s, ql = prm->leak_q_a2_per_s * dt_s;
    const double qd = prm->leak_q_d_per_s * dt_s;
    const double rl = prm->leak_r_soc2, alarm = prm->leak_alarm_a;
    const double k2 = prm->leak_v2_rel_sigma * prm->leak_v2_rel_sigma;
    const double kr2 = prm->leak_relax_rel_sigma * prm->leak_relax_rel_sigma;
    const double rv1 = prm->r_voltage_v2;
    const double *SSB_RESTRICT v2_a = st->v2;
    /* the slowest branch: R2 of a 2-RC model, R1 of a 1-RC model */
    const double *SSB_RESTRICT vs_a = prm->n_rc == 2 ? st->v2 : st->v1;
    const double *SSB_RESTRICT taus_a = st->work + (prm->n_rc == 2 ? W_TAU2 : W_TAU1) * nn;
    const double inv_tf = 1.0 / prm->leak_relax_tau_factor;
    const double *SSB_RESTRICT docv_a = st->work + W_DOCV * nn;
    double *SSB_RESTRICT e_a = st->leak_e;
    double *SSB_RESTRICT l_a = st->leak_a;
    double *SSB_RESTRICT d_a = st->leak_d;
    double *SSB_RESTRICT r_a = st->leak_r;
    double *SSB_RESTRICT pee_a = st->leak_p;
    double *SSB_RESTRICT pel_a = st->leak_p + nn;
    double *SSB_RESTRICT ped_a = st->leak_p + 2 * nn;
    double *SSB_RESTRICT pll_a = st->leak_p + 3 * nn;
    double *SSB_RESTRICT pld_a = st->leak_p + 4 * nn;
    double *SSB_RESTRICT pdd_a = st->leak_p + 5 * nn;
    double *SSB_RESTRICT prr_a = st->leak_rp;
    double *SSB_RESTRICT per_a = st->leak_rp + nn;
    double *SSB_RESTRICT plr_a = st->leak_rp + 2 * nn;
    double *SSB_RESTRICT pdr_a = st->leak_rp + 3 * nn;
    const int32_t *SSB_RESTRICT stat = out->status;
    double *SSB_RESTRICT sig = out->leak_sigma_a;
    int32_t *SSB_RESTRICT flag = out->leak_flag;
    const double *SSB_RESTRICT cr = st->cap_ratio;
    double *SSB_RESTRICT cap_out = out->capacity_ah;
    const double q_ah = prm->capacity_as / 3600.0;
    SSB_IVDEP
    for (int32_t i = 0; i < n; i++) {
        const double l = l_a[i], d = d_a[i];
        const double c = b * (current_a - bl[i]); /* the cell's current (ekf_core) */
        const double e = e_a[i] - b * (l + bl[i] - med_bleed) + c * d;
        const double slope = docv_a[i] > 1e-3 ? docv_a[i] : 1e-3;
        /* The voltage's SOC carries the error of the cell's own slow relaxation, which the
         * model gets wrong per cell (after a heavy load it relaxes over many minutes, and at
         * rest e's move would read as a leak): a bias r, first-order Gauss-Markov with the
         * slowest branch's time constant (x the factor) and a level that follows that
         * branch's polarisation. A leak keeps draining; r decays. */
        const double ar = exp_neg(-dt_s * inv_tf / taus_a[i]);
        const double lev = vs_a[i] / slope;
        const double qr = (1.0 - ar * ar) * kr2 * lev * lev;
        const double r = ar * r_a[i];
        const double pee0 = pee_a[i], pel0 = pel_a[i], ped0 = ped_a[i];
        const double pll0 = pll_a[i], pld0 = pld_a[i], pdd0 = pdd_a[i];
        const double prr0 = prr_a[i], per0 = per_a[i], plr0 = plr_a[i], pdr0 = pdr_a[i];
        /* P = F P F' + Q with F = [[1, -b, c, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, ar]] */
        const double pel = pel0 - b * pll0 + c * pld0;
        const double ped = ped0 - b * pld0 + c * pdd0;
        const double pee = pee0 - 2.0 * b * pel0 + 2.0 * c * ped0 + b * b * pll0 -
                           2.0 * b * c * pld0 + c * c * pdd0 + qe;
        const double pll = pll0 + ql, pld = pld0, pdd = pdd0 + qd;
        const double per = ar * (per0 - b * plr0 + c * pdr0);
        const double plr = ar * plr0, pdr = ar * pdr0;
        const double prr = ar * ar * prr0 + qr;
        /* Slow polarisation the model gets wrong per cell also counts as white measurement
         * noise; and the voltage's own SOC is as uncertain as one voltage sample over the
         * OCV slope (large where the OCV is flat). z = e + r + noise. */
        const double r_v2 = (k2 * v2_a[i] * v2_a[i] + rv1) / (slope * slope);
        const double he = pee + per, hl = pel + plr, hd = ped + pdr, hr = per + prr;
        const double gain = stat[i] == SSB_CELL_OK ? 1.0 / (he + hr + rl + r_v2) : 0.0;
        const double nu = raw[i] - med - e - r;
        e_a[i] = e + he * gain * nu;
        l_a[i] = l + hl * gain * nu;
        d_a[i] = d + hd * gain * nu;
        r_a[i] = r + hr * gain * nu;
        pee_a[i] = pee - he * he * gain;
        pel_a[i] = pel - he * hl * gain;
        ped_a[i] = ped - he * hd * gain;
        const double npll = pll - hl * hl * gain;
        pll_a[i] = npll;
        pld_a[i] = pld - hl * hd * gain;
        pdd_a[i] = pdd - hd * hd * gain;
        prr_a[i] = prr - hr * hr * gain;
        per_a[i] = per - he * hr * gain;
        plr_a[i] = plr - hl * hr * gain;
        pdr_a[i] = pdr - hd * hr * gain;
        const double sd = sqrt(npll);
        sig[i] = sd;
        flag[i] = (l_a[i] - 3.0 * sd) > alarm;
        /* the capacity the EKF predicts with from the next tick on */
        cap_out[i] = q_ah * cr[i] / (1.0 + d_feedback(prm, d_a[i], pdd_a[i]));
    }
}

/* ------------------------------------------------------------------ pressure */

/* The expected stack pressure and its slope per um of stack growth (d expected / d dx, for
 * the fusion's Jacobian) */
static double expected_pressure(const ssb_params_t *prm, const ssb_state_t *st, double *t_mean,
                                double *slope_kpa_per_um)
{
    const int32_t n = prm->n_cells;
    double ssum = 0.0, tsum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        ssum += st->soc[i];
        tsum += st->cell_temp_c[i];
    }
    *t_mean = tsum / n;
    /* expected = preload + k dx (1 + s dx / dx_full), dx = swell sum SOC_i + thermal (T_mean -
     * T_ref); the thermal expansion is the whole stack's against the fixture (pack file,
     * fixture.thermal_um_per_k), counted once; s the fixture's stiffening over the full
     * stroke (fixture.stiffening). */
    const double dx = prm->swell_um_full * ssum +
                      prm->thermal_um_per_k * (*t_mean - prm->fixture_t_ref_c);
    const double dx_full = prm->swell_um_full * n;
    const double q = dx_full != 0.0 ? prm->fixture_stiffening / dx_full : 0.0;
    *slope_kpa_per_um = prm->stiffness_kpa_per_um * (1.0 + 2.0 * q * dx);
    return prm->preload_kpa + prm->stiffness_kpa_per_um * dx * (1.0 + q * dx);
}

static uint32_t pressure_monitor(const ssb_params_t *prm, ssb_state_t *st, const ssb_meas_t *m,
                                 double dt_s, int ekf_ran, ssb_output_t *out)
{
    const int32_t n = prm->n_cells;
    const size_t nn = (size_t)n;
    uint32_t flags = 0u;
    double mean, pmin, pmax, t_mean, slope;
    const int32_t cnt = pressure_stats(prm, m->pressure_kpa, &mean, &pmin, &pmax);
    const double expected = expected_pressure(prm, st, &t_mean, &slope);
    double *so = out->stack;
    so[SSB_OUT_PRESSURE_EXPECTED_KPA] = expected;
    if (cnt == 0) {
        flags |= SSB_ST_PRESSURE_INVALID;
        st->have_pressure = 0;
        so[SSB_OUT_PRESSURE_MEAN_KPA] = NAN;
        so[SSB_OUT_PRESSURE_RESIDUAL_KPA] = NAN;
        so[SSB_OUT_PRESSURE_RATE_KPA_PER_S] = NAN;
        so[SSB_OUT_LOAD_CELL_IMBALANCE_KPA] = NAN;
    } else {
        const double resid = mean - expected;
        const double imbalance = cnt >= 2 ? pmax - pmin : 0.0;
        if (st->have_pressure) {
            const double a = dt_s / (prm->rate_tau_s + dt_s);
            st->rate_f += a * ((mean - st->p_prev) / dt_s - st->rate_f);
        } else {
            st->rate_f = 0.0;
        }
        st->p_prev = mean;
        st->have_pressure = 1;
        const double c = dt_s / prm->cusum_tau_s, kk = prm->cusum_k_kpa;
        const double cp = st->cusum_pos + (resid - kk) * c;
        const double cn = st->cusum_neg + (-resid - kk) * c;
        st->cusum_pos = cp > 0.0 ? cp : 0.0;
        st->cusum_neg = cn > 0.0 ? cn : 0.0;
        so[SSB_OUT_PRESSURE_MEAN_KPA] = mean;
        so[SSB_OUT_PRESSURE_RESIDUAL_KPA] = resid;
        so[SSB_OUT_PRESSURE_RATE_KPA_PER_S] = st->rate_f;
        so[SSB_OUT_LOAD_CELL_IMBALANCE_KPA] = imbalance;

        /* fusion: mean pressure as a measurement of all SOCs, H_i = d expected / d SOC_i =
         * slope * swell; the per-cell filters stay independent (cross-covariances dropped;
         * docs/estimation.md) */
        if (prm->pressure_fusion && ekf_ran) {
            const double hc = slope * prm->swell_um_full;
            double *SSB_RESTRICT p00 = st->p;
            double *SSB_RESTRICT p01 = st->p + nn;
            double *SSB_RESTRICT p02 = st->p + 2 * nn;
            double *SSB_RESTRICT p11 = st->p + 3 * nn;
            double *SSB_RESTRICT p12 = st->p + 4 * nn;
            double *SSB_RESTRICT p22 = st->p + 5 * nn;
            double psum = 0.0;
            for (int32_t i = 0; i < n; i++)
                psum += p00[i];
            const double sv = hc * hc * psum +
                              prm->r_pressure_kpa2 * fmax(1.0, prm->pressure_corr_s / dt_s);
            const double nu = mean - expected;
            if (nu * nu <= prm->gate_sigma * prm->gate_sigma * sv) {
                flags |= SSB_ST_FUSION_USED;
                const double gain = 1.0 / sv;
                double *SSB_RESTRICT soc = st->soc;
                double *SSB_RESTRICT v1 = st->v1;
                double *SSB_RESTRICT v2 = st->v2;
                double *SSB_RESTRICT sig = out->soc_sigma;
                SSB_IVDEP
                for (int32_t i = 0; i < n; i++) {
                    const double ph0 = p00[i] * hc, ph1 = p01[i] * hc, ph2 = p02[i] * hc;
                    soc[i] += ph0 * gain * nu;
                    v1[i] += ph1 * gain * nu;
                    v2[i] += ph2 * gain * nu;
                    p00[i] -= ph0 * ph0 * gain;
                    p01[i] -= ph0 * ph1 * gain;
                    p02[i] -= ph0 * ph2 * gain;
                    p11[i] -= ph1 * ph1 * gain;
                    p12[i] -= ph1 * ph2 * gain;
                    p22[i] -= ph2 * ph2 * gain;
                    sig[i] = sqrt(p00[i]);
                }
            } else {
                flags |= SSB_ST_FUSION_GATED;
            }
        }
    }
    so[SSB_OUT_PRESSURE_CUSUM_KPA] = st->cusum_pos > st->cusum_neg ? st->cusum_pos
                                                                   : st->cusum_neg;
    return flags;
}

/* ------------------------------------------------------------------ power limits */

/* Newton steps of the charge-transfer refinement of a voltage limit (each is a safe limit;
 * three take Chen2020-like cells at 0 C within 0.1 % of the root, assumption) */
#define SSB_BV_NEWTON_STEPS 3

/* The largest current magnitude x with r x + k asinh(c x) = a (k = 2RT/F), from x_lin, the
 * solution with the charge transfer linearised (r + k c): the left side is increasing and
 * concave in x > 0, so Newton steps from below stay below the root (every iterate is a safe
 * limit) and converge to it. x_lin <= 0 (no headroom) is returned as it is. */
static inline double ct_limit(double x_lin, double a, double r, double k, double c)
{
    double x = x_lin;
    if (!(x > 0.0) || c == 0.0)
        return x;
    for (int it = 0; it < SSB_BV_NEWTON_STEPS; it++) {
        const double cx = c * x;
        const double f = r * x + k * asinh(cx) - a;
        const double fp = r + k * c / sqrt(1.0 + cx * cx);
        x -= f / fp;
    }
    return x;
}

/* One cell's charge and discharge limits over horizon h (see power_limits). ``with_ct`` (a
 * constant at each call site): the model has a charge transfer (0: every cell's c is 0). */
struct limit_in {
    const double *SSB_RESTRICT w, *SSB_RESTRICT soc, *SSB_RESTRICT v1, *SSB_RESTRICT v2,
        *SSB_RESTRICT tc, *SSB_RESTRICT r0s, *SSB_RESTRICT rcs, *SSB_RESTRICT hy;
};

static inline void cell_limits(const ssb_params_t *prm, const struct limit_in *in,
                               double r_contact, size_t nn, int32_t i, double h, double use2,
                               int with_ct, double *ic_out, double *id_out)
{
    const double *SSB_RESTRICT w = in->w;
    const double q = prm->capacity_as, band = prm->t_derate_band_c;
    const double soc = in->soc[i], t = in->tc[i];
    const double e1 = exp_neg(-h / w[W_TAU1 * nn + i]);
    const double e2 = exp_neg(-h / w[W_TAU2 * nn + i]);
    const double d = w[W_DOCV * nn + i];
    /* OCV at the posterior SOC (linearised from the predicted one), with the present
       hysteresis held over the horizon */
    const double ocv = w[W_OCV * nn + i] + d * (soc - w[W_SOCPRED * nn + i]) +
                       w[W_HYST * nn + i] * in->hy[i];
    const double v0 = ocv + in->v1[i] * e1 + in->v2[i] * e2;
    /* R1 and R2 with the cell's own scale, R0 (+ contact) with its own (soh_update) */
    const double rc = in->rcs[i] * (w[W_R1 * nn + i] * (1.0 - e1) +
                                    use2 * w[W_R2 * nn + i] * (1.0 - e2)) +
                      d * h / q;
    const double r_c = in->r0s[i] * (w[W_R0CHG * nn + i] + r_contact) + rc;
    const double r_d = in->r0s[i] * (w[W_R0DIS * nn + i] + r_contact) + rc;
    double ic, id;
    if (with_ct) {
        /* first with the charge transfer linearised at zero current, R_ct = R T / (F I0) =
           (2RT/F) c (asinh is sublinear: that overstates the overpotential, a safe limit),
           then the asinh solved from there */
        const double k = two_rt_over_f(t), c = w[W_CT * nn + i];
        ic = ct_limit((prm->v_max - v0) / (r_c + k * c), prm->v_max - v0, r_c, k, c);
        id = ct_limit((v0 - prm->v_min) / (r_d + k * c), v0 - prm->v_min, r_d, k, c);
    } else {
        ic = (prm->v_max - v0) / r_c;
        id = (v0 - prm->v_min) / r_d;
    }
    const double ics = (1.0 - soc) * q / h;
    const double ids = soc * q / h;
    ic = ic < ics ? ic : ics;
    id = id < ids ? id : ids;
    const double fc = clampd((t - prm->t_charge_min_c) / band, 0.0, 1.0) *
                      clampd((prm->t_charge_max_c - t) / band, 0.0, 1.0);
    const double fd = clampd((t - prm->t_discharge_min_c) / band, 0.0, 1.0) *
                      clampd((prm->t_discharge_max_c - t) / band, 0.0, 1.0);
    ic = fc * prm->i_charge_max_a < ic ? fc * prm->i_charge_max_a : ic;
    id = fd * prm->i_discharge_max_a < id ? fd * prm->i_discharge_max_a : id;
    *ic_out = ic;
    *id_out = id;
}

static void power_limits(const ssb_params_t *prm, const ssb_state_t *st, double r_contact,
                         ssb_output_t *out)
{
    const int32_t n = prm->n_cells;
    const size_t nn = (size_t)n;
    const double use2 = prm->n_rc == 2 ? 1.0 : 0.0;
    const struct limit_in in = {st->work, st->soc, st->v1, st->v2, st->cell_temp_c,
                                st->r0_scale, st->rc_scale, st->hyst};
    /* a model with charge transfer takes the scalar path (asinh); without, the vectorised */
    int any_ct = 0;
    for (int32_t i = 0; i < n; i++)
        any_ct |= st->work[W_CT * nn + i] != 0.0;
    for (int32_t hz = 0; hz < prm->n_horizons; hz++) {
        const double h = prm->horizons_s[hz];
        double ch = prm->i_charge_max_a, dis = prm->i_discharge_max_a;
        if (any_ct) {
            for (int32_t i = 0; i < n; i++) {
                double ic, id;
                cell_limits(prm, &in, r_contact, nn, i, h, use2, 1, &ic, &id);
                ch = ic < ch ? ic : ch;
                dis = id < dis ? id : dis;
            }
        } else {
            SSB_IVDEP
            for (int32_t i = 0; i < n; i++) {
                double ic, id;
                cell_limits(prm, &in, r_contact, nn, i, h, use2, 0, &ic, &id);
                ch = ic < ch ? ic : ch;
                dis = id < dis ? id : dis;
            }
        }
        out->charge_limit_a[hz] = ch > 0.0 ? ch : 0.0;
        out->discharge_limit_a[hz] = dis > 0.0 ? dis : 0.0;
    }
}

/* ------------------------------------------------------------------ tick */

int ssb_tick(const ssb_params_t *prm, ssb_state_t *st, const ssb_meas_t *m, double dt_s,
             double current_a, ssb_output_t *out)
{
    int rc = call_check(prm, st, m, dt_s, out);
    if (rc != SSB_OK)
        return rc;
    uint32_t flags = cell_temperatures(prm, st, m->temperature_c);
    double mean, pmin, pmax;
    const int32_t cnt = pressure_stats(prm, m->pressure_kpa, &mean, &pmin, &pmax);
    const double r_contact = contact_resistance(prm, st, cnt, mean);
    flags |= ekf_core(prm, st, m->cell_voltage_v, m->bleed_a, dt_s, current_a, r_contact,
                      out->status, out->soc_sigma, out->voltage_pred_v);
    const int ekf_ran = (flags & SSB_ST_CURRENT_INVALID) == 0u;
    flags |= pressure_monitor(prm, st, m, dt_s, ekf_ran, out);
    const int32_t n = prm->n_cells;
    if (ekf_ran) {
        soh_update(prm, st, m->cell_voltage_v, dt_s, current_a, r_contact, out);
        leak_update(prm, st, m->cell_voltage_v, dt_s, current_a, out);
        power_limits(prm, st, r_contact, out);
    } else {
        /* no current: the state is untouched; publish what is known, no current allowed */
        const double q_ah = prm->capacity_as / 3600.0;
        for (int32_t i = 0; i < n; i++) {
            const double dfb = d_feedback(prm, st->leak_d[i], st->leak_p[5 * (size_t)n + i]);
            out->capacity_ah[i] = st->cap_ratio[i] * q_ah / (1.0 + dfb);
            out->r0_ohm[i] = NAN;
            out->voltage_pred_v[i] = NAN;
            out->leak_sigma_a[i] = sqrt(st->leak_p[3 * (size_t)n + i]);
            out->leak_flag[i] = 0;
        }
        for (int32_t hz = 0; hz < prm->n_horizons; hz++) {
            out->charge_limit_a[hz] = 0.0;
            out->discharge_limit_a[hz] = 0.0;
        }
    }
    double ssum = 0.0, vsum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        ssum += st->soc[i];
        vsum += st->p[i];
    }
    out->stack[SSB_OUT_MEAN_SOC] = ssum / n;
    out->stack[SSB_OUT_MEAN_SOC_SIGMA] = sqrt(vsum) / n;
    out->stack[SSB_OUT_STACK_STATUS] = (double)flags;
    double opsum = 0.0;
    const double *op_a = st->work + (size_t)W_OP * (size_t)n;
    for (int32_t i = 0; i < n && ekf_ran; i++)
        opsum += op_a[i];
    out->stack[SSB_OUT_MEAN_OVERPOTENTIAL_V] = ekf_ran ? opsum / n : NAN;
    return SSB_OK;
}
