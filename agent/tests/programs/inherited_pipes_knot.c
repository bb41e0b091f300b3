/* Hang shape: a knot of N+1 processes (N from argv[1], default 500) in which
 * every pipe has every process as a reader. The parent makes N pipes and forks
 * N children; child i keeps the read ends of all N pipes (as a careless fork
 * does) and the write end of pipe i only, and writes into it until the pipe is
 * full; the parent keeps every read end and waits for any child. Nobody ever
 * reads: all N+1 block forever (children in write, wchan anon_pipe_write; the
 * parent in wait4). Naming every holder of every pipe would take N*N names.
 * READY parent=P on stderr once every child is started. Children die with the
 * parent (PR_SET_PDEATHSIG). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 500;
    struct rlimit files = {(rlim_t)(4 * n + 64), (rlim_t)(4 * n + 64)};
    if (setrlimit(RLIMIT_NOFILE, &files) != 0) {
        perror("setrlimit");
        return 1;
    }
    int (*pipes)[2] = calloc((size_t)n, sizeof *pipes);
    if (!pipes)
        return 1;
    for (int i = 0; i < n; i++) {
        if (pipe(pipes[i]) != 0) {
            perror("pipe");
            return 1;
        }
    }
    pid_t parent = getpid();
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(1);
            for (int j = 0; j < n; j++)
                if (j != i)
                    close(pipes[j][1]);
            static char buf[1 << 16];
            memset(buf, 'x', sizeof buf);
            for (;;)
                if (write(pipes[i][1], buf, sizeof buf) < 0)
                    _exit(1);
        }
    }
    for (int i = 0; i < n; i++)
        close(pipes[i][1]);
    dprintf(2, "READY parent=%d\n", (int)parent);
    int status;
    while (wait(&status) > 0)
        ;
    return 0;
}
