#include "common/model_ref.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace weightgate::common {
namespace {

TEST(ModelRefTest, InvalidModelIdsRejected) {
  for (std::string bad : std::vector<std::string>{"", "Upper", "-x", ".x", "a/b", "../etc",
                                                  std::string(129, 'a'), "a b"}) {
    EXPECT_FALSE(ValidateModelId(bad).ok()) << bad;
  }
  for (std::string good :
       std::vector<std::string>{"a", "resnet50", "bert-base.v2_x", std::string(128, 'z')}) {
    EXPECT_TRUE(ValidateModelId(good).ok()) << good;
  }
}

TEST(ModelRefTest, ParseRef) {
  auto r = ParseRef("resnet50");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->alias, "latest");
  r = ParseRef("resnet50@7");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->version, 7);
  EXPECT_TRUE(r->alias.empty());
  r = ParseRef("resnet50@prod");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->alias, "prod");
  EXPECT_FALSE(ParseRef("resnet50@").ok());
  EXPECT_FALSE(ParseRef("resnet50@0").ok());
  EXPECT_FALSE(ParseRef("@prod").ok());
  EXPECT_FALSE(ParseRef("Resnet@prod").ok());
  EXPECT_FALSE(ParseRef("r@Bad Alias").ok());
}

}  // namespace
}  // namespace weightgate::common
