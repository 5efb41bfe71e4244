/* File-system calls inside a scratch directory given as argv[1]. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

static int cmp(const void *a, const void *b) { return strcmp(*(char **)a, *(char **)b); }

int main(int argc, char **argv) {
    if (argc < 2 || chdir(argv[1]) != 0) { perror("chdir"); return 1; }
    mkdir("d", 0755);
    int fd = open("d/a.txt", O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd < 0) { perror("open"); return 1; }
    struct iovec iov[2] = {{"hello ", 6}, {"files\n", 6}};
    printf("writev=%zd\n", writev(fd, iov, 2));
    printf("pwrite=%zd\n", pwrite(fd, "H", 1, 0));
    close(fd);
    fd = open("d/a.txt", O_RDONLY);
    char buf[64] = {0};
    printf("read=%zd [%s]\n", read(fd, buf, sizeof buf - 1), buf);
    printf("lseek=%ld\n", (long)lseek(fd, 2, SEEK_SET));
    memset(buf, 0, sizeof buf);
    printf("pread=%zd [%s]\n", pread(fd, buf, 4, 6), buf);
    int fd2 = dup(fd);
    printf("dup ok=%d cloexec=%d\n", fd2 > fd, fcntl(fd2, F_GETFD));
    fcntl(fd2, F_SETFD, FD_CLOEXEC);
    printf("cloexec now=%d\n", fcntl(fd2, F_GETFD));
    close(fd2);
    struct stat st;
    fstat(fd, &st);
    printf("fstat size=%ld reg=%d mode=%o\n", (long)st.st_size, S_ISREG(st.st_mode), st.st_mode & 0777);
    close(fd);
    printf("stat=%d size=%ld\n", stat("d/a.txt", &st), (long)st.st_size);
    printf("symlink=%d\n", symlink("a.txt", "d/link"));
    char l[64] = {0};
    printf("readlink=%zd [%s]\n", readlink("d/link", l, sizeof l), l);
    printf("lstat link=%d islnk=%d\n", lstat("d/link", &st), S_ISLNK(st.st_mode));
    printf("stat via link size=%d %ld\n", stat("d/link", &st), (long)st.st_size);
    printf("access=%d missing=%d errno=%d\n", access("d/a.txt", R_OK), access("d/nope", F_OK), errno);
    printf("rename=%d\n", rename("d/a.txt", "d/b.txt"));
    printf("link=%d\n", link("d/b.txt", "d/c.txt"));
    printf("chmod=%d\n", chmod("d/c.txt", 0600));
    stat("d/b.txt", &st);
    printf("mode after chmod=%o nlink=%ld\n", st.st_mode & 0777, (long)st.st_nlink);
    printf("truncate=%d\n", truncate("d/b.txt", 3));
    stat("d/b.txt", &st);
    printf("size after truncate=%ld\n", (long)st.st_size);
    DIR *d = opendir("d");
    char *names[16];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 16) names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof *names, cmp);
    for (int i = 0; i < n; i++) printf("entry %s\n", names[i]);
    char cwd[256];
    chdir("d");
    getcwd(cwd, sizeof cwd);
    printf("cwd ends with /d: %d\n", strcmp(cwd + strlen(cwd) - 2, "/d") == 0);
    chdir("..");
    printf("unlink=%d %d %d\n", unlink("d/b.txt"), unlink("d/c.txt"), unlink("d/link"));
    printf("rmdir=%d\n", rmdir("d"));
    printf("open missing=%d errno=%d\n", open("d/zz", O_RDONLY), errno);
    int p[2];
    printf("pipe=%d\n", pipe(p));
    write(p[1], "xyz", 3);
    memset(buf, 0, sizeof buf);
    printf("pipe read=%zd [%s]\n", read(p[0], buf, sizeof buf), buf);
    printf("isatty(pipe)=%d\n", isatty(p[0]));
    int z = open("/dev/null", O_WRONLY);
    printf("/dev/null write=%zd\n", write(z, "abc", 3));
    return 0;
}
