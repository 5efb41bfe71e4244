/* Syscalls newer than those popek models, and fchmodat2 (452), which glibc 2.39 and later
 * call from fchmodat with AT_SYMLINK_NOFOLLOW. argv[1]: a scratch directory. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(const char *what, long r) {
    printf("%s: %ld %s\n", what, r, r < 0 ? strerror(errno) : "");
}

int main(int argc, char **argv) {
    char file[256], link[256];
    struct stat st;
    snprintf(file, sizeof file, "%s/file", argv[1]);
    snprintf(link, sizeof link, "%s/link", argv[1]);
    close(open(file, O_CREAT | O_WRONLY, 0600));
    symlink(file, link);
    report("fchmodat2 file nofollow", syscall(452, AT_FDCWD, file, 0640, AT_SYMLINK_NOFOLLOW));
    stat(file, &st);
    printf("mode %o\n", st.st_mode & 0777);
    report("fchmodat2 link nofollow", syscall(452, AT_FDCWD, link, 0600, AT_SYMLINK_NOFOLLOW));
    report("fchmodat2 link", syscall(452, AT_FDCWD, link, 0604, 0));
    report("fchmodat2 bad flags", syscall(452, AT_FDCWD, file, 0600, 0x2));
    stat(file, &st);
    printf("mode %o\n", st.st_mode & 0777);
    report("fchmodat nofollow (libc)", fchmodat(AT_FDCWD, file, 0644, AT_SYMLINK_NOFOLLOW));
    /* Inside the root: its own /etc/passwd, never the host's. */
    report("fchmodat2 /../../etc/passwd", syscall(452, AT_FDCWD, "/../../../etc/passwd", 0640, 0));
    stat("/etc/passwd", &st);
    printf("mode %o\n", st.st_mode & 0777);
    chmod("/etc/passwd", 0644);
    report("cachestat", syscall(451, 0, 0, 0, 0));
    report("mseal", syscall(462, 0, 0, 0));
    report("no such syscall", syscall(999));
    unlink(link);
    unlink(file);
    return 0;
}
