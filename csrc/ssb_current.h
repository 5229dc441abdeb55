/*
 * ssb_current.h - the current sensor's plausibility check (CURRENT_SENSOR_OFFSET) over a
 * pack's stacks, its per-tick decision and the CUSUM of each stack's median innovation: the
 * rules of bms/current_check.py, whose Python (CurrentPlausibility(engine="reference")) is
 * the reference (tests/test_current_check_c.py holds the two to the same decisions and
 * state). Arithmetic in the order of that Python, so the figures are bit for bit the same.
 *
 * C11. No global state, no allocation: the state arrays are the caller's.
 */
#ifndef SSB_CURRENT_H
#define SSB_CURRENT_H

#include <stddef.h>
#include <stdint.h>

/* why a stack is suspected (the reason of its record) */
#define SSB_CC_NONE 0
#define SSB_CC_REST 1     /* "current with contactors open" */
#define SSB_CC_CUSUM 2    /* "common-mode voltage innovation" */
#define SSB_CC_DISAGREE 3 /* "boards in series disagree" */

#define SSB_CC_ERR_NULL (-1)

typedef struct {
    double rest_threshold_a, rest_debounce_s;
    double cusum_allowance_v, cusum_allowance_rel, cusum_limit_v_s, sigma_gate;
    double disagree_a, disagree_debounce_s;
} ssb_cc_config_t;

/* Per stack (n each); a time that is not running is NaN (Python's None). */
typedef struct {
    double *cusum_pos_v_s, *cusum_neg_v_s;
    double *last_t_s, *rest_since_s, *disagree_since_s;
    uint8_t *raised;
    int32_t *why;     /* SSB_CC_* of the raised record, NONE when not raised */
    double *scratch;  /* n: work space */
} ssb_cc_state_t;

/* CurrentPlausibility.innovation_stats of stack k; overpotential_v the core's mean model
 * |R0 I + eta| (SSB_OUT_MEAN_OVERPOTENTIAL_V; NaN counts as 0). */
int ssb_cc_innovation(const ssb_cc_config_t *c, ssb_cc_state_t *s, size_t k, double t,
                      int64_t n_valid, double median_v, double sigma_sum, int64_t n_cells,
                      double overpotential_v);

/* CurrentPlausibility.step's decision over n stacks: currents_a (NaN: none), no_current_path.
 * change[k] = 1 when stack k is raised now, -1 when cleared now, else 0, with value[k] the
 * record's value (NaN unless changed); the state is updated. Returns the number of changes. */
int ssb_cc_step(const ssb_cc_config_t *c, ssb_cc_state_t *s, size_t n, double t,
                const double *currents_a, int no_current_path, int8_t *change, double *value);

#endif
