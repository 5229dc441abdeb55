/*
 * C driver for the core, built with -fsanitize=address,undefined by tests/test_core_asan.py:
 * every error path, NaN/Inf inputs, sizes 1..257, long runs. Exit status 0 = all checks passed.
 * Each buffer is allocated with its exact size, so any out-of-bounds access is an ASan report.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ssb_core.h"

static int failures = 0;
#include "check.h"

typedef struct {
    ssb_params_t prm;
    ssb_state_t st;
    ssb_output_t out;
    ssb_meas_t m;
    double *grid, *tw, *v, *t, *p, *bleed;
    int32_t *i0, *i1;
} fixture_t;

static double *dalloc(size_t n) { return calloc(n, sizeof(double)); }

static void fixture_init(fixture_t *f, int32_t n, int32_t k, int32_t mlc)
{
    memset(f, 0, sizeof *f);
    ssb_params_t *p = &f->prm;
    p->n_cells = n;
    p->n_sensors = k;
    p->n_load_cells = mlc;
    p->n_horizons = 2;
    p->n_soc = 11;
    p->n_temp = 3;
    p->soc_step = 0.1;
    p->temp_min_c = 0.0;
    p->temp_step_c = 25.0;
    f->grid = dalloc((size_t)p->n_soc * p->n_temp * SSB_TABLE_STRIDE);
    for (int t = 0; t < p->n_temp; t++)
        for (int s = 0; s < p->n_soc; s++) {
            double *g = f->grid + ((size_t)t * p->n_soc + s) * SSB_TABLE_STRIDE;
            g[0] = 3.0 + 1.2 * s * 0.1 + 0.001 * t;       /* ocv */
            g[1] = 0.01 * (1.0 + 0.5 * (2 - t));          /* r0 discharge */
            g[2] = 0.011 * (1.0 + 0.5 * (2 - t));         /* r0 charge */
            g[3] = 0.005 * (1.0 + 0.5 * (2 - t));         /* r1 */
            g[4] = 30.0 * (1.0 + 0.5 * (2 - t));          /* tau1 */
            g[5] = 0.0025 * (1.0 + 0.5 * (2 - t));        /* r2 */
            g[6] = 450.0 * (1.0 + 0.5 * (2 - t));         /* tau2 */
            g[7] = 0.005;                                 /* hysteresis */
            g[8] = s % 2 ? 0.0 : 0.4;                     /* 1 / (2 I0): BV on some nodes */
            g[9] = (2.0 + t) * 1e-6;                      /* voltage noise variance, V^2 */
        }
    p->grid = f->grid;
    f->i0 = calloc((size_t)n, sizeof(int32_t));
    f->i1 = calloc((size_t)n, sizeof(int32_t));
    f->tw = dalloc((size_t)n);
    for (int32_t i = 0; i < n && k > 0; i++) {
        double x = (k - 1) * (double)i / (n > 1 ? n - 1 : 1);
        f->i0[i] = (int32_t)x < k - 1 ? (int32_t)x : k - 1;
        f->i1[i] = f->i0[i] + 1 < k ? f->i0[i] + 1 : k - 1;
        f->tw[i] = x - f->i0[i];
    }
    p->temp_idx0 = f->i0;
    p->temp_idx1 = f->i1;
    p->temp_w = f->tw;
    p->capacity_as = 18000.0;
    p->coulombic_eff = 0.999;
    p->n_rc = 2;
    p->hyst_rate = 20.0;
    p->contact_r_ref_ohm = 0.0015;
    p->contact_p_ref_kpa = 1000.0;
    p->q_soc_per_s = 1e-7;
    p->q_rc_v2_per_s = 1e-8;
    p->r_voltage_v2 = 1e-4 / 150.0;
    p->voltage_corr_s = 15.0;
    p->r_voltage_r0_rel = 0.1;
    p->current_noise_a = 0.05;
    p->gate_sigma = 6.0;
    p->leak_q_soc_per_s = 1e-10;
    p->leak_q_a2_per_s = 1e-8;
    p->leak_r_soc2 = 4e-6;
    p->leak_alarm_a = 0.05;
    p->leak_q_d_per_s = 1e-12;
    p->leak_d_sigma0 = 0.03;
    p->leak_v2_rel_sigma = 0.3;
    p->leak_relax_rel_sigma = 0.1;
    p->leak_relax_tau_factor = 2.0;
    p->soh_lambda = 0.9999;
    p->soh_min_di_a = 1.0;
    p->soh_r0_p_max = 0.01;
    p->soh_cap_window = 0.1;
    p->soh_hp_tau_s = 60.0;
    p->soh_noise_v = 0.005;
    p->soh_q_per_s = 1e-8;
    p->soh_scale_min = 0.5;
    p->soh_scale_max = 2.0;
    p->soh_soc_anchor_s = 3600.0;
    p->cap_fb_d_sigma = 0.01;
    p->pressure_fusion = 1;
    p->preload_kpa = 1000.0;
    p->stiffness_kpa_per_um = 0.128;
    p->swell_um_full = 154.75;
    p->thermal_um_per_k = 3.0;
    p->fixture_t_ref_c = 25.0;
    p->r_pressure_kpa2 = 64.0;
    p->pressure_corr_s = 60.0;
    p->rate_tau_s = 0.2;
    p->cusum_k_kpa = 30.0;
    p->cusum_tau_s = 10.0;
    p->horizons_s[0] = 2.0;
    p->horizons_s[1] = 10.0;
    p->v_max = 4.22;
    p->v_min = 3.0;
    p->t_charge_min_c = 5.0;
    p->t_charge_max_c = 45.0;
    p->t_discharge_min_c = -10.0;
    p->t_discharge_max_c = 55.0;
    p->t_derate_band_c = 5.0;
    p->i_charge_max_a = 10.0;
    p->i_discharge_max_a = 15.0;

    ssb_state_t *s = &f->st;
    size_t nn = (size_t)n;
    s->soc = dalloc(nn);
    s->v1 = dalloc(nn);
    s->v2 = dalloc(nn);
    s->hyst = dalloc(nn);
    s->p = dalloc(6 * nn);
    s->cell_temp_c = dalloc(nn);
    s->r0_scale = dalloc(nn);
    s->r0_p = dalloc(nn);
    s->rc_scale = dalloc(nn);
    s->imp = dalloc(SSB_IMP_ROWS * nn);
    s->cap_ratio = dalloc(nn);
    s->cap_p = dalloc(nn);
    s->soc_window0 = dalloc(nn);
    s->leak_e = dalloc(nn);
    s->leak_a = dalloc(nn);
    s->leak_d = dalloc(nn);
    s->leak_p = dalloc(6 * nn);
    s->leak_r = dalloc(nn);
    s->leak_rp = dalloc(4 * nn);
    s->v_prev = dalloc(nn);
    s->gated_count = calloc(nn, sizeof(uint32_t));
    s->work = dalloc(SSB_WORK_ROWS * nn);
    ssb_output_t *o = &f->out;
    o->soc_sigma = dalloc(nn);
    o->voltage_pred_v = dalloc(nn);
    o->leak_sigma_a = dalloc(nn);
    o->r0_ohm = dalloc(nn);
    o->capacity_ah = dalloc(nn);
    o->status = calloc(nn, sizeof(int32_t));
    o->leak_flag = calloc(nn, sizeof(int32_t));
    o->stack = dalloc(SSB_OUT_N);
    o->charge_limit_a = dalloc(2);
    o->discharge_limit_a = dalloc(2);
    f->v = dalloc(nn);
    f->t = k > 0 ? dalloc((size_t)k) : NULL;
    f->p = mlc > 0 ? dalloc((size_t)mlc) : NULL;
    f->m.cell_voltage_v = f->v;
    f->m.temperature_c = f->t;
    f->m.pressure_kpa = f->p;
    f->bleed = dalloc(nn); /* f->m.bleed_a stays NULL (none) until run_random sets it */
}

static void fixture_free(fixture_t *f)
{
    ssb_state_t *s = &f->st;
    ssb_output_t *o = &f->out;
    void *ptrs[] = {f->grid, f->i0, f->i1, f->tw, s->soc, s->v1, s->v2, s->hyst, s->p, s->cell_temp_c,
                    s->r0_scale, s->r0_p, s->rc_scale, s->imp, s->cap_ratio, s->cap_p, s->soc_window0, s->leak_e,
                    s->leak_a, s->leak_d, s->leak_p, s->leak_r, s->leak_rp, s->v_prev, s->gated_count,
                    s->work, o->soc_sigma,
                    o->voltage_pred_v, o->leak_sigma_a, o->r0_ohm, o->capacity_ah, o->status, o->leak_flag,
                    o->stack, o->charge_limit_a, o->discharge_limit_a, f->v,
                    f->t, f->p, f->bleed};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++)
        free(ptrs[i]);
}

static unsigned long long rng_state = 88172645463325252ull;
static double urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static void run_random(int32_t n, int32_t k, int32_t mlc, int steps)
{
    fixture_t f;
    fixture_init(&f, n, k, mlc);
    double *soc0 = dalloc((size_t)n);
    for (int32_t i = 0; i < n; i++)
        soc0[i] = i % 3 == 0 ? NAN : urand();
    for (int32_t i = 0; i < n; i++)
        f.v[i] = i % 2 ? 3.6 : NAN;
    CHECK(ssb_state_init(&f.prm, &f.st, soc0, f.v, NULL, 0.15, 0.02, 0.1) == SSB_OK);
    for (int it = 0; it < steps; it++) {
        double cur = (urand() - 0.5) * 30.0;
        if (it % 97 == 5)
            cur = NAN;
        for (int32_t i = 0; i < n; i++) {
            double r = urand();
            f.v[i] = r < 0.02 ? NAN : (r < 0.03 ? INFINITY : (r < 0.04 ? 50.0 : 3.2 + r));
        }
        for (int32_t j = 0; j < k; j++)
            f.t[j] = urand() < 0.1 ? NAN : -30.0 + 100.0 * urand();
        if (it % 50 == 7)
            for (int32_t j = 0; j < k; j++)
                f.t[j] = NAN;
        for (int32_t j = 0; j < mlc; j++)
            f.p[j] = urand() < 0.1 ? NAN : 800.0 + 800.0 * urand();
        /* the balancing bleed: none (NULL) on a third of the ticks, else some cells, a NaN */
        f.m.bleed_a = it % 3 == 0 ? NULL : f.bleed;
        for (int32_t i = 0; i < n; i++) {
            double r = urand();
            f.bleed[i] = r < 0.01 ? NAN : (r < 0.5 ? 0.2 * r : 0.0);
        }
        int rc = (it % 2) ? ssb_tick(&f.prm, &f.st, &f.m, 0.1, cur, &f.out)
                            : ssb_ekf_step(&f.prm, &f.st, &f.m, 0.1, cur, &f.out);
        CHECK(rc == SSB_OK);
        for (int32_t i = 0; i < n; i++) {
            CHECK(isfinite(f.st.soc[i]));
            CHECK(f.out.status[i] >= 0 && f.out.status[i] <= 3);
        }
    }
    free(soc0);
    fixture_free(&f);
}

int main(void)
{
    fixture_t f;
    fixture_init(&f, 23, 6, 4);
    double soc0[23];
    for (int i = 0; i < 23; i++)
        soc0[i] = 0.5;
    /* error paths */
    CHECK(ssb_params_check(NULL) == SSB_ERR_NULL);
    CHECK(ssb_state_init(NULL, &f.st, soc0, NULL, NULL, 0.1, 0.02, 0.1) == SSB_ERR_NULL);
    CHECK(ssb_state_init(&f.prm, NULL, soc0, NULL, NULL, 0.1, 0.02, 0.1) == SSB_ERR_NULL);
    CHECK(ssb_state_init(&f.prm, &f.st, NULL, NULL, NULL, 0.1, 0.02, 0.1) == SSB_ERR_NULL);
    CHECK(ssb_state_init(&f.prm, &f.st, soc0, NULL, NULL, NAN, 0.02, 0.1) == SSB_ERR_PARAM);
    CHECK(ssb_state_init(&f.prm, &f.st, soc0, NULL, NULL, 0.1, 0.02, 0.1) == SSB_OK);
    CHECK(ssb_tick(NULL, &f.st, &f.m, 0.1, 1.0, &f.out) == SSB_ERR_NULL);
    CHECK(ssb_tick(&f.prm, NULL, &f.m, 0.1, 1.0, &f.out) == SSB_ERR_NULL);
    CHECK(ssb_tick(&f.prm, &f.st, NULL, 0.1, 1.0, &f.out) == SSB_ERR_NULL);
    CHECK(ssb_tick(&f.prm, &f.st, &f.m, 0.1, 1.0, NULL) == SSB_ERR_NULL);
    CHECK(ssb_ekf_step(&f.prm, &f.st, &f.m, 0.1, 1.0, NULL) == SSB_ERR_NULL);
    double *saved = f.st.work;
    f.st.work = NULL;
    CHECK(ssb_tick(&f.prm, &f.st, &f.m, 0.1, 1.0, &f.out) == SSB_ERR_NULL);
    f.st.work = saved;
    const double bad_dt[] = {0.0, -0.1, NAN, INFINITY};
    for (int i = 0; i < 4; i++) {
        CHECK(ssb_tick(&f.prm, &f.st, &f.m, bad_dt[i], 1.0, &f.out) == SSB_ERR_DT);
        CHECK(ssb_ekf_step(&f.prm, &f.st, &f.m, bad_dt[i], 1.0, &f.out) == SSB_ERR_DT);
    }
    CHECK(f.st.soc[0] == 0.5); /* untouched by refused calls */
    ssb_params_t bad = f.prm;
    bad.n_cells = 0;
    CHECK(ssb_params_check(&bad) == SSB_ERR_SIZE);
    CHECK(ssb_tick(&bad, &f.st, &f.m, 0.1, 1.0, &f.out) == SSB_ERR_SIZE);
    bad = f.prm;
    bad.n_horizons = SSB_MAX_HORIZONS + 1;
    CHECK(ssb_params_check(&bad) == SSB_ERR_SIZE);
    bad = f.prm;
    bad.n_sensors = SSB_MAX_SENSORS + 1;
    CHECK(ssb_params_check(&bad) == SSB_ERR_SIZE);
    bad = f.prm;
    bad.capacity_as = NAN;
    CHECK(ssb_params_check(&bad) == SSB_ERR_PARAM);
    bad = f.prm;
    bad.soh_scale_min = 0.0; /* impedance scales need a positive lower bound */
    CHECK(ssb_params_check(&bad) == SSB_ERR_PARAM);
    bad = f.prm;
    bad.soh_scale_max = 0.9; /* the bounds must hold the nominal 1 */
    CHECK(ssb_params_check(&bad) == SSB_ERR_PARAM);
    bad = f.prm;
    bad.soh_hp_tau_s = NAN;
    CHECK(ssb_params_check(&bad) == SSB_ERR_PARAM);
    bad = f.prm;
    bad.cap_fb_d_sigma = -0.01;
    CHECK(ssb_params_check(&bad) == SSB_ERR_PARAM);
    bad = f.prm;
    bad.soc_step = 0.2; /* grid does not span 0..1 */
    CHECK(ssb_params_check(&bad) == SSB_ERR_PARAM);
    bad = f.prm;
    bad.temp_idx0 = NULL;
    CHECK(ssb_params_check(&bad) == SSB_ERR_NULL);
    int32_t bad_idx[23];
    memcpy(bad_idx, f.i0, sizeof bad_idx);
    bad_idx[3] = 6;
    bad = f.prm;
    bad.temp_idx0 = bad_idx;
    CHECK(ssb_params_check(&bad) == SSB_ERR_PARAM);
    f.grid[5] = -1.0;
    CHECK(ssb_params_check(&f.prm) == SSB_ERR_PARAM);
    f.grid[5] = 0.01;
    CHECK(ssb_params_check(&f.prm) == SSB_OK);
    bad = f.prm;
    bad.cusum_tau_s = NAN;
    CHECK(ssb_params_check(&bad) == SSB_ERR_PARAM);
    ssb_meas_t m2 = f.m;
    m2.temperature_c = NULL;
    CHECK(ssb_tick(&f.prm, &f.st, &m2, 0.1, 1.0, &f.out) == SSB_ERR_NULL);
    /* exp */
    CHECK(fabs(ssb_exp_neg(-1.0) / exp(-1.0) - 1.0) < 1e-15);
    CHECK(ssb_exp_neg(-1000.0) < 1e-300);
    CHECK(ssb_exp_neg(0.0) == 1.0);
    fixture_free(&f);

    /* sizes and random inputs (NaN, Inf, outliers, missing sensors) */
    const int32_t sizes[] = {1, 2, 3, 7, 23, 64, 257};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        run_random(sizes[i], 6, 4, 400);
        run_random(sizes[i], 0, 0, 50);
        run_random(sizes[i], 1, 1, 50);
    }
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
