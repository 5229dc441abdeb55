/*
 * bench_core.c - the C core's step looped in plain C, no Python: the near-limit figure that
 * `bms bench` compares the cffi call against. bms/app/bench.py writes bench_params.h (the pack's
 * parameters for N cells, as C initialisers) and compiles this file with the same flags as the
 * extension. Usage: bench_core STEPS REPEATS -> one JSON line with median ns per step.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "ssb_core.h"
#include "bench_params.h" /* BP_N, BP_K, BP_M, bench_fill_params(), BP_V, BP_T, BP_P */

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double *dalloc(size_t n)
{
    double *p = calloc(n, sizeof(double));
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

int main(int argc, char **argv)
{
    const int steps = argc > 1 ? atoi(argv[1]) : 1000;
    int reps = argc > 2 ? atoi(argv[2]) : 7;
    if (steps < 1 || reps < 1 || reps > 64)
        return 2;
    ssb_params_t prm;
    bench_fill_params(&prm);
    const size_t n = BP_N;
    ssb_state_t st = {0};
    st.soc = dalloc(n);
    st.v1 = dalloc(n);
    st.v2 = dalloc(n);
    st.hyst = dalloc(n);
    st.p = dalloc(6 * n);
    st.cell_temp_c = dalloc(n);
    st.r0_scale = dalloc(n);
    st.r0_p = dalloc(n);
    st.rc_scale = dalloc(n);
    st.imp = dalloc(SSB_IMP_ROWS * n);
    st.cap_ratio = dalloc(n);
    st.cap_p = dalloc(n);
    st.soc_window0 = dalloc(n);
    st.leak_e = dalloc(n);
    st.leak_a = dalloc(n);
    st.leak_d = dalloc(n);
    st.leak_p = dalloc(6 * n);
    st.leak_r = dalloc(n);
    st.leak_rp = dalloc(4 * n);
    st.v_prev = dalloc(n);
    st.gated_count = calloc(n, sizeof(uint32_t));
    st.work = dalloc(SSB_WORK_ROWS * n);
    ssb_output_t out = {0};
    out.soc_sigma = dalloc(n);
    out.voltage_pred_v = dalloc(n);
    out.leak_sigma_a = dalloc(n);
    out.r0_ohm = dalloc(n);
    out.capacity_ah = dalloc(n);
    out.status = calloc(n, sizeof(int32_t));
    out.leak_flag = calloc(n, sizeof(int32_t));
    out.stack = dalloc(SSB_OUT_N);
    out.charge_limit_a = dalloc(SSB_MAX_HORIZONS);
    out.discharge_limit_a = dalloc(SSB_MAX_HORIZONS);
    double *soc0 = dalloc(n), *v = dalloc(n), *t = dalloc(BP_K + 1), *p = dalloc(BP_M + 1);
    for (size_t i = 0; i < n; i++) {
        soc0[i] = 0.5;
        v[i] = BP_V;
    }
    for (int j = 0; j < BP_K; j++)
        t[j] = BP_T;
    for (int j = 0; j < BP_M; j++)
        p[j] = BP_P;
    ssb_meas_t m = {v, t, p, NULL};
    if (ssb_state_init(&prm, &st, soc0, NULL, NULL, 0.15, 0.02, 0.1) != SSB_OK) {
        fprintf(stderr, "init failed\n");
        return 1;
    }
    double ekf[64], tick[64];
    for (int r = 0; r < reps; r++) {
        double t0 = now_ns();
        for (int k = 0; k < steps; k++)
            ssb_ekf_step(&prm, &st, &m, 0.1, (k & 1) ? -2.0 : -3.5, &out);
        double t1 = now_ns();
        for (int k = 0; k < steps; k++)
            ssb_tick(&prm, &st, &m, 0.1, (k & 1) ? -2.0 : -3.5, &out);
        double t2 = now_ns();
        ekf[r] = (t1 - t0) / steps;
        tick[r] = (t2 - t1) / steps;
    }
    qsort(ekf, (size_t)reps, sizeof(double), cmp);
    qsort(tick, (size_t)reps, sizeof(double), cmp);
    printf("{\"n_cells\": %zu, \"ekf_ns_per_step\": %.3f, \"tick_ns_per_step\": %.3f}\n", n,
           ekf[reps / 2], tick[reps / 2]);
    return 0;
}
