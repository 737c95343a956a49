#include <cstring>

#include "net/transport.h"

namespace foreverfs::net {

crypto::Digest AuthProof(const crypto::Key256& auth_key, const crypto::Digest& own_nonce,
                         const crypto::Digest& peer_nonce, std::uint64_t own_node_id) {
  static constexpr std::string_view kLabel = "foreverfs auth v1";
  Bytes msg(kLabel.begin(), kLabel.end());
  msg.insert(msg.end(), own_nonce.begin(), own_nonce.end());
  msg.insert(msg.end(), peer_nonce.begin(), peer_nonce.end());
  for (int i = 0; i < 8; ++i) msg.push_back(static_cast<std::uint8_t>(own_node_id >> (8 * i)));
  return crypto::HmacSha256(auth_key, msg);
}

}  // namespace foreverfs::net
