// Catch2 v2 has no Catch2WithMain target; this is its main.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
