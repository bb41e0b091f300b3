/* Exit blocked in the futex2 waits: an atexit() handler waits on a futex word nobody
 * changes, with futex_wait(2) (nr 455) or futex_waitv(2) (nr 449), called directly
 * (glibc never does), while a worker thread waits forever on a condition variable.
 * argv[1]: "wait" or "waitv" (no timeout: the exit hangs), "wait-timed" or "waitv-timed"
 * (a one-hour timeout: a wait that ends by itself, so no hang however long it lasts).
 * Main thread, inside exit(): futex_wait (455) or futex_waitv (449), wchan futex_do_wait
 * or futex_wait_multiple; worker: futex (202). READY pid=P on stderr before main returns. */
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
#ifndef SYS_futex_wait
#define SYS_futex_wait 455
#endif
#define FUTEX2_SIZE_U32 0x02
#define FUTEX2_PRIVATE 128

struct waitv {
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t reserved;
};

static const char *mode = "wait";
static uint32_t word;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

static void *worker_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mu);
    for (;;)
        pthread_cond_wait(&cv, &mu);
    return NULL;
}

static void wait_for_word(void)
{
    /* Both calls take an absolute timeout on the given clock. */
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += 3600;
    struct timespec *timeout = strstr(mode, "-timed") ? &deadline : NULL;
    for (;;) {
        long rc;
        if (strncmp(mode, "waitv", 5) == 0) {
            struct waitv w = {0, (uintptr_t)&word, FUTEX2_SIZE_U32 | FUTEX2_PRIVATE, 0};
            rc = syscall(SYS_futex_waitv, &w, 1, 0, timeout, CLOCK_MONOTONIC);
        } else {
            rc = syscall(SYS_futex_wait, &word, 0, 0xffffffffUL, FUTEX2_SIZE_U32 | FUTEX2_PRIVATE,
                         timeout, CLOCK_MONOTONIC);
        }
        if (rc < 0 && timeout) {
            perror("futex wait");
            return;
        }
    }
}

int main(int argc, char **argv)
{
    if (argc > 1)
        mode = argv[1];
    pthread_t worker;
    if (pthread_create(&worker, NULL, worker_main, NULL) != 0) {
        fprintf(stderr, "pthread_create failed\n");
        return 1;
    }
    atexit(wait_for_word);
    dprintf(2, "READY pid=%d\n", (int)getpid());
    return 0;
}
