/* Tries to leave the root: absolute symlinks, .., /proc/self/exe. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void show(const char *path) {
    char buf[128] = {0};
    int fd = open(path, O_RDONLY);
    if (fd < 0) { printf("%s: cannot open\n", path); return; }
    read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[strcspn(buf, "\n")] = 0;
    printf("%s: %s\n", path, buf);
}

int main(void) {
    show("/tmp/passwd-link");
    show("/tmp/../../../etc/passwd");
    show("../../../../etc/passwd");
    show("/tmp/dir-link/passwd");
    chdir("/tmp");
    chdir("../../../..");
    char cwd[256];
    getcwd(cwd, sizeof cwd);
    printf("cwd after ../../..: %s\n", cwd);
    char exe[256] = {0};
    readlink("/proc/self/exe", exe, sizeof exe - 1);
    printf("exe: %s\n", exe);
    char l[256] = {0};
    readlink("/tmp/passwd-link", l, sizeof l - 1);
    printf("link text: %s\n", l);
    return 0;
}
