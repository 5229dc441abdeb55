/* Host unit tests of the firmware logic: codec, PEC, drivers, dispatch, scheduler, watchdog,
 * against the emulated parts of sim/parts.c behind the host HAL. Exit status = failures. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../sim/parts.h"
#include "../src/app.h"
#include "../src/ltc6811.h"
#include "../src/proto.h"
#include "hal_host.h"

static int failures, checks;
#define CHECK(cond)                                                                    \
    do {                                                                               \
        checks++;                                                                      \
        if (!(cond)) {                                                                 \
            failures++;                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);  \
        }                                                                              \
    } while (0)

static app_t app;
static uint16_t host_seq;

typedef struct {
    uint8_t dec[PROTO_DECODE_BUF];
    proto_frame_t f;
} reply_t;

static void send_frame(uint8_t version, uint8_t type, const uint8_t *payload, uint16_t len)
{
    uint8_t enc[PROTO_MAX_ENCODED];
    size_t n = proto_encode(version, type, ++host_seq, payload, len, enc);
    host_rx_push(enc, (unsigned)n);
}

/* Run the main loop until a reply frame appears (or a bound passes); returns 1 with it. */
static int run_until_reply(reply_t *r, unsigned max_polls)
{
    for (unsigned k = 0; k < max_polls; k++) {
        for (unsigned i = 0; i < hb.tx_len; i++) {
            if (hb.tx[i] != 0)
                continue;
            enum proto_result res = proto_decode(hb.tx, i, r->dec, &r->f);
            memmove(hb.tx, hb.tx + i + 1, hb.tx_len - i - 1);
            hb.tx_len -= i + 1;
            return res == PR_OK;
        }
        app_poll(&app);
        host_advance_us(50);
    }
    return 0;
}

static void run_ms(unsigned ms)
{
    uint64_t end = hb.us + (uint64_t)ms * 1000u;
    while (hb.us < end) {
        app_poll(&app);
        host_advance_us(50);
    }
}

static void set_inputs(void)
{
    for (int d = 0; d < 2; d++)
        for (int c = 0; c < 12; c++)
            hb.chain.cell_in[d][c] = (uint16_t)(37000 + d * 100 + c); /* 3.7 V + marks */
    for (int d = 0; d < 2; d++)
        for (int g = 0; g < 5; g++)
            hb.chain.gpio_in[d][g] = (uint16_t)(15000 + d * 10 + g);
    hb.adc[0] = 512;
    hb.adc[1] = 700;
}

static void boot(void)
{
    host_board_reset();
    set_inputs();
    for (int i = 0; i < 4; i++)
        hx711_convert(&hb.hx[i], i == 3 ? -1234 : 100000 + i);
    host_seq = 0;
    app_init(&app, 7);
    app_first_sample(&app);
    app_send_info(&app, 0);
}

static void test_crc_pec_cobs(void)
{
    CHECK(proto_crc16((const uint8_t *)"123456789", 9) == 0x29B1);
    uint8_t wrcfg[2] = {0x00, 0x01};
    CHECK(ltc_pec15(wrcfg, 2) == 0x3D6E); /* datasheet example: WRCFGA PEC 0x3D6E */
    CHECK(parts_pec15(wrcfg, 2) == 0x3D6E);
    srand(1);
    for (int t = 0; t < 2000; t++) {
        uint8_t data[6];
        for (int i = 0; i < 6; i++)
            data[i] = (uint8_t)rand();
        CHECK(ltc_pec15(data, 6) == parts_pec15(data, 6));
    }
    for (int len = 0; len <= 600; len++) {
        uint8_t in[600], enc[620], out[600];
        for (int i = 0; i < len; i++)
            in[i] = (uint8_t)((len % 3 == 0) ? (rand() % 4) : (1 + rand() % 255));
        size_t m = proto_cobs_encode(in, (size_t)len, enc);
        CHECK(m <= (size_t)len + (size_t)len / 254 + 1);
        CHECK(memchr(enc, 0, m) == NULL);
        CHECK(proto_cobs_decode(enc, m, out, sizeof out) == len);
        CHECK(memcmp(in, out, (size_t)len) == 0);
    }
    uint8_t bad[3] = {0x05, 0x11, 0x22}; /* code points past the end */
    uint8_t out[8];
    CHECK(proto_cobs_decode(bad, 3, out, sizeof out) == -1);
}

static void test_reader_resync(void)
{
    proto_reader_t r;
    proto_reader_init(&r);
    for (int i = 0; i < 400; i++)
        CHECK(proto_reader_push(&r, 0x55) == 0);
    CHECK(r.errors[PR_OVERSIZE] == 1);
    CHECK(proto_reader_push(&r, 0) == 0); /* end of the oversize run */
    uint8_t enc[PROTO_MAX_ENCODED], dec[PROTO_DECODE_BUF];
    uint8_t p[4] = {1, 2, 3, 4};
    size_t n = proto_encode(1, MSG_SAMPLE, 9, p, 4, enc);
    int got = 0;
    for (size_t i = 0; i < n; i++)
        got |= proto_reader_push(&r, enc[i]);
    CHECK(got);
    proto_frame_t f;
    CHECK(proto_decode(r.buf, r.n, dec, &f) == PR_OK && f.seq == 9 && f.type == MSG_SAMPLE);
    /* Largest payload round-trips within the 250-byte bound. */
    uint8_t big[PROTO_MAX_PAYLOAD];
    memset(big, 0xAB, sizeof big);
    n = proto_encode(1, MSG_MEASUREMENT, 1, big, PROTO_MAX_PAYLOAD, enc);
    CHECK(n <= PROTO_MAX_ENCODED);
    CHECK(proto_encode(1, MSG_MEASUREMENT, 1, big, PROTO_MAX_PAYLOAD + 1, enc) == 0);
}

static void test_boot_info_measurement(void)
{
    boot();
    reply_t r;
    CHECK(run_until_reply(&r, 10));
    CHECK(r.f.type == MSG_INFO && r.f.seq == 0 && r.f.length == 28);
    CHECK(r.f.payload[1] == 0 && r.f.payload[5] == 23 && r.f.payload[6] == 6 &&
          r.f.payload[7] == 4);
    CHECK(get_u16(r.f.payload + 8) == 1000 && get_u16(r.f.payload + 12) == 7);
    CHECK(memcmp(r.f.payload + 14, "m2560-ltc6811", 13) == 0);
    uint8_t dt[4] = {0x10, 0x27, 0, 0};
    send_frame(1, MSG_SAMPLE, dt, 4);
    CHECK(run_until_reply(&r, 100));
    CHECK(r.f.type == MSG_MEASUREMENT && r.f.seq == host_seq && r.f.length == 20 + 46 + 12 + 16);
    const uint8_t *p = r.f.payload;
    uint16_t st = get_u16(p + 4);
    CHECK(st & ST_JUST_BOOTED);
    CHECK(!(st & ST_SENSOR_ERROR));
    CHECK(get_u16(p + 20) == 37000);              /* cell 0 = monitor 0 C1 */
    CHECK(get_u16(p + 20 + 2 * 11) == 37011);     /* cell 11 = monitor 0 C12 */
    CHECK(get_u16(p + 20 + 2 * 12) == 37100);     /* cell 12 = monitor 1 C1 */
    CHECK(get_u16(p + 20 + 2 * 22) == 37110);     /* cell 22 = monitor 1 C11 */
    const uint8_t *t = p + 20 + 46;
    CHECK(get_u16(t) == 15000 && get_u16(t + 4) == 15002 && get_u16(t + 6) == 15010);
    const uint8_t *l = t + 12;
    CHECK((int32_t)get_u32(l) == 100000 && (int32_t)get_u32(l + 12) == -1234);
    CHECK((int32_t)get_u32(p + 10) == 512 * 16 && (int32_t)get_u32(p + 14) == 700 * 16);
    send_frame(1, MSG_SAMPLE, dt, 4);
    CHECK(run_until_reply(&r, 100));
    CHECK(!(get_u16(r.f.payload + 4) & ST_JUST_BOOTED));
}

static void test_pec_error(void)
{
    boot();
    reply_t r;
    run_until_reply(&r, 10);
    hb.chain.corrupt_reads = 1000;
    run_ms(250);
    uint8_t dt[4] = {0};
    send_frame(1, MSG_SAMPLE, dt, 4);
    CHECK(run_until_reply(&r, 100));
    CHECK(get_u16(r.f.payload + 4) & ST_SENSOR_ERROR);
    CHECK(get_u16(r.f.payload + 20) == 0xFFFF);          /* monitor 0: PEC failed */
    CHECK(get_u16(r.f.payload + 20 + 24) == 37100);      /* monitor 1 still read */
    CHECK(app.pec_errors > 0);
}

static void set_outputs(uint8_t outputs, uint32_t mask, int32_t chg, int32_t dis)
{
    uint8_t p[14] = {outputs, 0};
    put_u32(p + 2, mask);
    put_u32(p + 6, (uint32_t)chg);
    put_u32(p + 10, (uint32_t)dis);
    send_frame(1, MSG_SET_OUTPUTS, p, 14);
}

static void heartbeat(void)
{
    uint8_t p[6] = {2, 0, 0, 0, 0, 0};
    send_frame(1, MSG_HEARTBEAT, p, 6);
}

static int expect_nack(uint8_t type, uint8_t err, uint16_t detail)
{
    reply_t r;
    if (!run_until_reply(&r, 100))
        return 0;
    return r.f.type == MSG_NACK && r.f.payload[0] == type && r.f.payload[1] == err &&
           get_u16(r.f.payload + 2) == detail && r.f.seq == host_seq;
}

static void test_outputs_and_balancing(void)
{
    boot();
    reply_t r;
    run_until_reply(&r, 10);
    heartbeat();
    set_outputs(0x05, (1UL << 0) | (1UL << 12) | (1UL << 22), 5000, 8000);
    CHECK(run_until_reply(&r, 100) && r.f.type == MSG_ACK && r.f.payload[0] == MSG_SET_OUTPUTS);
    CHECK(hb.relays == 0x05);
    run_ms(150); /* next cycle writes the configuration */
    uint64_t dcc = ltc_chain_dcc(&hb.chain);
    CHECK(dcc == ((1ULL << 0) | (1ULL << 12) | (1ULL << 22)));
    CHECK(hb.chain.cfg[0][0] == 0xFC); /* GPIO pull-downs off, REFON */
    set_outputs(0x01, 1UL << 23, 0, 0);
    CHECK(expect_nack(MSG_SET_OUTPUTS, NACK_BAD_VALUE, 0));
    set_outputs(0x01, 0, -1, 0);
    CHECK(expect_nack(MSG_SET_OUTPUTS, NACK_BAD_VALUE, 0));
    set_outputs(0xFF, 0, 0, 0); /* reserved output bits 3-7 */
    CHECK(expect_nack(MSG_SET_OUTPUTS, NACK_BAD_VALUE, 0));
    CHECK(hb.relays == 0x05);
}

static void test_watchdog(void)
{
    boot();
    reply_t r;
    run_until_reply(&r, 10);
    heartbeat();
    set_outputs(0x03, 0x2, 1000, 1000);
    run_until_reply(&r, 100);
    CHECK(hb.relays == 0x03);
    for (int i = 0; i < 5; i++) { /* beats every 900 ms keep it closed */
        run_ms(900);
        heartbeat();
    }
    run_ms(10);
    CHECK(hb.relays == 0x03 && !app.wd_tripped);
    uint64_t silent_from = hb.us;
    while (hb.relays && hb.us - silent_from < 3000000u) {
        app_poll(&app);
        host_advance_us(50);
    }
    uint64_t open_after_us = hb.us - (uint64_t)app.last_heartbeat_ms * 1000u;
    CHECK(hb.relays == 0);
    CHECK(open_after_us >= 1000000u && open_after_us <= 1002000u);
    printf("watchdog: contactors open %.1f ms after the last heartbeat (timeout 1000 ms)\n",
           (double)open_after_us / 1000.0);
    uint8_t dt[4] = {0};
    send_frame(1, MSG_SAMPLE, dt, 4);
    CHECK(run_until_reply(&r, 100) && (get_u16(r.f.payload + 4) & ST_WATCHDOG_TRIPPED));
    set_outputs(0x03, 0, 0, 0);
    CHECK(expect_nack(MSG_SET_OUTPUTS, NACK_STATE, 0));
    set_outputs(0x00, 0, 0, 0); /* opening is always allowed */
    CHECK(run_until_reply(&r, 100) && r.f.type == MSG_ACK);
    heartbeat();
    set_outputs(0x03, 0, 0, 0);
    CHECK(run_until_reply(&r, 100) && r.f.type == MSG_ACK);
    CHECK(hb.relays == 0x03);
    run_ms(150);
    CHECK(ltc_chain_dcc(&hb.chain) == 0); /* balancing stopped by the trip */
}

static void test_rejections(void)
{
    boot();
    reply_t r;
    run_until_reply(&r, 10);
    uint8_t fi[8] = {1, 0, 0, 0, 0, 0, 0x80, 0x3F};
    send_frame(1, MSG_FAULT_INJECT, fi, 8);
    CHECK(expect_nack(MSG_FAULT_INJECT, NACK_UNSUPPORTED, 0));
    uint8_t hello[2] = {1, 1};
    send_frame(2, MSG_HELLO, hello, 2);
    CHECK(expect_nack(MSG_HELLO, NACK_BAD_VERSION, 1));
    send_frame(1, 0x77, hello, 2);
    CHECK(expect_nack(0x77, NACK_UNKNOWN_TYPE, 0));
    send_frame(1, MSG_SAMPLE, hello, 2);
    CHECK(expect_nack(MSG_SAMPLE, NACK_BAD_LENGTH, 0));
    uint8_t hello23[2] = {2, 3};
    send_frame(1, MSG_HELLO, hello23, 2);
    CHECK(expect_nack(MSG_HELLO, NACK_BAD_VERSION, 1));
    send_frame(1, MSG_HELLO, hello, 2);
    CHECK(run_until_reply(&r, 100) && r.f.type == MSG_INFO && r.f.seq == host_seq);
    /* A corrupted frame is dropped silently and counted; the next one is answered. */
    uint8_t enc[PROTO_MAX_ENCODED];
    size_t n = proto_encode(1, MSG_HELLO, 99, hello, 2, enc);
    enc[3] ^= 0x01;
    host_rx_push(enc, (unsigned)n);
    send_frame(1, MSG_HELLO, hello, 2);
    CHECK(run_until_reply(&r, 100) && r.f.seq == host_seq);
    CHECK(app.rx.errors[PR_CRC] == 1);
}

static void test_load_cell_stale(void)
{
    boot();
    reply_t r;
    run_until_reply(&r, 10);
    run_ms(700); /* no new conversions: stale after 500 ms */
    uint8_t dt[4] = {0};
    send_frame(1, MSG_SAMPLE, dt, 4);
    CHECK(run_until_reply(&r, 100));
    CHECK((int32_t)get_u32(r.f.payload + 20 + 46 + 12) == INVALID_I32);
    CHECK(get_u16(r.f.payload + 4) & ST_SENSOR_ERROR);
    hx711_convert(&hb.hx[0], 0x7FFFFF); /* largest positive word */
    run_ms(120);
    send_frame(1, MSG_SAMPLE, dt, 4);
    CHECK(run_until_reply(&r, 100));
    CHECK((int32_t)get_u32(r.f.payload + 20 + 46 + 12) == 0x7FFFFF);
}

int main(void)
{
    test_crc_pec_cobs();
    test_reader_resync();
    test_boot_info_measurement();
    test_pec_error();
    test_outputs_and_balancing();
    test_watchdog();
    test_rejections();
    test_load_cell_stale();
    printf("firmware host tests: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
