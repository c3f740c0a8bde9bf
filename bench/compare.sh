#!/usr/bin/env bash
# Side-by-side benchmark of tarsmq and Mosquitto on this machine: installs
# Debian's Mosquitto if it is missing, builds tarsmq, then runs bench/compare,
# which writes docs/benchmarks.md. Extra arguments go to bench/compare
# (-rounds N, -duration D, -soak N, -skip-cold-start).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mosquitto
fi
# The packaged service would hold the default port; ours use free ones.
make build
exec go run ./bench/compare -tarsmq bin/tarsmq -mosquitto "$(command -v mosquitto || echo /usr/sbin/mosquitto)" "$@"
