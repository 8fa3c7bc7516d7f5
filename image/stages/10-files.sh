#!/bin/sh
# Places the appliance's system files into the image's root folder: settings, the read-only
# layout (fstab, overlayroot, a volatile journal), the units and their enable links, udev rules
# for the modems, fail2ban's filter and jail, the first-boot unit. Plain files only, no chroot:
# the tests run it into a folder on amd64 and check the result with layout-check.sh.
#
#   stages/10-files.sh ROOT REPO
set -eu

ROOT="$1"
REPO="$2"
[ -d "$ROOT" ] || { echo "10-files.sh: no root folder $ROOT" >&2; exit 2; }
[ -f "$REPO/systemd/centralka-core.service" ] || { echo "10-files.sh: $REPO is not a Centralka checkout" >&2; exit 2; }

install -d "$ROOT/etc/centralka" "$ROOT/etc/systemd/system/multi-user.target.wants" \
  "$ROOT/etc/systemd/system/timers.target.wants" "$ROOT/etc/systemd/journald.conf.d" \
  "$ROOT/etc/udev/rules.d" "$ROOT/etc/fail2ban/filter.d" "$ROOT/etc/fail2ban/jail.d" \
  "$ROOT/var/lib/centralka"

# The box's settings: what differs from appliance/data/default.toml on a Pi.
cat >"$ROOT/etc/centralka/centralka.toml" <<'TOML'
# Centralka on a Raspberry Pi (written by the image). Every setting and its default:
# /opt/centralka/appliance/data/default.toml. The web UI changes this file.
[box]
data_dir = "/var/lib/centralka"

[sip]
# The clinic's LAN and the provider: listen on every address.
address = "0.0.0.0"

[kamailio]
enabled = true
address = "0.0.0.0"
# Its own unit (centralka-kamailio.service): a core restart leaves the desk phones registered.
run_by = "systemd"

[control]
socket = "/run/centralka/core.sock"

[web]
address = "0.0.0.0"
port = 80
TOML
chmod 0644 "$ROOT/etc/centralka/centralka.toml"

# Root read-only: an overlay in RAM over it (overlayroot), so nothing written outside the data
# partition survives a reboot and a power cut cannot damage the system. The data partition
# (database, recordings, prompts, backups) is mounted by its label, journalled, and is the only
# place the units may write (ReadWritePaths).
cat >"$ROOT/etc/fstab" <<'FSTAB'
# <file system>          <mount point>        <type>  <options>                          <dump> <pass>
LABEL=CENTRALKA-ROOT     /                    ext4    ro,noatime                         0      1
LABEL=CENTRALKA-BOOT     /boot/firmware       vfat    ro,noatime,umask=0077              0      2
LABEL=CENTRALKA-DATA     /var/lib/centralka   ext4    rw,noatime,data=journal,commit=5,errors=remount-ro 0 2
tmpfs                    /tmp                 tmpfs   nosuid,nodev,size=64m              0      0
FSTAB
cat >"$ROOT/etc/overlayroot.conf" <<'OVERLAY'
# The root file system is read-only under a RAM overlay; the data partition is not overlaid
# (recurse=0). To change the system itself: overlayroot-chroot (see image/README.md).
overlayroot="tmpfs:recurse=0"
OVERLAY
cat >"$ROOT/etc/systemd/journald.conf.d/centralka.conf" <<'JOURNAL'
# Logs in RAM (the root is read-only, the SD card is spared); the core's own records of calls,
# alarms and SMS are in its database on the data partition.
[Journal]
Storage=volatile
RuntimeMaxUse=32M
JOURNAL

for unit in "$REPO"/systemd/*.service "$REPO"/systemd/*.timer "$REPO"/image/rootfs/centralka-firstboot.service; do
  install -m 0644 "$unit" "$ROOT/etc/systemd/system/"
done
for service in centralka-core centralka-kamailio centralka-web centralka-firstboot; do
  ln -sf "/etc/systemd/system/$service.service" "$ROOT/etc/systemd/system/multi-user.target.wants/$service.service"
done
for timer in "$REPO"/systemd/*.timer; do
  name=$(basename "$timer")
  ln -sf "/etc/systemd/system/$name" "$ROOT/etc/systemd/system/timers.target.wants/$name"
done

install -m 0644 "$REPO/systemd/99-centralka-modem.rules" "$ROOT/etc/udev/rules.d/"
install -m 0644 "$REPO/systemd/fail2ban/filter.d/centralka.conf" "$ROOT/etc/fail2ban/filter.d/"
install -m 0644 "$REPO/systemd/fail2ban/jail.d/centralka.conf" "$ROOT/etc/fail2ban/jail.d/"
install -m 0755 "$REPO/image/firstboot.sh" "$ROOT/usr/local/sbin/centralka-firstboot" 2>/dev/null || {
  install -d "$ROOT/usr/local/sbin"
  install -m 0755 "$REPO/image/firstboot.sh" "$ROOT/usr/local/sbin/centralka-firstboot"
}
[ -s "$ROOT/etc/hostname" ] || echo centralka >"$ROOT/etc/hostname"
echo "10-files.sh: system files in $ROOT"
