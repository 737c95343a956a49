#include "fuse/page_fill.h"

namespace foreverfs::fuse {

std::optional<std::uint64_t> PageFill::Ticket(fuse_ino_t ino) {
  MutexLock lock(mu_);
  if (auto it = inodes_.find(ino); it != inodes_.end() && it->second.writers > 0) {
    return std::nullopt;
  }
  return clock_;
}

void PageFill::Bump(fuse_ino_t ino) {
  inodes_[ino].changed = ++clock_;
  if (inodes_.size() <= kMaxInodes) return;
  // Keep the writers; what the others changed is summed up by the floor.
  std::erase_if(inodes_, [](const auto& e) { return e.second.writers == 0; });
  floor_ = clock_;
}

void PageFill::Opened(fuse_ino_t ino, std::uint64_t fh, bool writes) {
  MutexLock store(store_mu_);
  MutexLock lock(mu_);
  Bump(ino);
  if (writes && writer_handles_.emplace(fh, ino).second) ++inodes_[ino].writers;
}

void PageFill::Released(std::uint64_t fh) {
  MutexLock lock(mu_);
  auto h = writer_handles_.find(fh);
  if (h == writer_handles_.end()) return;
  if (auto it = inodes_.find(h->second); it != inodes_.end() && it->second.writers > 0) {
    --it->second.writers;
  }
  writer_handles_.erase(h);
}

void PageFill::Changed(fuse_ino_t ino) {
  MutexLock store(store_mu_);
  MutexLock lock(mu_);
  Bump(ino);
}

bool PageFill::StoreIfCurrent(const PageStore& p, const std::function<void()>& store) {
  MutexLock held(store_mu_);
  {
    MutexLock lock(mu_);
    if (p.ticket < floor_) return false;
    if (auto it = inodes_.find(p.ino); it != inodes_.end()) {
      if (it->second.writers > 0 || it->second.changed > p.ticket) return false;
    }
  }
  store();
  return true;
}

}  // namespace foreverfs::fuse
