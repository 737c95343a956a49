#pragma once
// A staging file: an unlinked O_TMPFILE (nothing is left behind by a crash) whose bytes on disk
// are AES-256-CTR under a random key that exists only in this process's memory, so the disk
// never holds plaintext of a file being written, and a crash makes what was left unreadable.
//
// Ranges never written (file holes, punched chunks, space past a truncation) read as zeros: a
// 16-byte block whose bytes on disk are all zero is taken as plaintext zeros (the chance that
// real data encrypts to an all-zero block is 2^-128). Writes are done in whole 16-byte blocks
// for that reason. Not thread-safe: its OpenFile serializes access.
//
// The keystream is never used twice: each Write takes a fresh generation number, encrypts the
// 4 KiB pages it covers (whole pages, re-encrypting the untouched bytes around it) under a
// counter that starts from that generation, and remembers each page's generation in memory (8
// bytes per 4 KiB page; the key is in memory only anyway). Rewriting an offset therefore never
// produces two ciphertexts whose XOR is the XOR of their plaintexts, which two snapshots of the
// disk would otherwise give away.

#include <filesystem>
#include <memory>
#include <vector>

#include "base/bytes.h"
#include "base/fd.h"
#include "base/status.h"
#include "crypto/crypto.h"

namespace foreverfs::server {

class StagingFile {
 public:
  static Result<StagingFile> Create(const std::filesystem::path& dir);
  StagingFile(StagingFile&&) = default;
  StagingFile& operator=(StagingFile&&) = default;

  static constexpr std::uint64_t kPage = 4096;  // the unit a generation covers

  Status Read(std::uint64_t offset, MutableByteSpan out);
  Status Write(std::uint64_t offset, ByteSpan data);
  // Bytes at and after `size` read as zeros afterwards.
  Status Truncate(std::uint64_t size);
  // [offset, offset + length) reads as zeros afterwards (blocks wholly inside become holes).
  Status Zero(std::uint64_t offset, std::uint64_t length);
  // The descriptor, for tests that look at the bytes on disk.
  int RawFdForTest() const { return fd_.get(); }

 private:
  StagingFile(UniqueFd fd, const crypto::Key256& key);
  Status ReadRaw(std::uint64_t offset, std::uint8_t* buf, std::size_t len);
  Status WriteRaw(std::uint64_t offset, const std::uint8_t* buf, std::size_t len);
  // Initial counter block of generation `gen`: (prefix xor gen) || 0, so that a byte offset's
  // block number (< 2^60) never carries into the generation half.
  std::array<std::uint8_t, 16> Iv(std::uint64_t gen) const;
  std::uint64_t GenOf(std::uint64_t page) const { return page < gens_.size() ? gens_[page] : 0; }
  // XORs buf (the bytes at [offset, offset + len), 16-aligned) with each page's keystream.
  void Crypt(std::uint64_t offset, std::uint8_t* buf, std::size_t len);

  UniqueFd fd_;
  std::unique_ptr<crypto::Ctr> ctr_;
  std::uint64_t prefix_ = 0;
  std::uint64_t next_gen_ = 0;
  std::vector<std::uint64_t> gens_;  // per page: the generation it was last written under
};

}  // namespace foreverfs::server
