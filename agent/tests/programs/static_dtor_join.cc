/* Hang shape: a C++ object with static storage duration owns a thread and joins it in
 * its destructor; the thread waits on a condition variable nobody signals. main returns,
 * exit() runs the static destructors, and ~Pool() blocks in std::thread::join
 * (pthread_join, futex(2)) forever. READY pid=P on stderr before main returns. */
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>
#include <unistd.h>

namespace {
std::mutex mu;
std::condition_variable cv;
bool go = false;

struct Pool {
    std::thread worker;
    Pool()
        : worker([] {
              std::unique_lock<std::mutex> lock(mu);
              cv.wait(lock, [] { return go; });
          })
    {
    }
    ~Pool() { worker.join(); }
};

Pool pool;
} // namespace

int main()
{
    dprintf(2, "READY pid=%d\n", (int)getpid());
    usleep(100 * 1000);
    return 0;
}
