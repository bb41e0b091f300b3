/* Hang shape: pipe() + fork(); the child writes 1 MiB into the pipe and then
 * exits; the parent waitpid()s the child before reading. Expected blocked
 * state (forever): child in write(2) (wchan anon_pipe_write), parent in
 * wait4(2) (wchan do_wait). READY parent=P child=C on stderr before waitpid.
 * If the parent dies the child gets SIGPIPE (it closed its read end). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define TOTAL (1 << 20)

int main(void)
{
    int fds[2];
    if (pipe(fds) != 0) {
        perror("pipe");
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        static char buf[TOTAL];
        size_t off = 0;
        close(fds[0]);
        memset(buf, 'x', sizeof buf);
        while (off < sizeof buf) {
            ssize_t n = write(fds[1], buf + off, sizeof buf - off);
            if (n < 0)
                _exit(1);
            off += (size_t)n;
        }
        _exit(0);
    }
    close(fds[1]);
    dprintf(2, "READY parent=%d child=%d\n", (int)getpid(), (int)pid);

    int status;
    if (waitpid(pid, &status, 0) < 0) {
        perror("waitpid");
        return 1;
    }
    char buf[65536];
    long total = 0;
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0)
        total += n;
    printf("DONE bytes=%ld\n", total);
    return 0;
}
