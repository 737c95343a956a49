#pragma once
// A std::mutex that Clang's thread-safety analysis knows (libstdc++'s is not annotated), and
// its scoped lock. Also BasicLockable, so std::condition_variable_any can wait on it.

#include <mutex>

#include "base/thread_annotations.h"

namespace foreverfs {

class CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void lock() ACQUIRE() { mu_.lock(); }
  void unlock() RELEASE() { mu_.unlock(); }
  bool try_lock() TRY_ACQUIRE(true) { return mu_.try_lock(); }
  // Tells the analysis the caller holds it (taken by a std::scoped_lock of several mutexes).
  void AssertHeld() const ASSERT_CAPABILITY(this) {}
  // For std::scoped_lock of several mutexes at once (std::lock's back-off).
  std::mutex& native() RETURN_CAPABILITY(this) { return mu_; }

 private:
  std::mutex mu_;
};

class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~MutexLock() RELEASE() { mu_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mu_;
};

}  // namespace foreverfs
