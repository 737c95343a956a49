// fuse::Ops driven without a kernel: a real FileServer over an in-memory chunk store, and a
// Reply that records each answer. Every request must get exactly one answer (Call checks).

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "fuse/ops.h"
#include "unit/file_server_fixture.h"
#include "unit/fuse_recording_reply.h"

namespace foreverfs::fuse {
namespace {

using test::Answer;
using test::DirItem;
using test::RecordingReply;
using Kind = Answer::Kind;

constexpr fuse_ino_t kRoot = FUSE_ROOT_ID;
constexpr off_t kMaxFile = static_cast<off_t>(model::kMaxFileSize);  // 16 TiB
constexpr off_t kI64Max = std::numeric_limits<off_t>::max();
constexpr std::size_t kMaxRead = 16 * 1024 * 1024;
constexpr std::size_t kMiB = 1 << 20;

// A chunk store whose Sync throws when told to: a server call that throws, not a Status.
class ThrowingStore : public cas::ChunkStore {
 public:
  explicit ThrowingStore(std::unique_ptr<cas::ChunkStore> inner) : inner_(std::move(inner)) {}
  bool throw_on_sync = false;
  Status Put(const cas::ChunkId& id, ByteSpan data) override { return inner_->Put(id, data); }
  Status Sync() override {
    if (throw_on_sync) throw std::bad_alloc();
    return inner_->Sync();
  }
  Result<Bytes> Get(const cas::ChunkId& id) override { return inner_->Get(id); }
  bool Has(const cas::ChunkId& id) override { return inner_->Has(id); }
  Status Remove(const cas::ChunkId& id) override { return inner_->Remove(id); }
  Status ForEach(const std::function<void(const cas::ChunkId&)>& fn) override {
    return inner_->ForEach(fn);
  }

 private:
  std::unique_ptr<cas::ChunkStore> inner_;
};

// What one request got: its answers (exactly one, checked) and kernel invalidations.
struct Outcome {
  std::vector<Answer> answers;
  std::vector<fuse_ino_t> invalidated;
  const Answer& a() const {
    static const Answer kNothing{};
    return answers.empty() ? kNothing : answers.front();
  }
  Kind kind() const { return a().kind; }
  // The errno of an error answer, 0 for success; -1 for an answer that is not an error.
  int err() const { return a().kind == Kind::kErr ? a().err : -1; }
};

fuse_file_info Fi(std::uint64_t fh, int flags = 0) {
  fuse_file_info fi{};
  fi.fh = fh;
  fi.flags = flags;
  return fi;
}

class FuseOpsTest : public test::FileServerFixture {
 protected:
  void SetUp() override {
    auto throwing = std::make_unique<ThrowingStore>(cas::MakeMemoryStore());
    throwing_ = throwing.get();
    store_ = std::move(throwing);
    FileServerFixture::Open();
    ops_ = std::make_unique<Ops>(*fs_);
    ctx_ = {1000, 1000, 022};
  }

  // Runs one request through the guard, as the libfuse trampolines do.
  template <typename F>
  Outcome Call(OpId op, F&& handler) {
    RecordingReply r;
    r.ctx = ctx_;
    ops_->Guard(op, r, [&] { handler(r); });
    EXPECT_EQ(r.answers.size(), 1u) << Ops::OpName(op) << " must answer exactly once";
    return {r.answers, r.invalidated};
  }

  Outcome Lookup(fuse_ino_t parent, const std::string& name) {
    return Call(kOpLookup, [&](Reply& r) { ops_->Lookup(r, parent, name.c_str()); });
  }
  Outcome Getattr(fuse_ino_t ino) {
    return Call(kOpGetattr, [&](Reply& r) { ops_->Getattr(r, ino, nullptr); });
  }
  Outcome Setattr(fuse_ino_t ino, struct stat st, int to_set) {
    return Call(kOpSetattr, [&](Reply& r) { ops_->Setattr(r, ino, &st, to_set, nullptr); });
  }
  Outcome Truncate(fuse_ino_t ino, off_t size) {
    struct stat st {};
    st.st_size = size;
    return Setattr(ino, st, FUSE_SET_ATTR_SIZE);
  }
  Outcome Mkdir(fuse_ino_t parent, const std::string& name, mode_t mode = 0777) {
    return Call(kOpMkdir, [&](Reply& r) { ops_->Mkdir(r, parent, name.c_str(), mode); });
  }
  Outcome Mknod(fuse_ino_t parent, const std::string& name, mode_t mode, dev_t rdev = 0) {
    return Call(kOpMknod, [&](Reply& r) { ops_->Mknod(r, parent, name.c_str(), mode, rdev); });
  }
  Outcome Create(fuse_ino_t parent, const std::string& name, mode_t mode = 0666,
                 int flags = O_RDWR | O_CREAT) {
    auto fi = Fi(0, flags);
    return Call(kOpCreate, [&](Reply& r) { ops_->Create(r, parent, name.c_str(), mode, &fi); });
  }
  Outcome Open(fuse_ino_t ino, int flags = O_RDWR) {
    auto fi = Fi(0, flags);
    return Call(kOpOpen, [&](Reply& r) { ops_->Open(r, ino, &fi); });
  }
  Outcome Write(std::uint64_t fh, off_t off, const std::string& data) {
    auto fi = Fi(fh);
    return Call(kOpWrite, [&](Reply& r) { ops_->Write(r, 0, data.data(), data.size(), off, &fi); });
  }
  Outcome Read(std::uint64_t fh, off_t off, std::size_t size, fuse_ino_t ino = 0) {
    auto fi = Fi(fh);
    return Call(kOpRead, [&](Reply& r) { ops_->Read(r, ino, size, off, &fi); });
  }
  Outcome Flush(std::uint64_t fh) {
    auto fi = Fi(fh);
    return Call(kOpFlush, [&](Reply& r) { ops_->Flush(r, 0, &fi); });
  }
  Outcome Release(std::uint64_t fh) {
    auto fi = Fi(fh);
    return Call(kOpRelease, [&](Reply& r) { ops_->Release(r, 0, &fi); });
  }
  Outcome Opendir(fuse_ino_t ino) {
    auto fi = Fi(0);
    return Call(kOpOpendir, [&](Reply& r) { ops_->Opendir(r, ino, &fi); });
  }
  Outcome Readdir(fuse_ino_t ino, std::uint64_t fh, std::size_t size, off_t off,
                  bool plus = false) {
    auto fi = Fi(fh);
    return Call(plus ? kOpReaddirplus : kOpReaddir, [&](Reply& r) {
      plus ? ops_->Readdirplus(r, ino, size, off, &fi) : ops_->Readdir(r, ino, size, off, &fi);
    });
  }
  std::vector<DirItem> List(fuse_ino_t ino, std::uint64_t fh, std::size_t size, off_t off,
                            bool plus = false) {
    auto o = Readdir(ino, fh, size, off, plus);
    EXPECT_EQ(o.kind(), Kind::kBuf);
    return RecordingReply::ParseDir(o.a().data, plus);
  }
  Outcome Forget(fuse_ino_t ino, std::uint64_t n) {
    return Call(kOpForget, [&](Reply& r) { ops_->Forget(r, ino, n); });
  }
  Outcome Setxattr(fuse_ino_t ino, const std::string& name, const std::string& value) {
    return Call(kOpSetxattr, [&](Reply& r) {
      ops_->Setxattr(r, ino, name.c_str(), value.data(), value.size(), 0);
    });
  }
  Outcome Getxattr(fuse_ino_t ino, const std::string& name, std::size_t size) {
    return Call(kOpGetxattr, [&](Reply& r) { ops_->Getxattr(r, ino, name.c_str(), size); });
  }
  Outcome Removexattr(fuse_ino_t ino, const std::string& name) {
    return Call(kOpRemovexattr, [&](Reply& r) { ops_->Removexattr(r, ino, name.c_str()); });
  }
  Outcome Fallocate(std::uint64_t fh, off_t off, off_t len) {
    auto fi = Fi(fh);
    return Call(kOpFallocate, [&](Reply& r) { ops_->Fallocate(r, 0, 0, off, len, &fi); });
  }
  Outcome Lseek(std::uint64_t fh, off_t off, int whence) {
    auto fi = Fi(fh);
    return Call(kOpLseek, [&](Reply& r) { ops_->Lseek(r, 0, off, whence, &fi); });
  }
  Outcome Statfs() {
    return Call(kOpStatfs, [&](Reply& r) { ops_->Statfs(r, kRoot); });
  }
  Outcome Fsyncdir() {
    return Call(kOpFsyncdir, [&](Reply& r) { ops_->Fsyncdir(r, kRoot, 0, nullptr); });
  }

  // A new file "name" in the root: its inode and an open handle. (Not for structured bindings:
  // clang before 16 cannot capture those in the lambdas of Call.)
  std::pair<fuse_ino_t, std::uint64_t> NewFile(const std::string& name) {
    auto c = Create(kRoot, name);
    EXPECT_EQ(c.kind(), Kind::kCreate) << "create " << name << ": errno " << c.err();
    return {c.a().entry.ino, c.a().fi.fh};
  }

  ThrowingStore* throwing_ = nullptr;
  std::unique_ptr<Ops> ops_;
  RequestContext ctx_;
};

// Who clears setuid/setgid: where the kernel says (FUSE_HANDLE_KILLPRIV_V2, a kill mark in
// the context) the mark alone decides, for writes, truncates, chowns and O_TRUNC opens; where
// it does not, writes and O_TRUNC opens by anyone but root clear them and setattr leaves them
// (the kernel sends the mode change itself then).
TEST_F(FuseOpsTest, SetuidAndSetgidAreClearedAsTheKernelMarksOrByUid) {
  const auto mode_of = [&](fuse_ino_t ino) { return Getattr(ino).a().st.st_mode & 07777; };
  const auto with_mode = [&](const std::string& name, mode_t mode) {
    auto f = NewFile(name);
    struct stat st {};
    st.st_mode = mode;
    const auto mark = ctx_.kill_suidgid;
    ctx_.kill_suidgid.reset();  // a chmod carries no mark
    EXPECT_EQ(Setattr(f.first, st, FUSE_SET_ATTR_MODE).kind(), Kind::kAttr);
    ctx_.kill_suidgid = mark;
    EXPECT_EQ(mode_of(f.first), mode) << name;
    return f;
  };
  struct stat own {};
  own.st_uid = 1000;
  own.st_gid = 1000;

  // No mark (the kernel did not take the flag): by uid for writes.
  ctx_.kill_suidgid.reset();
  auto legacy = with_mode("legacy", 04755);
  EXPECT_EQ(Write(legacy.second, 0, "x").kind(), Kind::kWrite);
  EXPECT_EQ(mode_of(legacy.first), 0755u);
  ctx_.uid = 0;
  auto legacy_root = with_mode("legacy-root", 04755);
  EXPECT_EQ(Write(legacy_root.second, 0, "x").kind(), Kind::kWrite);
  EXPECT_EQ(mode_of(legacy_root.first), 04755u);
  ctx_.uid = 1000;
  auto legacy_trunc = with_mode("legacy-trunc", 04755);
  EXPECT_EQ(Truncate(legacy_trunc.first, 0).kind(), Kind::kAttr);
  EXPECT_EQ(mode_of(legacy_trunc.first), 04755u) << "the kernel sends that mode change itself";

  // The kernel's mark decides, whatever the uid.
  ctx_.kill_suidgid = false;  // a caller with CAP_FSETID
  auto keep = with_mode("keep", 04755);
  EXPECT_EQ(Write(keep.second, 0, "x").kind(), Kind::kWrite);
  EXPECT_EQ(mode_of(keep.first), 04755u);
  EXPECT_EQ(Truncate(keep.first, 0).kind(), Kind::kAttr);
  EXPECT_EQ(mode_of(keep.first), 04755u);
  EXPECT_EQ(Open(keep.first, O_WRONLY | O_TRUNC).kind(), Kind::kOpen);
  EXPECT_EQ(mode_of(keep.first), 04755u);

  ctx_.kill_suidgid = true;
  ctx_.uid = 0;
  auto both = with_mode("both", 06775);  // setgid on a group-executable file goes too
  EXPECT_EQ(Write(both.second, 0, "x").kind(), Kind::kWrite);
  EXPECT_EQ(mode_of(both.first), 0775u);
  auto noexec = with_mode("noexec", 02745);  // setgid without group execute stays
  EXPECT_EQ(Write(noexec.second, 0, "x").kind(), Kind::kWrite);
  EXPECT_EQ(mode_of(noexec.first), 02745u);
  auto trunc = with_mode("trunc", 04755);
  EXPECT_EQ(Truncate(trunc.first, 0).kind(), Kind::kAttr);
  EXPECT_EQ(mode_of(trunc.first), 0755u);
  auto chown = with_mode("chown", 06755);
  EXPECT_EQ(Setattr(chown.first, own, FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID).kind(), Kind::kAttr);
  EXPECT_EQ(mode_of(chown.first), 0755u);
  EXPECT_EQ(Getattr(chown.first).a().st.st_uid, 1000u);
  auto open_trunc = with_mode("open-trunc", 04755);
  EXPECT_EQ(Open(open_trunc.first, O_WRONLY | O_TRUNC).kind(), Kind::kOpen);
  EXPECT_EQ(mode_of(open_trunc.first), 0755u);
  auto open_plain = with_mode("open-plain", 04755);  // the mark means O_TRUNC only
  EXPECT_EQ(Open(open_plain.first, O_WRONLY).kind(), Kind::kOpen);
  EXPECT_EQ(mode_of(open_plain.first), 04755u);
  // An existing file created again (O_CREAT without O_EXCL) with O_TRUNC: as an open.
  ctx_.kill_suidgid = true;
  auto again = with_mode("again", 04755);
  EXPECT_EQ(Create(kRoot, "again", 0644, O_WRONLY | O_CREAT | O_TRUNC).kind(), Kind::kCreate);
  EXPECT_EQ(mode_of(again.first), 0755u);
  ctx_.kill_suidgid = false;
  auto again_keep = with_mode("again-keep", 04755);
  EXPECT_EQ(Create(kRoot, "again-keep", 0644, O_WRONLY | O_CREAT | O_TRUNC).kind(), Kind::kCreate);
  EXPECT_EQ(mode_of(again_keep.first), 04755u);
  // A file still open whose setuid is set again after its first write: the next write
  // clears it again.
  ctx_.kill_suidgid = true;
  auto reset = with_mode("reset", 04755);
  EXPECT_EQ(Write(reset.second, 0, "x").kind(), Kind::kWrite);
  EXPECT_EQ(mode_of(reset.first), 0755u);
  struct stat suid {};
  suid.st_mode = 04755;
  ctx_.kill_suidgid.reset();
  ASSERT_EQ(Setattr(reset.first, suid, FUSE_SET_ATTR_MODE).kind(), Kind::kAttr);
  ctx_.kill_suidgid = true;
  EXPECT_EQ(Write(reset.second, 1, "y").kind(), Kind::kWrite);
  EXPECT_EQ(mode_of(reset.first), 0755u);
  // fallocate carries no mark: any caller but root clears them.
  ctx_.kill_suidgid = false;
  ctx_.uid = 1000;
  auto falloc = with_mode("falloc", 04755);
  EXPECT_EQ(Fallocate(falloc.second, 0, 8192).err(), 0);
  EXPECT_EQ(mode_of(falloc.first), 0755u);
  ctx_.uid = 0;
  auto falloc_root = with_mode("falloc-root", 04755);
  EXPECT_EQ(Fallocate(falloc_root.second, 0, 8192).err(), 0);
  EXPECT_EQ(mode_of(falloc_root.first), 04755u);
  ctx_.kill_suidgid = true;
  // chown clears them from anything but a directory, a FIFO too (mkfifo with 04141 and
  // chgrp, as the POSIX model test found), whatever the mark (the kernel marks every chown
  // of a non-directory; none, without the flag); setgid without group execute stays.
  int k = 0;
  for (const auto& mark :
       {std::optional<bool>{}, std::optional<bool>{false}, std::optional<bool>{true}}) {
    for (const auto& [before, after] : {std::pair{06151u, 0151u}, std::pair{02141u, 02141u}}) {
      const std::string name = "fifo" + std::to_string(k++);
      ctx_.kill_suidgid.reset();
      auto fifo = Mknod(kRoot, name, S_IFIFO | 0644);
      ASSERT_EQ(fifo.kind(), Kind::kEntry) << name;
      const fuse_ino_t ino = fifo.a().entry.ino;
      struct stat st {};
      st.st_mode = before;
      ASSERT_EQ(Setattr(ino, st, FUSE_SET_ATTR_MODE).kind(), Kind::kAttr);
      ASSERT_EQ(mode_of(ino), before) << name;
      ctx_.kill_suidgid = mark;
      EXPECT_EQ(Setattr(ino, own, FUSE_SET_ATTR_GID).kind(), Kind::kAttr);
      EXPECT_EQ(mode_of(ino), after) << name;
      EXPECT_TRUE(S_ISFIFO(Getattr(ino).a().st.st_mode)) << name;
    }
  }
  // chown(path, -1, -1) reaches the file system as a setattr that sets nothing: it clears
  // them too, from a file and a FIFO, whoever asks and whatever the mark (the POSIX model
  // test found a 04050 file that kept setuid); a directory keeps its setgid.
  for (const auto& mark :
       {std::optional<bool>{}, std::optional<bool>{false}, std::optional<bool>{true}}) {
    for (const auto& [before, after] :
         {std::pair{04050u, 050u}, std::pair{06151u, 0151u}, std::pair{02141u, 02141u}}) {
      for (const bool fifo : {false, true}) {
        const std::string name = "noids" + std::to_string(k++);
        ctx_.kill_suidgid.reset();
        const fuse_ino_t ino = fifo ? Mknod(kRoot, name, S_IFIFO | 0644).a().entry.ino
                                    : with_mode(name, before).first;
        struct stat st {};
        st.st_mode = before;
        ASSERT_EQ(Setattr(ino, st, FUSE_SET_ATTR_MODE).kind(), Kind::kAttr);
        ASSERT_EQ(mode_of(ino), before) << name;
        ctx_.kill_suidgid = mark;
        const struct stat none {};
        EXPECT_EQ(Setattr(ino, none, 0).kind(), Kind::kAttr) << name;
        EXPECT_EQ(mode_of(ino), after) << name;
      }
    }
  }
  ctx_.kill_suidgid = true;
  // A directory keeps its setgid (the mark is for files; chown of a directory sends none).
  auto d = Mkdir(kRoot, "dir", 02775);
  ASSERT_EQ(d.kind(), Kind::kEntry);
  EXPECT_EQ(Setattr(d.a().entry.ino, own, FUSE_SET_ATTR_UID).kind(), Kind::kAttr);
  EXPECT_EQ(mode_of(d.a().entry.ino) & 02000, 02000u);
  const struct stat none {};
  EXPECT_EQ(Setattr(d.a().entry.ino, none, 0).kind(), Kind::kAttr);
  EXPECT_EQ(mode_of(d.a().entry.ino) & 02000, 02000u);
}

TEST_F(FuseOpsTest, CreateWriteReadGetattrRoundTrip) {
  ops_->SetAttrTimeout(2.5);
  auto c = Create(kRoot, "f", 0666);
  ASSERT_EQ(c.kind(), Kind::kCreate);
  const fuse_ino_t ino = c.a().entry.ino;
  const std::uint64_t fh = c.a().fi.fh;
  EXPECT_NE(ino, 0u);
  EXPECT_NE(ino, kRoot);
  EXPECT_EQ(c.a().entry.attr.st_ino, ino);
  EXPECT_EQ(c.a().entry.attr.st_mode, S_IFREG | 0644u);  // umask 022 applied
  EXPECT_EQ(c.a().entry.attr.st_uid, 1000u);
  EXPECT_EQ(c.a().entry.attr.st_gid, 1000u);
  EXPECT_EQ(c.a().entry.attr.st_size, 0);
  EXPECT_EQ(c.a().entry.attr_timeout, 2.5);
  EXPECT_EQ(c.a().entry.entry_timeout, 2.5);
  EXPECT_EQ(ops_->KernelLookups(ino), 1u);  // a create counts as a lookup

  auto w = Write(fh, 0, "hello, world");
  ASSERT_EQ(w.kind(), Kind::kWrite);
  EXPECT_EQ(w.a().count, 12u);
  EXPECT_EQ(Write(fh, 7, "WORLD").a().count, 5u);
  EXPECT_EQ(Flush(fh).err(), 0);

  auto rd = Read(fh, 0, 100);
  ASSERT_EQ(rd.kind(), Kind::kBuf);
  EXPECT_EQ(rd.a().data, "hello, WORLD");
  EXPECT_EQ(Read(fh, 7, 3).a().data, "WOR");
  EXPECT_EQ(Read(fh, 12, 10).a().data, "");

  auto g = Getattr(ino);
  ASSERT_EQ(g.kind(), Kind::kAttr);
  EXPECT_EQ(g.a().st.st_size, 12);
  EXPECT_EQ(g.a().st.st_nlink, 1u);
  EXPECT_EQ(g.a().st.st_blocks, 1);  // 12 bytes hold one 512-byte block
  EXPECT_EQ(g.a().st.st_blksize, 1 << 20);
  EXPECT_EQ(g.a().timeout, 2.5);
  EXPECT_EQ(Release(fh).err(), 0);

  auto l = Lookup(kRoot, "f");
  ASSERT_EQ(l.kind(), Kind::kEntry);
  EXPECT_EQ(l.a().entry.ino, ino);
  EXPECT_EQ(l.a().entry.attr.st_size, 12);
  EXPECT_EQ(ops_->KernelLookups(ino), 2u);

  // Another handle reads what the first wrote.
  auto o = Open(ino, O_RDONLY);
  ASSERT_EQ(o.kind(), Kind::kOpen);
  EXPECT_EQ(Read(o.a().fi.fh, 0, 5).a().data, "hello");
  EXPECT_EQ(Release(o.a().fi.fh).err(), 0);
}

TEST_F(FuseOpsTest, ModeBitsPerKind) {
  ctx_.umask = 027;
  auto d = Mkdir(kRoot, "d", 0777);
  ASSERT_EQ(d.kind(), Kind::kEntry);
  EXPECT_EQ(d.a().entry.attr.st_mode, S_IFDIR | 0750u);
  EXPECT_EQ(d.a().entry.attr.st_size, 4096);
  EXPECT_EQ(d.a().entry.attr.st_blocks, 8);

  auto s = Call(kOpSymlink, [&](Reply& r) { ops_->Symlink(r, "../target", kRoot, "s"); });
  ASSERT_EQ(s.kind(), Kind::kEntry);
  EXPECT_EQ(s.a().entry.attr.st_mode & S_IFMT, static_cast<mode_t>(S_IFLNK));
  auto rl = Call(kOpReadlink, [&](Reply& r) { ops_->Readlink(r, s.a().entry.ino); });
  ASSERT_EQ(rl.kind(), Kind::kReadlink);
  EXPECT_EQ(rl.a().data, "../target");

  // mknod: the umask takes permission bits, never type bits.
  struct {
    const char* name;
    mode_t type;
    dev_t rdev;
  } kinds[] = {{"fifo", S_IFIFO, 0},
               {"sock", S_IFSOCK, 0},
               {"chr", S_IFCHR, makedev(1, 3)},
               {"blk", S_IFBLK, makedev(8, 1)},
               {"reg", S_IFREG, 0}};
  for (const auto& k : kinds) {
    auto n = Mknod(kRoot, k.name, k.type | 0666, k.rdev);
    ASSERT_EQ(n.kind(), Kind::kEntry) << k.name << ": errno " << n.err();
    EXPECT_EQ(n.a().entry.attr.st_mode, k.type | 0640u) << k.name;
    EXPECT_EQ(n.a().entry.attr.st_rdev, k.rdev) << k.name;
    auto g = Getattr(n.a().entry.ino);
    EXPECT_EQ(g.a().st.st_mode, k.type | 0640u) << k.name;
  }
  // The root is a directory.
  EXPECT_EQ(Getattr(kRoot).a().st.st_mode & S_IFMT, static_cast<mode_t>(S_IFDIR));
}

TEST_F(FuseOpsTest, SparseFileBlocksCountWhatIsHeld) {
  const auto new_ino = NewFile("sparse");
  const fuse_ino_t ino = new_ino.first;
  const std::uint64_t fh = new_ino.second;
  // One byte 3 MiB in: three holes and one chunk.
  ASSERT_EQ(Write(fh, 3 * kMiB, "x").a().count, 1u);
  ASSERT_EQ(Flush(fh).err(), 0);
  auto g = Getattr(ino);
  EXPECT_EQ(g.a().st.st_size, static_cast<off_t>(3 * kMiB + 1));
  EXPECT_EQ(g.a().st.st_blocks, static_cast<blkcnt_t>(kMiB / 512));  // one chunk, not 3 MiB
  // A file made large by truncate holds nothing.
  const auto new_ino2 = NewFile("empty");
  const fuse_ino_t ino2 = new_ino2.first;
  const std::uint64_t fh2 = new_ino2.second;
  ASSERT_EQ(Truncate(ino2, 10 * kMiB).kind(), Kind::kAttr);
  g = Getattr(ino2);
  EXPECT_EQ(g.a().st.st_size, static_cast<off_t>(10 * kMiB));
  EXPECT_EQ(g.a().st.st_blocks, 0);
  Release(fh);
  Release(fh2);
}

TEST_F(FuseOpsTest, TimesBeforeTheEpochAndSaturated) {
  const auto new_ino = NewFile("t");
  const fuse_ino_t ino = new_ino.first;
  const std::uint64_t fh = new_ino.second;
  struct stat st {};
  st.st_mtim = {-1, 500000000};  // 0.5 s before 1970
  st.st_atim = {-100, 0};
  auto s = Setattr(ino, st, FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME);
  ASSERT_EQ(s.kind(), Kind::kAttr) << "errno " << s.err();
  EXPECT_EQ(s.a().st.st_mtim.tv_sec, -1);
  EXPECT_EQ(s.a().st.st_mtim.tv_nsec, 500000000);
  EXPECT_EQ(s.a().st.st_atim.tv_sec, -100);
  EXPECT_EQ(s.a().st.st_atim.tv_nsec, 0);
  auto g = Getattr(ino);
  EXPECT_EQ(g.a().st.st_mtim.tv_sec, -1);
  EXPECT_EQ(g.a().st.st_mtim.tv_nsec, 500000000);
  // A time past what nanoseconds in an int64 hold saturates (2262), not wraps.
  st.st_mtim = {std::numeric_limits<time_t>::max(), 0};
  s = Setattr(ino, st, FUSE_SET_ATTR_MTIME);
  ASSERT_EQ(s.kind(), Kind::kAttr) << "errno " << s.err();
  EXPECT_EQ(s.a().st.st_mtim.tv_sec, INT64_MAX / 1000000000);
  EXPECT_EQ(s.a().st.st_mtim.tv_nsec, INT64_MAX % 1000000000);
  Release(fh);
}

TEST_F(FuseOpsTest, ErrnoMapping) {
  EXPECT_EQ(Lookup(kRoot, "missing").err(), ENOENT);
  ASSERT_EQ(Mkdir(kRoot, "d").kind(), Kind::kEntry);
  EXPECT_EQ(Mkdir(kRoot, "d").err(), EEXIST);
  const auto new_ino = NewFile("f");
  const fuse_ino_t ino = new_ino.first;
  const std::uint64_t fh = new_ino.second;
  Release(fh);
  EXPECT_EQ(Create(kRoot, "f", 0644, O_RDWR | O_CREAT | O_EXCL).err(), EEXIST);
  const fuse_ino_t d = Lookup(kRoot, "d").a().entry.ino;
  ASSERT_EQ(Mkdir(d, "sub").kind(), Kind::kEntry);
  auto rmdir = [&](fuse_ino_t parent, const std::string& name) {
    return Call(kOpRmdir, [&](Reply& r) { ops_->Rmdir(r, parent, name.c_str()); });
  };
  auto unlink = [&](fuse_ino_t parent, const std::string& name) {
    return Call(kOpUnlink, [&](Reply& r) { ops_->Unlink(r, parent, name.c_str()); });
  };
  EXPECT_EQ(rmdir(kRoot, "d").err(), ENOTEMPTY);
  EXPECT_EQ(rmdir(kRoot, "f").err(), ENOTDIR);
  EXPECT_EQ(unlink(kRoot, "nothing").err(), ENOENT);
  EXPECT_EQ(Getattr(0x7777777777).err(), ENOENT);

  // NAME_MAX: 255 bytes is a name, 256 is ENAMETOOLONG before the server sees it.
  const std::string n255(255, 'a'), n256(256, 'a');
  EXPECT_EQ(Lookup(kRoot, n255).err(), ENOENT);
  EXPECT_EQ(Lookup(kRoot, n256).err(), ENAMETOOLONG);
  EXPECT_EQ(Create(kRoot, n256).err(), ENAMETOOLONG);
  EXPECT_EQ(Mkdir(kRoot, n256).err(), ENAMETOOLONG);
  EXPECT_EQ(unlink(kRoot, n256).err(), ENAMETOOLONG);
  EXPECT_EQ(rmdir(kRoot, n256).err(), ENAMETOOLONG);
  auto rename = [&](const std::string& from, const std::string& to) {
    return Call(kOpRename,
                [&](Reply& r) { ops_->Rename(r, kRoot, from.c_str(), kRoot, to.c_str(), 0); });
  };
  EXPECT_EQ(rename("f", n256).err(), ENAMETOOLONG);
  EXPECT_EQ(rename(n256, "g").err(), ENAMETOOLONG);
  auto c = Create(kRoot, n255);
  ASSERT_EQ(c.kind(), Kind::kCreate);
  Release(c.a().fi.fh);
  EXPECT_EQ(rename(n255, "g").err(), 0);
  EXPECT_EQ(Lookup(kRoot, "g").kind(), Kind::kEntry);
  auto link = Call(kOpLink, [&](Reply& r) { ops_->Link(r, ino, kRoot, n256.c_str()); });
  EXPECT_EQ(link.err(), ENAMETOOLONG);
}

TEST_F(FuseOpsTest, OffsetAndSizeBoundaries) {
  const auto new_ino = NewFile("f");
  const fuse_ino_t ino = new_ino.first;
  const std::uint64_t fh = new_ino.second;
  ASSERT_EQ(Write(fh, 0, "abc").a().count, 3u);

  // read: negative offsets and sizes over 16 MiB are EINVAL; offsets past the end are empty.
  EXPECT_EQ(Read(fh, -1, 10).err(), EINVAL);
  EXPECT_EQ(Read(fh, 0, 0).a().data, "");
  EXPECT_EQ(Read(fh, 0, kMaxRead).a().data, "abc");
  EXPECT_EQ(Read(fh, 0, kMaxRead + 1).err(), EINVAL);
  EXPECT_EQ(Read(fh, kMaxFile, 10).kind(), Kind::kBuf);
  EXPECT_EQ(Read(fh, kI64Max, 10).a().data, "");
  EXPECT_EQ(Read(fh, 0, std::numeric_limits<std::size_t>::max()).err(), EINVAL);

  // write: negative offsets EINVAL; at 16 TiB or past EFBIG; one crossing it is cut short.
  EXPECT_EQ(Write(fh, -1, "x").err(), EINVAL);
  EXPECT_EQ(Write(fh, kMaxFile, "x").err(), EFBIG);
  EXPECT_EQ(Write(fh, kMaxFile + 1, "x").err(), EFBIG);
  EXPECT_EQ(Write(fh, kI64Max, "x").err(), EFBIG);
  auto w = Write(fh, kMaxFile - 1, "xy");
  ASSERT_EQ(w.kind(), Kind::kWrite) << "errno " << w.err();
  EXPECT_EQ(w.a().count, 1u);
  EXPECT_EQ(Getattr(ino).a().st.st_size, kMaxFile);

  // truncate: 0 and 16 TiB are sizes, 16 TiB + 1 and INT64_MAX EFBIG, negative EINVAL.
  EXPECT_EQ(Truncate(ino, 0).a().st.st_size, 0);
  EXPECT_EQ(Truncate(ino, kMaxFile).a().st.st_size, kMaxFile);
  EXPECT_EQ(Truncate(ino, kMaxFile + 1).err(), EFBIG);
  EXPECT_EQ(Truncate(ino, kI64Max).err(), EFBIG);
  EXPECT_EQ(Truncate(ino, -1).err(), EINVAL);
  EXPECT_EQ(Getattr(ino).a().st.st_size, kMaxFile) << "a refused truncate changed the size";
  ASSERT_EQ(Truncate(ino, 0).kind(), Kind::kAttr);

  // fallocate: as vfs_fallocate, then the server's EFBIG.
  EXPECT_EQ(Fallocate(fh, -1, 10).err(), EINVAL);
  EXPECT_EQ(Fallocate(fh, 0, 0).err(), EINVAL);
  EXPECT_EQ(Fallocate(fh, 0, -1).err(), EINVAL);
  EXPECT_EQ(Fallocate(fh, 0, 10).err(), 0);
  EXPECT_EQ(Getattr(ino).a().st.st_size, 10);
  EXPECT_EQ(Fallocate(fh, kMaxFile - 1, 1).err(), 0);
  EXPECT_EQ(Fallocate(fh, kMaxFile, 1).err(), EFBIG);
  EXPECT_EQ(Fallocate(fh, 0, kMaxFile + 1).err(), EFBIG);
  EXPECT_EQ(Fallocate(fh, 1, kI64Max).err(), EFBIG);
  ASSERT_EQ(Truncate(ino, 0).kind(), Kind::kAttr);
  ASSERT_EQ(Write(fh, 0, "abc").a().count, 3u);

  // lseek: only SEEK_DATA and SEEK_HOLE come here; a negative offset is ENXIO, as ext4.
  EXPECT_EQ(Lseek(fh, 0, SEEK_SET).err(), EINVAL);
  EXPECT_EQ(Lseek(fh, 0, SEEK_END).err(), EINVAL);
  EXPECT_EQ(Lseek(fh, -1, SEEK_DATA).err(), ENXIO);
  auto data = Lseek(fh, 0, SEEK_DATA);
  ASSERT_EQ(data.kind(), Kind::kLseek) << "errno " << data.err();
  EXPECT_EQ(data.a().off, 0);
  auto hole = Lseek(fh, 0, SEEK_HOLE);
  ASSERT_EQ(hole.kind(), Kind::kLseek);
  EXPECT_EQ(hole.a().off, 3);
  EXPECT_EQ(Lseek(fh, 3, SEEK_DATA).err(), ENXIO);
  EXPECT_EQ(Lseek(fh, kI64Max, SEEK_HOLE).err(), ENXIO);

  // readdir: the same bounds.
  auto dir = Opendir(kRoot);
  ASSERT_EQ(dir.kind(), Kind::kOpen);
  const auto dh = dir.a().fi.fh;
  EXPECT_EQ(Readdir(kRoot, dh, 4096, -1).err(), EINVAL);
  EXPECT_EQ(Readdir(kRoot, dh, kMaxRead + 1, 0).err(), EINVAL);
  EXPECT_EQ(Readdir(kRoot, dh, kMaxRead, 0).kind(), Kind::kBuf);
  EXPECT_EQ(Readdir(kRoot, dh, 4096, -1, /*plus=*/true).err(), EINVAL);
  Release(fh);
}

TEST_F(FuseOpsTest, ReaddirOffsetsPages) {
  for (const char* n : {"a", "b", "c"}) ASSERT_EQ(Mkdir(kRoot, n).kind(), Kind::kEntry);
  auto dir = Opendir(kRoot);
  ASSERT_EQ(dir.kind(), Kind::kOpen);
  const auto dh = dir.a().fi.fh;
  // A name created after opendir is not in the snapshot.
  ASSERT_EQ(Mkdir(kRoot, "later").kind(), Kind::kEntry);

  auto all = List(kRoot, dh, 4096, 0);
  ASSERT_EQ(all.size(), 5u);
  std::vector<std::string> names;
  for (std::size_t i = 0; i < all.size(); ++i) {
    names.push_back(all[i].name);
    EXPECT_EQ(all[i].next, static_cast<off_t>(i + 1)) << all[i].name;
    EXPECT_EQ(all[i].mode, static_cast<mode_t>(S_IFDIR)) << all[i].name;
  }
  EXPECT_EQ(names[0], ".");
  EXPECT_EQ(names[1], "..");
  EXPECT_EQ(all[0].ino, kRoot);
  std::sort(names.begin() + 2, names.end());
  EXPECT_EQ(names[2], "a");
  EXPECT_EQ(names[4], "c");

  // At the last entry: only it. At or past the end: nothing (not an error).
  auto last = List(kRoot, dh, 4096, 4);
  ASSERT_EQ(last.size(), 1u);
  EXPECT_EQ(last[0].name, all[4].name);
  EXPECT_EQ(last[0].next, 5);
  EXPECT_TRUE(List(kRoot, dh, 4096, 5).empty());
  EXPECT_TRUE(List(kRoot, dh, 4096, 6).empty());
  EXPECT_TRUE(List(kRoot, dh, 4096, kI64Max).empty());

  // A buffer that holds exactly two entries gets two; paging on from there gets the rest.
  const std::size_t two = RecordingReply::EntrySize(1, false) + RecordingReply::EntrySize(2, false);
  auto page = List(kRoot, dh, two, 0);
  ASSERT_EQ(page.size(), 2u);
  EXPECT_EQ(List(kRoot, dh, two - 1, 0).size(), 1u);
  EXPECT_TRUE(List(kRoot, dh, 0, 0).empty());
  auto rest = List(kRoot, dh, 4096, page.back().next);
  EXPECT_EQ(rest.size(), 3u);

  // Released: EBADF; an unknown handle too.
  EXPECT_EQ(Call(kOpReleasedir,
                 [&](Reply& r) {
                   auto fi = Fi(dh);
                   ops_->Releasedir(r, kRoot, &fi);
                 })
                .err(),
            0);
  EXPECT_EQ(Readdir(kRoot, dh, 4096, 0).err(), EBADF);
  EXPECT_EQ(Readdir(kRoot, 9999, 4096, 0).err(), EBADF);
}

TEST_F(FuseOpsTest, ReaddirplusGivesAttributesAndCountsLookups) {
  const auto new_ino = NewFile("file");
  const fuse_ino_t ino = new_ino.first;
  const std::uint64_t fh = new_ino.second;
  ASSERT_EQ(Write(fh, 0, "12345").a().count, 5u);
  ASSERT_EQ(Flush(fh).err(), 0);
  Release(fh);
  ASSERT_EQ(Mkdir(kRoot, "gone").kind(), Kind::kEntry);
  const fuse_ino_t gone = Lookup(kRoot, "gone").a().entry.ino;
  ASSERT_EQ(Forget(gone, 2).kind(), Kind::kNone);
  ASSERT_EQ(Forget(ino, 1).kind(), Kind::kNone);
  ASSERT_EQ(ops_->KernelLookups(ino), 0u);

  auto dir = Opendir(kRoot);
  const auto dh = dir.a().fi.fh;
  // Removed after the snapshot: listed, without attributes, not counted as a lookup.
  ASSERT_EQ(Call(kOpRmdir, [&](Reply& r) { ops_->Rmdir(r, kRoot, "gone"); }).err(), 0);

  auto items = List(kRoot, dh, 64 * 1024, 0, /*plus=*/true);
  ASSERT_EQ(items.size(), 4u);
  for (const auto& d : items) {
    if (d.name == "file") {
      EXPECT_EQ(d.entry_ino, ino);
      EXPECT_EQ(d.size, 5);
      EXPECT_EQ(d.mode, S_IFREG | 0644u);
    } else if (d.name == "gone") {
      EXPECT_EQ(d.entry_ino, 0u);
      EXPECT_EQ(d.ino, gone);
    } else {
      EXPECT_EQ(d.entry_ino, 0u) << d.name;  // "." and ".." carry no attributes
    }
  }
  EXPECT_EQ(ops_->KernelLookups(ino), 1u);
  EXPECT_EQ(ops_->KernelLookups(gone), 0u);
  EXPECT_EQ(ops_->KernelLookups(0), 0u) << "an entry without attributes counted as a lookup";

  // An entry that did not fit is not counted: a buffer for "." and ".." only.
  const std::size_t dots = RecordingReply::EntrySize(1, true) + RecordingReply::EntrySize(2, true);
  EXPECT_EQ(List(kRoot, dh, dots, 0, true).size(), 2u);
  const auto at =
      std::find_if(items.begin(), items.end(), [](const DirItem& d) { return d.name == "file"; }) -
      items.begin();
  EXPECT_TRUE(List(kRoot, dh, RecordingReply::EntrySize(4, true) - 1, at, true).empty());
  EXPECT_EQ(ops_->KernelLookups(ino), 1u);
  auto one = List(kRoot, dh, RecordingReply::EntrySize(4, true), at, true);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].name, "file");
  EXPECT_EQ(ops_->KernelLookups(ino), 2u);
}

TEST_F(FuseOpsTest, OpenInvalidatesAttributesOnlyOfAnotherVersion) {
  const auto new_ino = NewFile("f");
  const fuse_ino_t ino = new_ino.first;
  const std::uint64_t fh = new_ino.second;  // the kernel was told the created version
  // Committed through the handle: a version the kernel was not told.
  ASSERT_EQ(Write(fh, 0, "new").a().count, 3u);
  ASSERT_EQ(Flush(fh).err(), 0);
  Release(fh);

  auto o1 = Open(ino);
  ASSERT_EQ(o1.kind(), Kind::kOpen);
  EXPECT_EQ(o1.invalidated, std::vector<fuse_ino_t>{ino});
  Release(o1.a().fi.fh);
  // The same version again: the kernel already dropped what it had.
  auto o2 = Open(ino);
  EXPECT_TRUE(o2.invalidated.empty());
  Release(o2.a().fi.fh);

  // The kernel told of the version by a lookup: no invalidation at the open.
  auto o3 = Open(ino);
  ASSERT_EQ(Write(o3.a().fi.fh, 0, "newer").a().count, 5u);
  ASSERT_EQ(Flush(o3.a().fi.fh).err(), 0);
  Release(o3.a().fi.fh);
  ASSERT_EQ(Lookup(kRoot, "f").kind(), Kind::kEntry);
  auto o4 = Open(ino);
  EXPECT_TRUE(o4.invalidated.empty());
  Release(o4.a().fi.fh);
  // Nor once a getattr told it.
  auto o5 = Open(ino);
  ASSERT_EQ(Write(o5.a().fi.fh, 0, "newest").a().count, 6u);
  ASSERT_EQ(Flush(o5.a().fi.fh).err(), 0);
  Release(o5.a().fi.fh);
  ASSERT_EQ(Getattr(ino).kind(), Kind::kAttr);
  EXPECT_TRUE(Open(ino).invalidated.empty());

  // Shortly after a peer changed the inode, whatever was told last.
  ops_->PeerChanged(ino);
  EXPECT_EQ(Open(ino).invalidated, std::vector<fuse_ino_t>{ino});
}

// The pages beside a small read go to the page sink with a ticket, and are stored only if
// nothing changed the inode since: not after an open (for writing or not), a truncate or a
// peer's change, never while a handle may write, and again once the writer is gone.
TEST_F(FuseOpsTest, PagesBesideASmallReadAreStoredOnlyIfNothingChangedSince) {
  constexpr std::size_t kW = server::ReadWindow::kSize;
  std::vector<PageStore> sunk;
  ops_->SetPageSink([&](PageStore&& p) { sunk.push_back(std::move(p)); });
  const auto created = NewFile("f");  // not a structured binding: the lambdas capture it
  const fuse_ino_t ino = created.first;
  const std::uint64_t wfh = created.second;
  std::string data(4 * kW + 1, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>('a' + i * 7 % 26);
  ASSERT_EQ(Write(wfh, 0, data).a().count, data.size());
  EXPECT_EQ(Flush(wfh).err(), 0);
  // While a handle may write: no store, even of committed bytes.
  EXPECT_EQ(Read(wfh, 4096, 4096, ino).a().data, data.substr(4096, 4096));
  EXPECT_TRUE(sunk.empty());
  EXPECT_EQ(Release(wfh).err(), 0);

  auto store = [&](const PageStore& p) {
    bool ran = false;
    const bool said = ops_->StorePages(p, [&] { ran = true; });
    EXPECT_EQ(said, ran);
    return ran;
  };
  std::uint64_t fh = Open(ino, O_RDONLY).a().fi.fh;
  EXPECT_EQ(Read(fh, kW + 8192, 4096, ino).a().data, data.substr(kW + 8192, 4096));
  ASSERT_EQ(sunk.size(), 1u);
  EXPECT_EQ(sunk[0].ino, ino);
  EXPECT_EQ(sunk[0].offset, kW);
  EXPECT_EQ(std::string(sunk[0].data.begin(), sunk[0].data.end()), data.substr(kW, kW));
  EXPECT_TRUE(store(sunk[0]));
  EXPECT_TRUE(store(sunk[0])) << "nothing changed: still good";

  // Sizes: one byte past the last full segment; a whole segment; across two; zero.
  sunk.clear();
  EXPECT_EQ(Read(fh, 4 * kW, 4096, ino).a().data, data.substr(4 * kW));
  EXPECT_TRUE(sunk.empty()) << "the read is all of its segment";
  EXPECT_EQ(Read(fh, 0, kW, ino).a().data, data.substr(0, kW));
  EXPECT_EQ(Read(fh, kW - 1, 2, ino).a().data, data.substr(kW - 1, 2));
  EXPECT_EQ(Read(fh, 0, 0, ino).a().data, "");
  EXPECT_TRUE(sunk.empty());
  EXPECT_EQ(Read(fh, 3 * kW + kW - 1, 1, ino).a().data, data.substr(4 * kW - 1, 1));
  ASSERT_EQ(sunk.size(), 1u);
  EXPECT_EQ(sunk[0].offset, 3 * kW);
  EXPECT_EQ(sunk[0].data.size(), kW);

  // Each change after the read's ticket refuses its store.
  auto read_then = [&](const std::function<void()>& change) {
    sunk.clear();
    EXPECT_EQ(Read(fh, 4096, 4096, ino).a().data, data.substr(4096, 4096));
    EXPECT_EQ(sunk.size(), 1u);
    if (sunk.empty()) return true;
    change();
    return store(sunk[0]);
  };
  EXPECT_TRUE(read_then([] {}));
  EXPECT_FALSE(read_then([&] { Release(Open(ino, O_RDONLY).a().fi.fh); })) << "an open";
  EXPECT_FALSE(read_then([&] { ops_->PeerChanged(ino); })) << "a peer's change";
  // Handles opened before a peer's change may read the older version: no stores until they
  // are all gone, whichever handle reads.
  sunk.clear();
  const std::uint64_t after = Open(ino, O_RDONLY).a().fi.fh;
  EXPECT_EQ(Read(after, 4096, 4096, ino).a().data, data.substr(4096, 4096));
  EXPECT_EQ(Read(fh, 4096, 4096, ino).a().data, data.substr(4096, 4096));
  EXPECT_TRUE(sunk.empty()) << "a handle from before the peer's change is still open";
  EXPECT_EQ(Release(fh).err(), 0);
  fh = after;
  EXPECT_TRUE(read_then([] {})) << "only handles from after it are left";
  EXPECT_FALSE(read_then([&] { Truncate(ino, static_cast<off_t>(data.size())); }))
      << "a truncate, even to the same size";
  std::uint64_t writer = 0;
  EXPECT_FALSE(read_then([&] { writer = Open(ino, O_WRONLY).a().fi.fh; })) << "a writer";
  sunk.clear();
  EXPECT_EQ(Read(fh, 4096, 4096, ino).a().data, data.substr(4096, 4096));
  EXPECT_TRUE(sunk.empty()) << "no ticket while a writer is open";
  EXPECT_EQ(Release(writer).err(), 0);
  EXPECT_TRUE(read_then([] {})) << "the writer is gone";
  // Another inode's change leaves this one's store alone.
  const auto other = NewFile("g");
  EXPECT_EQ(Release(other.second).err(), 0);
  EXPECT_TRUE(read_then([&] { ops_->PeerChanged(other.first); }));
  EXPECT_EQ(Release(fh).err(), 0);
}

// The record of changes is bounded: past PageFill::kMaxInodes inodes it is dropped, and a
// ticket from before that is refused; a writer stays on record.
TEST(PageFillTest, TheRecordIsBoundedAndKeepsItsWriters) {
  PageFill pf;
  pf.Opened(1, 100, /*writes=*/true);
  auto t = pf.Ticket(2);
  ASSERT_TRUE(t);
  EXPECT_FALSE(pf.Ticket(1)) << "a writer is open";
  const PageStore p{2, 0, Bytes(10), *t};
  auto ran = [&](const PageStore& s) { return pf.StoreIfCurrent(s, [] {}); };
  EXPECT_TRUE(ran(p));
  // On record: 1 (a handle), 2 (stored) and these.
  for (fuse_ino_t i = 10; i < 10 + PageFill::kMaxInodes - 3; ++i) pf.Changed(i);
  EXPECT_TRUE(ran(p)) << "at the limit nothing is dropped";
  pf.Changed(5000);
  EXPECT_TRUE(ran(p));
  pf.Changed(5001);  // one past it: dropped
  EXPECT_FALSE(ran(p));
  EXPECT_FALSE(pf.Ticket(1)) << "the writer survives the drop";
  auto t2 = pf.Ticket(2);
  ASSERT_TRUE(t2);
  EXPECT_TRUE(ran(PageStore{2, 0, Bytes(10), *t2}));
  pf.Released(100);
  pf.Released(100);  // twice, and an unknown handle: nothing
  pf.Released(999);
  auto t1 = pf.Ticket(1);
  ASSERT_TRUE(t1);
  EXPECT_TRUE(ran(PageStore{1, 0, Bytes(10), *t1}));
}

// A store under way holds off opens and truncates of its own inode only; a peer's change
// never waits for it.
TEST(PageFillTest, OnlyTheStoredInodeWaitsForAStore) {
  PageFill pf;
  auto t = pf.Ticket(1);
  ASSERT_TRUE(t);
  std::atomic<bool> release{false}, in_store{false}, opened_1{false};
  std::thread storer([&] {
    pf.StoreIfCurrent(PageStore{1, 0, Bytes(10), *t}, [&] {
      in_store = true;
      while (!release) std::this_thread::yield();
    });
  });
  while (!in_store) std::this_thread::yield();
  pf.Opened(2, 20, false);  // another inode: at once
  pf.Changed(2);
  pf.PeerChanged(1);  // never waits
  EXPECT_FALSE(pf.StoreIfCurrent(PageStore{1, 0, Bytes(10), *t}, [] {}))
      << "one store of an inode at a time (and this ticket is stale anyway)";
  std::thread opener([&] {
    pf.Opened(1, 10, false);
    opened_1 = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(opened_1) << "an open of the stored inode waits for the store";
  release = true;
  storer.join();
  opener.join();
  EXPECT_TRUE(opened_1);
}

// Opens, reads, stores and releases from several threads at once: counts stay right (TSan
// checks the locking).
TEST(PageFillTest, ConcurrentUseKeepsTheWriterCounts) {
  PageFill pf;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&pf, t] {
      for (std::uint64_t i = 0; i < 2000; ++i) {
        const fuse_ino_t ino = i % 7;
        const std::uint64_t fh = (static_cast<std::uint64_t>(t) << 32) | i;
        pf.Opened(ino, fh, i % 3 == 0);
        if (auto tk = pf.Ticket(ino)) pf.StoreIfCurrent(PageStore{ino, 0, {}, *tk}, [] {});
        pf.Changed(ino);
        pf.Released(fh);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (fuse_ino_t ino = 0; ino < 7; ++ino) EXPECT_TRUE(pf.Ticket(ino)) << "inode " << ino;
}

TEST_F(FuseOpsTest, ForgetCounts) {
  const auto new_ino = NewFile("f");
  const fuse_ino_t ino = new_ino.first;
  const std::uint64_t fh = new_ino.second;
  Release(fh);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(Lookup(kRoot, "f").kind(), Kind::kEntry);
  EXPECT_EQ(ops_->KernelLookups(ino), 4u);  // create + 3 lookups
  EXPECT_TRUE(Open(ino).invalidated.empty());

  auto f = Forget(ino, 2);
  EXPECT_EQ(f.kind(), Kind::kNone);
  EXPECT_EQ(ops_->KernelLookups(ino), 2u);
  EXPECT_TRUE(Open(ino).invalidated.empty()) << "still known: same version";

  fuse_forget_data batch[] = {{ino, 1}, {0x12345678, 7}};
  auto fm = Call(kOpForgetMulti, [&](Reply& r) { ops_->ForgetMulti(r, 2, batch); });
  EXPECT_EQ(fm.kind(), Kind::kNone);
  EXPECT_EQ(ops_->KernelLookups(ino), 1u);
  // More than it has: gone, not wrapped round.
  EXPECT_EQ(Forget(ino, 5).kind(), Kind::kNone);
  EXPECT_EQ(ops_->KernelLookups(ino), 0u);
  EXPECT_EQ(Forget(ino, 1).kind(), Kind::kNone);
  EXPECT_EQ(ops_->KernelLookups(ino), 0u);
  // Forgotten: the kernel's attributes are unknown, so the next open drops them.
  EXPECT_EQ(Open(ino).invalidated, std::vector<fuse_ino_t>{ino});
}

// Requests on several threads at once, as the multi-threaded loop sends them (for TSan too):
// lookups and forgets balance, and directory handles come and go under readdirplus.
TEST_F(FuseOpsTest, ConcurrentRequestsKeepTheCounts) {
  const auto created = NewFile("f");
  Release(created.second);
  const fuse_ino_t ino = created.first;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        ASSERT_EQ(Lookup(kRoot, "f").kind(), Kind::kEntry);
        ASSERT_EQ(Forget(ino, 1).kind(), Kind::kNone);
      }
    });
  }
  threads.emplace_back([&] {
    for (int i = 0; i < 50; ++i) {
      auto d = Opendir(kRoot);
      ASSERT_EQ(d.kind(), Kind::kOpen);
      auto items = List(kRoot, d.a().fi.fh, 4096, 0, /*plus=*/i % 2 == 1);
      EXPECT_EQ(items.size(), 3u);
      if (i % 2 == 1) {
        ASSERT_EQ(Forget(ino, 1).kind(), Kind::kNone);  // readdirplus's lookup
      }
      Call(kOpReleasedir, [&](Reply& r) {
        auto fi = Fi(d.a().fi.fh);
        ops_->Releasedir(r, kRoot, &fi);
      });
    }
  });
  for (auto& t : threads) t.join();
  EXPECT_EQ(ops_->KernelLookups(ino), 1u);  // the create's
}

TEST_F(FuseOpsTest, ReservedXattrsAreReadOnly) {
  const auto new_ino = NewFile("f");
  const fuse_ino_t ino = new_ino.first;
  const std::uint64_t fh = new_ino.second;
  Release(fh);
  EXPECT_EQ(Setxattr(ino, "user.foreverfs.replicas", "9").err(), EPERM);
  EXPECT_EQ(Setxattr(kRoot, "user.foreverfs.control", "/x").err(), EPERM);
  EXPECT_EQ(Removexattr(ino, "user.foreverfs.holders").err(), EPERM);
  EXPECT_EQ(Setxattr(ino, "user.foreverfsx", "ok").err(), 0);  // only the prefix is reserved

  // Daemon-computed values are answered, still read-only.
  ops_->SetVirtualXattr([](std::uint64_t, std::string_view name) -> std::optional<Result<Bytes>> {
    if (name == "user.foreverfs.replicas") return Result<Bytes>(Bytes{'3'});
    return std::nullopt;
  });
  ops_->SetControlPath("/run/ffs.sock");
  auto v = Getxattr(ino, "user.foreverfs.replicas", 100);
  ASSERT_EQ(v.kind(), Kind::kBuf);
  EXPECT_EQ(v.a().data, "3");
  EXPECT_EQ(Setxattr(ino, "user.foreverfs.replicas", "9").err(), EPERM);
  EXPECT_EQ(Getxattr(kRoot, "user.foreverfs.control", 100).a().data, "/run/ffs.sock");
  EXPECT_EQ(Getxattr(ino, "user.foreverfs.control", 100).err(), ENODATA);  // root only

  // Ordinary user xattrs: size queries, ERANGE, E2BIG, name bounds.
  ASSERT_EQ(Setxattr(ino, "user.a", "value").err(), 0);
  EXPECT_EQ(Getxattr(ino, "user.a", 0).kind(), Kind::kXattrSize);
  EXPECT_EQ(Getxattr(ino, "user.a", 0).a().count, 5u);
  EXPECT_EQ(Getxattr(ino, "user.a", 4).err(), ERANGE);
  EXPECT_EQ(Getxattr(ino, "user.a", 5).a().data, "value");
  EXPECT_EQ(Getxattr(ino, "user." + std::string(251, 'n'), 10).err(), ERANGE);  // 256 bytes
  EXPECT_EQ(Setxattr(ino, "user.big", std::string(64 * 1024 + 1, 'v')).err(), E2BIG);
  auto list = Call(kOpListxattr, [&](Reply& r) { ops_->Listxattr(r, ino, 1000); });
  ASSERT_EQ(list.kind(), Kind::kBuf);
  EXPECT_EQ(list.a().data.find("user.foreverfs."), std::string::npos);
  EXPECT_NE(list.a().data.find(std::string("user.a\0", 7)), std::string::npos);
  EXPECT_EQ(Removexattr(ino, "user.a").err(), 0);
  EXPECT_EQ(Getxattr(ino, "user.a", 10).err(), ENODATA);
}

// Only user.* names are stored: every other namespace is not supported (EOPNOTSUPP, which tells
// ls to stop asking for security.selinux), on get as on set, whatever the inode holds.
TEST_F(FuseOpsTest, XattrsOutsideUserAreNotSupported) {
  const auto new_ino = NewFile("f");
  const fuse_ino_t ino = new_ino.first;
  Release(new_ino.second);
  ASSERT_EQ(Setxattr(ino, "user.selinux", "v").err(), 0);
  for (const char* name : {"security.selinux", "security.capability", "system.posix_acl_access",
                           "trusted.a", "user", "user.", "selinux", ""}) {
    SCOPED_TRACE(name);
    EXPECT_EQ(Getxattr(ino, name, 0).err(), EOPNOTSUPP);
    EXPECT_EQ(Getxattr(ino, name, 100).err(), EOPNOTSUPP);
    EXPECT_EQ(Getxattr(kRoot, name, 100).err(), EOPNOTSUPP);
    EXPECT_EQ(Setxattr(ino, name, "v").err(), EOPNOTSUPP);
  }
  EXPECT_EQ(Getxattr(ino, "user.absent", 100).err(), ENODATA);
  EXPECT_EQ(Getxattr(ino, "user.selinux", 100).a().data, "v");
  // A name past 255 bytes is ERANGE before anything else, whatever its namespace.
  EXPECT_EQ(Getxattr(ino, "security." + std::string(247, 'n'), 10).err(), ERANGE);
}

TEST_F(FuseOpsTest, ExactlyOneReplyWhenAHandlerThrows) {
  ASSERT_EQ(Statfs().kind(), Kind::kStatfs);
  std::vector<std::size_t> observed;
  ops_->SetOpObserver([&](std::size_t op, std::chrono::nanoseconds) { observed.push_back(op); });
  ops_->SetFaults("statfs,fsyncdir+,forget,nonsense");
  // Before it runs: EIO, once.
  EXPECT_EQ(Statfs().err(), EIO);
  // After its reply: the reply stands, nothing more is sent.
  EXPECT_EQ(Fsyncdir().err(), 0);
  // A forget gets no answer but "none", never an errno.
  EXPECT_EQ(Forget(kRoot, 1).kind(), Kind::kNone);
  // Ops not named are untouched.
  EXPECT_EQ(Getattr(kRoot).kind(), Kind::kAttr);
  // Only the timed op that returned normally was timed.
  EXPECT_EQ(observed, std::vector<std::size_t>{kOpGetattr});
}

TEST_F(FuseOpsTest, ExactlyOneReplyWhenTheServerThrows) {
  throwing_->throw_on_sync = true;
  auto o = Fsyncdir();  // FileServer::Sync -> the store's Sync throws std::bad_alloc
  EXPECT_EQ(o.err(), EIO);
  throwing_->throw_on_sync = false;
  EXPECT_EQ(Fsyncdir().err(), 0);
  // The server is still usable afterwards.
  EXPECT_EQ(Mkdir(kRoot, "d").kind(), Kind::kEntry);
}

TEST_F(FuseOpsTest, AHandlerThatDoesNotReplyGetsEio) {
  EXPECT_EQ(Call(kOpRead, [](Reply&) {}).err(), EIO);
  EXPECT_EQ(Call(kOpForgetMulti, [](Reply&) {}).kind(), Kind::kNone);
  EXPECT_EQ(Call(kOpLookup, [](Reply&) { throw std::runtime_error("boom"); }).err(), EIO);
  EXPECT_EQ(Call(kOpLookup, [](Reply&) { throw 42; }).err(), EIO);
  // Thrown after replying: the one reply stands.
  auto after = Call(kOpUnlink, [](Reply& r) {
    r.Err(0);
    throw std::runtime_error("late");
  });
  EXPECT_EQ(after.err(), 0);
}

TEST_F(FuseOpsTest, OpNamesMatchTheMetrics) {
  const auto& timed = Ops::TimedOpNames();
  ASSERT_EQ(timed.size(), kTimedOps);
  EXPECT_EQ(timed[kOpLookup], "lookup");
  EXPECT_EQ(timed[kOpReaddirplus], "readdirplus");
  EXPECT_STREQ(Ops::OpName(kOpForgetMulti), "forget_multi");
  EXPECT_STREQ(Ops::OpName(kOpLseek), "lseek");
}

}  // namespace
}  // namespace foreverfs::fuse
