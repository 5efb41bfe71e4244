/* A SIGSEGV handler that recovers with siglongjmp, and a SIGILL handler. */
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static sigjmp_buf env;
static volatile void *fault_addr;
static volatile int got;

static void handler(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    got = sig;
    fault_addr = si->si_addr;
    siglongjmp(env, 1);
}

static void usr1(int sig) { got = sig; }

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGILL, &sa, NULL);
    char *p = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (int i = 0; i < 3; i++) {
        if (sigsetjmp(env, 1) == 0) {
            p[i] = 1;
            printf("no fault?\n");
        } else {
            printf("recovered %d: sig=%d addr ok=%d\n", i, got, fault_addr == p + i);
        }
    }
    if (sigsetjmp(env, 1) == 0) {
        __asm__ volatile(".word 0");
    } else {
        printf("recovered from SIGILL: sig=%d\n", got);
    }
    signal(SIGUSR1, usr1);
    got = 0;
    raise(SIGUSR1);
    printf("usr1 handled=%d\n", got == SIGUSR1);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR1);
    sigprocmask(SIG_BLOCK, &s, NULL);
    got = 0;
    kill(getpid(), SIGUSR1);
    printf("blocked: got=%d\n", got);
    sigprocmask(SIG_UNBLOCK, &s, NULL);
    for (volatile int i = 0; i < 1000 && !got; i++) ;
    printf("after unblock: got=%d\n", got);
    stack_t ss = {.ss_sp = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), .ss_size = 65536};
    printf("sigaltstack=%d\n", sigaltstack(&ss, NULL));
    return 0;
}
