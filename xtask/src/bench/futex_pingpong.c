/* Two threads hand a token back and forth through one futex word: each hand-off is a
 * FUTEX_WAKE by one side and a FUTEX_WAIT (a tracked sleep) by the other.
 * Usage: futex_pingpong ROUND_TRIPS. Prints "RESULT <us per round trip> us/roundtrip". */
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static _Atomic int turn; /* 0: ping's turn, 1: pong's turn */
static long rounds;

static void wait_for(int mine) {
    int seen;
    while ((seen = atomic_load(&turn)) != mine)
        syscall(SYS_futex, &turn, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
}

static void hand_over(int other) {
    atomic_store(&turn, other);
    syscall(SYS_futex, &turn, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static void *pong(void *unused) {
    (void)unused;
    for (long i = 0; i < rounds; i++) {
        wait_for(1);
        hand_over(0);
    }
    return NULL;
}

int main(int argc, char **argv) {
    rounds = argc > 1 ? atol(argv[1]) : 100000;
    pthread_t thread;
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    if (pthread_create(&thread, NULL, pong, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    for (long i = 0; i < rounds; i++) {
        hand_over(1);
        wait_for(0);
    }
    pthread_join(thread, NULL);
    clock_gettime(CLOCK_MONOTONIC, &end);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    printf("RESULT %.4f us/roundtrip\n", ns / 1e3 / rounds);
    return 0;
}
