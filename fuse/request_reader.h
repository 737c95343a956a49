#pragma once
// How the FUSE worker threads take requests from /dev/fuse: one reader at a time, which
// polls the device for a moment after each request before it sleeps.
//
// Why: on a virtual machine a FUSE round trip is two cross-CPU wake-ups (the kernel waking a
// worker blocked in read(2), the worker's reply waking the caller), and each costs more than
// the handler: a getxattr that is answered at once took 38-45 us with every worker blocked in
// read(2), 21-27 us with a reader polling (libfuse's passthrough_ll: 25-28 us). tar -x is
// about twelve round trips per file. A reader that is still polling when the caller's next
// request arrives removes the first wake-up: the kernel finds nobody to wake.
//
// How (leader, standby, followers):
// - The leader is the one thread that reads the device (made O_NONBLOCK at the first read).
//   It polls for `spin` after it became leader, then sleeps in poll(2). When it has a request
//   it gives up the slot and handles the request itself; back in Read, it usually finds the
//   slot free and leads again, so a caller's stream of requests is served by one thread and
//   wakes nobody. After a large request (a read or write of more than `large_bytes`), or
//   when its last `spin_misses` spins all found nothing (a caller slower than `spin` between
//   requests), the leader sleeps at once instead, until a request is found without sleeping
//   or comes within two `spin`s of its sleep: polling then only costs CPU.
// - Requests must not wait behind a handler while the other threads sleep. Right after it
//   read one, the leader looks (poll(2) with no timeout) whether another is queued already
//   (another program's, or the kernel's read-ahead): if so it wakes the standby at once
//   through an eventfd, to lead while its own handler runs, as a thread per request would.
// - A request that comes while a handler runs and nobody reads is the standby's too: it
//   sleeps on a timer that ticks every `tick` while requests come (armed when the leader wakes
//   from poll(2), disarmed at the first tick that finds it asleep there again: no timer is set
//   per request, which on a virtual machine costs as much as a wake-up), and a tick that finds
//   the slot free and a request queued makes it the leader; so do two ticks in a row that
//   find the slot free and no request read between them (the leader's thread may have ended
//   after its handler, as libfuse ends idle workers, and somebody must sleep in poll(2)).
// - Every other thread sleeps on a semaphore; a leader that takes a request while there is
//   no standby (it took over and leads now) wakes one to be the standby.
// An idle file system has one thread in poll(2), the rest asleep and no timer set. Every wait
// is a cancellation point (poll, read, sem_wait), as libfuse's loop ends its workers with
// pthread_cancel when the session ends; no lock is held across one. A signal that reaches a
// reader (libfuse's workers block SIGINT, SIGTERM and SIGHUP; the main thread takes them)
// ends its wait with EINTR, and a polling leader checks `exited` itself. If the timer,
// eventfd or semaphore cannot be made, every thread reads as libfuse does (blocking
// read(2)); if the device cannot be made non-blocking, the leader reads it blocking. One
// device: libfuse's clone_fd (a descriptor per thread) is not used.

#include <semaphore.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>

#include "base/mutex.h"

namespace foreverfs::fuse {

class RequestReader {
 public:
  struct Options {
    // How long the leader polls after its last request before it sleeps in poll(2): longer
    // than a caller's usual pause between two requests (tar, cp, a compiler: a few us), short
    // enough that an idle file system costs nothing.
    std::chrono::microseconds spin{50};
    // After this many spins in a row that found nothing the leader stops polling (above).
    int spin_misses = 4;
    // The standby's timer while requests come: a request that came while a handler ran and
    // nobody read waits at most one tick. Below anything a person would notice; rare enough
    // to cost nothing (a wake-up per tick while busy).
    std::chrono::microseconds tick{2000};
    // After a read or write of more than this (cp, dd, the kernel's read-ahead) the leader
    // does not poll: its caller is slower than a spin to come back, and the CPU is better
    // left to the chunk workers.
    std::uint32_t large_bytes = 32 * 1024;
  };
  struct Counters {
    std::uint64_t polled = 0;     // requests the leader found while polling (no wake-up)
    std::uint64_t slept = 0;      // requests the leader read after sleeping in poll(2)
    std::uint64_t takeovers = 0;  // ticks that found nobody reading (and a request queued)
    std::uint64_t handoffs = 0;   // requests with another queued behind them
  };
  // Who does what now (for tests and diagnostics; a snapshot, not atomic as a whole).
  struct State {
    bool leading = false;  // a thread holds the reading slot
    bool asleep = false;   // ... and sleeps in poll(2)
    bool ticking = false;  // the standby's timer is set
    bool standby = false;
    int waiting = 0;  // followers on the semaphore
    int spin_misses = 0;
  };

  // `exited`: whether the session is ending (fuse_session_exited); may be empty.
  RequestReader(Options options, std::function<bool()> exited);
  ~RequestReader();
  RequestReader(const RequestReader&) = delete;
  RequestReader& operator=(const RequestReader&) = delete;

  // One request from `fd` into `buf`, as read(2) would give it (its length, or -1 with errno
  // set: ENODEV once unmounted, EINTR when a signal came or `exited` is true), never EAGAIN.
  // Any number of threads; each returns with one request or an error.
  ssize_t Read(int fd, void* buf, std::size_t len);

  Counters counters() const;
  State state() const;

 private:
  ssize_t Lead(int fd, void* buf, std::size_t len);
  // Sleeps as the standby until it should lead: 0, or -1 with errno (EINTR).
  int Standby();
  bool Large(const void* buf, std::size_t n) const;
  // Whether a request waits in the kernel's queue (poll(2) with no timeout).
  static bool Queued(int fd);
  // The leader's sleep until a request comes: poll(2), or read(2) on a blocking device.
  // Returns what that call returned, errno kept.
  ssize_t Sleep(int fd, void* buf, std::size_t len, bool blocking);
  // The standby's timer: on (ticking every `tick`) or off.
  void SetTicking(bool on) REQUIRES(timer_mu_);

  const Options options_;
  const std::function<bool()> exited_;
  int timer_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: a request queued behind another wakes the standby
  sem_t followers_{};
  bool usable_ = false;              // timer, eventfd and semaphore made; otherwise plain read(2)
  std::atomic<bool> set_up_{false};  // the first leader made the device non-blocking, or failed
  std::atomic<bool> blocking_{false};
  std::atomic<int> device_{-1};
  std::atomic<bool> leader_{false};
  // standby_ and waiting_ are sequentially consistent: a follower stores waiting_ then loads
  // standby_, a leader the other way round, and one of the two must see the other's store.
  std::atomic<bool> standby_{false};
  std::atomic<int> waiting_{0};          // threads on the semaphore, or about to be
  std::atomic<int> spin_misses_{0};      // spins in a row that found nothing
  std::atomic<bool> last_large_{false};  // the last request read was large
  std::atomic<std::uint64_t> taken_{0};  // requests the leaders have read
  // Whether the timer ticks, and whether the leader sleeps in poll(2). Taken only when the
  // leader goes to sleep or wakes, and at a tick: never per request.
  mutable Mutex timer_mu_;  // leaf
  bool ticking_ GUARDED_BY(timer_mu_) = false;
  bool leader_asleep_ GUARDED_BY(timer_mu_) = false;
  std::atomic<std::uint64_t> polled_{0}, slept_{0}, takeovers_{0}, handoffs_{0};
};

}  // namespace foreverfs::fuse
