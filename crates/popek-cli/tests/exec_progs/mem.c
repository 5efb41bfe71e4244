/* mmap, mprotect, munmap, mremap, brk. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(void) {
    size_t pg = sysconf(_SC_PAGESIZE);
    char *p = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("mmap ok=%d zero=%d\n", p != MAP_FAILED, p[100] == 0 && p[3 * pg] == 0);
    strcpy(p, "anon memory");
    printf("content=%s\n", p);
    printf("mprotect=%d\n", mprotect(p, pg, PROT_READ));
    printf("still readable=%s\n", p);
    printf("munmap=%d\n", munmap(p + pg, pg));
    p[2 * pg] = 'x';
    char *q = mremap(p + 2 * pg, 2 * pg, 64 * pg, MREMAP_MAYMOVE);
    printf("mremap ok=%d kept=%c\n", q != MAP_FAILED, q[0]);
    q[63 * pg] = 1;
    printf("fixed=%d\n", mmap(p + pg, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == p + pg);
    void *b0 = sbrk(0);
    char *b = sbrk(1 << 20);
    b[(1 << 20) - 1] = 7;
    printf("sbrk grew=%d\n", (char *)sbrk(0) - (char *)b0 == (1 << 20));
    int fd = open("/proc/self/exe", O_RDONLY);
    char *f = mmap(NULL, pg, PROT_READ, MAP_PRIVATE, fd, 0);
    printf("file map elf=%d\n", f != MAP_FAILED && memcmp(f, "\177ELF", 4) == 0);
    char *big = malloc(10 << 20);
    memset(big, 1, 10 << 20);
    free(big);
    printf("malloc big ok\n");
    return 0;
}
