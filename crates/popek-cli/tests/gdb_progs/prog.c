/* gdb_prog: a riscv64 Linux program for the `popek exec --gdb` tests; exits with the final
 * counter. */
#include <stdio.h>

volatile long counter;
double scale = 1.5;

__attribute__((noinline)) long bump(long by)
{
    counter += by;
    return counter;
}

int main(void)
{
    for (long i = 1; i <= 5; i++)
        bump(i);
    printf("gdb_prog: counter %ld scaled %.1f\n", counter, counter * scale);
    return counter & 0xff;
}
