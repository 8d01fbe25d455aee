#!/usr/bin/env bash
# Runs as root inside a root filesystem that debootstrap has just made (chroot), with the
# bed's unit and cloud-init files already copied in: installs what an AMI of this
# release would carry and leaves nothing per machine behind (SSH host keys and the
# machine id are made at each host's first boot, as on a fresh instance).
#   chroot ROOT bash -s -- PACKAGE... <build-rootfs.sh
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
# Install daemons without starting them here: the hosts start their own.
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
mount -t proc proc /proc
trap 'umount /proc 2>/dev/null || true' EXIT
apt-get install -y -q --no-install-recommends "$@"
rm -f /usr/sbin/policy-rc.d
# cloud-init sets LANG=en_US.UTF-8 at first boot; Debian 12's update-locale refuses a
# locale that is not generated (cloud images ship it generated).
sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' /etc/locale.gen
locale-gen >/dev/null
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt/* /var/log/dpkg.log

rm -f /etc/ssh/ssh_host_*
printf 'uninitialized\n' >/etc/machine-id
rm -f /var/lib/dbus/machine-id
# No DNS in the bed: fail lookups at once rather than after a timeout.
rm -f /etc/resolv.conf
echo 'nameserver 127.0.0.1' >/etc/resolv.conf

systemctl enable systemd-networkd.service bed-cgroup-rw.service bed-ssh-keygen.service
# Nothing for these to do in a machine without its own kernel or disks; left enabled
# they fail and every host reads "degraded".
systemctl mask systemd-modules-load.service e2scrub_reap.service fstrim.timer \
  apt-daily.timer apt-daily-upgrade.timer 2>/dev/null
systemctl set-default multi-user.target
echo "build-rootfs: $(dpkg-query -W -f '${Version}' docker.io) docker.io, $(dpkg-query -W -f '${Version}' cloud-init) cloud-init"
