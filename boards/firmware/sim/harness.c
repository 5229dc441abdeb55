/* Firmware in the loop: runs the exact ELF that is flashed on the bench board on a simulated
 * ATmega2560 (libsimavr), bridges UART0 to a pseudo-terminal, and emulates the board's parts at
 * their pins: two LTC6811-1 monitors at register level on SPI (sim/parts.c), four HX711s at bit
 * level on port A, the shunt and bus amplifiers on ADC0/ADC1, the relay pins read back on port C.
 *
 * stdout (line-oriented, flushed):
 *   PTY <path>                       first line: the serial port to open
 *   P <t_us> <relays> <dcc_hex> <charge_ma> <discharge_ma>
 *                                    plant exchange request (with --plant), every --plant-ms
 *   E <t_us> relays <bits> since_hb_us <us>   relay pins changed
 *   S {json}                         statistics, every simulated second, after host bytes
 *                                    were delivered and the input queue ran empty, and at exit
 *                                    ("rx": the host frames by the firmware codec's verdict)
 * stdin (with --plant): one line per P, the plant's sensor values in counts:
 *   23 cell counts (100 uV), 6 thermistor counts (100 uV), 4 HX711 counts, current and bus
 *   counts (sum of 16 10-bit conversions, board profile mega2560-ltc6811).
 *
 * Clocks: --clock real runs the MCU continuously (throttled to --speed x real time, 0 = free);
 * --clock sim is lockstep: the MCU advances only by the dt_us of each SAMPLE the host sends
 * (plus the time it needs to answer), so runs are deterministic and need no wall-clock slack.
 * All simavr calls happen on this one thread (avr_raise_irq is not thread-safe).
 *
 * Host input: bytes go to the MCU's UART as they arrive, one per character time, whole frames
 * or not; nothing waits for a frame to complete. The harness follows them with the firmware's
 * own frame reader and decoder (src/proto.c: 250-byte bound, oversize dropped up to the next
 * 0x00, COBS/CRC/length/version/type checked), so it acts only on frames the firmware will
 * accept: in lockstep only the 0x00 that ends a valid SAMPLE is held back until the MCU has run
 * that SAMPLE's dt (at most MAX_SAMPLE_DT_US). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <sys/prctl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "avr_adc.h"
#include "avr_ioport.h"
#include "avr_spi.h"
#include "avr_uart.h"
#include "sim_avr.h"
#include "sim_cycle_timers.h"
#include "sim_elf.h"
#include "sim_irq.h"

#include "parts.h"
#include "proto.h"

#define N_CELLS 23
#define N_NTC 6
#define N_LC 4
#define TICK_US 100      /* UART pacing and pty polling: one character time at 115200 */
#define HX_PERIOD_US 12500 /* HX711 at 80 SPS */
#define QSIZE 65536
/* Longest MCU time one SAMPLE may ask for. Assumption: 10 x the firmware's 1 s heartbeat
 * timeout; simavr runs 4-6x real time with the plant, so a 10 s SAMPLE answers in about 2 s of
 * wall time, inside a host's reply timeout. A longer dt_us runs only this long (counted in the
 * statistics as sample_dt_clamped). */
#define MAX_SAMPLE_DT_US 10000000u

static avr_t *avr;
static ltc_chain_t chain;
static hx711_t hx[N_LC];
static int pty_master = -1, pty_slave = -1;
static int use_plant;
static int lockstep;
static double speed = 1.0;
static double duration_s;
static uint32_t plant_period_us = 10000;
static volatile sig_atomic_t stop_flag;
/* Our line protocol; fd 1 itself is pointed at stderr so simavr's own printf output (ELF
 * loader, core messages) cannot mix into it. */
static FILE *out;

/* host -> MCU byte queue (bytes as they come from the pty; a ring, never more than QSIZE) */
static uint8_t inq[QSIZE];
static size_t inq_head, inq_tail;
static int uart_xon = 1;
/* MCU -> host bytes not yet written to the pty */
static uint8_t outq[QSIZE];
static size_t outq_len;

/* Both directions followed through the firmware's own reader (bounded, resyncs on 0x00). */
static proto_reader_t rx_reader, tx_reader;
static uint8_t rx_dec[PROTO_DECODE_BUF], tx_dec[PROTO_DECODE_BUF];
static uint64_t tx_first_cycle;     /* first byte of the MCU's frame being sent */
/* The host frame that the next 0x00 in the queue ends: decoded once, when that 0x00 reaches
 * the queue head (every byte before it is then in rx_reader). */
static int rx_end_decided;
static int rx_end_result;           /* enum proto_result, or -1: the 0x00 ends no frame */
static proto_frame_t rx_end_frame;
/* Host input by the codec's verdict (names as hil.protocol.LinkCounters). */
static uint64_t rx_bytes, rx_count[PR_RESULT_COUNT];
static int rx_dirty;                /* bytes delivered since the last S line */
static uint32_t sample_dt_clamped;

static uint64_t target_cycle;       /* lockstep: the MCU may run up to here */
static int sample_held;             /* lockstep: a valid SAMPLE's 0x00 waits for target_cycle */
static int awaiting_replies;
static uint64_t last_io_cycle;
static int boot_done;

/* statistics */
static struct {
    uint64_t sample_in_cycle[65536 / 64]; /* by seq % 1024 */
    uint16_t sample_seq[65536 / 64];
    uint64_t lat_first_max, lat_last_max, lat_first_sum, lat_last_sum;
    uint32_t n_lat;
    uint64_t last_hb_cycle;
    int64_t last_trip_us;
    uint32_t frames_in, frames_out;
} st;
static uint8_t relays_state;
static uint8_t chg_dis_valid;
static int32_t charge_ma, discharge_ma;
static struct timespec wall0;
static uint64_t throttle_cycle0;
static struct timespec throttle_wall0;

static avr_irq_t *irq_uart_in, *irq_spi_in, *irq_adc0, *irq_adc1;
static avr_irq_t *irq_hx_dout[N_LC];

static double wall_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - wall0.tv_sec) + (double)(t.tv_nsec - wall0.tv_nsec) * 1e-9;
}

static uint64_t now_us(void) { return avr->cycle * 1000000ull / avr->frequency; }
static uint64_t us_to_cycles(uint64_t us) { return us * avr->frequency / 1000000ull; }

static void print_stats(void)
{
    double sim_s = (double)avr->cycle / avr->frequency;
    double wall = wall_now();
    fprintf(out, "S {\"sim_s\":%.6f,\"wall_s\":%.3f,\"speed\":%.3f,\"cycles\":%llu,"
           "\"samples\":%u,\"sample_to_first_byte_max_cycles\":%llu,"
           "\"sample_to_last_byte_max_cycles\":%llu,\"sample_to_first_byte_mean_cycles\":%.0f,"
           "\"sample_to_last_byte_mean_cycles\":%.0f,\"frames_in\":%u,\"frames_out\":%u,"
           "\"last_trip_us\":%lld,\"pec_cmd_errors\":%u,\"pec_data_errors\":%u,"
           "\"wrcfg\":%u,\"adcv\":%u,\"hx_words\":%u,\"relays\":%u,\"dcc\":%llu,"
           "\"sample_dt_clamped\":%u,\"rx\":{\"bytes_in\":%llu,\"frames_ok\":%llu,"
           "\"cobs_errors\":%llu,\"short_errors\":%llu,\"crc_errors\":%llu,"
           "\"length_errors\":%llu,\"version_errors\":%llu,\"unknown_type\":%llu,"
           "\"payload_errors\":%llu,\"oversize\":%llu}}\n",
           sim_s, wall, wall > 0 ? sim_s / wall : 0.0, (unsigned long long)avr->cycle, st.n_lat,
           (unsigned long long)st.lat_first_max, (unsigned long long)st.lat_last_max,
           st.n_lat ? (double)st.lat_first_sum / st.n_lat : 0.0,
           st.n_lat ? (double)st.lat_last_sum / st.n_lat : 0.0, st.frames_in, st.frames_out,
           (long long)st.last_trip_us, chain.cmd_pec_errors, chain.data_pec_errors,
           chain.wrcfg_count, chain.adcv_count, hx[0].words_read, relays_state,
           (unsigned long long)ltc_chain_dcc(&chain), sample_dt_clamped,
           (unsigned long long)rx_bytes, (unsigned long long)rx_count[PR_OK],
           (unsigned long long)rx_count[PR_COBS], (unsigned long long)rx_count[PR_SHORT],
           (unsigned long long)rx_count[PR_CRC], (unsigned long long)rx_count[PR_LENGTH],
           (unsigned long long)rx_count[PR_VERSION], (unsigned long long)rx_count[PR_UNKNOWN_TYPE],
           (unsigned long long)rx_count[PR_PAYLOAD], (unsigned long long)rx_count[PR_OVERSIZE]);
    fflush(out);
    rx_dirty = 0;
}

/* SET_OUTPUTS carries the current limits a bench charger/load would obey; the plant's load
 * needs them, the pins do not show them. Taken only from a frame the firmware acknowledges
 * (its BAD_VALUE rules: output bits 0..2, mask within the cells, limits >= 0). */
static void snoop_set_outputs(const proto_frame_t *f)
{
    const uint8_t *p = f->payload;
    uint32_t mask = get_u32(p + 2);
    int32_t chg = (int32_t)get_u32(p + 6), dis = (int32_t)get_u32(p + 10);
    if ((p[0] & ~7u) || (mask >> N_CELLS) || chg < 0 || dis < 0)
        return;
    charge_ma = chg;
    discharge_ma = dis;
    chg_dis_valid = 1;
}

/* ------------------------------------------------------------------ UART <-> pty */

static void uart_out_cb(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    (void)param;
    uint8_t b = (uint8_t)value;
    if (outq_len < QSIZE)
        outq[outq_len++] = b;
    last_io_cycle = avr->cycle;
    if (b != 0 && tx_reader.n == 0 && !tx_reader.overflow)
        tx_first_cycle = avr->cycle;
    if (!proto_reader_push(&tx_reader, b))
        return;
    proto_frame_t f;
    enum proto_result r = proto_decode(tx_reader.buf, tx_reader.n, tx_dec, &f);
    tx_reader.n = 0;
    if (r != PR_OK)
        return;
    st.frames_out++;
    boot_done = 1;
    if (awaiting_replies > 0 && !(f.type == MSG_INFO && f.seq == 0)) /* boot INFO: unsolicited */
        awaiting_replies--;
    if (f.type == MSG_MEASUREMENT) {
        unsigned slot = f.seq % 1024u;
        if (st.sample_seq[slot] == f.seq && st.sample_in_cycle[slot]) {
            uint64_t first = tx_first_cycle - st.sample_in_cycle[slot];
            uint64_t last = avr->cycle - st.sample_in_cycle[slot];
            if (first > st.lat_first_max)
                st.lat_first_max = first;
            if (last > st.lat_last_max)
                st.lat_last_max = last;
            st.lat_first_sum += first;
            st.lat_last_sum += last;
            st.n_lat++;
            st.sample_in_cycle[slot] = 0;
        }
    }
}

static void uart_xon_cb(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq; (void)value; (void)param;
    uart_xon = 1;
}

static void uart_xoff_cb(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq; (void)value; (void)param;
    uart_xon = 0;
}

static void flush_out(void)
{
    size_t off = 0;
    while (off < outq_len) {
        ssize_t k = write(pty_master, outq + off, outq_len - off);
        if (k <= 0)
            break; /* nobody reading, or the pty buffer is full: drop like a serial line */
        off += (size_t)k;
    }
    outq_len = 0;
}

/* Take what the pty holds, up to the queue's free room; the rest waits in the pty (the host's
 * write blocks, as with flow control) and is read once bytes have gone to the UART. */
static void read_pty(void)
{
    for (;;) {
        size_t room = QSIZE - (inq_head - inq_tail);
        if (room == 0)
            return;
        uint8_t buf[4096];
        ssize_t k = read(pty_master, buf, room < sizeof buf ? room : sizeof buf);
        if (k <= 0)
            return;
        for (ssize_t i = 0; i < k; i++)
            inq[inq_head++ % QSIZE] = buf[i];
    }
}

/* A complete host frame has reached the MCU (its 0x00 was just delivered). */
static void host_frame_done(enum proto_result r, const proto_frame_t *f)
{
    rx_count[r]++;
    /* The firmware answers valid frames (HEARTBEAT excepted) and NACKs rules 5..7; frames
     * failing rules 1..4 are dropped without an answer. */
    int answered = r == PR_VERSION || r == PR_UNKNOWN_TYPE || r == PR_PAYLOAD ||
                   (r == PR_OK && f->type != MSG_HEARTBEAT);
    if (answered)
        awaiting_replies++;
    if (r != PR_OK)
        return;
    st.frames_in++;
    if (f->type == MSG_HEARTBEAT)
        st.last_hb_cycle = avr->cycle;
    if (f->type == MSG_SAMPLE) {
        st.sample_in_cycle[f->seq % 1024u] = avr->cycle;
        st.sample_seq[f->seq % 1024u] = f->seq;
    }
    if (f->type == MSG_SET_OUTPUTS)
        snoop_set_outputs(f);
}

/* Lockstep: the 0x00 at the queue head ends the frame now in rx_reader; decode it once. A valid
 * SAMPLE's delimiter is then held until the MCU has run its dt: the MCU acts on a frame only at
 * its delimiter, so the bytes before it are delivered as they come. */
static void decide_frame_end(void)
{
    rx_end_decided = 1;
    rx_end_result = -1;
    if (rx_reader.overflow || rx_reader.n == 0)
        return; /* end of an oversize run, or an idle delimiter: no frame */
    rx_end_result = (int)proto_decode(rx_reader.buf, rx_reader.n, rx_dec, &rx_end_frame);
    if (!lockstep || rx_end_result != PR_OK || rx_end_frame.type != MSG_SAMPLE)
        return;
    uint32_t dt = get_u32(rx_end_frame.payload);
    if (dt > MAX_SAMPLE_DT_US) {
        dt = MAX_SAMPLE_DT_US;
        sample_dt_clamped++;
    }
    if (dt == 0)
        return;
    /* MCU time follows the sum of the dts (the host's sim clock); the time spent answering is
     * absorbed by the next dt instead of adding up. */
    uint64_t base = target_cycle ? target_cycle : avr->cycle;
    target_cycle = base + us_to_cycles(dt);
    sample_held = 1;
}

/* Deliver the next queued byte to the MCU's UART (one per call, paced by tick_cb). */
static void feed_uart(void)
{
    if (inq_tail == inq_head || !uart_xon)
        return;
    uint8_t b = inq[inq_tail % QSIZE];
    if (b == 0 && !rx_end_decided)
        decide_frame_end();
    if (sample_held) {
        if (avr->cycle < target_cycle)
            return;
        sample_held = 0;
    }
    inq_tail++;
    avr_raise_irq(irq_uart_in, b);
    last_io_cycle = avr->cycle;
    rx_bytes++;
    rx_dirty = 1;
    if (b != 0) {
        uint8_t was_dropping = rx_reader.overflow;
        proto_reader_push(&rx_reader, b);
        if (rx_reader.overflow && !was_dropping)
            rx_count[PR_OVERSIZE]++;
        return;
    }
    proto_reader_push(&rx_reader, 0); /* ends a frame, an oversize run or nothing */
    rx_reader.n = 0;
    rx_end_decided = 0;
    if (rx_end_result >= 0)
        host_frame_done((enum proto_result)rx_end_result, &rx_end_frame);
}

/* ------------------------------------------------------------------ parts at the pins */

static void spi_out_cb(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    (void)param;
    uint8_t miso = ltc_chain_xfer(&chain, (uint8_t)value);
    avr_raise_irq(irq_spi_in, miso);
}

static void cs_cb(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    (void)param;
    ltc_chain_cs(&chain, value == 0); /* CS is active low */
}

static void hx_sck_cb(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    int ch = (int)(intptr_t)param;
    uint8_t before = hx[ch].dout;
    hx711_sck(&hx[ch], (int)value);
    if (hx[ch].dout != before)
        avr_raise_irq(irq_hx_dout[ch], hx[ch].dout);
}

static void relay_cb(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    int bit = (int)(intptr_t)param;
    uint8_t before = relays_state;
    if (value)
        relays_state |= (uint8_t)(1u << bit);
    else
        relays_state &= (uint8_t)~(1u << bit);
    if (relays_state == before)
        return;
    uint64_t since = st.last_hb_cycle ? (avr->cycle - st.last_hb_cycle) * 1000000ull /
                                            avr->frequency
                                      : 0;
    if (before && !relays_state)
        st.last_trip_us = (int64_t)since;
    fprintf(out, "E %llu relays %u since_hb_us %llu\n", (unsigned long long)now_us(), relays_state,
           (unsigned long long)since);
    fflush(out);
}

static int32_t hx_value[N_LC];
static uint16_t adc_mv[2];

static void apply_fixed_values(void)
{
    /* Without a plant: a plausible, recognisable stack (3.700 V + 1 mV per cell index). */
    for (int i = 0; i < N_CELLS; i++)
        chain.cell_in[i / 12][i % 12] = (uint16_t)(37000 + 10 * i);
    for (int t = 0; t < N_NTC; t++)
        chain.gpio_in[t / 3][t % 3] = (uint16_t)(15000 + 100 * t); /* 1.5 V: 25 C divider */
    for (int i = 0; i < N_LC; i++)
        hx_value[i] = 2000000 + 1000 * i;
    adc_mv[0] = 2500; /* 0 A */
    adc_mv[1] = 0;
}

static void push_adc(void)
{
    avr_raise_irq(irq_adc0, adc_mv[0]);
    avr_raise_irq(irq_adc1, adc_mv[1]);
}

static uint16_t counts_to_mv(double sum16)
{
    /* The firmware sums 16 conversions of a 10-bit ADC on a 5.0 V AVcc reference. */
    double mv = sum16 / 16.0 * 5000.0 / 1024.0;
    if (mv < 0)
        mv = 0;
    if (mv > 5000)
        mv = 5000;
    return (uint16_t)(mv + 0.5);
}

static int plant_exchange(void)
{
    unsigned long long dcc = ltc_chain_dcc(&chain);
    /* monitor 1 C12 is tied to C11 on the board: 23 cells, bits 0..22 = cells */
    dcc &= (1ull << N_CELLS) - 1;
    fprintf(out, "P %llu %u %llx %d %d\n", (unsigned long long)now_us(), relays_state, dcc,
           chg_dis_valid ? charge_ma : -1, chg_dis_valid ? discharge_ma : -1);
    fflush(out);
    char line[4096];
    if (!fgets(line, sizeof line, stdin))
        return -1;
    char *p = line, *end;
    double v[N_CELLS + N_NTC + N_LC + 2];
    for (int i = 0; i < (int)(sizeof v / sizeof v[0]); i++) {
        v[i] = strtod(p, &end);
        if (end == p)
            return -1;
        p = end;
    }
    for (int i = 0; i < N_CELLS; i++) {
        double c = v[i] < 0 ? 0 : (v[i] > 65534 ? 65534 : v[i]);
        chain.cell_in[i / 12][i % 12] = (uint16_t)c;
    }
    chain.cell_in[1][11] = 0;
    for (int t = 0; t < N_NTC; t++) {
        double c = v[N_CELLS + t];
        chain.gpio_in[t / 3][t % 3] = (uint16_t)(c < 0 ? 0 : (c > 65534 ? 65534 : c));
    }
    for (int i = 0; i < N_LC; i++)
        hx_value[i] = (int32_t)v[N_CELLS + N_NTC + i];
    adc_mv[0] = counts_to_mv(v[N_CELLS + N_NTC + N_LC]);
    adc_mv[1] = counts_to_mv(v[N_CELLS + N_NTC + N_LC + 1]);
    push_adc();
    return 0;
}

/* ------------------------------------------------------------------ cycle timers */

static uint64_t last_tick_cycle, last_stats_cycle;

static avr_cycle_count_t tick_cb(struct avr_t *a, avr_cycle_count_t when, void *param)
{
    (void)param;
    last_tick_cycle = a->cycle;
    feed_uart();
    flush_out();
    /* pty reads cost a syscall: every 500 us of MCU time (5 characters at 115200) whatever the
     * queue holds, and every tick once the queue ran dry inside a frame (its rest may come). */
    static uint64_t last_read;
    int mid_frame = rx_reader.n || rx_reader.overflow;
    if (a->cycle - last_read >= us_to_cycles(500) || (inq_tail == inq_head && mid_frame)) {
        last_read = a->cycle;
        read_pty();
    }
    /* Everything the host sent is at the UART: its counters, for whoever waits on them. */
    if (rx_dirty && inq_tail == inq_head)
        print_stats();
    if (a->cycle - last_stats_cycle >= a->frequency) {
        last_stats_cycle = a->cycle;
        print_stats();
    }
    /* One character time while bytes flow or a frame is half in; otherwise 500 us (the MCU is
     * busy sampling or waiting for a SAMPLE's time), up to the lockstep target. */
    int busy = (inq_tail != inq_head && !sample_held) || mid_frame;
    uint64_t next = us_to_cycles(busy ? TICK_US : 5 * TICK_US);
    if (sample_held && target_cycle > a->cycle && target_cycle - a->cycle < next)
        next = target_cycle - a->cycle;
    return when + (next ? next : 1);
}

static avr_cycle_count_t hx_cb(struct avr_t *a, avr_cycle_count_t when, void *param)
{
    (void)a;
    (void)param;
    for (int i = 0; i < N_LC; i++) {
        uint8_t before = hx[i].dout;
        hx711_convert(&hx[i], hx_value[i]);
        if (hx[i].dout != before)
            avr_raise_irq(irq_hx_dout[i], hx[i].dout);
    }
    return when + us_to_cycles(HX_PERIOD_US);
}

static avr_cycle_count_t plant_cb(struct avr_t *a, avr_cycle_count_t when, void *param)
{
    (void)a;
    (void)param;
    if (plant_exchange() < 0)
        stop_flag = 1;
    return when + us_to_cycles(plant_period_us);
}

static void arm_timers(void)
{
    avr_cycle_timer_register_usec(avr, TICK_US, tick_cb, NULL);
    avr_cycle_timer_register_usec(avr, 1000, hx_cb, NULL);
    if (use_plant)
        avr_cycle_timer_register_usec(avr, plant_period_us, plant_cb, NULL);
    last_tick_cycle = avr->cycle;
}

static void drive_static_pins(void)
{
    /* Straps: PL0 low = simulated MCU, PL1 low = lockstep sim clock. */
    avr_raise_irq(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('L'), 0), 0);
    avr_raise_irq(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('L'), 1), lockstep ? 0 : 1);
    for (int i = 0; i < N_LC; i++)
        avr_raise_irq(irq_hx_dout[i], hx[i].dout);
    push_adc();
}

/* The firmware's pull-up writes (PORTL) raise the strap pins inside simavr; put them back where
 * the harness wants them one cycle later (re-raising inside the hook does not stick), as a
 * solder bridge to ground would hold them. */
static avr_cycle_count_t strap_restore(struct avr_t *a, avr_cycle_count_t when, void *param)
{
    (void)when;
    (void)param;
    avr_raise_irq(avr_io_getirq(a, AVR_IOCTL_IOPORT_GETIRQ('L'), 0), 0);
    avr_raise_irq(avr_io_getirq(a, AVR_IOCTL_IOPORT_GETIRQ('L'), 1), lockstep ? 0 : 1);
    return 0;
}

static void strap_cb(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    int want = (int)(intptr_t)param;
    if ((int)value != want)
        avr_cycle_timer_register(avr, 1, strap_restore, NULL);
}

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static int should_run(void)
{
    if (!lockstep)
        return 1;
    if (!boot_done)
        return avr->cycle < us_to_cycles(5000000); /* boot: until INFO (bounded) */
    if (sample_held)
        return 1; /* the MCU must reach the SAMPLE's time */
    if (inq_tail != inq_head)
        return 1; /* bytes flowing (or the UART's XOFF draining) */
    /* A frame the host has only partly sent does not run the MCU: lockstep time moves with
     * bytes, SAMPLE dts and answers only, never with the host's wall-clock pauses. */
    /* Waiting for replies: bounded, a dropped (corrupted) request has none. */
    if (awaiting_replies > 0 && avr->cycle - last_io_cycle < us_to_cycles(50000))
        return 1;
    awaiting_replies = 0;
    return 0;
}

static void throttle(void)
{
    if (lockstep || speed <= 0)
        return;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    double wall = (double)(t.tv_sec - throttle_wall0.tv_sec) +
                  (double)(t.tv_nsec - throttle_wall0.tv_nsec) * 1e-9;
    double sim = (double)(avr->cycle - throttle_cycle0) / avr->frequency / speed;
    if (sim > wall + 0.0005) {
        double d = sim - wall;
        struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

static void usage(void)
{
    fprintf(stderr,
            "usage: fw_harness --elf FIRMWARE.elf [--mcu atmega2560] [--freq 16000000]\n"
            "       [--clock real|sim] [--speed X (real clock; 0 = free)] [--plant]\n"
            "       [--plant-ms MS] [--duration-s S]\n");
}

int main(int argc, char **argv)
{
    const char *elf = NULL, *mcu = "atmega2560";
    uint32_t freq = 16000000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--elf") && v) { elf = v; i++; }
        else if (!strcmp(a, "--mcu") && v) { mcu = v; i++; }
        else if (!strcmp(a, "--freq") && v) { freq = (uint32_t)strtoul(v, NULL, 10); i++; }
        else if (!strcmp(a, "--clock") && v) { lockstep = !strcmp(v, "sim"); i++; }
        else if (!strcmp(a, "--speed") && v) { speed = strtod(v, NULL); i++; }
        else if (!strcmp(a, "--plant")) { use_plant = 1; }
        else if (!strcmp(a, "--plant-ms") && v) {
            plant_period_us = (uint32_t)(strtod(v, NULL) * 1000); i++;
        }
        else if (!strcmp(a, "--duration-s") && v) { duration_s = strtod(v, NULL); i++; }
        else { usage(); return 2; }
    }
    if (!elf || plant_period_us < 100) {
        usage();
        return 2;
    }
    int proto_fd = dup(1);
    out = proto_fd >= 0 ? fdopen(proto_fd, "w") : NULL;
    if (!out || dup2(2, 1) < 0) {
        perror("fw_harness: stdout");
        return 1;
    }
    signal(SIGTERM, on_signal);
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* do not outlive the bridge that started us */
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);

    /* The ELF carries no MCU type or clock (no .mmcu section): both are given here. */
    elf_firmware_t fw;
    memset(&fw, 0, sizeof fw);
    if (elf_read_firmware(elf, &fw) != 0) {
        fprintf(stderr, "fw_harness: cannot read %s\n", elf);
        return 1;
    }
    avr = avr_make_mcu_by_name(mcu);
    if (!avr) {
        fprintf(stderr, "fw_harness: unknown MCU %s\n", mcu);
        return 1;
    }
    avr_init(avr);
    fw.frequency = freq;
    snprintf(fw.mmcu, sizeof fw.mmcu, "%s", mcu);
    avr_load_firmware(avr, &fw);
    avr->frequency = freq;
    /* Without these the ADC falls back to 3.3 V. */
    avr->vcc = avr->avcc = avr->aref = 5000;
    avr->log = 0;

    uint32_t flags = 0;
    avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
    flags &= ~(uint32_t)(AVR_UART_FLAG_POLL_SLEEP | AVR_UART_FLAG_STDIO);
    avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);

    irq_uart_in = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT),
                            uart_out_cb, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XON),
                            uart_xon_cb, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XOFF),
                            uart_xoff_cb, NULL);
    irq_spi_in = avr_io_getirq(avr, AVR_IOCTL_SPI_GETIRQ(0), SPI_IRQ_INPUT);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_SPI_GETIRQ(0), SPI_IRQ_OUTPUT),
                            spi_out_cb, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('B'), 0), cs_cb, NULL);
    for (int i = 0; i < N_LC; i++) {
        avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('A'), i), hx_sck_cb,
                                (void *)(intptr_t)i);
        irq_hx_dout[i] = avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('A'), 4 + i);
    }
    for (int i = 0; i < 3; i++)
        avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('C'), i), relay_cb,
                                (void *)(intptr_t)i);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('L'), 0), strap_cb,
                            (void *)(intptr_t)0);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('L'), 1), strap_cb,
                            (void *)(intptr_t)(lockstep ? 0 : 1));
    irq_adc0 = avr_io_getirq(avr, AVR_IOCTL_ADC_GETIRQ, ADC_IRQ_ADC0);
    irq_adc1 = avr_io_getirq(avr, AVR_IOCTL_ADC_GETIRQ, ADC_IRQ_ADC1);

    proto_reader_init(&rx_reader);
    proto_reader_init(&tx_reader);
    ltc_chain_init(&chain, 2);
    for (int i = 0; i < N_LC; i++)
        hx711_init(&hx[i]);
    apply_fixed_values();

    /* Our own pty (simavr's uart_pty part uses a fixed /tmp name: parallel runs collide). */
    char name[256];
    if (openpty(&pty_master, &pty_slave, name, NULL, NULL) != 0) {
        perror("fw_harness: openpty");
        return 1;
    }
    struct termios tio;
    tcgetattr(pty_slave, &tio);
    cfmakeraw(&tio);
    tcsetattr(pty_slave, TCSANOW, &tio);
    /* We keep the slave open too, so the master never sees a hang-up between clients. */
    fcntl(pty_master, F_SETFL, fcntl(pty_master, F_GETFL) | O_NONBLOCK);
    fprintf(out, "PTY %s\n", name);
    fflush(out);

    clock_gettime(CLOCK_MONOTONIC, &wall0);
    throttle_wall0 = wall0;
    throttle_cycle0 = 0;
    if (use_plant && plant_exchange() < 0) {
        fprintf(stderr, "fw_harness: no plant values on stdin\n");
        return 1;
    }
    drive_static_pins();
    arm_timers();

    uint64_t max_cycle = duration_s > 0 ? (uint64_t)(duration_s * freq) : UINT64_MAX;
    uint64_t next_throttle = 0;
    int state = cpu_Running;
    while (!stop_flag && avr->cycle < max_cycle) {
        if (should_run()) {
            state = avr_run(avr);
            if (state == cpu_Done || state == cpu_Crashed) {
                fprintf(stderr, "fw_harness: MCU stopped (state %d) at cycle %llu\n", state,
                        (unsigned long long)avr->cycle);
                break;
            }
            /* A watchdog reset runs avr_reset(), which drops our cycle timers: re-arm. */
            if (avr->cycle - last_tick_cycle > us_to_cycles(10 * TICK_US)) {
                arm_timers();
                drive_static_pins();
            }
            if (avr->cycle >= next_throttle) {
                throttle();
                next_throttle = avr->cycle + us_to_cycles(1000);
            }
        } else {
            /* Lockstep and idle: simulated time stands still until the host sends bytes. */
            flush_out();
            struct pollfd pfd = {pty_master, POLLIN, 0};
            int r = poll(&pfd, 1, 200);
            if (r > 0)
                read_pty();
        }
    }
    flush_out();
    print_stats();
    return state == cpu_Crashed ? 1 : 0;
}
