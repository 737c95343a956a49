// Writes the seed corpus: one valid frame of every message type (frame_fuzzer) and a few
// Changes payloads (changes_fuzzer). Run by scripts/fuzz.sh.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "net/messages.h"

using namespace foreverfs;
using namespace foreverfs::net;
using namespace foreverfs::model;

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::filesystem::path out = argv[1];
  std::filesystem::create_directories(out / "frame");
  std::filesystem::create_directories(out / "changes");
  InodeRecord inode;
  inode.id = 42;
  inode.kind = InodeKind::kFile;
  inode.mode = 0644;
  inode.uid = inode.gid = 1000;
  inode.size = 3 << 20;
  inode.mtime_ns = inode.ctime_ns = inode.atime_ns = 1700000000000000000;
  inode.version = {1700000000000000002, 9};
  inode.content_clock = {{7, 1700000000000000001}, {9, 1700000000000000002}};
  inode.xattrs = {{"user.a", Bytes(3, 1)}, {"user.b", {}}};
  inode.manifest = {crypto::Digest{1}, crypto::Digest{}, crypto::Digest{3}};
  InodeRecord link;
  link.id = 43;
  link.kind = InodeKind::kSymlink;
  link.mode = 0777;
  link.size = 6;
  link.version = {3, 4};
  link.symlink_target = "target";
  DentryRecord entry{1, "file.txt", 42, {1700000000000000003, 9}, false, {1700000000000000001, 9}};
  DentryRecord tomb{1, "old", 43, {5, 6}, true};
  Changes changes{99, {inode, link}, {entry, tomb}};
  std::vector<Message> messages = {
      Hello{kMagic, kProtocolVersion, 0, "", crypto::Digest{5}},
      Auth{crypto::Digest{6}},
      Identity{7, 8, 9, "10.0.0.1:3000", crypto::Digest{10}},
      Peers{{{1, "10.0.0.2:3000"}, {2, "[::1]:3000"}}},
      Subscribe{12345},
      changes,
      GetChunk{77, crypto::Digest{8}},
      ChunkReply{77, true, Bytes(300, 0xab)},
      ChunkReply{78, false, {}},
      FeedAck{5, 6},
      MemberPing{1, {{2, "10.0.0.3:3000", MemberState::kSuspect, 4}}},
      MemberSync{true, {{2, "10.0.0.3:3000", MemberState::kAlive, 1}}},
      RelayedFeedAcks{9, {{2, 7}, {3, 8}}},
  };
  int i = 0;
  for (const auto& m : messages) {
    Bytes f = EncodeFrame(m);
    std::ofstream(out / "frame" / ("seed" + std::to_string(i++)), std::ios::binary)
        .write(reinterpret_cast<const char*>(f.data()), static_cast<std::streamsize>(f.size()));
  }
  std::vector<Changes> payloads = {changes, Changes{1, {inode}, {}}, Changes{2, {}, {entry}},
                                   Changes{}};
  i = 0;
  for (const auto& c : payloads) {
    Bytes f = EncodeFrame(c);
    std::ofstream(out / "changes" / ("seed" + std::to_string(i++)), std::ios::binary)
        .write(reinterpret_cast<const char*>(f.data() + kFrameHeaderSize),
               static_cast<std::streamsize>(f.size() - kFrameHeaderSize));
  }
  std::printf("wrote seeds to %s\n", out.c_str());
  return 0;
}
