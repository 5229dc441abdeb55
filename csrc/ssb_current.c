/* ssb_current.c - see ssb_current.h; bms/current_check.py has the rules in Python. */
#include "ssb_current.h"

#include <math.h>

int ssb_cc_innovation(const ssb_cc_config_t *c, ssb_cc_state_t *s, size_t k, double t,
                      int64_t n_valid, double median_v, double sigma_sum, int64_t n_cells,
                      double overpotential_v)
{
    if (!c || !s || !s->cusum_pos_v_s || !s->cusum_neg_v_s || !s->last_t_s)
        return SSB_CC_ERR_NULL;
    double dt = isnan(s->last_t_s[k]) ? 0.0 : t - s->last_t_s[k];
    s->last_t_s[k] = t;
    if (n_valid < 3 || !(sigma_sum <= c->sigma_gate * (double)n_cells)) {
        s->cusum_pos_v_s[k] = s->cusum_neg_v_s[k] = 0.0;
        return 0;
    }
    double cap = 2.0 * c->cusum_limit_v_s;
    const double op = overpotential_v > 0.0 ? overpotential_v : 0.0; /* NaN -> 0 */
    const double allow = c->cusum_allowance_v + c->cusum_allowance_rel * op;
    /* min(cap, max(0.0, x)) as Python's builtins: max keeps 0.0 unless x > 0.0 */
    double x = s->cusum_pos_v_s[k] + (median_v - allow) * dt;
    double y = x > 0.0 ? x : 0.0;
    s->cusum_pos_v_s[k] = y < cap ? y : cap;
    x = s->cusum_neg_v_s[k] + (-median_v - allow) * dt;
    y = x > 0.0 ? x : 0.0;
    s->cusum_neg_v_s[k] = y < cap ? y : cap;
    return 0;
}

int ssb_cc_step(const ssb_cc_config_t *c, ssb_cc_state_t *s, size_t n, double t,
                const double *currents_a, int no_current_path, int8_t *change, double *value)
{
    if (!c || !s || !currents_a || !change || !value || !s->cusum_pos_v_s || !s->cusum_neg_v_s
        || !s->rest_since_s || !s->disagree_since_s || !s->raised || !s->why || !s->scratch)
        return SSB_CC_ERR_NULL;
    /* the finite currents, sorted, and their median */
    size_t nf = 0;
    for (size_t k = 0; k < n; k++) {
        double x = currents_a[k];
        if (!isfinite(x))
            continue;
        size_t j = nf++;
        while (j > 0 && s->scratch[j - 1] > x) {
            s->scratch[j] = s->scratch[j - 1];
            j--;
        }
        s->scratch[j] = x;
    }
    double median = nf == 0 ? NAN
        : (nf % 2 ? s->scratch[nf / 2] : 0.5 * (s->scratch[nf / 2 - 1] + s->scratch[nf / 2]));
    int changes = 0;
    for (size_t k = 0; k < n; k++) {
        double i_a = currents_a[k], v = NAN;
        int why = SSB_CC_NONE;
        /* 1. at rest: the true current is zero */
        if (no_current_path && isfinite(i_a) && fabs(i_a) > c->rest_threshold_a) {
            if (isnan(s->rest_since_s[k]))
                s->rest_since_s[k] = t;
            if (t - s->rest_since_s[k] >= c->rest_debounce_s - 1e-9) {
                why = SSB_CC_REST;
                v = i_a;
            }
        } else {
            s->rest_since_s[k] = NAN;
        }
        /* 2. the common-mode innovation */
        double cp = s->cusum_pos_v_s[k], cn = s->cusum_neg_v_s[k];
        if (!why && (cn > cp ? cn : cp) > c->cusum_limit_v_s) {
            why = SSB_CC_CUSUM;
            v = cp > cn ? cp : -cn;
        }
        /* 3. stacks in series: one current */
        if (nf >= 2 && isfinite(i_a)) {
            double ref = median;
            if (nf < 3) /* the other finite reading */
                for (size_t j = 0; j < n; j++)
                    if (j != k && isfinite(currents_a[j])) {
                        ref = currents_a[j];
                        break;
                    }
            if (fabs(i_a - ref) > c->disagree_a) {
                if (isnan(s->disagree_since_s[k]))
                    s->disagree_since_s[k] = t;
                if (!why && t - s->disagree_since_s[k] >= c->disagree_debounce_s - 1e-9) {
                    why = SSB_CC_DISAGREE;
                    v = i_a - ref;
                }
            } else {
                s->disagree_since_s[k] = NAN;
            }
        } else {
            s->disagree_since_s[k] = NAN;
        }
        change[k] = 0;
        value[k] = v;
        if (why && !s->raised[k]) {
            s->raised[k] = 1;
            s->why[k] = why;
            change[k] = 1;
            changes++;
        } else if (!why && s->raised[k]) {
            s->raised[k] = 0;
            s->why[k] = SSB_CC_NONE;
            change[k] = -1;
            changes++;
        }
    }
    return changes;
}
