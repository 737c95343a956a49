#pragma once
// StorageWork: the replicator's disk work (verify, seal and write a chunk received; read and
// open one to send; answer which chunks are here; make the namespace durable before an ack)
// runs on a pool of its own, off the event thread, which is left with the network.
//
// Threading: Run is called on the event thread; `work` runs on a pool thread and `then(result)`
// back on the event thread. The event loop counts as busy meanwhile, so io_context::run does
// not return under it. The pool (2 threads) is started on first use, on the event thread:
// threads started before the process daemonizes (fork) would not exist in the daemon.
// Owned by the Replicator, which calls Stop (joins the pool) before it goes; the parts that
// share it may outlive that through pending timers, and from then on Run does the work inline.

#include <atomic>
#include <functional>
#include <memory>
#include <type_traits>

namespace boost::asio {
class io_context;
class thread_pool;
}  // namespace boost::asio

namespace foreverfs::server {

class StorageWork {
 public:
  explicit StorageWork(boost::asio::io_context& io);
  ~StorageWork();
  StorageWork(const StorageWork&) = delete;
  StorageWork& operator=(const StorageWork&) = delete;

  template <typename Work, typename Then>
  void Run(Work work, Then then) {
    using R = std::invoke_result_t<Work&>;
    Post([work = std::move(work), then = std::move(then)]() mutable -> std::function<void()> {
      auto result = std::make_shared<R>(work());
      return [then = std::move(then), result]() mutable { then(std::move(*result)); };
    });
  }
  // Joins the pool (the jobs queued finish first). Any thread but the pool's.
  void Stop();

 private:
  // `job` runs on the pool; what it returns runs on the event thread.
  void Post(std::function<std::function<void()>()> job);

  boost::asio::io_context& io_;
  std::unique_ptr<boost::asio::thread_pool> pool_;  // event thread (Run) until Stop
  std::atomic<bool> stopped_{false};
};

}  // namespace foreverfs::server
