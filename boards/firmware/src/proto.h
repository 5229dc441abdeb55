/* Protocol v1 codec (docs/protocol.md): COBS framing, CRC-16/CCITT-FALSE, header, per-type
 * payload lengths, little-endian field helpers. Written from the spec alone, apart from the
 * Python reference codec (hil/protocol.py, hil/cobs.py) but for the test vectors. The host runs
 * this same file too: csrc/ssb_wire.c batches it in the hil._wire module. No heap, fixed sizes,
 * never reads past a buffer. */
#ifndef PROTO_H
#define PROTO_H
#include <stddef.h>
#include <stdint.h>

#define PROTO_VERSION 1u
#define PROTO_HEADER_LEN 6u
#define PROTO_CRC_LEN 2u
#define PROTO_MAX_PAYLOAD 240u
#define PROTO_MAX_DECODED 248u /* header + payload + CRC */
#define PROTO_MAX_ENCODED 250u /* COBS overhead + delimiter included */
/* Decode buffer: a segment of up to 250 bytes decodes to at most 249, so a frame whose length
 * field is consistent but above 240 is still seen whole and counted as a length error. */
#define PROTO_DECODE_BUF 250u

enum proto_type {
    MSG_HELLO = 0x01, MSG_INFO = 0x02, MSG_SAMPLE = 0x10, MSG_MEASUREMENT = 0x11,
    MSG_SET_OUTPUTS = 0x20, MSG_HEARTBEAT = 0x21, MSG_ACK = 0x30, MSG_NACK = 0x31,
    MSG_FAULT_INJECT = 0x40
};

enum proto_nack {
    NACK_BAD_VERSION = 1, NACK_UNKNOWN_TYPE = 2, NACK_BAD_LENGTH = 3, NACK_BAD_VALUE = 4,
    NACK_UNSUPPORTED = 5, NACK_BUSY = 6, NACK_STATE = 7
};

/* Outcome of decoding one delimited frame, in the order of the spec's decoding rules. */
enum proto_result {
    PR_OK = 0, PR_EMPTY, PR_COBS, PR_SHORT, PR_CRC, PR_LENGTH, PR_VERSION, PR_UNKNOWN_TYPE,
    PR_PAYLOAD, PR_OVERSIZE, PR_RESULT_COUNT
};

typedef struct {
    uint8_t version;
    uint8_t type;
    uint16_t seq;
    uint16_t length;
    const uint8_t *payload; /* points into the caller's decode buffer */
} proto_frame_t;

/* Frame reader: accumulates bytes up to a 0x00 delimiter; counts errors per kind. */
typedef struct {
    uint8_t buf[PROTO_MAX_ENCODED];
    uint16_t n;
    uint8_t overflow; /* dropping bytes until the next delimiter */
    uint16_t errors[PR_RESULT_COUNT];
} proto_reader_t;

uint16_t proto_crc16(const uint8_t *data, size_t n);
/* COBS-encode n bytes (n <= 254 * k); returns bytes written (no delimiter). out must hold
 * n + n / 254 + 1 bytes. */
size_t proto_cobs_encode(const uint8_t *in, size_t n, uint8_t *out);
/* COBS-decode; returns the decoded length, or -1 when a code byte points past the end or the
 * output would exceed cap. */
int proto_cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t cap);

/* Expected payload length for a type (measurement: minimum 20), or -1 for an unknown type. */
int proto_payload_len(uint8_t type);
/* Decode one frame (without its delimiter) into f;  * Applies rules 1-7. On PR_VERSION/PR_UNKNOWN_TYPE/PR_PAYLOAD, f is filled (header valid).
 * dec must hold PROTO_DECODE_BUF bytes. */
enum proto_result proto_decode(const uint8_t *enc, size_t n, uint8_t *dec, proto_frame_t *f);
/* Encode header + payload + CRC, COBS, delimiter into out (PROTO_MAX_ENCODED bytes). Returns
 * the total length, or 0 when len exceeds PROTO_MAX_PAYLOAD. */
size_t proto_encode(uint8_t version, uint8_t type, uint16_t seq, const uint8_t *payload,
                    uint16_t len, uint8_t *out);

void proto_reader_init(proto_reader_t *r);
/* Push one byte; returns 1 when buf[0..n) holds a complete non-empty frame (delimiter
 * stripped) which the caller must consume before the next push. */
int proto_reader_push(proto_reader_t *r, uint8_t byte);

static inline uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}
static inline void put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}
#endif
