#include "hal_host.h"
#include <string.h>
#include "../src/hal.h"

host_board_t hb;

void host_board_reset(void)
{
    memset(&hb, 0, sizeof hb);
    ltc_chain_init(&hb.chain, 2);
    for (int i = 0; i < 4; i++)
        hx711_init(&hb.hx[i]);
}

void host_rx_push(const uint8_t *data, unsigned n)
{
    for (unsigned i = 0; i < n && hb.rx_head - hb.rx_tail < sizeof hb.rx; i++)
        hb.rx[hb.rx_head++ % sizeof hb.rx] = data[i];
}

void host_advance_us(uint64_t us) { hb.us += us; }

uint32_t hal_millis(void) { return (uint32_t)(hb.us / 1000u); }
void hal_delay_us(uint16_t us) { hb.us += us; }

int hal_uart_getc(void)
{
    if (hb.rx_tail == hb.rx_head)
        return -1;
    return hb.rx[hb.rx_tail++ % sizeof hb.rx];
}

void hal_uart_write(const uint8_t *data, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (hb.tx_len < sizeof hb.tx)
            hb.tx[hb.tx_len++] = data[i];
}

void hal_spi_cs(uint8_t selected) { ltc_chain_cs(&hb.chain, selected); }
uint8_t hal_spi_xfer(uint8_t out)
{
    hb.us += 8; /* 1 MHz SPI byte */
    return ltc_chain_xfer(&hb.chain, out);
}
void hal_relays_write(uint8_t bits) { hb.relays = bits & 7u; }
uint8_t hal_relays_read(void) { return hb.relays; }
void hal_hx_sck(uint8_t ch, uint8_t level) { hx711_sck(&hb.hx[ch & 3], level); }
uint8_t hal_hx_dout(uint8_t ch)
{
    hb.us += 1; /* a pin read costs time, so polling loops advance the clock */
    return hb.hx[ch & 3].dout;
}
uint8_t hal_irq_save(void) { return 0; }
void hal_irq_restore(uint8_t state) { (void)state; }
uint16_t hal_adc_read(uint8_t ch)
{
    hb.us += 104; /* 13 ADC clocks at 125 kHz */
    return hb.adc[ch & 7];
}
uint8_t hal_straps(void) { return hb.straps; }
void hal_wdt_kick(void)
{
    hb.wdt_kicks++;
    hb.us += 1; /* one main-loop pass */
}
