/* ssb_plant_{begin,finish,sense} under AddressSanitizer + UBSan: every buffer exactly sized
 * on the heap (an access one past the end aborts), every error path (and that an error writes
 * nothing), sizes 1..40 and 150 cells with 0..6 thermistors and 0..4 load cells, random
 * tables, states, currents, steps and fault flags, NaN/Inf channel values and int64-range
 * clamps. The numbers themselves are checked against the NumPy reference in
 * tests/test_plant_c.py; here: memory, undefined behaviour, error codes, finiteness. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ssb_plant.h"

#include "check.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static double urand(void) /* xorshift64*, uniform in [0, 1) */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}

static double uni(double lo, double hi) { return lo + (hi - lo) * urand(); }

static double *dalloc(size_t n)
{
    double *p = malloc((n ? n : 1) * sizeof *p);
    CHECK(p);
    return p;
}

typedef struct {
    size_t n, k, m, ns, nch;
    ssb_plant_config_t cfg;
    ssb_plant_state_t st;
    ssb_plant_sense_config_t scfg;
    double *tab, *cap, *sd, *hk, *r0f, *rs, *rcf, *lf, *g, *ish, *heat, *swell, *lcf;
    double *soc, *x, *temp, *cell_v, *ocv, *ic, *rser, *lc, *work;
    double *minv, *c_dt, *amb;
    double *thw, *thoff, *since, *cha, *chs, *chc, *chlo, *chhi, *noise, *buf;
    int64_t *raw;
} rig_t;

static void reset_state(rig_t *r)
{
    for (size_t i = 0; i < r->n; i++) {
        r->soc[i] = uni(-0.05, 1.05);
        r->x[i] = uni(-0.05, 0.05);
        r->x[r->n + i] = uni(-0.05, 0.05);
        r->x[2 * r->n + i] = uni(-1.0, 1.0);
    }
    for (size_t i = 0; i < r->n + 3; i++)
        r->temp[i] = uni(-20.0, 60.0);
}

static void rig_init(rig_t *r, size_t n, size_t k, size_t m)
{
    memset(r, 0, sizeof *r);
    r->n = n, r->k = k, r->m = m, r->ns = 601, r->nch = n + k + m + 2;
    size_t w = n + 3, ns = r->ns;
    r->tab = dalloc(2 * SSB_PLANT_TAB_ROWS * ns);
    for (size_t j = 0; j < ns; j++) {
        const double base[SSB_PLANT_TAB_ROWS] = {3.0 + 1.2 * (double)j / (double)ns, -1e-4, 0.0,
                                           uni(0.01, 0.05), uni(0.01, 0.03), 0.0, uni(10, 40)};
        for (size_t row = 0; row < SSB_PLANT_TAB_ROWS; row++) {
            r->tab[row * ns + j] = base[row];
            r->tab[(SSB_PLANT_TAB_ROWS + row) * ns + j] = base[row] * uni(-0.01, 0.01);
        }
    }
    r->cap = dalloc(n), r->sd = dalloc(n), r->hk = dalloc(n), r->r0f = dalloc(n);
    r->rs = dalloc(n), r->rcf = dalloc(n), r->lf = dalloc(n), r->g = dalloc(n);
    r->ish = dalloc(n), r->heat = dalloc(n), r->swell = dalloc(n), r->lcf = dalloc(m);
    r->soc = dalloc(n), r->x = dalloc(3 * n), r->temp = dalloc(w), r->cell_v = dalloc(n);
    r->ocv = dalloc(n), r->ic = dalloc(n), r->rser = dalloc(n), r->lc = dalloc(m);
    r->work = dalloc(SSB_PLANT_WORK_ROWS * w);
    r->minv = dalloc(w * w), r->c_dt = dalloc(w), r->amb = dalloc(w);
    r->thw = dalloc(k * n), r->thoff = dalloc(k), r->since = dalloc(n);
    r->cha = dalloc(r->nch), r->chs = dalloc(r->nch), r->chc = dalloc(r->nch);
    r->chlo = dalloc(r->nch), r->chhi = dalloc(r->nch), r->noise = dalloc(r->nch);
    r->buf = dalloc(r->nch);
    r->raw = malloc(r->nch * sizeof *r->raw);
    CHECK(r->raw);
    for (size_t i = 0; i < n; i++) {
        r->cap[i] = uni(15000, 20000), r->sd[i] = uni(0, 1e-5), r->hk[i] = uni(1e-4, 1e-3);
        r->r0f[i] = uni(0.9, 2.0), r->rs[i] = uni(0.9, 1.1), r->rcf[i] = uni(0.01, 0.2);
        r->lf[i] = uni(0.05, 1.0), r->g[i] = urand() < 0.3 ? uni(0.0, 0.1) : 0.0;
        r->ish[i] = urand() < 0.2 ? uni(0.0, 0.1) : 0.0, r->heat[i] = uni(-1.0, 1.0);
        r->swell[i] = uni(150, 200);
        r->since[i] = urand() < 0.3 ? uni(0.0, 100.0) : NAN;
    }
    for (size_t j = 0; j < m; j++)
        r->lcf[j] = uni(0.8, 1.2);
    for (size_t i = 0; i < w; i++) {
        r->c_dt[i] = uni(10, 1000), r->amb[i] = uni(0, 20);
        for (size_t j = 0; j < w; j++)
            /* contractive (sum_j minv_ij c_dt_j < 1), as a real backward-Euler inverse */
            r->minv[i * w + j] = i == j ? 0.9 / (r->c_dt[i] + 1.0) : 5e-5 / (double)w;
    }
    for (size_t j = 0; j < k; j++) {
        r->thoff[j] = 273.15 + uni(-1, 1);
        for (size_t i = 0; i < n; i++)
            r->thw[j * n + i] = 0.0;
        size_t i0 = (size_t)(urand() * (double)n);
        r->thw[j * n + i0] = 1.0;
    }
    for (size_t c = 0; c < r->nch; c++) {
        r->cha[c] = uni(-1e-3, 1e-3), r->chs[c] = uni(10, 1e4), r->chc[c] = uni(-5, 5);
        r->chlo[c] = c % 3 ? 0.0 : -2147483647.0;
        r->chhi[c] = c % 2 ? 65534.0 : 9.2e18;
    }
    reset_state(r);
    r->cfg = (ssb_plant_config_t){
        .n = n, .m = m, .n_soc = ns, .tab = r->tab, .soc_lo = -0.1, .soc_hi = 1.1 - 1e-6,
        .inv_soc_step = 500.0, .kelvin_offset = 273.15, .inv_t_ref_per_k = 1.0 / 298.15,
        .ea_over_kb_k = 3500.0, .t_ref_c = 25.0, .r2_over_r1 = 0.5, .hysteresis_v = 0.01,
        .tau2_s = 600.0, .one_minus_eta = 1e-3, .min_local_pressure_kpa = 10.0,
        .capacity_as = r->cap, .self_discharge_a = r->sd, .hyst_k_per_as = r->hk,
        .r0_factor = r->r0f, .r_scale = r->rs, .rc_factor = r->rcf, .local_frac = r->lf,
        .g_static = r->g, .inv_short = r->ish, .cell_heat_w = r->heat, .loss_any = 0,
        .g_any = 0, .heat_fault_any = 0, .swell_um = r->swell, .lc_factor = r->lcf,
        .thermal_um_per_k = 20.0, .fixture_ref_c = 25.0, .collapse_um = 5.0,
        .swell_full_total_um = 4000.0, .fixture_stiffening = 1.0, .preload_kpa = 340.0,
        .k_fix_kpa_per_um = 0.1};
    r->st = (ssb_plant_state_t){r->soc, r->x, r->temp, r->cell_v, r->ocv, r->ic, r->rser,
                                r->lc, r->work};
    r->scfg = (ssb_plant_sense_config_t){
        .n = n, .k = k, .m = m, .th_weights = r->thw, .th_off_kelvin = r->thoff,
        .inv_t25_per_k = 1.0 / 298.15, .beta_k = 3950.0, .r25_ohm = 1e4, .pullup_ohm = 1e4,
        .th_counts_per_unit = 30000.0, .vtap_open_since_s = r->since, .vtap_open_tau_s = 2.0,
        .vtap_any = 0, .ch_a = r->cha, .ch_s = r->chs, .ch_c = r->chc, .ch_lo = r->chlo,
        .ch_hi = r->chhi};
}

static void rig_free(rig_t *r)
{
    double *all[] = {r->tab, r->cap, r->sd, r->hk, r->r0f, r->rs, r->rcf, r->lf, r->g,
                     r->ish, r->heat, r->swell, r->lcf, r->soc, r->x, r->temp, r->cell_v,
                     r->ocv, r->ic, r->rser, r->lc, r->work, r->minv, r->c_dt, r->amb,
                     r->thw, r->thoff, r->since, r->cha, r->chs, r->chc, r->chlo, r->chhi,
                     r->noise, r->buf};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(all[i]);
    free(r->raw);
}

/* every error path; an error writes nothing (sums, pressure, raw, state) */
static void error_paths(void)
{
    rig_t r;
    rig_init(&r, 5, 2, 2);
    double sums[2] = {-7.0, -7.0}, p = -7.0;
    CHECK(ssb_plant_begin(NULL, &r.st, 400.0, sums) == SSB_PLANT_ERR_NULL);
    CHECK(ssb_plant_begin(&r.cfg, NULL, 400.0, sums) == SSB_PLANT_ERR_NULL);
    CHECK(ssb_plant_begin(&r.cfg, &r.st, 400.0, NULL) == SSB_PLANT_ERR_NULL);
    ssb_plant_config_t c = r.cfg;
    c.tab = NULL;
    CHECK(ssb_plant_begin(&c, &r.st, 400.0, sums) == SSB_PLANT_ERR_NULL);
    c = r.cfg, c.lc_factor = NULL;
    CHECK(ssb_plant_begin(&c, &r.st, 400.0, sums) == SSB_PLANT_ERR_NULL);
    c.m = 0; /* no load cells: lc_factor may be NULL */
    CHECK(ssb_plant_begin(&c, &r.st, 400.0, sums) == 0);
    c = r.cfg, c.n = 0;
    CHECK(ssb_plant_begin(&c, &r.st, 400.0, sums) == SSB_PLANT_ERR_SIZE);
    c = r.cfg, c.n_soc = 1;
    CHECK(ssb_plant_begin(&c, &r.st, 400.0, sums) == SSB_PLANT_ERR_SIZE);
    ssb_plant_state_t s = r.st;
    s.work = NULL;
    CHECK(ssb_plant_begin(&r.cfg, &s, 400.0, sums) == SSB_PLANT_ERR_NULL);
    sums[0] = sums[1] = -7.0;
    CHECK(ssb_plant_begin(&r.cfg, &r.st, NAN, sums) == SSB_PLANT_ERR_PARAM);
    CHECK(ssb_plant_begin(&r.cfg, &r.st, INFINITY, sums) == SSB_PLANT_ERR_PARAM);
    double keep = r.soc[2];
    r.soc[2] = NAN;
    CHECK(ssb_plant_begin(&r.cfg, &r.st, 400.0, sums) == SSB_PLANT_ERR_STATE);
    r.soc[2] = keep, keep = r.temp[r.n + 2], r.temp[r.n + 2] = -INFINITY;
    CHECK(ssb_plant_begin(&r.cfg, &r.st, 400.0, sums) == SSB_PLANT_ERR_STATE);
    r.temp[r.n + 2] = keep, keep = r.x[2 * r.n + 4], r.x[2 * r.n + 4] = NAN;
    CHECK(ssb_plant_begin(&r.cfg, &r.st, 400.0, sums) == SSB_PLANT_ERR_STATE);
    r.x[2 * r.n + 4] = keep;
    CHECK(sums[0] == -7.0 && sums[1] == -7.0);

    CHECK(ssb_plant_begin(&r.cfg, &r.st, 400.0, sums) == 0);
    double soc0 = r.soc[0], t0 = r.temp[0];
    const double bad_dt[] = {0.0, -1.0, NAN, INFINITY, -0.0};
    for (size_t i = 0; i < sizeof bad_dt / sizeof bad_dt[0]; i++)
        CHECK(ssb_plant_finish(&r.cfg, &r.st, 1.0, bad_dt[i], r.minv, r.c_dt, r.amb, 0.0, &p)
              == SSB_PLANT_ERR_PARAM);
    CHECK(ssb_plant_finish(&r.cfg, &r.st, NAN, 1.0, r.minv, r.c_dt, r.amb, 0.0, &p)
          == SSB_PLANT_ERR_PARAM);
    CHECK(ssb_plant_finish(&r.cfg, &r.st, -INFINITY, 1.0, r.minv, r.c_dt, r.amb, 0.0, &p)
          == SSB_PLANT_ERR_PARAM);
    CHECK(ssb_plant_finish(&r.cfg, &r.st, 1.0, 1.0, r.minv, r.c_dt, r.amb, NAN, &p)
          == SSB_PLANT_ERR_PARAM);
    CHECK(ssb_plant_finish(&r.cfg, &r.st, 1.0, 1.0, NULL, r.c_dt, r.amb, 0.0, &p)
          == SSB_PLANT_ERR_NULL);
    CHECK(ssb_plant_finish(&r.cfg, &r.st, 1.0, 1.0, r.minv, r.c_dt, r.amb, 0.0, NULL)
          == SSB_PLANT_ERR_NULL);
    c = r.cfg, c.n = 0;
    CHECK(ssb_plant_finish(&c, &r.st, 1.0, 1.0, r.minv, r.c_dt, r.amb, 0.0, &p)
          == SSB_PLANT_ERR_SIZE);
    CHECK(p == -7.0 && r.soc[0] == soc0 && r.temp[0] == t0);
    CHECK(ssb_plant_finish(&r.cfg, &r.st, 1.0, 1.0, r.minv, r.c_dt, r.amb, 0.0, &p) == 0);
    CHECK(isfinite(p) && p >= 0.0);

    for (size_t i = 0; i < r.nch; i++)
        r.raw[i] = 42;
    CHECK(ssb_plant_sense(NULL, &r.st, 0.0, 0.0, 0.0, r.noise, r.buf, r.raw)
          == SSB_PLANT_ERR_NULL);
    CHECK(ssb_plant_sense(&r.scfg, &r.st, 0.0, 0.0, 0.0, NULL, r.buf, r.raw)
          == SSB_PLANT_ERR_NULL);
    ssb_plant_sense_config_t sc = r.scfg;
    sc.th_weights = NULL;
    CHECK(ssb_plant_sense(&sc, &r.st, 0.0, 0.0, 0.0, r.noise, r.buf, r.raw)
          == SSB_PLANT_ERR_NULL);
    sc = r.scfg, sc.vtap_any = 1, sc.vtap_open_since_s = NULL;
    CHECK(ssb_plant_sense(&sc, &r.st, 0.0, 0.0, 0.0, r.noise, r.buf, r.raw)
          == SSB_PLANT_ERR_NULL);
    sc = r.scfg, sc.n = 0;
    CHECK(ssb_plant_sense(&sc, &r.st, 0.0, 0.0, 0.0, r.noise, r.buf, r.raw)
          == SSB_PLANT_ERR_SIZE);
    double lo = r.chlo[1];
    r.chlo[1] = r.chhi[1] + 1.0; /* lo > hi */
    CHECK(ssb_plant_sense(&r.scfg, &r.st, 0.0, 0.0, 0.0, r.noise, r.buf, r.raw)
          == SSB_PLANT_ERR_PARAM);
    r.chlo[1] = -1e19; /* outside int64 */
    CHECK(ssb_plant_sense(&r.scfg, &r.st, 0.0, 0.0, 0.0, r.noise, r.buf, r.raw)
          == SSB_PLANT_ERR_PARAM);
    r.chlo[1] = NAN;
    CHECK(ssb_plant_sense(&r.scfg, &r.st, 0.0, 0.0, 0.0, r.noise, r.buf, r.raw)
          == SSB_PLANT_ERR_PARAM);
    r.chlo[1] = lo;
    for (size_t i = 0; i < r.nch; i++)
        CHECK(r.raw[i] == 42);
    rig_free(&r);
}

/* long random runs: begin/finish/sense with random flags, steps, currents and channel values */
static void random_run(size_t n, size_t k, size_t m, int steps)
{
    rig_t r;
    rig_init(&r, n, k, m);
    double sums[2], p = 400.0, t = 0.0;
    for (int s = 0; s < steps; s++) {
        r.cfg.loss_any = urand() < 0.3, r.cfg.g_any = urand() < 0.3;
        r.cfg.heat_fault_any = urand() < 0.3, r.scfg.vtap_any = urand() < 0.3;
        double dt = urand() < 0.5 ? 0.1 : uni(1e-3, 5.0);
        double i_s = uni(-30.0, 30.0);
        int rc = ssb_plant_begin(&r.cfg, &r.st, p, sums);
        if (rc == SSB_PLANT_ERR_STATE) { /* a random walk may leave the finite range */
            reset_state(&r);
            rc = ssb_plant_begin(&r.cfg, &r.st, p, sums);
        }
        CHECK(rc == 0);
        CHECK(isfinite(sums[0]) && isfinite(sums[1]));
        CHECK(ssb_plant_finish(&r.cfg, &r.st, i_s, dt, r.minv, r.c_dt, r.amb, uni(0, 50), &p)
              == 0);
        CHECK(p >= 0.0);
        for (size_t i = 0; i < n; i++)
            CHECK(isfinite(r.soc[i]) && isfinite(r.cell_v[i]));
        t += dt;
        for (size_t c = 0; c < r.nch; c++)
            r.noise[c] = uni(-1e-3, 1e-3);
        /* odd values on the current and bus channels: NaN, +-Inf, huge */
        const double odd[] = {NAN, INFINITY, -INFINITY, 1e300, -1e300, 0.5, 2.5};
        double cur = odd[(size_t)(urand() * 7.0)], bus = uni(-100, 100);
        if (s % 17 == 0)
            r.cell_v[s % n] = NAN;
        CHECK(ssb_plant_sense(&r.scfg, &r.st, t, cur, bus, r.noise, r.buf, r.raw) == 0);
        for (size_t c = 0; c < r.nch; c++) {
            if (r.raw[c] == INT64_MIN)
                continue; /* NaN */
            CHECK((double)r.raw[c] >= r.chlo[c] && (double)r.raw[c] <= r.chhi[c]);
        }
        if (s % 17 == 0)
            CHECK(r.raw[s % n] == INT64_MIN);
    }
    rig_free(&r);
}

int main(void)
{
    error_paths();
    for (size_t n = 1; n <= 40; n++)
        random_run(n, n % 7, n % 5, 60);
    random_run(150, 6, 4, 200);
    random_run(23, 6, 4, 3000);
    printf("ok\n");
    return 0;
}
