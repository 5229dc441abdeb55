/*
 * ssb_board.h - the emulated board's usual sim-clock tick in one call (the board's side of the
 * host's MeasurementLane): the host's bytes of one tick (a SAMPLE, or a HEARTBEAT then a
 * SAMPLE, each one whole frame) -> frame check (the firmware's proto.c), plant step
 * (ssb_plant_begin, the stack current, ssb_plant_finish), sensor read (ssb_plant_sense) and
 * the MEASUREMENT reply framed into the caller's buffer.
 *
 * hil/emulator/board_lane.py calls it from EmulatedBoard.feed; the general path of board.py
 * (decoder, handle, advance, Plant.step, sensor_counts, encode_frame) stays the reference and
 * does everything else. The call refuses (returns SSB_BOARD_FALLBACK, nothing written) whatever
 * the general path would do differently: other bytes or frames, a dt the board would split or
 * has no thermal matrices for, a step that would trip the watchdog, a reply the link would
 * silence. The caller checks what only Python knows (scenario events due, faults that act on
 * counts, link drop/corrupt, speculation) and evaluates the load's demand.
 *
 * The stack current is plant.py's Plant._stack_current after the load's demand, in the same
 * operation order, so the same inputs give the same bits (tests/test_board_lane.py holds the
 * two paths to the same bytes).
 *
 * C11. No global state, no allocation: the caller owns every buffer.
 */
#ifndef SSB_BOARD_H
#define SSB_BOARD_H

#include <stddef.h>
#include <stdint.h>

#include "ssb_plant.h"

/* Return codes of ssb_board_tick besides a frame length (> 0) */
#define SSB_BOARD_FALLBACK 0            /* not the usual tick: nothing changed */
#define SSB_BOARD_ERR_NULL (-1)         /* a required pointer is NULL */
#define SSB_BOARD_ERR_SIZE (-2)         /* out_cap < SSB_BOARD_OUT_MIN */
#define SSB_BOARD_UNENCODABLE (-3)      /* stepped and read, but a count, the timestamp or the
                                           payload does not fit the wire: raw holds the counts,
                                           the caller finishes on the general path */
#define SSB_BOARD_NEED_BLOCK (-4)       /* SSB_BOARD_BUS_CLOSED_PROFILE without this tick's
                                           demand in the block: nothing changed */
#define SSB_BOARD_ERR_BEGIN (-100)      /* + ssb_plant_begin's code: nothing stepped */
#define SSB_BOARD_ERR_FINISH (-200)     /* + ssb_plant_finish's code: res[2] is the bus voltage */
#define SSB_BOARD_ERR_SENSE (-300)      /* + ssb_plant_sense's code: stepped, res[0..5) valid */
#define SSB_BOARD_OUT_MIN 250           /* out buffer: one whole encoded frame */

/* what the contactors connect the stack to (plant.py Plant._stack_current) */
#define SSB_BOARD_BUS_OPEN 0      /* bus capacitor discharging */
#define SSB_BOARD_BUS_PRECHARGE 1 /* precharge relay and negative contactor closed */
#define SSB_BOARD_BUS_CLOSED 2    /* both contactors closed: the load's demand flows */
#define SSB_BOARD_BUS_CLOSED_CV 3 /* closed, demand from the CC-CV charger in ssb_board_t */
#define SSB_BOARD_BUS_CLOSED_PROFILE 4 /* closed, demand from the profile block in ssb_board_t */

/* res[] written by ssb_board_tick (doubles; the integers are exact) */
#define SSB_BOARD_RES_T_S 0
#define SSB_BOARD_RES_CURRENT_A 1
#define SSB_BOARD_RES_BUS_V 2
#define SSB_BOARD_RES_PRESSURE_KPA 3
#define SSB_BOARD_RES_GAS_KPA 4
#define SSB_BOARD_RES_DT_US 5
#define SSB_BOARD_RES_SEQ 6
#define SSB_BOARD_RES_FRAMES 7 /* 1: SAMPLE; 2: HEARTBEAT, SAMPLE */
#define SSB_BOARD_RES_LOAD_DONE 8 /* 1: the CC-CV charger ended (its current fell below cutoff) */
#define SSB_BOARD_RES_COUNT 9

/* One board: the plant engine's structs (plant_c.py CEngine) and constants, set once; the
 * profile block's index moves with each tick that takes its demand (not const for that). */
typedef struct {
    const ssb_plant_config_t *cfg;
    ssb_plant_state_t *st;
    const ssb_plant_sense_config_t *scfg;
    double *sense_buf;               /* n + k + m + 2: scratch */
    int64_t *raw;                    /* n + k + m + 2: the counts of the last read */
    double heartbeat_timeout_s;
    double path_resistance_ohm;
    double link_capacitance_f;
    double precharge_resistance_ohm;
    uint16_t watchdog_status_bit;    /* MEASUREMENT status bit of a tripped watchdog */
    /* SSB_BOARD_BUS_CLOSED_CV (loads.py CcCvCharge.demand_a, then the SET_OUTPUTS limits):
     * demand = min(cc, min over cells (cv - v_open) / r_eff), 0 and done below cutoff */
    double cv_cell_v;
    double cc_current_a;
    double cv_cutoff_a;
    double charge_limit_a;
    double discharge_limit_a;
    /* SSB_BOARD_BUS_CLOSED_PROFILE (board_lane.py TickLane.profile_demand's block): the plant
     * times of the next ticks and the drive cycle's demands there; this tick's is at blk_i
     * when blk_t[blk_i] is the plant's time (then blk_i moves on), clipped to the limits
     * above when respect_limits */
    const double *blk_t;
    const double *blk_d;
    int64_t blk_n;
    int64_t blk_i;
    int respect_limits;
    /* where the load cells' counts of each read are copied (the stuck-cell fault's "last
     * counts", Sensors.lc_last_counts), or NULL */
    int64_t *lc_last;
    /* What ssb_board_tick_kept reads in place of ssb_board_tick's arguments, kept here between
     * ticks and set by the caller only when it changes (board_lane.py TickLane): the thermal
     * matrices and the step they are for (plant_c.py CEngine.th / th_dt), the noise batch
     * (noise_rows rows of scfg n + k + m + 2), the res and out buffers */
    double th_dt_s;
    const double *minv;
    const double *c_dt;
    const double *amb;
    const double *noise;
    int64_t noise_rows;
    double *res;
    char *out;
    size_t out_cap;
} ssb_board_t;

/* One tick. in[0 .. n): the host's bytes. The plant's scalars before the step: t_s,
 * pressure_kpa, bus_v, gas_kpa and its ramp; the board's: last_heartbeat_s,
 * watchdog_tripped, silence_until_s (LINK_SILENCE), status (the MEASUREMENT's status bits but
 * the watchdog's). th_dt_s: the step the thermal matrices minv, c_dt, amb are for. bus_mode
 * (SSB_BOARD_BUS_*), demand_a (the load's demand after the limits; BUS_CLOSED only), g_bus
 * (the bus conductance). noise: this read's noise row (n + k + m + 2).
 * Returns the reply frame's length in out, or an SSB_BOARD_* code; res gets the plant's
 * scalars after the step and the frames' dt_us, seq and count (SSB_BOARD_RES_*). */
int ssb_board_tick(ssb_board_t *b, const char *in, size_t n, double t_s,
                   double pressure_kpa, double bus_v, double gas_kpa, double gas_ramp_kpa_per_s,
                   double last_heartbeat_s, int watchdog_tripped, double silence_until_s,
                   unsigned status, double th_dt_s, const double *minv, const double *c_dt,
                   const double *amb, int bus_mode, double demand_a, double g_bus,
                   const double *noise, double *res, char *out, size_t out_cap);

/* ssb_board_tick with the thermal matrices, the noise batch and the res / out buffers of b
 * (the kept fields above): noise row noise_row of the batch (SSB_BOARD_ERR_NULL when a kept
 * pointer is NULL or noise_row is outside 0 .. noise_rows). */
int ssb_board_tick_kept(ssb_board_t *b, const char *in, size_t n, double t_s,
                        double pressure_kpa, double bus_v, double gas_kpa,
                        double gas_ramp_kpa_per_s, double last_heartbeat_s, int watchdog_tripped,
                        double silence_until_s, unsigned status, int bus_mode, double demand_a,
                        double g_bus, int64_t noise_row);

#endif
