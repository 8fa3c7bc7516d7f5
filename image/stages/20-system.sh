#!/bin/sh
# In the image's chroot: the service user and what the system needs beyond the packages.
set -eu

if ! id centralka >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/centralka --no-create-home --shell /usr/sbin/nologin centralka
fi
getent group gpio >/dev/null || groupadd --system gpio
# The modem's serial ports, the status LED and button, a modem's USB sound card: nothing else.
usermod -a -G dialout,gpio,audio centralka
# NTP: the clock must be right for business hours, callback promises and certificates.
systemctl enable systemd-timesyncd.service
# The root is read-only under a RAM overlay (overlayroot, applied by the initramfs).
update-initramfs -u
echo "20-system.sh: user centralka, timesyncd, overlayroot"
