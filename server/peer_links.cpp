#include "server/peer_links.h"

#include <algorithm>

namespace foreverfs::server {

namespace {
constexpr std::size_t kMaxGone = 256;
}  // namespace

bool PeerLinks::Admit(const std::shared_ptr<net::Link>& link) {
  const auto& info = link->Peer();
  auto it = links_.find(info.node_id);
  if (it != links_.end()) {
    auto dialer = [&](const net::PeerInfo& p) { return p.outbound ? self_ : p.node_id; };
    if (dialer(info) >= dialer(it->second->Peer())) return false;
    auto old = it->second;
    links_.erase(it);
    old->Close("replaced by a newer link to the same peer");
  }
  links_[info.node_id] = link;
  count_ = links_.size();
  return true;
}

bool PeerLinks::IsCurrent(const std::shared_ptr<net::Link>& link) const {
  auto it = links_.find(link->Peer().node_id);
  return it != links_.end() && it->second == link;
}

void PeerLinks::Remove(const std::shared_ptr<net::Link>& link, const std::string& reason) {
  if (!IsCurrent(link)) return;
  const auto& info = link->Peer();
  PeerStatus gone;
  gone.node_id = info.node_id;
  gone.addr = DialableAddr(info);
  gone.remote = info.remote;
  gone.outbound = info.outbound;
  gone.connected_since = std::chrono::system_clock::now();
  gone.bytes_in = link->Counters().BytesIn();
  gone.bytes_out = link->Counters().BytesOut();
  gone.last_error = "disconnected: " + reason;
  gone.last_error_at = gone.connected_since;
  if (gone_.size() >= kMaxGone && !gone_.contains(info.node_id)) {
    auto oldest = std::min_element(gone_.begin(), gone_.end(), [](auto& a, auto& b) {
      return a.second.last_error_at < b.second.last_error_at;
    });
    gone_.erase(oldest);
  }
  gone_[info.node_id] = std::move(gone);
  links_.erase(info.node_id);
  count_ = links_.size();
}

std::shared_ptr<net::Link> PeerLinks::Find(std::uint64_t node) const {
  auto it = links_.find(node);
  return it == links_.end() ? nullptr : it->second;
}

std::string PeerLinks::DialableAddr(const net::PeerInfo& p) {
  if (p.listen_addr.empty()) return {};
  if (p.listen_addr.front() != ':') return p.listen_addr;
  auto colon = p.remote.rfind(':');
  if (colon == std::string::npos) return {};
  return p.remote.substr(0, colon) + p.listen_addr;
}

}  // namespace foreverfs::server
