#!/usr/bin/env bash
# Checks the systemd unit: `systemd-analyze verify` passes on it and on the
# drop-in examples (client and bridge), and its `systemd-analyze security` exposure is at
# most MAX_EXPOSURE (2.0). Needs systemd-analyze and a built bin/tarsmq.
set -euo pipefail
cd "$(dirname "$0")/.."
max="${MAX_EXPOSURE:-2.0}"
bin="$PWD/bin/tarsmq"
[ -x "$bin" ] || { echo "check-unit: build $bin first (make build)" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# verify wants ExecStart's binary to exist: point it at the one just built.
sed "s#/usr/bin/tarsmq#$bin#" systemd/tarsmq.service > "$tmp/tarsmq.service"
cat > "$tmp/robot-app.service" <<UNIT
[Service]
ExecStart=/bin/true
UNIT
mkdir "$tmp/robot-app.service.d"
cp systemd/tarsmq-client.conf.example "$tmp/robot-app.service.d/tarsmq.conf"
mkdir "$tmp/tarsmq.service.d"
cp systemd/tarsmq-bridge.conf.example "$tmp/tarsmq.service.d/bridge.conf"
# verify exits 0 on unknown keys and bad values ("ignoring"): any output
# at all fails the check.
if ! out="$(cd "$tmp" && systemd-analyze verify --man=no tarsmq.service robot-app.service 2>&1)" || [ -n "$out" ]; then
  echo "check-unit: systemd-analyze verify complains:" >&2
  echo "$out" >&2
  exit 1
fi
echo "check-unit: systemd-analyze verify passed"

# The broker reads /proc/sys/kernel/random/boot_id: ProcSubset=pid hides it.
if grep -q '^ProcSubset=pid' systemd/tarsmq.service; then
  echo "check-unit: ProcSubset=pid hides the boot id the health records need" >&2
  exit 1
fi
# auth.socket: peercred needs the real uids of its peers.
if grep -q '^PrivateUsers=\(yes\|true\|1\|on\)' systemd/tarsmq.service; then
  echo "check-unit: PrivateUsers maps every peer's uid to nobody: peercred identities would break" >&2
  exit 1
fi

line="$(systemd-analyze security --offline=true systemd/tarsmq.service 2>&1 | grep 'Overall exposure level')"
score="$(echo "$line" | sed -E 's/.*: ([0-9]+\.[0-9]+).*/\1/')"
echo "check-unit: $line"
if ! awk -v s="$score" -v m="$max" 'BEGIN { exit !(s + 0 <= m + 0) }'; then
  echo "check-unit: exposure $score is above $max: tighten systemd/tarsmq.service" >&2
  exit 1
fi
