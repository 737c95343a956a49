#include "server/storage_work.h"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

namespace foreverfs::server {

namespace asio = boost::asio;

StorageWork::StorageWork(asio::io_context& io) : io_(io) {}

StorageWork::~StorageWork() { Stop(); }

void StorageWork::Stop() {
  stopped_ = true;
  if (pool_) pool_->join();
}

void StorageWork::Post(std::function<std::function<void()>()> job) {
  if (stopped_) {
    job()();
    return;
  }
  if (!pool_) pool_ = std::make_unique<asio::thread_pool>(2);
  asio::post(*pool_, [&io = io_, job = std::move(job), guard = asio::make_work_guard(io_)] {
    asio::post(io, job());
  });
}

}  // namespace foreverfs::server
