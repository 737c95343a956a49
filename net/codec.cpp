#include "net/codec.h"

#include <algorithm>
#include <limits>
#include <stdexcept>

namespace foreverfs::net {

void Writer::PutU16(std::uint16_t v) {
  for (int i = 0; i < 2; ++i) buf_.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

void Writer::PutU32(std::uint32_t v) {
  for (int i = 0; i < 4; ++i) buf_.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

void Writer::PutU64(std::uint64_t v) {
  for (int i = 0; i < 8; ++i) buf_.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

void Writer::PutStr16(std::string_view s) {
  if (s.size() > std::numeric_limits<std::uint16_t>::max()) {
    throw std::length_error(fmt::format("string of {} bytes does not fit a u16 length", s.size()));
  }
  PutU16(static_cast<std::uint16_t>(s.size()));
  PutRaw(AsBytes(s));
}

void Writer::PutBlob32(ByteSpan b) {
  if (b.size() > std::numeric_limits<std::uint32_t>::max()) {
    throw std::length_error(fmt::format("blob of {} bytes does not fit a u32 length", b.size()));
  }
  PutU32(static_cast<std::uint32_t>(b.size()));
  PutRaw(b);
}

void Writer::PatchU32(std::size_t offset, std::uint32_t v) {
  if (offset > buf_.size() || buf_.size() - offset < 4) {
    throw std::out_of_range("Writer::PatchU32 past the end");
  }
  for (int i = 0; i < 4; ++i) buf_[offset + i] = static_cast<std::uint8_t>(v >> (8 * i));
}

bool Reader::Need(std::size_t n, std::string_view field) {
  if (!ok()) return false;
  if (remaining() < n) {
    Fail(fmt::format("truncated at {}: needs {} bytes, {} left", field, n, remaining()));
    return false;
  }
  return true;
}

std::uint64_t Reader::GetLe(std::size_t n, std::string_view field) {
  if (!Need(n, field)) return 0;
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < n; ++i) v |= std::uint64_t{data_[pos_ + i]} << (8 * i);
  pos_ += n;
  return v;
}

std::uint8_t Reader::GetU8(std::string_view field) {
  return static_cast<std::uint8_t>(GetLe(1, field));
}
std::uint16_t Reader::GetU16(std::string_view field) {
  return static_cast<std::uint16_t>(GetLe(2, field));
}
std::uint32_t Reader::GetU32(std::string_view field) {
  return static_cast<std::uint32_t>(GetLe(4, field));
}
std::uint64_t Reader::GetU64(std::string_view field) { return GetLe(8, field); }
std::int64_t Reader::GetI64(std::string_view field) {
  return static_cast<std::int64_t>(GetLe(8, field));
}

bool Reader::GetBool(std::string_view field) {
  std::uint8_t v = GetU8(field);
  if (v > 1) Fail(fmt::format("{} is {}, not a bool (0 or 1)", field, v));
  return v == 1 && ok();
}

std::string Reader::GetStr16(std::string_view field, std::size_t max) {
  std::uint16_t n = GetU16(field);
  if (!ok()) return {};
  if (n > max) {
    Fail(fmt::format("{} length {} exceeds {}", field, n, max));
    return {};
  }
  if (!Need(n, field)) return {};
  std::string s(reinterpret_cast<const char*>(data_.data() + pos_), n);
  pos_ += n;
  return s;
}

Bytes Reader::GetBlob32(std::string_view field, std::size_t max) {
  std::uint32_t n = GetU32(field);
  if (!ok()) return {};
  if (n > max) {
    Fail(fmt::format("{} length {} exceeds {}", field, n, max));
    return {};
  }
  if (!Need(n, field)) return {};
  Bytes b(data_.begin() + pos_, data_.begin() + pos_ + n);
  pos_ += n;
  return b;
}

crypto::Digest Reader::GetDigest(std::string_view field) {
  crypto::Digest d{};
  if (!Need(d.size(), field)) return d;
  std::copy_n(data_.begin() + pos_, d.size(), d.begin());
  pos_ += d.size();
  return d;
}

std::uint32_t Reader::GetCount(std::string_view field, std::uint32_t max,
                               std::size_t min_item_size) {
  std::uint32_t n = GetU32(field);
  if (!ok()) return 0;
  if (n > max) {
    Fail(fmt::format("{} count {} exceeds {}", field, n, max));
    return 0;
  }
  // n <= 2^32 and min_item_size is a small constant: the product cannot overflow 64 bits.
  std::uint64_t need = std::uint64_t{n} * min_item_size;
  if (need > remaining()) {
    Fail(fmt::format("{} count {} needs at least {} bytes, {} left", field, n, need, remaining()));
    return 0;
  }
  return n;
}

void Reader::Fail(std::string_view message) {
  if (ok()) error_ = fmt::format("{}: {}", context_, message);
}

Status Reader::Finish() const {
  if (!ok()) return Status(Code::kInvalid, error_);
  if (remaining() != 0) {
    return Err(Code::kInvalid, "{}: {} trailing byte(s) after the message", context_, remaining());
  }
  return Ok();
}

}  // namespace foreverfs::net
