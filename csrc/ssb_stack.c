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

/* Python's float x % y for y > 0 (the sign of the divisor; fmod keeps the dividend's). */
static double py_mod(double x, double y)
{
    double m = fmod(x, y);
    if (m != 0.0) {
        if ((y < 0.0) != (m < 0.0))
            m += y;
    } else {
        m = copysign(0.0, y);
    }
    return m;
}

/* bisect.bisect_right over a[0 .. n): the first index whose value is above x. */
static int64_t bisect_right(const double *a, int64_t n, double x)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (x < a[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* bms.charging.CcdLimit.ccd_ma_cm2 (same operations, same order). */
static double ccd_ma_cm2(const ssb_stack_t *sk, double p, double t)
{
    const double *ps = sk->ccd_p, *ts = sk->ccd_t;
    const int64_t np_ = sk->ccd_np, nt = sk->ccd_nt;
    if (!(p >= ps[0]) || !(t >= ts[0]))
        return 0.0;
    int64_t i = np_ - 1;
    double fp = 0.0;
    if (p < ps[i]) {
        i = bisect_right(ps, np_, p) - 1;
        fp = (p - ps[i]) / (ps[i + 1] - ps[i]);
    }
    int64_t j = nt - 1;
    const double *lo = sk->ccd_table + j * np_, *hi = lo;
    double ft = 0.0;
    if (t < ts[j]) {
        j = bisect_right(ts, nt, t) - 1;
        ft = (t - ts[j]) / (ts[j + 1] - ts[j]);
        lo = sk->ccd_table + j * np_;
        hi = lo + np_;
    }
    double at_lo, at_hi;
    if (fp > 0.0) {
        at_lo = lo[i] + fp * (lo[i + 1] - lo[i]);
        at_hi = hi[i] + fp * (hi[i + 1] - hi[i]);
    } else {
        at_lo = lo[i];
        at_hi = hi[i];
    }
    return at_lo + ft * (at_hi - at_lo);
}

int ssb_stack_receive(const ssb_stack_t *sk, double t, double dt_s, double last_i,
                      int have_last_raw, int64_t last_ts_ms, double last_timestamp_s,
                      int64_t gap_last_ts_ms, const double *bleed_a, ssb_stack_result_t *r)
{
    if (!sk || !r || !sk->wire)
        return SSB_STACK_ERR_NULL;
    const int64_t *w = sk->wire;
    const int64_t ts_ms = w[0];
    if (ts_ms == last_ts_ms)
        return SSB_STACK_NOT_MOVED;
    /* hil.scaling.Scaler.current_from_raw, bus_voltage_from_raw */
    const double current_a = w[2] == sk->invalid_i32
        ? NAN : (double)w[2] * sk->current_lsb_a + sk->current_offset_a;
    const double bus_v = w[3] == sk->invalid_i32 ? NAN : (double)w[3] * sk->bus_lsb_v;
    /* Controller._core_dt */
    const double ts_s = (double)ts_ms / 1000.0;
    double core_dt = dt_s;
    if (last_timestamp_s == last_timestamp_s) {
        const double board_dt = py_mod(ts_s - last_timestamp_s, 4294967.296);
        if (0.0 < board_dt && board_dt <= 5.0 * dt_s)
            core_dt = board_dt;
    }
    int rc = ssb_stack_step(sk, current_a, last_i, have_last_raw, core_dt, bleed_a, r);
    r->timestamp_ms = ts_ms;
    r->status = w[1];
    r->current_in_a = current_a;
    r->bus_voltage_v = bus_v;
    r->timestamp_s = ts_s;
    r->core_dt_s = core_dt;
    r->ccd_limit_a = NAN;
    r->usual = 0;
    if (rc)
        return rc;
    if (sk->cc_cfg && sk->cc_st)
        ssb_cc_innovation(sk->cc_cfg, sk->cc_st, (size_t)sk->cc_stack, t, r->innovation_n,
                          r->innovation_median_v, r->soc_sigma_sum, sk->prm->n_cells,
                          sk->out->stack[SSB_OUT_MEAN_OVERPOTENTIAL_V]);
    if (sk->ccd_np > 0 && sk->ccd_nt > 0)
        r->ccd_limit_a = ccd_ma_cm2(sk, r->min_pressure_kpa, r->min_temperature_c)
            * sk->ccd_amps_per_ma_cm2;
    /* StackValidator._check_timestamp: a step back or an advance beyond the gap */
    int gap = 0;
    if (gap_last_ts_ms >= 0) {
        const uint64_t adv = (uint64_t)(ts_ms - gap_last_ts_ms) & 0xFFFFFFFFu;
        gap = adv >= 0x80000000u || (double)adv > sk->timestamp_gap_ms;
    }
    r->usual = (r->fe_summary & 7u) == 0 && r->current_a == r->current_a && bus_v == bus_v
        && r->stack_voltage_v == r->stack_voltage_v && !gap
        && (r->status & sk->status_unusual) == 0;
    return 0;
}
