/* ssb_board_tick under AddressSanitizer + UBSan: the plant rig of test_plant_asan.c (included,
 * its main renamed), every input and output buffer exactly sized on the heap; error paths and
 * refusals (SSB_BOARD_FALLBACK) write nothing, neither the plant state nor out nor res; random
 * ticks over every bus mode (CC-CV with NaN and zero r_eff too), 1..40 and 150 cells, random
 * bytes, damaged and truncated frames, and replies that must decode as the MEASUREMENT of the
 * request's seq (or SSB_BOARD_UNENCODABLE when a count or the length does not fit). The
 * numbers are checked against the general path in tests/test_board_lane.py. */
#define main plant_asan_main
#include "test_plant_asan.c"
#undef main

#include "proto.h"
#include "ssb_board.h"

typedef struct {
    rig_t r;
    ssb_board_t b;
} board_rig_t;

static void board_init(board_rig_t *br, size_t n, size_t k, size_t m)
{
    rig_init(&br->r, n, k, m);
    br->b = (ssb_board_t){.cfg = &br->r.cfg, .st = &br->r.st, .scfg = &br->r.scfg,
                          .sense_buf = br->r.buf, .raw = br->r.raw, .heartbeat_timeout_s = 1.0,
                          .path_resistance_ohm = 0.01, .link_capacitance_f = 1e-3,
                          .precharge_resistance_ohm = 50.0, .watchdog_status_bit = 1u << 3,
                          .cv_cell_v = 4.1, .cc_current_a = 20.0, .cv_cutoff_a = 1.0,
                          .charge_limit_a = 30.0, .discharge_limit_a = 30.0};
    /* the wire types' ranges (the rig's own bounds go beyond them: see random_ticks) */
    rig_t *r = &br->r;
    for (size_t c = 0; c < r->nch; c++) {
        const int lc = c >= n + k && c < n + k + m, i32 = c >= n + k + m;
        r->chlo[c] = lc ? -8388608.0 : i32 ? -2147483647.0 : 0.0;
        r->chhi[c] = lc ? 8388607.0 : i32 ? 2147483646.0 : 65534.0;
    }
}

/* a frame of type t with payload p[0 .. len), in a heap block of exactly its size */
static size_t put_frame(uint8_t *dst, uint8_t type, uint16_t seq, const uint8_t *p, size_t len)
{
    uint8_t tmp[PROTO_MAX_ENCODED];
    size_t w = proto_encode(PROTO_VERSION, type, seq, p, (uint16_t)len, tmp);
    CHECK(w > 0);
    memcpy(dst, tmp, w);
    return w;
}

static size_t tick_bytes(uint8_t *dst, int heartbeat, uint32_t dt_us, uint16_t seq)
{
    size_t w = 0;
    if (heartbeat) {
        const uint8_t hb[6] = {1, 0, 0, 0, 0, 0};
        w = put_frame(dst, MSG_HEARTBEAT, (uint16_t)(seq - 1), hb, sizeof hb);
    }
    uint8_t s[4];
    put_u32(s, dt_us);
    return w + put_frame(dst + w, MSG_SAMPLE, seq, s, sizeof s);
}

/* the plant state's bytes, to check that a refusal changed nothing */
static uint64_t state_hash(const rig_t *r)
{
    uint64_t h = 1469598103934665603ull;
    const double *parts[] = {r->soc, r->x, r->temp, r->cell_v, r->ocv, r->ic, r->rser};
    const size_t sizes[] = {r->n, 3 * r->n, r->n + 3, r->n, r->n, r->n, r->n};
    for (size_t p = 0; p < 7; p++) {
        const uint8_t *q = (const uint8_t *)parts[p];
        for (size_t i = 0; i < sizes[p] * sizeof(double); i++)
            h = (h ^ q[i]) * 1099511628211ull;
    }
    return h;
}

static int call(board_rig_t *br, const uint8_t *in, size_t n, double t, int wd, double silence,
                double th_dt, int mode, double *res, char *out, size_t cap)
{
    rig_t *r = &br->r;
    const double ramp = urand() < 0.3 ? uni(-1.0, 1.0) : 0.0, hb = t - uni(0.0, 1.2);
    const double demand = uni(-40.0, 40.0), g_bus = uni(1e-6, 1e-2);
    if (cap == SSB_BOARD_OUT_MIN && urand() < 0.5) { /* the same call with the kept fields */
        ssb_board_t *b = &br->b;
        b->th_dt_s = th_dt, b->minv = r->minv, b->c_dt = r->c_dt, b->amb = r->amb;
        b->noise = r->noise, b->noise_rows = 1, b->res = res, b->out = out, b->out_cap = cap;
        return ssb_board_tick_kept(b, (const char *)in, n, t, 400.0, 50.0, 0.0, ramp, hb, wd,
                                   silence, 0x80u, mode, demand, g_bus, 0);
    }
    return ssb_board_tick(&br->b, (const char *)in, n, t, 400.0, 50.0, 0.0, ramp, hb, wd,
                          silence, 0x80u, th_dt, r->minv, r->c_dt, r->amb, mode, demand, g_bus,
                          r->noise, res, out, cap);
}

static void refusals_and_errors(void)
{
    board_rig_t br;
    board_init(&br, 7, 2, 2);
    double *res = dalloc(SSB_BOARD_RES_COUNT);
    char *out = malloc(SSB_BOARD_OUT_MIN);
    CHECK(out);
    uint8_t *frames = malloc(2 * PROTO_MAX_ENCODED);
    CHECK(frames);
    size_t n = tick_bytes(frames, 1, 100000, 9);
    for (size_t i = 0; i < SSB_BOARD_RES_COUNT; i++)
        res[i] = -7.0;
    memset(out, 0x5A, SSB_BOARD_OUT_MIN);
    const uint64_t h0 = state_hash(&br.r);
    ssb_board_t bad = br.b;
    bad.st = NULL;
    CHECK(ssb_board_tick(&bad, (const char *)frames, n, 0.0, 400.0, 0.0, 0.0, 0.0, 0.0, 0, -1.0,
                         0, 0.1, br.r.minv, br.r.c_dt, br.r.amb, 0, 0.0, 1e-3, br.r.noise, res,
                         out, SSB_BOARD_OUT_MIN) == SSB_BOARD_ERR_NULL);
    CHECK(ssb_board_tick(&br.b, NULL, 0, 0.0, 400.0, 0.0, 0.0, 0.0, 0.0, 0, -1.0, 0, 0.1,
                         br.r.minv, br.r.c_dt, br.r.amb, 0, 0.0, 1e-3, br.r.noise, res, out,
                         SSB_BOARD_OUT_MIN) == SSB_BOARD_ERR_NULL);
    CHECK(ssb_board_tick(&br.b, (const char *)frames, n, 0.0, 400.0, 0.0, 0.0, 0.0, 0.0, 0, -1.0,
                         0, 0.1, br.r.minv, br.r.c_dt, br.r.amb, 0, 0.0, 1e-3, br.r.noise, res,
                         out, SSB_BOARD_OUT_MIN - 1) == SSB_BOARD_ERR_SIZE);
    /* the kept fields: a NULL batch or a row outside it */
    CHECK(ssb_board_tick_kept(NULL, (const char *)frames, n, 0.0, 400.0, 0.0, 0.0, 0.0, 0.0, 0,
                              -1.0, 0, 0, 0.0, 1e-3, 0) == SSB_BOARD_ERR_NULL);
    CHECK(ssb_board_tick_kept(&br.b, (const char *)frames, n, 0.0, 400.0, 0.0, 0.0, 0.0, 0.0, 0,
                              -1.0, 0, 0, 0.0, 1e-3, 0) == SSB_BOARD_ERR_NULL);
    br.b.noise = br.r.noise, br.b.noise_rows = 1;
    br.b.res = res, br.b.out = out, br.b.out_cap = SSB_BOARD_OUT_MIN;
    CHECK(ssb_board_tick_kept(&br.b, (const char *)frames, n, 0.0, 400.0, 0.0, 0.0, 0.0, 0.0, 0,
                              -1.0, 0, 0, 0.0, 1e-3, 1) == SSB_BOARD_ERR_NULL);
    CHECK(ssb_board_tick_kept(&br.b, (const char *)frames, n, 0.0, 400.0, 0.0, 0.0, 0.0, 0.0, 0,
                              -1.0, 0, 0, 0.0, 1e-3, -1) == SSB_BOARD_ERR_NULL);
    /* minv NULL (not set yet): ssb_board_tick's own check */
    CHECK(ssb_board_tick_kept(&br.b, (const char *)frames, n, 0.0, 400.0, 0.0, 0.0, 0.0, 0.0, 0,
                              -1.0, 0, 0, 0.0, 1e-3, 0) == SSB_BOARD_ERR_NULL);
    /* refused: dt without matrices, dt 0 or above 1 s, a trip, a silenced reply */
    CHECK(call(&br, frames, n, 5.0, 0, -1.0, 0.2, 2, res, out, SSB_BOARD_OUT_MIN) == 0);
    size_t n0 = tick_bytes(frames, 0, 0, 3);
    CHECK(call(&br, frames, n0, 5.0, 0, -1.0, 0.0, 2, res, out, SSB_BOARD_OUT_MIN) == 0);
    n0 = tick_bytes(frames, 0, 1000001, 3);
    CHECK(call(&br, frames, n0, 5.0, 0, -1.0, 1.000001, 2, res, out, SSB_BOARD_OUT_MIN) == 0);
    n0 = tick_bytes(frames, 0, 100000, 3);
    CHECK(ssb_board_tick(&br.b, (const char *)frames, n0, 5.0, 400.0, 0.0, 0.0, 0.0, 3.0, 0, -1.0,
                         0, 100000 * 1e-6, br.r.minv, br.r.c_dt, br.r.amb, 0, 0.0, 1e-3,
                         br.r.noise, res, out, SSB_BOARD_OUT_MIN) == SSB_BOARD_FALLBACK);
    CHECK(call(&br, frames, n0, 5.0, 1, 99.0, 100000 * 1e-6, 2, res, out, SSB_BOARD_OUT_MIN)
          == 0);
    /* every prefix, every single-bit flip, the frames swapped: refused or a clean tick */
    n = tick_bytes(frames, 1, 100000, 9);
    for (size_t cut = 0; cut < n; cut++) {
        uint8_t *in = malloc(cut ? cut : 1);
        CHECK(in);
        memcpy(in, frames, cut);
        CHECK(call(&br, in, cut, 5.0, 1, -1.0, 0.1, 2, res, out, SSB_BOARD_OUT_MIN) == 0);
        free(in);
    }
    CHECK(state_hash(&br.r) == h0);
    for (size_t i = 0; i < SSB_BOARD_RES_COUNT; i++)
        CHECK(res[i] == -7.0);
    for (size_t i = 0; i < SSB_BOARD_OUT_MIN; i++)
        CHECK(out[i] == 0x5A);
    for (size_t bit = 0; bit < 8 * n; bit++) {
        uint8_t *in = malloc(n);
        CHECK(in);
        memcpy(in, frames, n);
        in[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        int rc = call(&br, in, n, 5.0, 1, -1.0, 0.1, 2, res, out, SSB_BOARD_OUT_MIN);
        CHECK(rc == 0); /* the CRC catches every single-bit error */
        free(in);
    }
    free(res);
    free(out);
    free(frames);
    rig_free(&br.r);
}

/* random ticks; each reply decodes as the MEASUREMENT of its seq */
static void random_ticks(size_t n, size_t k, size_t m, int ticks)
{
    board_rig_t br;
    board_init(&br, n, k, m);
    double *res = dalloc(SSB_BOARD_RES_COUNT);
    char *out = malloc(SSB_BOARD_OUT_MIN);
    CHECK(out);
    double t = 0.0;
    int n_ok = 0, n_unenc = 0, n_block = 0;
    /* SSB_BOARD_BUS_CLOSED_PROFILE's block (refilled at the tick's time when it misses) and the
     * load cells' last counts, each exactly sized */
    double *blk_t = dalloc(4), *blk_d = dalloc(4);
    int64_t *lc_last = m ? malloc(m * sizeof *lc_last) : NULL;
    br.b.blk_t = blk_t, br.b.blk_d = blk_d, br.b.blk_n = 4, br.b.blk_i = 4;
    br.b.lc_last = lc_last;
    for (int s = 0; s < ticks; s++) {
        br.r.cfg.loss_any = urand() < 0.3, br.r.cfg.g_any = urand() < 0.3;
        br.r.cfg.heat_fault_any = urand() < 0.3, br.r.scfg.vtap_any = urand() < 0.3;
        const uint32_t dt_us = urand() < 0.5 ? 100000u : 1u + (uint32_t)(urand() * 999999.0);
        const int hb = urand() < 0.5, mode = (int)(urand() * 5.0);
        br.b.respect_limits = urand() < 0.5;
        if (mode == SSB_BOARD_BUS_CLOSED_PROFILE && urand() < 0.3) { /* a block from t on */
            for (int j = 0; j < 4; j++) {
                blk_t[j] = t + j * (double)dt_us * 1e-6;
                blk_d[j] = uni(-60.0, 60.0);
            }
            br.b.blk_i = 0;
        }
        const int64_t blk_i0 = br.b.blk_i;
        const uint16_t seq = (uint16_t)(urand() * 65536.0);
        uint8_t tmp[2 * PROTO_MAX_ENCODED];
        const size_t nb = tick_bytes(tmp, hb, dt_us, seq);
        uint8_t *in = malloc(nb);
        CHECK(in);
        memcpy(in, tmp, nb);
        for (size_t c = 0; c < br.r.nch; c++)
            br.r.noise[c] = uni(-1e-3, 1e-3);
        const size_t i = (size_t)s % n, ch = (size_t)s % br.r.nch;
        const double r0f = br.r.r0f[i], rcf = br.r.rcf[i], hi = br.r.chhi[ch];
        if (s % 13 == 0) { /* zero and NaN resistance reach the CC-CV minimum */
            br.r.r0f[i] = s % 2 ? 0.0 : NAN;
            br.r.rcf[i] = 0.0;
        }
        if (s % 11 == 0) { /* a count beyond its wire type */
            br.r.chhi[ch] = 9.2e18;
            br.r.noise[ch] = 1e13;
        }
        int rc = call(&br, in, nb, t, 0, -1.0, (double)dt_us * 1e-6, mode, res, out,
                      SSB_BOARD_OUT_MIN);
        br.r.r0f[i] = r0f, br.r.rcf[i] = rcf, br.r.chhi[ch] = hi;
        if (rc <= SSB_BOARD_ERR_BEGIN + SSB_PLANT_ERR_NULL && rc >= SSB_BOARD_ERR_BEGIN - 99) {
            reset_state(&br.r); /* a random walk may leave the finite range */
            rc = call(&br, in, nb, t, 0, -1.0, (double)dt_us * 1e-6, mode, res, out,
                      SSB_BOARD_OUT_MIN);
        }
        free(in);
        if (rc == SSB_BOARD_NEED_BLOCK) { /* this tick's time not at the block's index */
            CHECK(mode == SSB_BOARD_BUS_CLOSED_PROFILE && br.b.blk_i == blk_i0);
            CHECK(blk_i0 >= 4 || blk_t[blk_i0] != t);
            n_block++;
            continue;
        }
        if (mode == SSB_BOARD_BUS_CLOSED_PROFILE && rc != 0)
            CHECK(br.b.blk_i == blk_i0 + 1);
        if (rc == 0)
            continue; /* a watchdog trip (last heartbeat drawn up to 1.2 s back) */
        n_ok += rc > 0, n_unenc += rc == SSB_BOARD_UNENCODABLE;
        CHECK(res[SSB_BOARD_RES_DT_US] == (double)dt_us && res[SSB_BOARD_RES_SEQ] == seq);
        CHECK(res[SSB_BOARD_RES_FRAMES] == (hb ? 2.0 : 1.0));
        if (rc < 0) {
            /* a finish error from a random-walk state, or counts that do not fit the wire */
            CHECK(rc == SSB_BOARD_UNENCODABLE
                  || (rc <= SSB_BOARD_ERR_FINISH + SSB_PLANT_ERR_NULL
                      && rc >= SSB_BOARD_ERR_SENSE + SSB_PLANT_ERR_STATE));
            if (rc != SSB_BOARD_UNENCODABLE)
                reset_state(&br.r);
            continue;
        }
        t = res[SSB_BOARD_RES_T_S];
        CHECK((size_t)rc <= SSB_BOARD_OUT_MIN && out[rc - 1] == 0);
        CHECK(memchr(out, 0, (size_t)rc - 1) == NULL);
        uint8_t dec[PROTO_DECODE_BUF];
        proto_frame_t f;
        CHECK(proto_decode((const uint8_t *)out, (size_t)rc - 1, dec, &f) == PR_OK);
        CHECK(f.type == MSG_MEASUREMENT && f.seq == seq);
        CHECK(f.length == 20 + 2 * (n + k) + 4 * m);
        CHECK(f.payload[6] == n && f.payload[7] == k && f.payload[8] == m);
        for (size_t c = 0; c < n + k; c++)
            CHECK(get_u16(f.payload + 20 + 2 * c) == (uint16_t)br.r.raw[c]);
        if (m)
            CHECK(memcmp(lc_last, br.r.raw + n + k, m * sizeof *lc_last) == 0);
    }
    CHECK(n_block > 0);
    free(blk_t);
    free(blk_d);
    free(lc_last);
    /* both outcomes seen (a 150-cell payload never fits: only UNENCODABLE) */
    CHECK(n_unenc > 0 && (n_ok > 0 || 20 + 2 * (n + k) + 4 * m > PROTO_MAX_PAYLOAD));
    free(res);
    free(out);
    rig_free(&br.r);
}

int main(void)
{
    refusals_and_errors();
    for (size_t n = 1; n <= 40; n++)
        random_ticks(n, n % 7, n % 5, 80);
    random_ticks(150, 6, 4, 100); /* payload > 240 B: always SSB_BOARD_UNENCODABLE */
    random_ticks(23, 4, 4, 3000);
    printf("ok\n");
    return 0;
}
