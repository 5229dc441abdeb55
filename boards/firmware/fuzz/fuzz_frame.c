/* libFuzzer harness: arbitrary bytes into the firmware's frame reader and dispatch (the whole
 * receive path of the board), on the host HAL with emulated parts. Built with
 * -fsanitize=fuzzer,address,undefined. Also checks codec invariants as it goes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../src/app.h"
#include "../src/hal.h"
#include "../src/proto.h"
#include "../test/hal_host.h"

static app_t app;
static int booted;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!booted) {
        host_board_reset();
        app_init(&app, 1);
        app_first_sample(&app);
        booted = 1;
    }
    hb.tx_len = 0;
    /* 1) Everything through the byte reader and the dispatcher. */
    for (size_t i = 0; i < size; i++) {
        if (proto_reader_push(&app.rx, data[i])) {
            app_handle_frame(&app, app.rx.buf, app.rx.n);
            app.rx.n = 0;
        }
        if ((i & 63u) == 0)
            app_watchdog(&app, hal_millis());
        hb.tx_len = 0;
        hb.us += 100;
    }
    /* 2) The input as one frame: a decoded OK frame re-encodes to a frame that decodes to the
     * same header and payload (COBS accepts a non-canonical final 0xFF group, so the bytes
     * themselves may differ). */
    if (size <= PROTO_MAX_ENCODED) {
        uint8_t dec[PROTO_DECODE_BUF];
        proto_frame_t f;
        if (proto_decode(data, size, dec, &f) == PR_OK) {
            uint8_t dec2[PROTO_DECODE_BUF], enc[PROTO_MAX_ENCODED];
            proto_frame_t g;
            size_t n = proto_encode(f.version, f.type, f.seq, f.payload, f.length, enc);
            if (n == 0 || n > PROTO_MAX_ENCODED || enc[n - 1] != 0 ||
                proto_decode(enc, n - 1, dec2, &g) != PR_OK || g.type != f.type ||
                g.seq != f.seq || g.length != f.length ||
                memcmp(g.payload, f.payload, f.length) != 0)
                abort();
        }
    }
    return 0;
}
