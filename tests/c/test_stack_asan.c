/*
 * ssb_stack_step under AddressSanitizer + UBSan: the front end's rig (test_frontend_asan.c)
 * and the core's fixture (test_core_asan.c), each buffer exactly sized on the heap, chained
 * as bms/stack_step.py chains them (the core reads the front end's clean values in place).
 * Error paths (NULLs, sizes, a front-end error runs nothing, a core error leaves the front
 * end's work), 1..40 and 100 cells (the qsort median), random counts with sentinels, currents
 * NaN/Inf/implausible, NaN bleeds; every figure checked against a plain recomputation.
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
    c->sk = (ssb_stack_t){&c->r.cfg, &c->r.st, c->r.raw, c->r.values, c->r.clean, c->r.bad,
                          c->r.stuck, c->r.jump, &c->f.prm, &c->f.st, &c->f.m, &c->f.out,
                          c->f.bleed, c->innovation, c->scratch, 300.0, NULL, NULL,
                          NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
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
    printf("ok\n");
    return 0;
}
