#include "app/control.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <list>
#include <thread>

#include "base/fd.h"

namespace foreverfs::app {
namespace {

Result<sockaddr_un> Address(const std::filesystem::path& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.native().size() >= sizeof(addr.sun_path)) {
    return Err(Code::kNameTooLong, "control socket path {} is too long", path.string());
  }
  std::strcpy(addr.sun_path, path.c_str());
  return addr;
}

bool WriteAll(int fd, std::string_view s) {
  while (!s.empty()) {
    ssize_t n = ::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    s.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

}  // namespace

struct ControlServer::Impl {
  UniqueFd listener;
  std::filesystem::path path;
  CommandHandler handler;
  std::atomic<bool> stopping{false};
  std::thread acceptor;
  std::mutex mu;
  std::list<std::thread> workers;

  void Serve(int fd) {
    UniqueFd conn(fd);
    std::string command;
    char c;
    while (command.size() < 64 && ::read(conn.get(), &c, 1) == 1 && c != '\n') command.push_back(c);
    bool alive = true;
    handler(command, [&](const std::string& line) {
      if (alive) alive = WriteAll(conn.get(), line + "\n");
    });
  }

  void AcceptLoop() {
    while (!stopping) {
      pollfd p{listener.get(), POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) continue;
      int fd = ::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      std::lock_guard lock(mu);
      workers.emplace_back([this, fd] { Serve(fd); });
    }
  }
};

Result<std::unique_ptr<ControlServer>> ControlServer::Start(const std::filesystem::path& path,
                                                            CommandHandler handler) {
  auto addr = Address(path);
  if (!addr.ok()) return addr.status();
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus(errno, "creating the control socket");
  ::unlink(path.c_str());  // a stale socket from a crash; the data directory lock is ours
  mode_t old = ::umask(0177);
  int rc = ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr));
  ::umask(old);
  if (rc != 0) return ErrnoStatus(errno, fmt::format("binding control socket {}", path.string()));
  ::chmod(path.c_str(), 0600);
  if (::listen(fd.get(), 8) != 0) return ErrnoStatus(errno, "listening on the control socket");
  std::unique_ptr<ControlServer> server(new ControlServer);
  server->impl_ = std::make_unique<Impl>();
  auto& im = *server->impl_;
  im.listener = std::move(fd);
  im.path = path;
  im.handler = std::move(handler);
  im.acceptor = std::thread([p = &im] { p->AcceptLoop(); });
  return server;
}

void ControlServer::Stop() {
  if (!impl_ || impl_->stopping.exchange(true)) return;
  if (impl_->acceptor.joinable()) impl_->acceptor.join();
  std::lock_guard lock(impl_->mu);
  for (auto& t : impl_->workers) {
    if (t.joinable()) t.join();
  }
  ::unlink(impl_->path.c_str());
}

ControlServer::~ControlServer() { Stop(); }

Status RunControlCommand(const std::filesystem::path& socket, const std::string& command,
                         const std::function<void(const std::string&)>& out) {
  auto addr = Address(socket);
  if (!addr.ok()) return addr.status();
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus(errno, "creating a socket");
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    return ErrnoStatus(
        errno, fmt::format("connecting to {} (is foreverfs running on it?)", socket.string()));
  }
  if (!WriteAll(fd.get(), command + "\n")) return ErrnoStatus(errno, "sending the command");
  std::string line;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (ssize_t i = 0; i < n; ++i) {
      if (buf[i] == '\n') {
        out(line);
        line.clear();
      } else {
        line.push_back(buf[i]);
      }
    }
  }
  if (!line.empty()) out(line);
  return Ok();
}

}  // namespace foreverfs::app
