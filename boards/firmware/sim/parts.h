/* Emulated board parts at their pins, shared by the simavr harness (sim/harness.c) and the host
 * unit tests (test/hal_host.c): a daisy chain of LTC6811-1 cell monitors at register level and
 * HX711 load-cell amplifiers at bit level. Plain C, no simavr types. */
#ifndef PARTS_H
#define PARTS_H
#include <stdint.h>

#define CHAIN_MAX 4
#define LTC_CELLS 12
#define LTC_GPIO 5

typedef struct {
    int n_dev;
    /* Inputs, in 100 uV counts (what the ADC would convert). */
    uint16_t cell_in[CHAIN_MAX][LTC_CELLS];
    uint16_t gpio_in[CHAIN_MAX][LTC_GPIO];
    /* Registers. */
    uint8_t cfg[CHAIN_MAX][6];
    uint16_t cv[CHAIN_MAX][LTC_CELLS];
    uint16_t aux[CHAIN_MAX][6];
    /* Transaction in progress. */
    int selected;
    int nbytes;
    uint8_t cmd[4];
    uint16_t code;
    int cmd_ok;
    uint8_t io[CHAIN_MAX * 8];
    /* Counters and test knobs. */
    uint32_t cmd_pec_errors, data_pec_errors, wrcfg_count, adcv_count, adax_count;
    int corrupt_reads; /* > 0: flip one bit in the next n register reads (PEC test) */
} ltc_chain_t;

uint16_t parts_pec15(const uint8_t *data, int n);
void ltc_chain_init(ltc_chain_t *c, int n_dev);
void ltc_chain_cs(ltc_chain_t *c, int selected);
uint8_t ltc_chain_xfer(ltc_chain_t *c, uint8_t mosi);
/* Balance mask of the whole chain from the DCC bits: bit dev*12+i = DCC(i+1) of dev. */
uint64_t ltc_chain_dcc(const ltc_chain_t *c);

typedef struct {
    int32_t value;   /* latched 24-bit conversion being shifted out */
    uint8_t ready;   /* DOUT low: a conversion waits */
    uint8_t bit;     /* rising edges seen in this read */
    uint8_t sck;
    uint8_t dout;
    uint32_t words_read;
} hx711_t;

void hx711_init(hx711_t *h);
void hx711_sck(hx711_t *h, int level);
/* A new conversion is ready (ignored while a word is being shifted out). */
void hx711_convert(hx711_t *h, int32_t value);
#endif
