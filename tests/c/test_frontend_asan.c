/* ssb_fe_step under AddressSanitizer + UBSan: every buffer exactly sized on the heap (an
 * access one past the end aborts), error paths, sizes 1..40 cells, NaN/Inf inputs and raw
 * counts at the int64 extremes, open taps on odd and even cell counts, stuck counting. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ssb_frontend.h"

#include "check.h"

typedef struct {
    ssb_fe_config_t cfg;
    ssb_fe_state_t st;
    double *gain, *bias, *lut, *lo, *hi, *values, *clean;
    int64_t *sentinel, *raw;
    uint8_t *bad, *stuck, *jump;
} rig_t;

static void *xalloc(size_t n, size_t size) { return calloc(n ? n : 1, size); }

static void rig_init(rig_t *r, size_t nc, size_t nt, size_t nl)
{
    size_t n = nc + nt + nl;
    memset(r, 0, sizeof *r);
    r->gain = xalloc(n, sizeof(double));
    r->bias = xalloc(n, sizeof(double));
    r->lo = xalloc(n, sizeof(double));
    r->hi = xalloc(n, sizeof(double));
    r->sentinel = xalloc(n, sizeof(int64_t));
    r->lut = xalloc(SSB_FE_LUT_SIZE, sizeof(double));
    r->raw = xalloc(n, sizeof(int64_t));
    r->values = xalloc(n, sizeof(double));
    r->clean = xalloc(n, sizeof(double));
    r->bad = xalloc(n, 1);
    r->stuck = xalloc(nl, 1);
    r->jump = xalloc(nc, 1);
    for (size_t i = 0; i < n; i++) {
        int cell = i < nc, lc = i >= nc + nt;
        r->gain[i] = cell ? 1e-4 : (lc ? 0.01 : 0.0);
        r->bias[i] = 0.0;
        r->lo[i] = cell ? 1.5 : (lc ? 0.0 : -40.0);
        r->hi[i] = cell ? 5.0 : (lc ? 8000.0 : 125.0);
        r->sentinel[i] = lc ? INT32_MIN : 0xFFFF;
    }
    for (size_t k = 0; k < SSB_FE_LUT_SIZE; k++)
        r->lut[k] = k == 0xFFFF ? NAN : 150.0 - (double)k * 0.004;
    r->cfg = (ssb_fe_config_t){nc, nt, nl, r->gain, r->bias, r->sentinel, r->lut, r->lo, r->hi,
                               0.15, 0.1, 0.01, 20};
    r->st.same_count = xalloc(nl, sizeof(int64_t));
    r->st.last_raw_lc = xalloc(nl, sizeof(int64_t));
    r->st.last_v = xalloc(nc, sizeof(double));
    r->st.scratch = xalloc(nc, sizeof(double));
    for (size_t i = 0; i < nc; i++)
        r->st.last_v[i] = NAN;
    r->st.last_i = NAN;
}

static void rig_free(rig_t *r)
{
    void *p[] = {r->gain, r->bias, r->lut, r->lo, r->hi, r->values, r->clean, r->sentinel,
                 r->raw, r->bad, r->stuck, r->jump, r->st.same_count, r->st.last_raw_lc,
                 r->st.last_v, r->st.scratch};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        free(p[i]);
}

static int step(rig_t *r, double current_a, uint32_t *sum)
{
    return ssb_fe_step(&r->cfg, &r->st, r->raw, current_a, r->values, r->clean, r->bad,
                       r->stuck, r->jump, sum);
}

static void fill(rig_t *r, size_t nc, size_t nt, size_t nl, int64_t lc_raw)
{
    for (size_t i = 0; i < nc; i++)
        r->raw[i] = 37000;            /* 3.7 V */
    for (size_t i = nc; i < nc + nt; i++)
        r->raw[i] = 31250;            /* 25 C */
    for (size_t i = nc + nt; i < nc + nt + nl; i++)
        r->raw[i] = lc_raw;
}

int main(void)
{
    uint32_t sum = 0;
    /* Error paths: nothing written. */
    {
        rig_t r;
        rig_init(&r, 4, 2, 2);
        fill(&r, 4, 2, 2, 100000);
        CHECK(ssb_fe_step(NULL, &r.st, r.raw, 0.0, r.values, r.clean, r.bad, r.stuck, r.jump,
                          &sum) == SSB_FE_ERR_NULL);
        CHECK(ssb_fe_step(&r.cfg, &r.st, r.raw, 0.0, r.values, r.clean, r.bad, NULL, r.jump,
                          &sum) == SSB_FE_ERR_NULL);
        ssb_fe_config_t bad = r.cfg;
        bad.stuck_samples = 0;
        CHECK(ssb_fe_step(&bad, &r.st, r.raw, 0.0, r.values, r.clean, r.bad, r.stuck, r.jump,
                          &sum) == SSB_FE_ERR_PARAM);
        bad = r.cfg;
        bad.open_tap_dev_v = NAN;
        CHECK(ssb_fe_step(&bad, &r.st, r.raw, 0.0, r.values, r.clean, r.bad, r.stuck, r.jump,
                          &sum) == SSB_FE_ERR_PARAM);
        bad = r.cfg;
        bad.n_cells = bad.n_thermistors = bad.n_load_cells = 0;
        CHECK(ssb_fe_step(&bad, &r.st, r.raw, 0.0, r.values, r.clean, r.bad, r.stuck, r.jump,
                          &sum) == SSB_FE_ERR_SIZE);
        bad = r.cfg;
        bad.ntc_lut = NULL;
        CHECK(ssb_fe_step(&bad, &r.st, r.raw, 0.0, r.values, r.clean, r.bad, r.stuck, r.jump,
                          &sum) == SSB_FE_ERR_NULL);
        CHECK(r.st.have_last_raw == 0);
        rig_free(&r);
    }
    /* Sizes, odd and even cell counts, extremes. */
    for (size_t nc = 1; nc <= 40; nc++) {
        for (size_t nl = 0; nl <= 3; nl++) {
            size_t nt = nc % 3;
            rig_t r;
            rig_init(&r, nc, nt, nl);
            fill(&r, nc, nt, nl, 100000);
            CHECK(step(&r, -2.0, &sum) == 0 && sum == 0);
            /* Stuck after exactly stuck_samples equal counts. */
            for (int k = 1; k < 20; k++)
                CHECK(step(&r, -2.0, &sum) == 0 && !(sum & SSB_FE_ANY_STUCK));
            CHECK(step(&r, -2.0, &sum) == 0);
            CHECK(nl == 0 || ((sum & SSB_FE_ANY_STUCK) && r.stuck[0] && isnan(r.clean[nc + nt])));
            /* Open tap between the two middle cells. */
            if (nc >= 3) {
                size_t i = nc / 2 - 1;
                r.raw[i] = 33000;
                r.raw[i + 1] = 41000;
                CHECK(step(&r, -2.0, &sum) == 0 && (sum & SSB_FE_ANY_BAD));
                CHECK(r.bad[i] && r.bad[i + 1] && isnan(r.clean[i]) && isnan(r.clean[i + 1]));
                for (size_t j = 0; j < nc; j++)
                    CHECK(j == i || j == i + 1 || !r.bad[j]);
                fill(&r, nc, nt, nl, 100001);
            }
            /* A jump: one cell +0.5 V at the same current. */
            CHECK(step(&r, -2.0, &sum) == 0);
            r.raw[nc - 1] = 42000;
            if (nc == 2) /* two cells 0.5 V apart are the open-tap signature, not a jump */
                CHECK(step(&r, -2.0, &sum) == 0 && (sum & SSB_FE_ANY_BAD) && !r.jump[1]);
            else
                CHECK(step(&r, -2.0, &sum) == 0 && (sum & SSB_FE_ANY_JUMP) && r.jump[nc - 1]);
            /* Sentinels, extremes and non-finite currents never fault the call. */
            for (size_t j = 0; j < nc + nt + nl; j++)
                r.raw[j] = (j % 3 == 0) ? r.sentinel[j] : ((j % 3 == 1) ? INT64_MAX : INT64_MIN);
            CHECK(step(&r, NAN, &sum) == 0 && (sum & SSB_FE_ANY_BAD));
            CHECK(step(&r, INFINITY, &sum) == 0);
            CHECK(step(&r, -INFINITY, &sum) == 0);
            for (size_t j = 0; j < nc; j++)
                CHECK(isnan(r.clean[j]) && !r.jump[j]);
            rig_free(&r);
        }
    }
    printf("ok\n");
    return 0;
}
