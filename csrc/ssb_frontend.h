/*
 * ssb_frontend.h - one board's MEASUREMENT counts -> engineering values -> plausibility masks,
 * in one call: the controller's per-board hot path before the core (bms/validation.py).
 *
 * C11. No global state, no allocation: the caller owns every buffer (numpy arrays in
 * bms/validation.py). The same rules in Python (the reference, and the diagnosis that turns the
 * masks into fault records): StackValidator.check in bms/validation.py.
 *
 * Channel order is the board's: cells | thermistors | load cells (hil/scaling.py).
 *   scaling:  value = raw * gain + bias; thermistor channels: value = ntc_lut[raw & 0xFFFF];
 *             raw == sentinel (the protocol's invalid marker) -> NaN.
 *   range:    bad where not (lo <= value <= hi) (NaN is bad).
 *   open tap: when no cell is NaN and max - min of the cells > 2 * open_tap_dev_v, cells i and
 *             i+1 are bad when dev_i < -d, dev_i+1 > d and |dev_i + dev_i+1| < d, with dev the
 *             deviation from the median of the cells (the mean of the two middle values for an
 *             even count, as numpy.median).
 *   stuck:    per load cell, same_count += 1 while its raw count equals the last one and the
 *             channel is in range, else 0; stuck when same_count >= stuck_samples.
 *   clean:    value, NaN where bad or stuck.
 *   jump:     when current_a and the last current are not NaN: cell i jumps when
 *             |clean_i - last_clean_i| > jump_margin_v + r_worst_ohm * |current_a - last_i|
 *             (NaN never jumps).
 */
#ifndef SSB_FRONTEND_H
#define SSB_FRONTEND_H

#include <stddef.h>
#include <stdint.h>

#define SSB_FE_LUT_SIZE 65536

/* summary bits returned through *summary */
#define SSB_FE_ANY_BAD (1u << 0)   /* some channel out of range, NaN or open tap */
#define SSB_FE_ANY_STUCK (1u << 1) /* some load cell stuck */
#define SSB_FE_ANY_JUMP (1u << 2)  /* some cell voltage jumped */

/* return codes (negative) */
#define SSB_FE_ERR_NULL (-1)  /* a required pointer is NULL */
#define SSB_FE_ERR_SIZE (-2)  /* channel counts inconsistent */
#define SSB_FE_ERR_PARAM (-3) /* a parameter not finite or out of range */

typedef struct {
    size_t n_cells;       /* board cell channels (first) */
    size_t n_thermistors; /* then thermistor channels */
    size_t n_load_cells;  /* then load-cell channels */
    const double *gain;      /* per channel */
    const double *bias;      /* per channel */
    const int64_t *sentinel; /* per channel: the raw value meaning "invalid" */
    const double *ntc_lut;   /* SSB_FE_LUT_SIZE entries: counts -> deg C */
    const double *lo;        /* per channel plausible range */
    const double *hi;
    double open_tap_dev_v;
    double jump_margin_v;
    double r_worst_ohm;
    int64_t stuck_samples;
} ssb_fe_config_t;

typedef struct {
    int64_t *same_count;  /* n_load_cells */
    int64_t *last_raw_lc; /* n_load_cells */
    double *last_v;       /* n_cells: last clean cell voltages (NaN at start) */
    double *scratch;      /* n_cells: work space for the median */
    double last_i;        /* last current, NaN at start */
    int have_last_raw;    /* 0 until the first call */
} ssb_fe_state_t;

/* One MEASUREMENT. raw: n channel counts. Writes values, clean (n doubles), bad (n bytes, 0/1),
 * stuck (n_load_cells bytes), jump (n_cells bytes) and *summary; updates the state. On an error
 * nothing is written. */
int ssb_fe_step(const ssb_fe_config_t *cfg, ssb_fe_state_t *st, const int64_t *raw,
                double current_a, double *values, double *clean, uint8_t *bad, uint8_t *stuck,
                uint8_t *jump, uint32_t *summary);

#endif
