/*
 * ssb_stack.h - one stack's receive chain in one call: the measurement front end
 * (ssb_fe_step) on the counts the fast lane unpacked, the core tick (ssb_tick) on the clean
 * values with this tick's bleed, and the per-stack figures the controller reads every tick
 * (stack voltage, the horizons' tightest limits, the innovation and its median). The
 * controller's hot path (bms/stack_step.py); what it replaces, call by call, stays the
 * reference: StackValidator.check_wire + Core.step + the sums in bms/controller.py and
 * CurrentPlausibility.innovation (tests/test_stack_step.py holds the two to identical runs).
 *
 * C11. No global state, no allocation: every buffer is the caller's (the validator's and the
 * core's numpy arrays, bound once). Arithmetic in the order of the Python it replaces (plain
 * left-to-right sums, Python's min), so the figures are bit for bit the same.
 */
#ifndef SSB_STACK_H
#define SSB_STACK_H

#include <stdint.h>

#include "ssb_core.h"
#include "ssb_current.h"
#include "ssb_frontend.h"

/* return codes (negative), beside the front end's and the core's own (passed through) */
#define SSB_STACK_ERR_NULL (-20) /* a required pointer is NULL */
#define SSB_STACK_ERR_SIZE (-21) /* fewer front-end cell channels than core cells */
/* ssb_stack_receive: the board's timestamp did not move (nothing ran: the caller decides
 * whether the sample is stale, then runs ssb_stack_step) */
#define SSB_STACK_NOT_MOVED 1

/* The buffers of one stack, bound once. */
typedef struct {
    const ssb_fe_config_t *fe_cfg;
    ssb_fe_state_t *fe_st;
    const int64_t *raw; /* the channel counts (the fast lane writes them) */
    double *values;     /* ssb_fe_step's outputs */
    double *clean;
    uint8_t *bad;
    uint8_t *stuck;
    uint8_t *jump;
    const ssb_params_t *prm;
    ssb_state_t *st;
    const ssb_meas_t *meas; /* reads the clean arrays; bleed_a points at bleed_in */
    ssb_output_t *out;
    double *bleed_in;     /* n_cells: the core's bleed input, copied from the caller's */
    double *innovation_v; /* n_cells: clean cell voltage - the core's prediction */
    double *scratch;      /* n_cells: work space for the median */
    double current_plausible_a; /* |current| above it: not a measurement (NaN to the core) */
    /* The load cells' fixture baseline (bms.protections.LoadCellBaseline), or NULL while it
     * is not known (then the caller computes the imbalance): each load cell's share of the
     * stack mean and, or NULL, its offset (kPa). */
    const double *lc_share;
    const double *lc_offset_kpa;
    /* Where the step's data go in the controller's pack-wide arrays, each at this stack's
     * place, or NULL (not copied): per cell (n_cells) the clean voltages, the core's SOC, SOC
     * sigma, leak and leak sigma; per thermistor (the front end's) the clean temperatures;
     * one value each: the core's mean pressure, its rate, |rate|, the CUSUM and (only with
     * lc_share) the imbalance. */
    double *pack_cell_v, *pack_soc, *pack_soc_sigma, *pack_leak_a, *pack_leak_sigma_a;
    double *pack_temperature_c;
    double *pack_p_mean_kpa, *pack_p_rate_kpa_per_s, *pack_p_rate_abs_kpa_per_s;
    double *pack_p_cusum_kpa, *pack_p_imbalance_kpa;
    /* ssb_stack_receive only. The fast lane's values: timestamp_ms, status, current and bus
     * counts (raw follows them); the board profile's scaling (hil.scaling.Scaler:
     * current_from_raw, bus_voltage_from_raw; invalid_i32 is the wire's "no value"). */
    const int64_t *wire;
    double current_lsb_a, current_offset_a, bus_lsb_v;
    int64_t invalid_i32;
    double timestamp_gap_ms; /* StackValidator._check_timestamp: a longer advance is a gap */
    int64_t status_unusual;  /* status bits that need the caller (watchdog, sensor, booted) */
    /* The current check's CUSUM of this stack (CurrentPlausibility.innovation_stats), or
     * NULL (not run) */
    const ssb_cc_config_t *cc_cfg;
    ssb_cc_state_t *cc_st;
    int64_t cc_stack;
    /* The dendrite-safe charge limit (bms.charging.CcdLimit.limit_a), or ccd_np == 0 (not
     * computed): the table's pressure and temperature axes (ascending) and its values, one
     * row of ccd_np per temperature, and margin x plating area x 1e-3. */
    const double *ccd_p, *ccd_t, *ccd_table;
    int64_t ccd_np, ccd_nt;
    double ccd_amps_per_ma_cm2;
} ssb_stack_t;

/* What one step reports. */
typedef struct {
    uint32_t fe_summary;    /* SSB_FE_ANY_* */
    int32_t fe_rc;          /* ssb_fe_step's return code (nothing else ran when nonzero) */
    int32_t core_rc;        /* ssb_tick's */
    int32_t innovation_n;   /* non-NaN innovations */
    double current_a;       /* the core's current: NaN when not finite or implausible */
    double stack_voltage_v; /* sum of the clean cell voltages in cell order (NaN if one is) */
    double charge_limit_a;  /* the lowest over the horizons (Python's min: NaN first wins) */
    double discharge_limit_a;
    double innovation_median_v; /* median of the non-NaN innovations (NaN: none) */
    double soc_sigma_sum;       /* sum of the SOC sigmas in cell order */
    /* bms.charging.stack_conditions: the lowest valid load-cell pressure and the coldest valid
     * thermistor (NaN: none valid) */
    double min_pressure_kpa;
    double min_temperature_c;
    /* LoadCellBaseline.imbalance_kpa with lc_share: max - min of (p - offset) / share over
     * the valid load cells, 0 with one, NaN with none; NaN without lc_share */
    double imbalance_kpa;
    /* ssb_stack_receive only */
    int64_t timestamp_ms;   /* the MEASUREMENT's */
    int64_t status;
    double current_in_a;    /* the scaled current (NaN: the wire's no value), before the
                               plausibility test that made current_a */
    double bus_voltage_v;   /* scaled (NaN: no value) */
    double timestamp_s;     /* timestamp_ms / 1000 */
    double core_dt_s;       /* the interval the core integrated over (Controller._core_dt) */
    double ccd_limit_a;     /* CcdLimit.limit_a(min_pressure_kpa, min_temperature_c), NaN
                               without a table */
    int32_t usual;          /* 1: nothing for the caller's diagnosis: no front-end finding, a
                               plausible current, a finite bus voltage and stack voltage, no
                               timestamp gap, no bit of status_unusual, the core ran */
} ssb_stack_result_t;

/* One MEASUREMENT of one stack: front end (last_i and have_last_raw are its state from the
 * caller), then, when it succeeded, the core tick over dt_s with the bleed bleed_a (n_cells,
 * copied to bleed_in) and the figures above. Returns 0, or the first error (r->fe_rc or
 * r->core_rc say whose; a core error leaves the front end's work done, as the two calls). */
int ssb_stack_step(const ssb_stack_t *sk, double current_a, double last_i, int have_last_raw,
                   double dt_s, const double *bleed_a, ssb_stack_result_t *r);

/* The controller's receive of a fast-lane MEASUREMENT in one call: when the board's
 * timestamp (wire[0]) equals last_ts_ms, SSB_STACK_NOT_MOVED and nothing else (Controller.
 * _timestamp_moved decides). Else the scaling of current and bus voltage, the core's interval
 * (Controller._core_dt from last_timestamp_s, NaN: none yet, and dt_s), ssb_stack_step,
 * and when the core ran, the current check's innovation of the stack at t (cc_cfg) and the
 * CCD limit (ccd_np); r->usual as ssb_stack_result_t says (gap_last_ts_ms: the validator's
 * last timestamp, -1: none). Returns ssb_stack_step's code, or SSB_STACK_NOT_MOVED. */
int ssb_stack_receive(const ssb_stack_t *sk, double t, double dt_s, double last_i,
                      int have_last_raw, int64_t last_ts_ms, double last_timestamp_s,
                      int64_t gap_last_ts_ms, const double *bleed_a, ssb_stack_result_t *r);

#endif
