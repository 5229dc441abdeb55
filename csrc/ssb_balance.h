/*
 * ssb_balance.h - the passive balancing decision of one tick, once the gates that need no
 * data (enabled, contactor state, discharging, fault: Balancer.idle_reason) are open: which
 * cells bleed, as one mask per stack, and each cell's bleed current. The rules are
 * bms/balancing.py's (its NumPy Balancer(engine="reference") is the reference,
 * tests/test_balancing_c.py holds the two to the same decisions):
 *
 *   voltage mode: nothing unless the highest valid cell voltage >= top_of_charge_v;
 *   lowest = the lowest valid x (SOC or voltage) of the pack; nothing ("balanced", selection
 *   cleared) unless the highest valid x - lowest > min(start, stop);
 *   a stack's cells are eligible only when each of its thermistors reads < max_temperature_c
 *   (NaN: not), a cell only when its voltage > min_cell_voltage_v (NaN: not);
 *   selected = eligible and (x - lowest > start, or selected before and x - lowest > stop);
 *   bleeding while (time_s mod period_s) < duty_cycle * period_s - time_eps_s, or always
 *   with duty_cycle >= 1: mask bit i of a stack for its selected cell i, bleed = v / R.
 *
 * C11. No global state, no allocation: every buffer is the caller's.
 */
#ifndef SSB_BALANCE_H
#define SSB_BALANCE_H

#include <stddef.h>
#include <stdint.h>

/* reasons (the decision's ``reason`` in bms/balancing.py) */
#define SSB_BAL_BALANCING 0
#define SSB_BAL_BELOW_TOP 1     /* "below top of charge": selection cleared */
#define SSB_BAL_NO_DATA 2       /* "no valid data": selection cleared */
#define SSB_BAL_BALANCED 3      /* "balanced" before the gates: selection cleared */
#define SSB_BAL_NONE_SELECTED 4 /* "balanced" after the gates: nothing selected */
#define SSB_BAL_DUTY_OFF 5      /* "duty off": the selection kept, nothing bleeds now */

/* return codes (negative) */
#define SSB_BAL_ERR_NULL (-1)
#define SSB_BAL_ERR_SIZE (-2) /* a stack of 0 or more than 32 cells, starts not increasing */

typedef struct {
    size_t n_cells;
    size_t n_stacks;
    const size_t *cell_start; /* n_stacks + 1: stack k's cells are [cell_start[k], [k + 1]) */
    const size_t *th_start;   /* n_stacks + 1: its thermistors, likewise */
    double start, stop;       /* thresholds on x (SOC, or voltage in voltage mode) */
    double max_temperature_c;
    double min_cell_voltage_v;
    double duty_cycle;
    double period_s;
    double time_eps_s;
    double bleed_resistance_ohm;
    int32_t voltage_mode;
    double top_of_charge_v;
} ssb_bal_config_t;

/* One decision. x: n_cells (SOC, or the voltages in voltage mode); v: n_cells voltages;
 * temperature_c: th_start[n_stacks] values; selected (n_cells, 0/1): in, the last selection,
 * out, this one; masks (n_stacks) and bleed_a (n_cells) written on every return >= 0 (zero
 * unless balancing); *reason one of SSB_BAL_*. */
int ssb_balance(const ssb_bal_config_t *c, double time_s, const double *x, const double *v,
                const double *temperature_c, uint8_t *selected, uint32_t *masks,
                double *bleed_a, int32_t *reason);

/* The SOC the decision may read: out[i] = soc[i] where sigma[i] <= sigma_max, NaN elsewhere
 * (NaN sigma too): an estimate still converging counts as no data. SSB_BAL_ERR_NULL for a
 * NULL array with n > 0 (nothing written), else 0. */
int ssb_balance_soc_input(const double *soc, const double *sigma, double sigma_max, double *out,
                          size_t n);

#endif
