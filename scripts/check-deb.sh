#!/usr/bin/env bash
# Checks the packages `make deb` built in dist/: each holds the binary, the
# unit and the config (as a conffile), runs postinst, and its binary is a
# static Linux executable for its architecture. Needs dpkg-deb and file.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "check-deb: $*" >&2; exit 1; }

declare -A want_file=([arm64]="ARM aarch64" [amd64]="x86-64")
for arch in arm64 amd64; do
  deb="$(ls dist/tarsmq_*_"$arch".deb 2>/dev/null | tail -1)"
  [ -n "$deb" ] || fail "no dist/tarsmq_*_$arch.deb: run make deb"
  contents="$(dpkg-deb -c "$deb")"
  for path in ./usr/bin/tarsmq ./usr/lib/systemd/system/tarsmq.service ./etc/tarsmq/tarsmq.yaml; do
    grep -q " $path\$" <<<"$contents" || fail "$deb lacks $path; it holds:"$'\n'"$contents"
  done
  [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || fail "$deb: Architecture is not $arch"

  tmp="$(mktemp -d)"
  dpkg-deb -e "$deb" "$tmp/control"
  grep -qx /etc/tarsmq/tarsmq.yaml "$tmp/control/conffiles" || fail "$deb: the config is not a conffile"
  grep -q "systemctl enable tarsmq.service" "$tmp/control/postinst" || fail "$deb: postinst does not enable the unit"
  grep -q "useradd --system" "$tmp/control/postinst" || fail "$deb: postinst does not create the user"
  dpkg-deb -x "$deb" "$tmp/root"
  info="$(file -b "$tmp/root/usr/bin/tarsmq")"
  rm -rf "$tmp"
  grep -q "${want_file[$arch]}" <<<"$info" || fail "$deb: binary is not ${want_file[$arch]}: $info"
  grep -q "statically linked" <<<"$info" || fail "$deb: binary is not statically linked: $info"
  echo "check-deb: $deb ok ($(dpkg-deb -f "$deb" Installed-Size) KiB installed): $info"
done
