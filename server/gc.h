#pragma once
// Garbage collection and scrubbing of the local chunk store.
//
// Collect: a chunk that no live file version (and no file open here) references is removed
// once it has stayed unreferenced for a whole pass interval: the first pass that finds it
// unreferenced only marks it, the next one removes it. That interval is the grace period that
// protects chunks stored for a version not yet committed, or fetched for one not yet applied.
// Every node collects its own store.
//
// Scrub: reads and verifies every local chunk; a chunk whose bytes no longer match its id is
// removed and fetched again from a peer; a chunk a live file needs but that is missing is
// fetched too. Progress and a summary go to a callback.
//
// Thread-safe: one pass at a time (a mutex); may run beside everything else.

#include <cstdint>
#include <functional>
#include <mutex>
#include <set>
#include <string>

#include "base/mutex.h"
#include "server/file_server.h"

namespace foreverfs::server {

struct GcStats {
  std::size_t referenced = 0;  // chunk ids live versions need
  std::size_t stored = 0;      // chunks in the store before the pass
  std::size_t marked = 0;      // unreferenced, to be removed by the next pass
  std::size_t removed = 0;
};

struct ScrubStats {
  std::size_t checked = 0;
  std::size_t corrupt = 0;
  std::size_t missing = 0;
  std::size_t repaired = 0;
  std::size_t unrepaired = 0;
  std::uint64_t bytes = 0;
};

class ChunkMaintenance {
 public:
  explicit ChunkMaintenance(FileServer& fs) : fs_(fs) {}

  Result<GcStats> Collect();
  // `progress` gets a line now and then and the summary at the end.
  Result<ScrubStats> Scrub(const std::function<void(const std::string&)>& progress);
  // Tests: runs between reading the references and removing chunks.
  void SetAfterReferencesForTest(std::function<void()> fn) {
    after_references_for_test_ = std::move(fn);
  }

 private:
  Result<std::set<cas::ChunkId>> Referenced();

  FileServer& fs_;
  Mutex mu_;
  std::set<cas::ChunkId> marked_ GUARDED_BY(mu_);  // unreferenced at the last pass
  std::function<void()> after_references_for_test_;
};

}  // namespace foreverfs::server
