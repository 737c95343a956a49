#pragma once
// Internal to app/: what the control socket (control.cpp) and the metrics endpoint (metrics.cpp)
// share. Include it only from those .cpp files: it brings in Asio.
//
// An Endpoint serves one listening socket on a strand of the node's event loop:
//   - an accept loop; at most `max_connections` connections at once, one more is sent the
//     `busy` text and closed at once; an accept error (EMFILE) pauses the loop for 100 ms
//     instead of spinning;
//   - one coroutine per connection (the `Serve` function), which keeps its reads and writes
//     under a deadline with Connection::Arm;
//   - a pool of `workers` threads for the part of a request that may block (a walk of chunks/,
//     scrub, gc, waiting for the event loop): Post() runs a job there, the job hands its result
//     back to the connection and Wake()s it;
//   - Stop(): no new connection and no new job; every connection closed; returns once the jobs
//     already running are done.
//
// Threads: Start and Stop from any thread except the event loop's (Stop waits for the loop to
// close the connections, then for the worker jobs, which may themselves wait for the loop).
// Post and stopping() from any thread; everything else on the strand. Lifetime: the owner keeps
// a shared_ptr and calls Stop() before dropping it (so that no worker ever holds the last one);
// coroutines hold shared_ptrs too, so the Endpoint goes when the last of them ends. Destroy it
// before the io_context.

#include <spdlog/spdlog.h>

#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "app/endpoint_limits.h"

namespace foreverfs::app::detail {

namespace asio = boost::asio;
using Strand = asio::strand<asio::io_context::executor_type>;
inline constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

template <typename Protocol>
class Connection : public std::enable_shared_from_this<Connection<Protocol>> {
 public:
  using Socket = typename Protocol::socket;

  explicit Connection(Socket socket)
      : socket_(std::move(socket)),
        deadline_(socket_.get_executor()),
        wake_(socket_.get_executor()) {}

  Socket& socket() { return socket_; }
  bool closed() const { return closed_; }
  // Whether a deadline closed it.
  bool timed_out() const { return timed_out_; }

  // Closes the connection if `limit` passes before the next Arm or Disarm: the pending read or
  // write then ends with an error.
  void Arm(std::chrono::milliseconds limit) {
    const auto generation = ++generation_;
    deadline_.expires_after(limit);
    deadline_.async_wait(
        [self = this->shared_from_this(), generation](boost::system::error_code ec) {
          // A deadline that fired just as it was re-armed is stale: the generation tells.
          if (!ec && self->generation_ == generation && !self->closed_) {
            self->timed_out_ = true;
            self->Close();
          }
        });
  }
  void Disarm() {
    ++generation_;
    deadline_.cancel();
  }

  // `co_await Park()` waits for Wake() or Close(). Check what you wait for before parking, in
  // the same step on the strand: a Wake() is posted to the strand, so it cannot slip in between.
  auto Park() {
    wake_.expires_at(asio::steady_timer::time_point::max());
    return wake_.async_wait(kNoThrow);
  }
  // Any thread.
  void Wake() {
    asio::post(socket_.get_executor(), [self = this->shared_from_this()] { self->wake_.cancel(); });
  }

  void Close() {
    closed_ = true;
    boost::system::error_code ignored;
    socket_.shutdown(Socket::shutdown_both, ignored);
    socket_.close(ignored);
    deadline_.cancel();
    wake_.cancel();
  }

 private:
  Socket socket_;
  asio::steady_timer deadline_;
  asio::steady_timer wake_;
  std::uint64_t generation_ = 0;
  bool closed_ = false;
  bool timed_out_ = false;
};

// Writes all of `data` within `limit`; false if the connection failed, timed out or closed.
template <typename Protocol>
asio::awaitable<bool> WriteAll(std::shared_ptr<Connection<Protocol>> c, std::string data,
                               std::chrono::milliseconds limit) {
  if (c->closed()) co_return false;
  c->Arm(limit);
  auto [ec, n] = co_await asio::async_write(c->socket(), asio::buffer(data), kNoThrow);
  c->Disarm();
  co_return !ec && !c->closed();
}

template <typename Protocol>
class Endpoint : public std::enable_shared_from_this<Endpoint<Protocol>> {
 public:
  using Conn = Connection<Protocol>;
  using Acceptor = typename Protocol::acceptor;
  // The coroutine that serves one connection; it ends by returning (the connection is then
  // closed for it).
  using Serve =
      std::function<asio::awaitable<void>(std::shared_ptr<Endpoint>, std::shared_ptr<Conn>)>;

  // `name` goes into log lines; `busy` is what a connection over the cap is sent.
  Endpoint(asio::io_context& io, std::string name, EndpointLimits limits, std::string busy)
      : strand_(asio::make_strand(io)),
        acceptor_(strand_),
        name_(std::move(name)),
        limits_(limits),
        busy_(std::move(busy)) {
    if (limits_.workers == 0) limits_.workers = 1;
  }
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;
  ~Endpoint() {
    if (pool_) pool_->join();
  }

  // Open, bind and listen it before Start.
  Acceptor& acceptor() { return acceptor_; }
  const EndpointLimits& limits() const { return limits_; }
  const std::string& name() const { return name_; }
  bool stopping() const { return stopping_; }

  // Starts the workers and the accept loop. Call once, after any fork.
  void Start(Serve serve) {
    pool_ = std::make_unique<asio::thread_pool>(limits_.workers);
    serve_ = std::move(serve);
    started_ = true;
    asio::co_spawn(strand_, AcceptLoop(this->shared_from_this()),
                   [name = name_](std::exception_ptr e) {
                     if (e) spdlog::error("{}: the accept loop failed: {}", name, What(e));
                   });
  }

  // Runs `job` on a worker; false, and the job is dropped, once Stop has begun.
  bool Post(std::function<void()> job) {
    std::lock_guard lock(mu_);
    if (stopping_ || !pool_) return false;
    asio::post(*pool_, std::move(job));
    return true;
  }

  void Stop() {
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    if (!started_ || strand_.running_in_this_thread()) {
      CloseAll();  // before Start nothing else touches the acceptor
    } else {
      auto closed = std::make_shared<std::promise<void>>();
      auto done = closed->get_future();
      asio::post(strand_, [self = this->shared_from_this(), closed] {
        self->CloseAll();
        closed->set_value();
      });
      if (done.wait_for(std::chrono::seconds(2)) != std::future_status::ready) {
        spdlog::warn("{}: the event loop did not close the connections within 2 s", name_);
      }
    }
    if (pool_) pool_->join();
  }

  static std::string What(std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      return x.what();
    } catch (...) {
      return "an exception that is not a std::exception";
    }
  }

 private:
  void CloseAll() {
    boost::system::error_code ignored;
    acceptor_.close(ignored);
    for (const auto& c : conns_) c->Close();
    serve_ = nullptr;
  }

  // Tells a connection over the cap `busy_` without waiting for it, and closes it.
  void Refuse(typename Protocol::socket& socket) {
    boost::system::error_code ignored;
    socket.non_blocking(true, ignored);
    socket.write_some(asio::buffer(busy_), ignored);
    socket.shutdown(Protocol::socket::shutdown_both, ignored);
    socket.close(ignored);
    ++refused_;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_refusal_log_ >= std::chrono::seconds(10)) {
      last_refusal_log_ = now;
      spdlog::warn("{}: {} connections already open; refused {} so far", name_, conns_.size(),
                   refused_);
    }
  }

  static asio::awaitable<void> AcceptLoop(std::shared_ptr<Endpoint> self) {
    asio::steady_timer pause(self->strand_);
    for (;;) {
      auto [ec, socket] = co_await self->acceptor_.async_accept(kNoThrow);
      if (self->stopping_) co_return;
      if (ec) {
        if (ec == asio::error::operation_aborted) co_return;
        const auto now = std::chrono::steady_clock::now();
        if (now - self->last_accept_error_log_ >= std::chrono::seconds(10)) {
          self->last_accept_error_log_ = now;
          spdlog::warn("{}: accept failed: {}; pausing 100 ms after each failure", self->name_,
                       ec.message());
        }
        pause.expires_after(std::chrono::milliseconds(100));
        co_await pause.async_wait(kNoThrow);
        continue;
      }
      if (self->conns_.size() >= self->limits_.max_connections) {
        self->Refuse(socket);
        continue;
      }
      auto conn = std::make_shared<Conn>(std::move(socket));
      self->conns_.insert(conn);
      asio::co_spawn(self->strand_, self->serve_(self, conn), [self, conn](std::exception_ptr e) {
        conn->Close();
        self->conns_.erase(conn);
        if (e) spdlog::error("{}: a connection failed: {}", self->name_, What(e));
      });
    }
  }

  Strand strand_;
  Acceptor acceptor_;
  const std::string name_;
  EndpointLimits limits_;
  const std::string busy_;
  Serve serve_;                                                    // strand
  std::set<std::shared_ptr<Conn>> conns_;                          // strand: the open connections
  std::uint64_t refused_ = 0;                                      // strand
  std::chrono::steady_clock::time_point last_refusal_log_{};       // strand
  std::chrono::steady_clock::time_point last_accept_error_log_{};  // strand
  std::atomic<bool> started_{false};
  std::unique_ptr<asio::thread_pool> pool_;  // set by Start, before anything can Post
  mutable std::mutex mu_;                    // orders Post against Stop
  std::atomic<bool> stopping_{false};
};

}  // namespace foreverfs::app::detail
