/* HX711-class 24-bit bridge amplifier, two-wire serial (PD_SCK out, DOUT in), channel A gain 128. */
#ifndef HX711_H
#define HX711_H
#include <stdint.h>
/* Returns 1 and the sign-extended 24-bit word when DOUT shows a conversion ready, else 0. */
uint8_t hx711_read(uint8_t ch, int32_t *value);
#endif
