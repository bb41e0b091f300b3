/* Hang shape: a pthread blocks forever on a condition variable that is never
 * signalled; an atexit() handler pthread_join()s it; main returns. Expected
 * blocked state (forever): main thread inside exit() -> atexit handler ->
 * pthread_join in futex(2); worker in futex(2) (pthread_cond_wait); both
 * wchan futex_do_wait. READY pid=P on stderr before main returns.
 * With a DIR argument, it first maps a file it creates in DIR under a name that is
 * not UTF-8 (an agent must still find its exit phase). */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
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

static int map_odd_file(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/odd-\xff\xfe.so", dir);
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0 || ftruncate(fd, 4096) != 0)
        return -1;
    return mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED ? -1 : 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && map_odd_file(argv[1]) != 0) {
        perror("mapping the odd file");
        return 1;
    }
    if (pthread_create(&worker, NULL, worker_main, NULL) != 0) {
        fprintf(stderr, "pthread_create failed\n");
        return 1;
    }
    atexit(join_worker);
    dprintf(2, "READY pid=%d\n", (int)getpid());
    usleep(100 * 1000);
    return 0;
}
