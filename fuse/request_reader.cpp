#include "fuse/request_reader.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <utility>

namespace foreverfs::fuse {

RequestReader::RequestReader(Options options, std::function<bool()> exited)
    : options_(options), exited_(std::move(exited)) {
  timer_fd_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  usable_ = timer_fd_ >= 0 && wake_fd_ >= 0 && ::sem_init(&followers_, 0, 0) == 0;
}

RequestReader::~RequestReader() {
  if (usable_) ::sem_destroy(&followers_);
  if (timer_fd_ >= 0) ::close(timer_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

RequestReader::Counters RequestReader::counters() const {
  return {polled_.load(std::memory_order_relaxed), slept_.load(std::memory_order_relaxed),
          takeovers_.load(std::memory_order_relaxed), handoffs_.load(std::memory_order_relaxed)};
}

void RequestReader::SetTicking(bool on) {
  if (ticking_ == on) return;
  itimerspec t{};
  if (on) {
    const auto us = options_.tick.count();
    t.it_value.tv_sec = t.it_interval.tv_sec = static_cast<time_t>(us / 1000000);
    t.it_value.tv_nsec = t.it_interval.tv_nsec = static_cast<long>(us % 1000000) * 1000;
  }
  // Cannot fail with a valid descriptor and value. If it did, ticking_ stays as it was: a
  // timer left off lets a slow handler hold the next request until it returns (as a
  // single-threaded loop would); one left on costs a wake-up per tick.
  if (::timerfd_settime(timer_fd_, 0, &t, nullptr) == 0) ticking_ = on;
}

namespace {

// The size field of a read's or write's argument; nullopt if the request is too short to hold it.
template <typename T>
std::optional<std::uint32_t> SizeArg(const void* buf, std::size_t n) {
  T in;
  if (n < sizeof(fuse_in_header) + sizeof(in)) return std::nullopt;
  std::memcpy(&in, static_cast<const std::uint8_t*>(buf) + sizeof(fuse_in_header), sizeof(in));
  return in.size;
}

}  // namespace

bool RequestReader::Large(const void* buf, std::size_t n) const {
  fuse_in_header h;
  if (n < sizeof(h)) return false;
  std::memcpy(&h, buf, sizeof(h));
  const auto size = h.opcode == FUSE_READ    ? SizeArg<fuse_read_in>(buf, n)
                    : h.opcode == FUSE_WRITE ? SizeArg<fuse_write_in>(buf, n)
                                             : std::nullopt;
  return size && *size > options_.large_bytes;
}

bool RequestReader::Queued(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & POLLIN) != 0;
}

RequestReader::State RequestReader::state() const {
  State st;
  st.leading = leader_.load();
  st.standby = standby_.load();
  st.waiting = waiting_.load();
  st.spin_misses = spin_misses_.load(std::memory_order_relaxed);
  MutexLock lock(timer_mu_);
  st.asleep = leader_asleep_;
  st.ticking = ticking_;
  return st;
}

ssize_t RequestReader::Read(int fd, void* buf, std::size_t len) {
  if (!usable_) return ::read(fd, buf, len);
  for (;;) {
    if (!leader_.exchange(true, std::memory_order_acq_rel)) {
      const ssize_t n = Lead(fd, buf, len);
      const int err = errno;
      if (n > 0) taken_.fetch_add(1, std::memory_order_release);
      leader_.store(false, std::memory_order_release);
      if (n > 0) {
        // Its handler may be slow: somebody must be the standby. There is none after the
        // standby took over (it leads now) or was ended by a signal: a follower is woken.
        if (!standby_.load() && waiting_.load() > 0) ::sem_post(&followers_);
        last_large_.store(Large(buf, static_cast<std::size_t>(n)), std::memory_order_relaxed);
        // Another request queued already (another program's, the kernel's read-ahead): the
        // standby reads it while this one is handled. Not for a large request alone: waking
        // the standby for each of cp's writes cost more than it saved where the CPU is the
        // limit; a request that comes during its handler is the next tick's.
        if (Queued(fd)) {
          handoffs_.fetch_add(1, std::memory_order_relaxed);
          const std::uint64_t one = 1;
          (void)!::write(wake_fd_, &one, sizeof(one));  // only fails when already signalled
        }
      }
      errno = err;
      return n;
    }
    if (!standby_.exchange(true)) {
      const int r = Standby();
      const int err = errno;
      // A follower becomes the next standby when this thread, or another, takes a request.
      standby_.store(false);
      if (r != 0) {
        errno = err;
        return -1;
      }
      continue;
    }
    waiting_.fetch_add(1);
    int r = 0;
    // Posted when a request is taken and there is no standby; a standby that left before
    // this thread counted itself is seen here, so no post is missed.
    if (standby_.load()) r = ::sem_wait(&followers_);
    const int err = errno;
    waiting_.fetch_sub(1);
    if (r != 0) {
      errno = err;  // EINTR: a signal; libfuse looks whether the session ended
      return -1;
    }
  }
}

int RequestReader::Standby() {
  bool was_free = false;
  std::uint64_t seen = 0;
  for (;;) {
    pollfd fds[2] = {{timer_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) return -1;
    std::uint64_t count = 0;
    if (fds[1].revents & POLLIN) {
      (void)!::read(wake_fd_, &count, sizeof(count));
      return 0;  // a request queued behind the one just read: lead while that is handled
    }
    if (!(fds[0].revents & POLLIN) || ::read(timer_fd_, &count, sizeof(count)) < 0) continue;
    {
      MutexLock lock(timer_mu_);
      if (leader_asleep_) {  // the burst is over: no ticks until the leader wakes
        SetTicking(false);
        was_free = false;
        continue;
      }
    }
    if (leader_.load(std::memory_order_acquire)) {
      was_free = false;
      continue;
    }
    // Nobody reads (a handler runs). Read if a request waits; lead anyway if nobody has read
    // since the last tick either (the leader's thread may have ended after its handler, as
    // libfuse ends idle workers: somebody must sleep in poll(2) for the ticks to stop).
    const int device = device_.load(std::memory_order_acquire);
    const std::uint64_t taken = taken_.load(std::memory_order_acquire);
    if ((device >= 0 && Queued(device)) || (was_free && taken == seen)) {
      takeovers_.fetch_add(1, std::memory_order_relaxed);
      return 0;
    }
    was_free = true;
    seen = taken;
  }
}

ssize_t RequestReader::Sleep(int fd, void* buf, std::size_t len, bool blocking) {
  {
    MutexLock lock(timer_mu_);
    leader_asleep_ = true;
    // With a standby its next tick stops the timer (one call per burst, not per sleep);
    // without one (it took over, or a signal ended it) nobody would.
    if (!standby_.load()) SetTicking(false);
  }
  ssize_t r;
  if (blocking) {
    r = ::read(fd, buf, len);
  } else {
    pollfd p{fd, POLLIN, 0};
    r = ::poll(&p, 1, -1);
  }
  const int err = errno;
  {
    MutexLock lock(timer_mu_);
    leader_asleep_ = false;
    SetTicking(true);  // a burst begins: a request that waits behind a handler is seen
  }
  errno = err;
  return r;
}

ssize_t RequestReader::Lead(int fd, void* buf, std::size_t len) {
  if (!set_up_.load(std::memory_order_relaxed)) {
    {
      MutexLock lock(timer_mu_);
      SetTicking(true);  // the first burst has not woken the leader from poll(2)
    }
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
      blocking_.store(true, std::memory_order_relaxed);  // only the leader reads, blocking
    }
    device_.store(fd, std::memory_order_release);
    set_up_.store(true, std::memory_order_relaxed);
  }
  if (blocking_.load(std::memory_order_relaxed)) {
    const ssize_t n = Sleep(fd, buf, len, /*blocking=*/true);
    if (n > 0) slept_.fetch_add(1, std::memory_order_relaxed);
    return n;
  }
  using Clock = std::chrono::steady_clock;
  const int misses = spin_misses_.load(std::memory_order_relaxed);
  // No polling after a large request: its caller (cp, dd, read-ahead) takes longer than a
  // spin to come back, and the CPU is better left to the chunk workers.
  const auto spin = misses < options_.spin_misses && !last_large_.load(std::memory_order_relaxed)
                        ? options_.spin
                        : std::chrono::microseconds{0};
  auto until = Clock::now() + spin;
  bool slept = false;
  for (unsigned i = 1;; ++i) {
    const ssize_t n = ::read(fd, buf, len);
    if (n >= 0) {
      if (!slept) spin_misses_.store(0, std::memory_order_relaxed);
      (slept ? slept_ : polled_).fetch_add(1, std::memory_order_relaxed);
      return n;
    }
    if (errno != EAGAIN) return -1;  // ENODEV (unmounted), EINTR, ...
    if (exited_ && exited_()) {
      errno = EINTR;
      return -1;
    }
    const auto now = Clock::now();
    if (now < until) {
      // Now and then let a thread waiting for this CPU run: often the very caller whose
      // next request is awaited.
      if (i % 8 == 0) ::sched_yield();
      continue;
    }
    if (spin.count() > 0 && !slept) {
      spin_misses_.store(std::min(misses + 1, options_.spin_misses), std::memory_order_relaxed);
    }
    if (Sleep(fd, buf, len, /*blocking=*/false) < 0) return -1;  // EINTR: libfuse looks
    // A request that came within two spins of the sleep: polling would have served it.
    if (Clock::now() - now < 2 * options_.spin) spin_misses_.store(0, std::memory_order_relaxed);
    slept = true;
    until = Clock::now() + spin;
  }
}

}  // namespace foreverfs::fuse
