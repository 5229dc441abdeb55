/* Test-vector runner: the firmware codec (src/proto.c, compiled for the host) decodes frames
 * given as hex lines on stdin and prints, per line, one JSON object with what it decoded and
 * the errors it counted. tests/test_firmware_codec.py feeds it hil/testvectors/protocol_v1.json
 * and compares with the decoded fields stored there. */
#include <stdio.h>
#include <string.h>
#include "../src/app.h"
#include "../src/proto.h"
#include "hal_host.h"

static const char *result_name[PR_RESULT_COUNT] = {
    "ok", "empty", "cobs", "short", "crc", "length", "version", "unknown_type", "payload",
    "oversize"};

static void hex(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        printf("%02x", p[i]);
}

static float f32(const uint8_t *p)
{
    uint32_t u = get_u32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void fields(const proto_frame_t *f)
{
    const uint8_t *p = f->payload;
    switch (f->type) {
    case MSG_HELLO: printf("\"min_version\":%u,\"max_version\":%u", p[0], p[1]); break;
    case MSG_INFO:
        printf("\"protocol_version\":%u,\"board_kind\":%u,\"fw_major\":%u,\"fw_minor\":%u,"
               "\"fw_patch\":%u,\"n_cells\":%u,\"n_thermistors\":%u,\"n_load_cells\":%u,"
               "\"heartbeat_timeout_ms\":%u,\"capabilities\":%u,\"boot_id\":%u,\"board_id\":\"",
               p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], get_u16(p + 8), get_u16(p + 10),
               get_u16(p + 12));
        for (int i = 14; i < 28 && p[i]; i++)
            printf((p[i] >= 32 && p[i] < 127 && p[i] != '"' && p[i] != '\\') ? "%c" : "?", p[i]);
        printf("\"");
        break;
    case MSG_SAMPLE: printf("\"dt_us\":%u", get_u32(p)); break;
    case MSG_MEASUREMENT: {
        printf("\"timestamp_ms\":%u,\"status\":%u,\"n_cells\":%u,\"n_thermistors\":%u,"
               "\"n_load_cells\":%u,\"current_raw\":%d,\"bus_voltage_raw\":%d,\"cell_raw\":[",
               get_u32(p), get_u16(p + 4), p[6], p[7], p[8], (int32_t)get_u32(p + 10),
               (int32_t)get_u32(p + 14));
        const uint8_t *w = p + 20;
        for (int i = 0; i < p[6]; i++, w += 2)
            printf("%s%u", i ? "," : "", get_u16(w));
        printf("],\"thermistor_raw\":[");
        for (int i = 0; i < p[7]; i++, w += 2)
            printf("%s%u", i ? "," : "", get_u16(w));
        printf("],\"load_cell_raw\":[");
        for (int i = 0; i < p[8]; i++, w += 4)
            printf("%s%d", i ? "," : "", (int32_t)get_u32(w));
        printf("]");
        break;
    }
    case MSG_SET_OUTPUTS:
        printf("\"outputs\":%u,\"balance_mask\":%u,\"charge_limit_ma\":%d,"
               "\"discharge_limit_ma\":%d", p[0], get_u32(p + 2), (int32_t)get_u32(p + 6),
               (int32_t)get_u32(p + 10));
        break;
    case MSG_HEARTBEAT: printf("\"bms_state\":%u,\"host_time_ms\":%u", p[0], get_u32(p + 2)); break;
    case MSG_ACK: printf("\"acked_type\":%u", p[0]); break;
    case MSG_NACK:
        printf("\"rejected_type\":%u,\"error\":%u,\"detail\":%u", p[0], p[1], get_u16(p + 2));
        break;
    case MSG_FAULT_INJECT:
        printf("\"fault\":%u,\"target\":%u,\"flags\":%u,\"value\":%.9g", p[0], p[1], p[2],
               (double)f32(p + 4));
        break;
    default: break;
    }
}

static int unhex(const char *s, uint8_t *out, size_t cap)
{
    size_t n = 0;
    while (s[0] && s[1] && s[0] != '\n') {
        unsigned v;
        if (sscanf(s, "%2x", &v) != 1 || n >= cap)
            return -1;
        out[n++] = (uint8_t)v;
        s += 2;
    }
    return (int)n;
}

/* --board: the bytes go to a freshly booted board (dispatch on the host HAL); print the frames
 * it answers with (after its boot INFO) as hex, with the receive-error counters. */
static app_t app;

static void board_line(const uint8_t *bytes, int n)
{
    host_board_reset();
    for (int i = 0; i < 4; i++)
        hx711_convert(&hb.hx[i], 0);
    app_init(&app, 1);
    app_first_sample(&app);
    hb.tx_len = 0;
    host_rx_push(bytes, (unsigned)n);
    for (int k = 0; k < 200 && hb.rx_tail != hb.rx_head; k++)
        app_poll(&app);
    printf("{\"replies\":[");
    unsigned start = 0;
    int first = 1;
    for (unsigned i = 0; i < hb.tx_len; i++) {
        if (hb.tx[i] != 0)
            continue;
        printf("%s\"", first ? "" : ",");
        hex(hb.tx + start, i + 1 - start);
        printf("\"");
        first = 0;
        start = i + 1;
    }
    printf("],\"errors\":{");
    for (int r = 1; r < PR_RESULT_COUNT; r++)
        printf("%s\"%s\":%u", r > 1 ? "," : "", result_name[r], app.rx.errors[r]);
    printf("},\"frames_ok\":%u}\n", app.frames_ok);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    static char line[65536];
    static uint8_t bytes[32768];
    int board = argc > 1 && strcmp(argv[1], "--board") == 0;
    while (fgets(line, sizeof line, stdin)) {
        int n = unhex(line, bytes, sizeof bytes);
        if (n < 0) {
            printf("{\"error\":\"bad hex\"}\n");
            continue;
        }
        if (board) {
            board_line(bytes, n);
            continue;
        }
        proto_reader_t r;
        proto_reader_init(&r);
        uint8_t dec[PROTO_DECODE_BUF];
        printf("{\"frames\":[");
        int first = 1;
        for (int i = 0; i < n; i++) {
            if (!proto_reader_push(&r, bytes[i]))
                continue;
            proto_frame_t f;
            enum proto_result res = proto_decode(r.buf, r.n, dec, &f);
            r.n = 0;
            printf("%s{\"result\":\"%s\"", first ? "" : ",", result_name[res]);
            first = 0;
            if (res == PR_OK || res == PR_VERSION || res == PR_UNKNOWN_TYPE || res == PR_PAYLOAD) {
                printf(",\"version\":%u,\"type\":%u,\"seq\":%u,\"length\":%u,\"payload\":\"",
                       f.version, f.type, f.seq, f.length);
                hex(f.payload, f.length);
                printf("\"");
            }
            if (res == PR_OK) {
                uint8_t enc[PROTO_MAX_ENCODED];
                size_t m = proto_encode(f.version, f.type, f.seq, f.payload, f.length, enc);
                printf(",\"reencoded\":\"");
                hex(enc, m);
                printf("\",\"fields\":{");
                fields(&f);
                printf("}");
            }
            printf("}");
        }
        printf("],\"oversize\":%u,\"pending\":%u}\n", r.errors[PR_OVERSIZE], r.n);
        fflush(stdout);
    }
    return 0;
}
