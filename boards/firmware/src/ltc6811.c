#include "ltc6811.h"
#include "hal.h"

uint16_t ltc_pec15(const uint8_t *data, uint8_t n)
{
    /* CRC-15, polynomial 0x4599, seed 16, result shifted left one bit (LTC6811-1 datasheet,
     * "Packet Error Code"). */
    uint16_t rem = 16;
    for (uint8_t i = 0; i < n; i++) {
        rem ^= (uint16_t)((uint16_t)data[i] << 7);
        for (uint8_t b = 0; b < 8; b++) {
            rem = (uint16_t)(rem << 1);
            if (rem & 0x8000u)
                rem ^= 0x4599u;
        }
    }
    return (uint16_t)((rem & 0x7FFFu) << 1);
}

void ltc_wakeup(void)
{
    /* isoSPI idles after 5.5 ms and the cores sleep after 2 s: one CS pulse per device wakes the
     * chain one device at a time (datasheet: "Waking a daisy chain", tWAKE <= 400 us). */
    for (uint8_t i = 0; i < N_MONITORS; i++) {
        hal_spi_cs(1);
        (void)hal_spi_xfer(0xFF);
        hal_spi_cs(0);
        hal_delay_us(400);
    }
}

static void send_cmd(uint16_t cmd)
{
    uint8_t c[2] = {(uint8_t)(cmd >> 8), (uint8_t)cmd};
    uint16_t pec = ltc_pec15(c, 2);
    (void)hal_spi_xfer(c[0]);
    (void)hal_spi_xfer(c[1]);
    (void)hal_spi_xfer((uint8_t)(pec >> 8));
    (void)hal_spi_xfer((uint8_t)pec);
}

void ltc_cmd(uint16_t cmd)
{
    hal_spi_cs(1);
    send_cmd(cmd);
    hal_spi_cs(0);
}

void ltc_write(uint16_t cmd, const uint8_t data[N_MONITORS][6])
{
    hal_spi_cs(1);
    send_cmd(cmd);
    /* Data shifts through the chain: the last device's bytes go out first. */
    for (int8_t dev = N_MONITORS - 1; dev >= 0; dev--) {
        for (uint8_t i = 0; i < 6; i++)
            (void)hal_spi_xfer(data[dev][i]);
        uint16_t pec = ltc_pec15(data[dev], 6);
        (void)hal_spi_xfer((uint8_t)(pec >> 8));
        (void)hal_spi_xfer((uint8_t)pec);
    }
    hal_spi_cs(0);
}

uint8_t ltc_read(uint16_t cmd, uint8_t data[N_MONITORS][6])
{
    uint8_t bad = 0;
    hal_spi_cs(1);
    send_cmd(cmd);
    for (uint8_t dev = 0; dev < N_MONITORS; dev++) {
        for (uint8_t i = 0; i < 6; i++)
            data[dev][i] = hal_spi_xfer(0xFF);
        uint16_t got = (uint16_t)(hal_spi_xfer(0xFF) << 8);
        got |= hal_spi_xfer(0xFF);
        if (got != ltc_pec15(data[dev], 6)) {
            bad |= (uint8_t)(1u << dev);
            for (uint8_t i = 0; i < 6; i++)
                data[dev][i] = 0xFF;
        }
    }
    hal_spi_cs(0);
    return bad;
}

void ltc_cfga(uint8_t out[6], uint16_t dcc12)
{
    out[0] = 0xFC; /* GPIO5..1 pull-downs off (analog inputs), REFON = 1, DTEN = 0, ADCOPT = 0 */
    out[1] = 0x00; /* VUV, VOV unused: the host does the protection */
    out[2] = 0x00;
    out[3] = 0x00;
    out[4] = (uint8_t)dcc12;            /* DCC8..1 */
    out[5] = (uint8_t)((dcc12 >> 8) & 0x0F); /* DCTO = 0 (timer off), DCC12..9 */
}
