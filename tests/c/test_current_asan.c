/* ssb_current under AddressSanitizer + UBSan: every state array exactly sized on the heap,
 * NULL paths, 1..8 stacks, NaN/Inf currents and medians, long random runs; the invariants
 * (a change only when the raised flag flips, the CUSUMs within [0, 2 limit]). The decisions
 * themselves: tests/test_current_check_c.py. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ssb_current.h"

#include "check.h"

static double *dalloc(size_t n)
{
    double *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = NAN;
    return p;
}

static void run(size_t n, int steps)
{
    ssb_cc_config_t c = {.rest_threshold_a = 0.5, .rest_debounce_s = 1.0,
                         .cusum_allowance_v = 0.005, .cusum_allowance_rel = 0.03,
                         .cusum_limit_v_s = 0.05, .sigma_gate = 0.03, .disagree_a = 1.0,
                         .disagree_debounce_s = 1.0};
    ssb_cc_state_t s = {calloc(n, sizeof(double)), calloc(n, sizeof(double)), dalloc(n),
                        dalloc(n), dalloc(n), calloc(n, 1), calloc(n, sizeof(int32_t)),
                        dalloc(n)};
    double *cur = dalloc(n), *value = dalloc(n);
    int8_t *change = calloc(n, 1);
    uint8_t *before = calloc(n, 1);
    for (int k = 0; k < steps; k++) {
        double t = 0.1 * k;
        for (size_t j = 0; j < n; j++) {
            double u = check_urand();
            double med = u < 0.02 ? NAN : (u < 0.03 ? INFINITY : 0.03 * (check_urand() - 0.3));
            CHECK(ssb_cc_innovation(&c, &s, j, t, u < 0.05 ? 2 : 23, med, u < 0.04 ? NAN : 0.1,
                                    23, u < 0.5 ? 0.4 * check_urand() : (u < 0.6 ? NAN : 0.0)) == 0);
            CHECK(s.cusum_pos_v_s[j] >= 0.0 && s.cusum_pos_v_s[j] <= 0.1);
            CHECK(s.cusum_neg_v_s[j] >= 0.0 && s.cusum_neg_v_s[j] <= 0.1);
            double v = check_urand();
            cur[j] = v < 0.03 ? NAN : (v < 0.05 ? -INFINITY : 20.0 * (check_urand() - 0.5) + (j == 0) * 3.0);
            before[j] = s.raised[j];
        }
        int changes = ssb_cc_step(&c, &s, n, t, cur, (k / 100) % 2, change, value);
        int counted = 0;
        for (size_t j = 0; j < n; j++) {
            CHECK(change[j] == (int8_t)(s.raised[j] - before[j]));
            CHECK(s.raised[j] ? s.why[j] > SSB_CC_NONE && s.why[j] <= SSB_CC_DISAGREE
                              : s.why[j] == SSB_CC_NONE);
            counted += change[j] != 0;
        }
        CHECK(changes == counted);
    }
    void *bufs[] = {s.cusum_pos_v_s, s.cusum_neg_v_s, s.last_t_s, s.rest_since_s,
                    s.disagree_since_s, s.raised, s.why, s.scratch, cur, value, change, before};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
}

int main(void)
{
    ssb_cc_config_t c = {.rest_threshold_a = 0.5, .rest_debounce_s = 1.0,
                         .cusum_allowance_v = 0.005, .cusum_allowance_rel = 0.03,
                         .cusum_limit_v_s = 0.05, .sigma_gate = 0.03, .disagree_a = 1.0,
                         .disagree_debounce_s = 1.0};
    ssb_cc_state_t s = {0};
    double cur[1] = {1.0}, value[1];
    int8_t change[1];
    CHECK(ssb_cc_innovation(NULL, &s, 0, 0.0, 23, 0.0, 0.1, 23, 0.0) == SSB_CC_ERR_NULL);
    CHECK(ssb_cc_innovation(&c, &s, 0, 0.0, 23, 0.0, 0.1, 23, 0.0) == SSB_CC_ERR_NULL);
    CHECK(ssb_cc_step(&c, &s, 1, 0.0, cur, 0, change, value) == SSB_CC_ERR_NULL);
    CHECK(ssb_cc_step(&c, NULL, 1, 0.0, cur, 0, change, value) == SSB_CC_ERR_NULL);
    for (size_t n = 1; n <= 8; n++)
        run(n, 3000);
    printf("ok\n");
    return 0;
}
