/* clock_gettime and nanosleep agree. */
#include <stdio.h>
#include <sys/time.h>
#include <time.h>
int main(void) {
    struct timespec a, b, r;
    clock_gettime(CLOCK_MONOTONIC, &a);
    struct timespec d = {0, 50 * 1000 * 1000};
    nanosleep(&d, NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    long ms = (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
    printf("slept enough=%d not too long=%d\n", ms >= 50, ms < 2000);
    clock_getres(CLOCK_MONOTONIC, &r);
    printf("res ok=%d\n", r.tv_sec == 0 && r.tv_nsec > 0);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    printf("realtime sane=%d\n", tv.tv_sec > 1600000000);
    clock_gettime(CLOCK_REALTIME, &a);
    printf("realtime agrees=%d\n", a.tv_sec - tv.tv_sec < 5);
    return 0;
}
