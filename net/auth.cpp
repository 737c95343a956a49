#include <cstring>

#include "net/transport.h"

namespace foreverfs::net {
namespace {

void PutU64(Bytes& msg, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) msg.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

// label || role || own nonce || peer nonce: the part both proofs share.
Bytes ProofInput(std::string_view label, bool dialer, const crypto::Digest& own_nonce,
                 const crypto::Digest& peer_nonce) {
  Bytes msg(label.begin(), label.end());
  msg.push_back(dialer ? 'D' : 'A');
  msg.insert(msg.end(), own_nonce.begin(), own_nonce.end());
  msg.insert(msg.end(), peer_nonce.begin(), peer_nonce.end());
  return msg;
}

}  // namespace

crypto::Digest AuthProof(const crypto::Key256& auth_key, bool dialer,
                         const crypto::Digest& own_nonce, const crypto::Digest& peer_nonce) {
  return crypto::HmacSha256(auth_key,
                            ProofInput("foreverfs auth v3", dialer, own_nonce, peer_nonce));
}

crypto::Digest IdentityProof(const crypto::Key256& auth_key, bool dialer,
                             const crypto::Digest& own_nonce, const crypto::Digest& peer_nonce,
                             const Identity& id) {
  Bytes msg = ProofInput("foreverfs identity v3", dialer, own_nonce, peer_nonce);
  PutU64(msg, id.node_id);
  PutU64(msg, id.instance);
  PutU64(msg, id.uptime_ms);
  msg.push_back(static_cast<std::uint8_t>(id.listen_addr.size()));
  msg.push_back(static_cast<std::uint8_t>(id.listen_addr.size() >> 8));
  msg.insert(msg.end(), id.listen_addr.begin(), id.listen_addr.end());
  return crypto::HmacSha256(auth_key, msg);
}

}  // namespace foreverfs::net
