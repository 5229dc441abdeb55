/* ssb_balance.c - see ssb_balance.h; bms/balancing.py has the rules in NumPy. */
#include "ssb_balance.h"

#include <math.h>
#include <string.h>

static void clear(const ssb_bal_config_t *c, uint32_t *masks, double *bleed_a)
{
    memset(masks, 0, c->n_stacks * sizeof *masks);
    for (size_t i = 0; i < c->n_cells; i++)
        bleed_a[i] = 0.0;
}

int ssb_balance(const ssb_bal_config_t *c, double time_s, const double *x, const double *v,
                const double *temperature_c, uint8_t *selected, uint32_t *masks,
                double *bleed_a, int32_t *reason)
{
    if (!c || !x || !v || !selected || !masks || !bleed_a || !reason || !c->cell_start
        || !c->th_start)
        return SSB_BAL_ERR_NULL;
    size_t n = c->n_cells, ns = c->n_stacks;
    if (n == 0 || ns == 0 || c->cell_start[0] != 0 || c->cell_start[ns] != n
        || c->th_start[0] != 0)
        return SSB_BAL_ERR_SIZE;
    for (size_t k = 0; k < ns; k++) {
        size_t cells = c->cell_start[k + 1] - c->cell_start[k];
        if (c->cell_start[k + 1] <= c->cell_start[k] || cells > 32
            || c->th_start[k + 1] < c->th_start[k])
            return SSB_BAL_ERR_SIZE;
    }
    if (c->th_start[ns] > 0 && !temperature_c)
        return SSB_BAL_ERR_NULL;
    clear(c, masks, bleed_a);
    if (c->voltage_mode) {
        double vmax = -INFINITY; /* np.nanmax(v, initial=-inf) */
        for (size_t i = 0; i < n; i++)
            if (v[i] > vmax)
                vmax = v[i];
        if (!(vmax >= c->top_of_charge_v)) {
            memset(selected, 0, n);
            *reason = SSB_BAL_BELOW_TOP;
            return 0;
        }
    }
    double lo = NAN, hi = NAN; /* np.fmin.reduce / np.fmax.reduce: NaN only when all are */
    for (size_t i = 0; i < n; i++) {
        double xi = x[i];
        if (xi != xi)
            continue;
        if (lo != lo || xi < lo)
            lo = xi;
        if (hi != hi || xi > hi)
            hi = xi;
    }
    if (lo != lo) {
        memset(selected, 0, n);
        *reason = SSB_BAL_NO_DATA;
        return 0;
    }
    double gap = c->stop < c->start ? c->stop : c->start; /* Python's min(start, stop) */
    if (!(hi - lo > gap)) {
        memset(selected, 0, n);
        *reason = SSB_BAL_BALANCED;
        return 0;
    }
    int any = 0;
    for (size_t k = 0; k < ns; k++) {
        int stack_ok = 1;
        for (size_t j = c->th_start[k]; j < c->th_start[k + 1]; j++)
            if (!(temperature_c[j] < c->max_temperature_c))
                stack_ok = 0;
        for (size_t i = c->cell_start[k]; i < c->cell_start[k + 1]; i++) {
            double delta = x[i] - lo;
            int sel = ((selected[i] && delta > c->stop) || delta > c->start)
                && stack_ok && v[i] > c->min_cell_voltage_v;
            selected[i] = (uint8_t)sel;
            any |= sel;
        }
    }
    if (!any) {
        *reason = SSB_BAL_NONE_SELECTED;
        return 0;
    }
    int on = fmod(time_s, c->period_s) < c->duty_cycle * c->period_s - c->time_eps_s
        || c->duty_cycle >= 1.0;
    if (!on) {
        *reason = SSB_BAL_DUTY_OFF;
        return 0;
    }
    for (size_t k = 0; k < ns; k++) {
        uint32_t m = 0;
        for (size_t i = c->cell_start[k]; i < c->cell_start[k + 1]; i++)
            if (selected[i]) {
                m |= (uint32_t)1u << (i - c->cell_start[k]);
                bleed_a[i] = v[i] / c->bleed_resistance_ohm;
            }
        masks[k] = m;
    }
    *reason = SSB_BAL_BALANCING;
    return 0;
}

int ssb_balance_soc_input(const double *soc, const double *sigma, double sigma_max, double *out,
                          size_t n)
{
    if (n > 0 && (!soc || !sigma || !out))
        return SSB_BAL_ERR_NULL;
    for (size_t i = 0; i < n; i++)
        out[i] = sigma[i] <= sigma_max ? soc[i] : NAN;
    return 0;
}
