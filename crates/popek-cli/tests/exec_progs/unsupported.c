/* Makes a syscall popek does not implement (io_setup). */
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) { printf("before\n"); fflush(stdout); syscall(0, 1, 0); printf("after\n"); return 0; }
