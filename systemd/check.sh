#!/bin/sh
# Static checks of the systemd files, as CI runs them:
#
#   sh systemd/check.sh SKIFF_BINARY
#
# - `systemd-analyze verify` of skiff.service, with its /usr/local/bin/skiff pointed at
#   SKIFF_BINARY (verify insists the ExecStart= binary exists). Any warning about the unit
#   (a misspelt directive is only a warning to systemd) fails the check;
# - systemd-tmpfiles creates skiff.tmpfiles' directories, with their modes, in a scratch root.
set -eu
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: $0 SKIFF_BINARY" >&2; exit 2; }
bin=$(realpath "$1")
[ -x "$bin" ] || { echo "$0: $bin is not executable" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

echo "-- systemd-analyze verify skiff.service"
sed "s#/usr/local/bin/skiff#$bin#g" systemd/skiff.service > "$work/skiff.service"
grep -q "^ExecStart=$bin agent" "$work/skiff.service"
rc=0
systemd-analyze verify "$work/skiff.service" > "$work/verify.log" 2>&1 || rc=$?
cat "$work/verify.log"
if [ "$rc" != 0 ] || grep -q 'skiff\.service' "$work/verify.log"; then
    echo "$0: systemd-analyze verify found problems in skiff.service" >&2
    exit 1
fi
for want in Type=notify WatchdogSec= RestartPreventExitStatus=78 Delegate=yes KillMode=mixed; do
    grep -q "^$want" systemd/skiff.service || { echo "$0: skiff.service lacks $want" >&2; exit 1; }
done

echo "-- systemd-tmpfiles --create skiff.tmpfiles (scratch root)"
root=$work/root
mkdir -p "$root/usr/lib/tmpfiles.d"
cp systemd/skiff.tmpfiles "$root/usr/lib/tmpfiles.d/skiff.conf"
systemd-tmpfiles --create --root="$root" skiff.conf
for spec in etc/skiff:755 var/lib/skiff:700 run/skiff:700; do
    d=${spec%%:*}
    m=${spec#*:}
    [ -d "$root/$d" ] || { echo "$0: tmpfiles did not create /$d" >&2; exit 1; }
    [ "$(stat -c %a "$root/$d")" = "$m" ] || { echo "$0: /$d has mode $(stat -c %a "$root/$d"), want $m" >&2; exit 1; }
done
echo "systemd check ok"
