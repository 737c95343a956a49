#!/usr/bin/env bash
# The whole test suite: installs, builds, then unit tests (ctest), unit tests again under
# ASan/UBSan and under ThreadSanitizer (clang, -Wthread-safety), FUSE integration tests (single
# node, and several nodes in network namespaces), and the black-box acceptance run in
# ../shared/acceptance.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
failed=()
retried=()
step() { echo; echo "=== $*"; }
# Unit tests under a sanitizer: a failed test runs once more, and both the failure and the
# retry stay in the output and in the summary at the end (the sanitizers slow some timing-bound
# multi-node tests down many times on two cores; a test that fails twice fails the stage). A
# sanitizer's own report fails the stage even if the retry passed: races and memory errors
# are often timing-bound too.
sanitized_ctest() {
  local dir=$1; shift
  local log; log=$(mktemp)
  rm -f "$dir/Testing/Temporary/LastTestsFailed.log"
  (cd "$dir" && env "$@" ctest --output-on-failure -j2 --repeat until-pass:2) 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local t
  for t in $(grep -oE 'Test +#[0-9]+: [A-Za-z0-9_./]+ \.+\*+(Failed|Exception|Timeout)' "$log" |
             awk '{print $3}' | sort -u); do retried+=("$dir:$t"); done
  if grep -qE 'WARNING: ThreadSanitizer|ERROR: (Address|Leak)Sanitizer|runtime error:' "$log"; then
    echo "a sanitizer reported in $dir (above), whatever the retry did"
    rc=1
  fi
  rm -f "$log"
  return "$rc"
}

rm -f build*/Testing/Temporary/LastTestsFailed.log
bash scripts/build.sh || { echo "build failed"; exit 1; }

step "unit tests"
rm -f build/Testing/Temporary/LastTestsFailed.log
(cd build && ctest --output-on-failure -j2) || failed+=("unit tests")

step "unit tests under ASan/UBSan"
if cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DFOREVERFS_SANITIZE=ON >/dev/null &&
   cmake --build build-asan -j"$(nproc)" --target test_crypto test_cas test_model test_net test_server test_fuse test_app; then
  sanitized_ctest build-asan ASAN_OPTIONS=detect_leaks=1 || failed+=("sanitized unit tests")
else
  failed+=("sanitized build")
fi

step "unit tests, and two integration scripts, under ThreadSanitizer (clang, -Wthread-safety)"
tsan_env=(TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1 exitcode=66")
if CC=clang CXX=clang++ cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFOREVERFS_TSAN=ON >/dev/null &&
   cmake --build build-tsan -j"$(nproc)" --target test_crypto test_cas test_model test_net test_server test_fuse test_app foreverfs; then
  sanitized_ctest build-tsan "${tsan_env[@]}" || failed+=("TSan unit tests")
  # A race in the daemon ends it with exit code 66 (the scripts check unmount's exit code) and
  # leaves a report in its log.
  for t in single_node multi_node; do
    logs=$(mktemp -d)
    env "${tsan_env[@]}" KEEP_LOGS="$logs" FOREVERFS="$root/build-tsan/foreverfs" \
      bash "tests/integration/$t.sh" || failed+=("TSan $t.sh")
    if grep -l "WARNING: ThreadSanitizer" "$logs"/* 2>/dev/null; then
      grep -h -A30 "WARNING: ThreadSanitizer" "$logs"/* | head -120
      failed+=("TSan reports in $t.sh")
    fi
    rm -rf "$logs"
  done
else
  failed+=("TSan build")
fi

step "fuzz targets (clang, ASan/UBSan, ${FUZZ_SECONDS:-30} s each)"
FUZZ_SECONDS=${FUZZ_SECONDS:-30} bash scripts/fuzz.sh || failed+=("fuzzing")

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
[ ${#retried[@]} -gt 0 ] && echo "failed once under a sanitizer (see above): ${retried[*]}"
if [ ${#failed[@]} -gt 0 ]; then
  # The failed unit tests again, where the end of the output (all that CI shows) holds them.
  for d in build build-asan build-tsan; do
    f=$d/Testing/Temporary/LastTestsFailed.log
    [ -s "$f" ] && echo "failed in $d: $(tr '\n' ' ' <"$f")"
  done
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all test stages passed"
