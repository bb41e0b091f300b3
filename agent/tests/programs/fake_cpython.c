/* Attacker: not an interpreter, but it defines `_PyRuntime` and `Py_Version` (3.11) and
 * fills them with the thread state of a CPython 3.11 main thread whose frames are
 * hostile: 100 frames chained in a ring (more than any stack holds), code objects whose
 * file name claims 2^40 characters and whose line table claims 2^40 bytes. Then it hangs
 * at exit like atexit_join.c (an atexit handler joins a thread that never ends). Tests
 * copy it under a name starting with `python`. READY pid=P on stderr. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FRAMES 100

const unsigned long Py_Version = 0x030B07F0;
char _PyRuntime[4096];

static char interp[4096], tstate[512], cframe[64], frames[FRAMES][80];
static char code[256], type[64], file_name[2048], qualname[64], table[64];
static pthread_t worker;

static void put(char *at, const void *value) { memcpy(at, &value, sizeof value); }
static void put_word(char *at, uint64_t value) { memcpy(at, &value, sizeof value); }

/* A compact ASCII str (3.11: data after 48 bytes) claiming `length` characters. */
static void ascii(char *string, uint64_t length, const char *text)
{
    put_word(string + 16, length);
    put_word(string + 32, (1 << 2) | (1 << 5) | (1 << 6));
    strcpy(string + 48, text);
}

static void *never_ends(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

static void join_worker(void) { pthread_join(worker, NULL); }

int main(void)
{
    /* The offsets of exitwatch's CPython 3.11 layout. */
    put(_PyRuntime + 48, interp);
    put(interp + 16, tstate);
    put(tstate + 16, interp);
    put_word(tstate + 152, (uint64_t)pthread_self());
    put_word(tstate + 160, (uint64_t)gettid());
    put(tstate + 56, cframe);
    put(cframe + 8, frames[0]);
    for (int i = 0; i < FRAMES; i++) {
        put(frames[i] + 32, code);
        put(frames[i] + 48, frames[(i + 1) % FRAMES]);
        put(frames[i] + 56, code + 184 + 2 * i);
    }
    put(code + 8, type);
    put(type + 24, "code");
    memset(file_name + 48, 'A', sizeof file_name - 49);
    ascii(file_name, (uint64_t)1 << 40, "");
    memset(file_name + 48, 'A', sizeof file_name - 49);
    put(code + 112, file_name);
    ascii(qualname, 7, "hostile");
    put(code + 120, qualname);
    put(code + 128, qualname);
    put_word(code + 72, 7);
    put_word(table + 16, (uint64_t)1 << 40);
    put(code + 136, table);
    if (pthread_create(&worker, NULL, never_ends, NULL) != 0)
        return 1;
    atexit(join_worker);
    char line[64];
    int n = snprintf(line, sizeof line, "READY pid=%d\n", getpid());
    if (write(2, line, n) != n)
        return 1;
    return 0;
}
