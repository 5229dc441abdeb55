#include "proto.h"

uint16_t proto_crc16(const uint8_t *data, size_t n)
{
    /* CRC-16/CCITT-FALSE (poly 0x1021, MSB first), a byte per step without a table: the eight
     * bitwise shifts of a byte folded into three shifts of x (the poly's bits 12, 5 and 0), the
     * same result for every input (tests/c/test_wire_asan.c checks every (crc, byte) pair
     * against the bitwise form). No 512-byte table in flash/RAM; on the host, where each side
     * of a tick CRCs a ~100-byte MEASUREMENT, it halves the host's checked unpack (1.8 ->
     * 0.9 us for 23 cells). */
    uint16_t crc = 0xFFFFu;
    for (size_t i = 0; i < n; i++) {
        uint8_t x = (uint8_t)((crc >> 8) ^ data[i]);
        x ^= (uint8_t)(x >> 4);
        crc = (uint16_t)((crc << 8) ^ ((uint16_t)x << 12) ^ ((uint16_t)x << 5) ^ x);
    }
    return crc;
}

size_t proto_cobs_encode(const uint8_t *in, size_t n, uint8_t *out)
{
    size_t code_at = 0, w = 1;
    uint8_t code = 1;
    for (size_t i = 0; i < n; i++) {
        if (in[i] == 0) {
            out[code_at] = code;
            code_at = w++;
            code = 1;
        } else {
            out[w++] = in[i];
            if (++code == 0xFF) {
                out[code_at] = code;
                code_at = w++;
                code = 1;
            }
        }
    }
    out[code_at] = code;
    return w;
}

int proto_cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t cap)
{
    size_t r = 0, w = 0;
    while (r < n) {
        uint8_t code = in[r++];
        if (code == 0 || r + (size_t)(code - 1) > n)
            return -1;
        for (uint8_t k = 1; k < code; k++) {
            if (w >= cap)
                return -1;
            out[w++] = in[r++];
        }
        /* A group shorter than 0xFF implies a zero, except after the final group. */
        if (code != 0xFF && r < n) {
            if (w >= cap)
                return -1;
            out[w++] = 0;
        }
    }
    return (int)w;
}

int proto_payload_len(uint8_t type)
{
    switch (type) {
    case MSG_HELLO: return 2;
    case MSG_INFO: return 28;
    case MSG_SAMPLE: return 4;
    case MSG_MEASUREMENT: return 20;
    case MSG_SET_OUTPUTS: return 14;
    case MSG_HEARTBEAT: return 6;
    case MSG_ACK: return 2;
    case MSG_NACK: return 4;
    case MSG_FAULT_INJECT: return 8;
    default: return -1;
    }
}

static int measurement_len_ok(const uint8_t *p, uint16_t len)
{
    if (len < 20)
        return 0;
    uint16_t want = (uint16_t)(20u + 2u * p[6] + 2u * p[7] + 4u * p[8]);
    return want == len;
}

enum proto_result proto_decode(const uint8_t *enc, size_t n, uint8_t *dec, proto_frame_t *f)
{
    if (n == 0)
        return PR_EMPTY;
    int m = proto_cobs_decode(enc, n, dec, PROTO_DECODE_BUF);
    if (m < 0)
        return PR_COBS;
    if (m < (int)(PROTO_HEADER_LEN + PROTO_CRC_LEN))
        return PR_SHORT;
    uint16_t crc = proto_crc16(dec, (size_t)m - 2);
    if (crc != get_u16(dec + m - 2))
        return PR_CRC;
    f->version = dec[0];
    f->type = dec[1];
    f->seq = get_u16(dec + 2);
    f->length = get_u16(dec + 4);
    f->payload = dec + PROTO_HEADER_LEN;
    if (f->length != (uint16_t)(m - 8) || f->length > PROTO_MAX_PAYLOAD)
        return PR_LENGTH;
    if (f->version != PROTO_VERSION)
        return PR_VERSION;
    int want = proto_payload_len(f->type);
    if (want < 0)
        return PR_UNKNOWN_TYPE;
    if (f->type == MSG_MEASUREMENT ? !measurement_len_ok(f->payload, f->length)
                                   : f->length != (uint16_t)want)
        return PR_PAYLOAD;
    return PR_OK;
}

size_t proto_encode(uint8_t version, uint8_t type, uint16_t seq, const uint8_t *payload,
                    uint16_t len, uint8_t *out)
{
    uint8_t raw[PROTO_MAX_DECODED];
    if (len > PROTO_MAX_PAYLOAD)
        return 0;
    raw[0] = version;
    raw[1] = type;
    put_u16(raw + 2, seq);
    put_u16(raw + 4, len);
    for (uint16_t i = 0; i < len; i++)
        raw[PROTO_HEADER_LEN + i] = payload[i];
    put_u16(raw + PROTO_HEADER_LEN + len, proto_crc16(raw, PROTO_HEADER_LEN + len));
    size_t w = proto_cobs_encode(raw, PROTO_HEADER_LEN + len + PROTO_CRC_LEN, out);
    out[w++] = 0;
    return w;
}

void proto_reader_init(proto_reader_t *r)
{
    r->n = 0;
    r->overflow = 0;
    for (int i = 0; i < PR_RESULT_COUNT; i++)
        r->errors[i] = 0;
}

int proto_reader_push(proto_reader_t *r, uint8_t byte)
{
    if (byte == 0) {
        if (r->overflow) {
            r->overflow = 0;
            r->n = 0;
            return 0;
        }
        if (r->n == 0)
            return 0; /* idle line / back-to-back delimiters: not an error */
        return 1;
    }
    if (r->overflow)
        return 0;
    /* More than 250 bytes without a delimiter: oversize (counted once, up to the next 0x00). */
    if (r->n >= PROTO_MAX_ENCODED) {
        r->overflow = 1;
        r->n = 0;
        r->errors[PR_OVERSIZE]++;
        return 0;
    }
    r->buf[r->n++] = byte;
    return 0;
}
