/* LTC6811-1 daisy chain over an isoSPI bridge (LTC6820): commands with PEC15, register writes
 * (last device first) and reads (first device first, PEC checked per device). */
#ifndef LTC6811_H
#define LTC6811_H
#include <stdint.h>
#include "board_cfg.h"

#define LTC_WRCFGA 0x0001u
#define LTC_RDCFGA 0x0002u
#define LTC_RDCVA 0x0004u
#define LTC_RDCVB 0x0006u
#define LTC_RDCVC 0x0008u
#define LTC_RDCVD 0x000Au
#define LTC_RDAUXA 0x000Cu
#define LTC_RDAUXB 0x000Eu
/* ADCV: 0x260 | MD << 7 | DCP << 4 | CH; MD = 2 normal 7 kHz, DCP = 0, CH = 0 all cells. */
#define LTC_ADCV_NORMAL_ALL 0x0360u
/* ADAX: 0x460 | MD << 7 | CHG; CHG = 0: GPIO1-5 and VREF2. */
#define LTC_ADAX_NORMAL_ALL 0x0560u

uint16_t ltc_pec15(const uint8_t *data, uint8_t n);
void ltc_wakeup(void);
void ltc_cmd(uint16_t cmd);
/* data[dev][6] for dev 0 (first in the chain) .. N_MONITORS-1. */
void ltc_write(uint16_t cmd, const uint8_t data[N_MONITORS][6]);
/* Returns a bit mask of devices whose data PEC failed (their data is set to 0xFF). */
uint8_t ltc_read(uint16_t cmd, uint8_t data[N_MONITORS][6]);
/* Configuration register A for one device: GPIO pull-downs off, REFON, discharge bits. */
void ltc_cfga(uint8_t out[6], uint16_t dcc12);
#endif
