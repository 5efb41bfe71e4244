/* hello: the smallest popek bare-metal program. */
#include "lib.h"

int main(unsigned long hartid, unsigned long fdt)
{
    uart_puts("Hello from popek bare-metal!\n");
    printf("hart %lu running in M-mode\n", hartid);
    printf("fdt passed in a1: %s\n", fdt ? "yes" : "no");
    return 0;
}
