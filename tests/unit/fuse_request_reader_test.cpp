// RequestReader (fuse/request_reader.h) over a SOCK_SEQPACKET socket pair standing in for
// /dev/fuse: one message per read, EAGAIN when empty and non-blocking, poll(2) as the device.
// Threads are raw pthreads, ended with pthread_cancel as libfuse's loop ends its workers.
#include <gtest/gtest.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "fuse/request_reader.h"

namespace foreverfs::fuse {
namespace {

using namespace std::chrono_literals;

// A request as the kernel frames it: the header, then (for a read or a write given a size)
// its fuse_read_in or fuse_write_in.
std::vector<std::uint8_t> Request(std::uint32_t opcode, std::uint64_t unique,
                                  std::optional<std::uint32_t> size = std::nullopt) {
  fuse_in_header h{};
  h.opcode = opcode;
  h.unique = unique;
  const bool write = opcode == FUSE_WRITE;
  h.len = static_cast<std::uint32_t>(
      sizeof(h) + (size ? (write ? sizeof(fuse_write_in) : sizeof(fuse_read_in)) : 0));
  std::vector<std::uint8_t> m(h.len, 0);
  std::memcpy(m.data(), &h, sizeof(h));
  if (size && write) {
    fuse_write_in in{};
    in.size = *size;
    std::memcpy(m.data() + sizeof(h), &in, sizeof(in));
  } else if (size) {
    fuse_read_in in{};
    in.size = *size;
    std::memcpy(m.data() + sizeof(h), &in, sizeof(in));
  }
  return m;
}

std::uint64_t UniqueOf(const std::uint8_t* buf) {
  fuse_in_header h;
  std::memcpy(&h, buf, sizeof(h));
  return h.unique;
}

// Worker threads that read through one RequestReader and hand each request to `handle`,
// which runs on the reading thread, as a libfuse worker handles what it read.
class Workers {
 public:
  using Handler = std::function<void(std::uint64_t unique)>;
  Workers(RequestReader& reader, int fd, int n, Handler handle)
      : reader_(reader), fd_(fd), handle_(std::move(handle)) {
    threads_.resize(static_cast<std::size_t>(n));
    for (auto& t : threads_) EXPECT_EQ(pthread_create(&t, nullptr, &Workers::Run, this), 0);
  }
  ~Workers() { Stop(); }
  void Stop() {
    for (auto t : threads_) pthread_cancel(t);
    for (auto t : threads_) pthread_join(t, nullptr);
    threads_.clear();
  }
  int errors() const { return errors_.load(); }
  // Waits until every thread is inside Read in its role, with nothing to read: the leader
  // asleep in poll(2), the standby, and the rest on the semaphore. A thread that came later
  // would find the reading slot free and lead.
  void WaitStarted() {
    const int followers = static_cast<int>(threads_.size()) - 2;
    while (true) {
      const auto st = reader_.state();
      if (started_.load() == threads_.size() && st.leading && st.asleep && st.standby &&
          st.waiting == followers) {
        return;
      }
      std::this_thread::sleep_for(1ms);
    }
  }

 private:
  static void* Run(void* self) {
    auto* w = static_cast<Workers*>(self);
    std::uint8_t buf[256];
    w->started_.fetch_add(1);
    for (;;) {
      pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, nullptr);
      const ssize_t n = w->reader_.Read(w->fd_, buf, sizeof(buf));
      pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, nullptr);
      if (n < static_cast<ssize_t>(sizeof(fuse_in_header))) {
        if (n < 0 && errno == EINTR) continue;
        w->errors_.fetch_add(1);
        return nullptr;
      }
      w->handle_(UniqueOf(buf));
    }
  }
  RequestReader& reader_;
  const int fd_;
  const Handler handle_;
  std::vector<pthread_t> threads_;
  std::atomic<int> errors_{0};
  std::atomic<std::size_t> started_{0};
};

class RequestReaderTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv_), 0); }
  void TearDown() override {
    close(sv_[0]);
    close(sv_[1]);
  }
  void Send(const std::vector<std::uint8_t>& m) {
    ASSERT_EQ(write(sv_[1], m.data(), m.size()), static_cast<ssize_t>(m.size()));
  }
  int device() const { return sv_[0]; }

  // Waits until `done` holds or 20 s pass (only a failure waits that long).
  static bool Eventually(const std::function<bool()>& done) {
    const auto until = std::chrono::steady_clock::now() + 20s;
    while (!done()) {
      if (std::chrono::steady_clock::now() > until) return false;
      std::this_thread::sleep_for(1ms);
    }
    return true;
  }

  int sv_[2] = {-1, -1};
};

// A gate a handler waits at until the test opens it.
class Gate {
 public:
  void Wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return open_; });
  }
  void Open() {
    {
      std::lock_guard lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  // Opens the gate when it goes out of scope: declared after the Workers, so that a test
  // that fails early frees the handlers waiting here before the threads are joined.
  struct OpenAtExit {
    Gate& gate;
    ~OpenAtExit() { gate.Open(); }
  };

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

TEST_F(RequestReaderTest, EveryRequestReachesExactlyOneThread) {
  RequestReader reader({}, {});
  std::mutex mu;
  std::multiset<std::uint64_t> seen;
  std::atomic<std::uint64_t> count{0};
  constexpr std::uint64_t kRequests = 20000;
  {
    Workers workers(reader, device(), 8, [&](std::uint64_t unique) {
      // Some handlers take a while (past a tick now and then), as real ones do.
      if (unique % 997 == 0) std::this_thread::sleep_for(3ms);
      std::lock_guard lock(mu);
      seen.insert(unique);
      count.fetch_add(1);
    });
    for (std::uint64_t i = 1; i <= kRequests; ++i) {
      // Large reads and writes now and then.
      const auto m = i % 50 == 0   ? Request(FUSE_READ, i, 1u << 20)
                     : i % 77 == 0 ? Request(FUSE_WRITE, i, 1u << 20)
                                   : Request(FUSE_GETATTR, i);
      Send(m);
      if (i % 1000 == 0) std::this_thread::sleep_for(2ms);  // idle gaps: the leader sleeps
    }
    ASSERT_TRUE(Eventually([&] { return count.load() >= kRequests; })) << count.load();
    std::this_thread::sleep_for(20ms);
    workers.Stop();
    EXPECT_EQ(workers.errors(), 0);
  }
  ASSERT_EQ(seen.size(), kRequests);
  for (std::uint64_t i = 1; i <= kRequests; ++i) ASSERT_EQ(seen.count(i), 1u) << i;
  const auto c = reader.counters();
  EXPECT_EQ(c.polled + c.slept, kRequests);
}

TEST_F(RequestReaderTest, SlowHandlersHandTheReadingOverWithinTicks) {
  RequestReader reader({.spin = 50us, .tick = 1ms}, {});
  Gate gate;
  std::mutex mu;
  std::set<pthread_t> blocked_threads;
  std::atomic<int> blocked{0};
  std::atomic<bool> last_in{false};
  // Three handlers that do not come back (fetches from a slow peer) on three of four threads:
  // each time the standby takes over, and a follower must become the next standby.
  Workers workers(reader, device(), 4, [&](std::uint64_t unique) {
    if (unique <= 3) {
      {
        std::lock_guard lock(mu);
        blocked_threads.insert(pthread_self());
      }
      blocked.fetch_add(1);
      gate.Wait();
    } else {
      last_in = true;
    }
  });
  Gate::OpenAtExit open_at_exit{gate};
  workers.WaitStarted();
  for (std::uint64_t i = 1; i <= 3; ++i) {
    Send(Request(FUSE_LOOKUP, i));
    ASSERT_TRUE(Eventually([&] { return blocked.load() == static_cast<int>(i); }))
        << "request " << i << " waited behind a handler that never returned";
  }
  Send(Request(FUSE_GETATTR, 4));
  EXPECT_TRUE(Eventually([&] { return last_in.load(); }))
      << "the last request waited behind handlers that never returned";
  {
    std::lock_guard lock(mu);
    EXPECT_EQ(blocked_threads.size(), 3u);
  }
  EXPECT_GE(reader.counters().takeovers, 1u);  // more, unless a thread leaving the standby led on
  gate.Open();
  workers.Stop();
}

// With ticks an hour apart, a request that comes while another's handler runs waits for
// that handler, whatever the first one's kind: only a request already queued when the first
// was read is handed over at once (the test below). A slow machine only makes the wait
// longer, never lets the second in early.
TEST_F(RequestReaderTest, WithoutATickARequestThatComesDuringAHandlerWaitsForIt) {
  const RequestReader::Options options{.spin = 50us, .tick = std::chrono::hours(1)};
  for (const auto& first : {Request(FUSE_READ, 1, 1u << 20), Request(FUSE_WRITE, 1, 1u << 20),
                            Request(FUSE_FSYNC, 1), Request(FUSE_LOOKUP, 1)}) {
    RequestReader reader(options, {});
    Gate gate;
    std::atomic<bool> first_in{false};
    std::atomic<bool> second_in{false};
    Workers workers(reader, device(), 3, [&](std::uint64_t unique) {
      if (unique == 1) {
        first_in = true;
        gate.Wait();
      } else {
        second_in = true;
      }
    });
    Gate::OpenAtExit open_at_exit{gate};
    workers.WaitStarted();
    Send(first);
    ASSERT_TRUE(Eventually([&] { return first_in.load(); }));
    Send(Request(FUSE_GETATTR, 2));
    std::this_thread::sleep_for(100ms);
    EXPECT_FALSE(second_in.load());
    gate.Open();
    EXPECT_TRUE(Eventually([&] { return second_in.load(); }));
    EXPECT_EQ(reader.counters().handoffs, 0u);
    EXPECT_EQ(reader.counters().takeovers, 0u);
    workers.Stop();
  }
}

// After a large read or write the leader sleeps at once (its caller is slow to come back);
// after anything else it polls (here for an hour: only the session's end stops it).
TEST_F(RequestReaderTest, NoPollingAfterALargeReadOrWrite) {
  const std::uint32_t limit = RequestReader::Options{}.large_bytes;
  struct Case {
    std::vector<std::uint8_t> first;
    bool sleeps;
  };
  const std::vector<Case> cases = {
      {Request(FUSE_WRITE, 1, limit + 1), true},
      {Request(FUSE_READ, 1, limit + 1), true},
      {Request(FUSE_READ, 1, std::numeric_limits<std::uint32_t>::max()), true},
      {Request(FUSE_WRITE, 1, limit), false},
      {Request(FUSE_READ, 1, limit), false},
      {Request(FUSE_READ, 1, 0), false},
      {Request(FUSE_READ, 1), false},   // too short to hold its size: not read as one
      {Request(FUSE_WRITE, 1), false},  // likewise
      {Request(FUSE_FSYNC, 1), false},
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(i);
    std::atomic<bool> exited{false};
    RequestReader reader({.spin = std::chrono::hours(1), .tick = 1ms},
                         [&] { return exited.load(); });
    std::uint8_t buf[256];
    Send(cases[i].first);
    ASSERT_GT(reader.Read(device(), buf, sizeof(buf)), 0);
    std::atomic<ssize_t> second{0};
    std::thread t([&] {
      std::uint8_t b[256];
      second = reader.Read(device(), b, sizeof(b));
    });
    if (cases[i].sleeps) {
      EXPECT_TRUE(Eventually([&] { return reader.state().asleep; }));
      Send(Request(FUSE_GETATTR, 2));
      t.join();
      EXPECT_GT(second.load(), 0);
    } else {
      std::this_thread::sleep_for(100ms);
      const bool asleep = reader.state().asleep;
      EXPECT_FALSE(asleep);
      exited = true;
      if (asleep) Send(Request(FUSE_GETATTR, 2));  // free it: the test fails, not hangs
      t.join();
      EXPECT_EQ(second.load(), -1);
    }
  }
}

// Requests queued together (several programs at once) are handled side by side, as with a
// thread per request; with ticks an hour apart only the leader's look at the queue can do it.
TEST_F(RequestReaderTest, RequestsQueuedTogetherAreHandledSideBySide) {
  RequestReader reader({.spin = 50us, .tick = std::chrono::hours(1)}, {});
  std::atomic<int> inside{0};
  std::atomic<int> most{0};
  std::atomic<int> done{0};
  Workers workers(reader, device(), 4, [&](std::uint64_t) {
    const int now = inside.fetch_add(1) + 1;
    int seen = most.load();
    while (now > seen && !most.compare_exchange_weak(seen, now)) {
    }
    std::this_thread::sleep_for(2ms);  // a disk read, a commit
    inside.fetch_sub(1);
    done.fetch_add(1);
  });
  workers.WaitStarted();
  constexpr int kRequests = 20;
  for (int i = 1; i <= kRequests; ++i) Send(Request(FUSE_GETATTR, static_cast<std::uint64_t>(i)));
  ASSERT_TRUE(Eventually([&] { return done.load() == kRequests; }));
  EXPECT_GE(most.load(), 2) << "queued requests were handled one at a time";
  EXPECT_GE(reader.counters().handoffs, 1u);
  EXPECT_EQ(reader.counters().takeovers, 0u);
  workers.Stop();
}

// A caller slower than the spin between requests: after `spin_misses` spins that found
// nothing the leader sleeps at once; a request found without sleeping starts it polling again.
TEST_F(RequestReaderTest, ALeaderStopsPollingForASlowCallerAndStartsAgain) {
  RequestReader reader({.spin = 50us, .spin_misses = 4, .tick = 1ms}, {});
  std::uint8_t buf[256];
  for (int i = 1; i <= 6; ++i) {
    std::thread late([&] {
      while (!reader.state().asleep) std::this_thread::sleep_for(1ms);
      std::this_thread::sleep_for(5ms);  // well after the spin and twice it
      Send(Request(FUSE_GETATTR, static_cast<std::uint64_t>(i)));
    });
    ASSERT_GT(reader.Read(device(), buf, sizeof(buf)), 0);
    late.join();
    EXPECT_EQ(reader.state().spin_misses, std::min(i, 4)) << i;
  }
  Send(Request(FUSE_GETATTR, 7));
  Send(Request(FUSE_GETATTR, 8));
  ASSERT_GT(reader.Read(device(), buf, sizeof(buf)), 0);
  EXPECT_EQ(reader.state().spin_misses, 0) << "a request found without sleeping";
  ASSERT_GT(reader.Read(device(), buf, sizeof(buf)), 0);
  EXPECT_EQ(UniqueOf(buf), 8u);
  EXPECT_EQ(reader.counters().slept, 6u);
  EXPECT_EQ(reader.counters().polled, 2u);
}

TEST_F(RequestReaderTest, AThreadThatEndsAfterItsHandlerIsReplacedAsReader) {
  RequestReader reader({.spin = 50us, .tick = 1ms}, {});
  std::atomic<int> handled{0};
  Workers workers(reader, device(), 2, [&](std::uint64_t unique) {
    handled.fetch_add(1);
    if (unique == 1) pthread_exit(nullptr);  // as libfuse ends a worker when many are idle
  });
  workers.WaitStarted();
  Send(Request(FUSE_GETATTR, 1));
  ASSERT_TRUE(Eventually([&] { return handled.load() == 1; }));
  // Nothing queued: the standby still takes the reading over, sleeps in poll(2), and the
  // ticks stop.
  EXPECT_TRUE(Eventually([&] {
    const auto st = reader.state();
    return st.leading && st.asleep && !st.standby && !st.ticking;
  }));
  Send(Request(FUSE_GETATTR, 2));
  EXPECT_TRUE(Eventually([&] { return handled.load() == 2; }));
  workers.Stop();
}

TEST_F(RequestReaderTest, CountsRequestsFoundPollingApartFromThoseAfterASleep) {
  RequestReader reader({.spin = 50us, .tick = 1ms}, {});
  std::uint8_t buf[256];
  Send(Request(FUSE_GETATTR, 1));
  ASSERT_EQ(reader.Read(device(), buf, sizeof(buf)), static_cast<ssize_t>(sizeof(fuse_in_header)));
  EXPECT_EQ(UniqueOf(buf), 1u);
  EXPECT_EQ(reader.counters().polled, 1u);
  std::thread late([&] {
    while (!reader.state().asleep) std::this_thread::sleep_for(1ms);
    Send(Request(FUSE_GETATTR, 2));
  });
  ASSERT_EQ(reader.Read(device(), buf, sizeof(buf)), static_cast<ssize_t>(sizeof(fuse_in_header)));
  late.join();
  EXPECT_EQ(UniqueOf(buf), 2u);
  EXPECT_EQ(reader.counters().slept, 1u);
  EXPECT_EQ(reader.counters().polled, 1u);
}

TEST_F(RequestReaderTest, AnIdleReaderSleepsRatherThanSpins) {
  RequestReader reader({.spin = 50us, .tick = 1ms}, {});
  std::atomic<pthread_t> reading{};
  std::atomic<int> got{0};
  Workers workers(reader, device(), 2, [&](std::uint64_t) {
    reading = pthread_self();
    got.fetch_add(1);
  });
  Send(Request(FUSE_GETATTR, 1));
  ASSERT_TRUE(Eventually([&] { return got.load() == 1; }));
  std::this_thread::sleep_for(50ms);
  // Every thread's CPU time over half a second of idleness: the process's, less this one's.
  auto cpu = [] {
    timespec p{}, t{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &p);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (p.tv_sec - t.tv_sec) * 1e3 + (p.tv_nsec - t.tv_nsec) / 1e6;
  };
  const double before = cpu();
  std::this_thread::sleep_for(500ms);
  const double used_ms = cpu() - before;
  EXPECT_LT(used_ms, 100.0) << "threads kept running while no request came: used " << used_ms;
  EXPECT_FALSE(reader.state().ticking) << "the standby's timer still ticks";
  EXPECT_EQ(got.load(), 1);
  workers.Stop();
}

TEST_F(RequestReaderTest, TheSessionsEndStopsALeaderThatPolls) {
  std::atomic<bool> exited{false};
  // Polling for an hour: only `exited` can end it.
  RequestReader reader({.spin = std::chrono::hours(1), .tick = 1ms}, [&] { return exited.load(); });
  std::atomic<ssize_t> result{0};
  std::atomic<int> err{0};
  std::atomic<bool> done{false};
  std::thread t([&] {
    std::uint8_t buf[256];
    result = reader.Read(device(), buf, sizeof(buf));
    err = errno;
    done = true;
  });
  std::this_thread::sleep_for(20ms);
  exited = true;
  if (!Eventually([&] { return done.load(); })) {
    Send(Request(FUSE_GETATTR, 1));  // free the reader, so that the test fails, not hangs
  }
  t.join();
  EXPECT_EQ(result.load(), -1);
  EXPECT_EQ(err.load(), EINTR);
}

void NoteSignal(int) {}

TEST_F(RequestReaderTest, ASignalEndsAWaitWithEintrWhateverTheRole) {
  struct sigaction sa {};
  sa.sa_handler = NoteSignal;  // no SA_RESTART, as libfuse installs its handlers
  struct sigaction old {};
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &old), 0);
  RequestReader reader({.spin = 0us, .tick = 1ms}, {});
  // Three readers and nothing to read: one sleeps in poll(2) as the leader, one as the
  // standby, one on the semaphore. Each signalled in turn returns EINTR.
  struct Reading {
    pthread_t thread{};
    std::atomic<bool> done{false};
    ssize_t result = 0;
    int err = 0;
    RequestReader* reader = nullptr;
    int fd = -1;
  };
  std::vector<Reading> readings(3);
  for (auto& r : readings) {
    r.reader = &reader;
    r.fd = device();
    ASSERT_EQ(pthread_create(
                  &r.thread, nullptr,
                  [](void* p) -> void* {
                    auto* r = static_cast<Reading*>(p);
                    std::uint8_t buf[256];
                    r->result = r->reader->Read(r->fd, buf, sizeof(buf));
                    r->err = errno;
                    r->done = true;
                    return nullptr;
                  },
                  &r),
              0);
  }
  std::this_thread::sleep_for(100ms);
  for (auto& r : readings) EXPECT_FALSE(r.done.load());
  for (auto& r : readings) {
    ASSERT_TRUE(Eventually([&] {
      if (r.done.load()) return true;
      pthread_kill(r.thread, SIGUSR1);
      std::this_thread::sleep_for(5ms);
      return r.done.load();
    }));
    pthread_join(r.thread, nullptr);
    EXPECT_EQ(r.result, -1);
    EXPECT_EQ(r.err, EINTR);
  }
  sigaction(SIGUSR1, &old, nullptr);
}

}  // namespace
}  // namespace foreverfs::fuse
