/* Board logic: command dispatch, sampling scheduler, outputs, heartbeat watchdog. Pure logic on
 * top of hal.h: runs unchanged on the ATmega2560 and in the host unit tests and fuzzer. */
#ifndef APP_H
#define APP_H
#include <stdint.h>
#include "board_cfg.h"
#include "proto.h"

#define ST_CONTACTOR_POS 0x0001u
#define ST_CONTACTOR_NEG 0x0002u
#define ST_PRECHARGE 0x0004u
#define ST_WATCHDOG_TRIPPED 0x0008u
#define ST_JUST_BOOTED 0x0010u
#define ST_BALANCING 0x0020u
#define ST_SENSOR_ERROR 0x0040u
#define ST_SIM_CLOCK 0x0080u

#define CAP_SIM_CLOCK 0x0001u
#define CAP_FAULT_INJECT 0x0002u
#define CAP_BALANCING 0x0004u

#define INVALID_U16 0xFFFFu
#define INVALID_I32 0x7FFFFFFF

typedef struct {
    uint32_t timestamp_ms;
    uint16_t cell_raw[N_CELLS];
    uint16_t ntc_raw[N_THERMISTORS];
    int32_t load_raw[N_LOAD_CELLS];
    int32_t current_raw;
    int32_t bus_raw;
    uint8_t sensor_error;
} sample_t;

enum sched_state { SCHED_IDLE, SCHED_WAIT_CV, SCHED_READ_CV, SCHED_WAIT_AUX, SCHED_FINISH };

typedef struct {
    proto_reader_t rx;
    uint8_t dec[PROTO_DECODE_BUF];
    uint8_t tx[PROTO_MAX_ENCODED];
    uint8_t outputs;
    uint32_t balance_mask;
    int32_t charge_limit_ma, discharge_limit_ma;
    uint32_t last_heartbeat_ms;
    uint8_t wd_tripped;
    uint8_t just_booted;
    uint8_t straps;
    uint16_t boot_id;
    sample_t work, latest;
    uint8_t have_sample;
    uint8_t sched;
    uint8_t cv_reg;
    uint32_t cycle_start_ms, step_ms;
    uint32_t load_seen_ms[N_LOAD_CELLS];
    uint32_t frames_ok, pec_errors;
} app_t;

void app_init(app_t *a, uint16_t boot_id);
/* Run one full sampling cycle blocking (boot: data ready before INFO goes out). */
void app_first_sample(app_t *a);
void app_send_info(app_t *a, uint16_t seq);
/* One pass of the main loop: received bytes, scheduler step, watchdog. */
void app_poll(app_t *a);
/* Handle one received, delimiter-stripped frame (exposed for tests and the fuzzer). */
void app_handle_frame(app_t *a, const uint8_t *enc, uint16_t n);
uint16_t app_status(const app_t *a);
void app_watchdog(app_t *a, uint32_t now_ms);
#endif
