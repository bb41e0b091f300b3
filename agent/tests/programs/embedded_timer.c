/* Hang shape: exit blocked on threads in an application that embeds a *shared*
 * libpython (as pyenv builds and many embedding programs use it). The program dlopen()s
 * libpython, starts a self-re-arming threading.Timer and calls Py_FinalizeEx(), which
 * joins the timer threads forever. Expected: main thread in futex(2) inside
 * Py_FinalizeEx, one timer thread in a timed futex wait, a new timer tid every 0.5 s.
 * READY pid=P on stderr. Exits 2 if no shared libpython can be loaded. */
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>

static const char *const LIBRARIES[] = {
    "libpython3.13.so.1.0", "libpython3.12.so.1.0", "libpython3.11.so.1.0",
    "libpython3.10.so.1.0", "libpython3.9.so.1.0",
};

static const char SCRIPT[] =
    "import threading\n"
    "def beat():\n"
    "    threading.Timer(0.5, beat).start()\n"
    "beat()\n";

int main(void) {
    void *python = NULL;
    for (size_t i = 0; i < sizeof LIBRARIES / sizeof *LIBRARIES && !python; i++)
        python = dlopen(LIBRARIES[i], RTLD_NOW | RTLD_GLOBAL);
    if (!python) {
        fprintf(stderr, "no shared libpython: %s\n", dlerror());
        return 2;
    }
    void (*initialize)(void) = (void (*)(void))dlsym(python, "Py_Initialize");
    int (*run)(const char *) = (int (*)(const char *))dlsym(python, "PyRun_SimpleString");
    int (*finalize)(void) = (int (*)(void))dlsym(python, "Py_FinalizeEx");
    if (!initialize || !run || !finalize) {
        fprintf(stderr, "libpython lacks the embedding API\n");
        return 2;
    }
    initialize();
    dprintf(2, "READY pid=%d\n", (int)getpid());
    run(SCRIPT);
    usleep(300 * 1000);
    return finalize();
}
