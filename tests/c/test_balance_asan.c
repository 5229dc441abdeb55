/* ssb_balance under AddressSanitizer + UBSan: every buffer exactly sized on the heap, error
 * paths (nothing written), 1..6 stacks of 1..32 cells with 0..4 thermistors, NaN/Inf inputs,
 * duty phases; the invariants of every decision (masks only of selected cells, bleed only
 * while balancing, v / R). The decisions themselves: tests/test_balancing_c.py. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ssb_balance.h"

#include "check.h"

static void *xalloc(size_t n, size_t size) { return calloc(n ? n : 1, size); }

static void run(size_t ns, int voltage_mode, int steps)
{
    size_t *cs = xalloc(ns + 1, sizeof *cs), *ts = xalloc(ns + 1, sizeof *ts);
    for (size_t k = 0; k < ns; k++) {
        cs[k + 1] = cs[k] + 1 + (size_t)(check_urand() * 32.0);
        ts[k + 1] = ts[k] + (size_t)(check_urand() * 5.0);
    }
    size_t n = cs[ns], nt = ts[ns];
    ssb_bal_config_t c = {n, ns, cs, ts, 0.02, 0.005, 45.0, 3.0, 0.6, 10.0, 1e-9, 33.0,
                          voltage_mode, 4.1};
    double *x = xalloc(n, sizeof *x), *v = xalloc(n, sizeof *v), *bleed = xalloc(n, sizeof *bleed);
    double *t = nt ? xalloc(nt, sizeof *t) : NULL;
    uint8_t *sel = xalloc(n, 1);
    uint32_t *masks = xalloc(ns, sizeof *masks);
    int32_t reason = -1;
    for (int s = 0; s < steps; s++) {
        double spread = (s / 50) % 2 ? 0.05 : 0.001;
        for (size_t i = 0; i < n; i++) {
            double u = check_urand();
            x[i] = u < 0.02 ? NAN : (u < 0.03 ? INFINITY : 0.5 + spread * check_urand());
            v[i] = u < 0.05 ? NAN : 3.9 + 0.3 * check_urand();
        }
        if (s % 40 == 3)
            for (size_t i = 0; i < n; i++)
                x[i] = NAN;
        for (size_t j = 0; j < nt; j++)
            t[j] = check_urand() < 0.05 ? NAN : 20.0 + 30.0 * check_urand();
        CHECK(ssb_balance(&c, 0.1 * s, x, v, t, sel, masks, bleed, &reason) == 0);
        CHECK(reason >= SSB_BAL_BALANCING && reason <= SSB_BAL_DUTY_OFF);
        for (size_t k = 0; k < ns; k++) {
            for (size_t i = cs[k]; i < cs[k + 1]; i++) {
                int bit = (masks[k] >> (i - cs[k])) & 1u;
                CHECK(sel[i] <= 1);
                CHECK(bit == (reason == SSB_BAL_BALANCING && sel[i]));
                CHECK(bit ? bleed[i] == v[i] / 33.0 : bleed[i] == 0.0);
                if (reason <= SSB_BAL_BALANCED && reason != SSB_BAL_BALANCING)
                    CHECK(sel[i] == 0);
            }
            if (cs[k + 1] - cs[k] < 32)
                CHECK(masks[k] >> (cs[k + 1] - cs[k]) == 0);
        }
    }
    void *bufs[] = {cs, ts, x, v, bleed, t, sel, masks};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
}

/* ssb_balance_soc_input: exact-size heap arrays of 1..64 cells; NaN sigma and the limit
 * itself; the NULL path writes nothing. */
static void soc_input(void)
{
    double one = 0.5, out1 = 9.0;
    CHECK(ssb_balance_soc_input(&one, NULL, 0.01, &out1, 1) == SSB_BAL_ERR_NULL);
    CHECK(out1 == 9.0);
    CHECK(ssb_balance_soc_input(NULL, NULL, 0.01, NULL, 0) == 0);
    for (size_t n = 1; n <= 64; n++) {
        double *soc = malloc(n * sizeof *soc), *sig = malloc(n * sizeof *sig);
        double *out = malloc(n * sizeof *out);
        for (size_t i = 0; i < n; i++) {
            soc[i] = 0.01 * (double)i;
            sig[i] = i % 5 == 0 ? NAN : (i % 5 == 1 ? 0.01 : 0.004 * (double)(i % 5));
        }
        CHECK(ssb_balance_soc_input(soc, sig, 0.01, out, n) == 0);
        for (size_t i = 0; i < n; i++)
            CHECK(sig[i] <= 0.01 ? out[i] == soc[i] : isnan(out[i]));
        free(soc), free(sig), free(out);
    }
}

int main(void)
{
    soc_input();
    size_t cs[] = {0, 4}, ts[] = {0, 2};
    double x[4] = {0.5, 0.6, 0.5, 0.5}, v[4] = {4.0, 4.0, 4.0, 4.0}, t[2] = {25.0, 25.0};
    double bleed[4] = {9, 9, 9, 9};
    uint8_t sel[4] = {0};
    uint32_t masks[1] = {7};
    int32_t reason = -1;
    ssb_bal_config_t c = {4, 1, cs, ts, 0.02, 0.005, 45.0, 3.0, 0.5, 10.0, 1e-9, 33.0, 0, 4.1};
    /* error paths: nothing written */
    CHECK(ssb_balance(NULL, 0.0, x, v, t, sel, masks, bleed, &reason) == SSB_BAL_ERR_NULL);
    CHECK(ssb_balance(&c, 0.0, x, v, NULL, sel, masks, bleed, &reason) == SSB_BAL_ERR_NULL);
    CHECK(ssb_balance(&c, 0.0, x, v, t, sel, masks, bleed, NULL) == SSB_BAL_ERR_NULL);
    ssb_bal_config_t bad = c;
    bad.n_cells = 5;
    CHECK(ssb_balance(&bad, 0.0, x, v, t, sel, masks, bleed, &reason) == SSB_BAL_ERR_SIZE);
    size_t big[] = {0, 33};
    bad = c;
    bad.n_cells = 33;
    bad.cell_start = big;
    CHECK(ssb_balance(&bad, 0.0, x, v, t, sel, masks, bleed, &reason) == SSB_BAL_ERR_SIZE);
    CHECK(masks[0] == 7 && bleed[0] == 9 && reason == -1);
    /* one bleeding cell in the duty window, then duty off (selection kept), then a hot stack */
    CHECK(ssb_balance(&c, 1.0, x, v, t, sel, masks, bleed, &reason) == 0);
    CHECK(reason == SSB_BAL_BALANCING && masks[0] == 2u && sel[1] == 1 && bleed[1] == 4.0 / 33.0);
    CHECK(bleed[0] == 0.0);
    CHECK(ssb_balance(&c, 7.0, x, v, t, sel, masks, bleed, &reason) == 0);
    CHECK(reason == SSB_BAL_DUTY_OFF && masks[0] == 0 && sel[1] == 1 && bleed[1] == 0.0);
    t[1] = NAN;
    CHECK(ssb_balance(&c, 1.0, x, v, t, sel, masks, bleed, &reason) == 0);
    CHECK(reason == SSB_BAL_NONE_SELECTED && sel[1] == 0);
    for (size_t ns = 1; ns <= 6; ns++) {
        run(ns, 0, 400);
        run(ns, 1, 200);
    }
    printf("ok\n");
    return 0;
}
