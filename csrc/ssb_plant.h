/*
 * ssb_plant.h - the numeric part of the emulator's stack plant (hil/emulator/plant.py): one
 * plant step in two calls around the load's current demand, and the channel arithmetic of one
 * sensor read.
 *
 * C11. No global state, no allocation: the caller owns every buffer (numpy arrays in
 * hil/emulator/plant.py). The same equations in NumPy, kept as the reference: Plant with
 * engine="numpy" (docs/emulator.md gives the equations and the source of every parameter).
 * Sign: positive current = charge.
 *
 * One step:
 *   ssb_plant_begin:  SOC table lookup, Arrhenius factor, OCV, R0/R1/R2/tau1, contact
 *                     resistance at the local pressure, EMF, v_open and r_eff (every cell's
 *                     terminal voltage is v = v_open + r_eff i_s this step) and their stack
 *                     sums. The caller then asks the load for the stack current i_s.
 *   ssb_plant_finish: given i_s: terminal voltages, cell currents (bleed and soft shorts), SOC,
 *                     exact exponential update of both RC branches and the hysteresis state,
 *                     heat, backward-Euler thermal step (x <- minv (C/dt x + G_amb T_amb + Q)),
 *                     stack and load-cell pressure. Uses the work rows begin wrote: always call
 *                     finish after begin, with nothing touching the state in between.
 * Sums over cells (stack voltage and resistance, mean temperature) use numpy's pairwise order,
 * so that they equal the reference's to the bit when their operands do.
 */
#ifndef SSB_PLANT_H
#define SSB_PLANT_H

#include <stddef.h>
#include <stdint.h>

/* return codes (negative); on an error nothing is written */
#define SSB_PLANT_ERR_NULL (-1)  /* a required pointer is NULL */
#define SSB_PLANT_ERR_SIZE (-2)  /* n == 0 or n_soc < 2 */
#define SSB_PLANT_ERR_PARAM (-3) /* dt, current, pressure or gas not finite, dt <= 0 */
#define SSB_PLANT_ERR_STATE (-4) /* SOC, temperature or RC state not finite */

/* rows of the SOC table (plant.py _L_*): OCV at the reference temperature, dOCV/dT, R0, R1,
 * tau1 = R1 C1 at the reference temperature; rows 2 and 5 are unused (zero). The table holds
 * SSB_PLANT_TAB_ROWS rows of n_soc values, then the next grid point minus this one for each. */
#define SSB_PLANT_L_OCV 0
#define SSB_PLANT_L_DOCV_DT 1
#define SSB_PLANT_L_R0 3
#define SSB_PLANT_L_R1 4
#define SSB_PLANT_L_TAU1 6
#define SSB_PLANT_TAB_ROWS 7

/* rows of the work buffer (SSB_PLANT_WORK_ROWS rows of n + 3 doubles each): what begin leaves
 * for the caller (v_open, r_eff: the load's view) and for finish */
#define SSB_PLANT_W_V_OPEN 0
#define SSB_PLANT_W_R_EFF 1
#define SSB_PLANT_W_EMF 2
#define SSB_PLANT_W_R1 3
#define SSB_PLANT_W_R2 4
#define SSB_PLANT_W_TAU1 5
#define SSB_PLANT_W_DOCV_DT 6
#define SSB_PLANT_W_T_K 7
#define SSB_PLANT_W_ARR 8
#define SSB_PLANT_W_RHS 9
#define SSB_PLANT_WORK_ROWS 10

/* What the step needs besides the state. Per-cell arrays have n entries, lc_factor m. The
 * caller rewrites the "outputs and faults" arrays and flags when those change. */
typedef struct {
    size_t n;          /* cells, >= 1 */
    size_t m;          /* load cells, may be 0 */
    size_t n_soc;      /* SOC grid points, >= 2 */
    const double *tab; /* 2 * SSB_PLANT_TAB_ROWS * n_soc, row-major (see above) */
    double soc_lo;     /* grid start */
    double soc_hi;     /* highest SOC looked up (just below the grid end) */
    double inv_soc_step;
    double kelvin_offset;   /* 273.15 */
    double inv_t_ref_per_k; /* 1 / reference temperature (K) */
    double ea_over_kb_k;    /* activation energy / Boltzmann (K) */
    double t_ref_c;         /* reference temperature (deg C) */
    double r2_over_r1;
    double hysteresis_v;
    double tau2_s;
    double one_minus_eta; /* 1 - coulombic efficiency (on charge) */
    double min_local_pressure_kpa;
    const double *capacity_as;      /* n */
    const double *self_discharge_a; /* n */
    const double *hyst_k_per_as;    /* n: hysteresis rate / capacity */
    /* outputs and faults */
    const double *r0_factor;   /* n: resistance spread / (1 - contact loss) */
    const double *r_scale;     /* n: resistance spread (R1, R2) */
    const double *rc_factor;   /* n: contact R_ref sqrt(p_ref) */
    const double *local_frac;  /* n: 1 - contact loss */
    const double *g_static;    /* n: bleed + soft-short conductance */
    const double *inv_short;   /* n: soft-short conductance (0 = none) */
    const double *cell_heat_w; /* n: injected heat */
    int loss_any;              /* some contact loss: local pressures per cell */
    int g_any;                 /* some bleed or soft short */
    int heat_fault_any;        /* some soft short or injected heat */
    /* pressure: preload + k dx max(1 + s dx / dx_full, 0.1) + gas, dx = swell . soc +
     * thermal (mean T - T_ref) - collapse; load cells: pressure * lc_factor */
    const double *swell_um;  /* n: swelling at full charge */
    const double *lc_factor; /* m */
    double thermal_um_per_k;
    double fixture_ref_c;
    double collapse_um;
    double swell_full_total_um;
    double fixture_stiffening;
    double preload_kpa;
    double k_fix_kpa_per_um;
} ssb_plant_config_t;

/* Dynamic state and scratch, owned by the caller. */
typedef struct {
    double *soc;          /* n */
    double *x;            /* 3 n: RC1 voltage, RC2 voltage, hysteresis state (-1..1) */
    double *temp_c;       /* n + 3: cells, bottom plate, top plate, coolant */
    double *cell_v;       /* n: terminal voltage (finish) */
    double *ocv_v;        /* n: OCV at the cell temperature (begin) */
    double *i_cell_a;     /* n: electrochemical current per cell (finish) */
    double *r_series_ohm; /* n: R0 + contact (begin) */
    double *lc_kpa;       /* m: load-cell pressures (finish) */
    double *work;         /* SSB_PLANT_WORK_ROWS * (n + 3) */
} ssb_plant_state_t;

/* First half of a step at stack pressure pressure_kpa. Writes ocv_v, r_series_ohm, the work
 * rows and sums[0] = sum of v_open, sums[1] = sum of r_eff. */
int ssb_plant_begin(const ssb_plant_config_t *cfg, ssb_plant_state_t *st, double pressure_kpa,
                    double *sums);

/* Second half: stack current i_s (A) over dt_s; thermal matrices of n + 3: minv (row-major
 * inverse of diag(C/dt + G_amb) + L), c_dt (C/dt), amb (G_amb T_amb); gas_kpa is the gas
 * pressure after this step. Updates soc, x, temp_c, cell_v, i_cell_a, lc_kpa and writes the
 * stack pressure to *pressure_kpa. */
int ssb_plant_finish(const ssb_plant_config_t *cfg, ssb_plant_state_t *st, double i_s,
                     double dt_s, const double *minv, const double *c_dt, const double *amb,
                     double gas_kpa, double *pressure_kpa);

/* The board's channels, in its order: cells | thermistors | load cells | current | bus. */
typedef struct {
    size_t n;                        /* cells, >= 1 */
    size_t k;                        /* thermistors */
    size_t m;                        /* load cells */
    const double *th_weights;        /* k * n row-major: thermistor position over the cells */
    const double *th_off_kelvin;     /* k: NTC tolerance + 273.15 */
    double inv_t25_per_k;            /* 1 / 298.15 */
    double beta_k;
    double r25_ohm;
    double pullup_ohm;
    double th_counts_per_unit;       /* vref / lsb: divider fraction -> counts */
    const double *vtap_open_since_s; /* n: NaN = tap wire intact */
    double vtap_open_tau_s;
    int vtap_any;                    /* some tap wire open */
    const double *ch_a;              /* n + k + m + 2: offset error (value units) */
    const double *ch_s;              /* scale (counts per unit) */
    const double *ch_c;              /* count offset */
    const double *ch_lo;             /* clamp to the wire type (finite) */
    const double *ch_hi;
} ssb_plant_sense_config_t;

/* One read: counts = clamp(rint((x + noise + a) s + c), lo, hi), x the true channel values
 * (an open tap's channel decays into its upper neighbour; thermistors by the Beta equation).
 * NaN values give INT64_MIN (what numpy's cast gives on x86-64). noise and buf have
 * n + k + m + 2 entries (buf: scratch); writes raw (same length). */
int ssb_plant_sense(const ssb_plant_sense_config_t *cfg, const ssb_plant_state_t *st,
                    double t_s, double current_a, double bus_v, const double *noise, double *buf,
                    int64_t *raw);

#endif
