/* ssb_frontend.c - see ssb_frontend.h for the rules; bms/validation.py has them in Python. */
#include "ssb_frontend.h"

#include <math.h>
#include <string.h>

static int config_ok(const ssb_fe_config_t *c)
{
    if (!c->gain || !c->bias || !c->sentinel || !c->ntc_lut || !c->lo || !c->hi)
        return SSB_FE_ERR_NULL;
    if (c->n_cells + c->n_thermistors + c->n_load_cells == 0)
        return SSB_FE_ERR_SIZE;
    if (!isfinite(c->open_tap_dev_v) || c->open_tap_dev_v < 0.0 || !isfinite(c->jump_margin_v)
        || c->jump_margin_v < 0.0 || !isfinite(c->r_worst_ohm) || c->r_worst_ohm < 0.0
        || c->stuck_samples < 1)
        return SSB_FE_ERR_PARAM;
    return 0;
}

/* Median of n > 0 values (copied into scratch; insertion sort: n is a stack's cell count). */
static double median(const double *v, size_t n, double *scratch)
{
    memcpy(scratch, v, n * sizeof *scratch);
    for (size_t i = 1; i < n; i++) {
        double x = scratch[i];
        size_t j = i;
        while (j > 0 && scratch[j - 1] > x) {
            scratch[j] = scratch[j - 1];
            j--;
        }
        scratch[j] = x;
    }
    return (n % 2) ? scratch[n / 2] : 0.5 * (scratch[n / 2 - 1] + scratch[n / 2]);
}

/* Open-tap pair signature over the cells (only called when no cell is NaN). */
static void open_tap(const ssb_fe_config_t *c, const double *v, double *scratch, uint8_t *bad)
{
    size_t n = c->n_cells;
    double d = c->open_tap_dev_v;
    double med = median(v, n, scratch);
    for (size_t i = 0; i + 1 < n; i++) {
        double a = v[i] - med, b = v[i + 1] - med;
        if (a < -d && b > d && fabs(a + b) < d) {
            bad[i] = 1;
            bad[i + 1] = 1;
        }
    }
}

int ssb_fe_step(const ssb_fe_config_t *cfg, ssb_fe_state_t *st, const int64_t *raw,
                double current_a, double *values, double *clean, uint8_t *bad, uint8_t *stuck,
                uint8_t *jump, uint32_t *summary)
{
    if (!cfg || !st || !raw || !values || !clean || !bad || !summary)
        return SSB_FE_ERR_NULL;
    int rc = config_ok(cfg);
    if (rc)
        return rc;
    size_t nc = cfg->n_cells, nt = cfg->n_thermistors, nl = cfg->n_load_cells;
    size_t n = nc + nt + nl;
    if ((nc && (!jump || !st->last_v || !st->scratch))
        || (nl && (!stuck || !st->same_count || !st->last_raw_lc)))
        return SSB_FE_ERR_NULL;

    uint32_t sum = 0;
    /* Scaling and range, every channel. */
    for (size_t i = 0; i < n; i++) {
        double x;
        if (raw[i] == cfg->sentinel[i])
            x = NAN;
        else if (i >= nc && i < nc + nt)
            x = cfg->ntc_lut[(uint64_t)raw[i] & 0xFFFFu];
        else
            x = (double)raw[i] * cfg->gain[i] + cfg->bias[i];
        values[i] = x;
        uint8_t b = !(x >= cfg->lo[i] && x <= cfg->hi[i]);
        bad[i] = b;
        sum |= b ? SSB_FE_ANY_BAD : 0u;
    }
    /* Open tap wire: only on NaN-free cells spread wider than two deviations. */
    if (nc) {
        double vmin = values[0], vmax = values[0];
        int has_nan = 0;
        for (size_t i = 0; i < nc; i++) {
            double x = values[i];
            has_nan |= isnan(x);
            vmin = x < vmin ? x : vmin;
            vmax = x > vmax ? x : vmax;
        }
        if (!has_nan && vmax - vmin > 2.0 * cfg->open_tap_dev_v) {
            open_tap(cfg, values, st->scratch, bad);
            for (size_t i = 0; i < nc; i++)
                sum |= bad[i] ? SSB_FE_ANY_BAD : 0u;
        }
    }
    /* Stuck load cells. */
    const int64_t *raw_lc = raw + nc + nt;
    for (size_t j = 0; j < nl; j++) {
        if (st->have_last_raw && raw_lc[j] == st->last_raw_lc[j] && !bad[nc + nt + j])
            st->same_count[j] += 1;
        else
            st->same_count[j] = 0;
        st->last_raw_lc[j] = raw_lc[j];
        stuck[j] = st->same_count[j] >= cfg->stuck_samples;
        sum |= stuck[j] ? SSB_FE_ANY_STUCK : 0u;
    }
    st->have_last_raw = 1;
    /* Clean values. */
    for (size_t i = 0; i < n; i++)
        clean[i] = bad[i] ? NAN : values[i];
    for (size_t j = 0; j < nl; j++)
        if (stuck[j])
            clean[nc + nt + j] = NAN;
    /* Jumps on the clean cell voltages; then remember them. */
    int check_jump = !isnan(current_a) && !isnan(st->last_i);
    double allowed = check_jump
        ? cfg->jump_margin_v + cfg->r_worst_ohm * fabs(current_a - st->last_i) : 0.0;
    for (size_t i = 0; i < nc; i++) {
        uint8_t j = check_jump && fabs(clean[i] - st->last_v[i]) > allowed;
        jump[i] = j;
        sum |= j ? SSB_FE_ANY_JUMP : 0u;
        st->last_v[i] = clean[i];
    }
    st->last_i = current_a;
    *summary = sum;
    return 0;
}
