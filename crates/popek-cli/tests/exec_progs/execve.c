/* execve of another program in the root. */
#include <errno.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char *args[] = {"renamed-hello", "one", "two", NULL};
    char *env[] = {"POPEK_FROM_EXECVE=1", NULL};
    printf("missing=%d errno=%d\n", execve("/bin/does-not-exist", args, env), errno);
    fflush(stdout);
    execve(argc > 1 ? argv[1] : "/bin/hello", args, env);
    perror("execve");
    return 1;
}
