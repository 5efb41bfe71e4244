/* In-guest I/O benchmark for bench/io/run (static riscv64 Linux binary).
 *
 *   iobench DISK HOST DOWN_PORT UP_PORT MIB
 *
 * On DISK (opened O_DIRECT): sequential 1 MiB reads and writes of MIB MiB, then 4 KiB random
 * reads for 5 seconds. Then TCP to HOST: reads DOWN_PORT until EOF (host -> guest) and writes
 * MIB MiB to UP_PORT (guest -> host). Prints one "name value unit" line per measurement. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int dial(const char *host, int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    return s;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: iobench DISK HOST DOWN_PORT UP_PORT MIB\n");
        return 2;
    }
    long mib = atol(argv[5]);
    size_t big = 1 << 20;
    char *buf;
    if (posix_memalign((void **)&buf, 4096, big)) die("posix_memalign");
    memset(buf, 0x5a, big);

    int fd = open(argv[1], O_RDWR | O_DIRECT);
    if (fd < 0) die(argv[1]);
    off_t disk = lseek(fd, 0, SEEK_END);
    if (disk < (off_t)(mib << 20)) {
        fprintf(stderr, "iobench: %s is smaller than %ld MiB\n", argv[1], mib);
        return 1;
    }

    double t = now();
    for (long i = 0; i < mib; i++)
        if (pread(fd, buf, big, i * big) != (ssize_t)big) die("read");
    printf("seq-read-1M %.1f MB/s\n", mib * 1.048576 / (now() - t));

    t = now();
    for (long i = 0; i < mib; i++)
        if (pwrite(fd, buf, big, i * big) != (ssize_t)big) die("write");
    if (fdatasync(fd)) die("fdatasync");
    printf("seq-write-1M %.1f MB/s\n", mib * 1.048576 / (now() - t));

    srandom(1);
    long ops = 0, blocks = disk / 4096;
    t = now();
    while (now() - t < 5.0) {
        for (int k = 0; k < 64; k++, ops++)
            if (pread(fd, buf, 4096, (random() % blocks) * 4096) != 4096) die("random read");
    }
    printf("rand-read-4K %.0f IOPS\n", ops / (now() - t));
    close(fd);

    int s = dial(argv[2], atoi(argv[3]));
    long got = 0;
    ssize_t n;
    t = now();
    while ((n = read(s, buf, big)) > 0) got += n;
    printf("tcp-host-to-guest %.1f MB/s\n", got / 1e6 / (now() - t));
    close(s);

    s = dial(argv[2], atoi(argv[4]));
    t = now();
    for (long i = 0; i < mib; i++) {
        size_t off = 0;
        while (off < big) {
            n = write(s, buf + off, big - off);
            if (n <= 0) die("send");
            off += n;
        }
    }
    shutdown(s, SHUT_WR);
    while (read(s, buf, big) > 0) {}
    printf("tcp-guest-to-host %.1f MB/s\n", mib * 1.048576 / (now() - t));
    return 0;
}
