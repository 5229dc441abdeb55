/*
 * C driver for the protection engine and the row formatter, built with
 * -fsanitize=address,undefined by tests/test_protect_asan.py: every error path, a full
 * transition buffer, NaN/Inf inputs, sizes 1..300, long random runs. Exit status 0 = all checks
 * passed. Each buffer is allocated with its exact size, so any out-of-bounds access is an ASan
 * report.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ssb_format.h"
#include "ssb_protect.h"

static int failures = 0;
#include "check.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static double urand(void) /* xorshift64*: [0, 1) */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717u) >> 11) * (1.0 / 9007199254740992.0);
}

typedef struct {
    size_t n;
    double *sign, *thr, *hyst, *deb, *start, *value, *offset;
    uint8_t *asserted, *invalid, *enabled, *present;
    ssb_protect_limits_t lim;
    ssb_protect_state_t st;
    ssb_protect_inputs_t in;
} fix_t;

static void fix_init(fix_t *f, size_t n, double debounce_s)
{
    memset(f, 0, sizeof *f);
    f->n = n;
    f->sign = malloc(n * sizeof(double));
    f->thr = malloc(3 * n * sizeof(double));
    f->hyst = malloc(n * sizeof(double));
    f->deb = malloc(n * sizeof(double));
    f->start = malloc(3 * n * sizeof(double));
    f->value = malloc(n * sizeof(double));
    f->offset = calloc(n, sizeof(double));
    f->asserted = calloc(3 * n, 1);
    f->invalid = calloc(n, 1);
    f->enabled = malloc(n);
    f->present = malloc(n);
    for (size_t i = 0; i < n; i++) {
        const double s = (i % 2) ? -1.0 : 1.0; /* odd channels "below" */
        f->sign[i] = s;
        for (int l = 0; l < 3; l++)
            f->thr[l * n + i] = s * (s * (1.0 + l)); /* sign space: 1, 2, 3 */
        f->hyst[i] = 0.25;
        f->deb[i] = debounce_s;
        f->value[i] = 0.0;
        f->enabled[i] = 1;
        f->present[i] = 1;
        for (int l = 0; l < 3; l++)
            f->start[l * n + i] = NAN;
    }
    f->lim = (ssb_protect_limits_t){n, f->sign, f->thr, f->hyst, f->deb};
    f->st = (ssb_protect_state_t){f->start, f->asserted, f->invalid};
    f->in = (ssb_protect_inputs_t){f->value, f->offset, f->enabled, f->present};
}

static void fix_free(fix_t *f)
{
    free(f->sign), free(f->thr), free(f->hyst), free(f->deb), free(f->start), free(f->value);
    free(f->offset), free(f->asserted), free(f->invalid), free(f->enabled), free(f->present);
}

/* raw value whose sign-space value is x on channel i */
static double raw(const fix_t *f, size_t i, double x) { return f->sign[i] * x; }

static int same_bits(const double *a, const double *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(a[i] == b[i] || (isnan(a[i]) && isnan(b[i]))))
            return 0;
    return 1;
}

static int same_transitions(const ssb_transition_t *a, const ssb_transition_t *b, int count)
{
    for (int j = 0; j < count; j++)
        if (a[j].channel != b[j].channel || a[j].level != b[j].level ||
            a[j].asserted != b[j].asserted ||
            !(a[j].value == b[j].value || (isnan(a[j].value) && isnan(b[j].value))))
            return 0;
    return 1;
}

static int upd(fix_t *f, double t, ssb_transition_t *out, size_t cap)
{
    return ssb_protect_update(&f->lim, &f->st, &f->in, t, out, cap);
}

static void test_errors(void)
{
    fix_t f;
    fix_init(&f, 4, 0.0);
    ssb_transition_t *out = malloc(16 * sizeof *out);
    CHECK(ssb_protect_check(&f.lim) == 0);
    CHECK(ssb_protect_check(NULL) == SSB_PROT_ERR_NULL);
    CHECK(ssb_protect_update(NULL, &f.st, &f.in, 0.0, out, 16) == SSB_PROT_ERR_NULL);
    CHECK(ssb_protect_update(&f.lim, NULL, &f.in, 0.0, out, 16) == SSB_PROT_ERR_NULL);
    CHECK(ssb_protect_update(&f.lim, &f.st, NULL, 0.0, out, 16) == SSB_PROT_ERR_NULL);
    CHECK(upd(&f, 0.0, NULL, 1) == SSB_PROT_ERR_NULL);
    CHECK(upd(&f, 0.0, NULL, 0) == 0); /* nothing to report: no buffer needed */
    const void *saved;
#define NULLCHECK(field)                                      \
    saved = (const void *)(field);                            \
    memcpy(&(field), &(void *){NULL}, sizeof(void *));        \
    CHECK(upd(&f, 0.0, out, 16) == SSB_PROT_ERR_NULL);        \
    memcpy(&(field), &saved, sizeof(void *));
    NULLCHECK(f.lim.sign)
    NULLCHECK(f.lim.thr)
    NULLCHECK(f.lim.hyst)
    NULLCHECK(f.lim.debounce_s)
    NULLCHECK(f.st.start_s)
    NULLCHECK(f.st.asserted)
    NULLCHECK(f.st.invalid)
    NULLCHECK(f.in.value)
    NULLCHECK(f.in.offset)
    NULLCHECK(f.in.enabled)
    NULLCHECK(f.in.present)
#undef NULLCHECK
    f.lim.n = 0;
    CHECK(ssb_protect_check(&f.lim) == SSB_PROT_ERR_SIZE);
    CHECK(upd(&f, 0.0, out, 16) == SSB_PROT_ERR_SIZE);
    f.lim.n = (size_t)SSB_PROT_MAX_CHANNELS + 1;
    CHECK(ssb_protect_check(&f.lim) == SSB_PROT_ERR_SIZE);
    CHECK(upd(&f, 0.0, out, 16) == SSB_PROT_ERR_SIZE);
    f.lim.n = 4;
    f.sign[2] = 0.5;
    CHECK(ssb_protect_check(&f.lim) == SSB_PROT_ERR_PARAM);
    f.sign[2] = 1.0;
    f.thr[4 + 3] = NAN;
    CHECK(ssb_protect_check(&f.lim) == SSB_PROT_ERR_PARAM);
    f.thr[4 + 3] = INFINITY;
    CHECK(ssb_protect_check(&f.lim) == SSB_PROT_ERR_PARAM);
    f.thr[4 + 3] = 2.0;
    f.hyst[1] = -0.1;
    CHECK(ssb_protect_check(&f.lim) == SSB_PROT_ERR_PARAM);
    f.hyst[1] = INFINITY;
    CHECK(ssb_protect_check(&f.lim) == SSB_PROT_ERR_PARAM);
    f.hyst[1] = 0.25;
    f.deb[0] = -1.0;
    CHECK(ssb_protect_check(&f.lim) == SSB_PROT_ERR_PARAM);
    f.deb[0] = NAN;
    CHECK(ssb_protect_check(&f.lim) == SSB_PROT_ERR_PARAM);
    f.deb[0] = 0.0;
    CHECK(ssb_protect_check(&f.lim) == 0);
    free(out);
    fix_free(&f);
}

/* All channels past every level at once with debounce 0: 3 n asserts in one tick. */
static void test_full_buffer(size_t n)
{
    fix_t f;
    fix_init(&f, n, 0.0);
    for (size_t i = 0; i < n; i++)
        f.value[i] = raw(&f, i, 10.0);
    double *start0 = malloc(3 * n * sizeof(double));
    uint8_t *as0 = malloc(3 * n);
    memcpy(start0, f.start, 3 * n * sizeof(double));
    memcpy(as0, f.asserted, 3 * n);
    for (size_t cap = 0; cap < 3 * n; cap += 1 + cap / 3) {
        ssb_transition_t *out = cap ? malloc(cap * sizeof *out) : NULL; /* exact size */
        CHECK(upd(&f, 0.0, out, cap) == SSB_PROT_ERR_FULL);
        CHECK(same_bits(start0, f.start, 3 * n)); /* nothing changed */
        CHECK(memcmp(as0, f.asserted, 3 * n) == 0);
        free(out);
    }
    ssb_transition_t *out = malloc(3 * n * sizeof *out);
    CHECK(upd(&f, 0.0, out, 3 * n) == (int)(3 * n));
    for (size_t k = 0; k < 3 * n; k++) { /* level-major, then channel */
        CHECK(out[k].level == (int8_t)(k / n));
        CHECK(out[k].channel == (int32_t)(k % n));
        CHECK(out[k].asserted == 1);
        CHECK(out[k].value == f.value[k % n]);
    }
    /* NaN on every channel: n invalid asserts, levels frozen (NaN never clears). */
    for (size_t i = 0; i < n; i++)
        f.value[i] = NAN;
    CHECK(upd(&f, 0.1, out, n - 1) == SSB_PROT_ERR_FULL || n == 0);
    CHECK(upd(&f, 0.1, out, n) == (int)n);
    for (size_t k = 0; k < n; k++)
        CHECK(out[k].level == SSB_PROT_INVALID && out[k].asserted == 1 && isnan(out[k].value));
    for (size_t k = 0; k < 3 * n; k++)
        CHECK(f.asserted[k] == 1);
    CHECK(upd(&f, 0.2, out, 0) == 0 || n == 0);
    /* Back to normal: 3 n clears and n invalid clears = 4 n, the largest possible tick. */
    for (size_t i = 0; i < n; i++)
        f.value[i] = raw(&f, i, -10.0);
    ssb_transition_t *big = malloc(4 * n * sizeof *big);
    CHECK(upd(&f, 0.3, big, 4 * n) == (int)(4 * n));
    for (size_t k = 0; k < 3 * n; k++)
        CHECK(big[k].asserted == 0 && big[k].level == (int8_t)(k / n));
    for (size_t k = 3 * n; k < 4 * n; k++)
        CHECK(big[k].level == SSB_PROT_INVALID && big[k].asserted == 0);
    for (size_t k = 0; k < 3 * n; k++)
        CHECK(f.asserted[k] == 0 && isnan(f.start[k]));
    free(big);
    free(out);
    free(start0);
    free(as0);
    fix_free(&f);
}

/* Debounce 0.3 s at ticks 0.1 k: asserts on the fourth tick past (0.3 - 0.0 >= 0.3 - 1e-9 with
 * 0.1 * 3 = 0.30000000000000004), inf asserts, -inf clears, NaN offset is invalid, disabled
 * resets even when NaN. */
static void test_timing_and_special_values(void)
{
    fix_t f;
    fix_init(&f, 2, 0.3);
    ssb_transition_t out[8];
    f.value[0] = raw(&f, 0, 1.5); /* past warning only */
    f.value[1] = raw(&f, 1, 0.0);
    for (int k = 0; k < 3; k++)
        CHECK(upd(&f, 0.1 * k, out, 8) == 0);
    CHECK(upd(&f, 0.1 * 3, out, 8) == 1 && out[0].level == 0 && out[0].channel == 0);
    f.value[0] = raw(&f, 0, 0.9); /* inside the hysteresis band (1 - 0.25): stays */
    CHECK(upd(&f, 0.4, out, 8) == 0 && f.asserted[0] == 1 && isnan(f.start[0]));
    f.value[0] = -f.sign[0] * INFINITY; /* -inf in sign space clears */
    CHECK(upd(&f, 0.5, out, 8) == 1 && out[0].asserted == 0);
    f.value[1] = f.sign[1] * INFINITY; /* +inf in sign space: past every level */
    for (int k = 6; k < 9; k++)
        CHECK(upd(&f, 0.1 * k, out, 8) == 0);
    CHECK(upd(&f, 0.9, out, 8) == 3);
    f.value[1] = 0.0;
    f.offset[1] = NAN; /* NaN offset: the compared value is NaN: invalid, frozen */
    CHECK(upd(&f, 1.0, out, 8) == 1 && out[0].level == SSB_PROT_INVALID && out[0].asserted == 1);
    CHECK(out[0].value == 0.0); /* the raw value is reported */
    CHECK(f.asserted[0 * 2 + 1] == 1 && f.asserted[2 * 2 + 1] == 1);
    f.present[1] = 0; /* not present: NaN is not invalid (clears the flag), still frozen */
    CHECK(upd(&f, 1.1, out, 8) == 1 && out[0].level == SSB_PROT_INVALID && out[0].asserted == 0);
    f.enabled[1] = 0; /* disabled: every level clears even though NaN */
    CHECK(upd(&f, 1.2, out, 8) == 3);
    for (int l = 0; l < 3; l++)
        CHECK(out[l].asserted == 0 && f.asserted[l * 2 + 1] == 0 && isnan(f.start[l * 2 + 1]));
    /* NaN time: timers start at NaN and never elapse (garbage in, nothing asserted). */
    f.enabled[1] = 1;
    f.offset[1] = 0.0;
    f.present[1] = 1;
    f.value[1] = f.sign[1] * 5.0;
    CHECK(upd(&f, NAN, out, 8) == 0);
    CHECK(upd(&f, 2.0, out, 8) == 0);
    fix_free(&f);
}

/* Long random runs for every size: a small output buffer (counting pass) must give exactly the
 * same transitions and state as the worst-case buffer, or fail with nothing changed. */
static void test_random_runs(size_t n)
{
    fix_t a, b;
    const double deb[] = {0.0, 0.1, 0.2, 0.3, 1.0};
    fix_init(&a, n, deb[n % 5]);
    fix_init(&b, n, deb[n % 5]);
    ssb_transition_t *oa = malloc(4 * n * sizeof *oa);
    const size_t small = n / 3 + 1;
    ssb_transition_t *ob = malloc(small * sizeof *ob);
    const int ticks = n <= 20 ? 600 : 120;
    for (int k = 0; k < ticks; k++) {
        for (size_t i = 0; i < n; i++) {
            double x = 4.0 * urand() - 0.5;
            const double r = urand();
            if (r < 0.05)
                x = NAN;
            else if (r < 0.07)
                x = INFINITY;
            else if (r < 0.08)
                x = -INFINITY;
            a.value[i] = b.value[i] = raw(&a, i, x);
            a.offset[i] = b.offset[i] = urand() < 0.1 ? 0.3 : 0.0;
            if (urand() < 0.02)
                a.enabled[i] = b.enabled[i] = (uint8_t)!a.enabled[i];
            a.present[i] = b.present[i] = urand() > 0.03;
        }
        const double t = 0.1 * k;
        const int ca = upd(&a, t, oa, 4 * n);
        CHECK(ca >= 0 && ca <= (int)(4 * n));
        const int cb = upd(&b, t, ob, small);
        if (cb == SSB_PROT_ERR_FULL) {
            CHECK(ca > (int)small);
            CHECK(upd(&b, t, oa + 0, 0) == SSB_PROT_ERR_FULL || ca == 0);
            ssb_transition_t *ob2 = malloc((size_t)ca * sizeof *ob2);
            CHECK(upd(&b, t, ob2, (size_t)ca) == ca); /* exactly enough room */
            CHECK(same_transitions(ob2, oa, ca));
            free(ob2);
        } else {
            CHECK(cb == ca);
            CHECK(same_transitions(ob, oa, ca < cb ? ca : cb));
        }
        CHECK(same_bits(a.start, b.start, 3 * n));
        CHECK(memcmp(a.asserted, b.asserted, 3 * n) == 0);
        CHECK(memcmp(a.invalid, b.invalid, n) == 0);
        for (size_t i = 0; i < 3 * n; i++)
            CHECK(a.asserted[i] <= 1);
        for (size_t i = 0; i < n; i++)
            CHECK(a.invalid[i] <= 1);
    }
    free(oa);
    free(ob);
    fix_free(&a);
    fix_free(&b);
}

/* ------------------------------------------------------------------ formatter */

static void test_format(size_t n)
{
    double *v = malloc((n ? n : 1) * sizeof(double));
    signed char *d = malloc(n ? n : 1);
    const double special[] = {NAN, INFINITY, -INFINITY, -0.0, 0.0, 1e300, -1e300, 5e-324,
                              4503599627370496.0, 0.125, -2.5, 1e15};
    for (size_t i = 0; i < n; i++) {
        v[i] = (urand() < 0.2) ? special[i % 12] : (urand() - 0.5) * pow(10.0, 30 * urand() - 10);
        d[i] = (signed char)((int)(urand() * 11) - 1); /* -1 .. 9 */
    }
    const size_t big = n * SSB_FMT_FIELD_MAX + 1;
    char *out = malloc(big);
    const int64_t len = ssb_format_row(v, d, n, out, big);
    CHECK(len >= 1 && (size_t)len <= big && out[len - 1] == '\n');
    size_t commas = 0;
    for (int64_t k = 0; k < len; k++)
        commas += out[k] == ',';
    CHECK(commas == (n ? n - 1 : 0));
    /* Exact-size buffers: the same row fits; one byte less fails inside the buffer. */
    char *exact = malloc((size_t)len);
    CHECK(ssb_format_row(v, d, n, exact, (size_t)len) == len);
    CHECK(memcmp(exact, out, (size_t)len) == 0);
    free(exact);
    for (size_t cap = 0; cap < (size_t)len; cap += 1 + cap / 2) {
        char *tight = cap ? malloc(cap) : NULL;
        CHECK(ssb_format_row(v, d, n, tight ? tight : out, cap) == SSB_FMT_ERR_FULL);
        free(tight);
    }
    /* The same values as random segments (separately allocated, some empty): the same row. */
    {
        enum { MAX_SEG = 8 };
        const double *seg[MAX_SEG];
        double *copies[MAX_SEG];
        size_t seg_len[MAX_SEG];
        size_t n_seg = 0, at = 0;
        while (n_seg < MAX_SEG) {
            size_t len_k = n_seg + 1 == MAX_SEG ? n - at : (size_t)(urand() * (double)(n - at + 1));
            if (len_k > n - at)
                len_k = n - at;
            copies[n_seg] = len_k ? malloc(len_k * sizeof(double)) : NULL;
            if (len_k)
                memcpy(copies[n_seg], v + at, len_k * sizeof(double));
            seg[n_seg] = copies[n_seg];
            seg_len[n_seg++] = len_k;
            at += len_k;
        }
        char *seg_out = malloc(big);
        CHECK(ssb_format_segments(seg, seg_len, n_seg, d, seg_out, big) == len);
        CHECK(memcmp(seg_out, out, (size_t)len) == 0);
        if (len > 1)
            CHECK(ssb_format_segments(seg, seg_len, n_seg, d, seg_out, (size_t)len - 1)
                  == SSB_FMT_ERR_FULL);
        CHECK(ssb_format_segments(NULL, seg_len, n_seg, d, seg_out, big) == SSB_FMT_ERR_NULL);
        for (size_t k = 0; k < n_seg; k++) {
            if (seg_len[k]) {
                seg[k] = NULL;
                CHECK(ssb_format_segments(seg, seg_len, n_seg, d, seg_out, big)
                      == SSB_FMT_ERR_NULL);
                seg[k] = copies[k];
                break;
            }
        }
        for (size_t k = 0; k < n_seg; k++)
            free(copies[k]);
        free(seg_out);
    }
    /* every field alone fits SSB_FMT_FIELD_MAX and parses back */
    char field[SSB_FMT_FIELD_MAX];
    for (size_t i = 0; i < n; i++) {
        const int fl = ssb_format_value(v[i], d[i], field);
        CHECK(fl > 0 && fl <= SSB_FMT_FIELD_MAX); /* exits otherwise */
        char text[SSB_FMT_FIELD_MAX + 1];
        memcpy(text, field, (size_t)fl);
        text[fl] = 0;
        const double back = strtod(text, NULL);
        if (isnan(v[i]))
            CHECK(isnan(back));
        else if (isinf(v[i]))
            CHECK(back == v[i]);
        else if (d[i] >= 0 && fabs(v[i]) * pow(10.0, d[i]) < 4503599627370496.0)
            CHECK(fabs(back - v[i]) <= 0.5 * pow(10.0, -d[i]) * (1 + 1e-9) + fabs(v[i]) * 1e-15);
        else if (d[i] >= 0)
            CHECK(back == v[i]); /* %.17g fallback: exact */
        else
            CHECK(fabs(back - v[i]) <= fabs(v[i]) * 1e-9);
        CHECK(strcmp(text, "-0") != 0);
    }
    if (n) {
        d[n - 1] = 10;
        CHECK(ssb_format_row(v, d, n, out, big) == SSB_FMT_ERR_PARAM);
        d[n - 1] = -2;
        CHECK(ssb_format_row(v, d, n, out, big) == SSB_FMT_ERR_PARAM);
        CHECK(ssb_format_row(NULL, d, n, out, big) == SSB_FMT_ERR_NULL);
        CHECK(ssb_format_row(v, NULL, n, out, big) == SSB_FMT_ERR_NULL);
    }
    CHECK(ssb_format_row(v, d, n, NULL, big) == SSB_FMT_ERR_NULL);
    free(out);
    free(v);
    free(d);
}

/* ssb_protect_leak_low: exact-size heap arrays of 0..300 cells, NaN/Inf passed through, the
 * NULL path writes nothing. */
static void test_leak_low(void)
{
    double one = 1.0, out1 = 7.0;
    CHECK(ssb_protect_leak_low(NULL, &one, -3.0, &out1, 1) == SSB_PROT_ERR_NULL);
    CHECK(ssb_protect_leak_low(&one, &one, -3.0, NULL, 1) == SSB_PROT_ERR_NULL);
    CHECK(out1 == 7.0);
    CHECK(ssb_protect_leak_low(NULL, NULL, -3.0, NULL, 0) == 0);
    for (size_t n = 1; n <= 300; n++) {
        double *leak = malloc(n * sizeof *leak), *sigma = malloc(n * sizeof *sigma);
        double *low = malloc(n * sizeof *low);
        for (size_t i = 0; i < n; i++) {
            leak[i] = i % 17 == 3 ? NAN : 0.01 * ((double)(i % 7) - 3.0);
            sigma[i] = i % 19 == 5 ? INFINITY : 0.001 * (double)(i % 5);
        }
        CHECK(ssb_protect_leak_low(leak, sigma, -3.0, low, n) == 0);
        for (size_t i = 0; i < n; i++) {
            double want = sigma[i] * -3.0;
            want += leak[i];
            CHECK((isnan(want) && isnan(low[i])) || want == low[i]);
        }
        free(leak), free(sigma), free(low);
    }
}

/* ssb_protect_tick: the same state and transitions as the gather, the current pair with its
 * derates written by hand, and ssb_protect_update, on random runs of 2..60 channels; its
 * error paths. */
static double derate_ref(double limit, double max_static)
{
    if (!isfinite(limit))
        return 0.0;
    double d = max_static - limit;
    if (d < 0.0)
        d = 0.0;
    return d > max_static ? max_static : d;
}

static void test_tick(void)
{
    for (size_t n = 2; n <= 60; n += 3) {
        fix_t a, b;
        fix_init(&a, n, 0.2);
        fix_init(&b, n, 0.2);
        const size_t n_src_vals = n - 2; /* channels 0 .. n-3 gathered, the last two current */
        double *src0 = malloc((n_src_vals ? n_src_vals : 1) * sizeof(double));
        const double *src[1] = {src0};
        size_t len[1] = {n_src_vals}, off[1] = {0};
        ssb_protect_tick_t tk = {&a.lim, &a.st, &a.in, a.value, a.offset, src, len, off, 1,
                                 n - 2, n - 1, 50.0, 80.0};
        ssb_transition_t *oa = malloc(4 * n * sizeof *oa), *ob = malloc(4 * n * sizeof *ob);
        for (size_t i = 0; i < n; i++)
            a.present[i] = b.present[i] = 1;
        for (int k = 0; k < 300; k++) {
            for (size_t i = 0; i < n_src_vals; i++) {
                const double r = urand();
                src0[i] = r < 0.03 ? NAN : raw(&a, i, 4.0 * urand() - 0.5);
            }
            const double cur = urand() < 0.03 ? NAN : 200.0 * (urand() - 0.5);
            const double cl = urand() < 0.05 ? NAN : 60.0 * urand();
            const double dl = urand() < 0.05 ? INFINITY : 90.0 * urand();
            const double t = 0.1 * k;
            const int ca = ssb_protect_tick(&tk, t, cur, cl, dl, oa, 4 * n);
            memcpy(b.value, src0, n_src_vals * sizeof(double));
            b.value[n - 2] = cur;
            b.value[n - 1] = -cur;
            b.offset[n - 2] = derate_ref(cl, 50.0);
            b.offset[n - 1] = derate_ref(dl, 80.0);
            const int cb = upd(&b, t, ob, 4 * n);
            CHECK(ca == cb && ca >= 0);
            CHECK(same_transitions(oa, ob, ca));
            CHECK(memcmp(a.asserted, b.asserted, 3 * n) == 0);
            CHECK(memcmp(a.invalid, b.invalid, n) == 0);
            for (size_t i = 0; i < 3 * n; i++)
                CHECK((isnan(a.start[i]) && isnan(b.start[i])) || a.start[i] == b.start[i]);
        }
        tk.i_discharge = n; /* past the channels: refused, nothing written */
        CHECK(ssb_protect_tick(&tk, 99.0, 1.0, 1.0, 1.0, oa, 4 * n) == SSB_PROT_ERR_SIZE);
        tk.i_discharge = n - 1;
        CHECK(ssb_protect_tick(NULL, 99.0, 1.0, 1.0, 1.0, oa, 4 * n) == SSB_PROT_ERR_NULL);
        tk.value = NULL;
        CHECK(ssb_protect_tick(&tk, 99.0, 1.0, 1.0, 1.0, oa, 4 * n) == SSB_PROT_ERR_NULL);
        free(src0), free(oa), free(ob);
        fix_free(&a);
        fix_free(&b);
    }
}

/* ssb_protect_gather: ranges copied exactly (one source feeding two ranges), errors leave the
 * destination untouched, nothing read or written out of bounds (ASan). */
static void test_gather(void)
{
    const size_t n = 11;
    double *value = malloc(n * sizeof(double));
    double *a = malloc(3 * sizeof(double)), *b = malloc(4 * sizeof(double));
    for (size_t i = 0; i < n; i++)
        value[i] = -1.0;
    for (size_t i = 0; i < 3; i++)
        a[i] = 10.0 + (double)i;
    for (size_t i = 0; i < 4; i++)
        b[i] = 20.0 + (double)i;
    const double *src[3] = {a, a, b};
    size_t len[3] = {3, 3, 4};
    size_t off[3] = {0, 3, 7};
    CHECK(ssb_protect_gather(value, n, src, len, off, 3) == 0);
    const double want[11] = {10, 11, 12, 10, 11, 12, -1, 20, 21, 22, 23};
    for (size_t i = 0; i < n; i++)
        CHECK(value[i] == want[i]);
    off[2] = 8; /* 8 + 4 > 11 */
    CHECK(ssb_protect_gather(value, n, src, len, off, 3) == SSB_PROT_ERR_SIZE);
    off[2] = (size_t)-1;
    CHECK(ssb_protect_gather(value, n, src, len, off, 3) == SSB_PROT_ERR_SIZE);
    off[2] = 7;
    src[1] = NULL;
    CHECK(ssb_protect_gather(value, n, src, len, off, 3) == SSB_PROT_ERR_NULL);
    len[1] = 0; /* an empty range may have no source */
    CHECK(ssb_protect_gather(value, n, src, len, off, 3) == 0);
    CHECK(ssb_protect_gather(NULL, n, src, len, off, 3) == SSB_PROT_ERR_NULL);
    CHECK(ssb_protect_gather(value, n, NULL, len, off, 3) == SSB_PROT_ERR_NULL);
    CHECK(ssb_protect_gather(value, n, NULL, NULL, NULL, 0) == 0);
    for (size_t i = 0; i < n; i++)
        CHECK(value[i] == want[i]);
    free(value);
    free(a);
    free(b);
}

/* ssb_format_tick: head (5) and tail (4n + 5) exactly sized, the row of the segments
 * [head, cells, tail] as ssb_format_segments gives it from the same values. */
static void test_format_tick(size_t n_stacks)
{
    size_t n_tail = 4 * n_stacks + 5, n_cells = 7, n = 5 + n_cells + n_tail;
    double *head = calloc(5, sizeof(double)), *tail = calloc(n_tail, sizeof(double));
    double *cells = calloc(n_cells, sizeof(double)), *flat = calloc(n, sizeof(double));
    uint32_t *masks = calloc(n_stacks ? n_stacks : 1, sizeof(uint32_t));
    signed char *d = calloc(n, 1);
    size_t cap = n * SSB_FMT_FIELD_MAX + 1;
    char *out = malloc(cap), *want = malloc(cap);
    for (size_t i = 0; i < n_cells; i++)
        cells[i] = 3.5 + 0.01 * (double)i;
    for (size_t k = 0; k < n_stacks; k++)
        masks[k] = 0xFFFFFFFFu >> (k % 32);
    for (size_t i = 0; i < n; i++)
        d[i] = (signed char)(i % 11) - 1;
    const double *seg[3] = {head, cells, tail};
    size_t seg_len[3] = {5, n_cells, n_tail};
    int64_t len = ssb_format_tick(head, tail, n_stacks, 1.5, 2.0, -3.25, NAN, INFINITY, 10.0,
                                  20.0, 3.0, masks, 1.0, 1e-4, seg, seg_len, 3, d, out, cap);
    CHECK(len > 0);
    CHECK(head[0] == 1.5 && head[3] != head[3] && tail[3 * n_stacks + 2] == 3.0);
    CHECK(tail[4 * n_stacks + 4] == 1e-4 && (n_stacks == 0 || tail[3 * n_stacks + 3] == 4294967295.0));
    memcpy(flat, head, 5 * sizeof(double));
    memcpy(flat + 5, cells, n_cells * sizeof(double));
    memcpy(flat + 5 + n_cells, tail, n_tail * sizeof(double));
    CHECK(ssb_format_row(flat, d, n, want, cap) == len && memcmp(out, want, (size_t)len) == 0);
    /* ssb_fill_tick: the same head and tail as the format's fill */
    double *head2 = calloc(5, sizeof(double)), *tail2 = calloc(n_tail, sizeof(double));
    CHECK(ssb_fill_tick(head2, tail2, n_stacks, 1.5, 2.0, -3.25, NAN, INFINITY, 10.0, 20.0, 3.0,
                        masks, 1.0, 1e-4) == 0);
    CHECK(memcmp(head, head2, 5 * sizeof(double)) == 0);
    CHECK(memcmp(tail, tail2, n_tail * sizeof(double)) == 0);
    CHECK(ssb_fill_tick(head2, NULL, n_stacks, 0, 0, 0, 0, 0, 0, 0, 0, masks, 0, 0)
          == SSB_FMT_ERR_NULL);
    /* ssb_gather_segments: every column, then every third, as the flat row has them */
    size_t *cols = calloc(n, sizeof(size_t));
    double *got = calloc(n, sizeof(double));
    for (size_t i = 0; i < n; i++)
        cols[i] = i;
    CHECK(ssb_gather_segments(seg, seg_len, 3, cols, n, got) == 0);
    CHECK(memcmp(got, flat, n * sizeof(double)) == 0);
    size_t m = 0;
    for (size_t i = 0; i < n; i += 3)
        cols[m++] = i;
    CHECK(ssb_gather_segments(seg, seg_len, 3, cols, m, got) == 0);
    for (size_t j = 0; j < m; j++)
        CHECK(memcmp(&got[j], &flat[3 * j], sizeof(double)) == 0);
    cols[0] = n; /* past the row */
    CHECK(ssb_gather_segments(seg, seg_len, 3, cols, 1, got) == SSB_FMT_ERR_PARAM);
    cols[0] = 2;
    cols[1] = 2; /* not ascending */
    CHECK(ssb_gather_segments(seg, seg_len, 3, cols, 2, got) == SSB_FMT_ERR_PARAM);
    CHECK(ssb_gather_segments(seg, seg_len, 3, NULL, 1, got) == SSB_FMT_ERR_NULL);
    CHECK(ssb_gather_segments(NULL, NULL, 0, NULL, 0, NULL) == 0);
    free(head2);
    free(tail2);
    free(cols);
    free(got);
    CHECK(ssb_format_tick(NULL, tail, n_stacks, 0, 0, 0, 0, 0, 0, 0, 0, masks, 0, 0, seg,
                          seg_len, 3, d, out, cap) == SSB_FMT_ERR_NULL);
    if (n_stacks)
        CHECK(ssb_format_tick(head, tail, n_stacks, 0, 0, 0, 0, 0, 0, 0, 0, NULL, 0, 0, seg,
                              seg_len, 3, d, out, cap) == SSB_FMT_ERR_NULL);
    CHECK(ssb_format_tick(head, tail, n_stacks, 1.5, 2.0, -3.25, NAN, INFINITY, 10.0, 20.0,
                          3.0, masks, 1.0, 1e-4, seg, seg_len, 3, d, out, (size_t)len - 1)
          == SSB_FMT_ERR_FULL);
    free(head);
    free(tail);
    free(cells);
    free(flat);
    free(masks);
    free(d);
    free(out);
    free(want);
}

int main(void)
{
    test_errors();
    for (size_t n = 0; n <= 40; n++)
        test_format_tick(n);
    test_gather();
    test_leak_low();
    test_tick();
    test_timing_and_special_values();
    for (size_t n = 1; n <= 300; n++) {
        test_full_buffer(n);
        test_random_runs(n);
    }
    for (size_t n = 0; n <= 300; n++)
        test_format(n);
    char one[1];
    CHECK(ssb_format_row(NULL, NULL, 0, one, 1) == 1 && one[0] == '\n');
    CHECK(ssb_format_row(NULL, NULL, 0, one, 0) == SSB_FMT_ERR_FULL);
    CHECK(ssb_format_value(1.0, 3, NULL) == SSB_FMT_ERR_NULL);
    if (failures) {
        fprintf(stderr, "%d checks failed\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
