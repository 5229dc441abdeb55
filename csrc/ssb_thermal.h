/*
 * ssb_thermal.h - the cooling plausibility check's per-tick work (bms/thermal_check.py,
 * docs/safety.md "Degraded cooling"): one stack's heat integrated every tick and, every
 * period, its three-node thermal model (mean cell, coolant, end plates), the residual's CUSUM
 * and the OCV and dOCV/dT at the stack's SOC for the next period.
 *
 * C11. No global state, no allocation: the caller owns the parameters (the OCV tables too)
 * and one state per stack. The same arithmetic, in the same order, as CoolingCheck(engine=
 * "reference") in Python (sums left to right as Python's sum(); the tables' interpolation as
 * numpy.interp and their mean as numpy's pairwise sum): tests/test_thermal_check_c.py holds
 * the two to identical states on random inputs and in runs. Raising and clearing
 * COOLING_DEGRADED stays in Python (CoolingCheck.step reads the state).
 */
#ifndef SSB_THERMAL_H
#define SSB_THERMAL_H

#include <stddef.h>
#include <stdint.h>

#define SSB_THERMAL_VERSION 1

#define SSB_THERMAL_ERR_NULL (-1)  /* a required pointer is NULL */
#define SSB_THERMAL_ERR_SIZE (-2)  /* no OCV grid point */
#define SSB_THERMAL_ERR_PARAM (-3) /* the SOC grid not strictly increasing, or not finite */

/* The check's tunables, a cell's heat capacity, the stack's cooling (bms/tuning.py,
 * boards/config.py CoolingConfig) and the cell's OCV and its temperature slope on soc_grid. */
typedef struct ssb_cooling_params {
    double period_s, allowance_k, limit_k_s, sigma_gate;
    double heat_capacity_j_per_k;
    double cell_to_coolant_w_per_k, coolant_heat_capacity_j_per_k, coolant_flow_w_per_k;
    double end_plates_heat_capacity_j_per_k, cells_to_end_plates_w_per_k;
    double end_plates_to_ambient_w_per_k;
    const double *soc_grid; /* n_grid, strictly increasing */
    const double *ocv_v;    /* n_grid */
    const double *docv_dt_v_per_k; /* n_grid */
    size_t n_grid;
} ssb_cooling_params_t;

/* One stack's state; start with every double NaN except energy_j, cusum_k_s, residual_k,
 * heat_w, leak_w, docv_dt_v_per_k (0) and the flags 0. last_tick_s / last_step_s NaN: none
 * yet (Python's None). */
typedef struct ssb_cooling_state {
    double start_c, model_c, coolant_c, plates_c, energy_j;
    double last_tick_s, last_step_s;
    double ocv_v, leak_w, docv_dt_v_per_k, temp_c, cusum_k_s, residual_k, heat_w;
    int32_t inputs_bad, raised;
} ssb_cooling_state_t;

/* SSB_OK (0) or an error code: pointers, a grid of at least one finite, strictly increasing
 * SOC. */
int ssb_cooling_check(const ssb_cooling_params_t *p);

/* One stack's fresh tick (CoolingCheck.observe): its current, mean cell voltage, n_cells SOCs,
 * their sigmas and the leaks' lower 3-sigma bounds, n_temps thermistors; inputs_ok 0 when a
 * sensor fault makes the heat untrustworthy; work: n_cells doubles of scratch (the caller's:
 * no allocation here). Returns 1 when the model stepped, 0 when the heat was only
 * integrated, or SSB_THERMAL_ERR_NULL (nothing changed). */
int ssb_cooling_observe(const ssb_cooling_params_t *p, ssb_cooling_state_t *s, double t,
                        double current_a, double mean_cell_v, const double *soc,
                        const double *soc_sigma, const double *leak_a, size_t n_cells,
                        const double *temperature_c, size_t n_temps, int inputs_ok,
                        double *work);

/* numpy.interp(x, xp, fp) of one value over a strictly increasing xp of n >= 1 points (the
 * ends held), bit for bit; for tests and the reference. */
double ssb_thermal_interp(double x, const double *xp, const double *fp, size_t n);

/* numpy's pairwise sum of n contiguous doubles (what ndarray.sum and mean use), bit for bit. */
double ssb_thermal_pairwise_sum(const double *a, size_t n);

#endif /* SSB_THERMAL_H */
