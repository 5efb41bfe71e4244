/* fork + pipe + wait, vfork, and exit statuses. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    int p[2];
    pipe(p);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        const char *m = "message from child";
        write(p[1], m, strlen(m));
        _exit(7);
    }
    close(p[1]);
    char buf[64] = {0};
    ssize_t n, t = 0;
    while ((n = read(p[0], buf + t, sizeof buf - 1 - t)) > 0) t += n;
    int st;
    pid_t w = waitpid(pid, &st, 0);
    printf("read [%s] waited=%d exited=%d status=%d\n", buf, w == pid, WIFEXITED(st), WEXITSTATUS(st));
    pid = vfork();
    if (pid == 0) _exit(9);
    waitpid(pid, &st, 0);
    printf("vfork status=%d\n", WEXITSTATUS(st));
    pid = fork();
    if (pid == 0) { *(volatile int *)0 = 0; _exit(0); }
    waitpid(pid, &st, 0);
    printf("child signaled=%d sig=%d\n", WIFSIGNALED(st), WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st) - 128);
    return 0;
}
