/* ssb_board.c - see ssb_board.h. Frame rules live in boards/firmware/src/proto.c, the plant in
 * ssb_plant.c; this file only sequences them the way hil/emulator/board.py does for a SAMPLE. */
#include "ssb_board.h"

#include <math.h>
#include <string.h>

#include "proto.h"

_Static_assert(SSB_BOARD_OUT_MIN == PROTO_MAX_ENCODED, "out holds one whole encoded frame");

/* Decode one segment (without its delimiter) as an intact frame of type want. */
static int take_frame(const uint8_t *seg, size_t len, uint8_t want, uint8_t *dec,
                      proto_frame_t *f)
{
    if (len == 0 || len > PROTO_MAX_ENCODED)
        return 0;
    return proto_decode(seg, len, dec, f) == PR_OK && f->type == want;
}

/* The tick's frames: exactly SAMPLE, or HEARTBEAT then SAMPLE, each followed by its 0x00 and
 * nothing else. Returns the number of frames (0: not a tick). */
static int take_tick(const uint8_t *in, size_t n, uint32_t *dt_us, uint16_t *seq)
{
    if (n < 2 || in[n - 1] != 0)
        return 0;
    const uint8_t *z = memchr(in, 0, n);
    const size_t first = (size_t)(z - in); /* z != NULL: in[n - 1] == 0 */
    uint8_t dec[PROTO_DECODE_BUF];
    proto_frame_t f;
    int frames = 1;
    const uint8_t *sample = in;
    size_t sample_len = first;
    if (first + 1 < n) { /* a second segment: the first must be a HEARTBEAT */
        sample = in + first + 1;
        sample_len = n - first - 2;
        if (memchr(sample, 0, sample_len) != NULL
            || !take_frame(in, first, MSG_HEARTBEAT, dec, &f))
            return 0;
        frames = 2;
    }
    if (!take_frame(sample, sample_len, MSG_SAMPLE, dec, &f))
        return 0;
    *dt_us = get_u32(f.payload);
    *seq = f.seq;
    return frames;
}

/* CcCvCharge.demand_a (not done) and the limits: float(np.min((cv - v_open) / r_eff)) (NaN if
 * any is NaN), Python's min(current, i_cv), 0 and done below cutoff, then
 * min(max(demand, -discharge limit), charge limit). */
static double cccv_demand(const ssb_board_t *b, const double *v_open, const double *r_eff,
                          size_t n, int *done)
{
    double i_cv = (b->cv_cell_v - v_open[0]) / r_eff[0];
    int any_nan = isnan(i_cv);
    for (size_t i = 1; i < n; i++) {
        const double x = (b->cv_cell_v - v_open[i]) / r_eff[i];
        any_nan |= isnan(x);
        i_cv = x < i_cv ? x : i_cv;
    }
    if (any_nan)
        i_cv = NAN;
    double d = i_cv < b->cc_current_a ? i_cv : b->cc_current_a;
    if (d < b->cv_cutoff_a) {
        *done = 1;
        d = 0.0;
    }
    d = -b->discharge_limit_a > d ? -b->discharge_limit_a : d;
    return b->charge_limit_a < d ? b->charge_limit_a : d;
}

/* Plant._stack_current once the load's demand is known (same operations, same order).
 * v_s0, r_s: sums of v_open and r_eff; *bus_v in: the bus before the step, out: after. */
static double stack_current(const ssb_board_t *b, int bus_mode, double demand_a, double g_bus,
                            double v_s0, double r_s, double dt_s, double *bus_v)
{
    if (bus_mode == SSB_BOARD_BUS_CLOSED) {
        const double r_path = r_s + b->path_resistance_ohm;
        const double i_s = (demand_a - v_s0 * g_bus) / (1.0 + r_path * g_bus);
        *bus_v = v_s0 + r_path * i_s;
        return i_s;
    }
    const double c = b->link_capacitance_f, r_pre = b->precharge_resistance_ohm;
    double v_inf = 0.0, tau;
    if (bus_mode == SSB_BOARD_BUS_PRECHARGE) {
        v_inf = v_s0 / (1.0 + r_pre * g_bus);
        tau = c * r_pre / (1.0 + r_pre * g_bus);
    } else {
        tau = c / g_bus;
    }
    const double v0 = *bus_v;
    const double e = exp(-dt_s / tau);
    *bus_v = v_inf + (v0 - v_inf) * e;
    if (bus_mode == SSB_BOARD_BUS_PRECHARGE) {
        const double v_avg = v_inf + (v0 - v_inf) * tau / dt_s * (1.0 - e);
        return -(v_s0 - v_avg) / r_pre;
    }
    return 0.0;
}

/* The MEASUREMENT payload (docs/protocol.md; hil/protocol.py Measurement.pack) from the
 * counts; 0 when a count, the timestamp or the length does not fit the wire. */
static size_t pack_measurement(const ssb_plant_sense_config_t *s, const int64_t *raw,
                               double t_s, uint16_t status, uint8_t *p)
{
    const size_t n = s->n, k = s->k, m = s->m, nch = n + k + m + 2;
    if (n > 255 || k > 255 || m > 255)
        return 0;
    const size_t len = 20 + 2 * (n + k) + 4 * m;
    if (len > PROTO_MAX_PAYLOAD)
        return 0;
    const double ms = nearbyint(t_s * 1000.0); /* Python's round: half to even */
    if (!(ms >= -9.2e18 && ms <= 9.2e18))
        return 0;
    for (size_t c = 0; c < n + k; c++)
        if (raw[c] < 0 || raw[c] > 0xFFFF)
            return 0;
    for (size_t c = n + k; c < nch; c++)
        if (raw[c] < INT32_MIN || raw[c] > INT32_MAX)
            return 0;
    put_u32(p, (uint32_t)(uint64_t)(int64_t)ms); /* & 0xFFFFFFFF */
    put_u16(p + 4, status);
    p[6] = (uint8_t)n;
    p[7] = (uint8_t)k;
    p[8] = (uint8_t)m;
    p[9] = 0;
    put_u32(p + 10, (uint32_t)raw[nch - 2]);
    put_u32(p + 14, (uint32_t)raw[nch - 1]);
    put_u16(p + 18, 0);
    uint8_t *q = p + 20;
    for (size_t c = 0; c < n + k; c++, q += 2)
        put_u16(q, (uint16_t)raw[c]);
    for (size_t c = n + k; c < n + k + m; c++, q += 4)
        put_u32(q, (uint32_t)raw[c]);
    return len;
}

int ssb_board_tick(ssb_board_t *b, const char *in, size_t n, double t_s,
                   double pressure_kpa, double bus_v, double gas_kpa, double gas_ramp_kpa_per_s,
                   double last_heartbeat_s, int watchdog_tripped, double silence_until_s,
                   unsigned status, double th_dt_s, const double *minv, const double *c_dt,
                   const double *amb, int bus_mode, double demand_a, double g_bus,
                   const double *noise, double *res, char *out, size_t out_cap)
{
    if (b == NULL || b->cfg == NULL || b->st == NULL || b->scfg == NULL || b->sense_buf == NULL
        || b->raw == NULL || in == NULL || minv == NULL || c_dt == NULL || amb == NULL
        || noise == NULL || res == NULL || out == NULL)
        return SSB_BOARD_ERR_NULL;
    if (out_cap < SSB_BOARD_OUT_MIN)
        return SSB_BOARD_ERR_SIZE;
    uint32_t dt_us = 0;
    uint16_t seq = 0;
    const int frames = take_tick((const uint8_t *)in, n, &dt_us, &seq);
    /* board.py advance(): one plant step only up to MAX_SUBSTEP_S (1 s) */
    if (frames == 0 || dt_us == 0 || dt_us > 1000000u)
        return SSB_BOARD_FALLBACK;
    const double dt_s = (double)dt_us * 1e-6; /* msg.dt_us * 1e-6 */
    if (dt_s != th_dt_s)
        return SSB_BOARD_FALLBACK;
    /* board.py handle(): a HEARTBEAT first resets the watchdog at the time before the step */
    const int heartbeat = frames == 2;
    const double t_new = t_s + dt_s;
    const double last_hb = heartbeat ? t_s : last_heartbeat_s;
    const int tripped = heartbeat ? 0 : watchdog_tripped != 0;
    if (!tripped && t_new - last_hb > b->heartbeat_timeout_s)
        return SSB_BOARD_FALLBACK; /* this step trips the watchdog: open_all() in Python */
    if (t_new < silence_until_s)
        return SSB_BOARD_FALLBACK; /* the reply would be silenced */
    if (bus_mode == SSB_BOARD_BUS_CLOSED_PROFILE) {
        /* TickLane.profile_demand's hit, then Plant._stack_current's limits */
        if (b->blk_t == NULL || b->blk_d == NULL || b->blk_i < 0 || b->blk_i >= b->blk_n
            || b->blk_t[b->blk_i] != t_s)
            return SSB_BOARD_NEED_BLOCK;
        demand_a = b->blk_d[b->blk_i];
        if (b->respect_limits) {
            demand_a = -b->discharge_limit_a > demand_a ? -b->discharge_limit_a : demand_a;
            demand_a = b->charge_limit_a < demand_a ? b->charge_limit_a : demand_a;
        }
    }
    res[SSB_BOARD_RES_DT_US] = (double)dt_us;
    res[SSB_BOARD_RES_SEQ] = (double)seq;
    res[SSB_BOARD_RES_FRAMES] = (double)frames;
    res[SSB_BOARD_RES_T_S] = t_s;
    res[SSB_BOARD_RES_CURRENT_A] = NAN;
    res[SSB_BOARD_RES_BUS_V] = bus_v;
    res[SSB_BOARD_RES_PRESSURE_KPA] = pressure_kpa;
    res[SSB_BOARD_RES_GAS_KPA] = gas_kpa;
    res[SSB_BOARD_RES_LOAD_DONE] = 0.0;

    const ssb_plant_config_t *cfg = b->cfg;
    ssb_plant_state_t *st = b->st;
    double sums[2];
    int rc = ssb_plant_begin(cfg, st, pressure_kpa, sums);
    if (rc)
        return SSB_BOARD_ERR_BEGIN + rc;
    if (bus_mode == SSB_BOARD_BUS_CLOSED_PROFILE) { /* the step takes the block's demand */
        b->blk_i++;
        bus_mode = SSB_BOARD_BUS_CLOSED;
    }
    int load_done = 0;
    if (bus_mode == SSB_BOARD_BUS_CLOSED_CV) {
        const size_t row = cfg->n + 3;
        demand_a = cccv_demand(b, st->work + SSB_PLANT_W_V_OPEN * row,
                               st->work + SSB_PLANT_W_R_EFF * row, cfg->n, &load_done);
        bus_mode = SSB_BOARD_BUS_CLOSED;
    }
    res[SSB_BOARD_RES_LOAD_DONE] = (double)load_done;
    const double i_s = stack_current(b, bus_mode, demand_a, g_bus, sums[0], sums[1], dt_s,
                                     &bus_v);
    res[SSB_BOARD_RES_BUS_V] = bus_v;
    double gas = gas_kpa;
    if (gas_ramp_kpa_per_s != 0.0) /* Python's truth test: NaN counts as set */
        gas += gas_ramp_kpa_per_s * dt_s;
    double p_out = 0.0;
    rc = ssb_plant_finish(cfg, st, i_s, dt_s, minv, c_dt, amb, gas, &p_out);
    if (rc)
        return SSB_BOARD_ERR_FINISH + rc;
    res[SSB_BOARD_RES_T_S] = t_new;
    res[SSB_BOARD_RES_CURRENT_A] = i_s;
    res[SSB_BOARD_RES_PRESSURE_KPA] = p_out;
    res[SSB_BOARD_RES_GAS_KPA] = gas;
    rc = ssb_plant_sense(b->scfg, st, t_new, i_s, bus_v, noise, b->sense_buf, b->raw);
    if (rc)
        return SSB_BOARD_ERR_SENSE + rc;
    if (b->lc_last != NULL && b->scfg->m > 0)
        memcpy(b->lc_last, b->raw + b->scfg->n + b->scfg->k, b->scfg->m * sizeof *b->lc_last);
    if (tripped)
        status |= b->watchdog_status_bit;
    uint8_t payload[PROTO_MAX_PAYLOAD];
    const size_t len = pack_measurement(b->scfg, b->raw, t_new, (uint16_t)status, payload);
    if (len == 0)
        return SSB_BOARD_UNENCODABLE;
    return (int)proto_encode(PROTO_VERSION, MSG_MEASUREMENT, seq, payload, (uint16_t)len,
                             (uint8_t *)out);
}

int ssb_board_tick_kept(ssb_board_t *b, const char *in, size_t n, double t_s,
                        double pressure_kpa, double bus_v, double gas_kpa,
                        double gas_ramp_kpa_per_s, double last_heartbeat_s, int watchdog_tripped,
                        double silence_until_s, unsigned status, int bus_mode, double demand_a,
                        double g_bus, int64_t noise_row)
{
    if (b == NULL || b->scfg == NULL || b->noise == NULL || noise_row < 0
        || noise_row >= b->noise_rows)
        return SSB_BOARD_ERR_NULL;
    const size_t nch = b->scfg->n + b->scfg->k + b->scfg->m + 2;
    return ssb_board_tick(b, in, n, t_s, pressure_kpa, bus_v, gas_kpa, gas_ramp_kpa_per_s,
                          last_heartbeat_s, watchdog_tripped, silence_until_s, status, b->th_dt_s,
                          b->minv, b->c_dt, b->amb, bus_mode, demand_a, g_bus,
                          b->noise + (size_t)noise_row * nch, b->res, b->out, b->out_cap);
}
