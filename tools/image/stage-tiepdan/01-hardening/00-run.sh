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
# The OS is kept up to date by Debian's security updates (README: "Keeping the operating
# system up to date"); /opt/tiepdan is OTA's and never touched by apt.
cat > "${ROOTFS_DIR}/etc/apt/apt.conf.d/52tiepdan-unattended-upgrades" <<'CONF'
// tiepdan: security updates of Debian and Raspberry Pi OS, daily; reboot at night if needed.
APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";
Unattended-Upgrade::Origins-Pattern {
        "origin=Debian,codename=${distro_codename},label=Debian-Security";
        "origin=Debian,codename=${distro_codename}-security,label=Debian-Security";
        "origin=Raspberry Pi Foundation,codename=${distro_codename},label=Raspberry Pi Foundation";
};
Unattended-Upgrade::Automatic-Reboot "true";
Unattended-Upgrade::Automatic-Reboot-Time "02:30";
Unattended-Upgrade::Remove-Unused-Dependencies "true";
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
