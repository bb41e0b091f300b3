/* Hang shape: exit blocked on a pipe, in C. The writer buffers 256 KiB of stdout (a pipe)
 * and returns from main; exit() flushes stdio and blocks in write(2) because the only
 * reader, a child, stopped itself after one byte. Expected: writer in write (1),
 * wchan anon_pipe_write, inside exit(); reader in state T. The reader asks to be killed
 * when the writer dies. READY writer=W reader=R on stderr. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    int fds[2];
    if (pipe(fds) != 0)
        return 1;
    pid_t reader = fork();
    if (reader == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(fds[1]);
        char byte;
        if (read(fds[0], &byte, 1) != 1)
            _exit(1);
        raise(SIGSTOP);
        pause();
        _exit(0);
    }
    close(fds[0]);
    dup2(fds[1], 1);
    close(fds[1]);
    if (write(1, "x", 1) != 1)
        return 1;
    int status;
    waitpid(reader, &status, WUNTRACED);
    static char buffer[1 << 20];
    setvbuf(stdout, buffer, _IOFBF, sizeof buffer);
    static char data[256 * 1024];
    memset(data, 'y', sizeof data);
    fwrite(data, 1, sizeof data, stdout);
    dprintf(2, "READY writer=%d reader=%d\n", (int)getpid(), (int)reader);
    return 0;
}
