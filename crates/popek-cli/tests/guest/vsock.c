/* Guest side of popek's vsock test (static riscv64 binary on a test disk).
 *   vsock listen PORT        accept one connection, read a line, answer "pong:<line>"
 *   vsock connect PORT MSG   connect to the host (CID 2), send MSG, print the reply */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <linux/vm_sockets.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char buf[256];
    struct sockaddr_vm a = {.svm_family = AF_VSOCK};
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0 || argc < 3) { perror("socket"); return 1; }
    a.svm_port = atoi(argv[2]);
    if (!strcmp(argv[1], "listen")) {
        a.svm_cid = VMADDR_CID_ANY;
        if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 1)) { perror("bind"); return 1; }
        printf("LISTENING %d\n", a.svm_port);
        fflush(stdout);
        int c = accept(s, NULL, NULL);
        if (c < 0) { perror("accept"); return 1; }
        ssize_t n = read(c, buf, sizeof buf - 1);
        if (n <= 0) { perror("read"); return 1; }
        buf[n] = 0;
        buf[strcspn(buf, "\n")] = 0;
        char reply[300];
        int m = snprintf(reply, sizeof reply, "pong:%s\n", buf);
        if (write(c, reply, m) != m) { perror("write"); return 1; }
        close(c);
        printf("SERVED %s\n", buf);
        return 0;
    }
    a.svm_cid = VMADDR_CID_HOST;
    if (argc < 4 || connect(s, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
    if (write(s, argv[3], strlen(argv[3])) < 0) { perror("write"); return 1; }
    shutdown(s, SHUT_WR);
    ssize_t n, got = 0;
    while ((n = read(s, buf + got, sizeof buf - 1 - got)) > 0) got += n;
    buf[got] = 0;
    printf("REPLY %s\n", buf);
    return 0;
}
