#include "app/control.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read_until.hpp>
#include <condition_variable>
#include <cstring>

#include "app/endpoint_server.h"
#include "base/fd.h"

namespace foreverfs::app {
namespace {

using detail::kNoThrow;
using Local = boost::asio::local::stream_protocol;
using Ep = detail::Endpoint<Local>;
using Conn = detail::Connection<Local>;
namespace asio = boost::asio;

// Lines a command has output and the connection has not written yet; past this the handler
// waits for the client to read.
constexpr std::size_t kMaxPending = 256 * 1024;

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

// A command's output on its way from the worker that runs the handler to the connection's
// coroutine.
struct Reply {
  std::mutex mu;
  std::condition_variable room;  // pending shrank, or the lines are no longer wanted
  std::string pending;           // lines not yet written
  bool done = false;             // the handler returned
  bool dropped = false;          // the connection is gone: lines are thrown away
};

// On a worker: runs the handler, queueing its lines for the connection.
void RunCommand(std::shared_ptr<Ep> ep, std::shared_ptr<Conn> conn, std::shared_ptr<Reply> reply,
                CommandHandler handler, std::string command) {
  auto out = [&](const std::string& line) {
    std::unique_lock lock(reply->mu);
    // Polled as well as notified, so that Stop frees a handler waiting here even if the loop
    // can no longer run the connection.
    while (!reply->dropped && !ep->stopping() && reply->pending.size() >= kMaxPending) {
      reply->room.wait_for(lock, std::chrono::milliseconds(100));
    }
    if (reply->dropped || ep->stopping()) return;
    reply->pending += line;
    reply->pending += '\n';
    lock.unlock();
    conn->Wake();
  };
  if (!ep->stopping()) {  // a command queued behind others when Stop began is not started
    try {
      handler(command, out);
    } catch (const std::exception& e) {
      spdlog::error("control command '{}' failed: {}", command, e.what());
      out(fmt::format("error: {}", e.what()));
    }
  }
  {
    std::lock_guard lock(reply->mu);
    reply->done = true;
  }
  conn->Wake();
}

asio::awaitable<void> ServeControl(std::shared_ptr<Ep> ep, std::shared_ptr<Conn> conn,
                                   CommandHandler handler) {
  const auto& limits = ep->limits();
  std::string buf;
  conn->Arm(limits.read_timeout);
  auto [ec, n] = co_await asio::async_read_until(
      conn->socket(), asio::dynamic_buffer(buf, ControlServer::kMaxCommand + 1), '\n', kNoThrow);
  conn->Disarm();
  std::string command;
  if (!ec) {
    command = buf.substr(0, n - 1);
  } else if (ec == asio::error::eof && !buf.empty() && !conn->closed()) {
    command = buf;  // the client shut down its side without a newline
  } else if (ec == asio::error::not_found) {
    co_await detail::WriteAll(conn,
                              fmt::format("error: a command is one line of at most {} bytes\n",
                                          ControlServer::kMaxCommand),
                              limits.write_timeout);
    co_return;
  } else {
    if (conn->timed_out()) {
      spdlog::debug("control socket: a client sent no command within {} ms; closed it",
                    limits.read_timeout.count());
    }
    co_return;
  }
  if (!command.empty() && command.back() == '\r') command.pop_back();
  if (!std::all_of(command.begin(), command.end(), [](char c) { return c >= 0x20 && c < 0x7f; })) {
    co_await detail::WriteAll(conn, std::string("error: a command is printable ASCII text\n"),
                              limits.write_timeout);
    co_return;
  }

  auto reply = std::make_shared<Reply>();
  if (!ep->Post(
          [ep, conn, reply, handler, command] { RunCommand(ep, conn, reply, handler, command); })) {
    co_return;
  }
  // Write what the handler outputs as it comes. The connection is held until the handler is
  // done even if the client went, so that at most max_connections commands are ever queued.
  bool writable = true;
  for (;;) {
    std::string lines;
    bool done = false;
    {
      std::lock_guard lock(reply->mu);
      if (writable) lines.swap(reply->pending);
      reply->pending.clear();
      reply->dropped = !writable;
      done = reply->done;
    }
    reply->room.notify_all();
    if (ep->stopping()) break;
    if (!lines.empty()) {
      writable = co_await detail::WriteAll(conn, std::move(lines), limits.write_timeout);
      continue;
    }
    if (done) break;
    co_await conn->Park();
  }
  {
    std::lock_guard lock(reply->mu);
    reply->dropped = true;
  }
  reply->room.notify_all();
}

}  // namespace

struct ControlServer::Impl {
  std::shared_ptr<Ep> endpoint;
  std::filesystem::path path;
};

Result<std::unique_ptr<ControlServer>> ControlServer::Start(asio::io_context& io,
                                                            const std::filesystem::path& path,
                                                            CommandHandler handler,
                                                            EndpointLimits limits) {
  if (auto addr = Address(path); !addr.ok()) return addr.status();
  auto ep =
      std::make_shared<Ep>(io, "control socket", limits,
                           fmt::format("error: busy ({} control connections open); try again\n",
                                       limits.max_connections));
  auto& acceptor = ep->acceptor();
  boost::system::error_code ec;
  if (acceptor.open(Local(), ec); ec) {
    return Err(Code::kIOError, "creating the control socket: {}", ec.message());
  }
  ::unlink(path.c_str());  // a stale socket from a crash; the data directory lock is ours
  mode_t old = ::umask(0177);
  acceptor.bind(Local::endpoint(path.string()), ec);
  ::umask(old);
  if (ec) return Err(Code::kIOError, "binding control socket {}: {}", path.string(), ec.message());
  ::chmod(path.c_str(), 0600);
  if (acceptor.listen(static_cast<int>(limits.max_connections), ec); ec) {
    return Err(Code::kIOError, "listening on the control socket: {}", ec.message());
  }
  ep->Start([handler = std::move(handler)](std::shared_ptr<Ep> e, std::shared_ptr<Conn> c) {
    return ServeControl(std::move(e), std::move(c), handler);
  });
  std::unique_ptr<ControlServer> server(new ControlServer);
  server->impl_ = std::make_unique<Impl>(Impl{std::move(ep), path});
  return server;
}

void ControlServer::Stop() {
  if (!impl_ || !impl_->endpoint) return;
  impl_->endpoint->Stop();
  impl_->endpoint.reset();
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
