#!/usr/bin/env bash
# Installs every Debian package foreverfs needs to build, test and run. Idempotent.
set -euo pipefail
pkgs=(
  build-essential cmake pkg-config git
  libfuse3-dev fuse3
  libboost1.81-dev
  libssl-dev libfmt-dev libspdlog-dev libcli11-dev libsqlite3-dev zlib1g-dev
  libgtest-dev libgmock-dev
  iproute2 util-linux attr bc
  clang libclang-rt-14-dev
  python3 git rsync sqlite3 make gcc tar
  fio iperf3 libbenchmark-dev dpkg-dev file
  man-db groff-base procps
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
