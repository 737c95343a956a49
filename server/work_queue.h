#pragma once
// A few worker threads and a queue of jobs. The threads start with the first job, not with
// the object: a daemon forks after building its objects, and threads do not survive a fork.
// The destructor runs every queued job, then joins.

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace foreverfs::server {

class WorkQueue {
 public:
  explicit WorkQueue(int threads) : threads_(threads) {}
  ~WorkQueue() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  void Post(std::function<void()> job) {
    {
      std::lock_guard lock(mu_);
      if (workers_.empty()) {
        for (int i = 0; i < threads_; ++i) workers_.emplace_back([this] { Run(); });
      }
      jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
  }

 private:
  void Run() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
        if (jobs_.empty()) return;  // stopping, and nothing left to do
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  const int threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> workers_;
  bool stop_ = false;
};

}  // namespace foreverfs::server
