#include "hx711.h"
#include "hal.h"

uint8_t hx711_read(uint8_t ch, int32_t *value)
{
    if (hal_hx_dout(ch))
        return 0; /* DOUT high: no new conversion */
    uint32_t word = 0;
    /* 24 data bits MSB first (shifted out on SCK rising edges) plus one pulse selecting channel A
     * gain 128 for the next conversion. SCK high for more than 60 us powers the part down, so
     * each pulse runs with interrupts off (a UART ISR in between would stretch it). */
    for (uint8_t i = 0; i < 25; i++) {
        uint8_t s = hal_irq_save();
        hal_hx_sck(ch, 1);
        hal_delay_us(1);
        uint8_t bit = hal_hx_dout(ch);
        hal_hx_sck(ch, 0);
        hal_irq_restore(s);
        hal_delay_us(1);
        if (i < 24)
            word = (word << 1) | bit;
    }
    if (word & 0x800000u)
        word |= 0xFF000000u;
    *value = (int32_t)word;
    return 1;
}
