#include "fuse/page_fill.h"

namespace foreverfs::fuse {

std::optional<std::uint64_t> PageFill::Ticket(fuse_ino_t ino) {
  MutexLock lock(mu_);
  if (auto it = inodes_.find(ino); it != inodes_.end() && !Storable(it->second)) {
    return std::nullopt;
  }
  return clock_;
}

bool PageFill::Storable(const State& s) { return s.writers == 0 && s.older_handles == 0; }

void PageFill::Bump(fuse_ino_t ino) {
  inodes_[ino].changed = ++clock_;
  if (inodes_.size() <= kMaxInodes) return;
  // Keep what is still in use; what the others changed is summed up by the floor.
  std::erase_if(inodes_, [](const auto& e) { return e.second.handles == 0 && !e.second.storing; });
  floor_ = clock_;
}

void PageFill::WaitForStore(fuse_ino_t ino) {
  for (;;) {
    auto it = inodes_.find(ino);
    if (it == inodes_.end() || !it->second.storing) return;
    stored_.wait(mu_);
  }
}

void PageFill::Opened(fuse_ino_t ino, std::uint64_t fh, bool writes) {
  MutexLock lock(mu_);
  WaitForStore(ino);
  Bump(ino);
  if (!handles_.emplace(fh, Handle{ino, clock_, writes}).second) return;
  State& s = inodes_[ino];
  ++s.handles;
  if (writes) ++s.writers;
}

void PageFill::Released(std::uint64_t fh) {
  MutexLock lock(mu_);
  auto h = handles_.find(fh);
  if (h == handles_.end()) return;
  if (auto it = inodes_.find(h->second.ino); it != inodes_.end()) {
    State& s = it->second;
    if (s.handles > 0) --s.handles;
    if (h->second.writes && s.writers > 0) --s.writers;
    if (h->second.opened < s.peer_changed && s.older_handles > 0) --s.older_handles;
  }
  handles_.erase(h);
}

void PageFill::Changed(fuse_ino_t ino) {
  MutexLock lock(mu_);
  WaitForStore(ino);
  Bump(ino);
}

void PageFill::PeerChanged(fuse_ino_t ino) {
  MutexLock lock(mu_);
  Bump(ino);
  State& s = inodes_[ino];
  s.peer_changed = clock_;
  s.older_handles = s.handles;  // each opened before now, so may read the older version
}

bool PageFill::StoreIfCurrent(const PageStore& p, const std::function<void()>& store) {
  {
    MutexLock lock(mu_);
    if (p.ticket < floor_) return false;
    State& s = inodes_[p.ino];
    if (!Storable(s) || s.changed > p.ticket || s.storing) return false;
    s.storing = true;
  }
  // Whatever store() does, the inode is let go and its waiters woken.
  struct Done {
    PageFill& pf;
    fuse_ino_t ino;
    ~Done() {
      {
        MutexLock lock(pf.mu_);
        if (auto it = pf.inodes_.find(ino); it != pf.inodes_.end()) it->second.storing = false;
      }
      pf.stored_.notify_all();
    }
  } done{*this, p.ino};
  store();
  return true;
}

}  // namespace foreverfs::fuse
