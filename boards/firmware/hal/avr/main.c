/* Reference firmware entry point for the Arduino Mega 2560 bench board. */
#include <avr/io.h>
#include <avr/wdt.h>
#include "app.h"
#include "hal.h"

void hal_init(void);
void hal_led_toggle(void);
uint16_t hal_boot_counter(void);

/* A watchdog reset leaves the watchdog running with its shortest timeout: turn it off before
 * the C runtime's init (avr-libc FAQ, "How do I perform a software reset"). */
void wdt_init(void) __attribute__((naked, used, section(".init3")));
void wdt_init(void)
{
    MCUSR = 0;
    wdt_disable();
}

static app_t app; /* static: its size shows in the .bss figure, no stack surprise */

int main(void)
{
    hal_init();
    /* 500 ms: longer than any blocking step (first sample <= 150 ms, a full TX queue 22 ms). */
    wdt_enable(WDTO_500MS);
    app_init(&app, hal_boot_counter());
    app_first_sample(&app);
    app_send_info(&app, 0);
    uint32_t last_cycle = app.cycle_start_ms;
    for (;;) {
        wdt_reset();
        app_poll(&app);
        if (app.cycle_start_ms != last_cycle) {
            last_cycle = app.cycle_start_ms;
            hal_led_toggle();
        }
    }
}
