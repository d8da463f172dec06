#!/bin/bash -e
# Install the box's Debian package, exactly the file tools/image/build.sh put in files/ (the
# one tools/packaging/deb.py built). Its postinst creates the user and folders, installs slot a
# and enables the first-boot and agent units.
packages=(files/tiepdan-box_*.deb)
if [ "${#packages[@]}" -ne 1 ] || [ ! -f "${packages[0]}" ]; then
	echo "stage-tiepdan: put exactly one tiepdan-box_*.deb in $(pwd)/files" >&2
	exit 1
fi
package=$(basename "${packages[0]}")
install -m 644 "${packages[0]}" "${ROOTFS_DIR}/tmp/${package}"
on_chroot <<CHROOT
apt-get install -y --no-install-recommends "/tmp/${package}"
rm -f "/tmp/${package}"
CHROOT
