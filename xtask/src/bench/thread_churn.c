/* Thread churn: create a thread that exits at once and join it, N times.
 * Usage: thread_churn N. Prints "RESULT <us per thread> us/thread". */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void *nothing(void *arg) { return arg; }

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 10000;
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < n; i++) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, nothing, NULL) != 0) {
            perror("pthread_create");
            return 1;
        }
        pthread_join(thread, NULL);
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    printf("RESULT %.3f us/thread\n", ns / 1e3 / n);
    return 0;
}
