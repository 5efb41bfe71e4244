/* Loads from memory the program may not read and stores to memory it may not write, from a
 * loop hot enough to be translated: each must raise SIGSEGV at the right address, change
 * nothing, and memory made accessible again must read back what was written before; code
 * written, made executable, rewritten and made executable again runs as rewritten. Under
 * popek's JIT these accesses use host memory directly and rely on the host's protection,
 * which popek keeps as strict as the guest's. With the argument "thread", a second thread
 * exists first (the host then stops mirroring, and accesses check popek's TLB); with "exec",
 * an execute-only mapping does the same; with "rwx", memory both writable and executable
 * stops the mirroring of writes. */
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

/* Store `v` to the 8-byte words at p, p + step, ..., n of them (an explicit `sd`). */
__attribute__((noipa)) void fill(char *p, long step, int n, uint64_t v) {
    for (int i = 0; i < n; i++) {
        __asm__ volatile("sd %0, 0(%1)" : : "r"(v), "r"(p + i * step) : "memory");
    }
}

/* Three loads, then three stores, through one base register each (as in a function's prologue
 * and epilogue), from `src` to `dst`. */
__attribute__((noipa)) void copy3(char *dst, const char *src) {
    __asm__ volatile("ld t0, 0(%1)\n\tld t1, 8(%1)\n\tld t2, 16(%1)\n\t"
                     "sd t0, 0(%0)\n\tsd t1, 8(%0)\n\tsd t2, 16(%0)"
                     :
                     : "r"(dst), "r"(src)
                     : "t0", "t1", "t2", "memory");
}

static char *page;
/* Where a probe's loop accesses: [0] on all its iterations but the last, [1] on that one
 * (volatile, so the compiler cannot peel the last iteration off the hot loop). */
static char *volatile target[2];

/* Call `sum` on readable memory often enough for its code and this loop's to be translated,
 * then, from the same loop, on `bad`. */
static void probe(const char *what, const char *bad) {
    fault_addr = 0;
    target[0] = page;
    target[1] = (char *)bad;
    if (sigsetjmp(env, 1) == 0) {
        uint64_t s = 0;
        for (int i = 0; i <= 2000; i++) {
            s += sum(target[i == 2000], 8, 16);
        }
        printf("%s: no fault (read %llx)\n", what, (unsigned long long)s);
    } else {
        printf("%s: SIGSEGV at bad%+ld\n", what, (long)(fault_addr - (uintptr_t)bad));
    }
}

/* The same for stores of `v`. */
static void store_probe(const char *what, char *bad, uint64_t v) {
    fault_addr = 0;
    target[0] = page + 7 * 4096;
    target[1] = bad;
    if (sigsetjmp(env, 1) == 0) {
        for (int i = 0; i <= 2000; i++) {
            fill(target[i == 2000], 8, 16, v);
        }
        printf("%s: no fault\n", what);
    } else {
        printf("%s: SIGSEGV at bad%+ld\n", what, (long)(fault_addr - (uintptr_t)bad));
    }
}

/* copy3 warmed up, then from `src` to `dst`: the run faults in its middle. */
static void run_probe(const char *what, char *dst, const char *src, const char *bad) {
    static char *volatile dsts[2], *volatile srcs[2];
    dsts[0] = page + 7 * 4096 + 1024;
    srcs[0] = page + 7 * 4096;
    dsts[1] = dst;
    srcs[1] = (char *)src;
    fault_addr = 0;
    if (sigsetjmp(env, 1) == 0) {
        for (int i = 0; i <= 2000; i++) {
            copy3(dsts[i == 2000], srcs[i == 2000]);
        }
        printf("%s: no fault\n", what);
    } else {
        printf("%s: SIGSEGV at bad%+ld\n", what, (long)(fault_addr - (uintptr_t)bad));
    }
}

/* addi a0, zero, N; ret */
static void put_code(uint32_t *code, int n) {
    code[0] = 0x00000513 | (uint32_t)n << 20;
    code[1] = 0x00008067;
    __builtin___clear_cache((char *)code, (char *)(code + 2));
}

/* Code written, run, rewritten and run again: through mprotect (W^X), or in place in `rwx`
 * memory. */
static void rewrite_code(int rwx) {
    long pg = sysconf(_SC_PAGESIZE);
    int w = PROT_READ | PROT_WRITE, x = PROT_READ | PROT_EXEC;
    uint32_t *code = mmap(NULL, pg, rwx ? w | x : w, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int (*f)(void) = (int (*)(void))code;
    int sum = 0;
    for (int round = 1; round <= 3; round++) {
        if (!rwx) mprotect(code, pg, w);
        put_code(code, round);
        if (!rwx) mprotect(code, pg, x);
        for (int i = 0; i < 1000; i++) sum += f();
    }
    printf("rewritten code returned %d\n", sum);
    store_probe("store to code", (char *)code, 0);
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
    if (argc > 1 && strcmp(argv[1], "rwx") == 0) {
        rewrite_code(1);
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
    /* Stores: to read-only, PROT_NONE and unmapped pages, across into a PROT_NONE page from
     * a writable one (the bytes before the boundary must not change), to code. */
    mprotect(page + 3 * pg, pg, PROT_READ);
    store_probe("store to a read-only page", page + 3 * pg + 8, 1);
    store_probe("store to a PROT_NONE page", page + 6 * pg, 2);
    store_probe("store to an unmapped page", page + 4 * pg + 64, 3);
    store_probe("store across into a PROT_NONE page", page + 6 * pg - 4, 4);
    printf("before the boundary: %llx\n", (unsigned long long)sum(page + 6 * pg - 8, 8, 1));
    printf("read-only page unchanged: %llx\n", (unsigned long long)sum(page + 3 * pg, 8, 1));
    store_probe("store to page zero", (char *)16, 5);
    store_probe("store far beyond every mapping", (char *)(1ULL << 46), 6);
    store_probe("store to this program's code", (char *)(uintptr_t)sum, 7);
    mprotect(page + 3 * pg, pg, PROT_READ | PROT_WRITE);
    fill(page + 3 * pg, 8, 1, 0x1122334455667788ULL);
    printf("writable again: %llx\n", (unsigned long long)sum(page + 3 * pg, 8, 1));
    rewrite_code(0);
    /* Runs of accesses faulting in their middle: the accesses before the fault are done. */
    memset(page + 7 * pg, 0x77, 64);
    memset(page + 5 * pg, 0x55, pg);
    run_probe("load run into a PROT_NONE page", page + 7 * pg + 512, page + 6 * pg - 8, page + 6 * pg);
    printf("nothing stored: %llx\n", (unsigned long long)sum(page + 7 * pg + 512, 8, 1));
    run_probe("store run into a PROT_NONE page", page + 6 * pg - 16, page + 7 * pg, page + 6 * pg);
    printf("stored before the fault: %llx %llx\n", (unsigned long long)sum(page + 6 * pg - 16, 8, 1),
           (unsigned long long)sum(page + 6 * pg - 8, 8, 1));
    return 0;
}
