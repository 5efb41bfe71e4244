/* Dies of SIGILL. */
#include <stdio.h>
int main(void) { printf("before\n"); fflush(stdout); __asm__ volatile(".word 0"); return 0; }
