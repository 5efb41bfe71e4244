/* Dies of SIGSEGV. */
#include <stdio.h>
int main(void) { printf("before\n"); fflush(stdout); *(volatile int *)8 = 1; printf("after\n"); return 0; }
