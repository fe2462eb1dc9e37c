// The one integer-list parser of the command line (--layers, --heads, --bits, --keep-fp16-layers).
#include "pkv/core/int_list.h"

#include "catch.h"

using pkv::parse_int_list;

TEST_CASE("parse_int_list accepts lists and ranges, ascending and unique", "[core]") {
    CHECK(parse_int_list("--layers", "0,5,10-12") == std::vector<int>{0, 5, 10, 11, 12});
    CHECK(parse_int_list("--layers", "3,1,1") == std::vector<int>{1, 3});
    CHECK(parse_int_list("--layers", "2-2,,7") == std::vector<int>{2, 7});
    CHECK(parse_int_list("--bits", "4,2") == std::vector<int>{2, 4});
}

TEST_CASE("parse_int_list names the option, the list and the bad item", "[core]") {
    CHECK_THROWS_WITH(parse_int_list("--layers", "a"),
                      ContainsSubstring("--layers 'a': expected non-negative integers or ranges like 2-5, got 'a'"));
    CHECK_THROWS_WITH(parse_int_list("--heads", "0,x"), ContainsSubstring("--heads '0,x'"));
    CHECK_THROWS_WITH(parse_int_list("--layers", "5-2"), ContainsSubstring("--layers '5-2': empty range '5-2'"));
    CHECK_THROWS_WITH(parse_int_list("--layers", "-1"), ContainsSubstring("got ''"));
    CHECK_THROWS_WITH(parse_int_list("--layers", "1073741824"), ContainsSubstring("got '1073741824'"));
    CHECK_THROWS_WITH(parse_int_list("--layers", ","), ContainsSubstring("expected at least one value"));
    CHECK_THROWS_WITH(parse_int_list("--layers", "1 ,2"), ContainsSubstring("got '1 '"));
}
