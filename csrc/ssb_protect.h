/*
 * ssb_protect.h - protection engine of ssb-bms: debounce and hysteresis of three levels
 * (warning, fault, critical) over many channels in one call per tick.
 *
 * C11. No global state, no allocation: the caller owns every buffer (the Python wrapper
 * bms/protections.py keeps them in numpy arrays). The same semantics in NumPy:
 * ReferenceProtectionEngine in bms/protections.py (tests hold the two to identical transitions
 * and identical state). Semantics of one level on one channel (x = sign * value + offset, so
 * every limit is "above" in sign space):
 *
 *   - past: x > thr. The first tick past starts the timer (start_s = time_s); the level asserts
 *     on the first tick where time_s - start_s >= debounce_s - SSB_PROT_TIME_EPS_S while past on
 *     every tick in between. A valid tick not past resets the timer (start_s = NaN).
 *   - an asserted level clears when x < thr - hyst (NaN compares false: never clears).
 *   - x NaN on an enabled channel: timers and levels frozen; when the channel is present the
 *     channel is "invalid" (transition level SSB_PROT_INVALID, asserted 1 on entry, 0 on exit).
 *     A channel not present is frozen and never invalid.
 *   - a disabled channel (enabled[i] == 0): timers reset and asserted levels clear, NaN or not.
 *
 * Transitions are written in this order: level asserts (level-major, then channel), level
 * clears (same order), invalid changes (by channel). That is the order of the NumPy reference.
 */
#ifndef SSB_PROTECT_H
#define SSB_PROTECT_H

#include <stddef.h>
#include <stdint.h>

#define SSB_PROT_VERSION 1
#define SSB_PROT_LEVELS 3  /* warning, fault, critical: level index 0, 1, 2 */
#define SSB_PROT_INVALID 3 /* transition level of a NaN (invalid) change */
#define SSB_PROT_MAX_CHANNELS 4194304 /* 2^22: flat channel and 4 n fit in int32 */
/* Timer tolerance: tick times like 0.1 * k accumulate ~1e-16 relative error, so
 * "elapsed >= debounce" must not miss a tick by one ulp (same constant as the NumPy engine). */
#define SSB_PROT_TIME_EPS_S 1e-9

/* return codes (negative); nothing is changed and nothing written when a call fails */
#define SSB_PROT_ERR_NULL (-1)  /* a required pointer is NULL */
#define SSB_PROT_ERR_SIZE (-2)  /* n out of 1 .. SSB_PROT_MAX_CHANNELS */
#define SSB_PROT_ERR_PARAM (-3) /* sign not +-1, threshold/hysteresis/debounce not finite or < 0 */
#define SSB_PROT_ERR_FULL (-5)  /* more transitions this tick than the output array holds */

/* Limits of n flat channels; constant during a run. Arrays owned by the caller. */
typedef struct ssb_protect_limits {
    size_t n;                 /* channels */
    const double *sign;       /* n: +1 (direction above) or -1 (below) */
    const double *thr;        /* 3 n, level-major thr[l * n + i], in sign space (sign * level) */
    const double *hyst;       /* n: hysteresis (>= 0), in value units */
    const double *debounce_s; /* n: debounce time (>= 0), s */
} ssb_protect_limits_t;

/* State: zero asserted/invalid and NaN start_s at the beginning. Owned by the caller. */
typedef struct ssb_protect_state {
    double *start_s;   /* 3 n, level-major: timer start, NaN = not running */
    uint8_t *asserted; /* 3 n, level-major: 0 or 1 */
    uint8_t *invalid;  /* n: 0 or 1 (NaN while present) */
} ssb_protect_state_t;

/* One tick's inputs (n each). enabled/present: nonzero = true. */
typedef struct ssb_protect_inputs {
    const double *value;    /* raw values (NaN allowed; absent channels: anything) */
    const double *offset;   /* added in sign space: x = sign * value + offset */
    const uint8_t *enabled;
    const uint8_t *present;
} ssb_protect_inputs_t;

typedef struct ssb_transition {
    double value;    /* raw input value at the transition */
    int32_t channel; /* flat channel index */
    int8_t level;    /* 0 .. 2, or SSB_PROT_INVALID */
    int8_t asserted; /* 1 asserted, 0 cleared */
} ssb_transition_t;

/* Check the limits (pointers, n, sign +-1, finite thresholds, hysteresis and debounce >= 0 and
 * finite). SSB_OK (0) or an error code. */
int ssb_protect_check(const ssb_protect_limits_t *lim);

/* Advance every channel to time_s. Writes the transitions into out[0 .. count) and returns the
 * count (>= 0), or a negative error. With cap >= 4 n (the worst case: 3 levels + invalid per
 * channel) one pass; with a smaller cap a counting pass comes first, and when the transitions
 * would not fit SSB_PROT_ERR_FULL is returned with the state unchanged and nothing written. */
int ssb_protect_update(const ssb_protect_limits_t *lim, ssb_protect_state_t *st,
                       const ssb_protect_inputs_t *in, double time_s, ssb_transition_t *out,
                       size_t cap);

/* Gather one tick's input values: copy src[k][0 .. src_len[k]) to value[dst_off[k] ..) for
 * k < n_src, so that the caller's measurement and estimate arrays reach the engine's flat value
 * buffer (n channels) in one call; one source may feed several ranges (e.g. the cell voltages
 * feed over- and under-voltage). SSB_OK, SSB_PROT_ERR_NULL (value, src, src_len or dst_off
 * NULL, or src[k] NULL with src_len[k] > 0) or SSB_PROT_ERR_SIZE (a range past n); nothing is
 * written when it fails. */
int ssb_protect_gather(double *value, size_t n, const double *const *src, const size_t *src_len,
                       const size_t *dst_off, size_t n_src);

/* PackProtections' usual tick (bms/protections.py) in one call: the gather above, then the
 * over-current pair (value[i_charge] = current, value[i_discharge] = -current, and each
 * offset the core's derate: min(max(max_static - limit, 0), max_static), 0 for a limit that is
 * not finite, as the Python's _derate), then ssb_protect_update. Made once by the caller;
 * value and offset are the buffers inputs->value and inputs->offset read. */
typedef struct ssb_protect_tick {
    const ssb_protect_limits_t *lim;
    ssb_protect_state_t *st;
    const ssb_protect_inputs_t *inputs;
    double *value, *offset; /* n each: the buffers inputs->value / ->offset point to */
    const double *const *src; /* the gather's sources, lengths and destinations */
    const size_t *src_len, *dst_off;
    size_t n_src;
    size_t i_charge, i_discharge; /* flat channels of the two over-current protections */
    double max_charge_a, max_discharge_a;
} ssb_protect_tick_t;

/* The transitions' count (>= 0) as ssb_protect_update, or a negative error (a pointer NULL,
 * a channel or range past n: nothing written). */
int ssb_protect_tick(const ssb_protect_tick_t *tk, double time_s, double current_a,
                     double charge_limit_a, double discharge_limit_a, ssb_transition_t *out,
                     size_t cap);

/* The leak protection's input: each cell's lower bound low[i] = sigma[i] * k + leak[i] (k = -3:
 * the lower 3-sigma bound), as NumPy's multiply then add (bms/controller.py keeps that as the
 * reference). SSB_OK or SSB_PROT_ERR_NULL (a NULL array with n > 0; nothing written). */
int ssb_protect_leak_low(const double *leak, const double *sigma, double k, double *low,
                         size_t n);

#endif /* SSB_PROTECT_H */
