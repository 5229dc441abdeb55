/*
 * ssb_format.c - fixed-point CSV row formatter; see ssb_format.h for the output rules.
 *
 * Rounding: p = |v| 10^d is rounded to a double; fma gives its exact error e (|v| 10^d = p + e
 * exactly, 10^d <= 10^9 being exact). With r = floor(p) and f = p - r (exact: Sterbenz), the
 * exact fraction is f + e and, since p < 2^52, f is a multiple of ulp(p) <= 1/2 and
 * |e| <= ulp(p) / 2: so f > 1/2 means round up, f < 1/2 round down, and f == 1/2 is decided by
 * the sign of e (e == 0: an exact tie, rounded away from zero). No step depends on the FP
 * rounding mode beyond round-to-nearest for the product itself.
 */
#include "ssb_format.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const double POW10[SSB_FMT_MAX_DECIMALS + 1] = {1e0, 1e1, 1e2, 1e3, 1e4,
                                                       1e5, 1e6, 1e7, 1e8, 1e9};
static const uint64_t IPOW10[SSB_FMT_MAX_DECIMALS + 1] = {
    1u, 10u, 100u, 1000u, 10000u, 100000u, 1000000u, 10000000u, 100000000u, 1000000000u};
#define TWO_POW_52 4503599627370496.0
static const char DIGIT_PAIRS[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

static int put_text(char *out, const char *s)
{
    const size_t len = strlen(s);
    memcpy(out, s, len);
    return (int)len;
}

/* snprintf into a local buffer (never longer than SSB_FMT_FIELD_MAX for these formats). */
static int fmt_printf(double v, int digits, char *out)
{
    char tmp[64];
    const int len = snprintf(tmp, sizeof tmp, "%.*g", digits, v);
    if (len <= 0 || len > SSB_FMT_FIELD_MAX)
        return put_text(out, "nan"); /* cannot happen for finite doubles; never overflow */
    memcpy(out, tmp, (size_t)len);
    return len;
}

/* Fixed-point; returns -1 when |v| 10^d is too large for exact fixed point. v finite. */
static int fmt_fixed(double v, int d, char *out)
{
    const double a = fabs(v);
    const double s = POW10[d];
    const double p = a * s;
    if (!(p < TWO_POW_52))
        return -1;
    const double e = fma(a, s, -p); /* a * s = p + e exactly */
    const double r = floor(p);
    const double f = p - r;
    uint64_t q = (uint64_t)r;
    if (f > 0.5 || (f == 0.5 && e >= 0.0))
        q++;
    if (q == 0) {
        out[0] = '0';
        return 1;
    }
    char *w = out;
    if (v < 0.0)
        *w++ = '-';
    /* by a constant per case: the compiler multiplies instead of a 64-bit division (~40
     * cycles), once per value of every row */
    uint64_t ip, fp;
    switch (d) {
#define SPLIT(k)                     \
    case k:                          \
        ip = q / IPOW10[k];          \
        fp = q % IPOW10[k];          \
        break;
        SPLIT(1) SPLIT(2) SPLIT(3) SPLIT(4) SPLIT(5) SPLIT(6) SPLIT(7) SPLIT(8) SPLIT(9)
#undef SPLIT
    default: /* 0 */
        ip = q;
        fp = 0;
        break;
    }
    /* digits two at a time from a table (half the dependent divisions by 10) */
    char digits[24];
    int k = 24;
    while (ip >= 100u) {
        const unsigned pair = (unsigned)(ip % 100u);
        ip /= 100u;
        k -= 2;
        memcpy(digits + k, DIGIT_PAIRS + 2 * pair, 2);
    }
    if (ip >= 10u) {
        k -= 2;
        memcpy(digits + k, DIGIT_PAIRS + 2 * ip, 2);
    } else {
        digits[--k] = (char)('0' + (int)ip);
    }
    memcpy(w, digits + k, (size_t)(24 - k));
    w += 24 - k;
    if (fp) {
        char frac[SSB_FMT_MAX_DECIMALS + 1];
        int j = d;
        while (j >= 2) {
            const unsigned pair = (unsigned)(fp % 100u);
            fp /= 100u;
            j -= 2;
            memcpy(frac + j, DIGIT_PAIRS + 2 * pair, 2);
        }
        if (j)
            frac[0] = (char)('0' + (int)fp);
        int nd = d;
        while (frac[nd - 1] == '0') /* trim trailing zeros (the fraction is not 0) */
            nd--;
        *w++ = '.';
        memcpy(w, frac, (size_t)nd);
        w += nd;
    }
    return (int)(w - out);
}

int ssb_format_value(double value, int decimals, char *out)
{
    if (!out)
        return SSB_FMT_ERR_NULL;
    if (decimals < SSB_FMT_G10 || decimals > SSB_FMT_MAX_DECIMALS)
        return SSB_FMT_ERR_PARAM;
    if (isnan(value))
        return put_text(out, "nan");
    if (isinf(value))
        return put_text(out, value > 0.0 ? "inf" : "-inf");
    if (value == 0.0) { /* +0 and -0 */
        out[0] = '0';
        return 1;
    }
    if (decimals == SSB_FMT_G10)
        return fmt_printf(value, 10, out);
    const int len = fmt_fixed(value, decimals, out);
    return len >= 0 ? len : fmt_printf(value, 17, out);
}

int64_t ssb_format_segments(const double *const *seg, const size_t *seg_len, size_t n_seg,
                            const signed char *decimals, char *out, size_t cap)
{
    if (!out || (n_seg > 0 && (!seg || !seg_len)))
        return SSB_FMT_ERR_NULL;
    size_t n = 0;
    for (size_t k = 0; k < n_seg; k++) {
        if (seg_len[k] > 0 && !seg[k])
            return SSB_FMT_ERR_NULL;
        n += seg_len[k];
    }
    if (n > 0 && !decimals)
        return SSB_FMT_ERR_NULL;
    for (size_t i = 0; i < n; i++)
        if (decimals[i] < SSB_FMT_G10 || decimals[i] > SSB_FMT_MAX_DECIMALS)
            return SSB_FMT_ERR_PARAM;
    size_t pos = 0, i = 0;
    char field[SSB_FMT_FIELD_MAX];
    for (size_t k = 0; k < n_seg; k++) {
        const double *values = seg[k];
        for (size_t j = 0; j < seg_len[k]; j++, i++) {
            const int len = ssb_format_value(values[j], decimals[i], field);
            /* the field plus its separator (',' or the final '\n') */
            if (len < 0 || cap - pos < (size_t)len + 1u)
                return len < 0 ? len : SSB_FMT_ERR_FULL;
            memcpy(out + pos, field, (size_t)len);
            pos += (size_t)len;
            out[pos++] = i + 1 < n ? ',' : '\n';
        }
    }
    if (n == 0) {
        if (cap < 1)
            return SSB_FMT_ERR_FULL;
        out[pos++] = '\n';
    }
    return (int64_t)pos;
}

int64_t ssb_format_row(const double *values, const signed char *decimals, size_t n, char *out,
                       size_t cap)
{
    if (!out || (n > 0 && (!values || !decimals)))
        return SSB_FMT_ERR_NULL;
    return ssb_format_segments(&values, &n, 1, decimals, out, cap);
}

int ssb_fill_tick(double *head, double *tail, size_t n_stacks, double time_s, double state,
                  double current_a, double stack_voltage_v, double bus_voltage_v,
                  double charge_limit_a, double discharge_limit_a, double outputs,
                  const uint32_t *masks, double faults_active, double tick_duration_s)
{
    if (!head || !tail || (n_stacks > 0 && !masks))
        return SSB_FMT_ERR_NULL;
    head[0] = time_s;
    head[1] = state;
    head[2] = current_a;
    head[3] = stack_voltage_v;
    head[4] = bus_voltage_v;
    double *t = tail + 3 * n_stacks;
    t[0] = charge_limit_a;
    t[1] = discharge_limit_a;
    t[2] = outputs;
    for (size_t k = 0; k < n_stacks; k++)
        t[3 + k] = (double)masks[k];
    t[3 + n_stacks] = faults_active;
    t[4 + n_stacks] = tick_duration_s;
    return 0;
}

int64_t ssb_format_tick(double *head, double *tail, size_t n_stacks, double time_s,
                        double state, double current_a, double stack_voltage_v,
                        double bus_voltage_v, double charge_limit_a, double discharge_limit_a,
                        double outputs, const uint32_t *masks, double faults_active,
                        double tick_duration_s, const double *const *seg,
                        const size_t *seg_len, size_t n_seg, const signed char *decimals,
                        char *out, size_t cap)
{
    const int rc = ssb_fill_tick(head, tail, n_stacks, time_s, state, current_a,
                                 stack_voltage_v, bus_voltage_v, charge_limit_a,
                                 discharge_limit_a, outputs, masks, faults_active,
                                 tick_duration_s);
    if (rc < 0)
        return rc;
    return ssb_format_segments(seg, seg_len, n_seg, decimals, out, cap);
}

int ssb_gather_segments(const double *const *seg, const size_t *seg_len, size_t n_seg,
                        const size_t *cols, size_t n_cols, double *out)
{
    if (n_cols == 0)
        return 0;
    if (!cols || !out || !seg || !seg_len)
        return SSB_FMT_ERR_NULL;
    size_t k = 0, start = 0; /* segment k holds the row's values start .. start + seg_len[k] */
    for (size_t i = 0; i < n_cols; i++) {
        const size_t c = cols[i];
        if (i > 0 && c <= cols[i - 1])
            return SSB_FMT_ERR_PARAM;
        while (k < n_seg && c - start >= seg_len[k]) { /* c >= start: cols ascend */
            start += seg_len[k];
            k++;
        }
        if (k == n_seg)
            return SSB_FMT_ERR_PARAM;
        if (!seg[k])
            return SSB_FMT_ERR_NULL;
        out[i] = seg[k][c - start];
    }
    return 0;
}
