/*
 * ssb_stack_step under AddressSanitizer + UBSan: the front end's rig (test_frontend_asan.c)
 * and the core's fixture (test_core_asan.c), each buffer exactly sized on the heap, chained
 * as bms/stack_step.py chains them (the core reads the front end's clean values in place).
 * Error paths (NULLs, sizes, a front-end error runs nothing, a core error leaves the front
 * end's work), 1..40 and 100 cells (the qsort median), random counts with sentinels, currents
 * NaN/Inf/implausible, NaN bleeds; every figure checked against a plain recomputation.
 * ssb_stack_receive: the timestamp that did not move, the scaling with the wire's "no value",
 * the core's interval (first, plausible, wrapped, implausible), the gap, the status bits, the
 * current check's CUSUM and the CCD limit against a plain bilinear recomputation.
 */
#define main core_driver_main /* the two drivers' fixtures, not their programs */
#include "test_core_asan.c"
#undef main
#define main frontend_driver_main
#include "test_frontend_asan.c"
#undef main

#include "ssb_stack.h"

typedef struct {
    fixture_t f;
    rig_t r;
    ssb_stack_t sk;
    double *innovation, *scratch, *bleed; /* n cells each */
    double *share, *offset;               /* load cells each */
} chain_t;

static void chain_init(chain_t *c, int32_t n, size_t extra_fe_cells, int32_t k, int32_t mlc)
{
    fixture_init(&c->f, n, k, mlc);
    size_t nc = (size_t)n + extra_fe_cells;
    rig_init(&c->r, nc, (size_t)k, (size_t)mlc);
    fill(&c->r, nc, (size_t)k, (size_t)mlc, 100000);
    double *soc0 = dalloc((size_t)n);
    for (int32_t i = 0; i < n; i++)
        soc0[i] = 0.3 + 0.01 * i;
    CHECK(ssb_state_init(&c->f.prm, &c->f.st, soc0, NULL, NULL, 0.05, 0.02, 0.1) == SSB_OK);
    free(soc0);
    c->f.m.cell_voltage_v = c->r.clean;
    c->f.m.temperature_c = k > 0 ? c->r.clean + nc : NULL;
    c->f.m.pressure_kpa = mlc > 0 ? c->r.clean + nc + (size_t)k : NULL;
    c->f.m.bleed_a = c->f.bleed;
    c->innovation = dalloc((size_t)n);
    c->scratch = dalloc((size_t)n);
    c->bleed = dalloc((size_t)n);
    c->share = mlc > 0 ? dalloc((size_t)mlc) : NULL;
    c->offset = mlc > 0 ? dalloc((size_t)mlc) : NULL;
    for (int32_t j = 0; j < mlc; j++) {
        c->share[j] = 0.9 + 0.05 * j;
        c->offset[j] = 3.0 - j;
    }
    memset(&c->sk, 0, sizeof c->sk); /* every pointer NULL, every number 0 */
    c->sk.fe_cfg = &c->r.cfg;
    c->sk.fe_st = &c->r.st;
    c->sk.raw = c->r.raw;
    c->sk.values = c->r.values;
    c->sk.clean = c->r.clean;
    c->sk.bad = c->r.bad;
    c->sk.stuck = c->r.stuck;
    c->sk.jump = c->r.jump;
    c->sk.prm = &c->f.prm;
    c->sk.st = &c->f.st;
    c->sk.meas = &c->f.m;
    c->sk.out = &c->f.out;
    c->sk.bleed_in = c->f.bleed;
    c->sk.innovation_v = c->innovation;
    c->sk.scratch = c->scratch;
    c->sk.current_plausible_a = 300.0;
}

static void chain_free(chain_t *c)
{
    free(c->innovation);
    free(c->scratch);
    free(c->bleed);
    free(c->share);
    free(c->offset);
    rig_free(&c->r);
    fixture_free(&c->f);
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The figures recomputed plainly from the buffers the step left. */
static void check_figures(const chain_t *c, const ssb_stack_result_t *res, double current_a)
{
    size_t n = (size_t)c->f.prm.n_cells;
    int plausible = isfinite(current_a) && fabs(current_a) <= 300.0;
    CHECK(plausible ? res->current_a == current_a : isnan(res->current_a));
    double total = 0.0, sig = 0.0;
    double *vals = dalloc(n);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        double v = c->r.clean[i], d = v - c->f.out.voltage_pred_v[i];
        total += v;
        sig += c->f.out.soc_sigma[i];
        CHECK(c->innovation[i] == d || (isnan(d) && isnan(c->innovation[i])));
        if (!isnan(d))
            vals[k++] = d;
        CHECK(c->f.bleed[i] == c->bleed[i] || (isnan(c->bleed[i]) && isnan(c->f.bleed[i])));
    }
    CHECK(res->stack_voltage_v == total || (isnan(total) && isnan(res->stack_voltage_v)));
    CHECK(res->soc_sigma_sum == sig || (isnan(sig) && isnan(res->soc_sigma_sum)));
    CHECK(res->innovation_n == (int32_t)k);
    if (k) {
        qsort(vals, k, sizeof *vals, cmp);
        double med = (k % 2) ? vals[k / 2] : 0.5 * (vals[k / 2 - 1] + vals[k / 2]);
        CHECK(res->innovation_median_v == med);
    } else {
        CHECK(isnan(res->innovation_median_v));
    }
    double lo = c->f.out.charge_limit_a[0];
    if (c->f.out.charge_limit_a[1] < lo)
        lo = c->f.out.charge_limit_a[1];
    CHECK(res->charge_limit_a == lo || (isnan(lo) && isnan(res->charge_limit_a)));
    /* the coldest thermistor, the lowest load cell, the imbalance against the baseline */
    const ssb_fe_config_t *fc = &c->r.cfg;
    const double *temps = c->r.clean + fc->n_cells, *press = temps + fc->n_thermistors;
    double lt = INFINITY, lp = INFINITY, hi = -INFINITY, lw = INFINITY;
    size_t valid = 0;
    for (size_t j = 0; j < fc->n_thermistors; j++)
        lt = temps[j] < lt ? temps[j] : lt;
    for (size_t j = 0; j < fc->n_load_cells; j++) {
        lp = press[j] < lp ? press[j] : lp;
        if (isnan(press[j]) || !c->sk.lc_share)
            continue;
        double x = press[j];
        if (c->sk.lc_offset_kpa)
            x -= c->sk.lc_offset_kpa[j];
        x /= c->sk.lc_share[j];
        hi = x > hi ? x : hi;
        lw = x < lw ? x : lw;
        valid++;
    }
    CHECK(isinf(lt) ? isnan(res->min_temperature_c) : res->min_temperature_c == lt);
    CHECK(isinf(lp) ? isnan(res->min_pressure_kpa) : res->min_pressure_kpa == lp);
    if (!c->sk.lc_share || valid == 0)
        CHECK(isnan(res->imbalance_kpa));
    else
        CHECK(res->imbalance_kpa == (valid < 2 ? 0.0 : hi - lw));
    free(vals);
}

static void run_chain(int32_t n, size_t extra, int32_t k, int32_t mlc, int steps)
{
    chain_t c;
    chain_init(&c, n, extra, k, mlc);
    size_t nc = (size_t)n + extra, nch = nc + (size_t)k + (size_t)mlc;
    ssb_stack_result_t res;
    /* the pack-wide destinations, exactly this stack's size (one value each per stack) */
    double *pc[5], *pt = k > 0 ? dalloc((size_t)k) : NULL, *ps[5];
    for (int j = 0; j < 5; j++) {
        pc[j] = dalloc((size_t)n);
        ps[j] = dalloc(1);
    }
    for (int s = 0; s < steps; s++) {
        int to_pack = s % 2;
        double **cells_dst[] = {&c.sk.pack_cell_v, &c.sk.pack_soc, &c.sk.pack_soc_sigma,
                                &c.sk.pack_leak_a, &c.sk.pack_leak_sigma_a};
        double **scal_dst[] = {&c.sk.pack_p_mean_kpa, &c.sk.pack_p_rate_kpa_per_s,
                               &c.sk.pack_p_rate_abs_kpa_per_s, &c.sk.pack_p_cusum_kpa,
                               &c.sk.pack_p_imbalance_kpa};
        for (int j = 0; j < 5; j++) {
            *cells_dst[j] = to_pack ? pc[j] : NULL;
            *scal_dst[j] = to_pack ? ps[j] : NULL;
            ps[j][0] = -7.0;
        }
        c.sk.pack_temperature_c = to_pack ? pt : NULL;
        for (size_t i = 0; i < nch; i++) {
            double u = urand();
            if (i < nc)
                c.r.raw[i] = u < 0.02 ? 0xFFFF : (int64_t)(33000 + 8000 * u);
            else if (i < nc + (size_t)k)
                c.r.raw[i] = u < 0.05 ? 0xFFFF : (int64_t)(29000 + 4000 * u);
            else
                c.r.raw[i] = u < 0.05 ? INT32_MIN : (s % 40 < 30 ? 100000 : (int64_t)(90000 + 20000 * u));
        }
        if (s % 37 == 3)
            c.r.raw[0] = INT64_MAX;
        /* the baseline: unknown, shares alone, shares and offsets */
        c.sk.lc_share = (s % 3 && mlc > 0) ? c.share : NULL;
        c.sk.lc_offset_kpa = (s % 3 == 2 && mlc > 0) ? c.offset : NULL;
        double cur = (urand() - 0.5) * 100.0;
        if (s % 23 == 4)
            cur = NAN;
        if (s % 29 == 5)
            cur = INFINITY;
        if (s % 31 == 6)
            cur = 1e6;
        for (int32_t i = 0; i < n; i++) {
            double u = urand();
            c.bleed[i] = u < 0.02 ? NAN : (u < 0.4 ? 0.1 * u : 0.0);
        }
        CHECK(ssb_stack_step(&c.sk, cur, c.r.st.last_i, c.r.st.have_last_raw, 0.1, c.bleed,
                             &res) == 0);
        CHECK(res.fe_rc == 0 && res.core_rc == 0);
        check_figures(&c, &res, cur);
        if (to_pack) {
            const double *src[] = {c.r.clean, c.f.st.soc, c.f.out.soc_sigma, c.f.st.leak_a,
                                   c.f.out.leak_sigma_a};
            for (int j = 0; j < 5; j++)
                CHECK(memcmp(pc[j], src[j], (size_t)n * sizeof(double)) == 0);
            if (k > 0)
                CHECK(memcmp(pt, c.r.clean + nc, (size_t)k * sizeof(double)) == 0);
            const double *so = c.f.out.stack;
            CHECK(ps[0][0] == so[SSB_OUT_PRESSURE_MEAN_KPA] || isnan(ps[0][0]));
            CHECK(ps[2][0] == fabs(so[SSB_OUT_PRESSURE_RATE_KPA_PER_S]) || isnan(ps[2][0]));
            CHECK(c.sk.lc_share ? (ps[4][0] == res.imbalance_kpa || isnan(ps[4][0]))
                                : ps[4][0] == -7.0);
        }
    }
    for (int j = 0; j < 5; j++) {
        free(pc[j]);
        free(ps[j]);
    }
    free(pt);
    chain_free(&c);
}


/* bms.charging.CcdLimit.ccd_ma_cm2, written plainly (linear search) */
static double ccd_plain(const double *ps, size_t np_, const double *ts, size_t nt,
                        const double *tab, double p, double t)
{
    if (!(p >= ps[0]) || !(t >= ts[0]))
        return 0.0;
    size_t i = np_ - 1, j = nt - 1;
    double fp = 0.0, ft = 0.0;
    if (p < ps[np_ - 1]) {
        i = 0;
        while (ps[i + 1] <= p)
            i++;
        fp = (p - ps[i]) / (ps[i + 1] - ps[i]);
    }
    const double *lo = tab + j * np_, *hi = lo;
    if (t < ts[nt - 1]) {
        j = 0;
        while (ts[j + 1] <= t)
            j++;
        ft = (t - ts[j]) / (ts[j + 1] - ts[j]);
        lo = tab + j * np_;
        hi = lo + np_;
    }
    double a = fp > 0.0 ? lo[i] + fp * (lo[i + 1] - lo[i]) : lo[i];
    double b = fp > 0.0 ? hi[i] + fp * (hi[i + 1] - hi[i]) : hi[i];
    return a + ft * (b - a);
}

static void run_receive(void)
{
    chain_t c;
    chain_init(&c, 23, 0, 6, 4);
    ssb_stack_result_t res;
    int64_t *wire = malloc(4 * sizeof *wire);
    double *ps = dalloc(3), *ts = dalloc(2), *tab = dalloc(6);
    const double p_axis[] = {50.0, 150.0, 400.0}, t_axis[] = {0.0, 25.0};
    const double table[] = {0.5, 1.0, 2.0, 1.0, 2.5, 4.0};
    memcpy(ps, p_axis, sizeof p_axis);
    memcpy(ts, t_axis, sizeof t_axis);
    memcpy(tab, table, sizeof table);
    ssb_cc_config_t cc = {.rest_threshold_a = 2.0, .rest_debounce_s = 1.0,
                          .cusum_allowance_v = 0.002, .cusum_allowance_rel = 0.03,
                          .cusum_limit_v_s = 0.5, .sigma_gate = 0.05, .disagree_a = 5.0,
                          .disagree_debounce_s = 1.0};
    double *cusum_pos = dalloc(1), *cusum_neg = dalloc(1), *last_t = dalloc(1);
    double *rest = dalloc(1), *dis = dalloc(1), *scr = dalloc(1);
    uint8_t *raised = calloc(1, 1);
    int32_t *why = calloc(1, sizeof *why);
    last_t[0] = rest[0] = dis[0] = NAN;
    ssb_cc_state_t ccs = {cusum_pos, cusum_neg, last_t, rest, dis, raised, why, scr};
    CHECK(ssb_stack_receive(&c.sk, 0.1, 0.1, NAN, 0, -1, NAN, -1, c.bleed, &res)
          == SSB_STACK_ERR_NULL);
    c.sk.wire = wire;
    c.sk.current_lsb_a = 0.01;
    c.sk.current_offset_a = -0.5;
    c.sk.bus_lsb_v = 0.001;
    c.sk.invalid_i32 = 0x7FFFFFFF;
    c.sk.timestamp_gap_ms = 300.0;
    c.sk.status_unusual = 0x58;
    c.sk.cc_cfg = &cc;
    c.sk.cc_st = &ccs;
    c.sk.cc_stack = 0;
    c.sk.ccd_p = ps;
    c.sk.ccd_t = ts;
    c.sk.ccd_table = tab;
    c.sk.ccd_np = 3;
    c.sk.ccd_nt = 2;
    c.sk.ccd_amps_per_ma_cm2 = 0.9;
    wire[0] = 1000;
    wire[1] = 0;
    wire[2] = 1234;
    wire[3] = 80000;
    CHECK(ssb_stack_receive(&c.sk, 0.1, 0.1, NAN, 0, 1000, NAN, -1, c.bleed, &res)
          == SSB_STACK_NOT_MOVED);
    double last_ts_s = NAN;
    int64_t last = -1;
    for (int s = 0; s < 400; s++) {
        const double t = 0.1 * (s + 1);
        wire[0] = (s % 50 == 7) ? wire[0] + 100000 : wire[0] + 100; /* a gap now and then */
        if (s == 200)
            wire[0] = 4294967200LL; /* wraps on the next */
        else if (s == 201)
            wire[0] = 4;
        wire[1] = (s % 17 == 3) ? 0x10 : 0x3;
        wire[2] = (s % 13 == 5) ? 0x7FFFFFFF : 1234 + s;
        wire[3] = (s % 19 == 6) ? 0x7FFFFFFF : 80000;
        for (size_t i = 0; i < 23 + 6 + 4; i++)
            c.r.raw[i] = i < 23 ? (int64_t)(36000 + 50 * urand())
                       : (i < 29 ? (int64_t)(30000 + 500 * urand()) : 100000 + s);
        if (s > 0 && !isnan(res.min_pressure_kpa) && !isnan(res.min_temperature_c)) {
            /* axes around the last conditions: below, inside, on and above the table */
            const double u = (urand() - 0.5) * 3.0, v = (urand() - 0.5) * 3.0;
            for (int i = 0; i < 3; i++)
                ps[i] = res.min_pressure_kpa + (s % 11 == 0 ? 0.0 : u) + 0.7 * (i - 1);
            ts[0] = res.min_temperature_c + v - 0.4;
            ts[1] = ts[0] + (s % 7 == 0 ? 0.0 : 0.8) + 1e-3;
        }
        CHECK(ssb_stack_receive(&c.sk, t, 0.1, c.r.st.last_i, c.r.st.have_last_raw, last,
                                last_ts_s, last, c.bleed, &res) == 0);
        const double cur = wire[2] == 0x7FFFFFFF ? NAN : (double)wire[2] * 0.01 - 0.5;
        CHECK(res.timestamp_ms == wire[0] && res.status == wire[1]);
        CHECK(wire[2] == 0x7FFFFFFF ? isnan(res.current_in_a) : res.current_in_a == cur);
        CHECK(wire[3] == 0x7FFFFFFF ? isnan(res.bus_voltage_v) : res.bus_voltage_v == 80.0);
        const double ts_s = (double)wire[0] / 1000.0;
        CHECK(res.timestamp_s == ts_s);
        double want_dt = 0.1;
        if (!isnan(last_ts_s)) {
            double d = fmod(ts_s - last_ts_s, 4294967.296);
            if (d < 0.0)
                d += 4294967.296;
            if (d > 0.0 && d <= 0.5)
                want_dt = d;
        }
        CHECK(res.core_dt_s == want_dt);
        CHECK(last_t[0] == t); /* the current check saw this stack at t */
        const double want_ccd = ccd_plain(ps, 3, ts, 2, tab, res.min_pressure_kpa,
                                          res.min_temperature_c) * 0.9;
        CHECK(res.ccd_limit_a == want_ccd);
        int gap = 0;
        if (last >= 0) {
            uint64_t adv = (uint64_t)(wire[0] - last) & 0xFFFFFFFFu;
            gap = adv >= 0x80000000u || (double)adv > 300.0;
        }
        const int usual = (res.fe_summary & 7u) == 0 && !isnan(cur) && wire[3] != 0x7FFFFFFF
            && !isnan(res.stack_voltage_v) && !gap && (wire[1] & 0x58) == 0;
        CHECK(res.usual == usual);
        last = wire[0];
        last_ts_s = ts_s;
    }
    free(wire);
    free(ps);
    free(ts);
    free(tab);
    free(cusum_pos);
    free(cusum_neg);
    free(last_t);
    free(rest);
    free(dis);
    free(scr);
    free(raised);
    free(why);
    chain_free(&c);
}

int main(void)
{
    chain_t c;
    ssb_stack_result_t res;
    chain_init(&c, 23, 0, 6, 4);
    /* error paths */
    CHECK(ssb_stack_step(NULL, 1.0, NAN, 0, 0.1, c.bleed, &res) == SSB_STACK_ERR_NULL);
    CHECK(ssb_stack_step(&c.sk, 1.0, NAN, 0, 0.1, c.bleed, NULL) == SSB_STACK_ERR_NULL);
    CHECK(ssb_stack_step(&c.sk, 1.0, NAN, 0, 0.1, NULL, &res) == SSB_STACK_ERR_NULL);
    ssb_stack_t bad = c.sk;
    bad.innovation_v = NULL;
    CHECK(ssb_stack_step(&bad, 1.0, NAN, 0, 0.1, c.bleed, &res) == SSB_STACK_ERR_NULL);
    ssb_fe_config_t small = c.r.cfg;
    small.n_cells = 22; /* fewer front-end cells than core cells */
    bad = c.sk;
    bad.fe_cfg = &small;
    CHECK(ssb_stack_step(&bad, 1.0, NAN, 0, 0.1, c.bleed, &res) == SSB_STACK_ERR_SIZE);
    /* a front-end error runs nothing: the core's state and the bleed input untouched */
    bad = c.sk;
    bad.raw = NULL;
    double soc0 = c.f.st.soc[0];
    c.bleed[0] = 0.5;
    CHECK(ssb_stack_step(&bad, 1.0, NAN, 0, 0.1, c.bleed, &res) == SSB_FE_ERR_NULL);
    CHECK(res.fe_rc == SSB_FE_ERR_NULL && res.core_rc == 0);
    CHECK(c.f.st.soc[0] == soc0 && c.f.bleed[0] == 0.0);
    /* a core error (dt) after the front end's work */
    const double bad_dt[] = {0.0, -0.1, NAN, INFINITY};
    for (int i = 0; i < 4; i++) {
        CHECK(ssb_stack_step(&c.sk, 1.0, NAN, 0, bad_dt[i], c.bleed, &res) == SSB_ERR_DT);
        CHECK(res.fe_rc == 0 && res.core_rc == SSB_ERR_DT);
        CHECK(c.r.st.have_last_raw == 1 && c.f.st.soc[0] == soc0);
    }
    CHECK(ssb_stack_step(&c.sk, 5.0, NAN, 1, 0.1, c.bleed, &res) == 0);
    check_figures(&c, &res, 5.0);
    CHECK(c.r.st.last_i == 5.0);
    chain_free(&c);
    /* sizes, front ends with spare cell channels, the qsort median */
    for (int32_t n = 1; n <= 40; n++)
        run_chain(n, (size_t)(n % 3 == 0), n % 7, n % 5, 40);
    run_chain(100, 0, 4, 3, 40);
    run_chain(23, 1, 6, 4, 600);
    run_receive();
    printf("ok\n");
    return 0;
}
