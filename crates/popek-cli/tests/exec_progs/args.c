/* argv, environment and auxiliary vector as the program sees them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>

int main(int argc, char **argv, char **envp) {
    printf("argc=%d\n", argc);
    for (int i = 1; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    int n = 0;
    for (char **e = envp; *e; e++) n++;
    printf("env count=%d\n", n);
    for (char **e = envp; *e; e++)
        if (strncmp(*e, "POPEK_", 6) == 0) printf("env %s\n", *e);
    printf("pagesz=%lu clktck=%lu secure=%lu\n", getauxval(AT_PAGESZ), getauxval(AT_CLKTCK), getauxval(AT_SECURE));
    printf("uid ok=%d gid ok=%d\n", getauxval(AT_UID) == getuid(), getauxval(AT_EGID) == getegid());
    printf("phent=%lu phdr set=%d entry set=%d\n", getauxval(AT_PHENT), getauxval(AT_PHDR) != 0, getauxval(AT_ENTRY) != 0);
    const unsigned char *r = (const unsigned char *)getauxval(AT_RANDOM);
    printf("random set=%d\n", r != NULL);
    printf("platform=%lu\n", getauxval(AT_PLATFORM));
    const char *fn = (const char *)getauxval(AT_EXECFN);
    printf("execfn has name=%d\n", fn && strstr(fn, "args") != NULL);
    unsigned long hw = getauxval(AT_HWCAP);
    printf("hwcap:");
    for (int i = 0; i < 26; i++) if (hw & (1ul << i)) printf("%c", 'A' + i);
    printf("\n");
    return 0;
}
