/* Hang shape, in C: popen() of a shell that starts a background process without
 * redirecting its output, then reading the stream to EOF (fread) before pclose(). The
 * orphan keeps the write end, so EOF never comes. Reader: read (0) anon_pipe_read; child
 * (sh): zombie; orphan: clock_nanosleep (230). READY reader=R child=C orphan=O on stderr
 * (the shell says the pids on a side pipe that the orphan does not keep). */
#include <stdio.h>
#include <unistd.h>

int main(void)
{
    int side[2];
    if (pipe(side) != 0) {
        perror("pipe");
        return 1;
    }
    char command[128];
    snprintf(command, sizeof command, "(sleep 600) %d>&- & echo $$ $! >&%d", side[1],
             side[1]);
    FILE *output = popen(command, "r");
    if (!output) {
        perror("popen");
        return 1;
    }
    char pids[64] = {0};
    if (read(side[0], pids, sizeof pids - 1) <= 0) {
        perror("reading the pids");
        return 1;
    }
    int child = 0, orphan = 0;
    sscanf(pids, "%d %d", &child, &orphan);
    dprintf(2, "READY reader=%d child=%d orphan=%d\n", (int)getpid(), child, orphan);
    char buffer[4096];
    size_t total = 0, got;
    while ((got = fread(buffer, 1, sizeof buffer, output)) > 0)
        total += got;
    pclose(output);
    printf("DONE bytes=%zu\n", total);
    return 0;
}
