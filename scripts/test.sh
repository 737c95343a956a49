#!/usr/bin/env bash
# The whole test suite: installs, builds, then unit tests (ctest), unit tests again under
# ASan/UBSan, FUSE integration tests (single node, and several nodes in network namespaces),
# and the black-box acceptance run in ../shared/acceptance.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
failed=()
step() { echo; echo "=== $*"; }

bash scripts/build.sh || { echo "build failed"; exit 1; }

step "unit tests"
(cd build && ctest --output-on-failure -j2) || failed+=("unit tests")

step "unit tests under ASan/UBSan"
if cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DFOREVERFS_SANITIZE=ON >/dev/null &&
   cmake --build build-asan -j"$(nproc)" --target test_crypto test_cas test_net test_server test_app; then
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j2) || failed+=("sanitized unit tests")
else
  failed+=("sanitized build")
fi

step "fuzz targets (clang, ASan/UBSan, ${FUZZ_SECONDS:-60} s each)"
bash scripts/fuzz.sh || failed+=("fuzzing")

for t in tests/integration/*.sh; do
  step "integration: $t"
  FOREVERFS="$root/build/foreverfs" bash "$t" || failed+=("$t")
done

if [ -x ../shared/acceptance/run ] || [ -f ../shared/acceptance/run ]; then
  step "acceptance (${ACC_GROUPS:-basic catchup join})"
  FOREVERFS="$root/build/foreverfs" ACC_GROUPS="${ACC_GROUPS:-basic catchup join}" \
    bash ../shared/acceptance/run || failed+=("acceptance")
else
  echo "../shared/acceptance/run not found: acceptance skipped"
fi

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all test stages passed"
