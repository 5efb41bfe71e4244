/* hostile: a guest trying to get out of popek exec's sandbox. Each mode prints one line per
 * attempt with the result, so the test can compare the whole output.
 *
 *   hostile preload SO       execve with loader variables naming an x86-64 shared object
 *   hostile signals VICTIM   signals, limits and scheduler calls on a host process and on its own
 *   hostile nodes            device nodes, set-uid and set-gid bits
 *   hostile fds              which descriptors above 2 it inherited
 *   hostile memory           allocate and touch 16 MiB blocks until refused
 *   hostile bigmap           one 8 GiB writable mapping
 *   hostile wait             print "ready" and sleep two seconds (for the host to inspect popek)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *err(long r) {
    static char buf[64];
    if (r >= 0) {
        snprintf(buf, sizeof buf, "ok");
        return buf;
    }
    switch (errno) {
    case ESRCH: return "ESRCH";
    case EPERM: return "EPERM";
    case EINVAL: return "EINVAL";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EBADF: return "EBADF";
    default: snprintf(buf, sizeof buf, "errno %d", errno); return buf;
    }
}

static int preload(const char *so) {
    char a[512], b[512], c[512];
    int fd = open("/evil.so", O_RDONLY); /* kept open: fd for LD_PRELOAD=/proc/self/fd/N */
    snprintf(a, sizeof a, "LD_PRELOAD=%s:/proc/self/fd/%d:./evil.so", so, fd);
    snprintf(b, sizeof b, "LD_AUDIT=%s", so);
    snprintf(c, sizeof c, "LD_LIBRARY_PATH=/");
    char *envp[] = {a, b, c, "GLIBC_TUNABLES=glibc.malloc.check=3", "POPEK_GUEST_VAR=kept", NULL};
    char *argv[] = {"args", "after-exec", NULL};
    chdir("/");
    execve("/bin/args", argv, envp);
    printf("execve failed: %s\n", err(-1));
    return 1;
}

static volatile sig_atomic_t got_usr1, got_usr2;
static void on_usr1(int s) { (void)s; got_usr1++; }
static void on_usr2(int s) { (void)s; got_usr2++; }

static pid_t child_that_waits(void) {
    pid_t p = fork();
    if (p == 0) {
        for (;;)
            pause();
    }
    return p;
}

static void reap(const char *what, pid_t p) {
    int st = 0;
    waitpid(p, &st, 0);
    printf("%s: %s %d\n", what, WIFSIGNALED(st) ? "killed by" : "exited", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
}

static int signals(pid_t victim) {
    struct rlimit rl = {16, 16};
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    printf("kill victim 0: %s\n", err(kill(victim, 0)));
    printf("kill victim TERM: %s\n", err(kill(victim, SIGTERM)));
    printf("kill 1 TERM: %s\n", err(kill(1, SIGTERM)));
    printf("tkill victim: %s\n", err(syscall(SYS_tkill, victim, SIGTERM)));
    printf("tgkill victim: %s\n", err(syscall(SYS_tgkill, victim, victim, SIGTERM)));
    printf("prlimit victim: %s\n", err(prlimit(victim, RLIMIT_NOFILE, &rl, NULL)));
    printf("setaffinity victim: %s\n", err(sched_setaffinity(victim, sizeof set, &set)));
    printf("getpgid victim: %s\n", err(getpgid(victim)));
    printf("getsid victim: %s\n", err(getsid(victim)));
    printf("prlimit self: %s\n", err(prlimit(0, RLIMIT_NOFILE, NULL, &rl)));

    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    printf("kill 0 USR1: %s\n", err(kill(0, SIGUSR1)));
    printf("kill -pgrp USR2: %s\n", err(kill(-getpgrp(), SIGUSR2)));
    printf("kill -victim's group: %s\n", err(kill(-victim, SIGTERM)));
    usleep(10000);
    printf("own signals: usr1=%d usr2=%d\n", (int)got_usr1, (int)got_usr2);

    pid_t c = child_that_waits();
    printf("kill child KILL: %s\n", err(kill(c, SIGKILL)));
    reap("child", c);
    pid_t c1 = child_that_waits(), c2 = child_that_waits();
    printf("kill -1 KILL: %s\n", err(kill(-1, SIGKILL)));
    reap("child 1", c1);
    reap("child 2", c2);
    printf("kill -1 again: %s\n", err(kill(-1, SIGKILL)));
    printf("caller alive\n");
    return 0;
}

static void show_mode(const char *what, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0)
        printf("%s: stat failed\n", what);
    else
        printf("%s: %04o\n", what, (unsigned)(st.st_mode & 07777));
}

static int nodes(void) {
    unlink("/tmp/kmsg");
    unlink("/tmp/sda");
    unlink("/tmp/fifo");
    unlink("/tmp/suid-mknod");
    unlink("/tmp/suid-open");
    unlink("/tmp/suid-chmod");
    umask(0);
    printf("mknod char 1:11: %s\n", err(mknod("/tmp/kmsg", S_IFCHR | 0600, makedev(1, 11))));
    printf("mknod block 8:0: %s\n", err(mknod("/tmp/sda", S_IFBLK | 0600, makedev(8, 0))));
    printf("mknod fifo: %s\n", err(mknod("/tmp/fifo", S_IFIFO | 0600, 0)));
    printf("mknod file 04755: %s\n", err(mknod("/tmp/suid-mknod", S_IFREG | 04755, 0)));
    show_mode("mknod'd file", "/tmp/suid-mknod");
    int fd = open("/tmp/suid-open", O_CREAT | O_WRONLY, 06755);
    printf("open O_CREAT 06755: %s\n", err(fd));
    show_mode("created file", "/tmp/suid-open");
    printf("fchmod 06755: %s\n", err(fchmod(fd, 06755)));
    show_mode("after fchmod", "/tmp/suid-open");
    close(fd);
    close(open("/tmp/suid-chmod", O_CREAT | O_WRONLY, 0644));
    printf("chmod 04755: %s\n", err(chmod("/tmp/suid-chmod", 04755)));
    show_mode("after chmod", "/tmp/suid-chmod");
    printf("fchmodat 02755: %s\n", err(fchmodat(AT_FDCWD, "/tmp/suid-chmod", 02755, 0)));
    show_mode("after fchmodat", "/tmp/suid-chmod");
    return 0;
}

static int fds(void) {
    printf("inherited:");
    for (int fd = 3; fd < 1024; fd++)
        if (fcntl(fd, F_GETFD) >= 0)
            printf(" %d", fd);
    printf("\n");
    return 0;
}

static int memory(void) {
    size_t mib = 0;
    for (;;) {
        char *p = malloc(16 << 20);
        if (!p)
            break;
        memset(p, 1, 16 << 20);
        mib += 16;
        if (mib > (64 << 10))
            break;
    }
    printf("allocated %zu MiB before ENOMEM\n", mib);
    return 0;
}

static int bigmap(void) {
    void *p = mmap(NULL, 8UL << 30, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("mmap 8 GiB: %s\n", err(p == MAP_FAILED ? -1 : 0));
    void *q = mmap(NULL, 8UL << 30, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("mmap 8 GiB PROT_NONE: %s\n", err(q == MAP_FAILED ? -1 : 0));
    printf("mprotect all of it writable: %s\n", err(mprotect(q, 8UL << 30, PROT_READ | PROT_WRITE)));
    printf("mprotect 1 MiB writable: %s\n", err(mprotect(q, 1 << 20, PROT_READ | PROT_WRITE)));
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2)
        return 2;
    if (!strcmp(argv[1], "preload") && argc > 2)
        return preload(argv[2]);
    if (!strcmp(argv[1], "signals") && argc > 2)
        return signals(atoi(argv[2]));
    if (!strcmp(argv[1], "nodes"))
        return nodes();
    if (!strcmp(argv[1], "fds"))
        return fds();
    if (!strcmp(argv[1], "memory"))
        return memory();
    if (!strcmp(argv[1], "bigmap"))
        return bigmap();
    if (!strcmp(argv[1], "wait")) {
        printf("ready\n");
        sleep(2);
        return 0;
    }
    return 2;
}
