#pragma once
// Sizes on the command line (--cache-size, --capacity): a decimal number of bytes, or with a
// suffix K, M, G or T (powers of 1024; "KiB", "MiB", "GiB", "TiB" and lower case too), e.g.
// "500G". At most 2^63 - 1 bytes.

#include <cctype>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

namespace foreverfs::app {

// The size `text` names, or nullopt if it is not one (empty, a sign, a fraction, an unknown
// suffix, or more than 2^63 - 1 bytes).
inline std::optional<std::uint64_t> ParseByteSize(std::string_view text) {
  std::size_t i = 0;
  std::uint64_t n = 0;
  constexpr std::uint64_t kMax = std::numeric_limits<std::int64_t>::max();
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    const std::uint64_t d = static_cast<std::uint64_t>(text[i] - '0');
    if (n > (kMax - d) / 10) return std::nullopt;
    n = n * 10 + d;
    ++i;
  }
  if (i == 0) return std::nullopt;
  std::string suffix;
  for (; i < text.size(); ++i) {
    suffix += static_cast<char>(std::toupper(static_cast<unsigned char>(text[i])));
  }
  int shift = 0;
  if (suffix.empty() || suffix == "B") {
    shift = 0;
  } else if (suffix == "K" || suffix == "KIB") {
    shift = 10;
  } else if (suffix == "M" || suffix == "MIB") {
    shift = 20;
  } else if (suffix == "G" || suffix == "GIB") {
    shift = 30;
  } else if (suffix == "T" || suffix == "TIB") {
    shift = 40;
  } else {
    return std::nullopt;
  }
  if (n > (kMax >> shift)) return std::nullopt;
  return n << shift;
}

}  // namespace foreverfs::app
