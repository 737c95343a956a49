// ParseByteSize: --cache-size and --capacity values, at and past their bounds.

#include "app/byte_size.h"

#include <gtest/gtest.h>

namespace foreverfs::app {
namespace {

TEST(ByteSizeTest, NumbersAndSuffixes) {
  EXPECT_EQ(ParseByteSize("0"), 0u);
  EXPECT_EQ(ParseByteSize("1"), 1u);
  EXPECT_EQ(ParseByteSize("1B"), 1u);
  EXPECT_EQ(ParseByteSize("4K"), 4096u);
  EXPECT_EQ(ParseByteSize("4k"), 4096u);
  EXPECT_EQ(ParseByteSize("4KiB"), 4096u);
  EXPECT_EQ(ParseByteSize("3M"), 3u << 20);
  EXPECT_EQ(ParseByteSize("500G"), 500ull << 30);
  EXPECT_EQ(ParseByteSize("2T"), 2ull << 40);
  EXPECT_EQ(ParseByteSize("0T"), 0u);
}

TEST(ByteSizeTest, TheLimitIsTwoToTheSixtyThreeMinusOne) {
  EXPECT_EQ(ParseByteSize("9223372036854775807"), 9223372036854775807ull);
  EXPECT_EQ(ParseByteSize("9223372036854775808"), std::nullopt);
  EXPECT_EQ(ParseByteSize("18446744073709551616"), std::nullopt);
  EXPECT_EQ(ParseByteSize("8388607T"), 8388607ull << 40);
  EXPECT_EQ(ParseByteSize("8388608T"), std::nullopt);  // 2^63
}

TEST(ByteSizeTest, RefusesWhatIsNotASize) {
  for (const char* bad : {"", "K", "-1", "+1", "1.5G", "1 G", "1GB", "1P", "0x10", " 1", "1G "}) {
    EXPECT_EQ(ParseByteSize(bad), std::nullopt) << "'" << bad << "'";
  }
}

}  // namespace
}  // namespace foreverfs::app
