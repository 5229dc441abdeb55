/* ssb_thermal (the cooling check's per-tick work) under AddressSanitizer + UBSan: every array
 * exactly sized on the heap, the NULL and parameter paths (nothing changed), 1..300 cells
 * (numpy's pairwise sum splits past 128), grids of 1..40 points, NaN/Inf inputs, long random
 * runs; the invariants (the CUSUM within [0, 2 limit], a step at most every period, interp
 * within the table's range, the pairwise sum near a long double sum). The arithmetic against
 * the Python reference: tests/test_thermal_check_c.py. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ssb_thermal.h"

#include "check.h"

static double *dalloc(size_t n)
{
    double *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = NAN;
    return p;
}

static ssb_cooling_state_t fresh(void)
{
    ssb_cooling_state_t s;
    s.start_c = s.model_c = s.coolant_c = s.plates_c = NAN;
    s.last_tick_s = s.last_step_s = NAN;
    s.ocv_v = s.temp_c = NAN;
    s.energy_j = s.leak_w = s.docv_dt_v_per_k = s.cusum_k_s = s.residual_k = s.heat_w = 0.0;
    s.inputs_bad = s.raised = 0;
    return s;
}

static void grid(size_t n, double *soc, double *ocv, double *docv)
{
    for (size_t i = 0; i < n; i++) {
        soc[i] = n == 1 ? 0.5 : (double)i / (double)(n - 1);
        ocv[i] = 3.0 + 1.2 * soc[i] + 0.05 * check_urand();
        docv[i] = 1e-4 * (check_urand() - 0.5);
    }
}

static void errors(void)
{
    double *g = dalloc(3), *o = dalloc(3), *d = dalloc(3);
    grid(3, g, o, d);
    ssb_cooling_params_t p = {1.0, 0.3, 20.0, 0.02, 70.0, 0.3, 500.0, 50.0, 300.0, 0.1, 0.05,
                              g, o, d, 3};
    CHECK(ssb_cooling_check(NULL) == SSB_THERMAL_ERR_NULL);
    CHECK(ssb_cooling_check(&p) == 0);
    p.n_grid = 0;
    CHECK(ssb_cooling_check(&p) == SSB_THERMAL_ERR_SIZE);
    p.n_grid = 3;
    g[1] = g[0];
    CHECK(ssb_cooling_check(&p) == SSB_THERMAL_ERR_PARAM);
    g[1] = NAN;
    CHECK(ssb_cooling_check(&p) == SSB_THERMAL_ERR_PARAM);
    g[1] = 0.5;
    p.ocv_v = NULL;
    CHECK(ssb_cooling_check(&p) == SSB_THERMAL_ERR_NULL);
    p.ocv_v = o;
    ssb_cooling_state_t s = fresh(), before = s;
    double *soc = dalloc(2), *w = dalloc(2), *t = dalloc(1);
    CHECK(ssb_cooling_observe(NULL, &s, 0.0, 1.0, 3.7, soc, soc, soc, 2, t, 1, 1, w)
          == SSB_THERMAL_ERR_NULL);
    CHECK(ssb_cooling_observe(&p, NULL, 0.0, 1.0, 3.7, soc, soc, soc, 2, t, 1, 1, w)
          == SSB_THERMAL_ERR_NULL);
    CHECK(ssb_cooling_observe(&p, &s, 0.0, 1.0, 3.7, soc, NULL, soc, 2, t, 1, 1, w)
          == SSB_THERMAL_ERR_NULL);
    CHECK(ssb_cooling_observe(&p, &s, 0.0, 1.0, 3.7, soc, soc, soc, 2, NULL, 1, 1, w)
          == SSB_THERMAL_ERR_NULL);
    CHECK(ssb_cooling_observe(&p, &s, 0.0, 1.0, 3.7, soc, soc, soc, 2, t, 1, 1, NULL)
          == SSB_THERMAL_ERR_NULL);
    CHECK(memcmp(&s, &before, sizeof s) == 0);
    /* no cells, no thermistors: steps, nothing read */
    CHECK(ssb_cooling_observe(&p, &s, 0.0, 1.0, 3.7, NULL, NULL, NULL, 0, NULL, 0, 1, NULL) == 1);
    CHECK(isnan(s.ocv_v) && s.leak_w == 0.0 && isnan(s.temp_c));
    free(g), free(o), free(d), free(soc), free(w), free(t);
}

static void sums(void)
{
    for (size_t n = 0; n <= 300; n++) {
        double *a = dalloc(n);
        long double exact = 0.0L;
        double mag = 0.0;
        for (size_t i = 0; i < n; i++) {
            a[i] = (check_urand() - 0.5) * 100.0;
            exact += a[i];
            mag += fabs(a[i]);
        }
        double s = ssb_thermal_pairwise_sum(a, n);
        CHECK(fabs((double)(s - exact)) <= 1e-13 * (mag + 1.0));
        free(a);
    }
}

static void run(size_t n_cells, size_t n_temps, size_t n_grid, int ticks)
{
    double *g = dalloc(n_grid), *o = dalloc(n_grid), *d = dalloc(n_grid);
    grid(n_grid, g, o, d);
    ssb_cooling_params_t p = {1.0, 0.3, 20.0, 0.02, 70.0, 0.3, 500.0, 50.0, 300.0, 0.1, 0.05,
                              g, o, d, n_grid};
    CHECK(ssb_cooling_check(&p) == 0);
    double *soc = dalloc(n_cells), *sig = dalloc(n_cells), *leak = dalloc(n_cells);
    double *w = dalloc(n_cells), *temps = dalloc(n_temps);
    ssb_cooling_state_t s = fresh();
    double last_step = -INFINITY;
    for (int k = 0; k < ticks; k++) {
        double t = 0.1 * k + (check_urand() < 0.01 ? 30.0 : 0.0) * (k > ticks / 2);
        for (size_t i = 0; i < n_cells; i++) {
            double u = check_urand();
            soc[i] = u < 0.01 ? NAN : (u < 0.02 ? -0.1 : (u < 0.03 ? 1.2 : check_urand()));
            if (u > 0.5 && n_grid > 1)
                soc[i] = g[(size_t)(check_urand() * (double)n_grid) % n_grid]; /* a grid point */
            sig[i] = check_urand() < 0.01 ? INFINITY : 0.03 * check_urand();
            leak[i] = check_urand() < 0.01 ? NAN : 0.01 * (check_urand() - 0.5);
        }
        for (size_t i = 0; i < n_temps; i++)
            temps[i] = check_urand() < 0.01 ? NAN : 25.0 + 10.0 * check_urand();
        double u = check_urand();
        double cur = u < 0.01 ? NAN : (u < 0.02 ? INFINITY : 40.0 * (check_urand() - 0.5));
        int rc = ssb_cooling_observe(&p, &s, t, cur, 3.0 + check_urand(), soc, sig, leak, n_cells,
                                     temps, n_temps, check_urand() > 0.02, w);
        CHECK(rc == 0 || rc == 1);
        if (rc == 1) {
            CHECK(!(t - last_step < p.period_s - 1e-9));
            last_step = t;
        }
        CHECK(isnan(s.cusum_k_s) || (s.cusum_k_s >= 0.0 && s.cusum_k_s <= 2.0 * p.limit_k_s));
        CHECK(s.inputs_bad == 0 || s.inputs_bad == 1);
    }
    for (size_t i = 0; i < 50; i++) {
        double x = -0.2 + 1.4 * check_urand();
        double lo = INFINITY, hi = -INFINITY;
        for (size_t j = 0; j < n_grid; j++) {
            lo = fmin(lo, o[j]);
            hi = fmax(hi, o[j]);
        }
        double y = ssb_thermal_interp(x, g, o, n_grid);
        CHECK(y >= lo && y <= hi);
    }
    CHECK(n_grid == 1 ? ssb_thermal_interp(NAN, g, o, 1) == o[0]
                      : isnan(ssb_thermal_interp(NAN, g, o, n_grid)));
    free(g), free(o), free(d), free(soc), free(sig), free(leak), free(w), free(temps);
}

int main(void)
{
    errors();
    sums();
    size_t cells[] = {1, 2, 7, 8, 23, 129, 300};
    for (size_t c = 0; c < sizeof cells / sizeof *cells; c++)
        for (size_t n_grid = 1; n_grid <= 40; n_grid += 13)
            run(cells[c], c % 3 == 0 ? 0 : 6, n_grid, 400);
    run(23, 6, 21, 20000);
    printf("ok\n");
    return 0;
}
