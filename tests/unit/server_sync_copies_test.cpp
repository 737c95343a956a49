// The failure text of a durable wait (server/sync_copies.h, Unconfirmed): who was asked and did
// not confirm, then the members never asked, named up to kNamedUnasked and counted past it.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "server/sync_copies.h"

namespace foreverfs::server {
namespace {

std::size_t Count(const std::string& s, const std::string& what) {
  std::size_t n = 0;
  for (auto at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

TEST(UnconfirmedTest, AskedFirstThenUnaskedNamedUpToTheLimitThenCounted) {
  const auto linked = [](std::uint64_t n) { return n % 2 == 0; };
  for (std::size_t unasked :
       {std::size_t{0}, std::size_t{1}, kNamedUnasked, kNamedUnasked + 1, kNamedUnasked + 100}) {
    SCOPED_TRACE(unasked);
    // Members 1 (confirmed), 2 (pending), 3 (failed), then `unasked` more from 100 up.
    std::vector<std::uint64_t> members{1, 2, 3};
    for (std::size_t i = 0; i < unasked; ++i) members.push_back(100 + i);
    const std::string s = Unconfirmed({1}, {2}, {{3, "its link closed"}}, members, linked);
    EXPECT_EQ(s.find(" 0000000000000002 (no answer) 0000000000000003 (its link closed)"), 0u) << s;
    EXPECT_EQ(s.find("0000000000000001"), std::string::npos) << "a confirmed member is named";
    const std::size_t named = std::min(unasked, kNamedUnasked);
    EXPECT_EQ(Count(s, " (not connected)") + Count(s, " (linked, not applying"), named) << s;
    EXPECT_EQ(Count(s, "0000000000000064 (linked, not applying this node's changes)"),
              unasked > 0 ? 1u : 0u);  // 100 is even: linked
    if (unasked > kNamedUnasked) {
      EXPECT_NE(s.find(" and " + std::to_string(unasked - kNamedUnasked) + " more not asked"),
                std::string::npos)
          << s;
    } else {
      EXPECT_EQ(s.find("more not asked"), std::string::npos) << s;
    }
  }
  EXPECT_EQ(Unconfirmed({}, {}, {}, {}, linked), "");
}

}  // namespace
}  // namespace foreverfs::server
