#!/bin/sh
# Builds the Centralka SD-card image: Debian bookworm for arm64 (Raspberry Pi 4/5, CM4) with the
# appliance in /opt/centralka, pjproject built for CALLS calls, the units enabled, the root
# read-only under a RAM overlay and a data partition for the database and recordings.
#
#   sudo image/build.sh [--calls 32] [--pjproject 2.15.1] [--size 4G] [--out centralka.img]
#
# Needs (Debian packages): mmdebstrap, qemu-user-static + binfmt-support (on an amd64 builder),
# parted, dosfstools, e2fsprogs, rsync, and the network (Debian's mirror, PyPI, GitHub for the
# pjproject release tarball). See image/README.md for flashing.
set -eu

calls=32
pjproject=2.15.1
size=4G
out=centralka.img
suite=bookworm
mirror=http://deb.debian.org/debian
while [ $# -gt 0 ]; do
  case "$1" in
    --calls) calls="$2"; shift 2 ;;
    --pjproject) pjproject="$2"; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "build.sh: unknown option $1 (see the top of this file)" >&2; exit 2 ;;
  esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
for tool in mmdebstrap parted mkfs.vfat mkfs.ext4 rsync; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (see the top of this file)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "build.sh: run as root (loop devices, chroot)" >&2; exit 2; }
"$repo/image/config-site.sh" "$calls" >/dev/null  # a bad number stops here, not after an hour

work=$(mktemp -d)
cleanup() {
  umount "$work/mnt/boot/firmware" "$work/mnt/var/lib/centralka" "$work/mnt" 2>/dev/null || true
  if [ -n "${loop:-}" ]; then losetup -d "$loop" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

packages="linux-image-arm64,raspi-firmware,firmware-brcm80211,systemd-sysv,systemd-timesyncd,udev,\
ifupdown,isc-dhcp-client,openssh-server,sudo,ca-certificates,curl,openssl,overlayroot,initramfs-tools,\
python3,python3-venv,python3-dev,build-essential,swig,pkg-config,libssl-dev,libasound2-dev,\
kamailio,espeak-ng,sox,libsox-fmt-mp3,alsa-utils,fail2ban,fluidsynth,fluid-soundfont-gm,usb-modeswitch"

# The tree: Debian, then the appliance (the checkout as committed) and its stages in the chroot.
mmdebstrap --architectures=arm64 --variant=important --include="$packages" \
  --components="main contrib non-free non-free-firmware" \
  --customize-hook="mkdir -p \"\$1/opt/centralka\" && git -C '$repo' archive HEAD | tar -x -C \"\$1/opt/centralka\"" \
  --customize-hook="'$repo/image/stages/10-files.sh' \"\$1\" '$repo'" \
  --customize-hook="chroot \"\$1\" /opt/centralka/image/stages/20-system.sh" \
  --customize-hook="chroot \"\$1\" /opt/centralka/image/stages/30-appliance.sh" \
  --customize-hook="chroot \"\$1\" /opt/centralka/image/stages/40-pjproject.sh '$pjproject' '$calls'" \
  --customize-hook="'$repo/image/layout-check.sh' \"\$1\"" \
  "$suite" "$work/root.tar" "$mirror"

# The card: boot (FAT, firmware and kernel), root (read-only), data (the rest of a bigger card
# is added by growing it on the box: resize2fs after enlarging the partition).
truncate -s "$size" "$out"
parted -s "$out" mklabel msdos \
  mkpart primary fat32 4MiB 516MiB \
  mkpart primary ext4 516MiB 3076MiB \
  mkpart primary ext4 3076MiB 100%
loop=$(losetup --show -fP "$out")
mkfs.vfat -n CENTRALKA-BOOT "${loop}p1"
mkfs.ext4 -q -L CENTRALKA-ROOT "${loop}p2"
mkfs.ext4 -q -L CENTRALKA-DATA -O metadata_csum "${loop}p3"
mkdir -p "$work/mnt"
mount "${loop}p2" "$work/mnt"
tar -xf "$work/root.tar" -C "$work/mnt"
mkdir -p "$work/mnt/boot/firmware" "$work/mnt/var/lib/centralka"
mount "${loop}p1" "$work/mnt/boot/firmware"
mount "${loop}p3" "$work/mnt/var/lib/centralka"
# The data partition starts with the directories the units expect; the first boot fills it.
chroot "$work/mnt" chown centralka:centralka /var/lib/centralka
echo "console=serial0,115200 console=tty1 root=LABEL=CENTRALKA-ROOT rootfstype=ext4 ro rootwait" \
  >"$work/mnt/boot/firmware/cmdline.txt"
sync
echo "build.sh: $out ($size) for $calls calls, pjproject $pjproject"
