/* Not an interpreter, but it defines Py_FinalizeEx (the symbol exitwatch probes) and is
 * named like one by the tests, so uprobe discovery looks at it. Sleeps for argv[1]
 * milliseconds (default 1000), then exits 0. */
#include <stdlib.h>
#include <unistd.h>

void Py_FinalizeEx(void) {}

int main(int argc, char **argv) {
    usleep((useconds_t)(argc > 1 ? atoi(argv[1]) : 1000) * 1000);
    return 0;
}
