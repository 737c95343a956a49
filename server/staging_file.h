#pragma once
// A staging file: an unlinked O_TMPFILE (nothing is left behind by a crash) whose bytes on disk
// are AES-256-CTR under a random key that exists only in this process's memory, so the disk
// never holds plaintext of a file being written, and a crash makes what was left unreadable.
//
// Ranges never written (file holes, punched chunks, space past a truncation) read as zeros: a
// 16-byte block whose bytes on disk are all zero is taken as plaintext zeros (the chance that
// real data encrypts to an all-zero block is 2^-128). Writes are done in whole 16-byte blocks
// for that reason. Not thread-safe: its OpenFile serializes access.

#include <filesystem>

#include "base/bytes.h"
#include "base/fd.h"
#include "base/status.h"
#include "crypto/crypto.h"

namespace foreverfs::server {

class StagingFile {
 public:
  static Result<StagingFile> Create(const std::filesystem::path& dir);

  Status Read(std::uint64_t offset, MutableByteSpan out);
  Status Write(std::uint64_t offset, ByteSpan data);
  // Bytes at and after `size` read as zeros afterwards.
  Status Truncate(std::uint64_t size);
  // [offset, offset + length) reads as zeros afterwards; both multiples of 16.
  Status Zero(std::uint64_t offset, std::uint64_t length);

 private:
  StagingFile(UniqueFd fd) : fd_(std::move(fd)) {}
  Status ReadRaw(std::uint64_t offset, std::uint8_t* buf, std::size_t len);
  Status WriteRaw(std::uint64_t offset, const std::uint8_t* buf, std::size_t len);

  UniqueFd fd_;
  crypto::Key256 key_{};
  std::array<std::uint8_t, 16> iv_{};
};

}  // namespace foreverfs::server
