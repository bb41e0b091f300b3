/* Hang shape: a pthread blocks forever on a condition variable that is never
 * signalled; an atexit() handler pthread_join()s it; main returns. Expected
 * blocked state (forever): main thread inside exit() -> atexit handler ->
 * pthread_join in futex(2); worker in futex(2) (pthread_cond_wait); both
 * wchan futex_do_wait. READY pid=P on stderr before main returns. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static pthread_t worker;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int go;

static void *worker_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mu);
    while (!go)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void join_worker(void)
{
    pthread_join(worker, NULL);
}

int main(void)
{
    if (pthread_create(&worker, NULL, worker_main, NULL) != 0) {
        fprintf(stderr, "pthread_create failed\n");
        return 1;
    }
    atexit(join_worker);
    dprintf(2, "READY pid=%d\n", (int)getpid());
    usleep(100 * 1000);
    return 0;
}
