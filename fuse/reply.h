#pragma once
// fuse::Reply: how a request handler (fuse::Ops) answers one FUSE request, and what it may read
// of the request and tell the kernel besides. The production implementation (in fuse_fs.cpp)
// calls fuse_reply_* on a fuse_req_t; unit tests record the calls instead, so the handlers run
// without /dev/fuse or a kernel.
//
// One Reply object per request, used by the thread that runs its handler. Every answer goes
// through the non-virtual methods below, which mark the request as answered before they hand
// it to the implementation: the guard around every handler (Ops::Guard) relies on that mark to
// answer EIO for a request left without an answer. An answer frees the request in libfuse, so
// a request gets at most one of them; the guard makes it at least one.

#ifndef FUSE_USE_VERSION
#define FUSE_USE_VERSION 314
#endif
#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#include <cstddef>
#include <optional>
#include <string_view>

namespace foreverfs::fuse {

// Who sent the request (fuse_req_ctx).
struct RequestContext {
  uid_t uid = 0;
  gid_t gid = 0;
  mode_t umask = 0;
  // Whether this write, truncate, chown or O_TRUNC open must clear setuid/setgid, as the
  // kernel says with FUSE_HANDLE_KILLPRIV_V2 (fuse/kernel_io.h): set for a caller without
  // CAP_FSETID, and for every chown. nullopt where the kernel does not say (it did not offer
  // the flag): the kernel then clears them itself on truncate and chown, and the handlers
  // decide writes and O_TRUNC opens by uid.
  std::optional<bool> kill_suidgid;
};

class Reply {
 public:
  virtual ~Reply() = default;

  // The caller's ids and umask. Valid until the request is answered.
  virtual RequestContext Context() const = 0;

  // Answers (exactly one per request). Err(0) is success for the ops that return nothing.
  void Err(int err) {
    replied_ = true;
    DoErr(err);
  }
  // FORGET and BATCH_FORGET: the kernel waits for no answer.
  void None() {
    replied_ = true;
    DoNone();
  }
  void Entry(const fuse_entry_param& e) {
    replied_ = true;
    DoEntry(e);
  }
  void Create(const fuse_entry_param& e, const fuse_file_info& fi) {
    replied_ = true;
    DoCreate(e, fi);
  }
  void Attr(const struct stat& st, double timeout) {
    replied_ = true;
    DoAttr(st, timeout);
  }
  // `target` is NUL-terminated.
  void Readlink(const char* target) {
    replied_ = true;
    DoReadlink(target);
  }
  void Open(const fuse_file_info& fi) {
    replied_ = true;
    DoOpen(fi);
  }
  void Write(std::size_t count) {
    replied_ = true;
    DoWrite(count);
  }
  // Data: a read, an xattr value or list, a directory buffer built with AddDirEntry.
  void Buf(const void* data, std::size_t size) {
    replied_ = true;
    DoBuf(data, size);
  }
  void XattrSize(std::size_t size) {
    replied_ = true;
    DoXattrSize(size);
  }
  void Statfs(const struct statvfs& st) {
    replied_ = true;
    DoStatfs(st);
  }
  void Lseek(off_t off) {
    replied_ = true;
    DoLseek(off);
  }

  // Whether one of the answers above was given.
  bool replied() const { return replied_; }

  // Not answers. Adds a directory entry to the buffer `buf` of `size` bytes, for readdir (only
  // e.attr's st_ino and st_mode count) or, with `plus`, readdirplus (all of `e`; e.ino 0 means
  // no attributes), `next` being the offset of the entry after it. Returns the bytes the entry
  // takes, as fuse_add_direntry does: more than `size` means it did not fit and nothing was
  // written.
  virtual std::size_t AddDirEntry(char* buf, std::size_t size, const char* name,
                                  const fuse_entry_param& e, off_t next, bool plus) = 0;
  // Drops the kernel's cached attributes of `ino`, not its pages (offset -1: no page lock is
  // taken, so it is safe inside a request). Before the answer.
  virtual void InvalInodeAttrs(fuse_ino_t ino) = 0;

 private:
  virtual void DoErr(int err) = 0;
  virtual void DoNone() = 0;
  virtual void DoEntry(const fuse_entry_param& e) = 0;
  virtual void DoCreate(const fuse_entry_param& e, const fuse_file_info& fi) = 0;
  virtual void DoAttr(const struct stat& st, double timeout) = 0;
  virtual void DoReadlink(const char* target) = 0;
  virtual void DoOpen(const fuse_file_info& fi) = 0;
  virtual void DoWrite(std::size_t count) = 0;
  virtual void DoBuf(const void* data, std::size_t size) = 0;
  virtual void DoXattrSize(std::size_t size) = 0;
  virtual void DoStatfs(const struct statvfs& st) = 0;
  virtual void DoLseek(off_t off) = 0;

  bool replied_ = false;
};

}  // namespace foreverfs::fuse
