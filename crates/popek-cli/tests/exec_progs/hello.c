/* Prints its arguments count and name, exits 3. */
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) { printf("hello, world %d %s\n", argc, argv[0]); char *p = malloc(100000); p[5]=1; free(p); return 3; }
