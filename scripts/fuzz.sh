#!/usr/bin/env bash
# Builds the libFuzzer targets with clang under ASan/UBSan, replays the seed corpus, then fuzzes
# each target for FUZZ_SECONDS (default 60). Any crash, leak or UB report fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-60}
OUT=build-fuzz
mkdir -p "$OUT"
CXX=${FUZZ_CXX:-clang++}
common=(-std=c++20 -O1 -g -I. -DFMT_HEADER_ONLY=0 -Wall -Wextra -Wno-missing-field-initializers -Werror)
codec=(net/messages.cpp net/codec.cpp model/records.cpp)
ns=(server/namespace_db.cpp server/redo_log.cpp server/namespace_schema.cpp server/namespace_feed.cpp
    server/namespace_statements.cpp server/namespace_merge.cpp crypto/hash.cpp crypto/kdf.cpp crypto/aead.cpp crypto/ctr.cpp crypto/key_file.cpp)
san=(-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
"$CXX" "${common[@]}" "${san[@]}" fuzz/frame_fuzzer.cpp "${codec[@]}" -lfmt -o "$OUT/frame_fuzzer"
"$CXX" "${common[@]}" "${san[@]}" fuzz/changes_fuzzer.cpp "${codec[@]}" "${ns[@]}" -lfmt -lsqlite3 -lcrypto -o "$OUT/changes_fuzzer"
small=(cas/small_chunks.cpp crypto/hash.cpp)
"$CXX" "${common[@]}" "${san[@]}" fuzz/small_log_fuzzer.cpp "${small[@]}" -lfmt -lspdlog -lsqlite3 -lz -lcrypto -o "$OUT/small_log_fuzzer"
g++ "${common[@]}" fuzz/make_seeds.cpp "${codec[@]}" -lfmt -o "$OUT/make_seeds"
"$OUT/make_seeds" "$OUT/seeds"
for t in frame changes small_log; do
  mkdir -p "$OUT/corpus-$t" "$OUT/seeds/$t"
  # Generated seeds, plus inputs that once found a bug (fuzz/corpus/<target>/), kept as tests.
  mkdir -p "fuzz/corpus/$t"
  echo "== $t: replaying $(ls "$OUT/seeds/$t" "fuzz/corpus/$t" | grep -vc ':$') seeds"
  "$OUT/${t}_fuzzer" -runs=0 "$OUT/seeds/$t" "fuzz/corpus/$t"
  echo "== $t: fuzzing for ${SECONDS_EACH}s"
  rc=0
  "$OUT/${t}_fuzzer" -max_total_time="$SECONDS_EACH" -print_final_stats=1 -max_len=65536 \
    -artifact_prefix="$OUT/crash-$t-" "$OUT/corpus-$t" "$OUT/seeds/$t" >"$OUT/$t.log" 2>&1 || rc=$?
  grep -E '^stat::number_of_executed_units|ERROR|SUMMARY' "$OUT/$t.log" || true
  if [ "$rc" != 0 ]; then tail -40 "$OUT/$t.log"; echo "fuzz target $t failed (exit $rc)"; exit 1; fi
done
echo "fuzzing passed"
