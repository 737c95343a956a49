#pragma once
// A fuse::Reply that records what a handler answered instead of answering a kernel, for the
// tests of fuse::Ops. Directory entries go into the handler's buffer in a layout of this
// file's own (parsed back by ParseDir), taking as many bytes as libfuse's entries do, so that
// what fits in a READDIR of a given size is what fits for the kernel.

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fuse/reply.h"

namespace foreverfs::test {

struct Answer {
  enum class Kind {
    kErr,
    kNone,
    kEntry,
    kCreate,
    kAttr,
    kReadlink,
    kOpen,
    kWrite,
    kBuf,
    kXattrSize,
    kStatfs,
    kLseek
  };
  Kind kind = Kind::kErr;
  int err = 0;               // kErr
  fuse_entry_param entry{};  // kEntry, kCreate
  fuse_file_info fi{};       // kCreate, kOpen
  struct stat st {};         // kAttr
  double timeout = 0;        // kAttr
  std::string data;          // kBuf, kReadlink
  std::size_t count = 0;     // kWrite, kXattrSize
  struct statvfs vfs {};     // kStatfs
  off_t off = 0;             // kLseek
};

// One directory entry as a handler added it.
struct DirItem {
  std::string name;
  std::uint64_t ino = 0;  // e.attr.st_ino
  off_t next = 0;
  mode_t mode = 0;              // e.attr.st_mode
  std::uint64_t entry_ino = 0;  // readdirplus: e.ino (0: no attributes)
  std::int64_t size = 0;        // readdirplus: e.attr.st_size
};

class RecordingReply : public fuse::Reply {
 public:
  fuse::RequestContext ctx;
  std::vector<Answer> answers;
  std::vector<fuse_ino_t> invalidated;  // InvalInodeAttrs, in order

  fuse::RequestContext Context() const override { return ctx; }

  std::size_t AddDirEntry(char* buf, std::size_t size, const char* name, const fuse_entry_param& e,
                          off_t next, bool plus) override {
    const std::size_t len = std::strlen(name);
    const std::size_t need = EntrySize(len, plus);
    if (need > size) return need;
    std::memset(buf, 0, need);
    Header h{e.attr.st_ino, next, static_cast<std::uint32_t>(len), e.attr.st_mode};
    std::memcpy(buf, &h, sizeof h);
    std::size_t at = sizeof h;
    if (plus) {
      Plus p{e.ino, e.attr.st_size};
      std::memcpy(buf + at, &p, sizeof p);
      at += sizeof p;
    }
    std::memcpy(buf + at, name, len);
    return need;
  }
  void InvalInodeAttrs(fuse_ino_t ino) override { invalidated.push_back(ino); }

  // The entries of a directory buffer a handler answered with.
  static std::vector<DirItem> ParseDir(const std::string& data, bool plus) {
    std::vector<DirItem> out;
    std::size_t pos = 0;
    while (pos < data.size()) {
      Header h;
      std::memcpy(&h, data.data() + pos, sizeof h);
      DirItem d;
      d.ino = h.ino;
      d.next = h.next;
      d.mode = h.mode;
      std::size_t at = pos + sizeof h;
      if (plus) {
        Plus p;
        std::memcpy(&p, data.data() + at, sizeof p);
        d.entry_ino = p.entry_ino;
        d.size = p.size;
        at += sizeof p;
      }
      d.name.assign(data.data() + at, h.namelen);
      out.push_back(d);
      pos += EntrySize(h.namelen, plus);
    }
    return out;
  }

  // As libfuse: struct fuse_dirent is 24 bytes before the name, fuse_direntplus 152; entries
  // are padded to 8 bytes.
  static std::size_t EntrySize(std::size_t namelen, bool plus) {
    return ((plus ? 152 : 24) + namelen + 7) & ~std::size_t{7};
  }

 private:
  struct Header {
    std::uint64_t ino;
    std::int64_t next;
    std::uint32_t namelen;
    std::uint32_t mode;
  };
  struct Plus {
    std::uint64_t entry_ino;
    std::int64_t size;
  };
  static_assert(sizeof(Header) == 24);

  Answer& Add(Answer::Kind k) {
    answers.emplace_back();
    answers.back().kind = k;
    return answers.back();
  }
  void DoErr(int err) override { Add(Answer::Kind::kErr).err = err; }
  void DoNone() override { Add(Answer::Kind::kNone); }
  void DoEntry(const fuse_entry_param& e) override { Add(Answer::Kind::kEntry).entry = e; }
  void DoCreate(const fuse_entry_param& e, const fuse_file_info& fi) override {
    auto& a = Add(Answer::Kind::kCreate);
    a.entry = e;
    a.fi = fi;
  }
  void DoAttr(const struct stat& st, double timeout) override {
    auto& a = Add(Answer::Kind::kAttr);
    a.st = st;
    a.timeout = timeout;
  }
  void DoReadlink(const char* target) override { Add(Answer::Kind::kReadlink).data = target; }
  void DoOpen(const fuse_file_info& fi) override { Add(Answer::Kind::kOpen).fi = fi; }
  void DoWrite(std::size_t count) override { Add(Answer::Kind::kWrite).count = count; }
  void DoBuf(const void* data, std::size_t size) override {
    Add(Answer::Kind::kBuf).data.assign(static_cast<const char*>(data), size);
  }
  void DoXattrSize(std::size_t size) override { Add(Answer::Kind::kXattrSize).count = size; }
  void DoStatfs(const struct statvfs& st) override { Add(Answer::Kind::kStatfs).vfs = st; }
  void DoLseek(off_t off) override { Add(Answer::Kind::kLseek).off = off; }
};

}  // namespace foreverfs::test
