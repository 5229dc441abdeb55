/*
 * ssb_protect.c - protection engine (debounce, hysteresis, NaN tracking); see ssb_protect.h.
 *
 * One pass over the channels updates every timer and level and marks the changes in the state
 * bytes themselves (asserted 2 = newly asserted, 3 = clearing; invalid | 2 = changed); only
 * when something changed (rare) do three more passes report them in the reference order and
 * restore the bytes to 0/1. So the common tick is one loop and no scratch memory.
 */
#include "ssb_protect.h"

#include <math.h>
#include <string.h>

enum { NEW_ON = 2, NEW_OFF = 3, INV_CHANGED = 2 };

/* One level of one channel: the new timer start and the change (+1 assert, -1 clear, 0 none).
 * Mirrors the NumPy reference expression by expression (bms/protections.py). */
static inline int eval_level(double x, int en, int frozen, double thr, double clear_thr,
                             double deb_s, double start_s, int asserted, double time_s,
                             double *new_start_s)
{
    const int past = en && (x > thr); /* NaN compares false */
    double s = start_s;
    if (!past && !frozen) /* a valid tick not past, or the protection off: timer reset */
        s = NAN;
    if (past && isnan(s))
        s = time_s;
    *new_start_s = s;
    const int due = past && ((time_s - s) >= deb_s);
    const int back = (x < clear_thr) || !en; /* NaN compares false: never clears */
    if (due && !asserted)
        return 1;
    if (asserted && back)
        return -1;
    return 0;
}

static int check_pointers(const ssb_protect_limits_t *lim, const ssb_protect_state_t *st,
                          const ssb_protect_inputs_t *in)
{
    if (!lim || !st || !in || !lim->sign || !lim->thr || !lim->hyst || !lim->debounce_s ||
        !st->start_s || !st->asserted || !st->invalid || !in->value || !in->offset ||
        !in->enabled || !in->present)
        return SSB_PROT_ERR_NULL;
    if (lim->n < 1 || lim->n > SSB_PROT_MAX_CHANNELS)
        return SSB_PROT_ERR_SIZE;
    return 0;
}

int ssb_protect_check(const ssb_protect_limits_t *lim)
{
    if (!lim || !lim->sign || !lim->thr || !lim->hyst || !lim->debounce_s)
        return SSB_PROT_ERR_NULL;
    const size_t n = lim->n;
    if (n < 1 || n > SSB_PROT_MAX_CHANNELS)
        return SSB_PROT_ERR_SIZE;
    for (size_t i = 0; i < n; i++) {
        if (lim->sign[i] != 1.0 && lim->sign[i] != -1.0)
            return SSB_PROT_ERR_PARAM;
        if (!isfinite(lim->hyst[i]) || lim->hyst[i] < 0.0)
            return SSB_PROT_ERR_PARAM;
        if (!isfinite(lim->debounce_s[i]) || lim->debounce_s[i] < 0.0)
            return SSB_PROT_ERR_PARAM;
        for (size_t l = 0; l < SSB_PROT_LEVELS; l++)
            if (!isfinite(lim->thr[l * n + i]))
                return SSB_PROT_ERR_PARAM;
    }
    return 0;
}

/* Sign-space value: sign is +-1, so a negation instead of a product (no FMA contraction can
 * change the result against the reference's sign * value + offset). */
static inline double sign_space(const ssb_protect_limits_t *lim, const ssb_protect_inputs_t *in,
                                size_t i)
{
    const double v = in->value[i];
    return (lim->sign[i] < 0.0 ? -v : v) + in->offset[i];
}

/* One pass over every channel: the number of transitions this tick makes. commit = 0 only
 * counts and leaves the state alone (the check before a too-small output buffer); commit = 1
 * also advances the timers and marks the changed levels (NEW_ON / NEW_OFF, INV_CHANGED) for
 * the report. */
static size_t advance(const ssb_protect_limits_t *lim, ssb_protect_state_t *st,
                      const ssb_protect_inputs_t *in, double time_s, int commit)
{
    const size_t n = lim->n;
    size_t changes = 0;
    for (size_t i = 0; i < n; i++) {
        const double x = sign_space(lim, in, i);
        const int en = in->enabled[i] != 0;
        const int nan = isnan(x);
        const double deb_s = lim->debounce_s[i] - SSB_PROT_TIME_EPS_S;
        for (size_t l = 0; l < SSB_PROT_LEVELS; l++) {
            const size_t k = l * n + i;
            double s;
            const int c = eval_level(x, en, nan && en, lim->thr[k], lim->thr[k] - lim->hyst[i],
                                     deb_s, st->start_s[k], st->asserted[k] != 0, time_s, &s);
            if (commit) {
                st->start_s[k] = s;
                if (c)
                    st->asserted[k] = c > 0 ? NEW_ON : NEW_OFF;
            }
            changes += c != 0;
        }
        const uint8_t bad = (uint8_t)(nan && in->present[i] != 0);
        if (bad != (st->invalid[i] != 0)) {
            if (commit)
                st->invalid[i] = (uint8_t)(bad | INV_CHANGED);
            changes++;
        }
    }
    return changes;
}

int ssb_protect_update(const ssb_protect_limits_t *lim, ssb_protect_state_t *st,
                       const ssb_protect_inputs_t *in, double time_s, ssb_transition_t *out,
                       size_t cap)
{
    const int rc = check_pointers(lim, st, in);
    if (rc)
        return rc;
    if (!out && cap > 0)
        return SSB_PROT_ERR_NULL;
    const size_t n = lim->n;
    if (cap < 4 * n && advance(lim, st, in, time_s, 0) > cap)
        return SSB_PROT_ERR_FULL;

    const size_t changes = advance(lim, st, in, time_s, 1);
    if (!changes)
        return 0;

    /* Report in the reference order and restore the state bytes to 0/1. count <= cap holds
     * (checked above, or cap >= 4 n >= count); the k < cap tests only make that local. */
    size_t k_out = 0;
    for (int pass = 0; pass < 2; pass++) {
        const uint8_t mark = pass == 0 ? NEW_ON : NEW_OFF;
        for (size_t l = 0; l < SSB_PROT_LEVELS; l++)
            for (size_t i = 0; i < n; i++) {
                uint8_t *a = &st->asserted[l * n + i];
                if (*a != mark)
                    continue;
                *a = pass == 0 ? 1 : 0;
                if (k_out < cap) {
                    out[k_out].value = in->value[i];
                    out[k_out].channel = (int32_t)i;
                    out[k_out].level = (int8_t)l;
                    out[k_out].asserted = (int8_t)(pass == 0);
                    k_out++;
                }
            }
    }
    for (size_t i = 0; i < n; i++) {
        if (!(st->invalid[i] & INV_CHANGED))
            continue;
        st->invalid[i] &= 1;
        if (k_out < cap) {
            out[k_out].value = in->value[i];
            out[k_out].channel = (int32_t)i;
            out[k_out].level = SSB_PROT_INVALID;
            out[k_out].asserted = (int8_t)st->invalid[i];
            k_out++;
        }
    }
    return (int)k_out;
}

int ssb_protect_gather(double *value, size_t n, const double *const *src, const size_t *src_len,
                       const size_t *dst_off, size_t n_src)
{
    if (!value || (n_src > 0 && (!src || !src_len || !dst_off)))
        return SSB_PROT_ERR_NULL;
    for (size_t k = 0; k < n_src; k++) {
        if (src_len[k] > 0 && !src[k])
            return SSB_PROT_ERR_NULL;
        if (dst_off[k] > n || src_len[k] > n - dst_off[k])
            return SSB_PROT_ERR_SIZE;
    }
    for (size_t k = 0; k < n_src; k++)
        if (src_len[k] > 0)
            memcpy(value + dst_off[k], src[k], src_len[k] * sizeof(double));
    return 0;
}

int ssb_protect_leak_low(const double *leak, const double *sigma, double k, double *low,
                         size_t n)
{
    if (n > 0 && (!leak || !sigma || !low))
        return SSB_PROT_ERR_NULL;
    for (size_t i = 0; i < n; i++) {
        double scaled = sigma[i] * k; /* rounded first, as np.multiply then += */
        low[i] = scaled + leak[i];
    }
    return 0;
}

/* Python's min(max(max_static - limit, 0.0), max_static) (each keeps its first argument unless
 * the second compares greater / smaller), 0 for a limit that is not finite. */
static double derate(double limit_a, double max_static_a)
{
    if (!isfinite(limit_a))
        return 0.0;
    double d = max_static_a - limit_a;
    d = 0.0 > d ? 0.0 : d;
    return max_static_a < d ? max_static_a : d;
}

int ssb_protect_tick(const ssb_protect_tick_t *tk, double time_s, double current_a,
                     double charge_limit_a, double discharge_limit_a, ssb_transition_t *out,
                     size_t cap)
{
    if (!tk || !tk->lim || !tk->value || !tk->offset || !tk->inputs)
        return SSB_PROT_ERR_NULL;
    const size_t n = tk->lim->n;
    if (tk->i_charge >= n || tk->i_discharge >= n)
        return SSB_PROT_ERR_SIZE;
    int rc = check_pointers(tk->lim, tk->st, tk->inputs);
    if (rc)
        return rc;
    rc = ssb_protect_gather(tk->value, n, tk->src, tk->src_len, tk->dst_off, tk->n_src);
    if (rc)
        return rc;
    tk->value[tk->i_charge] = current_a;
    tk->value[tk->i_discharge] = -current_a;
    tk->offset[tk->i_charge] = derate(charge_limit_a, tk->max_charge_a);
    tk->offset[tk->i_discharge] = derate(discharge_limit_a, tk->max_discharge_a);
    return ssb_protect_update(tk->lim, tk->st, tk->inputs, time_s, out, cap);
}
