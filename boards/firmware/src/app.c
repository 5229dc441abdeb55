#include "app.h"
#include "hal.h"
#include "hx711.h"
#include "ltc6811.h"

static const uint16_t cv_regs[4] = {LTC_RDCVA, LTC_RDCVB, LTC_RDCVC, LTC_RDCVD};

static void sample_invalidate(sample_t *s)
{
    for (uint8_t i = 0; i < N_CELLS; i++)
        s->cell_raw[i] = INVALID_U16;
    for (uint8_t i = 0; i < N_THERMISTORS; i++)
        s->ntc_raw[i] = INVALID_U16;
    for (uint8_t i = 0; i < N_LOAD_CELLS; i++)
        s->load_raw[i] = INVALID_I32;
    s->current_raw = INVALID_I32;
    s->bus_raw = INVALID_I32;
    s->sensor_error = 0;
    s->timestamp_ms = 0;
}

void app_init(app_t *a, uint16_t boot_id)
{
    proto_reader_init(&a->rx);
    a->outputs = 0;
    a->balance_mask = 0;
    a->charge_limit_ma = 0;
    a->discharge_limit_ma = 0;
    hal_relays_write(0);
    a->last_heartbeat_ms = hal_millis();
    a->wd_tripped = 0;
    a->just_booted = 1;
    a->straps = hal_straps();
    a->boot_id = boot_id;
    sample_invalidate(&a->work);
    sample_invalidate(&a->latest);
    a->have_sample = 0;
    a->sched = SCHED_IDLE;
    a->cv_reg = 0;
    a->cycle_start_ms = hal_millis() - SAMPLE_PERIOD_MS;
    a->step_ms = 0;
    for (uint8_t i = 0; i < N_LOAD_CELLS; i++)
        a->load_seen_ms[i] = hal_millis();
    a->frames_ok = 0;
    a->pec_errors = 0;
}

static void send(app_t *a, uint8_t type, uint16_t seq, const uint8_t *payload, uint16_t len)
{
    size_t n = proto_encode(PROTO_VERSION, type, seq, payload, len, a->tx);
    hal_uart_write(a->tx, n);
}

static void send_ack(app_t *a, uint8_t type, uint16_t seq)
{
    uint8_t p[2] = {type, 0};
    send(a, MSG_ACK, seq, p, 2);
}

static void send_nack(app_t *a, uint8_t type, uint16_t seq, uint8_t err, uint16_t detail)
{
    uint8_t p[4] = {type, err, 0, 0};
    put_u16(p + 2, detail);
    send(a, MSG_NACK, seq, p, 4);
}

void app_send_info(app_t *a, uint16_t seq)
{
    uint8_t p[28] = {0};
    p[0] = PROTO_VERSION;
    p[1] = (a->straps & 1u) ? 2 : 0; /* 2 = firmware on a simulated MCU (strap set by harness) */
    p[2] = FW_MAJOR;
    p[3] = FW_MINOR;
    p[4] = FW_PATCH;
    p[5] = N_CELLS;
    p[6] = N_THERMISTORS;
    p[7] = N_LOAD_CELLS;
    put_u16(p + 8, HEARTBEAT_TIMEOUT_MS);
    put_u16(p + 10, (uint16_t)(CAP_BALANCING | ((a->straps & 2u) ? CAP_SIM_CLOCK : 0)));
    put_u16(p + 12, a->boot_id);
    const char *id = BOARD_ID;
    for (uint8_t i = 0; i < 14 && id[i]; i++)
        p[14 + i] = (uint8_t)id[i];
    send(a, MSG_INFO, seq, p, 28);
}

uint16_t app_status(const app_t *a)
{
    uint8_t fb = hal_relays_read();
    uint16_t s = (uint16_t)(fb & 0x07u); /* bits 0..2 = pins read back */
    if (a->wd_tripped)
        s |= ST_WATCHDOG_TRIPPED;
    if (a->just_booted)
        s |= ST_JUST_BOOTED;
    if (a->balance_mask)
        s |= ST_BALANCING;
    if (a->latest.sensor_error)
        s |= ST_SENSOR_ERROR;
    if (a->straps & 2u)
        s |= ST_SIM_CLOCK;
    return s;
}

static void send_measurement(app_t *a, uint16_t seq)
{
    uint8_t p[20 + 2 * N_CELLS + 2 * N_THERMISTORS + 4 * N_LOAD_CELLS];
    const sample_t *s = &a->latest;
    put_u32(p, s->timestamp_ms);
    put_u16(p + 4, app_status(a));
    p[6] = N_CELLS;
    p[7] = N_THERMISTORS;
    p[8] = N_LOAD_CELLS;
    p[9] = 0;
    put_u32(p + 10, (uint32_t)s->current_raw);
    put_u32(p + 14, (uint32_t)s->bus_raw);
    put_u16(p + 18, 0);
    uint8_t *w = p + 20;
    for (uint8_t i = 0; i < N_CELLS; i++, w += 2)
        put_u16(w, s->cell_raw[i]);
    for (uint8_t i = 0; i < N_THERMISTORS; i++, w += 2)
        put_u16(w, s->ntc_raw[i]);
    for (uint8_t i = 0; i < N_LOAD_CELLS; i++, w += 4)
        put_u32(w, (uint32_t)s->load_raw[i]);
    send(a, MSG_MEASUREMENT, seq, p, (uint16_t)sizeof p);
    a->just_booted = 0;
}

static void handle_set_outputs(app_t *a, const proto_frame_t *f)
{
    const uint8_t *p = f->payload;
    uint8_t outputs = p[0];
    uint32_t mask = get_u32(p + 2);
    int32_t chg = (int32_t)get_u32(p + 6), dis = (int32_t)get_u32(p + 10);
    if ((outputs & ~0x07u) || chg < 0 || dis < 0 || (mask >> N_CELLS) != 0) {
        send_nack(a, f->type, f->seq, NACK_BAD_VALUE, 0);
        return;
    }
    if (a->wd_tripped && (outputs & 0x07u)) {
        send_nack(a, f->type, f->seq, NACK_STATE, 0);
        return;
    }
    a->outputs = outputs;
    a->balance_mask = mask;
    a->charge_limit_ma = chg;
    a->discharge_limit_ma = dis;
    hal_relays_write(outputs);
    send_ack(a, f->type, f->seq);
}

void app_handle_frame(app_t *a, const uint8_t *enc, uint16_t n)
{
    proto_frame_t f;
    enum proto_result r = proto_decode(enc, n, a->dec, &f);
    if (r != PR_OK)
        a->rx.errors[r]++;
    switch (r) {
    case PR_OK: break;
    case PR_VERSION: send_nack(a, f.type, f.seq, NACK_BAD_VERSION, PROTO_VERSION); return;
    case PR_UNKNOWN_TYPE: send_nack(a, f.type, f.seq, NACK_UNKNOWN_TYPE, 0); return;
    case PR_PAYLOAD: send_nack(a, f.type, f.seq, NACK_BAD_LENGTH, 0); return;
    default: return; /* cobs, short, crc, length: dropped, counted */
    }
    a->frames_ok++;
    switch (f.type) {
    case MSG_HELLO:
        if (f.payload[0] <= PROTO_VERSION && PROTO_VERSION <= f.payload[1])
            app_send_info(a, f.seq);
        else
            send_nack(a, f.type, f.seq, NACK_BAD_VERSION, PROTO_VERSION);
        break;
    case MSG_SAMPLE: send_measurement(a, f.seq); break; /* dt ignored: real clock */
    case MSG_SET_OUTPUTS: handle_set_outputs(a, &f); break;
    case MSG_HEARTBEAT:
        a->last_heartbeat_ms = hal_millis();
        a->wd_tripped = 0;
        break;
    case MSG_FAULT_INJECT: send_nack(a, f.type, f.seq, NACK_UNSUPPORTED, 0); break;
    default: /* INFO, MEASUREMENT, ACK, NACK: board -> host only */
        send_nack(a, f.type, f.seq, NACK_UNSUPPORTED, 0);
        break;
    }
}

void app_watchdog(app_t *a, uint32_t now_ms)
{
    if (!a->wd_tripped && (uint32_t)(now_ms - a->last_heartbeat_ms) >= HEARTBEAT_TIMEOUT_MS) {
        /* The host went silent: open everything ourselves. Bleeding stops too (assumption: no
         * unsupervised balancing), applied at the next configuration write (<= 1 period). */
        hal_relays_write(0);
        a->outputs = 0;
        a->balance_mask = 0;
        a->wd_tripped = 1;
    }
}

/* ------------------------------------------------------------------ sampling scheduler */

static uint16_t dcc_bits(uint32_t mask, uint8_t dev)
{
    uint8_t first = (uint8_t)(dev * CELLS_PER_MONITOR);
    uint16_t bits = 0;
    for (uint8_t c = 0; c < CELLS_PER_MONITOR; c++) {
        uint8_t cell = (uint8_t)(first + c);
        if (cell < N_CELLS && (mask & (1UL << cell)))
            bits |= (uint16_t)(1u << c);
    }
    return bits;
}

static void start_cycle(app_t *a, uint32_t now)
{
    uint8_t cfg[N_MONITORS][6];
    a->cycle_start_ms = now;
    a->work.timestamp_ms = now;
    a->work.sensor_error = 0;
    ltc_wakeup();
    /* Rewritten every cycle: the LTC6811's own watchdog resets the configuration (and so the
     * discharge bits) after 2 s without a valid command. */
    for (uint8_t d = 0; d < N_MONITORS; d++)
        ltc_cfga(cfg[d], dcc_bits(a->balance_mask, d));
    ltc_write(LTC_WRCFGA, cfg);
    ltc_cmd(LTC_ADCV_NORMAL_ALL);
    a->step_ms = now;
    a->sched = SCHED_WAIT_CV;
}

static void read_cv(app_t *a)
{
    uint8_t data[N_MONITORS][6];
    uint8_t bad = ltc_read(cv_regs[a->cv_reg], data);
    a->pec_errors += (bad & 1u) + ((bad >> 1) & 1u);
    if (bad)
        a->work.sensor_error = 1;
    for (uint8_t d = 0; d < N_MONITORS; d++)
        for (uint8_t k = 0; k < 3; k++) {
            uint8_t cell = (uint8_t)(d * CELLS_PER_MONITOR + a->cv_reg * 3 + k);
            if (cell < N_CELLS && (uint8_t)(a->cv_reg * 3 + k) < CELLS_PER_MONITOR)
                a->work.cell_raw[cell] = get_u16(&data[d][2 * k]);
        }
}

static void read_aux(app_t *a)
{
    uint8_t data[N_MONITORS][6];
    uint8_t bad = ltc_read(LTC_RDAUXA, data);
    if (bad)
        a->work.sensor_error = 1;
    for (uint8_t d = 0; d < N_MONITORS; d++)
        for (uint8_t k = 0; k < NTC_PER_MONITOR; k++) {
            uint8_t t = (uint8_t)(d * NTC_PER_MONITOR + k);
            if (t < N_THERMISTORS)
                a->work.ntc_raw[t] = get_u16(&data[d][2 * k]);
        }
}

static int32_t adc_sum(uint8_t ch)
{
    uint16_t sum = 0;
    for (uint8_t i = 0; i < ADC_OVERSAMPLE; i++)
        sum = (uint16_t)(sum + hal_adc_read(ch));
    return (int32_t)sum;
}

static void read_load_cells(app_t *a, uint32_t now)
{
    for (uint8_t i = 0; i < N_LOAD_CELLS; i++) {
        int32_t v;
        if (hx711_read(i, &v)) {
            a->work.load_raw[i] = v;
            a->load_seen_ms[i] = now;
        } else if ((uint32_t)(now - a->load_seen_ms[i]) > HX_STALE_MS) {
            a->work.load_raw[i] = INVALID_I32;
            a->work.sensor_error = 1;
        }
    }
}

static void finish_cycle(app_t *a, uint32_t now)
{
    read_load_cells(a, now);
    a->work.current_raw = adc_sum(ADC_CH_CURRENT);
    a->work.bus_raw = adc_sum(ADC_CH_BUS);
    a->latest = a->work; /* published whole: a SAMPLE never sees a half-updated set */
    a->have_sample = 1;
    a->sched = SCHED_IDLE;
}

/* One short step per call, so a SAMPLE waits at most one step (one register read) for its
 * reply. */
static void sched_step(app_t *a, uint32_t now)
{
    switch (a->sched) {
    case SCHED_IDLE:
        if ((uint32_t)(now - a->cycle_start_ms) >= SAMPLE_PERIOD_MS)
            start_cycle(a, now);
        break;
    case SCHED_WAIT_CV:
        if ((uint32_t)(now - a->step_ms) >= LTC_CONV_WAIT_MS) {
            a->cv_reg = 0;
            a->sched = SCHED_READ_CV;
        }
        break;
    case SCHED_READ_CV:
        read_cv(a);
        if (++a->cv_reg == 4) {
            ltc_cmd(LTC_ADAX_NORMAL_ALL);
            a->step_ms = now;
            a->sched = SCHED_WAIT_AUX;
        }
        break;
    case SCHED_WAIT_AUX:
        if ((uint32_t)(now - a->step_ms) >= LTC_CONV_WAIT_MS) {
            read_aux(a);
            a->sched = SCHED_FINISH;
        }
        break;
    default:
        finish_cycle(a, now);
        break;
    }
}

void app_first_sample(app_t *a)
{
    uint32_t t0 = hal_millis();
    /* Give the HX711s their settling time so the first MEASUREMENT has load cells. */
    while ((uint32_t)(hal_millis() - t0) < HX_BOOT_WAIT_MS) {
        uint8_t ready = 0;
        for (uint8_t i = 0; i < N_LOAD_CELLS; i++)
            ready = (uint8_t)(ready + !hal_hx_dout(i));
        if (ready == N_LOAD_CELLS)
            break;
        hal_wdt_kick();
    }
    uint32_t now = hal_millis();
    start_cycle(a, now);
    while (a->sched != SCHED_IDLE) {
        hal_wdt_kick();
        sched_step(a, hal_millis());
    }
}

void app_poll(app_t *a)
{
    int c;
    /* Bounded per pass so a flood of bytes cannot starve the scheduler and the watchdog. */
    for (uint16_t k = 0; k < 64 && (c = hal_uart_getc()) >= 0; k++) {
        if (proto_reader_push(&a->rx, (uint8_t)c)) {
            app_handle_frame(a, a->rx.buf, a->rx.n);
            a->rx.n = 0;
        }
    }
    uint32_t now = hal_millis();
    app_watchdog(a, now);
    sched_step(a, now);
}
