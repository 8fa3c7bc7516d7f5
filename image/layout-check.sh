#!/bin/sh
# Checks a built root tree (or a folder 10-files.sh filled) for the read-only layout the
# appliance relies on; prints each problem and exits 1 when there is one.
#
#   image/layout-check.sh ROOT
set -eu

ROOT="$1"
problems=0
fail() { echo "layout: $*" >&2; problems=$((problems + 1)); }

fstab="$ROOT/etc/fstab"
[ -f "$fstab" ] || fail "no /etc/fstab"
if [ -f "$fstab" ]; then
  awk '$2 == "/" && $4 ~ /(^|,)ro(,|$)/ {found=1} END {exit !found}' "$fstab" || fail "the root is not mounted read-only"
  awk '$2 == "/var/lib/centralka" && $4 ~ /(^|,)rw(,|$)/ {found=1} END {exit !found}' "$fstab" ||
    fail "no writable data partition at /var/lib/centralka"
fi
grep -q '^overlayroot="tmpfs' "$ROOT/etc/overlayroot.conf" 2>/dev/null || fail "no RAM overlay over the root (overlayroot.conf)"
grep -q '^Storage=volatile' "$ROOT/etc/systemd/journald.conf.d/centralka.conf" 2>/dev/null || fail "the journal is not volatile"
[ -s "$ROOT/etc/centralka/centralka.toml" ] || fail "no /etc/centralka/centralka.toml"
grep -q 'data_dir = "/var/lib/centralka"' "$ROOT/etc/centralka/centralka.toml" 2>/dev/null ||
  fail "the settings do not put the data on the data partition"

for service in centralka-core centralka-kamailio centralka-web centralka-firstboot; do
  [ -f "$ROOT/etc/systemd/system/$service.service" ] || fail "$service.service is not installed"
  [ -L "$ROOT/etc/systemd/system/multi-user.target.wants/$service.service" ] || fail "$service.service is not enabled"
done
[ -L "$ROOT/etc/systemd/system/timers.target.wants/centralka-backup.timer" ] || fail "the nightly backup is not enabled"

# Every unit may write only to the data partition and /run: nothing else survives anyway.
for unit in "$ROOT"/etc/systemd/system/centralka-*.service; do
  paths=$(sed -n 's/^ReadWritePaths=//p' "$unit")
  for p in $paths; do
    case "$p" in
      /var/lib/centralka | /var/lib/centralka/* | /run/*) ;;
      *) fail "$(basename "$unit") writes to $p, outside the data partition" ;;
    esac
  done
done

[ -f "$ROOT/etc/udev/rules.d/99-centralka-modem.rules" ] || fail "no udev rules for the modems"
[ -x "$ROOT/usr/local/sbin/centralka-firstboot" ] || fail "no first-boot script"

if [ "$problems" -gt 0 ]; then
  echo "layout: $problems problem(s) in $ROOT" >&2
  exit 1
fi
echo "layout: $ROOT is a read-only root with the data partition at /var/lib/centralka"
