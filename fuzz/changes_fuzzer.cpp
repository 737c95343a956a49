// libFuzzer target: arbitrary bytes as the payload of a Changes message (namespace updates from
// a peer), decoded and then applied to an in-memory namespace database. Neither step may crash
// or leak; applying the same updates twice must change no inode and no entry the second time.
#include <cstdint>
#include <cstdlib>

#include "net/messages.h"
#include "server/namespace_db.h"

using namespace foreverfs;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto message = net::DecodePayload(net::MessageType::kChanges, ByteSpan(data, size));
  if (!message.ok()) return 0;
  const auto& changes = std::get<net::Changes>(*message);
  for (const auto& d : changes.dentries) {
    if (!model::ValidName(d.name)) std::abort();  // the decoder let a bad name through
  }
  auto db = server::NamespaceDb::Open(":memory:");
  if (!db.ok()) std::abort();
  server::ChangeSet cs{changes.inodes, changes.dentries};
  auto first = (*db)->Apply(cs, 7, changes.up_to);
  if (!first.ok()) return 0;
  // Applying the same updates again changes no inode and no entry. (A hostile batch may hold
  // two different records with one version, which no honest node sends: the merge keeps the
  // first of them on every pass.)
  auto second = (*db)->Apply(cs, 7, changes.up_to);
  if (!second.ok() || !second->inodes.empty() || !second->dentries.empty()) std::abort();
  return 0;
}
