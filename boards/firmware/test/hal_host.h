/* Host implementation of hal.h for unit tests and the fuzzer: a simulated ms clock, UART queues,
 * and the emulated parts of sim/parts.c behind the SPI and GPIO calls. */
#ifndef HAL_HOST_H
#define HAL_HOST_H
#include <stdint.h>
#include "../sim/parts.h"

typedef struct {
    uint64_t us;               /* simulated time */
    uint8_t rx[4096];
    unsigned rx_head, rx_tail;
    uint8_t tx[16384];
    unsigned tx_len;
    ltc_chain_t chain;
    hx711_t hx[4];
    uint16_t adc[8];
    uint8_t relays;
    uint8_t straps;
    uint32_t wdt_kicks;
} host_board_t;

extern host_board_t hb;
void host_board_reset(void);
void host_rx_push(const uint8_t *data, unsigned n);
void host_advance_us(uint64_t us);
#endif
