/* A host's quiet majority, for scale tests and the bench: idle thread pools and idle
 * pipe readers, all asleep in waits that never end and that are no hang.
 *
 *   idle_population PROCESSES THREADS READERS
 *
 * forks PROCESSES pools of THREADS threads each (the main thread included), every thread
 * in an untimed futex wait as a pool worker waits for work, and READERS pairs of a reader
 * blocked in read(2) on a pipe and its writer, alive and idle in pause(2) (`sleep infinity
 * | reader`). Prints "READY pid=PID" on stderr once every child has set itself up; the
 * harness then checks in /proc that every thread really sleeps. Children die with this
 * process (PR_SET_PDEATHSIG), so killing it ends the population. */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Idle threads touch a few pages of stack: 64 KiB keeps 20,000 of them small. */
#define STACK_BYTES (64 * 1024)

static int never;
static int started;
/* This process: the parent of the children it forks. */
static pid_t me;

static void wait_forever(void) {
    for (;;)
        syscall(SYS_futex, &never, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
}

static void *worker(void *arg) {
    (void)arg;
    __atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
    wait_forever();
    return NULL;
}

/* A child that dies with its parent; its READY byte goes to `ready`. */
static pid_t child(const char *name) {
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(1);
    }
    if (pid == 0) {
        pid_t parent = me;
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        /* The parent may have died before the line above. */
        if (getppid() != parent)
            _exit(1);
        prctl(PR_SET_NAME, name);
        me = getpid();
    }
    return pid;
}

static void say_ready(int ready) {
    if (write(ready, "r", 1) != 1)
        _exit(1);
    close(ready);
}

static void pool(int threads, int ready) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, STACK_BYTES);
    for (int i = 1; i < threads; i++) {
        pthread_t thread;
        if (pthread_create(&thread, &attr, worker, NULL) != 0)
            _exit(1);
    }
    while (__atomic_load_n(&started, __ATOMIC_SEQ_CST) < threads - 1)
        usleep(1000);
    say_ready(ready);
    wait_forever();
}

static void reader_pair(int ready) {
    int fds[2];
    if (pipe(fds) != 0)
        _exit(1);
    if (child("idle-writer") == 0) {
        close(fds[0]);
        close(ready);
        for (;;)
            pause();
    }
    close(fds[1]);
    prctl(PR_SET_NAME, "idle-reader");
    say_ready(ready);
    char buffer[4096];
    /* The writer never writes: this read never returns. */
    for (;;)
        if (read(fds[0], buffer, sizeof buffer) <= 0)
            _exit(1);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: idle_population PROCESSES THREADS READERS\n");
        return 2;
    }
    int processes = atoi(argv[1]), threads = atoi(argv[2]), readers = atoi(argv[3]);
    if (processes < 0 || threads < 1 || readers < 0) {
        fprintf(stderr, "idle_population: bad sizes\n");
        return 2;
    }
    me = getpid();
    int ready[2];
    if (pipe(ready) != 0) {
        perror("pipe");
        return 1;
    }
    for (int i = 0; i < processes; i++)
        if (child("idle-pool") == 0) {
            close(ready[0]);
            pool(threads, ready[1]);
        }
    for (int i = 0; i < readers; i++)
        if (child("idle-reader") == 0) {
            close(ready[0]);
            reader_pair(ready[1]);
        }
    close(ready[1]);
    char byte;
    for (int i = 0; i < processes + readers; i++)
        if (read(ready[0], &byte, 1) != 1) {
            fprintf(stderr, "idle_population: a child failed to start\n");
            return 1;
        }
    fprintf(stderr, "READY pid=%d\n", (int)getpid());
    for (;;)
        pause();
}
