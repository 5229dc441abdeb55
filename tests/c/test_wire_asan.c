/* ssb_wire (csrc/ssb_wire.c over boards/firmware/src/proto.c) under AddressSanitizer + UBSan:
 * every buffer exactly sized on the heap (an access one past the end aborts); random byte
 * buffers (zeros, valid frames, damaged frames, long runs) scanned whole and from random start
 * points with record buffers from the minimum size up; results checked against the firmware's
 * byte-at-a-time reader (proto_reader_push + proto_decode) for the same stream; encode of every
 * payload length into exact-size buffers; MEASUREMENT unpacking with exact-size outputs; the
 * tick's HEARTBEAT + SAMPLE in one call (ssb_wire_encode_sample) against two single encodes;
 * the firmware's CRC against the bitwise form for every (state, byte) pair. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "ssb_wire.h"

#include "check.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}
static uint32_t below(uint32_t n) { return n ? rnd() % n : 0; }

/* Append a frame (valid or damaged) or noise to buf; returns the new length. */
static size_t add_piece(uint8_t *buf, size_t n, size_t cap)
{
    uint8_t payload[PROTO_MAX_PAYLOAD + 8], frame[PROTO_MAX_ENCODED + 8];
    static const uint8_t types[] = {MSG_HELLO, MSG_INFO, MSG_SAMPLE, MSG_MEASUREMENT,
                                    MSG_SET_OUTPUTS, MSG_HEARTBEAT, MSG_ACK, MSG_NACK,
                                    MSG_FAULT_INJECT, 0x55};
    uint8_t type = types[below(sizeof types)];
    int want = proto_payload_len(type);
    size_t len = want < 0 ? below(30) : (size_t)want;
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (uint8_t)(below(4) ? rnd() : 0);
    if (type == MSG_MEASUREMENT) {
        payload[6] = (uint8_t)below(33);
        payload[7] = (uint8_t)below(17);
        payload[8] = (uint8_t)below(17);
        len = 20u + 2u * payload[6] + 2u * payload[7] + 4u * payload[8];
    }
    if (below(6) == 0) /* wrong payload length */
        len = below(2) ? len + 1 : (len ? len - 1 : 0);
    if (len > PROTO_MAX_PAYLOAD)
        len = PROTO_MAX_PAYLOAD;
    uint8_t version = below(8) == 0 ? (uint8_t)rnd() : 1;
    size_t k = proto_encode(version, type, (uint16_t)rnd(), payload, (uint16_t)len, frame);
    uint32_t mode = below(10);
    if (mode == 0) { /* noise, zeros included */
        k = below(80);
        for (size_t i = 0; i < k; i++)
            frame[i] = (uint8_t)(below(3) ? rnd() : 0);
    } else if (mode == 1 && k > 2) { /* truncated */
        k = 1 + below((uint32_t)k - 1);
    } else if (mode == 2) { /* one byte flipped (not into a delimiter) */
        size_t at = below((uint32_t)k - 1);
        uint8_t x = (uint8_t)(frame[at] ^ (1u << below(8)));
        frame[at] = x ? x : 1;
    }
    if (mode == 3) { /* a long run without a delimiter */
        size_t run = 200 + below(600);
        for (size_t i = 0; i < run && n < cap; i++)
            buf[n++] = (uint8_t)(1 + below(255));
        return n;
    }
    for (size_t i = 0; i < k && n < cap; i++)
        buf[n++] = frame[i];
    return n;
}

typedef struct {
    uint32_t counts[SSB_WIRE_RES_COUNT];
    uint32_t n_rec;
    uint8_t rec_code[8192];
    uint16_t rec_seq[8192];
} tally_t;

/* Walk the records of one scan call; checks their layout against used. */
static void walk(const uint8_t *out, const ssb_wire_scan_t *st, int n_rec, size_t out_cap,
                 tally_t *t)
{
    size_t off = 0;
    CHECK(st->used <= out_cap);
    for (int i = 0; i < n_rec; i++) {
        CHECK(off + SSB_WIRE_REC_HEAD <= st->used);
        uint8_t code = out[off];
        CHECK(code == SSB_WIRE_RES_OK || code == SSB_WIRE_RES_BAD_VERSION ||
              code == SSB_WIRE_RES_UNKNOWN_TYPE || code == SSB_WIRE_RES_BAD_PAYLOAD);
        uint16_t len = get_u16(out + off + 5);
        CHECK(len <= PROTO_MAX_PAYLOAD);
        if (t->n_rec < 8192) {
            t->rec_code[t->n_rec] = code;
            t->rec_seq[t->n_rec] = get_u16(out + off + 3);
        }
        t->n_rec++;
        off += SSB_WIRE_REC_HEAD + len;
    }
    CHECK(off == st->used);
    uint32_t errors = 0, returned = 0;
    for (int c = 0; c < SSB_WIRE_RES_COUNT; c++) {
        t->counts[c] += st->counts[c];
        if (c != SSB_WIRE_RES_OK)
            errors += st->counts[c];
        if (c == SSB_WIRE_RES_OK || c == SSB_WIRE_RES_BAD_VERSION || c == SSB_WIRE_RES_UNKNOWN_TYPE ||
            c == SSB_WIRE_RES_BAD_PAYLOAD)
            returned += st->counts[c];
    }
    CHECK(st->counts[1] == 0); /* PR_EMPTY: empty segments are not counted */
    CHECK(errors == st->n_errors);
    CHECK(returned == (uint32_t)n_rec);
}

/* The firmware's own byte-at-a-time reader over the same stream. */
static void reference(const uint8_t *buf, size_t n, tally_t *t)
{
    proto_reader_t r;
    uint8_t dec[PROTO_DECODE_BUF];
    proto_reader_init(&r);
    for (size_t i = 0; i < n; i++) {
        if (!proto_reader_push(&r, buf[i]))
            continue;
        proto_frame_t f;
        enum proto_result res = proto_decode(r.buf, r.n, dec, &f);
        r.n = 0;
        t->counts[res]++;
        if (res == PR_OK || res == PR_VERSION || res == PR_UNKNOWN_TYPE || res == PR_PAYLOAD) {
            if (t->n_rec < 8192) {
                t->rec_code[t->n_rec] = (uint8_t)res;
                t->rec_seq[t->n_rec] = f.seq;
            }
            t->n_rec++;
        }
    }
    t->counts[PR_OVERSIZE] += r.errors[PR_OVERSIZE];
}

static void scan_stream(const uint8_t *buf, size_t n, size_t out_cap, tally_t *t)
{
    uint8_t *out = malloc(out_cap);
    ssb_wire_scan_t st;
    memset(&st, 0, sizeof st);
    size_t pos = 0;
    for (;;) {
        int k = ssb_wire_scan((const char *)buf, n, pos, &st, (char *)out, out_cap);
        CHECK(k >= 0);
        walk(out, &st, k, out_cap, t);
        CHECK(st.pos <= n);
        if (!st.more)
            break;
        CHECK(st.pos >= pos); /* progress: at least one record per call */
        CHECK(k > 0);
        pos = st.pos;
    }
    free(out);
}

static void test_streams(void)
{
    for (int iter = 0; iter < 3000; iter++) {
        size_t cap = 1 + below(6000);
        uint8_t *tmp = malloc(cap);
        size_t n = 0;
        while (n < cap && below(40))
            n = add_piece(tmp, n, cap);
        /* the stream ends with a delimiter, so both readers have seen every segment; the
         * exact-size copy makes ASan catch a read one past the end */
        uint8_t *buf = malloc(n + 1);
        memcpy(buf, tmp, n);
        buf[n] = 0;
        free(tmp);
        size_t out_cap = SSB_WIRE_REC_ROOM + (below(2) ? below(300) : below(20000));
        tally_t a, b;
        memset(&a, 0, sizeof a);
        memset(&b, 0, sizeof b);
        scan_stream(buf, n + 1, out_cap, &a);
        reference(buf, n + 1, &b);
        CHECK(memcmp(a.counts, b.counts, sizeof a.counts) == 0);
        CHECK(a.n_rec == b.n_rec);
        size_t m = a.n_rec < 8192 ? a.n_rec : 8192;
        CHECK(memcmp(a.rec_code, b.rec_code, m) == 0);
        CHECK(memcmp(a.rec_seq, b.rec_seq, m * sizeof a.rec_seq[0]) == 0);
        /* and from every kind of start point, without a trailing delimiter */
        ssb_wire_scan_t st;
        memset(&st, 0, sizeof st);
        uint8_t *out = malloc(SSB_WIRE_REC_ROOM);
        size_t start = below((uint32_t)n + 1);
        int k = ssb_wire_scan((const char *)buf, n, start, &st, (char *)out, SSB_WIRE_REC_ROOM);
        CHECK(k >= 0 && k <= 1 && st.pos >= start && st.pos <= n);
        free(out);
        free(buf);
    }
}

static void test_errors(void)
{
    ssb_wire_scan_t st;
    memset(&st, 0, sizeof st);
    char out[SSB_WIRE_REC_ROOM];
    CHECK(ssb_wire_scan(NULL, 1, 0, &st, out, sizeof out) == SSB_WIRE_ERR_NULL);
    CHECK(ssb_wire_scan("", 0, 0, NULL, out, sizeof out) == SSB_WIRE_ERR_NULL);
    CHECK(ssb_wire_scan("", 0, 0, &st, NULL, sizeof out) == SSB_WIRE_ERR_NULL);
    CHECK(ssb_wire_scan("", 0, 0, &st, out, sizeof out - 1) == SSB_WIRE_ERR_SIZE);
    CHECK(ssb_wire_scan("", 0, 1, &st, out, sizeof out) == SSB_WIRE_ERR_SIZE);
    CHECK(ssb_wire_scan(NULL, 0, 0, &st, out, sizeof out) == 0 && st.pos == 0);
    CHECK(ssb_wire_encode(1, 1, 1, NULL, 1, out, sizeof out) == SSB_WIRE_ERR_NULL);
    CHECK(ssb_wire_encode(1, 1, 1, "", 0, NULL, 10) == SSB_WIRE_ERR_NULL);
    CHECK(ssb_wire_encode(1, 1, 1, NULL, 0, out, 10) == 10);
    int64_t v[4];
    uint8_t c[3];
    CHECK(ssb_wire_unpack_measurement(NULL, 20, v, 4, c) == SSB_WIRE_ERR_NULL);
    CHECK(ssb_wire_unpack_measurement(out, 19, v, 4, c) == SSB_WIRE_ERR_SIZE);
}

static void test_encode_and_unpack(void)
{
    for (int iter = 0; iter < 4000; iter++) {
        size_t len = below(PROTO_MAX_PAYLOAD + 1);
        uint8_t *payload = malloc(len ? len : 1);
        for (size_t i = 0; i < len; i++)
            payload[i] = (uint8_t)(below(3) ? rnd() : 0);
        size_t cap = len + SSB_WIRE_FRAME_OVERHEAD;
        char *frame = malloc(cap);
        uint16_t seq = (uint16_t)rnd();
        int k = ssb_wire_encode(1, 0x55, seq, (const char *)payload, len, frame, cap);
        CHECK(k == (int)cap);
        CHECK(frame[k - 1] == 0 && memchr(frame, 0, (size_t)k - 1) == NULL);
        char *out = malloc(SSB_WIRE_REC_ROOM);
        ssb_wire_scan_t st;
        memset(&st, 0, sizeof st);
        CHECK(ssb_wire_scan(frame, (size_t)k, 0, &st, out, SSB_WIRE_REC_ROOM) == 1);
        CHECK(out[0] == SSB_WIRE_RES_UNKNOWN_TYPE && get_u16((const uint8_t *)out + 3) == seq);
        CHECK(memcmp(out + SSB_WIRE_REC_HEAD, payload, len) == 0);
        free(out);
        free(frame);

        /* the same bytes as a MEASUREMENT payload, with consistent counts half of the time */
        if (len >= 20 && below(2)) {
            payload[6] = (uint8_t)below(33);
            payload[7] = (uint8_t)below(17);
            payload[8] = (uint8_t)below(17);
            size_t want = 20u + 2u * payload[6] + 2u * payload[7] + 4u * payload[8];
            if (want <= len)
                len = want;
        }
        size_t nv = len >= 20 ? 4u + payload[6] + payload[7] + payload[8] : 4u;
        int64_t *vals = malloc(nv * sizeof *vals);
        uint8_t counts[3];
        int r = ssb_wire_unpack_measurement((const char *)payload, len, vals, nv, counts);
        if (len >= 20 && len == 20u + 2u * payload[6] + 2u * payload[7] + 4u * payload[8]) {
            CHECK(r == (int)nv);
            CHECK(vals[0] == (int64_t)get_u32(payload) && vals[1] == get_u16(payload + 4));
            CHECK(vals[2] == (int64_t)(int32_t)get_u32(payload + 10));
            CHECK(ssb_wire_unpack_measurement((const char *)payload, len, vals, nv - 1,
                                              counts) == SSB_WIRE_ERR_SIZE);
            /* the fast lane on the framed MEASUREMENT: exact-size frame and value buffers */
            size_t fcap = len + SSB_WIRE_FRAME_OVERHEAD;
            char *mf = malloc(fcap);
            CHECK(ssb_wire_encode(1, 0x11, seq, (const char *)payload, len, mf, fcap) ==
                  (int)fcap);
            int64_t *taken = malloc(nv * sizeof *taken);
            CHECK(ssb_wire_take_measurement(mf, fcap, seq, taken, nv) == (int)nv);
            CHECK(memcmp(taken, vals, nv * sizeof *taken) == 0);
            for (size_t i = 0; i < nv; i++)
                taken[i] = -7;
            CHECK(ssb_wire_take_measurement(mf, fcap, (uint16_t)(seq + 1), taken, nv) == 0);
            CHECK(ssb_wire_take_measurement(mf, fcap - 1, seq, taken, nv) == 0); /* no 0x00 */
            if (nv > 4)
                CHECK(ssb_wire_take_measurement(mf, fcap, seq, taken, nv - 1) == 0);
            mf[below((uint32_t)fcap - 1)] ^= (char)(1 + below(255)); /* a damaged byte */
            int damaged = ssb_wire_take_measurement(mf, fcap, seq, taken, nv);
            CHECK(damaged == 0 || damaged == (int)nv); /* a CRC collision may still pass */
            if (damaged == 0)
                for (size_t i = 0; i < nv; i++)
                    CHECK(taken[i] == -7);
            CHECK(ssb_wire_take_measurement(NULL, fcap, seq, taken, nv) == SSB_WIRE_ERR_NULL);
            CHECK(ssb_wire_take_measurement(mf, fcap, seq, NULL, nv) == SSB_WIRE_ERR_NULL);
            free(taken);
            free(mf);
        } else {
            CHECK(r == SSB_WIRE_ERR_SIZE);
        }
        free(vals);
        free(payload);
    }
}

/* proto_crc16 (a byte per step) against the bitwise CRC-16/CCITT-FALSE, over every (state,
 * byte) pair: the states after two bytes from 0xFFFF are all 65536 (the step is a bijection of
 * the state for a fixed byte), so every two-byte prefix and third byte covers the whole table. */
static uint16_t crc_bitwise_step(uint16_t crc, uint8_t byte)
{
    crc ^= (uint16_t)((uint16_t)byte << 8);
    for (int b = 0; b < 8; b++)
        crc = (crc & 0x8000u) ? (uint16_t)((crc << 1) ^ 0x1021u) : (uint16_t)(crc << 1);
    return crc;
}

static void test_crc(void)
{
    CHECK(proto_crc16((const uint8_t *)"123456789", 9) == 0x29B1); /* the catalogue's check */
    CHECK(proto_crc16(NULL, 0) == 0xFFFF);
    static uint8_t seen[65536 / 8];
    uint8_t buf[3];
    for (uint32_t pre = 0; pre < 65536; pre++) {
        buf[0] = (uint8_t)pre;
        buf[1] = (uint8_t)(pre >> 8);
        const uint16_t state = crc_bitwise_step(crc_bitwise_step(0xFFFF, buf[0]), buf[1]);
        CHECK(proto_crc16(buf, 2) == state);
        seen[state >> 3] |= (uint8_t)(1u << (state & 7));
        for (uint32_t b = 0; b < 256; b++) {
            buf[2] = (uint8_t)b;
            CHECK(proto_crc16(buf, 3) == crc_bitwise_step(state, (uint8_t)b));
        }
    }
    for (size_t i = 0; i < sizeof seen; i++)
        CHECK(seen[i] == 0xFF); /* every state was reached */
}

/* ssb_wire_encode_sample: the same bytes as a HEARTBEAT and a SAMPLE encoded one by one, into
 * exact-size buffers; one byte less is refused and writes nothing. */
static void test_encode_sample(void)
{
    CHECK(ssb_wire_encode_sample(1, 1, 0, 0, 0, 0, NULL, 64) == SSB_WIRE_ERR_NULL);
    for (int iter = 0; iter < 20000; iter++) {
        const int with_hb = (int)below(2);
        const uint16_t seq = (uint16_t)rnd(), hb_seq = (uint16_t)rnd();
        const uint8_t state = (uint8_t)rnd();
        const uint32_t dt = below(4) ? rnd() : (uint32_t)below(2) * 0xFFFFFFFFu;
        const uint32_t ms = below(4) ? rnd() : 0u;
        uint8_t p[6] = {state, 0, 0, 0, 0, 0};
        put_u32(p + 2, ms);
        char want[64];
        size_t w = 0;
        if (with_hb)
            w = (size_t)ssb_wire_encode(1, 0x21, hb_seq, (const char *)p, 6, want, sizeof want);
        put_u32(p, dt);
        w += (size_t)ssb_wire_encode(1, 0x10, seq, (const char *)p, 4, want + w, sizeof want - w);
        CHECK(w == (with_hb ? 30u : 14u));
        char *out = malloc(w);
        CHECK(ssb_wire_encode_sample(seq, dt, with_hb, hb_seq, state, ms, out, w) == (int)w);
        CHECK(memcmp(out, want, w) == 0);
        memset(out, 0x5A, w);
        CHECK(ssb_wire_encode_sample(seq, dt, with_hb, hb_seq, state, ms, out, w - 1) ==
              SSB_WIRE_ERR_SIZE);
        for (size_t i = 0; i < w; i++)
            CHECK(out[i] == 0x5A);
        free(out);
    }
}

int main(void)
{
    test_crc();
    test_encode_sample();
    test_errors();
    test_encode_and_unpack();
    test_streams();
    printf("ok\n");
    return 0;
}
