/* ssb_plant.c - see ssb_plant.h; the NumPy reference is Plant(engine="numpy") in
 * hil/emulator/plant.py. Each expression keeps the reference's operation order (its comments
 * name the numpy line it mirrors), so results differ from it only where libm's exp and the
 * BLAS dot products round differently from numpy's (last bits). */
#include "ssb_plant.h"

#include <math.h>

#include "ssb_pairwise.h"


/* Python's max(a, b): a unless b > a */
static double py_max(double a, double b) { return b > a ? b : a; }

static int config_ok(const ssb_plant_config_t *c)
{
    if (!c->tab || !c->capacity_as || !c->self_discharge_a || !c->hyst_k_per_as
        || !c->r0_factor || !c->r_scale || !c->rc_factor || !c->local_frac || !c->g_static
        || !c->inv_short || !c->cell_heat_w || !c->swell_um || (c->m && !c->lc_factor))
        return SSB_PLANT_ERR_NULL;
    if (c->n == 0 || c->n_soc < 2)
        return SSB_PLANT_ERR_SIZE;
    return 0;
}

static int state_ok(const ssb_plant_state_t *s, size_t m)
{
    if (!s->soc || !s->x || !s->temp_c || !s->cell_v || !s->ocv_v || !s->i_cell_a
        || !s->r_series_ohm || !s->work || (m && !s->lc_kpa))
        return SSB_PLANT_ERR_NULL;
    return 0;
}

/* The checks every step call starts with: pointers, then the config, then the state. */
static int call_ok(const ssb_plant_config_t *cfg, const ssb_plant_state_t *st)
{
    if (!cfg || !st)
        return SSB_PLANT_ERR_NULL;
    const int rc = config_ok(cfg);
    return rc ? rc : state_ok(st, cfg->m);
}

int ssb_plant_begin(const ssb_plant_config_t *cfg, ssb_plant_state_t *st, double pressure_kpa,
                    double *sums)
{
    if (!sums)
        return SSB_PLANT_ERR_NULL;
    const int rc = call_ok(cfg, st);
    if (rc)
        return rc;
    const size_t n = cfg->n, ns = cfg->n_soc, w = n + 3;
    if (!isfinite(pressure_kpa))
        return SSB_PLANT_ERR_PARAM;
    for (size_t i = 0; i < n + 3; i++)
        if (!isfinite(st->temp_c[i]))
            return SSB_PLANT_ERR_STATE;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(st->soc[i]) || !isfinite(st->x[i]) || !isfinite(st->x[n + i])
            || !isfinite(st->x[2 * n + i]))
            return SSB_PLANT_ERR_STATE;

    const double *tab = cfg->tab, *dtab = cfg->tab + SSB_PLANT_TAB_ROWS * ns;
    double *v_open = st->work + SSB_PLANT_W_V_OPEN * w, *r_eff = st->work + SSB_PLANT_W_R_EFF * w;
    double *emf = st->work + SSB_PLANT_W_EMF * w, *r1 = st->work + SSB_PLANT_W_R1 * w;
    double *r2 = st->work + SSB_PLANT_W_R2 * w, *tau1 = st->work + SSB_PLANT_W_TAU1 * w;
    double *docv = st->work + SSB_PLANT_W_DOCV_DT * w, *t_k = st->work + SSB_PLANT_W_T_K * w;
    double *arr = st->work + SSB_PLANT_W_ARR * w;
    const double *x0 = st->x, *x1 = st->x + n, *x2 = st->x + 2 * n;
    /* no contact loss: one reciprocal square root for the stack (plant.py: s.fill(...)) */
    const double inv_sqrt_p
        = 1.0 / sqrt(py_max(pressure_kpa, cfg->min_local_pressure_kpa));

    for (size_t i = 0; i < n; i++) {
        /* _lookup: clip SOC to the grid, index and fraction, cur + delta * frac */
        double fs = st->soc[i];
        fs = fs < cfg->soc_lo ? cfg->soc_lo : fs;
        fs = fs > cfg->soc_hi ? cfg->soc_hi : fs;
        fs -= cfg->soc_lo;
        fs *= cfg->inv_soc_step;
        double fl = floor(fs);
        size_t j = (size_t)fl;
        if (j > ns - 1) /* guard only: soc_hi lies below the grid end */
            j = ns - 1;
        double fr = fs - fl;
        double ocv_ref = tab[SSB_PLANT_L_OCV * ns + j] + dtab[SSB_PLANT_L_OCV * ns + j] * fr;
        double docv_dt
            = tab[SSB_PLANT_L_DOCV_DT * ns + j] + dtab[SSB_PLANT_L_DOCV_DT * ns + j] * fr;
        double r0_ref = tab[SSB_PLANT_L_R0 * ns + j] + dtab[SSB_PLANT_L_R0 * ns + j] * fr;
        double r1_ref = tab[SSB_PLANT_L_R1 * ns + j] + dtab[SSB_PLANT_L_R1 * ns + j] * fr;
        double tau1_ref = tab[SSB_PLANT_L_TAU1 * ns + j] + dtab[SSB_PLANT_L_TAU1 * ns + j] * fr;

        /* Arrhenius factor exp(Ea/kB (1/T - 1/Tref)) */
        double tk = st->temp_c[i] + cfg->kelvin_offset;
        double a = 1.0 / tk;
        a -= cfg->inv_t_ref_per_k;
        a *= cfg->ea_over_kb_k;
        a = exp(a);
        /* OCV at the cell temperature */
        double ocv = (st->temp_c[i] - cfg->t_ref_c) * docv_dt + ocv_ref;
        double r0 = r0_ref * a * cfg->r0_factor[i];
        double r1i = r1_ref * a * cfg->r_scale[i];
        /* contact resistance at the local pressure */
        double r_contact;
        if (cfg->loss_any) {
            double p_local = pressure_kpa * cfg->local_frac[i];
            p_local = p_local < cfg->min_local_pressure_kpa ? cfg->min_local_pressure_kpa
                                                            : p_local;
            r_contact = cfg->rc_factor[i] / sqrt(p_local);
        } else {
            r_contact = cfg->rc_factor[i] * inv_sqrt_p;
        }
        double r_series = r0 + r_contact;
        double e = ocv + x0[i];
        e += x1[i];
        e += x2[i] * cfg->hysteresis_v;

        st->ocv_v[i] = ocv;
        st->r_series_ohm[i] = r_series;
        emf[i] = e;
        r1[i] = r1i;
        r2[i] = r1i * cfg->r2_over_r1;
        tau1[i] = tau1_ref * a;
        docv[i] = docv_dt;
        t_k[i] = tk;
        arr[i] = a;
        /* terminal voltage v = (e + R i_s) / (1 + R g): v_open + r_eff i_s */
        if (cfg->g_any) {
            double inv = 1.0 / (1.0 + r_series * cfg->g_static[i]);
            v_open[i] = e * inv;
            r_eff[i] = r_series * inv;
        } else {
            v_open[i] = e;
            r_eff[i] = r_series;
        }
    }
    sums[0] = ssb_pairwise_sum(v_open, n);
    sums[1] = ssb_pairwise_sum(r_eff, n);
    return 0;
}

int ssb_plant_finish(const ssb_plant_config_t *cfg, ssb_plant_state_t *st, double i_s,
                     double dt_s, const double *minv, const double *c_dt, const double *amb,
                     double gas_kpa, double *pressure_kpa)
{
    if (!minv || !c_dt || !amb || !pressure_kpa)
        return SSB_PLANT_ERR_NULL;
    const int rc = call_ok(cfg, st);
    if (rc)
        return rc;
    if (!isfinite(i_s) || !isfinite(dt_s) || !(dt_s > 0.0) || !isfinite(gas_kpa))
        return SSB_PLANT_ERR_PARAM;
    const size_t n = cfg->n, w = n + 3;
    const double *v_open = st->work + SSB_PLANT_W_V_OPEN * w;
    const double *r_eff = st->work + SSB_PLANT_W_R_EFF * w;
    const double *r1 = st->work + SSB_PLANT_W_R1 * w, *r2 = st->work + SSB_PLANT_W_R2 * w;
    const double *tau1 = st->work + SSB_PLANT_W_TAU1 * w;
    const double *docv = st->work + SSB_PLANT_W_DOCV_DT * w;
    const double *t_k = st->work + SSB_PLANT_W_T_K * w, *arr = st->work + SSB_PLANT_W_ARR * w;
    double *rhs = st->work + SSB_PLANT_W_RHS * w;
    double *x0 = st->x, *x1 = st->x + n, *x2 = st->x + 2 * n;
    const double neg_dt = -dt_s, neg_dt_over_tau2 = -(dt_s / cfg->tau2_s);
    const double ome = cfg->one_minus_eta, hv = cfg->hysteresis_v;

    for (size_t i = 0; i < n; i++) {
        double v = r_eff[i] * i_s + v_open[i];
        /* electrochemical current: bleed and leak currents leave at the terminals */
        double ic = cfg->g_any ? i_s - cfg->g_static[i] * v : i_s;
        double ic_pos = ic > 0.0 ? ic : 0.0;
        double charge = ic - ome * ic_pos;
        charge -= cfg->self_discharge_a[i];
        /* SOC (coulombic efficiency on charge, self-discharge) */
        charge *= dt_s;
        charge /= cfg->capacity_as[i];
        st->soc[i] += charge;
        double abs_i = fabs(ic);
        double sgn = ic > 0.0 ? 1.0 : (ic < 0.0 ? -1.0 : 0.0);
        /* RC branches and hysteresis: x <- (x - x_inf) e + x_inf, e = exp(-dt rate) */
        double e0 = exp(neg_dt / tau1[i]);
        double e1 = exp(neg_dt_over_tau2 / arr[i]);
        double e2 = exp(abs_i * -(cfg->hyst_k_per_as[i] * dt_s));
        double tg0 = r1[i] * ic, tg1 = r2[i] * ic;
        x0[i] = (x0[i] - tg0) * e0 + tg0;
        x1[i] = (x1[i] - tg1) * e1 + tg1;
        x2[i] = (x2[i] - sgn) * e2 + sgn;
        /* heat: ohmic + entropic (I T dU/dT), both RC branches, hysteresis, short, injected */
        double heat = st->r_series_ohm[i] * ic;
        heat += t_k[i] * docv[i];
        heat *= ic;
        heat += x0[i] * x0[i] / r1[i];
        heat += x1[i] * x1[i] / r2[i];
        heat += fabs(x2[i]) * abs_i * hv;
        if (cfg->heat_fault_any)
            heat += v * v * cfg->inv_short[i] + cfg->cell_heat_w[i];
        st->cell_v[i] = v;
        st->i_cell_a[i] = ic;
        rhs[i] = st->temp_c[i] * c_dt[i];
        rhs[i] += amb[i];
        rhs[i] += heat;
    }
    for (size_t i = n; i < w; i++) {
        rhs[i] = st->temp_c[i] * c_dt[i];
        rhs[i] += amb[i];
    }
    /* backward Euler: T <- minv rhs */
    for (size_t i = 0; i < w; i++) {
        const double *row = minv + i * w;
        double acc = 0.0;
        for (size_t j = 0; j < w; j++)
            acc += row[j] * rhs[j];
        st->temp_c[i] = acc;
    }

    /* pressure (plant.py _update_pressure) */
    double dot = 0.0;
    for (size_t i = 0; i < n; i++)
        dot += cfg->swell_um[i] * st->soc[i];
    double dx_um = dot
        + cfg->thermal_um_per_k * (ssb_pairwise_sum(st->temp_c, n) / (double)n - cfg->fixture_ref_c)
        - cfg->collapse_um;
    /* springs and pouch stiffen as they compress (assumption, plant_defaults.yaml) */
    double stiff = 1.0 + cfg->fixture_stiffening * dx_um / cfg->swell_full_total_um;
    double p = cfg->preload_kpa + cfg->k_fix_kpa_per_um * dx_um * py_max(stiff, 0.1) + gas_kpa;
    p = py_max(p, 0.0);
    *pressure_kpa = p;
    for (size_t j = 0; j < cfg->m; j++)
        st->lc_kpa[j] = p * cfg->lc_factor[j];
    return 0;
}

int ssb_plant_sense(const ssb_plant_sense_config_t *cfg, const ssb_plant_state_t *st,
                    double t_s, double current_a, double bus_v, const double *noise, double *buf,
                    int64_t *raw)
{
    if (!cfg || !st || !noise || !buf || !raw || !st->cell_v || !st->temp_c || !cfg->ch_a
        || !cfg->ch_s || !cfg->ch_c || !cfg->ch_lo || !cfg->ch_hi
        || (cfg->k && (!cfg->th_weights || !cfg->th_off_kelvin)) || (cfg->m && !st->lc_kpa)
        || (cfg->vtap_any && !cfg->vtap_open_since_s))
        return SSB_PLANT_ERR_NULL;
    const size_t n = cfg->n, k = cfg->k, m = cfg->m;
    if (n == 0)
        return SSB_PLANT_ERR_SIZE;
    const size_t nch = n + k + m + 2;
    /* the clamp keeps every count inside int64 (the cast below is defined) */
    for (size_t c = 0; c < nch; c++)
        if (!(cfg->ch_lo[c] >= -9.2e18 && cfg->ch_hi[c] <= 9.2e18
              && cfg->ch_lo[c] <= cfg->ch_hi[c]))
            return SSB_PLANT_ERR_PARAM;

    for (size_t i = 0; i < n; i++)
        buf[i] = st->cell_v[i];
    if (cfg->vtap_any) {
        /* an open tap wire (top of cell i): channel i decays through its input filter and
         * channel i+1 reads the difference, so the pair still sums to the true voltage */
        for (size_t i = 0; i < n; i++) {
            double since = cfg->vtap_open_since_s[i];
            if (isnan(since))
                continue;
            double decay = exp(-(t_s - since) / cfg->vtap_open_tau_s);
            double lost = buf[i] * (1.0 - decay);
            buf[i] -= lost;
            if (i + 1 < n)
                buf[i + 1] += lost;
        }
    }
    for (size_t j = 0; j < k; j++) {
        /* NTC divider by the Beta equation at the thermistor's position along the stack */
        const double *wt = cfg->th_weights + j * n;
        double t = 0.0;
        for (size_t i = 0; i < n; i++)
            t += wt[i] * st->temp_c[i];
        t += cfg->th_off_kelvin[j];
        t = 1.0 / t;
        t -= cfg->inv_t25_per_k;
        t *= cfg->beta_k;
        double r_ntc = exp(t) * cfg->r25_ohm;
        double den = r_ntc + cfg->pullup_ohm;
        buf[n + j] = r_ntc / den * cfg->th_counts_per_unit;
    }
    for (size_t j = 0; j < m; j++)
        buf[n + k + j] = st->lc_kpa[j];
    buf[nch - 2] = current_a;
    buf[nch - 1] = bus_v;
    for (size_t c = 0; c < nch; c++) {
        double x = buf[c] + noise[c];
        x += cfg->ch_a[c];
        x *= cfg->ch_s[c];
        x += cfg->ch_c[c];
        if (isnan(x)) {
            raw[c] = INT64_MIN;
            continue;
        }
        x = nearbyint(x); /* round half to even, as np.rint */
        x = x < cfg->ch_lo[c] ? cfg->ch_lo[c] : x;
        x = x > cfg->ch_hi[c] ? cfg->ch_hi[c] : x;
        raw[c] = (int64_t)x;
    }
    return 0;
}
