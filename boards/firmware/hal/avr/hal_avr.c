/* ATmega2560 (Arduino Mega 2560, 16 MHz) implementation of hal.h, on avr-libc only.
 * Pin map (Arduino pin names in brackets; docs/bench-guide.md has the wiring):
 *   UART0 PE0/PE1 [D0/D1]  USB serial via the board's 16U2, 115200 8N1, U2X
 *   SPI   PB0 [D53] CS, PB1 [D52] SCK, PB2 [D51] MOSI, PB3 [D50] MISO -> LTC6820 isoSPI bridge
 *   HX711 PA0..PA3 [D22..D25] PD_SCK 0..3, PA4..PA7 [D26..D29] DOUT 0..3
 *   Relays PC0 [D37] contactor+, PC1 [D36] contactor-, PC2 [D35] precharge (driver inputs)
 *   ADC   A0 (PF0) shunt amplifier, A1 (PF1) bus-voltage isolated amplifier, AVcc reference
 *   Straps PL0 [D49] simulated MCU, PL1 [D48] sim clock: pulled up, open on the bench
 *   LED   PB7 [D13] toggles every sample cycle */
#include <avr/eeprom.h>
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/wdt.h>
#include <util/delay.h>
#include "hal.h"

#define RX_SIZE 128u /* powers of two: index masks */
#define TX_SIZE 256u

static volatile uint32_t ms_ticks;
static volatile uint8_t rx_buf[RX_SIZE];
static volatile uint8_t rx_head, rx_tail;
static volatile uint8_t tx_buf[TX_SIZE];
static volatile uint8_t tx_head, tx_tail; /* uint8_t wraps at 256 == TX_SIZE */

ISR(TIMER0_COMPA_vect) { ms_ticks++; }

ISR(USART0_RX_vect)
{
    uint8_t c = UDR0;
    uint8_t next = (uint8_t)((rx_head + 1u) & (RX_SIZE - 1u));
    if (next != rx_tail) { /* full: drop; the codec's CRC catches the damaged frame */
        rx_buf[rx_head] = c;
        rx_head = next;
    }
}

ISR(USART0_UDRE_vect)
{
    if (tx_head == tx_tail) {
        UCSR0B &= (uint8_t)~_BV(UDRIE0);
        return;
    }
    UDR0 = tx_buf[tx_tail];
    tx_tail++;
}

void hal_init(void)
{
    /* Timer0 CTC at 1 kHz: 16 MHz / 64 / 250. */
    TCCR0A = _BV(WGM01);
    TCCR0B = _BV(CS01) | _BV(CS00);
    OCR0A = 249;
    TIMSK0 = _BV(OCIE0A);
    /* UART0 115200 8N1: U2X first (simavr recomputes the baud rate on the UBRR write), then
     * UBRR = 16 (117647 baud, +2.1 %, as the Arduino bootloader and core use). */
    UCSR0A = _BV(U2X0);
    UBRR0H = 0;
    UBRR0L = 16;
    UCSR0C = _BV(UCSZ01) | _BV(UCSZ00);
    UCSR0B = _BV(RXEN0) | _BV(TXEN0) | _BV(RXCIE0);
    /* SPI master, mode 3 (LTC6820 POL = PHA = 1 on the demo boards), fosc/16 = 1 MHz. */
    DDRB |= _BV(PB0) | _BV(PB1) | _BV(PB2) | _BV(PB7);
    PORTB |= _BV(PB0);
    SPCR = _BV(SPE) | _BV(MSTR) | _BV(CPOL) | _BV(CPHA) | _BV(SPR0);
    /* HX711: SCK low (high > 60 us powers it down), DOUT inputs. */
    DDRA = 0x0F;
    PORTA = 0x00;
    /* Relays off before anything else can happen. */
    PORTC &= (uint8_t)~0x07u;
    DDRC |= 0x07u;
    /* Straps with pull-ups. */
    DDRL &= (uint8_t)~0x03u;
    PORTL |= 0x03u;
    /* ADC: AVcc reference, 125 kHz ADC clock (16 MHz / 128, datasheet: 50..200 kHz). */
    ADMUX = _BV(REFS0);
    ADCSRA = _BV(ADEN) | _BV(ADPS2) | _BV(ADPS1) | _BV(ADPS0);
    DIDR0 = 0x03;
    sei();
}

uint32_t hal_millis(void)
{
    uint8_t s = SREG;
    cli();
    uint32_t t = ms_ticks;
    SREG = s;
    return t;
}

void hal_delay_us(uint16_t us)
{
    while (us--)
        _delay_us(1);
}

int hal_uart_getc(void)
{
    if (rx_head == rx_tail)
        return -1;
    uint8_t c = rx_buf[rx_tail];
    rx_tail = (uint8_t)((rx_tail + 1u) & (RX_SIZE - 1u));
    return c;
}

void hal_uart_write(const uint8_t *data, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        while ((uint8_t)(tx_head + 1u) == tx_tail)
            wdt_reset(); /* queue full: the UDRE interrupt drains it (< 22 ms for 250 bytes) */
        tx_buf[tx_head] = data[i];
        tx_head++;
        UCSR0B |= _BV(UDRIE0);
    }
}

void hal_spi_cs(uint8_t selected)
{
    if (selected)
        PORTB &= (uint8_t)~_BV(PB0);
    else
        PORTB |= _BV(PB0);
}

uint8_t hal_spi_xfer(uint8_t out)
{
    SPDR = out;
    while (!(SPSR & _BV(SPIF)))
        ;
    return SPDR;
}

void hal_relays_write(uint8_t bits) { PORTC = (uint8_t)((PORTC & ~0x07u) | (bits & 0x07u)); }
uint8_t hal_relays_read(void) { return (uint8_t)(PINC & 0x07u); }

void hal_hx_sck(uint8_t ch, uint8_t level)
{
    if (level)
        PORTA |= (uint8_t)(1u << ch);
    else
        PORTA &= (uint8_t)~(1u << ch);
}

uint8_t hal_hx_dout(uint8_t ch) { return (uint8_t)((PINA >> (4u + ch)) & 1u); }

uint8_t hal_irq_save(void)
{
    uint8_t s = SREG;
    cli();
    return s;
}

void hal_irq_restore(uint8_t state) { SREG = state; }

uint16_t hal_adc_read(uint8_t ch)
{
    ADMUX = (uint8_t)(_BV(REFS0) | (ch & 0x07u));
    ADCSRA |= _BV(ADSC);
    while (ADCSRA & _BV(ADSC))
        ;
    return ADC;
}

uint8_t hal_straps(void) { return (uint8_t)(~PINL & 0x03u); }

void hal_wdt_kick(void) { wdt_reset(); }

void hal_led_toggle(void) { PINB = _BV(PB7); }

uint16_t hal_boot_counter(void)
{
    /* boot_id: a counter in EEPROM, one write per boot (100k-cycle endurance is ample). */
    uint16_t *addr = (uint16_t *)0;
    uint16_t v = (uint16_t)(eeprom_read_word(addr) + 1u);
    eeprom_write_word(addr, v);
    return v;
}
