/* Host signals reach guest handlers during blocking syscalls: SA_RESTART restarts the read,
 * without it read fails with EINTR; SIGCHLD handlers run; SIGTERM's default kills. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int alarms, chld;
static void on_alarm(int sig) { (void)sig; alarms++; }
static void on_chld(int sig) { (void)sig; chld++; }

static void arm(int restart) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = restart ? SA_RESTART : 0;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 0}, {0, 100000}};
    setitimer(ITIMER_REAL, &it, NULL);
}

static void round(int restart) {
    int p[2];
    pipe(p);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        usleep(400000);
        write(p[1], "late", 4);
        _exit(0);
    }
    close(p[1]);
    arm(restart);
    char buf[8] = {0};
    ssize_t n = read(p[0], buf, sizeof buf - 1);
    printf("restart=%d read=%zd errno=%s buf=[%s] alarms=%d\n", restart, n, n < 0 && errno == EINTR ? "EINTR" : "-", n > 0 ? buf : "", alarms);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) ;
    close(p[0]);
}

int main(void) {
    signal(SIGCHLD, on_chld);
    round(1);
    round(0);
    printf("sigchld seen=%d\n", chld > 0);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) { pause(); _exit(0); }
    usleep(50000);
    kill(pid, SIGTERM);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) ;
    printf("child killed by signal %d\n", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
    return 0;
}
