#include "parts.h"
#include <string.h>

uint16_t parts_pec15(const uint8_t *data, int n)
{
    /* Written apart from the firmware's ltc6811.c on purpose (datasheet algorithm, table-free),
     * so a shared mistake cannot pass. */
    uint16_t rem = 16;
    for (int i = 0; i < n; i++) {
        for (int b = 7; b >= 0; b--) {
            int din = (data[i] >> b) & 1;
            int in0 = din ^ ((rem >> 14) & 1);
            rem = (uint16_t)((rem << 1) & 0x7FFF);
            if (in0)
                rem ^= 0x4599;
        }
    }
    return (uint16_t)(rem << 1);
}

void ltc_chain_init(ltc_chain_t *c, int n_dev)
{
    memset(c, 0, sizeof *c);
    c->n_dev = n_dev > CHAIN_MAX ? CHAIN_MAX : n_dev;
    /* Registers after power-on or a clear read 0xFF (datasheet). */
    memset(c->cv, 0xFF, sizeof c->cv);
    memset(c->aux, 0xFF, sizeof c->aux);
}

static int is_read(uint16_t code)
{
    return code == 0x002 || code == 0x004 || code == 0x006 || code == 0x008 || code == 0x00A ||
           code == 0x00C || code == 0x00E;
}

static void fill_read(ltc_chain_t *c)
{
    for (int d = 0; d < c->n_dev; d++) {
        uint8_t *o = &c->io[d * 8];
        if (c->code == 0x002) {
            memcpy(o, c->cfg[d], 6);
        } else {
            /* RDCVA..D = 0x004..0x00A (cells 1-3 .. 10-12), RDAUXA/B = 0x00C/0x00E. */
            const uint16_t *src;
            int group = (int)(c->code - 0x004) / 2; /* 0..5, is_read() checked the code */
            if (group < 4)
                src = &c->cv[d][group * 3];
            else
                src = &c->aux[d][(group - 4) * 3];
            for (int k = 0; k < 3; k++) {
                o[2 * k] = (uint8_t)src[k];
                o[2 * k + 1] = (uint8_t)(src[k] >> 8);
            }
        }
        uint16_t pec = parts_pec15(o, 6);
        o[6] = (uint8_t)(pec >> 8);
        o[7] = (uint8_t)pec;
        if (c->corrupt_reads > 0 && d == 0) {
            o[1] ^= 0x10;
            c->corrupt_reads--;
        }
    }
}

static void execute(ltc_chain_t *c)
{
    uint16_t code = c->code;
    if ((code & ~0x197u) == 0x260u) { /* ADCV: MD, DCP, CH vary; all cells latched */
        c->adcv_count++;
        for (int d = 0; d < c->n_dev; d++)
            memcpy(c->cv[d], c->cell_in[d], sizeof c->cv[d]);
    } else if ((code & ~0x187u) == 0x460u) { /* ADAX: GPIO1..5 and VREF2 */
        c->adax_count++;
        for (int d = 0; d < c->n_dev; d++) {
            memcpy(c->aux[d], c->gpio_in[d], 5 * sizeof(uint16_t));
            c->aux[d][5] = 30000; /* VREF2 = 3.0 V */
        }
    } else if (code == 0x711) {
        memset(c->cv, 0xFF, sizeof c->cv);
    } else if (code == 0x712) {
        memset(c->aux, 0xFF, sizeof c->aux);
    } else if (is_read(code)) {
        fill_read(c);
    }
}

void ltc_chain_cs(ltc_chain_t *c, int selected)
{
    if (selected && !c->selected) {
        c->nbytes = 0;
        c->cmd_ok = 0;
    } else if (!selected && c->selected && c->cmd_ok && c->code == 0x001 &&
               c->nbytes >= 4 + 8 * c->n_dev) {
        /* WRCFGA: the first 8 bytes shifted in end up in the last device. */
        for (int j = 0; j < c->n_dev; j++) {
            const uint8_t *in = &c->io[j * 8];
            int dev = c->n_dev - 1 - j;
            uint16_t pec = parts_pec15(in, 6);
            if (in[6] == (uint8_t)(pec >> 8) && in[7] == (uint8_t)pec)
                memcpy(c->cfg[dev], in, 6);
            else
                c->data_pec_errors++;
        }
        c->wrcfg_count++;
    }
    c->selected = selected;
}

uint8_t ltc_chain_xfer(ltc_chain_t *c, uint8_t mosi)
{
    if (!c->selected)
        return 0xFF;
    int k = c->nbytes++;
    if (k < 4) {
        c->cmd[k] = mosi;
        if (k == 3) {
            uint16_t pec = parts_pec15(c->cmd, 2);
            c->cmd_ok = c->cmd[2] == (uint8_t)(pec >> 8) && c->cmd[3] == (uint8_t)pec;
            c->code = (uint16_t)(((c->cmd[0] & 0x07) << 8) | c->cmd[1]);
            if (c->cmd_ok)
                execute(c);
            else
                c->cmd_pec_errors++;
        }
        return 0xFF;
    }
    int j = k - 4;
    if (!c->cmd_ok || j >= 8 * c->n_dev)
        return 0xFF;
    if (is_read(c->code))
        return c->io[j];
    c->io[j] = mosi;
    return 0xFF;
}

uint64_t ltc_chain_dcc(const ltc_chain_t *c)
{
    uint64_t mask = 0;
    for (int d = 0; d < c->n_dev; d++) {
        uint16_t dcc = (uint16_t)(c->cfg[d][4] | ((c->cfg[d][5] & 0x0F) << 8));
        mask |= (uint64_t)dcc << (12 * d);
    }
    return mask;
}

void hx711_init(hx711_t *h)
{
    memset(h, 0, sizeof *h);
    h->dout = 1;
}

void hx711_sck(hx711_t *h, int level)
{
    if (level && !h->sck) {
        if (h->ready) {
            h->bit++;
            if (h->bit <= 24) {
                h->dout = (uint8_t)((((uint32_t)h->value) >> (24 - h->bit)) & 1u);
            } else {
                /* 25th pulse: gain 128 on channel A next; DOUT high until the next word. */
                h->ready = 0;
                h->bit = 0;
                h->dout = 1;
                h->words_read++;
            }
        }
    }
    h->sck = (uint8_t)(level != 0);
}

void hx711_convert(hx711_t *h, int32_t value)
{
    if (h->ready && h->bit > 0)
        return;
    h->value = value & 0xFFFFFF;
    h->ready = 1;
    h->bit = 0;
    h->dout = 0;
}
