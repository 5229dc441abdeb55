/*
 * ssb_thermal.c - see ssb_thermal.h. The arithmetic follows bms/thermal_check.py's
 * reference line by line (same operations in the same order), so the two agree bit for bit;
 * the build is ISO C11 (no floating-point contraction).
 */
#include "ssb_thermal.h"

#include <math.h>

#include "ssb_pairwise.h"

#define KELVIN 273.15

int ssb_cooling_check(const ssb_cooling_params_t *p)
{
    if (!p || !p->soc_grid || !p->ocv_v || !p->docv_dt_v_per_k)
        return SSB_THERMAL_ERR_NULL;
    if (p->n_grid < 1)
        return SSB_THERMAL_ERR_SIZE;
    for (size_t i = 0; i < p->n_grid; i++) {
        if (!isfinite(p->soc_grid[i]))
            return SSB_THERMAL_ERR_PARAM;
        if (i > 0 && !(p->soc_grid[i] > p->soc_grid[i - 1]))
            return SSB_THERMAL_ERR_PARAM;
    }
    return 0;
}

double ssb_thermal_interp(double x, const double *xp, const double *fp, size_t n)
{
    /* numpy's arr_interp for one x: ends held, an exact grid point its value, else the
     * slope from the left point (from the right one when that gives NaN). */
    if (n == 1)
        return fp[0]; /* numpy's one-point table: its value, whatever x (NaN too) */
    if (isnan(x))
        return x;
    if (x < xp[0])
        return fp[0];
    if (x > xp[n - 1])
        return fp[n - 1];
    if (x == xp[n - 1])
        return fp[n - 1];
    size_t lo = 0, hi = n - 1; /* xp[lo] <= x < xp[hi] */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (xp[mid] <= x)
            lo = mid;
        else
            hi = mid;
    }
    if (xp[lo] == x)
        return fp[lo];
    double slope = (fp[lo + 1] - fp[lo]) / (xp[lo + 1] - xp[lo]);
    double r = slope * (x - xp[lo]) + fp[lo];
    if (isnan(r)) {
        r = slope * (x - xp[lo + 1]) + fp[lo + 1];
        if (isnan(r) && fp[lo] == fp[lo + 1])
            r = fp[lo];
    }
    return r;
}

double ssb_thermal_pairwise_sum(const double *a, size_t n)
{
    return ssb_pairwise_sum(a, n);
}

/* float(np.interp(soc, grid, f).mean()): the interpolated values into work, their pairwise
 * sum over n. */
static double interp_mean(const double *soc, size_t n, const double *xp, const double *fp,
                          size_t n_grid, double *work)
{
    for (size_t i = 0; i < n; i++)
        work[i] = ssb_thermal_interp(soc[i], xp, fp, n_grid);
    return ssb_thermal_pairwise_sum(work, n) / (double)n;
}

int ssb_cooling_observe(const ssb_cooling_params_t *p, ssb_cooling_state_t *s, double t,
                        double current_a, double mean_cell_v, const double *soc,
                        const double *soc_sigma, const double *leak_a, size_t n_cells,
                        const double *temperature_c, size_t n_temps, int inputs_ok,
                        double *work)
{
    if (!p || !s || (n_cells > 0 && (!soc || !soc_sigma || !leak_a || !work))
        || (n_temps > 0 && !temperature_c))
        return SSB_THERMAL_ERR_NULL;
    double dt = isnan(s->last_tick_s) ? 0.0 : t - s->last_tick_s;
    s->last_tick_s = t;
    if (!inputs_ok || isnan(current_a) || isnan(mean_cell_v)) {
        s->inputs_bad = 1;
    } else if (!isnan(s->ocv_v)) {
        double t_k = (!isnan(s->temp_c) ? s->temp_c : 25.0) + KELVIN;
        s->energy_j += (current_a * (mean_cell_v - s->ocv_v + t_k * s->docv_dt_v_per_k)
                        + s->leak_w) * dt;
    }
    if (!isnan(s->last_step_s) && t - s->last_step_s < p->period_s - 1e-9)
        return 0;
    double temp = NAN;
    if (n_temps > 0) {
        double sum = 0.0;
        for (size_t i = 0; i < n_temps; i++)
            sum += temperature_c[i];
        temp = sum / (double)n_temps;
    }
    double step_s = isnan(s->last_step_s) ? 0.0 : t - s->last_step_s;
    s->last_step_s = t;
    if (!isnan(temp) && isnan(s->start_c))
        s->start_c = temp;
    double sig = 0.0;
    for (size_t i = 0; i < n_cells; i++)
        sig += soc_sigma[i];
    int trusted = !isnan(temp) && !isnan(s->model_c) && !isnan(s->ocv_v) && !s->inputs_bad
                  && sig <= p->sigma_gate * (double)n_cells && step_s <= 10.0 * p->period_s;
    s->inputs_bad = 0;
    if (trusted) {
        double n = (double)n_cells;
        double g_c = p->cell_to_coolant_w_per_k;
        double cap_w = p->coolant_heat_capacity_j_per_k / n;
        double g_w = p->coolant_flow_w_per_k / n;
        double cap_p = p->end_plates_heat_capacity_j_per_k / n;
        double g_p = p->cells_to_end_plates_w_per_k / n;
        double g_pa = p->end_plates_to_ambient_w_per_k / n;
        s->heat_w = step_s > 0 ? s->energy_j / step_s : 0.0;
        double to_coolant_w = g_c * (s->model_c - s->coolant_c);
        double to_plates_w = g_p * (s->model_c - s->plates_c);
        s->model_c += (s->energy_j - (to_coolant_w + to_plates_w) * step_s)
                      / p->heat_capacity_j_per_k;
        s->coolant_c += (to_coolant_w - g_w * (s->coolant_c - s->start_c)) * step_s / cap_w;
        s->plates_c += (to_plates_w - g_pa * (s->plates_c - s->start_c)) * step_s / cap_p;
        s->residual_k = temp - s->model_c;
        /* min(2 limit, max(0.0, v)) as Python's max/min pick (the first unless the second
         * compares greater / smaller; NaN never does) */
        double v = s->cusum_k_s + (s->residual_k - p->allowance_k) * step_s;
        double up = 2.0 * p->limit_k_s;
        v = v > 0.0 ? v : 0.0;
        s->cusum_k_s = v < up ? v : up;
    } else {
        s->residual_k = 0.0;
        s->cusum_k_s = 0.0;
        s->heat_w = 0.0;
        if (!isnan(temp))
            s->model_c = temp;
        if (isnan(s->coolant_c))
            s->coolant_c = s->plates_c = s->start_c;
    }
    if (!isnan(temp))
        s->temp_c = temp;
    s->energy_j = 0.0;
    int all_soc = n_cells > 0;
    for (size_t i = 0; i < n_cells && all_soc; i++)
        all_soc = !isnan(soc[i]);
    if (all_soc) {
        s->ocv_v = interp_mean(soc, n_cells, p->soc_grid, p->ocv_v, p->n_grid, work);
        s->docv_dt_v_per_k = interp_mean(soc, n_cells, p->soc_grid, p->docv_dt_v_per_k,
                                         p->n_grid, work);
    } else {
        s->ocv_v = NAN;
    }
    double leak = 0.0;
    for (size_t i = 0; i < n_cells; i++)
        if (leak_a[i] > 0.0)
            leak += leak_a[i];
    s->leak_w = n_cells > 0 && !isnan(mean_cell_v) ? leak / (double)n_cells * mean_cell_v : 0.0;
    return 1;
}
