#pragma once
// net/: the primitives of the wire encoding (doc/protocol.md, "Encoding"): little-endian
// integers, bools as one byte 0 or 1, strings with a u16 length, blobs with a u32 length and
// fixed 32-byte digests.
//
// Writer appends to a buffer it owns. Reader walks a span it does not own (the span must outlive
// it) and is sticky: the first failure is recorded with what was being read, every later read
// returns a default value and consumes nothing, and Finish() reports it. A decoder can therefore
// read a whole structure and check once, as long as it checks before using a value to allocate
// or index (Count() does the checking for counts). Neither class is thread-safe.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "base/bytes.h"
#include "base/status.h"
#include "crypto/crypto.h"

namespace foreverfs::net {

class Writer {
 public:
  void PutU8(std::uint8_t v) { buf_.push_back(v); }
  void PutU16(std::uint16_t v);
  void PutU32(std::uint32_t v);
  void PutU64(std::uint64_t v);
  void PutI64(std::int64_t v) { PutU64(static_cast<std::uint64_t>(v)); }
  void PutBool(bool v) { PutU8(v ? 1 : 0); }
  // u16 length, then the bytes. Throws std::length_error over 65535 bytes (a caller bug: the
  // message bounds are far lower).
  void PutStr16(std::string_view s);
  // u32 length, then the bytes. Throws std::length_error over 2^32-1 bytes.
  void PutBlob32(ByteSpan b);
  void PutDigest(const crypto::Digest& d) { PutRaw(d); }
  void PutRaw(ByteSpan b) { buf_.insert(buf_.end(), b.begin(), b.end()); }
  // Overwrites 4 bytes at `offset` (which must already be written) with `v`.
  void PatchU32(std::size_t offset, std::uint32_t v);

  std::size_t size() const { return buf_.size(); }
  Bytes Take() && { return std::move(buf_); }

 private:
  Bytes buf_;
};

class Reader {
 public:
  // `context` prefixes every error message, e.g. "Changes".
  Reader(ByteSpan data, std::string_view context) : data_(data), context_(context) {}

  // `field` names what is read, for the error message ("inode mode").
  std::uint8_t GetU8(std::string_view field);
  std::uint16_t GetU16(std::string_view field);
  std::uint32_t GetU32(std::string_view field);
  std::uint64_t GetU64(std::string_view field);
  std::int64_t GetI64(std::string_view field);
  // Fails unless the byte is 0 or 1.
  bool GetBool(std::string_view field);
  // u16 length (checked against `max` and the bytes left before anything is copied), bytes.
  std::string GetStr16(std::string_view field, std::size_t max);
  // u32 length (checked against `max` and the bytes left before anything is copied), bytes.
  Bytes GetBlob32(std::string_view field, std::size_t max);
  crypto::Digest GetDigest(std::string_view field);
  // A u32 count of items that each take at least `min_item_size` bytes. Fails, returning 0, if
  // the count is over `max` or the bytes left cannot hold that many items, so the caller may
  // reserve() the result.
  std::uint32_t GetCount(std::string_view field, std::uint32_t max, std::size_t min_item_size);

  // Records a failure (if none yet): "<context>: <message>".
  void Fail(std::string_view message);
  bool ok() const { return error_.empty(); }
  std::size_t remaining() const { return data_.size() - pos_; }
  // The first failure, else kInvalid if bytes are left over, else Ok.
  Status Finish() const;

 private:
  // True if `n` more bytes are available; otherwise records a truncation at `field`.
  bool Need(std::size_t n, std::string_view field);
  std::uint64_t GetLe(std::size_t n, std::string_view field);

  ByteSpan data_;
  std::size_t pos_ = 0;
  std::string_view context_;
  std::string error_;  // empty while ok
};

}  // namespace foreverfs::net
