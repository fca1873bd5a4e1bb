// Fixtures of the statedict (and registry) tests: written once per generator
// version by tests/fixtures/make_statedict_fixtures.py (Debian's
// python3-torch); see tests/fixtures/fixture_dir.h.
#ifndef WEIGHTGATE_TESTS_STATEDICT_STATEDICT_FIXTURES_H_
#define WEIGHTGATE_TESTS_STATEDICT_STATEDICT_FIXTURES_H_

#include <string>

#include "tests/fixtures/fixture_dir.h"

namespace weightgate::testing {

// The fixture directory ("" after a reported failure).
inline const std::string& StatedictFixtureDir() {
  static const std::string dir =
      GenerateFixtures("statedict", {"make_statedict_fixtures.py", "statedict_model.py"});
  return dir;
}

// A fresh scratch directory for one test's outputs.
inline std::string ScratchDir() { return ScratchDir("statedict"); }

}  // namespace weightgate::testing

#endif  // WEIGHTGATE_TESTS_STATEDICT_STATEDICT_FIXTURES_H_
