/* Non-blocking syscall storm: N one-byte writes to /dev/null, none of which sleeps.
 * Usage: syscall_storm N. Prints "RESULT <ns per write> ns/syscall". */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    int fd = open("/dev/null", O_WRONLY);
    if (fd < 0) {
        perror("/dev/null");
        return 1;
    }
    char byte = 'x';
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < n; i++) {
        if (write(fd, &byte, 1) != 1) {
            perror("write");
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    printf("RESULT %.2f ns/syscall\n", ns / n);
    return 0;
}
