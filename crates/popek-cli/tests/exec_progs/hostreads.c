/* Loads from memory the program may not read, from a loop hot enough to be translated: each
 * must raise SIGSEGV at the right address, and memory made readable again must read back what
 * was written before. Under popek's JIT these loads read host memory directly and rely on the
 * host's protection, which popek keeps as strict as the guest's; with the argument "thread", a
 * second thread exists first (the host then stops mirroring, and loads check popek's TLB), and
 * with "exec", an execute-only mapping does the same. */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static sigjmp_buf env;
static volatile uintptr_t fault_addr;

static void handler(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    fault_addr = (uintptr_t)si->si_addr;
    siglongjmp(env, 1);
}

/* Sum of the 8-byte words at p, p + step, ..., n of them (an explicit `ld`, so the load is one
 * instruction whatever the alignment). */
__attribute__((noipa)) uint64_t sum(const char *p, long step, int n) {
    uint64_t s = 0;
    for (int i = 0; i < n; i++) {
        uint64_t v;
        __asm__ volatile("ld %0, 0(%1)" : "=r"(v) : "r"(p + i * step) : "memory");
        s += v;
    }
    return s;
}

static char *page;

/* Call `sum` on readable memory often enough for its code and this loop's to be translated,
 * then, from the same loop, on `bad`. */
static void probe(const char *what, const char *bad) {
    fault_addr = 0;
    if (sigsetjmp(env, 1) == 0) {
        uint64_t s = 0;
        for (int i = 0; i <= 2000; i++) {
            s += sum(i < 2000 ? page : bad, 8, 16);
        }
        printf("%s: no fault (read %llx)\n", what, (unsigned long long)s);
    } else {
        printf("%s: SIGSEGV at bad%+ld\n", what, (long)(fault_addr - (uintptr_t)bad));
    }
}

static void *nothing(void *arg) { return arg; }

int main(int argc, char **argv) {
    long pg = sysconf(_SC_PAGESIZE);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    if (argc > 1 && strcmp(argv[1], "thread") == 0) {
        pthread_t t;
        pthread_create(&t, NULL, nothing, NULL);
        pthread_join(t, NULL);
        printf("a second thread ran\n");
    }
    if (argc > 1 && strcmp(argv[1], "exec") == 0) {
        void *x = mmap(NULL, pg, PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        printf("execute-only map ok=%d\n", x != MAP_FAILED);
    }
    page = mmap(NULL, 8 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (int i = 0; i < 8; i++) {
        memset(page + i * pg, 'a' + i, pg);
    }
    /* Pages 1 and 2 lose all access, page 4 is unmapped, pages 5-7 stay. */
    mprotect(page + pg, 2 * pg, PROT_NONE);
    munmap(page + 4 * pg, pg);
    probe("PROT_NONE page", page + pg + 16);
    probe("second PROT_NONE page", page + 2 * pg + 4088);
    probe("unmapped page", page + 4 * pg + 8);
    probe("across into a PROT_NONE page", page + pg - 4);
    probe("across into an unmapped page", page + 4 * pg - 2);
    probe("page zero", (const char *)8);
    probe("far beyond every mapping", (const char *)(1ULL << 46) + 64);
    probe("top of the address space", (const char *)-64);
    /* Readable again: the bytes written before are still there. */
    mprotect(page + pg, pg, PROT_READ);
    printf("readable again: %llx\n", (unsigned long long)sum(page + pg, 8, 1));
    /* Moved while inaccessible, then made readable. */
    char *moved = mremap(page + 2 * pg, pg, 3 * pg, MREMAP_MAYMOVE);
    probe("moved PROT_NONE page", moved + 8);
    mprotect(moved, pg, PROT_READ);
    printf("moved, readable: %llx\n", (unsigned long long)sum(moved + 8, 8, 1));
    probe("old place of the moved page", page + 2 * pg);
    /* Write-only asks for read access too (as on Linux). */
    mprotect(page + 5 * pg, pg, PROT_WRITE);
    printf("write-only readable: %llx\n", (unsigned long long)sum(page + 5 * pg, 8, 1));
    mprotect(page + 6 * pg, pg, PROT_NONE);
    probe("PROT_NONE after use", page + 6 * pg + 800);
    return 0;
}
