#!/usr/bin/env bash
# tests/ops/systemd_verify.sh SRC SPESD: deploy/spesd.service passes
# `systemd-analyze verify` with no warning, and carries the directives the
# deployment relies on. systemd-analyze checks that ExecStart's binary exists,
# so the unit is copied to a temp dir with ExecStart pointing at the built spesd
# (nothing else changes). Also installs deploy/sysusers.d/spes.conf into a temp
# root with systemd-sysusers and checks the user and group it creates.
set -euo pipefail
src=${1:?usage: systemd_verify.sh SRC SPESD}
spesd=${2:?usage: systemd_verify.sh SRC SPESD}
unit=$src/deploy/spesd.service
command -v systemd-analyze >/dev/null || { echo "systemd-analyze missing: apt-get install systemd" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

grep -q '^ExecStart=/usr/local/bin/spesd run --config /etc/spes/spesd.json$' "$unit" ||
  fail "ExecStart must be /usr/local/bin/spesd run --config /etc/spes/spesd.json"
sed "s#^ExecStart=/usr/local/bin/spesd #ExecStart=$spesd #" "$unit" >"$tmp/spesd.service"
grep -q "^ExecStart=$spesd run " "$tmp/spesd.service" || fail "could not point ExecStart at $spesd"
if ! out=$(systemd-analyze verify "$tmp/spesd.service" 2>&1); then
  echo "$out" >&2
  fail "systemd-analyze verify failed"
fi
if [ -n "$out" ]; then # unknown keys and bad values are only warnings: refuse them too
  echo "$out" >&2
  fail "systemd-analyze verify printed warnings"
fi
echo "systemd-analyze verify: clean"

for d in 'Type=notify' 'NotifyAccess=main' 'WatchdogSec=30' 'User=spes' 'Group=spes' 'StateDirectory=spes' \
  'RuntimeDirectory=spes' 'ConfigurationDirectory=spes' 'ExecReload=/bin/kill -HUP $MAINPID' \
  'KillSignal=SIGTERM' 'Restart=on-failure' 'NoNewPrivileges=yes' 'ProtectSystem=strict' 'ProtectHome=yes' \
  'PrivateTmp=yes' 'PrivateDevices=yes' 'ProtectKernelTunables=yes' 'ProtectKernelModules=yes' \
  'ProtectKernelLogs=yes' 'ProtectControlGroups=yes' 'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6' \
  'LockPersonality=yes' 'MemoryDenyWriteExecute=yes' 'RestrictRealtime=yes' 'SystemCallArchitectures=native' \
  'CapabilityBoundingSet='; do
  grep -qxF -- "$d" "$unit" || fail "deploy/spesd.service lacks '$d'"
done
grep -q '^TimeoutStopSec=[0-9]' "$unit" || fail "deploy/spesd.service lacks TimeoutStopSec"
echo "unit directives: present"

mkdir -p "$tmp/root/etc"
systemd-sysusers --root="$tmp/root" "$src/deploy/sysusers.d/spes.conf" >/dev/null 2>&1 ||
  fail "systemd-sysusers refused deploy/sysusers.d/spes.conf"
IFS=: read -r _ _ uid gid _ home shell < <(grep '^spes:' "$tmp/root/etc/passwd") || fail "no spes user created"
grep -q "^spes:x:$gid:" "$tmp/root/etc/group" || fail "user spes's primary group is not group spes"
[ "$home" = /var/lib/spes ] || fail "spes's home is $home, not /var/lib/spes"
[ "$shell" = /usr/sbin/nologin ] || fail "spes's shell is $shell, not nologin"
[ "$uid" -lt 1000 ] || fail "spes is not a system user (uid $uid)"
echo "sysusers: user and group spes (uid $uid) with home /var/lib/spes"
