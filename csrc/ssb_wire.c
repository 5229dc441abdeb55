/* ssb_wire.c - see ssb_wire.h. The protocol rules live in boards/firmware/src/proto.c; this file
 * only walks buffers and lays out results for the Python side. */
#include "ssb_wire.h"

#include <string.h>

#include "proto.h"

/* The record's result byte and the counts index are the firmware's result codes. */
_Static_assert(SSB_WIRE_RES_OK == PR_OK && SSB_WIRE_RES_BAD_COBS == PR_COBS && SSB_WIRE_RES_TOO_SHORT == PR_SHORT &&
                   SSB_WIRE_RES_BAD_CRC == PR_CRC && SSB_WIRE_RES_BAD_LENGTH == PR_LENGTH &&
                   SSB_WIRE_RES_BAD_VERSION == PR_VERSION && SSB_WIRE_RES_UNKNOWN_TYPE == PR_UNKNOWN_TYPE &&
                   SSB_WIRE_RES_BAD_PAYLOAD == PR_PAYLOAD && SSB_WIRE_RES_OVERSIZE == PR_OVERSIZE &&
                   SSB_WIRE_RES_COUNT == PR_RESULT_COUNT,
               "ssb_wire result codes must equal enum proto_result");
_Static_assert(SSB_WIRE_MAX_SEGMENT == PROTO_MAX_ENCODED, "segment limit is the spec's 250 B");
_Static_assert(SSB_WIRE_REC_ROOM == 1 + PROTO_DECODE_BUF, "room = result byte + decode buffer");
_Static_assert(SSB_WIRE_REC_HEAD == 1 + PROTO_HEADER_LEN, "record head = result + header");
_Static_assert(SSB_WIRE_FRAME_OVERHEAD == PROTO_HEADER_LEN + PROTO_CRC_LEN + 2,
               "header + CRC + one COBS code + delimiter");

int ssb_wire_scan(const char *buf, size_t n, size_t start, ssb_wire_scan_t *st, char *out,
                  size_t out_cap)
{
    if (st == NULL || out == NULL || (buf == NULL && n > 0))
        return SSB_WIRE_ERR_NULL;
    memset(st->counts, 0, sizeof st->counts);
    st->used = 0;
    st->n_errors = 0;
    st->more = 0;
    /* out_cap >= one record's room guarantees progress; pos is a u32 */
    if (out_cap < SSB_WIRE_REC_ROOM || n > UINT32_MAX || start > n)
        return SSB_WIRE_ERR_SIZE;
    const uint8_t *in = (const uint8_t *)buf;
    uint8_t *o = (uint8_t *)out;
    size_t used = 0;
    uint32_t n_errors = 0;
    int n_rec = 0;
    while (start < n) {
        const uint8_t *z = memchr(in + start, 0, n - start);
        if (z == NULL)
            break;
        size_t end = (size_t)(z - in), len = end - start;
        if (st->dropping) {
            st->dropping = 0; /* the overlong run ends here; it is already counted */
        } else if (len > SSB_WIRE_MAX_SEGMENT) {
            st->counts[SSB_WIRE_RES_OVERSIZE]++;
            n_errors++;
        } else if (len > 0) {
            if (out_cap - used < SSB_WIRE_REC_ROOM) {
                st->more = 1;
                break;
            }
            proto_frame_t f;
            /* Decode straight into the record: header and payload land after the result byte;
             * the CRC bytes behind them are overwritten by the next record. */
            enum proto_result r = proto_decode(in + start, len, o + used + 1, &f);
            st->counts[r]++;
            if (r != PR_OK)
                n_errors++;
            if (r == PR_OK || r == PR_VERSION || r == PR_UNKNOWN_TYPE || r == PR_PAYLOAD) {
                o[used] = (uint8_t)r;
                used += SSB_WIRE_REC_HEAD + (size_t)f.length;
                n_rec++;
            }
        }
        start = end + 1;
    }
    if (!st->more) {
        if (st->dropping) {
            start = n;
        } else if (n - start > SSB_WIRE_MAX_SEGMENT) {
            st->counts[SSB_WIRE_RES_OVERSIZE]++; /* counted once, dropped up to the next delimiter */
            n_errors++;
            st->dropping = 1;
            start = n;
        }
    }
    st->pos = (uint32_t)start;
    st->used = (uint32_t)used;
    st->n_errors = n_errors;
    return n_rec;
}

int ssb_wire_encode(uint8_t version, uint8_t type, uint16_t seq, const char *payload,
                    size_t len, char *out, size_t out_cap)
{
    if (out == NULL || (payload == NULL && len > 0))
        return SSB_WIRE_ERR_NULL;
    if (len > PROTO_MAX_PAYLOAD || out_cap < len + SSB_WIRE_FRAME_OVERHEAD)
        return SSB_WIRE_ERR_SIZE;
    static const uint8_t none[1] = {0};
    const uint8_t *p = payload != NULL ? (const uint8_t *)payload : none;
    size_t w;
    if (out_cap >= PROTO_MAX_ENCODED) {
        w = proto_encode(version, type, seq, p, (uint16_t)len, (uint8_t *)out);
    } else { /* proto_encode's contract is a full-size buffer */
        uint8_t tmp[PROTO_MAX_ENCODED];
        w = proto_encode(version, type, seq, p, (uint16_t)len, tmp);
        if (w <= out_cap)
            memcpy(out, tmp, w);
    }
    if (w != len + SSB_WIRE_FRAME_OVERHEAD)
        return SSB_WIRE_ERR_SIZE; /* cannot happen for len <= 240 (one COBS block) */
    return (int)w;
}

int ssb_wire_encode_sample(uint16_t seq, uint32_t dt_us, int with_hb, uint16_t hb_seq,
                           uint8_t hb_state, uint32_t hb_ms, char *out, size_t out_cap)
{
    if (out == NULL)
        return SSB_WIRE_ERR_NULL;
    const size_t hb_len = with_hb ? 6u + SSB_WIRE_FRAME_OVERHEAD : 0u;
    if (out_cap < hb_len + 4u + SSB_WIRE_FRAME_OVERHEAD)
        return SSB_WIRE_ERR_SIZE;
    /* proto_encode wants a full-size buffer: encode into one, copy the exact frames out */
    uint8_t tmp[PROTO_MAX_ENCODED];
    uint8_t payload[6];
    size_t w = 0;
    if (with_hb) {
        payload[0] = hb_state;
        payload[1] = 0;
        put_u32(payload + 2, hb_ms);
        if (proto_encode(PROTO_VERSION, MSG_HEARTBEAT, hb_seq, payload, 6, tmp) != hb_len)
            return SSB_WIRE_ERR_SIZE; /* cannot happen: one COBS block */
        memcpy(out, tmp, hb_len);
        w = hb_len;
    }
    put_u32(payload, dt_us);
    if (proto_encode(PROTO_VERSION, MSG_SAMPLE, seq, payload, 4, tmp) != 4u + SSB_WIRE_FRAME_OVERHEAD)
        return SSB_WIRE_ERR_SIZE;
    memcpy(out + w, tmp, 4u + SSB_WIRE_FRAME_OVERHEAD);
    return (int)(w + 4u + SSB_WIRE_FRAME_OVERHEAD);
}

static int64_t s32(uint32_t u)
{
    /* two's complement without an implementation-defined conversion */
    return (u & 0x80000000u) ? (int64_t)u - 4294967296LL : (int64_t)u;
}

int ssb_wire_unpack_measurement(const char *payload, size_t len, int64_t *vals, size_t cap,
                                uint8_t *counts)
{
    if (payload == NULL || vals == NULL || counts == NULL)
        return SSB_WIRE_ERR_NULL;
    const uint8_t *p = (const uint8_t *)payload;
    if (len < 20)
        return SSB_WIRE_ERR_SIZE;
    size_t nc = p[6], nt = p[7], nl = p[8];
    if (len != 20 + 2 * nc + 2 * nt + 4 * nl || cap < 4 + nc + nt + nl)
        return SSB_WIRE_ERR_SIZE;
    counts[0] = p[6];
    counts[1] = p[7];
    counts[2] = p[8];
    vals[0] = (int64_t)get_u32(p);
    vals[1] = (int64_t)get_u16(p + 4);
    vals[2] = s32(get_u32(p + 10));
    vals[3] = s32(get_u32(p + 14));
    size_t k = 4;
    const uint8_t *q = p + 20;
    for (size_t i = 0; i < nc + nt; i++, q += 2)
        vals[k++] = (int64_t)get_u16(q);
    for (size_t i = 0; i < nl; i++, q += 4)
        vals[k++] = s32(get_u32(q));
    return (int)k;
}

int ssb_wire_take_measurement(const char *buf, size_t n, uint16_t seq, int64_t *vals,
                              size_t n_vals)
{
    if (buf == NULL || vals == NULL)
        return SSB_WIRE_ERR_NULL;
    /* exactly one non-empty segment, then its delimiter */
    if (n < 2 || n - 1 > SSB_WIRE_MAX_SEGMENT || buf[n - 1] != 0 || memchr(buf, 0, n - 1))
        return 0;
    uint8_t dec[PROTO_DECODE_BUF];
    proto_frame_t f;
    if (proto_decode((const uint8_t *)buf, n - 1, dec, &f) != PR_OK ||
        f.type != MSG_MEASUREMENT || f.seq != seq || f.length < 9)
        return 0;
    /* channel counts other than the caller's layout: the general path reports them */
    if (4u + (size_t)f.payload[6] + f.payload[7] + f.payload[8] != n_vals)
        return 0;
    uint8_t counts[3];
    const int k = ssb_wire_unpack_measurement((const char *)f.payload, f.length, vals, n_vals,
                                              counts);
    return k > 0 ? k : 0;
}
