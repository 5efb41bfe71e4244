/* Mappings that change one page at a time, each followed by the guest kernel's single-address
 * sfence.vma: a page replaced in place (MAP_FIXED), made read-only then written (SIGSEGV
 * expected), copied on write after fork in parent and child, and code replaced under the same
 * address. Every read checks what the latest mapping holds; a stale translation anywhere
 * prints MISMATCH. Prints "remap ok" at the end. */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096
#define PAGES 64
#define ROUNDS 200

static int bad;
static sigjmp_buf env;

static void check(const char *what, int round, long got, long want) {
    if (got != want && bad++ < 10)
        printf("MISMATCH %s round %d: got %ld, want %ld\n", what, round, got, want);
}

static void segv(int sig) {
    (void)sig;
    siglongjmp(env, 1);
}

/* Replace single pages of a region, in place, with new anonymous pages holding new values. */
static void replace_pages(void) {
    volatile long *p = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    long want[PAGES];
    for (int i = 0; i < PAGES; i++)
        p[i * PAGE / 8] = want[i] = i;
    for (int r = 0; r < ROUNDS; r++) {
        int i = (r * 7) % PAGES;
        /* Read it (a translation is cached), then replace it. */
        check("before replace", r, p[i * PAGE / 8], want[i]);
        void *at = (void *)(p + i * PAGE / 8);
        if (mmap(at, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
                 0) != at) {
            printf("MISMATCH mmap fixed failed\n");
            bad++;
            return;
        }
        check("fresh page", r, p[i * PAGE / 8], 0);
        p[i * PAGE / 8] = want[i] = 1000L * r + i;
        check("written page", r, p[i * PAGE / 8], want[i]);
    }
    for (int i = 0; i < PAGES; i++)
        check("at the end", i, p[i * PAGE / 8], want[i]);
    munmap((void *)p, PAGES * PAGE);
}

/* Make single pages read-only and back: a write to a read-only page must fault even right after
 * a write that filled a writable translation. */
static void protect_pages(void) {
    volatile long *p = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    signal(SIGSEGV, segv);
    int faults = 0;
    for (int r = 0; r < ROUNDS; r++) {
        int i = (r * 5) % PAGES;
        p[i * PAGE / 8] = r;
        mprotect((void *)(p + i * PAGE / 8), PAGE, PROT_READ);
        if (sigsetjmp(env, 1) == 0) {
            p[i * PAGE / 8] = -1;
        } else {
            faults++;
        }
        check("read-only page", r, p[i * PAGE / 8], r);
        mprotect((void *)(p + i * PAGE / 8), PAGE, PROT_READ | PROT_WRITE);
        p[i * PAGE / 8] = r + 1;
        check("writable again", r, p[i * PAGE / 8], r + 1);
    }
    check("faults", 0, faults, ROUNDS);
    signal(SIGSEGV, SIG_DFL);
    munmap((void *)p, PAGES * PAGE);
}

/* Copy on write: after fork, parent and child each write every page and must see only their
 * own values. */
static void copy_on_write(void) {
    volatile long *p = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (int r = 0; r < 20; r++) {
        for (int i = 0; i < PAGES; i++)
            p[i * PAGE / 8] = i;
        pid_t c = fork();
        if (c == 0) {
            for (int i = 0; i < PAGES; i++)
                p[i * PAGE / 8] = -i - 1;
            int wrong = 0;
            for (int i = 0; i < PAGES; i++)
                wrong += p[i * PAGE / 8] != -i - 1;
            _exit(wrong ? 1 : 0);
        }
        for (int i = 0; i < PAGES; i++)
            p[i * PAGE / 8] = 100 + i;
        int st;
        waitpid(c, &st, 0);
        check("child saw its own pages", r, WIFEXITED(st) ? WEXITSTATUS(st) : -1, 0);
        for (int i = 0; i < PAGES; i++)
            check("parent page", r, p[i * PAGE / 8], 100 + i);
    }
    munmap((void *)p, PAGES * PAGE);
}

/* Code: files holding "li a0, N; ret" for N = 1 and 2, mapped in turn at one address. Each is
 * run once elsewhere first, so the kernel has made its page clean for the instruction cache and
 * does not fence.i when mapping it again: only its mapping change (a single-address sfence.vma)
 * tells the harts, and whatever a JIT keeps by virtual address must follow it. */
static void replace_code(void) {
    int fds[2];
    for (int k = 0; k < 2; k++) {
        char name[] = "/tmp/remap-codeX";
        name[15] = '0' + k;
        unsigned code[PAGE / 4] = {0x00000513 | ((unsigned)(k + 1) << 20), /* li a0, k+1 */
                                   0x00008067};                            /* ret */
        fds[k] = open(name, O_RDWR | O_CREAT | O_TRUNC, 0700);
        if (fds[k] < 0 || write(fds[k], code, PAGE) != PAGE) {
            printf("MISMATCH cannot write %s\n", name);
            bad++;
            return;
        }
        void *warm = mmap(NULL, PAGE, PROT_READ | PROT_EXEC, MAP_PRIVATE, fds[k], 0);
        check("warm-up", k, ((long (*)(void))warm)(), k + 1);
        munmap(warm, PAGE);
    }
    void *at = (void *)0x20000000;
    for (int r = 0; r < 40; r++) {
        int k = r % 2;
        if (mmap(at, PAGE, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_FIXED, fds[k], 0) != at) {
            printf("MISMATCH mmap code failed\n");
            bad++;
            return;
        }
        /* Often enough for a JIT to translate it and find it through its jump cache. */
        long (*f)(void) = (long (*)(void))at;
        long sum = 0;
        for (int n = 0; n < 300; n++)
            sum += f();
        check("code", r, sum, 300L * (k + 1));
    }
}

int main(void) {
    replace_pages();
    protect_pages();
    copy_on_write();
    replace_code();
    if (bad)
        return 1;
    printf("remap ok\n");
    return 0;
}
