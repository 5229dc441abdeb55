/* Hardware abstraction: everything the board logic needs from the MCU. hal/avr/ implements it on
 * the ATmega2560; test/ implements it on the host with emulated parts, so the logic is unit
 * tested off target. */
#ifndef HAL_H
#define HAL_H
#include <stdint.h>
#include <stddef.h>

uint32_t hal_millis(void);            /* free-running ms clock */
void hal_delay_us(uint16_t us);       /* busy wait */
int hal_uart_getc(void);              /* next received byte, or -1 */
void hal_uart_write(const uint8_t *data, size_t n); /* queue bytes (blocks while queue full) */
void hal_spi_cs(uint8_t selected);    /* isoSPI bridge chip select (active low on the pin) */
uint8_t hal_spi_xfer(uint8_t out);
void hal_relays_write(uint8_t bits);  /* bit 0 contactor+, bit 1 contactor-, bit 2 precharge */
uint8_t hal_relays_read(void);        /* pin levels read back */
void hal_hx_sck(uint8_t ch, uint8_t level);
uint8_t hal_hx_dout(uint8_t ch);
uint8_t hal_irq_save(void);           /* disable interrupts, return previous state */
void hal_irq_restore(uint8_t state);
uint16_t hal_adc_read(uint8_t ch);    /* one 10-bit conversion, AVcc reference */
uint8_t hal_straps(void);             /* bit 0: simulated MCU, bit 1: sim clock (lockstep) */
void hal_wdt_kick(void);
#endif
