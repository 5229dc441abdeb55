/*
 * ssb_format.h - one CSV row of doubles, fixed-point per column (the run log's ticks.csv).
 *
 * C11. No global state, no allocation, never writes past the caller's buffer.
 *
 * A field with decimals d in 0 .. SSB_FMT_MAX_DECIMALS is fixed-point with at most d decimals:
 *   - correctly rounded from the exact binary value of the double; an exact tie (the value is
 *     exactly halfway between two d-decimal numbers, e.g. 0.125 at d = 2) rounds half away from
 *     zero (0.13; Python's format rounds such ties to even: 0.12);
 *   - trailing zeros of the fraction are trimmed, and the point too when the fraction is zero
 *     (3.8 not 3.800000, 2 not 2.000000): shorter rows, integers read as integers;
 *   - a result of zero is written "0" (so -0.0 and -0.0000001 at d = 6 give "0", never "-0");
 *   - when |v| 10^d >= 2^52 the fixed-point integer would not be exact: the field falls back to
 *     "%.17g" (round-trip exact), so no value is ever written wrong.
 * decimals SSB_FMT_G10 (-1): "%.10g" (what Python's "%.10g" % v gives), -0.0 -> "0".
 * Any decimals: NaN -> "nan", +inf -> "inf", -inf -> "-inf" (what Python's float() reads).
 */
#ifndef SSB_FORMAT_H
#define SSB_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#define SSB_FMT_G10 (-1)          /* decimals value: "%.10g" */
#define SSB_FMT_MAX_DECIMALS 9
#define SSB_FMT_FIELD_MAX 32      /* no field is longer than this many bytes */

/* return codes (negative) */
#define SSB_FMT_ERR_NULL (-1)  /* a required pointer is NULL */
#define SSB_FMT_ERR_PARAM (-3) /* a decimals entry out of -1 .. SSB_FMT_MAX_DECIMALS */
#define SSB_FMT_ERR_FULL (-5)  /* the row does not fit in cap bytes (out holds a partial row) */

/* n fields, comma-separated, then "\n" (n = 0: just "\n"). Returns the bytes written (no NUL
 * terminator) or a negative error; never writes out[cap] or beyond. values and decimals may be
 * NULL only when n == 0. */
int64_t ssb_format_row(const double *values, const signed char *decimals, size_t n, char *out,
                       size_t cap);

/* The same row given as n_seg segments: segment k holds seg_len[k] doubles at seg[k] (NULL
 * only when seg_len[k] == 0); the row is their concatenation and decimals has one entry per
 * value of it. Lets a caller format straight from the arrays that hold the values, without
 * first copying them into one row buffer. */
int64_t ssb_format_segments(const double *const *seg, const size_t *seg_len, size_t n_seg,
                            const signed char *decimals, char *out, size_t cap);

/* The controller's ticks.csv row (bms.runlog.TickRow), filled and formatted in one call: the
 * tick's scalars go into its head segment (head[0..4]: time, state, current, stack and bus
 * voltage) and tail segment (with n stacks: tail[3n..3n+2] charge and discharge limit and
 * outputs, tail[3n+3..4n+2] the stacks' balance masks, tail[4n+3..4n+4] faults active and tick
 * duration), then the segments (head and tail among them) are formatted as
 * ssb_format_segments. The head holds at least 5 values and the tail 4n + 5. */
int64_t ssb_format_tick(double *head, double *tail, size_t n_stacks, double time_s,
                        double state, double current_a, double stack_voltage_v,
                        double bus_voltage_v, double charge_limit_a, double discharge_limit_a,
                        double outputs, const uint32_t *masks, double faults_active,
                        double tick_duration_s, const double *const *seg,
                        const size_t *seg_len, size_t n_seg, const signed char *decimals,
                        char *out, size_t cap);

/* ssb_format_tick's fill of the head and tail segments without the format (a row counted but
 * not written: bms.runlog.RunLog.discard_ticks). Returns 0 or SSB_FMT_ERR_NULL. */
int ssb_fill_tick(double *head, double *tail, size_t n_stacks, double time_s, double state,
                  double current_a, double stack_voltage_v, double bus_voltage_v,
                  double charge_limit_a, double discharge_limit_a, double outputs,
                  const uint32_t *masks, double faults_active, double tick_duration_s);

/* The row's values at columns cols[0..n_cols-1] (strictly ascending, each inside the row) of
 * the row given as segments (as ssb_format_segments), into out[0..n_cols-1]: the columns a
 * run log keeps in memory (bms.runlog._ColumnTap). Returns 0, SSB_FMT_ERR_NULL, or
 * SSB_FMT_ERR_PARAM for columns not ascending or past the row's end (out then holds the
 * values before it). */
int ssb_gather_segments(const double *const *seg, const size_t *seg_len, size_t n_seg,
                        const size_t *cols, size_t n_cols, double *out);

/* One field into out (at least SSB_FMT_FIELD_MAX bytes; no NUL): its length, or
 * SSB_FMT_ERR_PARAM / SSB_FMT_ERR_NULL. */
int ssb_format_value(double value, int decimals, char *out);

#endif /* SSB_FORMAT_H */
