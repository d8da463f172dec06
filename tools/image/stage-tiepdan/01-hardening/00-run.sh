#!/bin/bash -e
# The box's image defaults: SSH off (also if pi-gen's ENABLE_SSH was changed), the hardware
# watchdog on (a hung kernel reboots the box; the agent has its own systemd watchdog), and a
# check that the package enabled first boot.
install -d "${ROOTFS_DIR}/etc/systemd/system.conf.d"
cat > "${ROOTFS_DIR}/etc/systemd/system.conf.d/tiepdan-watchdog.conf" <<CONF
# tiepdan: systemd pets the Pi's hardware watchdog; a hung system reboots.
[Manager]
RuntimeWatchdogSec=15s
RebootWatchdogSec=2min
CONF
config="${ROOTFS_DIR}/boot/firmware/config.txt"
if ! grep -qs '^dtparam=watchdog=on' "${config}"; then
	printf '\n# tiepdan: hardware watchdog\ndtparam=watchdog=on\n' >> "${config}"
fi
on_chroot <<CHROOT
systemctl disable ssh.service >/dev/null 2>&1 || true
systemctl mask ssh.service
systemctl is-enabled tiepdan-firstboot.service
CHROOT
