/*
 * ssb_wire.h - host-side batch layer over the reference firmware's protocol codec
 * (boards/firmware/src/proto.c, compiled into the same cffi module): one call splits a byte
 * buffer at its 0x00 delimiters and decodes every segment with proto_decode (COBS, CRC-16,
 * header rules 1..7 of docs/protocol.md), so the host and the firmware share one C codec.
 * hil/protocol.py's FrameDecoder and encode_frame use it; their Python paths stay the reference
 * (tests/test_wire_c.py checks both give identical frames and counters).
 *
 * C11. No global state, no allocation: the caller owns every buffer. Never reads or writes
 * outside [buf, buf + n) and [out, out + out_cap).
 *
 * Record layout written by ssb_wire_scan for each frame returned to the caller (result OK,
 * VERSION, UNKNOWN_TYPE or PAYLOAD: the header passed CRC and length checks), back to back:
 *   u8 result | u8 version | u8 type | u16 seq (LE) | u16 length (LE) | payload[length]
 * i.e. the result code followed by the decoded frame without its CRC. Frames failing rules 1..4
 * and oversize runs are only counted.
 */
#ifndef SSB_WIRE_H
#define SSB_WIRE_H

#include <stddef.h>
#include <stdint.h>

/* Result codes: the same values as the firmware's enum proto_result (checked at compile time in
 * ssb_wire.c); index into ssb_wire_scan_t.counts. */
#define SSB_WIRE_RES_OK 0
#define SSB_WIRE_RES_BAD_COBS 2
#define SSB_WIRE_RES_TOO_SHORT 3
#define SSB_WIRE_RES_BAD_CRC 4
#define SSB_WIRE_RES_BAD_LENGTH 5
#define SSB_WIRE_RES_BAD_VERSION 6
#define SSB_WIRE_RES_UNKNOWN_TYPE 7
#define SSB_WIRE_RES_BAD_PAYLOAD 8
#define SSB_WIRE_RES_OVERSIZE 9
#define SSB_WIRE_RES_COUNT 10

#define SSB_WIRE_MAX_SEGMENT 250 /* longest segment between delimiters that can be a frame */
#define SSB_WIRE_REC_HEAD 7      /* result byte + 6-byte header */
/* Free space ssb_wire_scan needs in out before it decodes a segment: the result byte plus
 * proto_decode's 250-byte decode buffer (the record itself is at most 7 + 240 bytes). */
#define SSB_WIRE_REC_ROOM 251
/* Encoded frame size = payload length + this, for any payload of at most 240 bytes: header 6 +
 * CRC 2 + one COBS code byte (a block under 254 bytes never needs a second) + delimiter 1. */
#define SSB_WIRE_FRAME_OVERHEAD 10
#define SSB_WIRE_MEAS_MAX_VALUES 769 /* 4 fixed fields + 255 cells + 255 therm. + 255 load */

/* Return codes (negative) */
#define SSB_WIRE_ERR_NULL (-1)  /* a required pointer is NULL */
#define SSB_WIRE_ERR_SIZE (-2)  /* a buffer too small, or a length out of range */

typedef struct {
    uint32_t pos;      /* out: first byte of buf not consumed */
    uint32_t used;     /* out: bytes of records written to out */
    uint32_t n_errors; /* out: segments with a result other than OK (returned or not) */
    uint8_t dropping;  /* in/out, kept across calls: discarding an oversize run up to the next
                          delimiter */
    uint8_t more;      /* out: stopped early because out was full; call again from pos */
    uint32_t counts[SSB_WIRE_RES_COUNT]; /* out: segments per result code in this call */
} ssb_wire_scan_t;

/* Scan buf[start .. n): for each 0x00 delimiter, the segment before it is dropped silently
 * when st->dropping (which then clears), counted OVERSIZE when longer than 250 bytes, ignored
 * when empty, else decoded and counted by its result; OK/VERSION/UNKNOWN_TYPE/PAYLOAD frames are
 * appended to out as records. At the end, st->pos is the start of the unfinished tail (n when
 * the tail is being dropped, or when it is longer than 250 bytes: then OVERSIZE is counted once
 * and st->dropping set). When out has less than SSB_WIRE_REC_ROOM bytes free before a segment,
 * stops there with st->more = 1 and st->pos at that segment (pass it as the next start).
 * counts, used and n_errors are per call. Returns the number of records, or a negative
 * SSB_WIRE_ERR_* (start > n, out_cap < SSB_WIRE_REC_ROOM, n > UINT32_MAX). */
int ssb_wire_scan(const char *buf, size_t n, size_t start, ssb_wire_scan_t *st, char *out,
                  size_t out_cap);

/* Frame one message: header (version, type, seq, len) | payload | CRC, COBS, delimiter into
 * out. Returns the frame length (len + SSB_WIRE_FRAME_OVERHEAD), or SSB_WIRE_ERR_SIZE when len
 * > 240 or out_cap is smaller than the frame, SSB_WIRE_ERR_NULL for a NULL pointer. */
int ssb_wire_encode(uint8_t version, uint8_t type, uint16_t seq, const char *payload,
                    size_t len, char *out, size_t out_cap);

/* The host's usual request of a tick in one call: when with_hb, a HEARTBEAT (seq hb_seq,
 * bms_state hb_state, host_time_ms hb_ms) first, then a SAMPLE (seq, dt_us), framed back to back
 * into out exactly as two ssb_wire_encode calls with their payloads (HEARTBEAT: u8 state, pad,
 * u32 time; SAMPLE: u32 dt_us) would. Returns the bytes written (10 + 4, plus 10 + 6 with the
 * HEARTBEAT), SSB_WIRE_ERR_SIZE when out_cap is smaller, SSB_WIRE_ERR_NULL for a NULL out. */
int ssb_wire_encode_sample(uint16_t seq, uint32_t dt_us, int with_hb, uint16_t hb_seq,
                           uint8_t hb_state, uint32_t hb_ms, char *out, size_t out_cap);

/* Unpack a MEASUREMENT payload into vals: timestamp_ms, status, current_raw, bus_voltage_raw,
 * then cell_raw[n_cells], thermistor_raw[n_thermistors], load_cell_raw[n_load_cells] (u16
 * channels zero-extended, i32 sign-extended). Writes the three counts to counts[0..3). Returns
 * the number of values, SSB_WIRE_ERR_SIZE when len does not match the counts in the payload
 * (rule 7) or cap is too small, SSB_WIRE_ERR_NULL for a NULL pointer. */
int ssb_wire_unpack_measurement(const char *payload, size_t len, int64_t *vals, size_t cap,
                                uint8_t *counts);

/* The controller's fast lane for the reply it waits for: when buf[0 .. n) is exactly one frame
 * (one non-empty segment and its 0x00 delimiter, nothing else) that decodes OK (rules 1..7) as
 * a MEASUREMENT with sequence number seq and 4 + cells + thermistors + load cells == n_vals,
 * unpacks it into vals as ssb_wire_unpack_measurement does and returns n_vals. Anything else
 * returns 0 with vals untouched: the caller then feeds the same bytes to the general decoder.
 * SSB_WIRE_ERR_NULL for a NULL pointer. */
int ssb_wire_take_measurement(const char *buf, size_t n, uint16_t seq, int64_t *vals,
                              size_t n_vals);

#endif
