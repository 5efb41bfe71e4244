/* fail_zero: writes FAIL with code 0 (0x3333) to the SiFive test finisher; QEMU 7.2 exits 0. */
#include "lib.h"

int main(void)
{
    volatile uint32_t *fin = (volatile uint32_t *)FINISHER_BASE;
    uart_puts("fail_zero: FAIL with code 0\n");
    *fin = 0x3333;
    for (;;)
        __asm__ volatile("wfi");
}
