/* ssb_stack.c - see ssb_stack.h; the Python it replaces: bms/stack_step.py names it. */
#include "ssb_stack.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of the n values in w (sorted in place; no NaN). */
static double median_sorted(double *w, size_t n)
{
    if (n <= 32) {
        for (size_t i = 1; i < n; i++) {
            double x = w[i];
            size_t j = i;
            while (j > 0 && w[j - 1] > x) {
                w[j] = w[j - 1];
                j--;
            }
            w[j] = x;
        }
    } else {
        qsort(w, n, sizeof *w, cmp_double);
    }
    return (n % 2) ? w[n / 2] : 0.5 * (w[n / 2 - 1] + w[n / 2]);
}

/* Python's min() over a list: the first value, replaced by each later one that is smaller. */
static double py_min(const double *v, size_t n)
{
    double m = v[0];
    for (size_t i = 1; i < n; i++)
        if (v[i] < m)
            m = v[i];
    return m;
}

/* bms.charging._lowest: the smallest value below +inf (NaN never is), else NaN. */
static double lowest(const double *v, size_t n)
{
    double low = INFINITY;
    for (size_t i = 0; i < n; i++)
        if (v[i] < low)
            low = v[i];
    return low != INFINITY ? low : NAN;
}

/* LoadCellBaseline.imbalance_kpa once the baseline is known (see ssb_stack.h). */
static double imbalance(const double *p, size_t n, const double *share, const double *offset)
{
    size_t valid = 0;
    double hi = 0.0, lo = 0.0;
    for (size_t j = 0; j < n; j++) {
        if (p[j] != p[j])
            continue;
        double x = offset ? (p[j] - offset[j]) / share[j] : p[j] / share[j];
        if (valid == 0) {
            hi = lo = x;
        } else { /* Python's max and min: replaced by a strictly larger (smaller) value */
            if (x > hi)
                hi = x;
            if (x < lo)
                lo = x;
        }
        valid++;
    }
    if (valid == 0)
        return NAN;
    return valid < 2 ? 0.0 : hi - lo;
}

static void copy(double *dst, const double *src, size_t n)
{
    if (dst && n)
        memcpy(dst, src, n * sizeof *dst);
}

static void put(double *dst, double value)
{
    if (dst)
        *dst = value;
}

/* The step's data into the caller's pack-wide arrays (those given). */
static void copy_out(const ssb_stack_t *sk, size_t n, double imbalance_kpa)
{
    copy(sk->pack_cell_v, sk->meas->cell_voltage_v, n);
    copy(sk->pack_soc, sk->st->soc, n);
    copy(sk->pack_soc_sigma, sk->out->soc_sigma, n);
    copy(sk->pack_leak_a, sk->st->leak_a, n);
    copy(sk->pack_leak_sigma_a, sk->out->leak_sigma_a, n);
    copy(sk->pack_temperature_c, sk->clean + sk->fe_cfg->n_cells, sk->fe_cfg->n_thermistors);
    const double *so = sk->out->stack;
    put(sk->pack_p_mean_kpa, so[SSB_OUT_PRESSURE_MEAN_KPA]);
    put(sk->pack_p_rate_kpa_per_s, so[SSB_OUT_PRESSURE_RATE_KPA_PER_S]);
    put(sk->pack_p_rate_abs_kpa_per_s, fabs(so[SSB_OUT_PRESSURE_RATE_KPA_PER_S]));
    put(sk->pack_p_cusum_kpa, so[SSB_OUT_PRESSURE_CUSUM_KPA]);
    if (sk->lc_share)
        put(sk->pack_p_imbalance_kpa, imbalance_kpa);
}

int ssb_stack_step(const ssb_stack_t *sk, double current_a, double last_i, int have_last_raw,
                   double dt_s, const double *bleed_a, ssb_stack_result_t *r)
{
    if (!sk || !r || !sk->fe_cfg || !sk->fe_st || !sk->prm || !sk->st || !sk->meas
        || !sk->out || !sk->bleed_in || !sk->innovation_v || !sk->scratch || !bleed_a
        || !sk->out->voltage_pred_v || !sk->out->soc_sigma || !sk->out->charge_limit_a
        || !sk->out->discharge_limit_a)
        return SSB_STACK_ERR_NULL;
    size_t n = (size_t)sk->prm->n_cells;
    if (sk->prm->n_cells < 1 || sk->fe_cfg->n_cells < n || sk->prm->n_horizons < 1)
        return SSB_STACK_ERR_SIZE;
    memset(r, 0, sizeof *r);
    sk->fe_st->last_i = last_i;
    sk->fe_st->have_last_raw = have_last_raw;
    int rc = ssb_fe_step(sk->fe_cfg, sk->fe_st, sk->raw, current_a, sk->values, sk->clean,
                         sk->bad, sk->stuck, sk->jump, &r->fe_summary);
    r->fe_rc = rc;
    if (rc)
        return rc;
    /* StackValidator._finish: the current the core may use */
    double i_core = (isfinite(current_a) && fabs(current_a) <= sk->current_plausible_a)
        ? current_a : NAN;
    r->current_a = i_core;
    memcpy(sk->bleed_in, bleed_a, n * sizeof *bleed_a);
    rc = ssb_tick(sk->prm, sk->st, sk->meas, dt_s, i_core, sk->out);
    r->core_rc = rc;
    if (rc)
        return rc;
    const double *v = sk->meas->cell_voltage_v; /* the clean cells (bound to clean) */
    const double *pred = sk->out->voltage_pred_v, *sig = sk->out->soc_sigma;
    double total = 0.0, sig_sum = 0.0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        total += v[i];
        sig_sum += sig[i];
        double d = v[i] - pred[i];
        sk->innovation_v[i] = d;
        if (d == d)
            sk->scratch[k++] = d;
    }
    r->stack_voltage_v = total;
    r->soc_sigma_sum = sig_sum;
    r->innovation_n = (int32_t)k;
    r->innovation_median_v = k ? median_sorted(sk->scratch, k) : NAN;
    const ssb_fe_config_t *fc = sk->fe_cfg;
    const double *temps = sk->clean + fc->n_cells, *press = temps + fc->n_thermistors;
    r->min_pressure_kpa = lowest(press, fc->n_load_cells);
    r->min_temperature_c = lowest(temps, fc->n_thermistors);
    r->imbalance_kpa = sk->lc_share
        ? imbalance(press, fc->n_load_cells, sk->lc_share, sk->lc_offset_kpa) : NAN;
    copy_out(sk, n, r->imbalance_kpa);
    size_t nh = (size_t)sk->prm->n_horizons;
    r->charge_limit_a = py_min(sk->out->charge_limit_a, nh);
    r->discharge_limit_a = py_min(sk->out->discharge_limit_a, nh);
    return 0;
}
