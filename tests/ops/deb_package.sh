#!/usr/bin/env bash
# tests/ops/deb_package.sh BUILD_DIR: cpack builds spesd_<version>_amd64.deb;
# `dpkg -i` installs it on this machine (a throwaway root box in CI): the
# binaries run from /usr/bin and print the version and protocol, the user and
# group spes and the directories exist, the unit verifies, the man pages are
# there; `dpkg -r` removes the files and `dpkg --purge` the state. Skipped
# (77) when not root, without dpkg, or when a spesd package or its
# directories are already on the machine (it must not touch a real install).
set -euo pipefail
build=${1:?}
skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "installing a package needs root"
command -v dpkg >/dev/null && command -v cpack >/dev/null || skip "needs dpkg and cpack"
if dpkg -s spesd >/dev/null 2>&1; then skip "a spesd package is installed already"; fi
for d in /var/lib/spes /etc/spes; do [ ! -e "$d" ] || skip "$d exists already (a manual install?)"; done
version=$(sed -n 's/^set(CPACK_PACKAGE_VERSION "\(.*\)")$/\1/p' "$build/CPackConfig.cmake")
[ -n "$version" ] || { echo "FAIL: no version in $build/CPackConfig.cmake"; exit 1; }
tmp=$(mktemp -d /tmp/spes-deb-XXXXXX)
installed=
cleanup() {
  [ -z "$installed" ] || dpkg --purge spesd >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

(cd "$build" && cpack -G DEB -B "$tmp" >"$tmp/cpack.log" 2>&1) || { cat "$tmp/cpack.log"; fail "cpack"; }
deb=$tmp/spesd_${version}_amd64.deb
[ -s "$deb" ] || fail "cpack made no $deb: $(ls "$tmp")"
echo "built $(basename "$deb") ($(stat -c %s "$deb") bytes)"
dpkg-deb -c "$deb" >"$tmp/contents"
for f in ./usr/bin/spesd ./usr/bin/spesctl ./usr/lib/systemd/system/spesd.service ./usr/lib/sysusers.d/spes.conf \
         ./usr/lib/tmpfiles.d/spes.conf ./usr/share/man/man1/spesd.1.gz ./usr/share/man/man1/spesctl.1.gz \
         ./usr/share/doc/spesd/examples/spesd.example.json ./usr/share/doc/spesd/examples/prometheus.yml \
         ./usr/share/doc/spesd/examples/grafana-dashboard.json; do
  grep -q " $f\$" "$tmp/contents" || fail "the package lacks $f"
done

installed=1
dpkg -i "$deb" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; fail "dpkg -i"; }
out=$(/usr/bin/spesd --version) || fail "/usr/bin/spesd --version"
[[ "$out" =~ ^spesd\ $version\ \(protocol\ [0-9]+\)$ ]] || fail "spesd --version printed '$out'"
echo "/usr/bin/spesd --version: $out"
out=$(/usr/bin/spesctl --version) || fail "/usr/bin/spesctl --version"
[[ "$out" =~ ^spesctl\ $version\ \(protocol\ [0-9]+\)$ ]] || fail "spesctl --version printed '$out'"
getent passwd spes >/dev/null || fail "no user spes after install"
getent group spes >/dev/null || fail "no group spes after install"
[ "$(stat -c '%U:%G %a' /var/lib/spes)" = "spes:spes 750" ] || fail "/var/lib/spes is $(stat -c '%U:%G %a' /var/lib/spes)"
[ "$(stat -c '%U:%G %a' /etc/spes)" = "root:spes 750" ] || fail "/etc/spes is $(stat -c '%U:%G %a' /etc/spes)"
grep -q '^ExecStart=/usr/bin/spesd run --config /etc/spes/spesd.json$' /usr/lib/systemd/system/spesd.service ||
  fail "the installed unit does not start /usr/bin/spesd"
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify /usr/lib/systemd/system/spesd.service >"$tmp/verify.log" 2>&1 ||
    { cat "$tmp/verify.log"; fail "systemd-analyze verify of the installed unit"; }
fi
zcat /usr/share/man/man1/spesd.1.gz | grep -q '^\.TH SPESD 1' || fail "spesd.1.gz is not the man page"
zcat /usr/share/man/man1/spesctl.1.gz | grep -q '^\.B top ' || fail "spesctl.1.gz does not describe top"
/usr/bin/spesctl help | grep -q "spesctl top" || fail "the installed spesctl has no top"
echo "installed: binaries, user and group spes, /var/lib/spes and /etc/spes, unit, man pages"

dpkg -r spesd >"$tmp/remove.log" 2>&1 || { cat "$tmp/remove.log"; fail "dpkg -r"; }
for f in /usr/bin/spesd /usr/bin/spesctl /usr/lib/systemd/system/spesd.service /usr/share/man/man1/spesd.1.gz; do
  [ ! -e "$f" ] || fail "$f is still there after dpkg -r"
done
dpkg --purge spesd >"$tmp/purge.log" 2>&1 || { cat "$tmp/purge.log"; fail "dpkg --purge"; }
installed=
! dpkg -s spesd >/dev/null 2>&1 || fail "dpkg still knows spesd after --purge"
[ ! -e /var/lib/spes ] && [ ! -e /etc/spes ] || fail "purge left /var/lib/spes or /etc/spes"
echo "dpkg -r and --purge: files, state and config directories gone (the system user stays, as Debian does)"
