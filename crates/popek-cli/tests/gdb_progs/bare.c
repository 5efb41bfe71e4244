/* gdb_bare: a bare-metal program for the gdb stub tests (crates/popek-cli/tests/gdb.rs).
 * Built with -g against tests/baremetal's runtime; exits with the final counter. */
#include "lib.h"

volatile long counter;

__attribute__((noinline)) long bump(long by)
{
    counter += by;
    return counter;
}

int main(void)
{
    for (long i = 1; i <= 5; i++)
        bump(i);
    uart_puts("gdb_bare: done\n");
    exit(counter & 0xff);
}
