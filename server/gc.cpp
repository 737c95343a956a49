#include "server/gc.h"

#include <spdlog/spdlog.h>

#include <chrono>

namespace foreverfs::server {

Result<std::set<cas::ChunkId>> ChunkMaintenance::Referenced() {
  std::set<cas::ChunkId> refs;
  auto add = [&](const model::ChunkMap& manifest) {
    for (const auto& [index, id] : manifest) refs.insert(id);
  };
  auto s = fs_.ns().ForEachLiveManifest([&](const InodeRecord& r) { add(r.manifest); });
  if (!s.ok()) return s;
  fs_.ForEachOpenManifest(add);
  return refs;
}

Result<GcStats> ChunkMaintenance::Collect() {
  MutexLock lock(mu_);
  GcStats stats;
  // Stored ids first, references second: a chunk stored in between is not in `stored`, and a
  // version committed in between is in `refs`, so neither can be taken for garbage.
  // A chunk stored (or deduplicated) by a commit while this pass runs is not removed, even if
  // the references below were read before that commit (FileServer::BeginGcWindow).
  fs_.BeginGcWindow();
  struct EndWindow {
    FileServer& fs;
    ~EndWindow() { fs.EndGcWindow(); }
  } end_window{fs_};
  std::vector<cas::ChunkId> stored;
  if (auto s = fs_.store().ForEach([&](const cas::ChunkId& id) { stored.push_back(id); });
      !s.ok()) {
    return s;
  }
  auto refs = Referenced();
  if (!refs.ok()) return refs.status();
  if (after_references_for_test_) after_references_for_test_();
  stats.referenced = refs->size();
  stats.stored = stored.size();
  std::set<cas::ChunkId> unreferenced;
  for (const auto& id : stored) {
    if (refs->contains(id)) continue;
    if (marked_.contains(id)) {
      auto removed = fs_.RemoveIfUntouched(id);
      if (!removed.ok()) {
        spdlog::warn("gc: cannot remove chunk {}: {}", cas::Hex(id), removed.status().message());
      } else if (*removed) {
        ++stats.removed;
      }
    } else if (!fs_.TouchedInGcWindow(id)) {
      unreferenced.insert(id);
    }
  }
  marked_ = std::move(unreferenced);
  stats.marked = marked_.size();
  if (stats.removed || stats.marked) {
    spdlog::info(
        "gc: {} chunks stored, {} referenced, {} removed, {} unreferenced (removed next pass)",
        stats.stored, stats.referenced, stats.removed, stats.marked);
  }
  return stats;
}

Result<ScrubStats> ChunkMaintenance::Scrub(
    const std::function<void(const std::string&)>& progress) {
  MutexLock lock(mu_);
  ScrubStats st;
  std::vector<cas::ChunkId> stored;
  if (auto s = fs_.store().ForEach([&](const cas::ChunkId& id) { stored.push_back(id); });
      !s.ok()) {
    return s;
  }
  auto refs = Referenced();
  if (!refs.ok()) return refs.status();
  const auto start = std::chrono::steady_clock::now();
  auto last = start;
  auto report = [&](bool final) {
    auto now = std::chrono::steady_clock::now();
    if (!final && now - last < std::chrono::seconds(1)) return;
    last = now;
    double secs = std::chrono::duration<double>(now - start).count();
    progress(fmt::format(
        "scrub{}: {}/{} chunks checked, {:.1f} MiB at {:.0f} MiB/s; {} corrupt, {} missing, "
        "{} repaired, {} not repaired",
        final ? " done" : "", st.checked, stored.size(), st.bytes / 1048576.0,
        secs > 0 ? st.bytes / 1048576.0 / secs : 0.0, st.corrupt, st.missing, st.repaired,
        st.unrepaired));
  };
  auto repair = [&](const cas::ChunkId& id) {
    auto fetched = fs_.LoadChunk(id);  // removes a corrupt copy and fetches it from a peer
    if (fetched.ok()) {
      ++st.repaired;
    } else {
      ++st.unrepaired;
      spdlog::error("scrub: chunk {} could not be repaired: {}", cas::Hex(id),
                    fetched.status().message());
    }
  };
  std::set<cas::ChunkId> present;
  for (const auto& id : stored) {
    auto data = fs_.store().Get(id);
    ++st.checked;
    if (data.ok()) {
      st.bytes += data->size();
      present.insert(id);
    } else if (data.status().code() == Code::kCorruption) {
      ++st.corrupt;
      present.insert(id);  // handled here, not again as missing
      spdlog::error("scrub: chunk {} is corrupt ({})", cas::Hex(id), data.status().message());
      if (refs->contains(id)) {
        repair(id);
      } else {
        (void)fs_.store().Remove(id);  // nobody needs it: just drop the bad copy
      }
    }
    report(false);
  }
  for (const auto& id : *refs) {
    if (present.contains(id) || fs_.store().Has(id)) continue;
    ++st.missing;
    repair(id);
    report(false);
  }
  report(true);
  return st;
}

}  // namespace foreverfs::server
