/* exit_code: leaves through the SiFive test finisher with status 3. */
#include "lib.h"

int main(void)
{
    uart_puts("exit_code: exiting with status 3\n");
    exit(3);
}
