/* Build-time board configuration of the Mega 2560 + 2 x LTC6811-1 bench board
 * (boards/mega2560-ltc6811.yaml describes the same board to the host). */
#ifndef BOARD_CFG_H
#define BOARD_CFG_H
#define FW_MAJOR 1
#define FW_MINOR 0
#define FW_PATCH 0
#define BOARD_ID "m2560-ltc6811"       /* <= 14 ASCII bytes */
#define N_MONITORS 2                   /* LTC6811-1 in the isoSPI daisy chain */
#define N_CELLS 23                     /* monitor 0: C1..C12 = cells 0..11; monitor 1: C1..C11 */
#define CELLS_PER_MONITOR 12
#define N_THERMISTORS 6                /* GPIO1..3 of each monitor, 3 per monitor */
#define NTC_PER_MONITOR 3
#define N_LOAD_CELLS 4                 /* HX711 class, own SCK + DOUT each */
#define SAMPLE_PERIOD_MS 100u          /* = sample_period_s in the board profile */
/* Board watchdog: contactors open after this long without HEARTBEAT. Matches the pack file's
 * contactors.heartbeat_timeout_s (1.0 s, boards/packs/ssb-23.yaml). */
#define HEARTBEAT_TIMEOUT_MS 1000u
/* LTC6811 ADCV/ADAX in normal mode (7 kHz): 2.3 ms for all cells (datasheet table 5, tCYCLE);
 * wait 3 whole ms of the 1 ms clock, i.e. at least 3 ms after the command. */
#define LTC_CONV_WAIT_MS 4u
/* HX711 at 80 SPS (RATE pin high): a new word every 12.5 ms; a channel with no new word for
 * this long reads invalid (amplifier gone or stuck). */
#define HX_STALE_MS 500u
#define HX_BOOT_WAIT_MS 120u           /* first sample: HX711 settling 50 ms at 80 SPS (datasheet) */
#define ADC_OVERSAMPLE 16u             /* current and bus: sum of 16 conversions, 0..16368 */
#define ADC_CH_CURRENT 0               /* A0: shunt amplifier output, 2.5 V = 0 A */
#define ADC_CH_BUS 1                   /* A1: bus voltage isolated amplifier output */
#endif
