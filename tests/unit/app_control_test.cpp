// The control socket served on an event loop: bounded threads, fds and memory maps however many
// commands come, deadlines for clients that send nothing, a cap on connections, errors for bad
// commands, commands off the event loop with their output streamed, and a prompt Stop.

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <cstring>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "app/control.h"
#include "temp_dir.h"

namespace foreverfs::app {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::size_t Entries(const char* dir) {
  std::size_t n = 0;
  DIR* d = ::opendir(dir);
  while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
  ::closedir(d);
  return n;
}
std::size_t Threads() { return Entries("/proc/self/task"); }
std::size_t Fds() { return Entries("/proc/self/fd"); }
// An exited thread nobody joined keeps its stack mapped: this is what ran out after ~32k
// commands when each had a thread of its own.
std::size_t Maps() {
  std::ifstream f("/proc/self/maps");
  std::size_t n = 0;
  for (std::string line; std::getline(f, line);) ++n;
  return n;
}

// An event loop on a thread of its own, as in the daemon.
class Loop {
 public:
  Loop() : guard_(asio::make_work_guard(io_)), thread_([this] { io_.run(); }) {}
  ~Loop() {
    guard_.reset();
    io_.stop();
    thread_.join();
  }
  asio::io_context& io() { return io_; }
  std::thread::id id() const { return thread_.get_id(); }

 private:
  asio::io_context io_{1};
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::thread thread_;
};

// A raw client, for what RunControlCommand never does.
class Client {
 public:
  explicit Client(const std::filesystem::path& path, bool connect_now = true) : path_(path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect_now) Connect();
  }
  bool Connect() {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strcpy(a.sun_path, path_.c_str());
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    return connected_;
  }
  ~Client() { ::close(fd_); }
  bool connected() const { return connected_; }
  void Send(const std::string& s) { ::send(fd_, s.data(), s.size(), MSG_NOSIGNAL); }
  void CloseWrite() { ::shutdown(fd_, SHUT_WR); }
  // Everything the server sends until it closes; nullopt if it has not closed within `limit`.
  std::optional<std::string> ReadToEnd(std::chrono::milliseconds limit) {
    std::string out;
    const auto until = Clock::now() + limit;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
      pollfd p{fd_, POLLIN, 0};
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
        return std::nullopt;
      }
      char buf[4096];
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) return out;
      out.append(buf, static_cast<std::size_t>(n));
    }
  }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  bool connected_ = false;
};

std::vector<std::string> Command(const std::filesystem::path& path, const std::string& command) {
  std::vector<std::string> lines;
  auto s = RunControlCommand(path, command, [&](const std::string& l) { lines.push_back(l); });
  EXPECT_TRUE(s.ok()) << s.message();
  return lines;
}

void Status(const std::string& command, const std::function<void(const std::string&)>& out) {
  if (command == "status") {
    out("node        0123456789abcdef");
    out("peers       0 connected, 0 known");
  } else {
    out("unknown command '" + command + "'");
  }
}

TEST(AppControlTest, TenThousandStatusCallsLeaveThreadsFdsAndMapsBounded) {
  test::TempDir dir;
  Loop loop;
  const auto path = dir.path() / "control.sock";
  auto server = ControlServer::Start(loop.io(), path, Status);
  ASSERT_TRUE(server.ok()) << server.status().message();
  ASSERT_EQ(Command(path, "status").size(), 2u);  // the workers exist from here on
  const std::size_t threads = Threads(), fds = Fds(), maps = Maps();
  std::size_t answered = 0;
  for (int i = 0; i < 10000; ++i) {
    std::size_t lines = 0;
    auto s = RunControlCommand(path, "status", [&](const std::string&) { ++lines; });
    ASSERT_TRUE(s.ok()) << "call " << i << ": " << s.message();
    answered += lines == 2;
  }
  EXPECT_EQ(answered, 10000u);
  RecordProperty("threads", std::to_string(threads) + " -> " + std::to_string(Threads()));
  RecordProperty("fds", std::to_string(fds) + " -> " + std::to_string(Fds()));
  RecordProperty("maps", std::to_string(maps) + " -> " + std::to_string(Maps()));
  std::printf("threads %zu -> %zu, fds %zu -> %zu, maps %zu -> %zu\n", threads, Threads(), fds,
              Fds(), maps, Maps());
  EXPECT_LE(Threads(), threads);
  EXPECT_LE(Fds(), fds + 2);
  EXPECT_LE(Maps(), maps + 32);  // a thread per command: +2 per call, 20,000 more
  (*server)->Stop();
}

TEST(AppControlTest, ClientThatSendsNothingIsClosedAfterTheDeadline) {
  test::TempDir dir;
  Loop loop;
  const auto path = dir.path() / "control.sock";
  auto limits = ControlServer::DefaultLimits();
  limits.read_timeout = 300ms;
  auto server = ControlServer::Start(loop.io(), path, Status, limits);
  ASSERT_TRUE(server.ok()) << server.status().message();
  Client silent(path);
  ASSERT_TRUE(silent.connected());
  const auto start = Clock::now();
  auto got = silent.ReadToEnd(3s);
  const auto took = Clock::now() - start;
  ASSERT_TRUE(got.has_value()) << "the server never closed a client that sent nothing";
  EXPECT_EQ(*got, "");
  EXPECT_GE(took, 250ms);
  EXPECT_LT(took, 2s);
  // A partial command (no newline) gets the same deadline; meanwhile others are served.
  Client partial(path);
  partial.Send("sta");
  EXPECT_EQ(Command(path, "status").size(), 2u);
  EXPECT_EQ(partial.ReadToEnd(3s), std::optional<std::string>(""));
}

TEST(AppControlTest, SilentClientDoesNotBlockStop) {
  test::TempDir dir;
  Loop loop;
  const auto path = dir.path() / "control.sock";
  auto server = ControlServer::Start(loop.io(), path, Status);  // 5 s to send a command
  ASSERT_TRUE(server.ok()) << server.status().message();
  Client silent(path);
  ASSERT_TRUE(silent.connected());
  std::this_thread::sleep_for(50ms);  // accepted
  const auto start = Clock::now();
  auto stopped = std::async(std::launch::async, [&] { (*server)->Stop(); });
  const bool prompt = stopped.wait_for(1s) == std::future_status::ready;
  EXPECT_TRUE(prompt) << "Stop waited for a client that sends nothing";
  if (!prompt) silent.Send("status\n");  // let an old server finish, so the test can end
  stopped.wait();
  EXPECT_LT(Clock::now() - start, 1s);
  EXPECT_EQ(silent.ReadToEnd(1s), std::optional<std::string>(""));
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(RunControlCommand(path, "status", [](const std::string&) {}).ok());
}

TEST(AppControlTest, MalformedOrOversizedCommandsGetAnError) {
  test::TempDir dir;
  Loop loop;
  const auto path = dir.path() / "control.sock";
  std::atomic<int> handled{0};
  auto server = ControlServer::Start(
      loop.io(), path, [&](const std::string& c, const std::function<void(const std::string&)>& o) {
        ++handled;
        Status(c, o);
      });
  ASSERT_TRUE(server.ok()) << server.status().message();
  {
    Client c(path);
    c.Send(std::string(100, 'a') + "\n");
    auto got = c.ReadToEnd(2s);
    ASSERT_TRUE(got.has_value());
    EXPECT_TRUE(got->starts_with("error: a command is one line of at most 64 bytes")) << *got;
  }
  {
    Client c(path);  // a megabyte without a newline: refused after 65 bytes, not buffered
    c.Send(std::string(1 << 20, 'x'));
    auto got = c.ReadToEnd(2s);
    ASSERT_TRUE(got.has_value());
    EXPECT_TRUE(got->starts_with("error:")) << *got;
  }
  {
    Client c(path);
    c.Send(std::string("stat\x01\xff\0us\n", 10));
    auto got = c.ReadToEnd(2s);
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(*got, "error: a command is printable ASCII text\n");
  }
  EXPECT_EQ(handled.load(), 0);
  {
    Client c(path);  // no newline, then the client closes its side: still a command
    c.Send("status");
    c.CloseWrite();
    auto got = c.ReadToEnd(2s);
    ASSERT_TRUE(got.has_value());
    EXPECT_TRUE(got->starts_with("node ")) << *got;
  }
  EXPECT_EQ(Command(path, "bogus"), std::vector<std::string>{"unknown command 'bogus'"});
  EXPECT_EQ(Command(path, "status\r").size(), 2u);  // a CRLF line is the same command
  EXPECT_EQ(handled.load(), 3);
}

TEST(AppControlTest, ConnectionsOverTheCapAreRefusedAtOnce) {
  test::TempDir dir;
  Loop loop;
  const auto path = dir.path() / "control.sock";
  auto limits = ControlServer::DefaultLimits();
  limits.max_connections = 4;
  auto server = ControlServer::Start(loop.io(), path, Status, limits);
  ASSERT_TRUE(server.ok()) << server.status().message();
  std::vector<std::unique_ptr<Client>> silent;
  for (int i = 0; i < 4; ++i) silent.push_back(std::make_unique<Client>(path));
  std::this_thread::sleep_for(100ms);
  Client extra(path);
  const auto start = Clock::now();
  auto got = extra.ReadToEnd(2s);
  ASSERT_TRUE(got.has_value()) << "a fifth connection was held open";
  EXPECT_LT(Clock::now() - start, 1s);
  EXPECT_TRUE(got->starts_with("error: busy")) << *got;
  silent.clear();  // closing them frees their places
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(Command(path, "status").size(), 2u);
}

std::chrono::microseconds CpuTime() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return std::chrono::seconds(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         std::chrono::microseconds(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

TEST(AppControlTest, AcceptPausesWhenOutOfFileDescriptors) {
#if defined(__SANITIZE_ADDRESS__)
  // The sanitizers' own runtime needs descriptors (UBSan's type checks report false errors
  // when it cannot open what it reads); the plain build runs this test.
  GTEST_SKIP() << "not under ASan/UBSan: the sanitizer runtime fails without descriptors";
#endif
  test::TempDir dir;
  Loop loop;
  const auto path = dir.path() / "control.sock";
  auto server = ControlServer::Start(loop.io(), path, Status);
  ASSERT_TRUE(server.ok()) << server.status().message();
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &old), 0);
  Client waiting(path, false);  // its descriptor now, its connection once there are no more
  rlimit low = old;
  low.rlim_cur = Fds() + 8;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  std::vector<int> filler;
  for (int fd; (fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;) filler.push_back(fd);
  const bool connected = waiting.Connect();
  // accept(2) now fails with EMFILE: the loop must pause, not spin on it.
  const auto cpu = CpuTime();
  std::this_thread::sleep_for(500ms);
  const auto spent = CpuTime() - cpu;
  for (int fd : filler) ::close(fd);
  ::setrlimit(RLIMIT_NOFILE, &old);
  ASSERT_TRUE(connected);
  EXPECT_LT(spent, 150ms) << "the accept loop spun on EMFILE";
  // With descriptors back, the waiting client is served.
  waiting.Send("status\n");
  auto got = waiting.ReadToEnd(2s);
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(got->starts_with("node ")) << *got;
}

TEST(AppControlTest, CommandsRunOffTheEventLoopAndStreamTheirOutput) {
  test::TempDir dir;
  Loop loop;
  const auto path = dir.path() / "control.sock";
  std::promise<void> first_line_seen;
  auto seen = first_line_seen.get_future().share();
  std::atomic<bool> on_loop{false};
  auto server = ControlServer::Start(
      loop.io(), path,
      [&](const std::string& command, const std::function<void(const std::string&)>& out) {
        on_loop = on_loop || std::this_thread::get_id() == loop.id();
        if (command == "scrub") {
          // Progress must reach the client while the command runs; and the command may wait
          // for the event loop, as status does.
          out("progress 1");
          const bool streamed = seen.wait_for(5s) == std::future_status::ready;
          std::promise<int> p;
          asio::post(loop.io(), [&] { p.set_value(7); });
          const bool loop_free = p.get_future().wait_for(2s) == std::future_status::ready;
          out(streamed ? "progress 2" : "not streamed");
          out(loop_free ? "done" : "event loop blocked");
        } else if (command == "big") {
          // Far more than the 256 KiB queued for a client: the handler waits for it to read.
          for (int i = 0; i < 20000; ++i) out(std::string(500, 'a' + i % 26));
        } else if (command == "slow") {
          std::this_thread::sleep_for(1s);
          out("slow done");
        } else {
          Status(command, out);
        }
      });
  ASSERT_TRUE(server.ok()) << server.status().message();

  std::vector<std::string> scrub;
  auto s = RunControlCommand(path, "scrub", [&](const std::string& line) {
    if (scrub.empty()) first_line_seen.set_value();
    scrub.push_back(line);
  });
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(scrub, (std::vector<std::string>{"progress 1", "progress 2", "done"}));

  // A slow command holds a worker, not the event loop: a status meanwhile is answered at once.
  auto slow = std::async(std::launch::async, [&] { return Command(path, "slow"); });
  std::this_thread::sleep_for(100ms);
  const auto start = Clock::now();
  EXPECT_EQ(Command(path, "status").size(), 2u);
  EXPECT_LT(Clock::now() - start, 500ms);
  EXPECT_EQ(slow.get(), std::vector<std::string>{"slow done"});

  std::size_t lines = 0, bytes = 0;
  ASSERT_TRUE(RunControlCommand(path, "big", [&](const std::string& l) {
                ++lines;
                bytes += l.size();
              }).ok());
  EXPECT_EQ(lines, 20000u);
  EXPECT_EQ(bytes, 20000u * 500);
  EXPECT_FALSE(on_loop.load());
}

TEST(AppControlTest, StopWaitsForARunningCommandAndStartsNoOther) {
  test::TempDir dir;
  Loop loop;
  const auto path = dir.path() / "control.sock";
  auto limits = ControlServer::DefaultLimits();
  limits.workers = 1;
  std::atomic<int> started{0}, finished{0};
  auto server = ControlServer::Start(
      loop.io(), path,
      [&](const std::string&, const std::function<void(const std::string&)>& out) {
        ++started;
        std::this_thread::sleep_for(300ms);
        out("done");
        ++finished;
      },
      limits);
  ASSERT_TRUE(server.ok()) << server.status().message();
  Client running(path), queued(path);
  running.Send("gc\n");
  std::this_thread::sleep_for(100ms);
  queued.Send("gc\n");  // waits for the one worker
  std::this_thread::sleep_for(50ms);
  (*server)->Stop();
  EXPECT_EQ(started.load(), 1);
  EXPECT_EQ(finished.load(), 1);  // the handler's references stay valid until Stop returns
  EXPECT_TRUE(running.ReadToEnd(1s).has_value());
  EXPECT_TRUE(queued.ReadToEnd(1s).has_value());
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(started.load(), 1);
}

}  // namespace
}  // namespace foreverfs::app
