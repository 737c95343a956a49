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
//   wakes nobody.
// - A handler that keeps the slot free long (a disk read, a chunk fetched from a peer, a
//   commit) must not hold up everybody else's requests. The standby, one thread, sleeps on a
//   timer that ticks every `tick` while requests come (armed when the leader wakes from
//   poll(2), disarmed at the first tick that finds it asleep there again: no timer is set per
//   request, which on a virtual machine costs as much as a wake-up). A tick that finds the
//   slot free, and no request taken since the tick before that also found it free, makes the
//   standby the leader: a slow handler holds the next request back for at most two ticks.
// - Requests that are slow by their kind (a read of more than `heavy_read` bytes, as the
//   kernel's read-ahead sends several at once; fsync) wake the standby at once, through an
//   eventfd, to lead while their handler runs, as every request did before.
// - Every other thread sleeps on a semaphore; a leader that takes a request while there is
//   no standby (it took over and leads now) wakes one to be the standby. An idle file system has one thread in poll(2) and the rest asleep, no timer set.
// Every wait is a cancellation point (poll, sem_wait), as libfuse's loop cancels its workers
// when the session ends, and is ended by a signal (EINTR goes back to libfuse, which then
// sees the session ended); a leader polling checks `exited` itself. If the timer, eventfd or
// semaphore cannot be made, or the device cannot be made non-blocking, every thread reads as
// libfuse does (blocking read(2)).

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
    // The standby's timer while requests come: a handler that keeps the next request waiting
    // for one to two ticks hands the reading over. Well above the handlers of the common
    // small requests (getattr, lookup, create and flush of a small file: 20-120 us on the
    // machine these figures are from), so they keep the stream on one thread; below anything
    // a person would notice; rare enough to cost nothing (a wake-up per tick while busy).
    std::chrono::microseconds tick{1000};
    // A read asking for more than this (the kernel's read-ahead, several at once) wakes the
    // standby at once.
    std::uint32_t heavy_read = 32 * 1024;
  };
  struct Counters {
    std::uint64_t polled = 0;     // requests the leader found while polling (no wake-up)
    std::uint64_t slept = 0;      // requests the leader read after sleeping in poll(2)
    std::uint64_t takeovers = 0;  // times a tick found a handler keeping the next request waiting
    std::uint64_t handoffs = 0;   // requests slow by their kind, the standby woken at once
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

 private:
  ssize_t Lead(int fd, void* buf, std::size_t len);
  // Sleeps as the standby until it should lead: 0, or -1 with errno (EINTR).
  int Standby();
  bool Heavy(const void* buf, std::size_t n) const;
  // The standby's timer: on (ticking every `tick`) or off.
  void SetTicking(bool on) REQUIRES(timer_mu_);

  const Options options_;
  const std::function<bool()> exited_;
  int timer_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: a heavy request wakes the standby
  sem_t followers_{};
  bool usable_ = false;  // timer, eventfd and semaphore made; otherwise plain read(2)
  std::atomic<bool> nonblocking_{false};
  std::atomic<bool> leader_{false};
  // standby_ and waiting_ are sequentially consistent: a follower stores waiting_ then loads
  // standby_, a leader the other way round, and one of the two must see the other's store.
  std::atomic<bool> standby_{false};
  std::atomic<int> waiting_{0};          // threads on the semaphore, or about to be
  std::atomic<std::uint64_t> taken_{0};  // requests the leaders have read
  // Whether the timer ticks, and whether the leader sleeps in poll(2). Taken only when the
  // leader goes to sleep or wakes, and at a tick: never per request.
  Mutex timer_mu_;  // leaf
  bool ticking_ GUARDED_BY(timer_mu_) = false;
  bool leader_asleep_ GUARDED_BY(timer_mu_) = false;
  std::atomic<std::uint64_t> polled_{0}, slept_{0}, takeovers_{0}, handoffs_{0};
};

}  // namespace foreverfs::fuse
