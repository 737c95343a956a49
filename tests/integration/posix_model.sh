#!/usr/bin/env bash
# Randomized model-based POSIX test (tests/integration/posix_model.py) on a single-node mount:
# thousands of random operations on the mount and on a local reference directory, results and
# trees compared. POSIX_SEED=S replays a seed, POSIX_OPS=N sets the number of operations.
#
# POSIX_SKIP=op,... leaves operations out (posix_model.py --help lists them); none is left out
# by default: every operation must behave as on the local reference directory.
set -u
cd "$(dirname "$0")/../.."
SKIP=${POSIX_SKIP-}
SEED=${POSIX_SEED:-$(( RANDOM * 32768 + RANDOM ))}
PASS=0; FAIL=0
if python3 tests/integration/posix_model.py --seed "$SEED" --ops "${POSIX_OPS:-3000}" ${SKIP:+--skip "$SKIP"}; then
  PASS=$((PASS+1)); echo "ok - posix model, seed $SEED, skipped: ${SKIP:-none}"
else
  FAIL=$((FAIL+1)); echo "not ok - posix model, seed $SEED, skipped: ${SKIP:-none}"
fi
echo "$PASS passed, $FAIL failed"
[ $FAIL = 0 ]
