#!/usr/bin/env bash
# Builds foreverfs in build-pkg/ (optimized, without tests or benchmarks) and packs it into a
# Debian package. Progress goes to stderr; stdout is only the path of the .deb.
# BUILD_DIR overrides the build directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build-pkg}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFOREVERFS_TESTS=OFF \
  -DCMAKE_DISABLE_FIND_PACKAGE_benchmark=ON >&2
cmake --build "$build" -j"$(nproc)" >&2
rm -f "$build"/foreverfs_*.deb
(cd "$build" && cpack -G DEB >&2)
debs=("$build"/foreverfs_*.deb)
[ -f "${debs[0]}" ] || { echo "build-deb.sh: cpack made no foreverfs_*.deb in $build" >&2; exit 1; }
echo "${debs[0]}"
